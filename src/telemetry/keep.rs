//! Errors and slow requests are never lost to sampling (SPEC §6).
//!
//! Head sampling decides when the request starts, before anyone knows how it will go; the
//! spans an operator opens a trace viewer for (5xx answers, failed upstreams, slow
//! requests) would be dropped in the same proportion as healthy ones. So the proxy's own
//! SERVER span is looked at again when the request ends: if the head sampler left it out
//! but it is an error or slow, it is exported anyway and counted in
//! `edge_trace_spans_kept_total{reason}`.
//!
//! Only the proxy's span changes its mind: the `traceparent` sent upstream carried the
//! head decision long before, so the services' spans of such a trace follow that decision
//! (a collector's tail sampling gets whole traces; see docker/observability/README.md).

use std::time::Duration;

use crate::config::TelemetryConfig;
use crate::metrics::Kept;

/// What the rule looks at when a request ends.
pub(super) struct Outcome {
    /// What the client got.
    pub status: u16,
    /// The upstream failed (refused, timed out, broke off mid-body), whatever the client
    /// was answered.
    pub upstream_failed: bool,
    /// The request's duration; a stream's time to first byte.
    pub latency: Duration,
}

/// Whether a span the head sampler left out is exported anyway, and why. `keep_errors =
/// false` turns the rule off (plain head sampling).
pub(super) fn reason(config: &TelemetryConfig, outcome: &Outcome) -> Option<Kept> {
    if !config.keep_errors {
        return None;
    }
    if outcome.status >= 500 || outcome.upstream_failed {
        Some(Kept::Error)
    } else if outcome.latency >= config.slow_threshold {
        Some(Kept::Slow)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(keep_errors: bool) -> TelemetryConfig {
        TelemetryConfig {
            enabled: true,
            endpoint: "http://127.0.0.1:4317".into(),
            protocol: crate::config::OtlpProtocol::Grpc,
            service_name: "astron-edge".into(),
            sampling_ratio: 0.0,
            metrics_interval: Duration::from_secs(3),
            slow_threshold: Duration::from_secs(2),
            keep_errors,
            gzip: false,
        }
    }

    fn outcome(status: u16, upstream_failed: bool, millis: u64) -> Outcome {
        Outcome {
            status,
            upstream_failed,
            latency: Duration::from_millis(millis),
        }
    }

    #[test]
    fn errors_then_slow_requests_are_kept() {
        let on = config(true);
        assert_eq!(reason(&on, &outcome(502, false, 1)), Some(Kept::Error));
        assert_eq!(reason(&on, &outcome(200, true, 1)), Some(Kept::Error));
        assert_eq!(reason(&on, &outcome(503, false, 5000)), Some(Kept::Error));
        assert_eq!(reason(&on, &outcome(200, false, 2000)), Some(Kept::Slow));
        assert_eq!(reason(&on, &outcome(404, false, 1999)), None);
        assert_eq!(reason(&config(false), &outcome(502, true, 5000)), None);
    }
}
