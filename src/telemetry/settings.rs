//! The effective OTLP settings: the `[telemetry]` table overridden by the environment
//! variables the other astron-agent services use (SPEC §6).
//!
//! Resolution is done here, once, and everything is handed to the exporters explicitly:
//! the OTLP crate's own environment handling only covers the standard `OTEL_*` names, and
//! an explicit value always wins over it, so there is exactly one place that decides.
//!
//! Precedence, highest first:
//! - on/off: `OTLP_ENABLE` (`0` off, anything else on), then `telemetry.enabled`;
//! - endpoint: `OTEL_EXPORTER_OTLP_ENDPOINT`, then `OTLP_ENDPOINT` (`host:port`, gRPC),
//!   then `telemetry.endpoint`;
//! - protocol: `OTEL_EXPORTER_OTLP_PROTOCOL`, then gRPC when the endpoint came from
//!   `OTLP_ENDPOINT`, then `telemetry.protocol`;
//! - service name: `OTEL_SERVICE_NAME`, then `telemetry.service_name`;
//! - compression: `OTEL_EXPORTER_OTLP_TRACES_COMPRESSION` / `_METRICS_COMPRESSION`, then
//!   `OTEL_EXPORTER_OTLP_COMPRESSION` (`gzip` or `none`), then `telemetry.compression`;
//! - batch and reader settings: the `OTLP_TRACE_*` / `OTLP_METRIC_*` variables, then the
//!   OpenTelemetry defaults (`metrics_interval` from the table).
//!
//! `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_RESOURCE_ATTRIBUTES` are read by the exporter and
//! the resource detector themselves. A variable that does not parse is ignored with a
//! warning.

use std::time::Duration;

use crate::config::{OtlpProtocol, TelemetryConfig};

/// Batch span processor defaults (the OpenTelemetry SDK's).
const DEFAULT_QUEUE_SIZE: usize = 2048;
const DEFAULT_SCHEDULE_DELAY: Duration = Duration::from_millis(5000);
const DEFAULT_BATCH_SIZE: usize = 512;
/// Exporter timeout default (the OTLP specification's).
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OtlpSettings {
    /// gRPC: the collector URL; http/protobuf: the base URL (`/v1/traces` is appended).
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub service_name: String,
    pub metrics_interval: Duration,
    pub trace_queue_size: usize,
    pub trace_schedule_delay: Duration,
    pub trace_batch_size: usize,
    /// Deadline of one span export (request and retries).
    pub trace_timeout: Duration,
    /// Deadline of one metrics export.
    pub metric_timeout: Duration,
    /// Span export requests are gzip-compressed.
    pub traces_gzip: bool,
    /// Metric export requests are gzip-compressed.
    pub metrics_gzip: bool,
}

