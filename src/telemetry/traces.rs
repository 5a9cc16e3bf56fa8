//! Spans (SPEC §6): one SERVER span per proxied request, a CLIENT child span per
//! forward-auth call, W3C trace context in and out.
//!
//! Nothing here runs when tracing is off: [`super::otlp_pipeline`] is `None`. When it is
//! on, starting a span is two random ids, a sampling decision and a clock read; nothing
//! of the request is copied. A sampled span is encoded once, when it ends, straight from
//! the request into OTLP protobuf ([`super::otlp_wire`]) and queued for export; a
//! sampled-out span only propagates its context.
//!
//! Sampling is the OpenTelemetry SDK's `ParentBased(TraceIdRatioBased(ratio))`: a request
//! with a valid `traceparent` follows its sampled flag, any other is sampled when the low
//! 63 bits of its new trace id fall under `ratio`, so every service of the trace that
//! samples by ratio decides alike.

use std::cell::RefCell;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::trace::TraceState;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::otlp::Otlp;
use crate::metrics::AuthResult;
use crate::metrics::Kept;
use crate::otlp_wire::{Attributes, Naming, SpanHead, SpanKind};
use crate::text::{self, IpText};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub(crate) static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A span's identity as it is propagated (`traceparent` / `tracestate`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
    /// W3C `tracestate`, carried over from the client's context.
    pub trace_state: Option<HeaderValue>,
}

impl TraceContext {
    /// A child of this context: same trace, sampling decision and state, a new span id.
    fn child(&self) -> TraceContext {
        TraceContext {
            span_id: new_span_id(),
            ..self.clone()
        }
    }

    /// W3C `traceparent`: `00-<trace id>-<span id>-<flags>`, written without the formatting
    /// machinery (this runs for every proxied request).
    pub(crate) fn traceparent(&self) -> HeaderValue {
        let mut value = [b'-'; 55];
        value[..2].copy_from_slice(b"00");
        text::put_hex(&mut value[3..35], &self.trace_id);
        text::put_hex(&mut value[36..52], &self.span_id);
        text::put_hex(&mut value[53..], &[u8::from(self.sampled)]);
        // ASCII hex digits and dashes: always a valid header value
        HeaderValue::from_bytes(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    /// `traceparent` and, when there is one, `tracestate`, for a request we send.
    pub(crate) fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = Vec::with_capacity(2);
        headers.push((TRACEPARENT.clone(), self.traceparent()));
        if let Some(state) = &self.trace_state {
            headers.push((TRACESTATE.clone(), state.clone()));
        }
        headers
    }

    /// The client's context from its `traceparent` (and `tracestate`), when valid.
    fn extract(client: &ClientTraceHeaders<'_>) -> Option<TraceContext> {
        let (trace_id, span_id, sampled) = parse_traceparent(client.traceparent?.as_bytes())?;
        // An invalid tracestate is dropped, the parent kept (as the W3C propagators do).
        let trace_state = client
            .tracestate
            .and_then(|v| v.to_str().ok())
            .and_then(|v| TraceState::from_str(v).ok())
            .map(|state| state.header())
            .filter(|state| !state.is_empty())
            .and_then(|state| HeaderValue::from_str(&state).ok());
        Some(TraceContext {
            trace_id,
            span_id,
            sampled,
            trace_state,
        })
    }
}

/// The client's trace-context headers, found in one walk over the request's headers:
/// cheaper than two lookups (hashing and probing) for a request's few headers. Like
/// `HeaderMap::get`, the first value of a repeated header.
#[derive(Default)]
struct ClientTraceHeaders<'a> {
    traceparent: Option<&'a HeaderValue>,
    tracestate: Option<&'a HeaderValue>,
}

impl<'a> ClientTraceHeaders<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut found = ClientTraceHeaders::default();
        for (name, value) in headers {
            if *name == TRACEPARENT {
                found.traceparent.get_or_insert(value);
            } else if *name == TRACESTATE {
                found.tracestate.get_or_insert(value);
            }
        }
        found
    }
}

