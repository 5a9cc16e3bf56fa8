//! The bounded queue between the request path and the span exporter, and the batching task
//! that drains it (the OpenTelemetry batch span processor's job, with its settings:
//! `OTLP_TRACE_MAX_QUEUE_SIZE`, `..._MAX_EXPORT_BATCH_SIZE`, `..._SCHEDULE_DELAY`,
//! `..._EXPORT_TIMEOUT`).
//!
//! A request encodes its span straight into the batch being filled, framed as it will be
//! sent: no buffer per span; a batch is copied once, into its export request. The queue holds at most
//! `queue_size` spans; past that a span is dropped and counted in
//! `edge_otlp_spans_dropped_total`. The lock is held for that one encoding, never across
//! an await. The request never wakes the exporter for a single span: the task wakes on its
//! schedule, or when a whole batch is waiting. It runs on the telemetry runtime, so a dead
//! or silent collector only ever holds that task (each export bounded by its timeout),
//! never a request.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::runtime::Handle;
use tokio::sync::{oneshot, Notify};

use super::metrics;
use super::trace_export::TraceExporter;
use crate::otlp_wire::{frame_span, Envelope};

/// At most one "export failed" line per this interval, so a dead collector does not
/// flood the proxy's own log.
const EXPORT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Room for the resource and scope around a batch's spans.
const ENVELOPE_BYTES: usize = 512;
/// Room for one framed span, attributes included, so that a batch rarely grows: growing
/// copies it.
const BYTES_PER_SPAN: usize = 400;
/// The most room reserved for one batch up front.
const MAX_BATCH_RESERVE: usize = 1 << 20;

/// How the batching task answers [`SpanQueue::shutdown`] once the queue is exported.
type Ack = std::sync::mpsc::Sender<()>;

/// How spans are batched (the batch span processor's settings).
#[derive(Debug, Clone, Copy)]
pub(super) struct BatchSettings {
    pub queue_size: usize,
    pub batch_size: usize,
    pub schedule_delay: Duration,
}

/// The request path's end of the queue.
#[derive(Debug)]
pub(super) struct SpanQueue {
    queued: Arc<Mutex<Queued>>,
    queue_size: usize,
    batch_size: usize,
    batch_ready: Arc<Notify>,
    /// Taken by [`SpanQueue::shutdown`].
    stop: Mutex<Option<oneshot::Sender<Ack>>>,
}

/// Spans waiting for export, as the `ScopeSpans.spans` fields of their batches.
#[derive(Debug, Default)]
struct Queued {
    /// Batches of `batch_size` spans.
    full: Vec<Batch>,
    filling: Batch,
    /// In all batches: at most `queue_size`.
    spans: usize,
}

#[derive(Debug, Default)]
struct Batch {
    framed: Vec<u8>,
    spans: usize,
}

enum Pushed {
    Queued,
    FilledBatch,
    Full,
}

impl Queued {
    fn push(
        &mut self,
        queue_size: usize,
        batch_size: usize,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Pushed {
        if self.spans >= queue_size {
            return Pushed::Full;
        }
        self.spans += 1;
        let filling = &mut self.filling;
        if filling.spans == 0 {
            filling
                .framed
                .reserve((batch_size * BYTES_PER_SPAN).min(MAX_BATCH_RESERVE));
        }
        frame_span(&mut filling.framed, encode);
        filling.spans += 1;
        if filling.spans < batch_size {
            return Pushed::Queued;
        }
        let full = std::mem::take(filling);
        self.full.push(full);
        Pushed::FilledBatch
    }

    /// Everything queued: the full batches, then the one being filled.
    fn take_all(&mut self) -> Vec<Batch> {
        let mut batches = std::mem::take(&mut self.full);
        if self.filling.spans > 0 {
            batches.push(std::mem::take(&mut self.filling));
        }
        self.spans = 0;
        batches
    }
}

fn lock(mutex: &Mutex<Queued>) -> MutexGuard<'_, Queued> {
    match mutex.lock() {
        Ok(queued) => queued,
        Err(poisoned) => {
            // A panic while encoding: the batch being filled may end in a partial span,
            // and would fail whole at the collector. Drop it; the rest goes on.
            let mut queued = poisoned.into_inner();
            queued.spans = queued.spans.saturating_sub(queued.filling.spans + 1);
            queued.filling = Batch::default();
            mutex.clear_poison();
            queued
        }
    }
}

