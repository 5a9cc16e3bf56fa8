//! Telemetry: the access log (SPEC §4), Prometheus metrics (§5), OTLP traces and metrics
//! (§6).
//!
//! The proxy calls five hooks, one per phase ([`request_started`], [`upstream_started`],
//! [`inject_trace_context`], [`upstream_responded`], [`request_finished`]). Each takes what
//! it reads of the request as a [`RequestView`] and the telemetry's own per-request state,
//! [`RequestTelemetry`], which the proxy keeps for it between phases; telemetry knows
//! nothing else of the proxy.
//! Other modules record through [`metrics`] (auth results, SSE streams, reloads) and
//! [`traces::auth_span`].
//!
//! The process-wide parts (the access-log writer, the OTLP pipelines and the small tokio
//! runtime their background work runs on) are created once by [`init`] and kept in a
//! static: hooks run in Pingora's phases, far from `server::run`, and a static costs the
//! request path one atomic load. What is off costs nothing per request: no `[metrics]`
//! listener, no per-request counting; no OTLP, no span; `access_log.path = "off"`, no line.
//! Before [`init`] (unit tests) everything is off.

pub(crate) mod access_log;
mod keep;
pub(crate) mod log_levels;
mod metrics_server;
mod otlp;
mod reconfigure;
pub(crate) mod request_id;
mod settings;
mod span_queue;
pub(crate) mod stream;
mod trace_export;
pub(crate) mod traces;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use std::time::{Duration, Instant, SystemTime};

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use tokio::signal::unix::{signal, SignalKind};

use crate::client::{client_ip, X_FORWARDED_FOR};
use crate::metrics::{self, InFlightGauge, MethodLabel, RouteMetrics, UpstreamMetrics};
use crate::state::{SharedState, Snapshot};
use crate::text::IpText;
use crate::upstream::Upstream;
use access_log::{AccessLog, LogEntry};
use otlp::Otlp;
use traces::{ServerRequest, ServerSpan, TRACESTATE};

pub(crate) use crate::metrics::{record_auth, record_reload, AuthResult};
pub(crate) use stream::{Stream, StreamEnd};

/// How long the exit may wait for the last access-log lines and OTLP exports.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

struct Telemetry {
    access_log: AccessLog,
    /// The OTLP pipelines of the running config; a reload that changes their settings
    /// swaps them ([`reconfigure`]): requests load them when they start and end.
    otlp: ArcSwapOption<Otlp>,
    /// The settings `otlp` was built from, and the metrics listener: what a reload
    /// compares with.
    running: std::sync::Mutex<reconfigure::Running>,
    /// Runs the SIGUSR1 watch, the metrics listener and the OTLP exporters' network I/O;
    /// lives as long as the process (a static is never dropped).
    runtime: tokio::runtime::Runtime,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

fn global() -> Option<&'static Telemetry> {
    TELEMETRY.get()
}

/// The running OTLP pipelines; with OTLP off, one load and no reference count.
fn otlp_pipeline() -> Option<Arc<Otlp>> {
    global()?.otlp.load().as_ref().map(Arc::clone)
}

