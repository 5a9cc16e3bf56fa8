//! What a reload changes in telemetry (SPEC §3: `[metrics]` and `[telemetry]` reload
//! like the rest): the metrics listener moves, the OTLP pipelines are rebuilt.
//!
//! - `metrics.listen`: the new address is bound first; only then is the old one closed,
//!   so a bind failure (the port is taken) leaves the old listener serving and logs one
//!   error. Removing it closes the port and stops per-request counting.
//! - OTLP: when the effective settings (`[telemetry]` with the environment on top)
//!   change, new pipelines are built and swapped in; the old ones flush what they hold
//!   in the background and stop. Requests running across the swap export their span
//!   through the pipelines running when they end. The sampling ratio and the error/slow
//!   rule are read from each request's own config and need no swap.
//!
//! Runs on the config reloader's task; nothing here touches a request.

use std::net::SocketAddr;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Instant;

use super::metrics_server::MetricsListener;
use super::otlp::Otlp;
use super::settings::{self, OtlpSettings};
use super::{metrics, Telemetry, FLUSH_TIMEOUT};
use crate::config::{Config, OtlpProtocol};

/// What runs now, for the next reload to compare with.
#[derive(Default)]
pub(super) struct Running {
    otlp: Option<OtlpSettings>,
    metrics: Option<MetricsListener>,
}

fn running(t: &Telemetry) -> MutexGuard<'_, Running> {
    t.running.lock().unwrap_or_else(PoisonError::into_inner)
}

/// At start: a metrics listener that cannot be bound is an error, as a public one is.
pub(super) fn start(t: &Telemetry, config: &Config) -> anyhow::Result<()> {
    let mut running = running(t);
    if let Some(addr) = config.metrics_listen {
        let listener = MetricsListener::bind(addr, t.runtime.handle())
            .map_err(|e| anyhow::anyhow!("metrics.listen {addr}: {e}"))?;
        running.metrics = Some(listener);
        metrics::count_requests(true);
    }
    switch_otlp(t, &mut running, resolve(config));
    Ok(())
}

/// After a reload.
pub(super) fn apply(t: &Telemetry, config: &Config) {
    let mut running = running(t);
    move_metrics(t, &mut running, config.metrics_listen);
    let settings = resolve(config);
    if settings != running.otlp {
        switch_otlp(t, &mut running, settings);
    }
}

fn resolve(config: &Config) -> Option<OtlpSettings> {
    settings::resolve(&config.telemetry, &|name| std::env::var(name).ok())
}

fn move_metrics(t: &Telemetry, running: &mut Running, wanted: Option<SocketAddr>) {
    let current = running.metrics.as_ref().map(|l| l.addr);
    if current == wanted {
        return;
    }
    match wanted {
        None => {
            running.metrics = None;
            metrics::count_requests(false);
            tracing::info!("metrics listener closed");
        }
        Some(addr) => match MetricsListener::bind(addr, t.runtime.handle()) {
            Ok(listener) => {
                // the old one (if any) closes here, after the new one serves
                running.metrics = Some(listener);
                metrics::count_requests(true);
                tracing::info!(%addr, "metrics listener moved");
            }
            Err(e) => tracing::error!(
                "config reload: cannot listen on metrics.listen {addr}: {e}; metrics stay on {}",
                current.map_or_else(|| "nothing".to_owned(), |a| a.to_string())
            ),
        },
    }
}

/// Builds the pipelines of `settings` (none: OTLP off), swaps them in and stops the old
/// ones in the background.
fn switch_otlp(t: &Telemetry, running: &mut Running, settings: Option<OtlpSettings>) {
    let new = settings.as_ref().and_then(|settings| {
        let _enter = t.runtime.enter();
        match Otlp::start(settings, t.runtime.handle()) {
            Ok(otlp) => {
                tracing::info!(
                    endpoint = %settings.endpoint,
                    protocol = match settings.protocol {
                        OtlpProtocol::Grpc => "grpc",
                        OtlpProtocol::HttpProtobuf => "http/protobuf",
                    },
                    service_name = %settings.service_name,
                    gzip = settings.traces_gzip,
                    "OTLP export on"
                );
                Some(Arc::new(otlp))
            }
            Err(e) => {
                tracing::error!("OTLP export off: cannot set up the exporters: {e:#}");
                None
            }
        }
    });
    let was_on = running.otlp.is_some();
    running.otlp = settings.filter(|_| new.is_some());
    let old = t.otlp.swap(new);
    if was_on && running.otlp.is_none() {
        tracing::info!("OTLP export off");
    }
    if let Some(old) = old {
        // Flushing waits on the network: never on the reloader's task.
        let spawned = std::thread::Builder::new()
            .name("otlp-retire".into())
            .spawn(move || old.shutdown(Instant::now() + FLUSH_TIMEOUT));
        if let Err(e) = spawned {
            tracing::warn!("cannot flush the previous OTLP pipelines: {e}");
        }
    }
}
