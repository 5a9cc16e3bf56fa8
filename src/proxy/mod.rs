//! The Pingora `ProxyHttp` service: one method per request phase, each short, the work
//! done by the modules they call.

mod context;
mod cork;
mod cut;
mod forward;
mod guard;
mod relay;
mod respond;
mod screen;
mod stale;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{header, Method, StatusCode};
use pingora::apps::ServerApp;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::protocols::Stream;
use pingora::proxy::{FailToProxy, HttpProxy, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::{ErrorSource, ErrorType};

pub(crate) use context::{RequestCtx, RequestKind};
pub(crate) use respond::add_configured_headers;

use crate::auth::{AuthClient, AuthOutcome};
use crate::cache::{AssetCache, Entry, Lookup};
use crate::client::{host_without_port, ClientIdentity};
use crate::config::RouteAction;
use crate::fields::{self, InvalidContentLength};
use crate::routing::normalize_path;
use crate::state::SharedState;
use crate::telemetry::AuthResult;
use crate::upstream::Upstream;
use forward::{make_room, rewrite_uri};
use respond::{error_status, local_answer, local_response, relay_denial};

/// Idle time after which a pooled upstream connection is closed; also how long the pools of
/// an upstream removed by a reload take to drain.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a rejected request body is read and dropped before the connection closes.
const LINGERING_TIME: Duration = Duration::from_secs(5);

pub(crate) static X_ACCEL_BUFFERING: header::HeaderName =
    header::HeaderName::from_static("x-accel-buffering");

/// The proxy's phases. A handle: clones share everything, so that an SSE stream's relay
/// (see `relay`) runs the same phases on a task of its own.
#[derive(Clone)]
pub(crate) struct EdgeProxy {
    shared: Arc<Shared>,
}

struct Shared {
    state: SharedState,
    /// The pipeline these phases run in, for a relayed stream to hand its connection back to
    /// for the client's next request; set once by [`EdgeApp::new`].
    pipeline: std::sync::OnceLock<std::sync::Weak<HttpProxy<EdgeProxy>>>,
    /// Fires when the proxy stops accepting: no connection is kept alive past it.
    shutdown: ShutdownWatch,
    auth: AuthClient,
    /// The in-memory asset cache of `[cache]`: one per process, kept across reloads.
    assets: AssetCache,
    /// The upstream connections of relayed SSE streams (Pingora's own pool is private to
    /// its pipeline).
    relay_connector: pingora::connectors::TransportConnector,
}

impl EdgeProxy {
    pub(crate) fn new(state: SharedState, shutdown: ShutdownWatch) -> Self {
        EdgeProxy {
            shared: Arc::new(Shared {
                state,
                pipeline: std::sync::OnceLock::new(),
                shutdown,
                auth: AuthClient::default(),
                assets: AssetCache::default(),
                relay_connector: pingora::connectors::TransportConnector::new(None),
            }),
        }
    }

    /// On to the upstream: Pingora's pipeline, or, for an SSE stream, a relay of its own.
    fn proxy_on(&self, session: &mut Session, ctx: &mut RequestCtx) -> bool {
        if relay::detachable(session, ctx) {
            relay::detach(self, session, ctx);
            return true;
        }
        false
    }
}

/// The proxy service's application: Pingora's HTTP proxy running [`EdgeProxy`]'s phases.
/// A wrapper only so that the phases can reach their own pipeline (a relayed SSE stream
/// hands its connection back to it; Pingora's `Service` keeps its application to itself).
pub(crate) struct EdgeApp(Arc<HttpProxy<EdgeProxy>>, SharedState);

impl EdgeApp {
    pub(crate) fn new(conf: &Arc<ServerConf>, proxy: EdgeProxy) -> EdgeApp {
        let mut app = pingora::proxy::http_proxy(conf, proxy.clone());
        app.h2_options = Some(h2_options(&proxy.shared.state.load().config.server));
        let pipeline = Arc::new(app);
        // Weak: the pipeline owns the phases, which must not keep it alive in turn.
        let _ = proxy.shared.pipeline.set(Arc::downgrade(&pipeline));
        EdgeApp(pipeline, proxy.shared.state.clone())
    }
}

/// HTTP/2's settings: Pingora's bounded defaults (100 streams per connection), with the
/// decoded header list bounded by `server.client_header_max_size` as HTTP/1's header is.
/// Read at start: Pingora keeps one set of HTTP/2 options per service, so a reload does
/// not change it.
fn h2_options(server: &crate::config::ServerConfig) -> H2Options {
    let mut options = default_h2_options();
    options.max_header_list_size(u32::try_from(server.client_header_max_size).unwrap_or(u32::MAX));
    options
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        guard::serve(&self.0, stream, shutdown, &self.1).await
    }

    async fn cleanup(&self) {
        self.0.cleanup().await;
    }
}