/// `version-traceid-parentid-flags`, all lowercase hex; version `ff`, all-zero ids and a
/// version-00 header of the wrong length are invalid. Later versions may append fields.
fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    let value = value.trim_ascii();
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let [version] = hex_bytes::<1>(&value[..2])?;
    if version == 0xff
        || (version == 0 && value.len() != 55)
        || (value.len() > 55 && value[55] != b'-')
    {
        return None;
    }
    let trace_id = hex_bytes::<16>(&value[3..35])?;
    let span_id = hex_bytes::<8>(&value[36..52])?;
    let [flags] = hex_bytes::<1>(&value[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, flags & 1 == 1))
}

/// `2 * N` lowercase hex digits as bytes.
fn hex_bytes<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let mut out = [0; N];
    if digits.len() != 2 * N {
        return None;
    }
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn new_trace_id() -> [u8; 16] {
    random_id()
}

fn new_span_id() -> [u8; 8] {
    random_id()
}

thread_local! {
    /// As the OpenTelemetry SDK's id generator: a fast generator per thread, seeded by the
    /// OS. Ids must be unique, not secret; the cryptographic `rand::rng()` cost more than
    /// the rest of starting a span.
    static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// Random bytes, never all zero (an invalid id in W3C trace context).
pub(super) fn random_id<const N: usize>() -> [u8; N] {
    IDS.with_borrow_mut(|rng| {
        let mut id = [0; N];
        while id == [0; N] {
            rng.fill(&mut id[..]);
        }
        id
    })
}

/// `TraceIdRatioBased`, as the OpenTelemetry SDKs compute it.
fn sampled_by_ratio(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let upper_bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    let mut low = [0; 8];
    low.copy_from_slice(&trace_id[8..]);
    (u64::from_be_bytes(low) >> 1) < upper_bound
}

/// The SERVER span of one proxied request. It starts with the request (the context's
/// `started`): its start time is worked out from its end and the request's duration, one
/// clock read fewer per request.
pub(crate) struct ServerSpan {
    context: TraceContext,
    /// The client's span, when it sent a valid `traceparent`.
    parent_span_id: Option<[u8; 8]>,
    /// The client sent a `tracestate`: the upstream request must not pass it on unless it
    /// is the one of our context.
    client_tracestate: bool,
}

/// What the span says about its request, read when it ends.
pub(crate) struct ServerRequest<'a> {
    /// Name (`METHOD route`), kind, `http.request.method` and `http.route`, encoded once
    /// per route and method ([`super::metrics::RouteMetrics::span_naming`]).
    pub naming: &'a [u8],
    pub path: &'a str,
    pub client: Option<&'a IpText>,
    /// `Host` without the port.
    pub host: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    /// What the client got; a 5xx marks the span as an error.
    pub status: u16,
    /// The upstream server's `address:port`, when one was chosen.
    pub upstream: Option<Arc<str>>,
    /// `X-Request-ID` ([`super::request_id`]).
    pub request_id: Option<&'a str>,
    /// How the answer's stream went, when it was one.
    pub stream: Option<super::stream::StreamReport>,
}

impl ServerSpan {
    /// Starts the span as a child of the request's `traceparent`, if any; without one,
    /// sampled at `sampling_ratio` (the request's config: a reload applies to new requests).
    pub(crate) fn start(sampling_ratio: f64, headers: &HeaderMap) -> Self {
        let client = ClientTraceHeaders::of(headers);
        let parent = TraceContext::extract(&client);
        let (context, parent_span_id) = match parent {
            Some(parent) => {
                let child = parent.child();
                (child, Some(parent.span_id))
            }
            None => {
                let trace_id = new_trace_id();
                let sampled = sampled_by_ratio(&trace_id, sampling_ratio);
                let context = TraceContext {
                    trace_id,
                    span_id: new_span_id(),
                    sampled,
                    trace_state: None,
                };
                (context, None)
            }
        };
        ServerSpan {
            context,
            parent_span_id,
            client_tracestate: client.tracestate.is_some(),
        }
    }

