//! The proxy's own log (stderr): one ERROR line means one failed request or one broken
//! component, never normal operation — operators page on ERROR lines.
//!
//! Pingora 0.9 logs `ERROR pingora_core::connectors: failed to acquire reusable stream`
//! (`pingora-core/src/connectors/mod.rs`, `reused_stream`) when the idle-pool watcher of a
//! pooled upstream connection has not let go of it yet at the moment a request wants to
//! reuse it. Nothing fails: the request opens a new connection (measured: 5 times in
//! 20,000 requests, no failed request). That is the only ERROR event of this target in
//! pingora-core 0.9.1 (its other event there is a WARN), so ERROR events of exactly this
//! target are left out; real connection failures are reported by the proxy's own line
//! for the failed request (route, upstream, status). Submodules (`::l4`, `::tls`...) are
//! untouched.

use tracing::{Level, Metadata};

/// The target whose ERROR events are routine.
const POOL_TARGET: &str = "pingora_core::connectors";

/// Whether an event is routine operation logged at ERROR by a dependency, and left out.
pub fn is_routine(meta: &Metadata<'_>) -> bool {
    *meta.level() == Level::ERROR && meta.target() == POOL_TARGET
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tracing_subscriber::layer::{Context, SubscriberExt as _};
    use tracing_subscriber::Layer;

    use super::*;

    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn only_the_pool_miss_is_left_out() {
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry().with(
            Count(seen.clone())
                .with_filter(tracing_subscriber::filter::filter_fn(|m| !is_routine(m))),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "pingora_core::connectors", "failed to acquire reusable stream");
            assert_eq!(seen.load(Ordering::Relaxed), 0);
            tracing::warn!(target: "pingora_core::connectors", "Unexpected data read in idle connection");
            tracing::error!(target: "pingora_core::connectors::l4", "connect failed");
            tracing::error!(target: "astron_edge::proxy", "upstream refused");
            assert_eq!(seen.load(Ordering::Relaxed), 3);
        });
    }
}
