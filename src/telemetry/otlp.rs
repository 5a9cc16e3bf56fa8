//! The OTLP pipelines: a tracer provider with a bounded batch span processor and a meter
//! provider with a periodic reader, exporting over gRPC (tonic) or http/protobuf. Spans go
//! through the proxy's own exporter ([`super::trace_export`]), metrics through the SDK's.
//!
//! The SDK's batch processor and periodic reader run on threads of their own and drive the
//! exporters with a plain `block_on`. A tonic channel needs a tokio runtime for its
//! connection task, and an HTTP client needs one for its sockets, so both are bound to the
//! telemetry runtime ([`super::TelemetryRuntime`]): the tonic channel is created inside it,
//! and every HTTP request is spawned onto it. A dead or silent collector therefore only
//! ever blocks those background threads, never a request.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::resource::{
    EnvResourceDetector, ResourceDetector, TelemetryResourceDetector,
};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use tokio::runtime::Handle;

use super::metrics::DURATION_BUCKETS;
use super::settings::OtlpSettings;
use super::trace_export::TraceExporter;
use crate::config::OtlpProtocol;

/// Instrumentation scope of every span and instrument.
const SCOPE: &str = "astron-edge";
/// Largest OTLP/HTTP response body read back (the collector's answer is tiny).
const MAX_RESPONSE_BODY: usize = 64 * 1024;
/// At most one "export failed" line per this interval, so a dead collector does not
/// flood the proxy's own log.
const EXPORT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// The running pipelines and the handles the request path records through.
pub struct Otlp {
    pub tracer: SdkTracer,
    /// `http.server.request.duration`, seconds.
    pub server_duration: Histogram<f64>,
    /// `http.client.request.duration`, seconds (the upstream calls).
    pub client_duration: Histogram<f64>,
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
}

impl Otlp {
    /// Builds both pipelines; must run inside the telemetry runtime (tonic spawns there).
    pub fn start(settings: &OtlpSettings, runtime: &Handle) -> anyhow::Result<Otlp> {
        let resource = resource(&settings.service_name);
        let queued = Arc::new(AtomicUsize::new(0));
        let span_exporter = CountingExporter {
            inner: TraceExporter::new(settings, runtime)?,
            queued: queued.clone(),
            last_error_log: AtomicU64::new(0),
        };
        let batch = BatchSpanProcessor::builder(span_exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(settings.trace_queue_size)
                    .with_max_export_batch_size(settings.trace_batch_size)
                    .with_scheduled_delay(settings.trace_schedule_delay)
                    .build(),
            )
            .build();
        let tracer_provider = SdkTracerProvider::builder()
            .with_span_processor(BoundedQueue {
                inner: batch,
                queued,
                capacity: settings.trace_queue_size,
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.sampling_ratio,
            ))))
            .with_resource(resource.clone())
            .build();

        let reader = PeriodicReader::builder(metric_exporter(settings, runtime)?)
            .with_interval(settings.metrics_interval)
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource)
            .build();
        let meter = meter_provider.meter(SCOPE);
        let server_duration = meter
            .f64_histogram("http.server.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP server requests.")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();
        let client_duration = meter
            .f64_histogram("http.client.request.duration")
            .with_unit("s")
            .with_description("Duration of HTTP client requests (the proxy's upstream calls).")
            .with_boundaries(DURATION_BUCKETS.to_vec())
            .build();

        Ok(Otlp {
            tracer: tracer_provider.tracer(SCOPE),
            server_duration,
            client_duration,
            tracer_provider,
            meter_provider,
        })
    }

    /// Exports what is pending and stops, waiting at most until `deadline` (both
    /// pipelines in parallel: the SDK bounds neither call by our deadline).
    pub fn shutdown(&self, deadline: Instant) {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let tracer_provider = self.tracer_provider.clone();
        let meter_provider = self.meter_provider.clone();
        let budget = deadline.saturating_duration_since(Instant::now());
        for (name, job) in [
            (
                "traces",
                Box::new(move || tracer_provider.shutdown_with_timeout(budget))
                    as Box<dyn FnOnce() -> OTelSdkResult + Send>,
            ),
            (
                "metrics",
                Box::new(move || meter_provider.shutdown_with_timeout(budget)),
            ),
        ] {
            let done = done_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("otlp-flush-{name}"))
                .spawn(move || {
                    let _ = done.send((name, job()));
                });
            if let Err(e) = spawned {
                tracing::warn!("cannot flush OTLP {name}: {e}");
            }
        }
        drop(done_tx);
        let mut pending = 2;
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok((name, Err(e))) => {
                    tracing::warn!("OTLP {name} not fully flushed: {e}");
                    pending -= 1;
                }
                Ok(_) => pending -= 1,
                Err(_) => {
                    tracing::warn!("OTLP flush did not finish in time; pending data dropped");
                    return;
                }
            }
        }
    }
}

