//! Hot reload (SPEC §3): a changed config file or `SIGHUP` swaps in a new snapshot.
//!
//! The watcher looks at directories, not at the file: an editor or `mv` replaces the file
//! by renaming a new one over it (a new inode, which a watch on the old file would never
//! report), and a Kubernetes ConfigMap volume swaps a `..data` symlink next to the file
//! without touching the file's own name. Any change in the file's directory — and in the
//! directory its symlinks resolve to, and in those of the TLS files — wakes the watcher;
//! after a short quiet period (a save is often several writes) it reads the files, and
//! reloads only when their contents differ from what it last loaded, so unrelated files in
//! the same directory cost one read and no reload.
//!
//! Parsing and validation run on the blocking pool, never on a request thread. A valid
//! config becomes the new snapshot in one atomic store: requests already running keep the
//! snapshot they started with. An invalid one is refused with one error line
//! (`FILE:LINE:COL: message`) and the running config stays. Pooled connections to
//! upstreams a reload removed are not reused and close after their idle timeout. Every
//! attempt is counted in `edge_config_reloads_total{result}` (SPEC §5).

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::tls::sign::CertifiedKey;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Config;
use crate::signals;
use crate::state::{SharedState, Snapshot};
use crate::telemetry;
use crate::tls::{self, CertStore};

/// Quiet time after the last file event before the files are read.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// Longest wait for quiet: a directory that never stops changing (a log file written next
/// to the config) must not hold a reload back.
const MAX_DEBOUNCE: Duration = Duration::from_secs(1);

/// What a reload cannot change: the sockets and runtimes made at start.
#[derive(Debug, Clone, PartialEq)]
struct StartupSettings {
    listen: Vec<SocketAddr>,
    tls_listen: Option<Vec<SocketAddr>>,
    threads: usize,
}

impl StartupSettings {
    fn of(config: &Config) -> Self {
        StartupSettings {
            listen: config.server.listen.clone(),
            tls_listen: config.server.tls.as_ref().map(|t| t.listen.clone()),
            threads: config.server.threads,
        }
    }

    /// The settings of `config` that differ from the running ones.
    fn changed_in(&self, config: &Config) -> Vec<&'static str> {
        let new = StartupSettings::of(config);
        let mut changed = Vec::new();
        if new.listen != self.listen {
            changed.push("server.listen");
        }
        if new.tls_listen != self.tls_listen {
            changed.push("server.tls.listen");
        }
        if new.threads != self.threads {
            changed.push("server.threads");
        }
        changed
    }
}

/// The contents of the watched files when the running config was loaded. The watcher
/// starts later (after an upgrade hand-over, seconds later): a change in between is
/// reloaded when it starts instead of being missed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Baseline(u64);

impl Baseline {
    /// Takes the fingerprint of `path` and of the TLS files `config` (loaded from it) names.
    pub(crate) fn of(path: &Path, config: &Config) -> Baseline {
        Baseline(fingerprint(&watched_files(path, config)))
    }
}

/// Installs the SIGHUP handler now, so that from here on SIGHUP never kills the process
/// (its default action) while the server is still starting; the reloader's own
/// registration later receives the signals. A SIGHUP before that is dropped, which is
/// harmless: the reloader compares the files with the [`Baseline`] when it starts.
pub(crate) fn catch_sighup_early() -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let _context = runtime.enter();
    // Tokio never uninstalls a signal handler: dropping the stream and runtime keeps it.
    signal(SignalKind::hangup()).map(drop)
}

/// The files whose contents decide whether a file event means a reload.
fn watched_files(path: &Path, config: &Config) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    files.extend(config.included_files.iter().cloned());
    if let Some(tls) = &config.server.tls {
        files.push(tls.cert.clone());
        files.push(tls.key.clone());
    }
    files
}

