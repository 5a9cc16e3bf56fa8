//! Telemetry: the access log (SPEC §4), Prometheus metrics (§5), OTLP traces and metrics
//! (§6).
//!
//! The proxy calls five hooks, one per phase ([`request_started`], [`upstream_started`],
//! [`inject_trace_context`], [`upstream_responded`], [`request_finished`]); everything they
//! need between phases lives in [`RequestTelemetry`], a field of the request context.
//! Other modules record through [`metrics`] (auth results, SSE streams, reloads) and
//! [`traces::auth_span`].
//!
//! The process-wide parts (the access-log writer, the OTLP pipelines and the small tokio
//! runtime their background work runs on) are created once by [`init`] and kept in a
//! static: hooks run in Pingora's phases, far from `server::run`, and a static costs the
//! request path one atomic load. What is off costs nothing per request: no `[metrics]`
//! listener, no per-request counting; no OTLP, no span; `access_log.path = "off"`, no line.
//! Before [`init`] (unit tests) everything is off.

pub mod access_log;
pub mod metrics;
mod otlp;
mod otlp_wire;
mod settings;
mod span_queue;
mod trace_export;
pub mod traces;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{LogFormat, LogTarget, OtlpProtocol};
use crate::proxy::{RequestCtx, RequestKind};
use crate::state::SharedState;
use crate::text::IpText;
use access_log::{AccessLog, Entry};
use metrics::{InFlight, MethodLabel, RouteMetrics, UpstreamMetrics};
use otlp::Otlp;
use traces::{ServerRequest, ServerSpan, TRACESTATE};

pub use metrics::{record_auth, record_reload, sse_stream_opened, AuthResult, SseStreamGuard};

static X_FORWARDED_FOR: http::header::HeaderName =
    http::header::HeaderName::from_static("x-forwarded-for");

/// How long the exit may wait for the last access-log lines and OTLP exports.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

struct Telemetry {
    access_log: AccessLog,
    otlp: Option<Otlp>,
    /// Runs the SIGUSR1 watch and the OTLP exporters' network I/O; lives as long as the
    /// process (a static is never dropped).
    runtime: tokio::runtime::Runtime,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

fn global() -> Option<&'static Telemetry> {
    TELEMETRY.get()
}

fn otlp_pipeline() -> Option<&'static Otlp> {
    global()?.otlp.as_ref()
}