/// What `request_filter` decided, computed while the request header is borrowed.
enum Decision {
    /// On to forward auth (if the route has it) and the upstream.
    Proxy,
    /// The proxy answers itself.
    Answer(Answer),
}

/// The answers the proxy writes itself.
enum Answer {
    Health,
    Reject(StatusCode, &'static str),
    Return(usize),
    /// nginx's 301 from `/p` to the slashed path of route `usize` (SPEC §2).
    SlashRedirect(usize),
    CacheHit(std::sync::Arc<Entry>),
}

/// `decide`'s way of turning a request away with `status` (`why` goes to the debug log).
fn reject(status: StatusCode, why: &'static str) -> Decision {
    Decision::Answer(Answer::Reject(status, why))
}

#[async_trait]
impl ProxyHttp for EdgeProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.shared.state.load_full())
    }

    /// No built-in modules: gzip is decided per response by the proxy itself, and the
    /// disabled compression module Pingora adds by default still inspects every response.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // While stopping, pingora has turned keep-alive off: keep it off, so the answer says
        // `Connection: close` instead of inviting a request the stopping process won't read.
        if !session.is_process_shutting_down() {
            let keepalive = ctx.snapshot.config.server.keepalive_timeout.as_secs();
            session.set_keepalive(Some(keepalive));
        }
        guard::request_parsed(session);
        let underscores = ctx.snapshot.config.server.underscores_in_headers;
        screen::scrub(session.req_header_mut(), underscores);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let decision = self.decide(session, ctx);
        ctx.kind = match decision {
            Decision::Answer(Answer::Health) => RequestKind::Health,
            Decision::Proxy => RequestKind::Proxied,
            Decision::Answer(_) => RequestKind::Local,
        };
        let (view, telemetry) = ctx.telemetry_parts();
        crate::telemetry::request_started(session, &view, telemetry);
        crate::telemetry::request_id::assign(session.req_header(), telemetry);
        let needs_auth = ctx.proxy_route().is_some_and(|r| r.auth.is_some());
        match decision {
            Decision::Proxy if !needs_auth => Ok(self.proxy_on(session, ctx)),
            // Pingora moves this future into a box on every request: the answers written
            // here (auth, cache hits, local answers) are boxed futures of their own, so
            // the common path above does not pay for copying their state.
            Decision::Proxy => {
                let answered = Box::pin(self.forward_auth(session, ctx)).await?;
                Ok(answered || self.proxy_on(session, ctx))
            }
            Decision::Answer(answer) => {
                Box::pin(answer_locally(session, ctx, answer)).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.request_body_bytes += chunk.len() as u64;
            let limit = ctx
                .route()
                .and_then(|r| r.client_max_body_size)
                .unwrap_or(ctx.snapshot.config.server.client_max_body_size);
            if ctx.request_body_bytes > limit {
                // Failing here aborts the upstream request before its last chunk is sent.
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over client_max_body_size",
                );
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let upstream = ctx.upstream.clone().ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "proxied request without upstream")
        })?;
        if ctx.attempts == 0 {
            crate::telemetry::upstream_started(&mut ctx.telemetry);
            ctx.upstream_addrs = upstream.addresses().await.map_err(|e| {
                let mut err = Error::because(ErrorType::ConnectNoRoute, "resolving upstream", e);
                err.esource = ErrorSource::Upstream;
                err
            })?;
            ctx.start_slot = upstream.start_slot();
        }
        let addr = Upstream::pick(&ctx.upstream_addrs, ctx.start_slot, ctx.attempts)
            .ok_or_else(|| Error::new_up(ErrorType::ConnectNoRoute))?;
        ctx.attempts += 1;
        ctx.peer = Some(addr);

        let route = ctx.proxy_route();
        let connect_timeout = route
            .and_then(|r| r.connect_timeout)
            .unwrap_or(upstream.connect_timeout);
        let timeout = route.and_then(|r| r.timeout).unwrap_or(upstream.timeout);
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(connect_timeout);
        peer.options.total_connection_timeout = Some(connect_timeout);
        peer.options.read_timeout = Some(timeout);
        peer.options.write_timeout = Some(timeout);
        peer.options.idle_timeout = Some(UPSTREAM_IDLE_TIMEOUT);
        screen::upgrades(
            session,
            route.is_some_and(|r| r.websocket),
            timeout,
            &mut peer,
        );
        Ok(Box::new(peer))
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        stale::pipeline_retry(peer, session, e, ctx, client_reused)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(upstream) = &ctx.upstream {
            upstream.mark_stale();
        }
        // nginx's proxy_next_upstream error timeout: try every address once.
        let connect_failure = matches!(
            e.etype(),
            ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::ConnectTimedout
        );
        if connect_failure && ctx.attempts < ctx.upstream_addrs.len() {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Room for what is set below: the identity headers, `Host`, the trace context,
        // `X-Request-ID`, `X-Accel-Buffering`, and the route's and forward auth's headers.
        let own = 8 + ctx.proxy_route().map_or(0, |r| r.set_request_headers.len());
        make_room(upstream_request, own + ctx.auth_headers.len())?;
        let client = session.req_header();
        ClientIdentity::of(session).apply(client, upstream_request)?;
        if let Some(host) = host_without_port(client) {
            // Usually the client's Host already is `$host`: then the copy upstream keeps it.
            if client.headers.get(header::HOST).map(|h| h.as_bytes()) != Some(host.as_bytes()) {
                upstream_request.insert_header(header::HOST, host.into_owned())?;
            }
        } else if let Some(peer) = ctx.peer {
            // HTTP/1.0 without Host: the upstream request is HTTP/1.1, which needs one
            // (nginx sends its `$proxy_host`).
            upstream_request.insert_header(header::HOST, peer.to_string())?;
        }
        if let Some(uri) = ctx.upstream_uri.take() {
            upstream_request.set_uri(uri);
        }
        crate::telemetry::inject_trace_context(&ctx.telemetry, upstream_request)?;
        crate::telemetry::request_id::set_on_request(&ctx.telemetry, upstream_request)?;
        let Some(route) = ctx.proxy_route() else {
            return Ok(());
        };
        for (name, value) in &route.set_request_headers {
            match value {
                Some(value) => upstream_request.insert_header(name.clone(), value.clone())?,
                None => {
                    upstream_request.remove_header(name);
                }
            }
        }
        if route.auth.is_some() {
            upstream_request.remove_header(&header::AUTHORIZATION);
        }
        for (name, value) in &ctx.auth_headers {
            match value {
                Some(value) => upstream_request.insert_header(name.clone(), value.clone())?,
                None => {
                    upstream_request.remove_header(name);
                }
            }
        }
        if route.sse {
            upstream_request.insert_header(X_ACCEL_BUFFERING.clone(), "no")?;
        }
        if ctx.asset.is_some() {
            crate::cache::ask_for_identity(upstream_request);
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (view, telemetry) = ctx.telemetry_parts();
        crate::telemetry::upstream_responded(&view, telemetry, upstream_response);
        let websocket = ctx.proxy_route().is_some_and(|r| r.websocket);
        screen::unasked_upgrade(session, websocket, upstream_response)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // An event stream on any route is never stored nor compressed (SPEC §3).
        let event_stream = ctx.telemetry.stream().is_some_and(|s| s.is_event_stream());
        // Fields, not `ctx.proxy_route()`: the route is borrowed beside the body stages.
        let route = ctx
            .route
            .and_then(|i| ctx.snapshot.config.routes[i].proxy());
        if let Some(route) = route {
            for name in &route.hide_response_headers {
                response.remove_header(name);
            }
            if event_stream {
                ctx.asset = None;
            } else if !route.sse {
                // The body stages (asset cache, gzip): never on a stream. (An `sse` route's
                // own headers are `add_configured_headers`'s.)
                // The asset cache captures the upstream's own header, so it goes first.
                let req = session.req_header();
                crate::cache::response_filter(req, response, &mut ctx.asset, route.cache)?;
                ctx.gzip =
                    crate::compress::response_filter(&ctx.snapshot.config.gzip, req, response)?;
                if ctx.gzip.is_some() {
                    cork::hold_segments(session);
                }
            }
        }
        add_configured_headers(response, ctx)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let (Some(stream), Some(data)) = (ctx.telemetry.stream(), body.as_ref()) {
            stream.sent(data);
        }
        // The cache keeps the identity body: capture before compressing.
        crate::cache::body_filter(
            body,
            end_of_stream,
            &mut ctx.asset,
            &ctx.snapshot.config.gzip,
        );
        if let Some(gzip) = ctx.gzip.as_mut() {
            gzip.filter(body, end_of_stream)
                .or_err(ErrorType::InternalError, "gzip")?;
        }
        Ok(None)
    }

    /// Once per request, at its very end (SSE: when the stream ends): access log, metrics,
    /// span.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if ctx.kind == RequestKind::Detached {
            return; // the relay logs the request when its stream ends
        }
        if ctx.gzip.is_some() {
            cork::release_segments(session);
        }
        if let Some(stream) = ctx.telemetry.stream() {
            stream.ended(crate::telemetry::StreamEnd::of(e));
        }
        // What the client got; nginx's 499 when it left before anything was sent.
        let status = match session.response_written() {
            Some(response) => response.status.as_u16(),
            None => e.map_or(499, |e| match error_status(e) {
                0 => 499,
                status => status,
            }),
        };
        if e.is_some_and(|e| e.esource() == &ErrorSource::Upstream) {
            crate::telemetry::upstream_failed(&mut ctx.telemetry);
        }
        let exchange = crate::telemetry::Exchange::Session(session);
        let (view, telemetry) = ctx.telemetry_parts();
        crate::telemetry::request_finished(&exchange, &view, telemetry, status);
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        true // fail_to_proxy logs one line with route and upstream
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = log_failure(ctx, e);
        // a failure before request_filter (none is known today) still gets an id
        crate::telemetry::request_id::assign(session.req_header(), &mut ctx.telemetry);
        // A `100 Continue` is no answer yet: a body over the limit still gets its 413.
        let already_answered = session
            .response_written()
            .is_some_and(|r| !r.status.is_informational());
        if already_answered {
            // The answer is cut: never its clean end (SPEC §3 "How a stream ends").
            cut::cut(session);
        }
        if status > 0 && !already_answered {
            session.set_keepalive(None); // the connection closes after it: the answer says so
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Err(write_error) = local_response(session, ctx, code, None).await {
                tracing::debug!("could not send the error response: {write_error}");
            }
            if code == StatusCode::PAYLOAD_TOO_LARGE {
                discard_request_body(session).await;
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }
}

