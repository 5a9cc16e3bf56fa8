//! Spans (SPEC §6): one SERVER span per proxied request, a CLIENT child span per
//! forward-auth call, W3C trace context in and out.
//!
//! Nothing here runs when tracing is off: [`super::otlp_pipeline`] is `None` and every
//! function returns at once. When it is on, a span costs its attributes and one enqueue
//! on the batch processor; sampled-out spans get no attributes at all.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};

use super::metrics::{AuthResult, MethodLabel};
use crate::proxy::RequestCtx;
use crate::text;

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The SERVER span of one proxied request.
pub struct ServerSpan {
    span: Span,
}

/// What the span says about its request when it starts.
pub struct ServerRequest<'a> {
    pub method: MethodLabel,
    /// `METHOD route`.
    pub name: String,
    pub path: &'a str,
    pub route: &'a Arc<str>,
    pub headers: &'a HeaderMap,
    pub client: Option<IpAddr>,
    /// `Host` without the port.
    pub host: Option<&'a str>,
}

/// Attributes known at the start, plus room for the two added at the end: the builder
/// moves the vector into the span as it is, so nothing is copied or grown later.
const SPAN_ATTRIBUTES: usize = 9;

impl ServerSpan {
    /// Starts the span as a child of the request's `traceparent`, if any.
    pub fn start(tracer: &SdkTracer, req: ServerRequest<'_>) -> Self {
        // Extracting from nothing still costs: only when there is a traceparent.
        let parent = if req.headers.contains_key(&TRACEPARENT) {
            TraceContextPropagator::new()
                .extract_with_context(&Context::new(), &HeaderExtractor(req.headers))
        } else {
            Context::new()
        };
        let mut attributes = Vec::with_capacity(SPAN_ATTRIBUTES);
        attributes.push(KeyValue::new("http.request.method", req.method.semconv()));
        attributes.push(KeyValue::new("url.path", req.path.to_owned()));
        attributes.push(KeyValue::new("http.route", req.route.clone()));
        if let Some(ip) = req.client {
            attributes.push(KeyValue::new("client.address", text::ip_string(ip)));
        }
        if let Some(host) = req.host {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        if let Some(agent) = req
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
        }
        let builder = tracer
            .span_builder(req.name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes);
        ServerSpan {
            span: tracer.build_with_context(builder, &parent),
        }
    }

    pub fn span_context(&self) -> &SpanContext {
        self.span.span_context()
    }

    /// Ends the span with the status sent to the client (a 5xx marks it as an error) and
    /// the upstream server's `address:port`, when one was chosen.
    pub fn finish(mut self, status: u16, upstream: Option<Arc<str>>) {
        if self.span.is_recording() {
            self.span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if let Some(upstream) = upstream {
                self.span
                    .set_attribute(KeyValue::new("upstream.address", upstream));
            }
            if status >= 500 {
                self.span
                    .set_status(Status::error(format!("HTTP {status}")));
            }
        }
        self.span.end();
    }
}

/// `traceparent` (and `tracestate`) of a span context, for a request we send.
pub fn trace_headers(cx: &SpanContext) -> Vec<(HeaderName, HeaderValue)> {
    let mut headers = Vec::with_capacity(2);
    if let Some(value) = traceparent(cx) {
        headers.push((TRACEPARENT.clone(), value));
    }
    if let Some(value) = tracestate(cx) {
        headers.push((TRACESTATE.clone(), value));
    }
    headers
}

/// W3C `traceparent`: `00-<trace id>-<span id>-<flags>`, written without the formatting
/// machinery (this runs for every proxied request); `None` for an invalid context.
pub fn traceparent(cx: &SpanContext) -> Option<HeaderValue> {
    if !cx.is_valid() {
        return None;
    }
    let mut value = [b'-'; 55];
    value[..2].copy_from_slice(b"00");
    text::put_hex(&mut value[3..35], &cx.trace_id().to_bytes());
    text::put_hex(&mut value[36..52], &cx.span_id().to_bytes());
    text::put_hex(
        &mut value[53..],
        &[(cx.trace_flags() & TraceFlags::SAMPLED).to_u8()],
    );
    HeaderValue::from_bytes(&value).ok()
}

/// W3C `tracestate`, when the context carries one (checked without formatting it).
pub fn tracestate(cx: &SpanContext) -> Option<HeaderValue> {
    if *cx.trace_state() == TraceState::NONE {
        return None;
    }
    let state = cx.trace_state().header();
    (!state.is_empty())
        .then(|| HeaderValue::from_str(&state).ok())
        .flatten()
}

/// The CLIENT span of a forward-auth call; a no-op when tracing is off.
pub struct AuthSpan {
    span: Option<Span>,
}

/// Starts the auth call's span as a child of the request's SERVER span. Send
/// [`AuthSpan::headers`] with the auth request and call [`AuthSpan::finish`] with the
/// outcome.
pub fn auth_span(ctx: &RequestCtx, auth_name: &str, auth_path: &str) -> AuthSpan {
    let (Some(otlp), Some(server)) = (super::otlp_pipeline(), ctx.telemetry.server_span()) else {
        return AuthSpan { span: None };
    };
    let parent = Context::new().with_remote_span_context(server.span_context().clone());
    let builder = otlp
        .tracer
        .span_builder(format!("GET {auth_name}"))
        .with_kind(SpanKind::Client);
    let mut span = otlp.tracer.build_with_context(builder, &parent);
    if span.is_recording() {
        span.set_attributes([
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("url.path", auth_path.to_owned()),
            KeyValue::new("auth.name", auth_name.to_owned()),
        ]);
    }
    AuthSpan { span: Some(span) }
}

impl AuthSpan {
    /// `traceparent` / `tracestate` of this span for the auth request (empty when off).
    pub fn headers(&self) -> Vec<(HeaderName, HeaderValue)> {
        self.span
            .as_ref()
            .map(|s| trace_headers(s.span_context()))
            .unwrap_or_default()
    }

    /// Ends the span: `status` is the auth service's answer, `None` when there was none.
    pub fn finish(self, result: AuthResult, status: Option<u16>) {
        let Some(mut span) = self.span else {
            return;
        };
        if span.is_recording() {
            if let Some(status) = status {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
            }
            span.set_attribute(KeyValue::new("auth.result", result.as_str()));
            if result == AuthResult::Error {
                span.set_status(Status::error("forward auth failed"));
            }
        }
        span.end();
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId};

    #[test]
    fn traceparent_is_w3c() {
        let cx = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("trace id"),
            SpanId::from_hex("00f067aa0ba902b7").expect("span id"),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("vendor", "x")]).expect("state"),
        );
        let headers = trace_headers(&cx);
        assert_eq!(
            headers[0].1,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(
            headers[1],
            (TRACESTATE.clone(), HeaderValue::from_static("vendor=x"))
        );
        assert!(trace_headers(&SpanContext::empty_context()).is_empty());
    }
}
