//! The bounded queue between the request path and the span exporter, and the batching task
//! that drains it (the OpenTelemetry batch span processor's job, with its settings:
//! `OTLP_TRACE_MAX_QUEUE_SIZE`, `..._MAX_EXPORT_BATCH_SIZE`, `..._SCHEDULE_DELAY`,
//! `..._EXPORT_TIMEOUT`).
//!
//! A request only pushes its encoded span into a bounded channel; when the channel is
//! full the span is dropped and counted in `edge_otlp_spans_dropped_total`. The request
//! never wakes the exporter for a single span: the task wakes on its schedule, or when a
//! whole batch is waiting. It runs on the telemetry runtime, so a dead or silent collector
//! only ever holds that task (each export bounded by its timeout), never a request.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};

use super::metrics;
use super::otlp_wire::Envelope;
use super::trace_export::TraceExporter;

/// At most one "export failed" line per this interval, so a dead collector does not
/// flood the proxy's own log.
const EXPORT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Room for the resource and scope around a batch's spans.
const ENVELOPE_BYTES: usize = 512;

/// How the batching task answers [`SpanQueue::shutdown`] once the queue is exported.
type Ack = std::sync::mpsc::Sender<()>;

/// How spans are batched (the batch span processor's settings).
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub queue_size: usize,
    pub batch_size: usize,
    pub schedule_delay: Duration,
}

/// The request path's end of the queue.
#[derive(Debug)]
pub struct SpanQueue {
    tx: SyncSender<Vec<u8>>,
    /// Spans pushed since start; every `batch_size`-th wakes the task.
    pushed: AtomicUsize,
    batch_size: usize,
    batch_ready: Arc<Notify>,
    /// Taken by [`SpanQueue::shutdown`].
    stop: std::sync::Mutex<Option<oneshot::Sender<Ack>>>,
}

impl SpanQueue {
    /// Starts the batching task on `runtime`.
    pub fn start(
        settings: BatchSettings,
        envelope: Envelope,
        exporter: TraceExporter,
        runtime: &Handle,
    ) -> SpanQueue {
        let queue_size = settings.queue_size.max(1);
        let batch_size = settings.batch_size.clamp(1, queue_size);
        let (tx, rx) = sync_channel(queue_size);
        let batch_ready = Arc::new(Notify::new());
        let (stop_tx, stop_rx) = oneshot::channel();
        let batcher = Batcher {
            rx,
            batch_size,
            envelope,
            exporter,
            last_error_log: 0,
        };
        runtime.spawn(batcher.run(settings.schedule_delay, batch_ready.clone(), stop_rx));
        SpanQueue {
            tx,
            pushed: AtomicUsize::new(0),
            batch_size,
            batch_ready,
            stop: std::sync::Mutex::new(Some(stop_tx)),
        }
    }

    /// Queues one encoded span (a `Span` message); drops and counts it when the queue is
    /// full or stopped.
    pub fn push(&self, span: Vec<u8>) {
        match self.tx.try_send(span) {
            Ok(()) => {
                let pushed = self.pushed.fetch_add(1, Ordering::Relaxed) + 1;
                if pushed % self.batch_size == 0 {
                    self.batch_ready.notify_one();
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => metrics::span_dropped(),
        }
    }

    /// Exports what is queued and stops the task, waiting at most until `deadline`.
    pub fn shutdown(&self, deadline: Instant) -> bool {
        let stop = self.stop.lock().ok().and_then(|mut stop| stop.take());
        let Some(stop) = stop else {
            return true;
        };
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        if stop.send(done_tx).is_err() {
            return false;
        }
        done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

struct Batcher {
    rx: Receiver<Vec<u8>>,
    batch_size: usize,
    envelope: Envelope,
    exporter: TraceExporter,
    /// Unix seconds of the last failure logged.
    last_error_log: u64,
}

impl Batcher {
    async fn run(
        mut self,
        delay: Duration,
        batch_ready: Arc<Notify>,
        mut stop: oneshot::Receiver<Ack>,
    ) {
        loop {
            let stopping = tokio::select! {
                () = batch_ready.notified() => None,
                () = tokio::time::sleep(delay) => None,
                ack = &mut stop => Some(ack),
            };
            self.export_queued().await;
            if let Some(ack) = stopping {
                // Drained: tell `shutdown`, unless it is gone (dropped, or no longer waiting).
                let _ = ack.map(|ack| ack.send(()));
                return;
            }
        }
    }

    /// Exports everything queued, in batches of at most `batch_size`.
    async fn export_queued(&mut self) {
        loop {
            let batch: Vec<Vec<u8>> = self.rx.try_iter().take(self.batch_size).collect();
            if batch.is_empty() {
                return;
            }
            let full = batch.len() == self.batch_size;
            let size = batch.iter().map(|s| s.len() + 4).sum::<usize>() + ENVELOPE_BYTES;
            let mut body = Vec::with_capacity(size);
            self.envelope.encode_request(&batch, &mut body);
            let spans = batch.len();
            drop(batch);
            if let Err(e) = self.exporter.export(body).await {
                self.log_failure(spans, &e);
            }
            if !full {
                return;
            }
        }
    }

    fn log_failure(&mut self, spans: usize, error: &dyn std::fmt::Display) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if now.saturating_sub(self.last_error_log) >= EXPORT_ERROR_LOG_INTERVAL.as_secs() {
            self.last_error_log = now;
            tracing::warn!(spans, "OTLP span export failed (spans lost): {error}");
        }
    }
}