/// Starts the access-log writer, the OTLP pipelines (when enabled by the config or the
/// environment) and the SIGUSR1 handler. Called once, before the server runs.
pub fn init(state: &SharedState) -> anyhow::Result<()> {
    metrics::init();
    metrics::record_config_loaded();
    let snapshot = state.load_full();
    if snapshot.config.metrics_listen.is_some() {
        metrics::count_requests();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("telemetry")
        .enable_all()
        .build()?;
    // Registered now, not in a task: until it is, SIGUSR1 would kill the process.
    let mut usr1 = {
        let _enter = runtime.enter();
        signal(SignalKind::user_defined1())?
    };
    let otlp = match settings::resolve(&snapshot.config.telemetry, &|name| std::env::var(name).ok())
    {
        None => None,
        Some(settings) => {
            let _enter = runtime.enter();
            match Otlp::start(&settings, runtime.handle()) {
                Ok(otlp) => {
                    tracing::info!(
                        endpoint = %settings.endpoint,
                        protocol = match settings.protocol {
                            OtlpProtocol::Grpc => "grpc",
                            OtlpProtocol::HttpProtobuf => "http/protobuf",
                        },
                        service_name = %settings.service_name,
                        "OTLP export on"
                    );
                    Some(otlp)
                }
                Err(e) => {
                    tracing::error!("OTLP export off: cannot set up the exporters: {e:#}");
                    None
                }
            }
        }
    };
    let telemetry = Telemetry {
        access_log: AccessLog::start(state.clone())?,
        otlp,
        runtime,
    };
    if TELEMETRY.set(telemetry).is_err() {
        anyhow::bail!("telemetry initialised twice");
    }
    if let Some(t) = global() {
        t.runtime.spawn(async move {
            while usr1.recv().await.is_some() {
                if let Some(t) = global() {
                    t.access_log.reopen();
                }
            }
        });
    }
    Ok(())
}

/// Writes the queued access-log lines and exports the pending spans and metrics, within
/// [`FLUSH_TIMEOUT`]. Called once Pingora has stopped serving.
pub fn shutdown() {
    let Some(t) = global() else {
        return;
    };
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    if !t.access_log.flush(deadline) {
        tracing::warn!("access log not fully written at exit");
    }
    if let Some(otlp) = &t.otlp {
        otlp.shutdown(deadline);
    }
}

/// What telemetry carries from phase to phase of one request.
#[derive(Default)]
pub struct RequestTelemetry {
    /// The route's handles, set by [`request_started`] when metrics or traces are on.
    route: Option<Arc<RouteMetrics>>,
    /// Counted in `edge_http_requests_in_flight` (Prometheus on) until dropped.
    in_flight: Option<InFlight>,
    /// An open SSE stream (2xx answer on an `sse` route), counted until the request ends.
    sse: Option<SseStreamGuard>,
    /// The client's address, looked up once.
    client: Option<IpAddr>,
    /// First upstream attempt (name resolution included).
    upstream_started: Option<Instant>,
    /// Status of the upstream's response header.
    upstream_status: Option<u16>,
    /// Boxed: the context is moved with Pingora's request futures, and an inline span
    /// would make every request copy it, traced or not.
    span: Option<Box<ServerSpan>>,
}

impl RequestTelemetry {
    /// The request's SERVER span, when tracing is on and the request is proxied.
    pub fn server_span(&self) -> Option<&ServerSpan> {
        self.span.as_deref()
    }

    /// The client's address, when a kind of telemetry that reports it is on.
    pub fn client(&self) -> Option<IpAddr> {
        self.client
    }
}

/// `request_filter`, once `ctx.kind` and the route are known: the in-flight gauge, and
/// for proxied requests the SERVER span (a child of the client's `traceparent`).
pub fn request_started(session: &Session, ctx: &mut RequestCtx) {
    let prometheus = metrics::requests_counted();
    let otlp = otlp_pipeline();
    if !prometheus && otlp.is_none() {
        return;
    }
    let route = route_metrics(ctx);
    ctx.telemetry.client = client_ip(session);
    if let (Some(otlp), RequestKind::Proxied) = (otlp, ctx.kind) {
        let span = ServerSpan::start(otlp, &session.req_header().headers);
        ctx.telemetry.span = Some(Box::new(span));
    }
    if prometheus {
        ctx.telemetry.in_flight = Some(route.clone().enter());
    }
    ctx.telemetry.route = Some(route);
}

/// The handles of the request's route label; a matched route's are kept in the config
/// snapshot.
fn route_metrics(ctx: &RequestCtx) -> Arc<RouteMetrics> {
    let kept = match (ctx.kind, ctx.route) {
        (RequestKind::Health, _) => None,
        (_, route) => route.and_then(|i| ctx.snapshot.route_metrics.get(i)),
    };
    match kept {
        Some(slot) => slot
            .get_or_init(|| metrics::route(ctx.route_label()))
            .clone(),
        None => metrics::route(ctx.route_label()),
    }
}

/// `upstream_peer`: the upstream exchange starts (kept from the first attempt).
pub fn upstream_started(ctx: &mut RequestCtx) {
    ctx.telemetry
        .upstream_started
        .get_or_insert_with(Instant::now);
}

/// `upstream_request_filter`: the proxy's own `traceparent` (and `tracestate`) replace the
/// client's, so the upstream's spans are children of the proxy's span.
pub fn inject_trace_context(
    ctx: &RequestCtx,
    upstream_request: &mut RequestHeader,
) -> pingora::Result<()> {
    if let Some(span) = &ctx.telemetry.span {
        let cx = span.context();
        // a `&'static str` name: Pingora keeps it as the header's case without a copy
        upstream_request.insert_header("traceparent", cx.traceparent())?;
        match &cx.trace_state {
            Some(state) => upstream_request.insert_header("tracestate", state.clone())?,
            // the client's tracestate belongs to the client's span, not to ours
            None if span.client_sent_tracestate() => {
                upstream_request.remove_header(&TRACESTATE);
            }
            None => {}
        }
    }
    Ok(())
}

/// `upstream_response_filter`: the upstream answered with `status`; a 2xx on an `sse`
/// route opens a stream in `edge_sse_streams_active`.
pub fn upstream_responded(ctx: &mut RequestCtx, status: u16) {
    ctx.telemetry.upstream_status = Some(status);
    if metrics::requests_counted()
        && (200..300).contains(&status)
        && ctx.proxy_route().is_some_and(|r| r.sse)
    {
        ctx.telemetry.sse = Some(metrics::sse_stream_opened(ctx.route_label()));
    }
}

/// What is known about a request when it ends.
struct Finished {
    method: MethodLabel,
    status: u16,
    elapsed: Duration,
    body_bytes: u64,
    /// From the first upstream attempt to now, when there was one.
    upstream_time: Option<Duration>,
    /// The wall-clock end: the log line's time and the span's end.
    at: SystemTime,
}

/// The request headers the access log and the span report, found in one walk over the
/// header map: cheaper than a lookup each (hashing and probing) for a request's few
/// headers. Like `HeaderMap::get`, the first value of a repeated header.
#[derive(Default)]
struct ReportedHeaders<'a> {
    authorization: Option<&'a [u8]>,
    host: Option<&'a [u8]>,
    referer: Option<&'a [u8]>,
    user_agent: Option<&'a [u8]>,
    x_forwarded_for: Option<&'a [u8]>,
}