/// Starts the access-log writer, the OTLP pipelines (when enabled by the config or the
/// environment), the metrics listener and the SIGUSR1 handler. Called once, before the
/// server runs.
pub(crate) fn init(state: &SharedState) -> anyhow::Result<()> {
    metrics::init();
    metrics::record_config_loaded();
    let snapshot = state.load_full();
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
    let telemetry = Telemetry {
        access_log: AccessLog::start(state.clone())?,
        otlp: ArcSwapOption::empty(),
        running: std::sync::Mutex::new(reconfigure::Running::default()),
        runtime,
    };
    if TELEMETRY.set(telemetry).is_err() {
        anyhow::bail!("telemetry initialised twice");
    }
    if let Some(t) = global() {
        reconfigure::start(t, &snapshot.config)?;
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

/// A reload swapped in `snapshot`: the metrics listener moves, the OTLP pipelines are
/// rebuilt when their settings changed (SPEC §3: everything but the listeners reloads).
/// The access log and the per-request rules (sampling ratio, error/slow keeping) follow
/// each request's snapshot by themselves.
pub(crate) fn reconfigure(snapshot: &crate::state::Snapshot) {
    if let Some(t) = global() {
        reconfigure::apply(t, &snapshot.config);
    }
}

/// Writes the queued access-log lines and exports the pending spans and metrics, within
/// [`FLUSH_TIMEOUT`]. Called once Pingora has stopped serving.
pub(crate) fn shutdown() {
    let Some(t) = global() else {
        return;
    };
    let deadline = Instant::now() + FLUSH_TIMEOUT;
    if !t.access_log.flush(deadline) {
        tracing::warn!("access log not fully written at exit");
    }
    if let Some(otlp) = t.otlp.swap(None) {
        otlp.shutdown(deadline);
    }
}

/// What telemetry carries from phase to phase of one request.
#[derive(Default)]
pub(crate) struct RequestTelemetry {
    /// The route's handles, set by [`request_started`] when metrics or traces are on.
    route: Option<Arc<RouteMetrics>>,
    /// Counted in `edge_http_requests_in_flight` (Prometheus on) until dropped.
    in_flight: Option<InFlightGauge>,
    /// The answer is a stream (see [`stream`]): its state until the request ends.
    stream: Option<Box<Stream>>,
    /// The client's address, looked up once.
    client: Option<IpAddr>,
    /// First upstream attempt (name resolution included).
    upstream_started: Option<Instant>,
    /// Status of the upstream's response header.
    upstream_status: Option<u16>,
    /// Boxed: the context is moved with Pingora's request futures, and an inline span
    /// would make every request copy it, traced or not.
    span: Option<Box<ServerSpan>>,
    /// `X-Request-ID`, decided in `request_filter` ([`request_id`]).
    request_id: Option<http::HeaderValue>,
    /// The upstream failed (refused, timed out, broke off): the span is an error's.
    upstream_failed: bool,
}

impl RequestTelemetry {
    /// The request's SERVER span, when tracing is on and the request is proxied.
    pub(crate) fn server_span(&self) -> Option<&ServerSpan> {
        self.span.as_deref()
    }

    /// The client's address, when a kind of telemetry that reports it is on.
    pub(crate) fn client(&self) -> Option<IpAddr> {
        self.client
    }

    /// The status of the upstream's answer header, once it came.
    pub(crate) fn upstream_status(&self) -> Option<u16> {
        self.upstream_status
    }

    /// The answer's stream state, when the answer is a stream.
    pub(crate) fn stream(&mut self) -> Option<&mut Stream> {
        self.stream.as_deref_mut()
    }

    /// Lends the stream state to the relay's body pump, which [`Self::put_stream`]s it back.
    pub(crate) fn take_stream(&mut self) -> Option<Box<Stream>> {
        self.stream.take()
    }

    pub(crate) fn put_stream(&mut self, stream: Option<Box<Stream>>) {
        self.stream = stream;
    }
}

/// What telemetry reads of a request: the proxy's answer to "which request is this".
#[derive(Clone, Copy)]
pub(crate) struct RequestView<'a> {
    /// The config the request runs on.
    pub snapshot: &'a Snapshot,
    /// Index into `snapshot.config.routes`, once matched (`None` for health probes too).
    pub route: Option<usize>,
    /// The route label of logs and metrics: bounded whatever the client sends.
    pub label: &'a str,
    pub kind: Kind,
    /// The matched route is an `sse` route.
    pub sse_route: bool,
    /// The request is written to the access log (a route may turn it off).
    pub access_log: bool,
    /// When the request arrived.
    pub started: Instant,
    pub upstream: Option<&'a Upstream>,
    /// The upstream address the request went to.
    pub peer: Option<std::net::SocketAddr>,
}

/// What kind of request it is, as far as telemetry cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A health probe: counted, never logged nor traced.
    Health,
    /// Proxied to an upstream: gets a span.
    Proxied,
    /// Answered by the proxy itself (or not yet decided).
    Other,
}

