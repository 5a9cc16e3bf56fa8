//! Unix signals for the process's long-lived tasks (shutdown, reload): a handler that could
//! not be installed is logged once and then simply never fires, so one failed signal does
//! not take the others down with it.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A signal stream, or `None` (logged, naming the signal as `name`) when the handler
/// cannot be installed.
pub(crate) fn listen(kind: SignalKind, name: &str) -> Option<Signal> {
    signal(kind)
        .map_err(|e| tracing::error!("cannot handle {name}: {e}"))
        .ok()
}

/// The next delivery of `signal`; never, when it could not be installed.
pub(crate) async fn next(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