impl<'a> ReportedHeaders<'a> {
    fn of(headers: &'a http::HeaderMap) -> Self {
        use http::header::{AUTHORIZATION, HOST, REFERER, USER_AGENT};
        let mut found = ReportedHeaders::default();
        for (name, value) in headers {
            let slot = if *name == HOST {
                &mut found.host
            } else if *name == USER_AGENT {
                &mut found.user_agent
            } else if *name == REFERER {
                &mut found.referer
            } else if *name == AUTHORIZATION {
                &mut found.authorization
            } else if *name == X_FORWARDED_FOR {
                &mut found.x_forwarded_for
            } else {
                continue;
            };
            slot.get_or_insert(value.as_bytes());
        }
        found
    }
}

/// What [`request_finished`] reads of the exchange with the client.
pub enum Exchange<'a> {
    /// The request's own session.
    Session(&'a Session),
    /// A relayed SSE stream, whose session has been taken apart: the copy it kept of the
    /// request ([`reported_request`]), the client's address and the body bytes it sent.
    Relayed {
        request: &'a RequestHeader,
        client: Option<IpAddr>,
        body_bytes: u64,
    },
}

impl Exchange<'_> {
    fn request(&self) -> &RequestHeader {
        match self {
            Exchange::Session(session) => session.req_header(),
            Exchange::Relayed { request, .. } => request,
        }
    }

    fn client(&self) -> Option<IpAddr> {
        match self {
            Exchange::Session(session) => client_ip(session),
            Exchange::Relayed { client, .. } => *client,
        }
    }

    fn body_bytes(&self) -> u64 {
        match self {
            Exchange::Session(session) => {
                u64::try_from(session.body_bytes_sent()).unwrap_or(u64::MAX)
            }
            Exchange::Relayed { body_bytes, .. } => *body_bytes,
        }
    }
}

/// A copy of what [`request_finished`] reads of `req` (its request line and the headers
/// reported), owning its bytes: a relayed stream keeps this for its log line and span
/// rather than the client's whole request and the buffer it was read into.
pub fn reported_request(req: &RequestHeader) -> RequestHeader {
    // A request that was parsed has a path that builds: the whole copy is only a fallback.
    reported_copy(req).unwrap_or_else(|_| req.clone())
}

fn reported_copy(req: &RequestHeader) -> pingora::Result<RequestHeader> {
    let reported = ReportedHeaders::of(&req.headers);
    let fields = [
        (http::header::AUTHORIZATION, reported.authorization),
        (http::header::HOST, reported.host),
        (http::header::REFERER, reported.referer),
        (http::header::USER_AGENT, reported.user_agent),
        (X_FORWARDED_FOR.clone(), reported.x_forwarded_for),
    ];
    let mut copy = RequestHeader::build_no_case(req.method.clone(), req.raw_path(), Some(5))?;
    copy.set_version(req.version);
    for (name, value) in fields {
        if let Some(value) = value.and_then(|v| http::HeaderValue::from_bytes(v).ok()) {
            copy.append_header(name, value)?;
        }
    }
    Ok(copy)
}