/// One line for a failed request, with route, upstream and peer: an error when the proxy
/// or the upstream failed, debug when the client did. Returns the status the failure
/// means (0: none, the client is gone).
fn log_failure(ctx: &RequestCtx, e: &Error) -> u16 {
    let status = error_status(e);
    if status >= 500 || e.esource() == &ErrorSource::Upstream {
        let peer = ctx
            .peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        tracing::error!(
            route = ctx.route_label(),
            upstream = ctx.upstream_name(),
            peer,
            status,
            "{e}"
        );
    } else {
        tracing::debug!(route = ctx.route_label(), status, "request failed: {e}");
    }
    status
}

impl EdgeProxy {
    /// Runs the route's forward auth, if any; `Ok(true)` when the client has been answered.
    async fn forward_auth(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let snapshot = ctx.snapshot.clone();
        let Some(auth_index) = ctx.proxy_route().and_then(|r| r.auth) else {
            return Ok(false);
        };
        let auth = &snapshot.config.auth[auth_index];
        let upstream = &snapshot.upstreams[auth.upstream];
        let identity = ClientIdentity::of(session);
        let span = crate::telemetry::traces::auth_span(
            ctx.telemetry.server_span(),
            &auth.name,
            &auth.path,
        );
        let mut extra = span.headers();
        extra.extend(crate::telemetry::request_id::header(&ctx.telemetry));
        let outcome = self
            .shared
            .auth
            .check(auth, upstream, session.req_header(), &identity, &extra)
            .await;
        let (result, answer) = match &outcome {
            AuthOutcome::Allow(_) => (AuthResult::Allow, None),
            AuthOutcome::Deny(denial) => (AuthResult::Deny, Some(denial.status)),
            AuthOutcome::Error(_) => (AuthResult::Error, None),
        };
        crate::telemetry::record_auth(&auth.name, result);
        span.finish(result, answer);
        match outcome {
            AuthOutcome::Allow(headers) => {
                ctx.auth_headers = headers;
                Ok(false)
            }
            AuthOutcome::Deny(denial) => {
                relay_denial(session, ctx, denial).await?;
                Ok(true)
            }
            AuthOutcome::Error(why) => {
                tracing::error!(
                    route = ctx.route_label(),
                    auth = %auth.name,
                    upstream = %upstream.name,
                    "forward auth failed: {why}"
                );
                local_response(session, ctx, StatusCode::INTERNAL_SERVER_ERROR, None).await?;
                Ok(true)
            }
        }
    }