impl SpanQueue {
    /// Starts the batching task on `runtime`.
    pub(super) fn start(
        settings: BatchSettings,
        envelope: Envelope,
        exporter: TraceExporter,
        runtime: &Handle,
    ) -> SpanQueue {
        let queue_size = settings.queue_size.max(1);
        let batch_size = settings.batch_size.clamp(1, queue_size);
        let queued = Arc::new(Mutex::new(Queued::default()));
        let batch_ready = Arc::new(Notify::new());
        let (stop_tx, stop_rx) = oneshot::channel();
        let batcher = Batcher {
            queued: queued.clone(),
            envelope,
            exporter,
            last_error_log: 0,
        };
        runtime.spawn(batcher.run(settings.schedule_delay, batch_ready.clone(), stop_rx));
        SpanQueue {
            queued,
            queue_size,
            batch_size,
            batch_ready,
            stop: Mutex::new(Some(stop_tx)),
        }
    }

    /// Queues one span, which `encode` writes (a `Span` message's fields); drops and
    /// counts it when the queue is full.
    pub(super) fn push(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let pushed = lock(&self.queued).push(self.queue_size, self.batch_size, encode);
        match pushed {
            Pushed::Queued => {}
            Pushed::FilledBatch => self.batch_ready.notify_one(),
            Pushed::Full => metrics::span_dropped(),
        }
    }

    /// Exports what is queued and stops the task, waiting at most until `deadline`.
    pub(super) fn shutdown(&self, deadline: Instant) -> bool {
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
    queued: Arc<Mutex<Queued>>,
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

    /// Exports everything queued: the full batches, then the one being filled.
    async fn export_queued(&mut self) {
        let batches = lock(&self.queued).take_all();
        for batch in batches {
            let mut body = Vec::with_capacity(batch.framed.len() + ENVELOPE_BYTES);
            self.envelope.encode_request(&batch.framed, &mut body);
            drop(batch.framed);
            if let Err(e) = self.exporter.export(body).await {
                self.log_failure(batch.spans, &e);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_fill_batches_up_to_the_queue_size() {
        let mut queued = Queued::default();
        let mut push = |byte: u8| queued.push(5, 2, |out| out.push(byte));
        assert!(matches!(push(1), Pushed::Queued));
        assert!(matches!(push(2), Pushed::FilledBatch));
        assert!(matches!(push(3), Pushed::Queued));
        assert!(matches!(push(4), Pushed::FilledBatch));
        assert!(matches!(push(5), Pushed::Queued));
        assert!(matches!(push(6), Pushed::Full));
        let batches = queued.take_all();
        let spans: Vec<usize> = batches.iter().map(|b| b.spans).collect();
        assert_eq!(spans, [2, 2, 1]);
        // ScopeSpans.spans = 2, length 1, the span
        assert_eq!(batches[0].framed, [0x12, 1, 1, 0x12, 1, 2]);
        assert_eq!(batches[2].framed, [0x12, 1, 5]);
        assert!(matches!(
            queued.push(5, 2, |out| out.push(7)),
            Pushed::Queued
        ));
        assert_eq!(queued.take_all().len(), 1);
        assert!(queued.take_all().is_empty());
    }

    #[test]
    fn a_panic_while_encoding_drops_only_the_batch_being_filled() {
        let mutex = Mutex::new(Queued::default());
        for byte in 1..=3 {
            lock(&mutex).push(8, 2, |out| out.push(byte));
        }
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lock(&mutex).push(8, 2, |_| panic!("encoding failed"));
        }));
        assert!(panicked.is_err() && mutex.is_poisoned());
        let mut queued = lock(&mutex);
        assert_eq!(queued.spans, 2);
        let batches = queued.take_all();
        drop(queued);
        assert!(!mutex.is_poisoned());
        let spans: Vec<usize> = batches.iter().map(|b| b.spans).collect();
        assert_eq!(spans, [2]);
    }
}