/// The background service that watches the config and reloads it.
pub(crate) struct ConfigReloader {
    path: PathBuf,
    state: SharedState,
    /// The TLS listeners' certificate, when the proxy started with `[server.tls]`.
    certs: Option<Arc<CertStore>>,
    startup: StartupSettings,
    baseline: Baseline,
}

impl ConfigReloader {
    pub(crate) fn new(
        path: &Path,
        state: SharedState,
        certs: Option<Arc<CertStore>>,
        baseline: Baseline,
    ) -> Self {
        let startup = StartupSettings::of(&state.load().config);
        ConfigReloader {
            path: path.to_owned(),
            state,
            certs,
            startup,
            baseline,
        }
    }

    /// The files of the running config whose contents decide whether to reload.
    fn watched_files(&self) -> Vec<PathBuf> {
        watched_files(&self.path, &self.state.load().config)
    }

    /// Loads, validates and applies the config file; logs the outcome.
    async fn reload(&self, trigger: &'static str) {
        let path = self.path.clone();
        let loaded = tokio::task::spawn_blocking(move || load(&path)).await;
        let result = match loaded {
            Ok(result) => result,
            Err(e) => Err(format!("config reload task failed: {e}")),
        };
        match result {
            Ok((config, certified_key)) => self.apply(config, certified_key, trigger),
            Err(message) => {
                // Counted before it is told: whoever sees the outcome sees the count.
                telemetry::record_reload(false);
                tracing::error!(
                    trigger,
                    "config reload refused, the running config stays: {message}"
                );
            }
        }
    }

    fn apply(&self, config: Config, certified_key: Option<CertifiedKey>, trigger: &str) {
        for setting in self.startup.changed_in(&config) {
            tracing::warn!(
                "config reload: a change of {setting} needs a restart; the rest is applied"
            );
        }
        if let (Some(store), Some(key)) = (&self.certs, certified_key) {
            store.replace(key);
        }
        let (routes, upstreams) = (config.routes.len(), config.upstreams.len());
        let old = self.state.load_full();
        // Counted before the new routes serve: whoever sees them sees the count.
        telemetry::record_reload(true);
        let new = Arc::new(Snapshot::new(config, Some(&old)));
        telemetry::reconfigure(&new);
        self.state.store(new);
        tracing::info!(trigger, routes, upstreams, "config reloaded");
    }
}

/// Reads and validates the config and, with `[server.tls]`, its certificate and key.
fn load(path: &Path) -> Result<(Config, Option<CertifiedKey>), String> {
    let config = crate::source::load(path).map_err(|e| e.to_string())?;
    let certified_key = match &config.server.tls {
        Some(tls) => Some(tls::load_certified_key(&tls.cert, &tls.key)?),
        None => None,
    };
    Ok((config, certified_key))
}

#[async_trait]
impl BackgroundService for ConfigReloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = signals::listen(
            SignalKind::hangup(),
            "SIGHUP (reloads follow file changes only)",
        );
        // Capacity 1: a pending wake-up already covers any later event.
        let (wake, mut events) = mpsc::channel::<()>(1);
        let mut watch = DirWatch::new(wake);
        watch.update(&self.watched_files());
        let mut seen = self.baseline.0;
        // Changed since the running config was loaded: checked like any file event.
        let mut settling = Settling::default();
        settling.event(Instant::now());
        loop {
            let check_at = settling.check_at();
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = events.recv() => settling.event(Instant::now()),
                _ = tokio::time::sleep_until(check_at.unwrap_or_else(Instant::now)),
                    if check_at.is_some() =>
                {
                    settling = Settling::default();
                    let now = fingerprint(&self.watched_files());
                    if now != seen {
                        seen = now;
                        self.reload("file change").await;
                    }
                }
                _ = signals::next(&mut hangup) => {
                    // This reload reads the files as they are now: pending events are covered.
                    settling = Settling::default();
                    seen = fingerprint(&self.watched_files());
                    self.reload("SIGHUP").await;
                }
            }
            // A reload can name other TLS files; a symlink swap can move the target.
            watch.update(&self.watched_files());
        }
    }
}