    pub(crate) fn context(&self) -> &TraceContext {
        &self.context
    }

    /// Whether the upstream request carries a `tracestate` of the client's that ours must
    /// replace or remove.
    pub(crate) fn client_sent_tracestate(&self) -> bool {
        self.client_tracestate
    }

    /// Ends the span at `end`, `elapsed` after it started, and queues it for export when
    /// sampled, or when `keep` says the head sampler must be overruled (an error or slow
    /// request, [`super::keep`]); `keep` and `request` are only asked for when needed.
    pub(crate) fn finish<'a>(
        self,
        otlp: &Otlp,
        (end, elapsed): (SystemTime, Duration),
        keep: impl FnOnce() -> Option<Kept>,
        request: impl FnOnce() -> ServerRequest<'a>,
    ) {
        if !self.context.sampled {
            let Some(reason) = keep() else {
                return;
            };
            super::metrics::span_kept(reason);
        }
        let req = &request();
        let error = (req.status >= 500).then(|| format!("HTTP {}", req.status));
        let head = span_head(
            &self.context,
            self.parent_span_id.map(|id| (id, true)),
            (end.checked_sub(elapsed).unwrap_or(end), end),
            Naming::Encoded(req.naming),
            error.as_deref(),
        );
        otlp.queue_span(&head, |a| {
            a.str("url.path", req.path);
            if let Some(ip) = req.client {
                a.ip("client.address", ip);
            }
            if let Some(host) = req.host {
                a.str("server.address", host);
            }
            if let Some(agent) = req.user_agent {
                a.str("user_agent.original", agent);
            }
            a.int("http.response.status_code", i64::from(req.status));
            if let Some(upstream) = &req.upstream {
                a.str("upstream.address", upstream);
            }
            if let Some(id) = req.request_id {
                a.str_array("http.request.header.x-request-id", id);
            }
            if let Some(stream) = &req.stream {
                if let Some(ttfb) = stream.time_to_first_byte {
                    a.f64("edge.stream.time_to_first_byte", ttfb.as_secs_f64());
                }
                a.int(
                    "edge.stream.events",
                    i64::try_from(stream.events).unwrap_or(i64::MAX),
                );
                a.str("edge.stream.end", stream.end.as_str());
            }
        });
    }
}

/// `parent` is the parent span's id and whether it is remote (another process's).
fn span_head<'a>(
    context: &'a TraceContext,
    parent: Option<([u8; 8], bool)>,
    (start, end): (SystemTime, SystemTime),
    naming: Naming<'a>,
    error: Option<&'a str>,
) -> SpanHead<'a> {
    SpanHead {
        trace_id: context.trace_id,
        span_id: context.span_id,
        parent_span_id: parent.map(|(id, _)| id),
        parent_is_remote: parent.is_some_and(|(_, remote)| remote),
        trace_state: context
            .trace_state
            .as_ref()
            .and_then(|s| s.to_str().ok())
            .unwrap_or_default(),
        naming,
        start,
        end,
        error,
        sampled: context.sampled,
    }
}

/// The CLIENT span of a forward-auth call; a no-op when tracing is off.
pub(crate) struct AuthSpan<'a> {
    span: Option<AuthCall<'a>>,
}

struct AuthCall<'a> {
    otlp: Arc<Otlp>,
    context: TraceContext,
    parent_span_id: [u8; 8],
    start: SystemTime,
    auth_name: &'a str,
    auth_path: &'a str,
}

/// Starts the auth call's span as a child of the request's SERVER span. Send
/// [`AuthSpan::headers`] with the auth request and call [`AuthSpan::finish`] with the
/// outcome.
pub(crate) fn auth_span<'a>(
    server: Option<&ServerSpan>,
    auth_name: &'a str,
    auth_path: &'a str,
) -> AuthSpan<'a> {
    let (Some(otlp), Some(server)) = (super::otlp_pipeline(), server) else {
        return AuthSpan { span: None };
    };
    AuthSpan {
        span: Some(AuthCall {
            otlp,
            context: server.context.child(),
            parent_span_id: server.context.span_id,
            start: SystemTime::now(),
            auth_name,
            auth_path,
        }),
    }
}