/// `request_filter`, once the kind and the route are known: the in-flight gauge, and for
/// proxied requests the SERVER span (a child of the client's `traceparent`).
pub(crate) fn request_started(
    session: &Session,
    view: &RequestView<'_>,
    tel: &mut RequestTelemetry,
) {
    let prometheus = metrics::requests_counted();
    let otlp = global().is_some_and(|t| t.otlp.load().is_some());
    if !prometheus && !otlp {
        return;
    }
    let route = route_metrics(view);
    tel.client = client_ip(session);
    if otlp && view.kind == Kind::Proxied {
        let ratio = view.snapshot.config.telemetry.sampling_ratio;
        let span = ServerSpan::start(ratio, &session.req_header().headers);
        tel.span = Some(Box::new(span));
    }
    if prometheus {
        tel.in_flight = Some(route.clone().enter());
    }
    tel.route = Some(route);
}

/// The handles of the request's route label; a matched route's are kept in the config
/// snapshot.
fn route_metrics(view: &RequestView<'_>) -> Arc<RouteMetrics> {
    let kept = match (view.kind, view.route) {
        (Kind::Health, _) => None,
        (_, route) => route.and_then(|i| view.snapshot.route_metrics.get(i)),
    };
    match kept {
        Some(slot) => slot.get_or_init(|| metrics::route(view.label)).clone(),
        None => metrics::route(view.label),
    }
}

/// `upstream_peer`: the upstream exchange starts (kept from the first attempt).
pub(crate) fn upstream_started(tel: &mut RequestTelemetry) {
    tel.upstream_started.get_or_insert_with(Instant::now);
}