/// The settings, or `None` when telemetry is off. `env` looks a variable up.
pub(super) fn resolve(
    config: &TelemetryConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<OtlpSettings> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let enabled = match var("OTLP_ENABLE") {
        Some(v) => v.trim() != "0",
        None => config.enabled,
    };
    if !enabled {
        return None;
    }

    let mut protocol = config.protocol;
    let endpoint = if let Some(url) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        url
    } else if let Some(addr) = var("OTLP_ENDPOINT") {
        protocol = OtlpProtocol::Grpc;
        if addr.contains("://") {
            addr
        } else {
            format!("http://{}", addr.trim())
        }
    } else {
        config.endpoint.clone()
    };
    if let Some(p) = var("OTEL_EXPORTER_OTLP_PROTOCOL") {
        match p.trim().to_ascii_lowercase().as_str() {
            "grpc" => protocol = OtlpProtocol::Grpc,
            "http/protobuf" => protocol = OtlpProtocol::HttpProtobuf,
            other => tracing::warn!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported (grpc, http/protobuf); ignored"
            ),
        }
    }

    let number = |name: &str| -> Option<u64> {
        let value = var(name)?;
        match value.trim().parse::<u64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                tracing::warn!("{name}={value:?} is not a positive number; ignored");
                None
            }
        }
    };
    let millis = |name: &str| number(name).map(Duration::from_millis);
    // Two variables bound each export; the tighter one applies.
    let tighter = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };

    let trace_queue_size = number("OTLP_TRACE_MAX_QUEUE_SIZE")
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_QUEUE_SIZE);
    let trace_batch_size = number("OTLP_TRACE_MAX_EXPORT_BATCH_SIZE")
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_BATCH_SIZE)
        .min(trace_queue_size);

    let compression = |signal_var: &str| -> bool {
        for name in [signal_var, "OTEL_EXPORTER_OTLP_COMPRESSION"] {
            if let Some(value) = var(name) {
                match value.trim().to_ascii_lowercase().as_str() {
                    "gzip" => return true,
                    "none" => return false,
                    other => {
                        tracing::warn!("{name}={other:?} is not supported (gzip, none); ignored")
                    }
                }
            }
        }
        config.gzip
    };

    Some(OtlpSettings {
        traces_gzip: compression("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"),
        metrics_gzip: compression("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION"),
        endpoint,
        protocol,
        service_name: var("OTEL_SERVICE_NAME").unwrap_or_else(|| config.service_name.clone()),
        metrics_interval: millis("OTLP_METRIC_EXPORT_INTERVAL_MILLIS")
            .unwrap_or(config.metrics_interval),
        trace_queue_size,
        trace_schedule_delay: millis("OTLP_TRACE_SCHEDULE_DELAY_MILLIS")
            .unwrap_or(DEFAULT_SCHEDULE_DELAY),
        trace_batch_size,
        trace_timeout: tighter(
            millis("OTLP_TRACE_EXPORT_TIMEOUT_MILLIS"),
            millis("OTLP_TRACE_TIMEOUT"),
        )
        .unwrap_or(DEFAULT_EXPORT_TIMEOUT),
        metric_timeout: tighter(
            millis("OTLP_METRIC_EXPORT_TIMEOUT_MILLIS"),
            millis("OTLP_METRIC_TIMEOUT"),
        )
        .unwrap_or(DEFAULT_EXPORT_TIMEOUT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(enabled: bool) -> TelemetryConfig {
        TelemetryConfig {
            enabled,
            endpoint: "http://collector:4318".into(),
            protocol: OtlpProtocol::HttpProtobuf,
            service_name: "astron-edge".into(),
            sampling_ratio: 0.5,
            metrics_interval: Duration::from_secs(3),
            slow_threshold: Duration::from_secs(2),
            keep_errors: true,
            gzip: false,
        }
    }

    fn with<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_table_applies_without_environment() {
        assert_eq!(resolve(&table(false), &with(&[])), None);
        let s = resolve(&table(true), &with(&[])).expect("on");
        assert_eq!(s.endpoint, "http://collector:4318");
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(s.service_name, "astron-edge");
        assert_eq!(s.metrics_interval, Duration::from_secs(3));
        assert_eq!(s.trace_queue_size, 2048);
        assert_eq!(s.trace_batch_size, 512);
        assert_eq!(s.trace_schedule_delay, Duration::from_secs(5));
        assert_eq!(s.trace_timeout, Duration::from_secs(10));
        assert!(!s.traces_gzip && !s.metrics_gzip);
    }

    #[test]
    fn compression_per_signal_overrides_the_general_variable_and_the_table() {
        let mut gzip_table = table(true);
        gzip_table.gzip = true;
        let s = resolve(&gzip_table, &with(&[])).expect("on");
        assert!(s.traces_gzip && s.metrics_gzip);
        let env = [
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "none"),
        ];
        let s = resolve(&table(true), &with(&env)).expect("on");
        assert!(s.traces_gzip);
        assert!(!s.metrics_gzip);
        let env = [("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd")];
        let s = resolve(&gzip_table, &with(&env)).expect("on");
        assert!(
            s.traces_gzip,
            "an unsupported value falls back to the table"
        );
    }

    #[test]
    fn otlp_enable_switches_both_ways() {
        assert!(resolve(&table(false), &with(&[("OTLP_ENABLE", "1")])).is_some());
        assert!(resolve(&table(true), &with(&[("OTLP_ENABLE", "0")])).is_none());
        assert!(resolve(&table(false), &with(&[("OTLP_ENABLE", "")])).is_none());
    }

    #[test]
    fn astron_endpoint_is_grpc_host_port() {
        let s = resolve(&table(true), &with(&[("OTLP_ENDPOINT", "otel:4317")])).expect("on");
        assert_eq!(s.endpoint, "http://otel:4317");
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
    }

    #[test]
    fn standard_variables_win() {
        let env = [
            ("OTLP_ENDPOINT", "otel:4317"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "edge-1"),
        ];
        let s = resolve(&table(true), &with(&env)).expect("on");
        assert_eq!(s.endpoint, "http://other:4318");
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(s.service_name, "edge-1");
    }

    #[test]
    fn batch_and_reader_settings_come_from_the_environment() {
        let env = [
            ("OTLP_TRACE_MAX_QUEUE_SIZE", "100"),
            ("OTLP_TRACE_MAX_EXPORT_BATCH_SIZE", "500"),
            ("OTLP_TRACE_SCHEDULE_DELAY_MILLIS", "250"),
            ("OTLP_TRACE_EXPORT_TIMEOUT_MILLIS", "3000"),
            ("OTLP_TRACE_TIMEOUT", "2000"),
            ("OTLP_METRIC_EXPORT_INTERVAL_MILLIS", "1000"),
            ("OTLP_METRIC_EXPORT_TIMEOUT_MILLIS", "1500"),
            ("OTLP_METRIC_TIMEOUT", "x"),
        ];
        let s = resolve(&table(true), &with(&env)).expect("on");
        assert_eq!(s.trace_queue_size, 100);
        assert_eq!(s.trace_batch_size, 100, "a batch never exceeds the queue");
        assert_eq!(s.trace_schedule_delay, Duration::from_millis(250));
        assert_eq!(s.trace_timeout, Duration::from_millis(2000));
        assert_eq!(s.metrics_interval, Duration::from_secs(1));
        assert_eq!(s.metric_timeout, Duration::from_millis(1500));
    }
}
