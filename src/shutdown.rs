//! Stopping: SIGTERM drains, SIGINT stops at once, SIGQUIT hands over to an upgrade (SPEC §1).
//!
//! Pingora's own SIGTERM handling stops the listeners and then sleeps the whole
//! `grace_period_seconds` on the main thread, however few requests are left: a `docker stop`
//! of an idle proxy would always take the full 30 s. So astron-edge replaces pingora's
//! signal watch ([`RunArgs::shutdown_signal`]) and, on SIGTERM:
//!
//! 1. stops accepting: the proxy service runs with a shutdown watch of its own (see
//!    [`Lifecycle::wrap`]), fired here, so pingora closes the listening sockets (new
//!    connections are refused) and idle keep-alive connections, and lets running requests
//!    go on;
//! 2. waits until no request is in flight ([`RunningRequest`], held by every request
//!    context for its whole life, SSE streams included), or until `server.grace_period` of
//!    the config running at that moment is over;
//! 3. then asks pingora for its immediate stop: whatever still runs (a stream longer than
//!    the grace period) is closed, and the process exits 0. Pingora logs that step as
//!    "SIGINT received, exiting" — that line is the end of the drain, not a second signal.
//!
//! SIGINT stops at once, also in the middle of a drain. SIGQUIT keeps pingora's schedule:
//! the listening sockets go to the process started with `run --upgrade`, the old process
//! keeps serving for 5 s, then stops accepting and gives its running requests the
//! grace period of the config it started with.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ListenFds, RunArgs, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::{ServiceReadyNotifier, ServiceWithDependents};
use tokio::signal::unix::{Signal, SignalKind};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::signals::{listen, next};
use crate::state::SharedState;

/// How often the drain looks at the in-flight count: short against any grace period,
/// long against the cost of one atomic load.
const DRAIN_POLL: Duration = Duration::from_millis(10);

static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// `true` once the drain's grace period is over: streams relayed off Pingora's pipeline
/// (`proxy::relay`) then cut themselves, and are logged and counted as `shutdown`, before
/// the process stops.
static GRACE_OVER: std::sync::LazyLock<watch::Sender<bool>> =
    std::sync::LazyLock::new(|| watch::Sender::new(false));

/// How long the end of the drain waits for the streams cut at the grace period's end to
/// report themselves.
const CUT_REPORT_WAIT: Duration = Duration::from_millis(500);

/// Watches for the end of the grace period.
pub(crate) fn grace_over() -> watch::Receiver<bool> {
    GRACE_OVER.subscribe()
}

/// Counts one request from its context's creation to its drop. A process-wide counter:
/// a process runs one server, and a static keeps the request path free of any lookup.
#[derive(Debug)]
pub(crate) struct RunningRequest(());

impl RunningRequest {
    pub(crate) fn enter() -> RunningRequest {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        RunningRequest(())
    }

    /// Requests currently in flight.
    pub(crate) fn count() -> usize {
        IN_FLIGHT.load(Ordering::Relaxed)
    }
}

impl Drop for RunningRequest {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The stop sequence shared by the signal watch and the wrapped proxy service.
pub(crate) struct Lifecycle {
    state: SharedState,
    stop_accepting: watch::Sender<bool>,
}

impl Lifecycle {
    pub(crate) fn new(state: SharedState) -> Arc<Lifecycle> {
        Arc::new(Lifecycle {
            state,
            stop_accepting: watch::Sender::new(false),
        })
    }

    /// The watch the proxy service runs with: `true` once it stops accepting.
    pub(crate) fn shutdown_watch(&self) -> ShutdownWatch {
        self.stop_accepting.subscribe()
    }

    /// Runs `service` with this lifecycle's shutdown watch instead of pingora's, so that
    /// SIGTERM can stop its listeners before pingora's own shutdown; pingora's shutdown
    /// (after an upgrade hand-over) is passed on to it.
    pub(crate) fn wrap<S: ServiceWithDependents>(self: &Arc<Self>, service: S) -> Draining<S> {
        Draining {
            inner: service,
            lifecycle: self.clone(),
        }
    }

    /// Pingora's run arguments with this lifecycle's signal handling.
    pub(crate) fn run_args(self: &Arc<Self>) -> RunArgs {
        RunArgs {
            shutdown_signal: Box::new(Signals {
                lifecycle: self.clone(),
            }),
        }
    }

    /// Stops accepting, waits for the running requests (bounded by the grace period, cut
    /// short by SIGINT), and returns pingora's immediate stop.
    async fn drain(&self, interrupt: &mut Option<Signal>) -> ShutdownSignal {
        let grace = self.state.load().config.server.grace_period;
        let started = Instant::now();
        tracing::info!(
            in_flight = RunningRequest::count(),
            grace_period = ?grace,
            "SIGTERM: no longer accepting connections, letting running requests finish"
        );
        self.stop_accepting.send_replace(true);
        let deadline = started + grace;
        loop {
            let left = RunningRequest::count();
            if left == 0 {
                tracing::info!(after = ?started.elapsed(), "all requests finished; stopping");
                return ShutdownSignal::FastShutdown;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    in_flight = left,
                    "grace period over; closing the remaining connections"
                );
                GRACE_OVER.send_replace(true);
                let reported = Instant::now() + CUT_REPORT_WAIT;
                while RunningRequest::count() > 0 && Instant::now() < reported {
                    tokio::time::sleep(DRAIN_POLL).await;
                }
                return ShutdownSignal::FastShutdown;
            }
            tokio::select! {
                _ = next(interrupt) => {
                    tracing::info!(in_flight = left, "SIGINT during the drain; stopping now");
                    return ShutdownSignal::FastShutdown;
                }
                _ = tokio::time::sleep(DRAIN_POLL) => {}
            }
        }
    }
}

/// Replaces pingora's `UnixShutdownSignalWatch`.
struct Signals {
    lifecycle: Arc<Lifecycle>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut terminate = listen(SignalKind::terminate(), "SIGTERM");
        let mut interrupt = listen(SignalKind::interrupt(), "SIGINT");
        let mut quit = listen(SignalKind::quit(), "SIGQUIT");
        tokio::select! {
            _ = next(&mut terminate) => self.lifecycle.drain(&mut interrupt).await,
            _ = next(&mut interrupt) => {
                tracing::info!("SIGINT: stopping now");
                ShutdownSignal::FastShutdown
            }
            _ = next(&mut quit) => {
                tracing::info!("SIGQUIT: handing the listening sockets to the upgraded process");
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

/// A pingora service run under the [`Lifecycle`]'s shutdown watch.
pub(crate) struct Draining<S> {
    inner: S,
    lifecycle: Arc<Lifecycle>,
}

#[async_trait]
impl<S: ServiceWithDependents> ServiceWithDependents for Draining<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        mut shutdown: ShutdownWatch,
        listeners_per_fd: usize,
        ready_notifier: ServiceReadyNotifier,
    ) {
        let ours = self.lifecycle.stop_accepting.subscribe();
        let stop = self.lifecycle.stop_accepting.clone();
        // Pingora's own shutdown (upgrade hand-over) stops the listeners too.
        tokio::spawn(async move {
            if shutdown.wait_for(|down| *down).await.is_ok() {
                stop.send_replace(true);
            }
        });
        self.inner
            .start_service(fds, ours, listeners_per_fd, ready_notifier)
            .await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(
        &self,
        global: &pingora::server::RuntimeOpts,
    ) -> Option<pingora::server::RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn on_startup_delay(&self, time_waited: Duration) {
        self.inner.on_startup_delay(time_waited);
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}