/// `service.name` from the settings, `OTEL_RESOURCE_ATTRIBUTES` on top, and the SDK's own
/// `telemetry.sdk.*` attributes.
fn resource(service_name: &str) -> Resource {
    let detectors: [Box<dyn ResourceDetector>; 2] = [
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ];
    let mut builder = Resource::builder_empty()
        .with_service_name(service_name.to_owned())
        .with_detectors(&detectors);
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        // OTEL_SERVICE_NAME wins over a service.name in OTEL_RESOURCE_ATTRIBUTES.
        builder = builder.with_service_name(service_name.to_owned());
    }
    builder.build()
}

fn metric_exporter(
    settings: &OtlpSettings,
    runtime: &Handle,
) -> anyhow::Result<opentelemetry_otlp::MetricExporter> {
    let builder = opentelemetry_otlp::MetricExporter::builder();
    let exporter = match settings.protocol {
        OtlpProtocol::Grpc => builder
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.metric_timeout)
            .build()?,
        OtlpProtocol::HttpProtobuf => builder
            .with_http()
            .with_http_client(RuntimeHttpClient::new(runtime, settings.metric_timeout)?)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(signal_url(&settings.endpoint, "metrics"))
            .with_timeout(settings.metric_timeout)
            .build()?,
    };
    Ok(exporter)
}

/// OTLP/HTTP: the base URL plus `/v1/<signal>`, as `OTEL_EXPORTER_OTLP_ENDPOINT` means it.
pub(super) fn signal_url(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
}

/// An OTLP/HTTP client whose requests run on the telemetry runtime, whatever thread (the
/// SDK's batch thread, with no runtime) awaits them.
#[derive(Debug)]
pub(super) struct RuntimeHttpClient {
    client: reqwest::Client,
    runtime: Handle,
}

impl RuntimeHttpClient {
    pub(super) fn new(runtime: &Handle, timeout: Duration) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .no_proxy()
            .build()?;
        Ok(RuntimeHttpClient {
            client,
            runtime: runtime.clone(),
        })
    }
}

#[async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move {
                let request = reqwest::Request::try_from(request)?;
                let mut response = client.execute(request).await?;
                let mut builder = http::Response::builder().status(response.status());
                if let Some(headers) = builder.headers_mut() {
                    *headers = std::mem::take(response.headers_mut());
                }
                let mut body = Vec::new();
                while let Some(chunk) = response.chunk().await? {
                    if body.len() + chunk.len() > MAX_RESPONSE_BODY {
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok::<_, HttpError>(builder.body(Bytes::from(body))?)
            })
            .await?
    }
}

/// A batch span processor whose queue bound is enforced (and its drops counted) here,
/// since the SDK's processor drops silently. A span counts as queued from `on_end` until
/// the exporter takes it in a batch.
#[derive(Debug)]
struct BoundedQueue {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for BoundedQueue {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            super::metrics::span_dropped();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Releases queue slots as batches leave the queue, and reports export failures (rate
/// limited: the SDK's own diagnostics are compiled out).
#[derive(Debug)]
struct CountingExporter<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
    /// Unix seconds of the last failure logged.
    last_error_log: AtomicU64,
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let spans = batch.len();
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = self.last_error_log.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= EXPORT_ERROR_LOG_INTERVAL.as_secs()
                && self
                    .last_error_log
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                tracing::warn!(spans, "OTLP span export failed (spans lost): {e}");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_signal_urls_follow_the_standard() {
        assert_eq!(
            signal_url("http://c:4318", "traces"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            signal_url("http://c:4318/", "metrics"),
            "http://c:4318/v1/metrics"
        );
    }
}