/// `upstream_request_filter`: the proxy's own `traceparent` (and `tracestate`) replace the
/// client's, so the upstream's spans are children of the proxy's span.
pub(crate) fn inject_trace_context(
    tel: &RequestTelemetry,
    upstream_request: &mut RequestHeader,
) -> pingora::Result<()> {
    if let Some(span) = &tel.span {
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

/// `upstream_response_filter`: the upstream answered with `response`. A 2xx on an `sse`
/// route, or an event stream on any route, is a stream (counted in
/// `edge_sse_streams_active` and reported as one when it ends).
pub(crate) fn upstream_responded(
    view: &RequestView<'_>,
    tel: &mut RequestTelemetry,
    response: &pingora::http::ResponseHeader,
) {
    tel.upstream_status = Some(response.status.as_u16());
    let event_stream = stream::is_event_stream(&response.headers);
    if event_stream || (response.status.is_success() && view.sse_route) {
        tel.stream = Some(Box::new(Stream::open(view.label, event_stream)));
    }
}

/// The request failed at the upstream (connection, timeout, or a stream broken off):
/// its span is kept as an error's even when the client saw a 2xx ([`keep`]).
pub(crate) fn upstream_failed(tel: &mut RequestTelemetry) {
    tel.upstream_failed = true;
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
    /// How the answer's stream went, when it was one.
    stream: Option<stream::StreamReport>,
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
pub(crate) enum Exchange<'a> {
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
pub(crate) fn reported_request(req: &RequestHeader) -> RequestHeader {
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
pub(crate) fn request_finished(
    exchange: &Exchange<'_>,
    view: &RequestView<'_>,
    tel: &mut RequestTelemetry,
    status: u16,
) {
    let in_flight = tel.in_flight.take();
    let stream = tel.stream.take().map(|s| s.report(view.started));
    let span = tel.span.take();
    let prometheus = metrics::requests_counted();
    let otlp = otlp_pipeline();
    // The live config decides whether and how the line is written (the access log's file
    // and format follow a reload at once, even for requests that started before it).
    let access_log = global()
        .filter(|t| view.kind != Kind::Health && view.access_log && t.access_log.enabled())
        .map(|t| &t.access_log);
    if !prometheus && otlp.is_none() && access_log.is_none() {
        return;
    }
    let req = exchange.request();
    let now = Instant::now();
    let finished = Finished {
        method: MethodLabel::of(&req.method),
        status,
        elapsed: now.saturating_duration_since(view.started),
        body_bytes: exchange.body_bytes(),
        upstream_time: tel
            .upstream_started
            .map(|t| now.saturating_duration_since(t)),
        at: SystemTime::now(),
        stream,
    };
    let traced = span.is_some() && otlp.is_some();
    let (headers, client) = if access_log.is_some() || traced {
        // known since request_filter unless only the access log is on
        let client = tel.client.or_else(|| exchange.client());
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
            request_id: tel.request_id.as_ref().map(|v| v.as_bytes()),
        };
        write_log_line(req, view, &finished, &line, access_log);
    }
    if prometheus || otlp.is_some() {
        let route = match tel.route.take() {
            Some(route) => route,
            None => route_metrics(view),
        };
        let upstream = view
            .upstream
            .map(|u| u.metrics.get_or_init(|| metrics::upstream(&u.name)).clone());
        record_metrics(
            tel.upstream_status,
            &route,
            upstream.as_deref(),
            &finished,
            prometheus,
            otlp.as_deref(),
        );
        if let (Some(span), Some(otlp)) = (span, otlp) {
            let keep = || {
                // A stream's is its time to first byte (SPEC §6), not its length.
                let latency = finished
                    .stream
                    .and_then(|s| s.time_to_first_byte)
                    .unwrap_or(finished.elapsed);
                let outcome = keep::Outcome {
                    status,
                    upstream_failed: tel.upstream_failed,
                    latency,
                };
                keep::reason(&view.snapshot.config.telemetry, &outcome)
            };
            let times = (finished.at, finished.elapsed);
            span.finish(&otlp, times, keep, || ServerRequest {
                naming: route.span_naming(finished.method),
                path: req.uri.path(),
                client,
                host: host(req, headers.host),
                user_agent: headers.user_agent.and_then(|v| std::str::from_utf8(v).ok()),
                status,
                upstream: view
                    .peer
                    .zip(upstream.as_deref())
                    .map(|(peer, u)| u.peer_name(peer)),
                request_id: tel.request_id.as_ref().and_then(|v| v.to_str().ok()),
                stream: finished.stream,
            });
        }
    }
    drop(in_flight);
}

/// Prometheus (when its listener is on) and OTLP metrics of a finished request.
fn record_metrics(
    upstream_status: Option<u16>,
    route: &RouteMetrics,
    upstream: Option<&UpstreamMetrics>,
    f: &Finished,
    prometheus: bool,
    otlp: Option<&Otlp>,
) {
    let seconds = f.elapsed.as_secs_f64();
    if prometheus {
        route.request_finished(f.method, f.status, seconds, f.body_bytes);
        if let Some(stream) = &f.stream {
            let ttfb = stream.time_to_first_byte.map(|t| t.as_secs_f64());
            route.stream_finished(stream.end.as_str(), ttfb, seconds, stream.events);
        }
    }
    if let Some(otlp) = otlp {
        route.record_otlp(&otlp.server_duration, f.method, f.status, seconds);
    }
    let (Some(upstream), Some(time)) = (upstream, f.upstream_time) else {
        return;
    };
    // No upstream answer: a 502/504 is the upstream's failure; anything else (the client
    // left first) says nothing about the upstream.
    let upstream_status = upstream_status.or(matches!(f.status, 502 | 504).then_some(f.status));
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
    request_id: Option<&'a [u8]>,
}

fn write_log_line(
    req: &RequestHeader,
    view: &RequestView<'_>,
    f: &Finished,
    parts: &LineParts<'_>,
    access_log: &AccessLog,
) {
    let headers = parts.headers;
    let entry = LogEntry {
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
        upstream_addr: view.peer,
        route: view.label,
        // Only the JSON format has the field.
        trace_id: parts.span.map(|s| s.context().trace_id),
        request_id: parts.request_id,
        stream: f.stream,
    };
    access_log.log(&entry, f.at);
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
