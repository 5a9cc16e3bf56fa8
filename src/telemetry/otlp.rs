//! The OTLP pipelines: spans through the proxy's own encoder, queue and exporter
//! ([`super::otlp_wire`], [`super::span_queue`], [`super::trace_export`]), metrics through
//! the SDK's meter provider with a periodic reader; both over gRPC (tonic) or
//! http/protobuf.
//!
//! The SDK's periodic reader runs on a thread of its own and drives its exporter with a
//! plain `block_on`. A tonic channel needs a tokio runtime for its connection task, and an
//! HTTP client needs one for its sockets, so both are bound to the telemetry runtime: the
//! tonic channels are created inside it, and every HTTP request is spawned onto it. A
//! dead or silent collector therefore only ever holds background work, never a request.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{Compression, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::resource::{
    EnvResourceDetector, ResourceDetector, TelemetryResourceDetector,
};
use opentelemetry_sdk::Resource;
use tokio::runtime::Handle;

use super::settings::OtlpSettings;
use super::span_queue::{BatchSettings, SpanQueue};
use super::trace_export::TraceExporter;
use crate::config::OtlpProtocol;
use crate::metrics::DURATION_BUCKETS;
use crate::otlp_wire::{encode_span, Attributes, Envelope, SpanHead};

/// Instrumentation scope of every span and instrument.
const SCOPE: &str = "astron-edge";
/// Largest OTLP/HTTP response body read back (the collector's answer is tiny).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The running pipelines and the handles the request path records through.
pub(crate) struct Otlp {
    /// `http.server.request.duration`, seconds.
    pub server_duration: Histogram<f64>,
    /// `http.client.request.duration`, seconds (the upstream calls).
    pub client_duration: Histogram<f64>,
    spans: SpanQueue,
    meter_provider: SdkMeterProvider,
}

impl Otlp {
    /// Builds both pipelines; must run inside the telemetry runtime (tonic spawns there).
    pub(crate) fn start(settings: &OtlpSettings, runtime: &Handle) -> anyhow::Result<Otlp> {
        let resource = resource(&settings.service_name);
        let spans = SpanQueue::start(
            BatchSettings {
                queue_size: settings.trace_queue_size,
                batch_size: settings.trace_batch_size,
                schedule_delay: settings.trace_schedule_delay,
            },
            Envelope::new(&resource, SCOPE, ""),
            TraceExporter::new(settings, runtime)?,
            runtime,
        );

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
            server_duration,
            client_duration,
            spans,
            meter_provider,
        })
    }

    /// Encodes a finished span and queues it for export (dropped and counted when the
    /// queue is full).
    pub(crate) fn queue_span(
        &self,
        head: &SpanHead<'_>,
        attributes: impl FnOnce(&mut Attributes<'_>),
    ) {
        self.spans.push(|out| encode_span(out, head, attributes));
    }

    /// Exports what is pending and stops, waiting at most until `deadline` (spans and
    /// metrics in parallel: the SDK does not bound its call by our deadline).
    pub(crate) fn shutdown(&self, deadline: Instant) {
        let meter_provider = self.meter_provider.clone();
        let budget = deadline.saturating_duration_since(Instant::now());
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("otlp-flush-metrics".into())
            .spawn(move || {
                let _ = done_tx.send(meter_provider.shutdown_with_timeout(budget));
            });
        if !self.spans.shutdown(deadline) {
            tracing::warn!("OTLP spans not fully flushed in time; pending spans dropped");
        }
        if let Err(e) = spawned {
            tracing::warn!("cannot flush OTLP metrics: {e}");
            return;
        }
        match done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("OTLP metrics not fully flushed: {e}"),
            Err(_) => tracing::warn!("OTLP metrics flush did not finish in time"),
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
    let gzip = settings.metrics_gzip;
    let exporter = match settings.protocol {
        OtlpProtocol::Grpc => {
            let builder = builder
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_timeout(settings.metric_timeout);
            if gzip {
                builder.with_compression(Compression::Gzip).build()?
            } else {
                builder.build()?
            }
        }
        OtlpProtocol::HttpProtobuf => {
            let builder = builder
                .with_http()
                .with_http_client(RuntimeHttpClient::new(runtime, settings.metric_timeout)?)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(signal_url(&settings.endpoint, "metrics"))
                .with_timeout(settings.metric_timeout);
            if gzip {
                builder.with_compression(Compression::Gzip).build()?
            } else {
                builder.build()?
            }
        }
    };
    Ok(exporter)
}

/// OTLP/HTTP: the base URL plus `/v1/<signal>`, as `OTEL_EXPORTER_OTLP_ENDPOINT` means it.
pub(super) fn signal_url(base: &str, signal: &str) -> String {
    format!("{}/v1/{signal}", base.trim_end_matches('/'))
}

/// An OTLP/HTTP client whose requests run on the telemetry runtime, whatever thread (the
/// SDK's metric reader thread, with no runtime) awaits them.
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