/// `logging`, once per request at its very end (SSE: when the stream ends): metrics,
/// access-log line, span. `status` is what the client got (499 when it left first).
/// With every kind of telemetry off it returns after three loads.
pub fn request_finished(exchange: &Exchange<'_>, ctx: &mut RequestCtx, status: u16) {
    let in_flight = ctx.telemetry.in_flight.take();
    ctx.telemetry.sse = None;
    let span = ctx.telemetry.span.take();
    let prometheus = metrics::requests_counted();
    let otlp = otlp_pipeline();
    let logs = ctx.kind != RequestKind::Health
        && ctx.snapshot.config.access_log.target != LogTarget::Off
        && ctx.route().is_none_or(|r| r.access_log);
    let access_log = global().filter(|_| logs).map(|t| &t.access_log);
    if !prometheus && otlp.is_none() && access_log.is_none() {
        return;
    }
    let req = exchange.request();
    let now = Instant::now();
    let finished = Finished {
        method: MethodLabel::of(&req.method),
        status,
        elapsed: now.saturating_duration_since(ctx.started),
        body_bytes: exchange.body_bytes(),
        upstream_time: ctx
            .telemetry
            .upstream_started
            .map(|t| now.saturating_duration_since(t)),
        at: SystemTime::now(),
    };
    let traced = span.is_some() && otlp.is_some();
    let (headers, client) = if access_log.is_some() || traced {
        // known since request_filter unless only the access log is on
        let client = ctx.telemetry.client.or_else(|| exchange.client());
        (ReportedHeaders::of(&req.headers), client.map(IpText::new))
    } else {
        (ReportedHeaders::default(), None)
    };
    let client = client.as_ref();
    if let Some(access_log) = access_log {
        let line = LineParts {
            headers: &headers,
            client,
            span: span.as_deref(),
        };
        write_log_line(req, ctx, &finished, &line, access_log);
    }
    if prometheus || otlp.is_some() {
        let route = match ctx.telemetry.route.take() {
            Some(route) => route,
            None => route_metrics(ctx),
        };
        let upstream = ctx
            .upstream
            .as_ref()
            .map(|u| u.metrics.get_or_init(|| metrics::upstream(&u.name)).clone());
        record_metrics(
            ctx,
            &route,
            upstream.as_deref(),
            &finished,
            prometheus,
            otlp,
        );
        if let (Some(span), Some(otlp)) = (span, otlp) {
            span.finish(otlp, (finished.at, finished.elapsed), || ServerRequest {
                naming: route.span_naming(finished.method),
                path: req.uri.path(),
                client,
                host: host(req, headers.host),
                user_agent: headers.user_agent.and_then(|v| std::str::from_utf8(v).ok()),
                status,
                upstream: ctx
                    .peer
                    .zip(upstream.as_deref())
                    .map(|(peer, u)| u.peer_name(peer)),
            });
        }
    }
    drop(in_flight);
}

/// Prometheus (when its listener is on) and OTLP metrics of a finished request.
fn record_metrics(
    ctx: &RequestCtx,
    route: &RouteMetrics,
    upstream: Option<&UpstreamMetrics>,
    f: &Finished,
    prometheus: bool,
    otlp: Option<&Otlp>,
) {
    let seconds = f.elapsed.as_secs_f64();
    if prometheus {
        route.request_finished(f.method, f.status, seconds, f.body_bytes);
    }
    if let Some(otlp) = otlp {
        route.record_otlp(&otlp.server_duration, f.method, f.status, seconds);
    }
    let (Some(upstream), Some(time)) = (upstream, f.upstream_time) else {
        return;
    };
    // No upstream answer: a 502/504 is the upstream's failure; anything else (the client
    // left first) says nothing about the upstream.
    let upstream_status = ctx
        .telemetry
        .upstream_status
        .or(matches!(f.status, 502 | 504).then_some(f.status));
    let Some(upstream_status) = upstream_status else {
        return;
    };
    let seconds = time.as_secs_f64();
    if prometheus {
        upstream.record(upstream_status, seconds);
    }
    if let Some(otlp) = otlp {
        upstream.record_otlp(&otlp.client_duration, f.method, upstream_status, seconds);
    }
}

/// What the access-log line takes from the request beyond its header and context.
struct LineParts<'a> {
    headers: &'a ReportedHeaders<'a>,
    client: Option<&'a IpText>,
    span: Option<&'a ServerSpan>,
}