/// Debouncing of file events: the files are read once no event has come for
/// [`DEBOUNCE`], or [`MAX_DEBOUNCE`] after the first one, whichever is sooner. Kept as a
/// deadline in the event loop, so that SIGHUP is served while events settle.
#[derive(Debug, Default)]
struct Settling {
    /// First and latest event since the last check.
    events: Option<(Instant, Instant)>,
}

impl Settling {
    fn event(&mut self, at: Instant) {
        let first = self.events.map_or(at, |(first, _)| first);
        self.events = Some((first, at));
    }

    fn check_at(&self) -> Option<Instant> {
        self.events
            .map(|(first, latest)| (latest + DEBOUNCE).min(first + MAX_DEBOUNCE))
    }
}

/// A hash of the files' contents (a file that cannot be read counts by its error), so that
/// any change — in place, by rename or through a symlink swap — shows as a new value.
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for file in files {
        match std::fs::read(file) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(e) => e.kind().hash(&mut hasher),
        }
    }
    hasher.finish()
}

/// The directories to watch for `files`: each file's own directory (where renames and
/// `..data` symlink swaps happen) and the directory its symlinks finally resolve to (where
/// an in-place write of the target happens).
fn watch_dirs(files: &[PathBuf]) -> HashSet<PathBuf> {
    let mut dirs = HashSet::new();
    for file in files {
        let absolute = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        if let Some(parent) = absolute.parent() {
            dirs.insert(parent.to_owned());
        }
        if let Some(parent) = std::fs::canonicalize(file)
            .ok()
            .and_then(|target| target.parent().map(Path::to_owned))
        {
            dirs.insert(parent);
        }
    }
    dirs
}

/// A `notify` watcher on a set of directories, each event turned into a wake-up.
struct DirWatch {
    watcher: Option<RecommendedWatcher>,
    dirs: HashSet<PathBuf>,
}

impl DirWatch {
    fn new(wake: mpsc::Sender<()>) -> Self {
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            match event {
                Ok(event) if is_change(&event.kind) => {
                    let _ = wake.try_send(());
                }
                Ok(_) => {}
                // An overflowed queue may have lost a change: look at the files again.
                Err(_) => {
                    let _ = wake.try_send(());
                }
            }
        })
        .map_err(|e| {
            tracing::warn!("cannot watch the config file, reload with SIGHUP only: {e}");
        })
        .ok();
        DirWatch {
            watcher,
            dirs: HashSet::new(),
        }
    }

    /// Watches the directories of `files`, and no others.
    fn update(&mut self, files: &[PathBuf]) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let wanted = watch_dirs(files);
        for gone in self.dirs.difference(&wanted) {
            // A directory that was deleted (an old ConfigMap revision) is unwatched already.
            let _ = watcher.unwatch(gone);
        }
        for dir in wanted.difference(&self.dirs) {
            if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(
                    "cannot watch {}, changes there need SIGHUP: {e}",
                    dir.display()
                );
            }
        }
        self.dirs = wanted;
    }
}

/// Whether an event can mean new contents. Opening and reading (the reloader's own reads
/// among them) cannot; closing a file written to can.
fn is_change(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind};

    #[test]
    fn settling_waits_for_quiet_but_not_forever() {
        let start = Instant::now();
        let mut settling = Settling::default();
        assert_eq!(settling.check_at(), None);
        settling.event(start);
        assert_eq!(settling.check_at(), Some(start + DEBOUNCE));
        // An event every 100 ms keeps pushing the check back, up to MAX_DEBOUNCE.
        for i in 1..=30 {
            settling.event(start + Duration::from_millis(100 * i));
        }
        assert_eq!(settling.check_at(), Some(start + MAX_DEBOUNCE));
    }

    #[test]
    fn reads_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Any)));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
    }
}