impl AuthSpan<'_> {
    /// `traceparent` / `tracestate` of this span for the auth request (empty when off).
    pub(crate) fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.span
            .as_ref()
            .map(|s| s.context.headers())
            .unwrap_or_default()
    }

    /// Ends the span: `status` is the auth service's answer, `None` when there was none.
    pub(crate) fn finish(self, result: AuthResult, status: Option<u16>) {
        let Some(call) = self.span.filter(|s| s.context.sampled) else {
            return;
        };
        let name = format!("GET {}", call.auth_name);
        let error = (result == AuthResult::Error).then_some("forward auth failed");
        let head = span_head(
            &call.context,
            Some((call.parent_span_id, false)),
            (call.start, SystemTime::now()),
            Naming::Plain {
                name: &name,
                kind: SpanKind::Client,
            },
            error,
        );
        call.otlp.queue_span(&head, |a: &mut Attributes<'_>| {
            a.str("http.request.method", "GET");
            a.str("url.path", call.auth_path);
            a.str("auth.name", call.auth_name);
            if let Some(status) = status {
                a.int("http.response.status_code", i64::from(status));
            }
            a.str("auth.result", result.as_str());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(state: Option<&'static str>) -> TraceContext {
        TraceContext {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736_u128.to_be_bytes(),
            span_id: 0x00f067aa0ba902b7_u64.to_be_bytes(),
            sampled: true,
            trace_state: state.map(HeaderValue::from_static),
        }
    }

    #[test]
    fn traceparent_is_w3c() {
        let headers = context(Some("vendor=x")).headers();
        assert_eq!(
            headers[0].1,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            headers[1],
            (TRACESTATE.clone(), HeaderValue::from_static("vendor=x"))
        );
        assert_eq!(context(None).headers().len(), 1);
    }

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_refused() {
        let extract = |headers: &HeaderMap| TraceContext::extract(&ClientTraceHeaders::of(headers));
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, HeaderValue::from_static("edge"));
        assert_eq!(extract(&headers), None);
        headers.insert(&TRACEPARENT, context(None).traceparent());
        headers.append(&TRACESTATE, HeaderValue::from_static("a=1,b=2"));
        headers.append(&TRACESTATE, HeaderValue::from_static("c=3"));
        assert_eq!(extract(&headers), Some(context(Some("a=1,b=2"))));

        headers.insert(&TRACESTATE, HeaderValue::from_static("not a state"));
        assert_eq!(extract(&headers), Some(context(None)));
        headers.remove(&TRACEPARENT);
        assert_eq!(extract(&headers), None);

        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert_eq!(
            parse_traceparent(unsampled.as_bytes()).map(|p| p.2),
            Some(false)
        );
        // a later version may carry more fields
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(parse_traceparent(future.as_bytes()).is_some());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn ratio_sampling_follows_the_trace_id() {
        let with_low = |low: u64| {
            let mut id = [0xab; 16];
            id[8..].copy_from_slice(&low.to_be_bytes());
            id
        };
        assert!(sampled_by_ratio(&with_low(u64::MAX), 1.0));
        assert!(!sampled_by_ratio(&with_low(0), 0.0));
        assert!(sampled_by_ratio(&with_low(u64::MAX / 4), 0.5));
        assert!(!sampled_by_ratio(&with_low(u64::MAX / 4 * 3), 0.5));
        let sampled = (0..10_000)
            .filter(|_| sampled_by_ratio(&new_trace_id(), 0.25))
            .count();
        assert!(
            (2_000..3_000).contains(&sampled),
            "{sampled} of 10000 at 0.25"
        );
    }
}