    /// Health probe, normalisation, route selection and the body-size check.
    fn decide(&self, session: &Session, ctx: &mut RequestCtx) -> Decision {
        let snapshot = ctx.snapshot.clone();
        let config = &snapshot.config;
        let req = session.req_header();
        let target = match screen::verdict(req) {
            Ok(screen::Target::Asterisk) => return reject(StatusCode::OK, "OPTIONS *"),
            Ok(target) => target,
            Err((status, why)) => return reject(status, why),
        };
        let raw_path = req.uri.path();
        if config.health_paths.iter().any(|p| p == raw_path) {
            return Decision::Answer(Answer::Health);
        }
        let normalized = match normalize_path(raw_path) {
            Ok(path) => path,
            Err(e) => {
                return reject(
                    StatusCode::BAD_REQUEST,
                    match e {
                        crate::routing::NormalizeError::AboveRoot => "path climbs above /",
                        _ => "malformed path",
                    },
                )
            }
        };
        // The request parser re-escapes raw control bytes of the request line (`\x01` → `%01`),
        // so they are caught here, decoded: no control character reaches routing or upstreams.
        if normalized.bytes().any(|b| b.is_ascii_control()) {
            return reject(StatusCode::BAD_REQUEST, "control character in the path");
        }
        // nginx finds the redirect in its prefix tree, before regex locations and auth.
        if let Some(index) = config.slash_redirects.find(&normalized) {
            ctx.route = Some(index);
            if config.routes[index].internal {
                return reject(StatusCode::NOT_FOUND, "internal route");
            }
            return Decision::Answer(Answer::SlashRedirect(index));
        }
        let Some(found) = config.router.find(&normalized) else {
            return reject(StatusCode::NOT_FOUND, "no route");
        };
        ctx.route = Some(found.index);
        let route_config = &config.routes[found.index];
        if route_config.internal {
            return reject(StatusCode::NOT_FOUND, "internal route");
        }
        let route = match &route_config.action {
            RouteAction::Return { .. } => return Decision::Answer(Answer::Return(found.index)),
            RouteAction::Proxy(route) => route,
        };
        let body_limit = route_config
            .client_max_body_size
            .unwrap_or(config.server.client_max_body_size);
        match fields::content_length(&req.headers) {
            Err(InvalidContentLength) => {
                return reject(StatusCode::BAD_REQUEST, "bad Content-Length")
            }
            Ok(Some(len)) if len > body_limit => {
                return reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Content-Length over client_max_body_size",
                )
            }
            Ok(_) => {}
        }
        if route.upstream_path.is_some() {
            ctx.upstream_uri = rewrite_uri(route, &normalized, found.matched_len, req.uri.query());
            if ctx.upstream_uri.is_none() {
                return reject(StatusCode::BAD_REQUEST, "path cannot be rewritten");
            }
        } else if target == screen::Target::Absolute {
            // Pingora keeps only the path and query of an absolute target in the URI.
            ctx.upstream_uri = Some(req.uri.clone());
        }
        match self
            .shared
            .assets
            .lookup(config.cache, route, req, &normalized)
        {
            Lookup::Bypass => {}
            Lookup::Hit(entry) => return Decision::Answer(Answer::CacheHit(entry)),
            Lookup::Miss(capture) => ctx.asset = Some(capture),
        }
        ctx.upstream = Some(snapshot.upstreams[route.upstream].clone());
        Decision::Proxy
    }
}

