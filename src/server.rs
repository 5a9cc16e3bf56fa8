//! Process start-up: builds the Pingora server, its listeners and background services.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::config;
use crate::proxy::{EdgeApp, EdgeProxy};
use crate::reload::{self, ConfigReloader};
use crate::shutdown::Lifecycle;
use crate::state::{self, SharedState, Snapshot};
use crate::telemetry;
use crate::tls::{load_certified_key, CertStore};
use crate::upstream::REFRESH_INTERVAL;

/// How long pingora waits for the runtimes to stop after the grace period.
const SHUTDOWN_TIMEOUT_SECS: u64 = 5;

/// Runs the proxy in the foreground until a signal stops it (see `shutdown`).
pub fn run(config_path: &Path, upgrade: bool) -> anyhow::Result<()> {
    reload::catch_sighup_early()?;
    let config = config::load(config_path)?;
    let baseline = reload::Baseline::of(config_path, &config);
    // What the TLS listeners present; a reload swaps it in place (see `tls`).
    let certs = match &config.server.tls {
        Some(tls) => Some(CertStore::new(
            load_certified_key(&tls.cert, &tls.key).map_err(anyhow::Error::msg)?,
        )),
        None => None,
    };
    let threads = match config.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let server_conf = ServerConf {
        threads,
        // Pingora's own drain, used after an upgrade hand-over (SIGQUIT) only: SIGTERM
        // drains in `shutdown` and ends as soon as nothing runs.
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(SHUTDOWN_TIMEOUT_SECS),
        upgrade_sock: upgrade_socket_path(config_path),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    let listen = config.server.listen.clone();
    let tls_listen = config
        .server
        .tls
        .as_ref()
        .map(|t| t.listen.clone())
        .unwrap_or_default();
    let state = state::shared(Snapshot::new(config, None));
    let lifecycle = Lifecycle::new(state.clone());
    telemetry::init(&state)?;

    let edge = EdgeProxy::new(state.clone(), lifecycle.shutdown_watch());
    let mut proxy = Service::new(
        "astron-edge".to_owned(),
        EdgeApp::new(&server.configuration, edge),
    );
    for addr in &listen {
        // No L4 read buffer on plain HTTP: the request parser has its own, and the default
        // 64 KiB per connection is most of what an idle SSE stream costs.
        proxy.add_listener(
            ListenerConfig::tcp(addr.to_string()).l4_buffer(L4BufferSettings {
                read: Some(0),
                write: None,
            }),
        );
    }
    if let Some(certs) = &certs {
        // HTTPS keeps pingora's default L4 read buffer: TLS records are read through it.
        for addr in &tls_listen {
            proxy.add_listener(
                ListenerConfig::tcp(addr.to_string()).tls(certs.listener_settings()?),
            );
        }
    }
    server.add_service(lifecycle.wrap(proxy));
    server.add_service(background_service(
        "config reload",
        ConfigReloader::new(config_path, state.clone(), certs, baseline),
    ));
    server.add_service(background_service(
        "upstream dns refresh",
        DnsRefresh { state },
    ));

    tracing::info!(listen = ?listen, tls_listen = ?tls_listen, threads, "astron-edge starting");
    server.run(lifecycle.run_args());
    // Pingora has stopped serving: the last log lines, spans and metrics go out now.
    telemetry::shutdown();
    Ok(())
}

/// One upgrade socket per config file, so two proxies on one machine do not collide.
fn upgrade_socket_path(config_path: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::fs::canonicalize(config_path)
        .unwrap_or_else(|_| config_path.to_owned())
        .hash(&mut hasher);
    format!("/tmp/astron-edge-{:016x}.sock", hasher.finish())
}

/// Re-resolves the host names of the current upstreams, so a container that comes back
/// with a new address is followed without a failed request first.
struct DnsRefresh {
    state: SharedState,
}

#[async_trait]
impl BackgroundService for DnsRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(REFRESH_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let snapshot = self.state.load_full();
            for upstream in snapshot.upstreams.iter().filter(|u| u.has_host_names()) {
                let upstream = Arc::clone(upstream);
                upstream.refresh().await;
            }
        }
    }
}

/// Loads and validates like `nginx -t`: the summary on success.
pub fn check(config_path: &Path) -> anyhow::Result<String> {
    let config = config::load(config_path)?;
    Ok(format!(
        "{}{}: configuration is valid\n",
        config.summary(),
        config_path.display()
    ))
}