fn write_log_line(
    req: &RequestHeader,
    ctx: &RequestCtx,
    f: &Finished,
    parts: &LineParts<'_>,
    access_log: &AccessLog,
) {
    let headers = parts.headers;
    let format = ctx.snapshot.config.access_log.format;
    let entry = Entry {
        remote_addr: parts.client,
        authorization: headers.authorization,
        method: req.method.as_str(),
        target: req.raw_path(),
        version: req.version,
        status: f.status,
        body_bytes_sent: f.body_bytes,
        referer: headers.referer,
        user_agent: headers.user_agent,
        x_forwarded_for: headers.x_forwarded_for,
        request_time: f.elapsed,
        upstream_response_time: f.upstream_time,
        upstream_addr: ctx.peer,
        route: ctx.route_label(),
        // Only the JSON format has the field.
        trace_id: parts
            .span
            .filter(|_| format == LogFormat::Json)
            .map(|s| s.context().trace_id_hex()),
    };
    access_log.log(format, &entry, f.at);
}

/// The client's IP address, when it came over TCP.
pub fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// `server.address`: the host the client asked for (`header`: its `Host`), without the port.
fn host<'a>(req: &'a RequestHeader, header: Option<&'a [u8]>) -> Option<&'a str> {
    if let Some(host) = req.uri.host() {
        return Some(host);
    }
    let host = std::str::from_utf8(header?).ok()?;
    let host = match host.strip_prefix('[') {
        // [v6]:port
        Some(v6) => &host[..v6.find(']').map_or(host.len(), |end| end + 2)],
        None => &host[..host.bytes().position(|b| b == b':').unwrap_or(host.len())],
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_headers_are_what_header_map_get_returns() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("user-agent", "first/1.0"),
            ("x-other", "x"),
            ("user-agent", "second/2.0"),
            ("x-forwarded-for", "10.0.0.1"),
            ("host", "edge.example:8080"),
            ("referer", "http://r/"),
            ("authorization", "Basic YTpi"),
        ] {
            headers.append(
                http::HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        let found = ReportedHeaders::of(&headers);
        let get = |name: &str| headers.get(name).map(|v| v.as_bytes());
        assert_eq!(found.user_agent, get("user-agent"));
        assert_eq!(found.user_agent, Some(&b"first/1.0"[..]));
        assert_eq!(found.x_forwarded_for, get("x-forwarded-for"));
        assert_eq!(found.host, get("host"));
        assert_eq!(found.referer, get("referer"));
        assert_eq!(found.authorization, get("authorization"));
        assert!(ReportedHeaders::of(&http::HeaderMap::new()).host.is_none());
    }

    #[test]
    fn server_address_is_the_host_without_port() {
        let req = RequestHeader::build("GET", b"/", None).expect("request");
        assert_eq!(host(&req, Some(b"edge.example:8080")), Some("edge.example"));
        assert_eq!(host(&req, Some(b"edge.example")), Some("edge.example"));
        assert_eq!(host(&req, Some(b"[::1]:8080")), Some("[::1]"));
        assert_eq!(host(&req, Some(b":80")), None);
        assert_eq!(host(&req, None), None);
    }

    #[test]
    fn a_reported_request_keeps_what_the_log_reads() {
        let mut req = RequestHeader::build("POST", b"/chat?stream=1&x=%20", None).expect("request");
        req.set_version(http::Version::HTTP_10);
        for (name, value) in [
            ("Host", "edge.example"),
            ("User-Agent", "first/1.0"),
            ("User-Agent", "second/2.0"),
            ("Cookie", "secret"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("Referer", "http://r/"),
            ("Authorization", "Basic YTpi"),
        ] {
            req.append_header(name, value).expect("header");
        }
        let copy = reported_request(&req);
        assert_eq!(copy.method, req.method);
        assert_eq!(copy.raw_path(), b"/chat?stream=1&x=%20");
        assert_eq!(copy.version, http::Version::HTTP_10);
        let (original, kept) = (
            ReportedHeaders::of(&req.headers),
            ReportedHeaders::of(&copy.headers),
        );
        assert_eq!(kept.user_agent, Some(&b"first/1.0"[..]));
        assert_eq!(kept.host, original.host);
        assert_eq!(kept.referer, original.referer);
        assert_eq!(kept.x_forwarded_for, original.x_forwarded_for);
        assert_eq!(kept.authorization, original.authorization);
        assert_eq!(copy.headers.len(), 5, "{:?}", copy.headers);
    }
}