/// Writes an answer `request_filter` decided the proxy gives itself.
async fn answer_locally(session: &mut Session, ctx: &mut RequestCtx, answer: Answer) -> Result<()> {
    match answer {
        Answer::Health => {
            let method = &session.req_header().method;
            if method == Method::GET || method == Method::HEAD {
                local_response(session, ctx, StatusCode::OK, Some("OK\n")).await?;
            } else {
                local_response(session, ctx, StatusCode::METHOD_NOT_ALLOWED, None).await?;
            }
        }
        Answer::Reject(status, why) => {
            tracing::debug!(
                route = ctx.route_label(),
                status = status.as_u16(),
                "rejected: {why}"
            );
            if status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE {
                // as nginx: a malformed request, or one whose body is not read, ends the
                // connection, and the answer says `Connection: close`
                session.set_keepalive(None);
            }
            local_response(session, ctx, status, None).await?;
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                discard_request_body(session).await;
            }
        }
        Answer::Return(index) => {
            let snapshot = ctx.snapshot.clone();
            if let RouteAction::Return {
                status,
                body,
                redirect,
            } = &snapshot.config.routes[index].action
            {
                let location = redirect.as_ref().map(Cow::Borrowed);
                local_answer(session, ctx, *status, body.as_deref(), location).await?;
            }
        }
        Answer::SlashRedirect(index) => {
            let location = respond::slash_location(ctx, index, session.req_header());
            local_answer(
                session,
                ctx,
                StatusCode::MOVED_PERMANENTLY,
                None,
                location.map(Cow::Owned),
            )
            .await?;
        }
        Answer::CacheHit(entry) => {
            let hide = ctx
                .proxy_route()
                .map_or(&[][..], |r| &r.hide_response_headers);
            let (mut resp, body) = crate::cache::hit_answer(
                session.req_header(),
                &entry,
                &ctx.snapshot.config.gzip,
                hide,
            )?;
            add_configured_headers(&mut resp, ctx)?;
            ctx.local_status = Some(resp.status.as_u16());
            session.write_response_header(resp, body.is_none()).await?;
            if let Some(body) = body {
                session.write_response_body(Some(body), true).await?;
            }
        }
    }
    Ok(())
}

/// After an early 413, reads and drops what the client is still sending (bounded in time),
/// as nginx's lingering close does, so the client reads the answer instead of a reset.
async fn discard_request_body(session: &mut Session) {
    session.set_keepalive(None);
    let _ = tokio::time::timeout(LINGERING_TIME, session.drain_request_body()).await;
}
