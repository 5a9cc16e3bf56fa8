//! SSE streams relayed outside Pingora's per-connection pipeline, to cut what an idle
//! stream holds.
//!
//! Pingora runs each downstream connection as one future: `HttpProxy::process_new_http`,
//! 14,336 bytes for this proxy (`cargo +nightly rustc --release --lib --
//! -Zprint-type-sizes`), inside a 3.8 KB connection future, plus the two task channels of
//! its HTTP/1 pipeline. All of it lives as long as the response does; and its HTTP/1
//! sessions, the client's and the upstream's, keep their header buffers, both headers and
//! a 64 KiB body buffer. For an SSE stream that waits seconds between events for up to 30
//! minutes, that is most of its memory.
//!
//! So once `request_filter` has sent a request to an `sse` route (forward auth, if any,
//! has let it through), the downstream session is taken out of Pingora's pipeline, which
//! then ends as for a request the proxy answered itself, and a task of its own relays the
//! stream in two steps:
//!
//! 1. [`open`]: through the client's Pingora session and the same phases Pingora would
//!    call (`upstream_peer` and `fail_to_connect`, the request and response filters,
//!    `fail_to_proxy`), an HTTP/1.1 exchange with the upstream ([`exchange`]) up to the
//!    answer's header, which the client is sent.
//! 2. [`pump`]: the session is taken apart into its connection, and the body is relayed
//!    between the two bare connections with no buffer held between events ([`framing`]
//!    decodes the upstream's chunks and frames them for the client). What the log line
//!    needs of the request is kept in a small copy.
//!
//! When the stream has ended cleanly, the connection goes back to Pingora's pipeline for
//! the client's next request, as in Pingora's own keep-alive loop.
//!
//! Only HTTP/1 requests without `Upgrade` take this path; the rest stay in Pingora's.

mod exchange;
mod framing;
mod pump;

use std::io::Cursor;
use std::sync::Weak;

use bytes::Bytes;
use http::{header, HeaderName, Version};
use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::protocols::http::v1::common::is_expect_continue_req;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::Peer;
use pingora::ErrorType;
use tokio::io::AsyncWriteExt;

use super::{EdgeProxy, RequestCtx, RequestKind, UPSTREAM_IDLE_TIMEOUT};
use crate::fields;
use crate::telemetry::{self, Exchange, StreamEnd};
use exchange::UpstreamAnswer;
use framing::{BodyDecoder, Incoming, Outgoing};
use pump::{End, Pump};

/// Whether the request, just past `request_filter`, is relayed off Pingora's pipeline.
pub(super) fn detachable(session: &Session, ctx: &RequestCtx) -> bool {
    let downstream = session.as_downstream();
    ctx.proxy_route().is_some_and(|r| r.sse)
        && ctx.snapshot.config.server.sse_relay
        && matches!(downstream, ServerSession::H1(_))
        && !downstream
            .req_header()
            .headers
            .contains_key(header::UPGRADE)
}

/// Takes the downstream session and the request's context out of Pingora's pipeline and
/// spawns their relay. What is left behind is a closed placeholder, so that Pingora's
/// pipeline ends at once without answering, logging or reusing anything.
pub(super) fn detach(proxy: &EdgeProxy, session: &mut Session, ctx: &mut RequestCtx) {
    // Boxed: the relay task keeps what it was spawned with for its whole life, and the
    // session is taken apart once the answer's header is sent.
    let mut relayed = Box::new(Session::new_h1(closed_stream()));
    std::mem::swap(relayed.as_downstream_mut(), session.as_downstream_mut());
    session.set_keepalive(None);
    let mut left_behind = RequestCtx::new(ctx.snapshot.clone());
    left_behind.kind = RequestKind::Detached;
    let ctx = std::mem::replace(ctx, left_behind);
    tokio::spawn(relay(proxy.clone(), relayed, ctx));
}

/// The relay of one stream, from its upstream connection to the log line, and then the
/// connection's next requests.
///
/// A plain `fn` returning an `async move` block: the block uses its captures in place,
/// where an `async fn` would also copy its arguments into locals, and the task would hold
/// them twice (rust-lang/rust#62958).
#[allow(clippy::manual_async_fn)]
fn relay(
    proxy: EdgeProxy,
    mut session: Box<Session>,
    mut ctx: RequestCtx,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        // Boxed: the task does not carry the room of connecting and of the exchange's
        // futures while the body runs.
        let opened = match Box::pin(open(&proxy, &mut session, &mut ctx)).await {
            Ok(opened) => opened,
            Err(e) => {
                let failed = proxy.fail_to_proxy(&mut session, &e, &mut ctx).await;
                proxy.logging(&mut session, Some(&e), &mut ctx).await;
                drop(ctx); // the request is over: the drain no longer waits for it
                if failed.can_reuse_downstream {
                    Box::pin(serve_session(&proxy, session)).await;
                }
                return;
            }
        };
        if opened.outgoing == Outgoing::Empty {
            // The client has the whole answer: the session ends as in Pingora's pipeline.
            release_upstream(&proxy, opened.upstream, opened.reuse_key, opened.keepalive);
            proxy.logging(&mut session, None, &mut ctx).await;
            drop(ctx);
            Box::pin(serve_session(&proxy, session)).await;
            return;
        }
        // What the log line needs, before the session is taken apart.
        let request = telemetry::reported_request(session.req_header());
        let client_ip = ctx
            .telemetry
            .client()
            .or_else(|| crate::client::client_ip(&session));
        let status = opened.status;
        let (end, sent, next) = match Box::pin(take_apart(session, opened.outgoing)).await {
            Ok((client, settings)) => {
                let (end, sent, client) = relay_body(&proxy, opened, client, &mut ctx).await;
                let finished = matches!(end, End::Finished);
                let next = settings
                    .filter(|_| finished)
                    .map(|settings| ReusedHttpStream::new(client, Some(settings)));
                (end, sent, next)
            }
            Err(e) => (End::ClientLeft(e), 0, None),
        };
        let stream_end = match &end {
            End::Finished => StreamEnd::Complete,
            End::Idle => {
                tracing::debug!(
                    route = ctx.route_label(),
                    "SSE stream idle past the route timeout: cut"
                );
                StreamEnd::IdleTimeout
            }
            End::Shutdown => StreamEnd::Shutdown,
            End::ClientLeft(e) => {
                super::log_failure(&ctx, e);
                StreamEnd::ClientClosed
            }
            End::UpstreamFailed(e) => {
                super::log_failure(&ctx, e);
                telemetry::upstream_failed(&mut ctx.telemetry);
                StreamEnd::UpstreamError
            }
        };
        if let Some(stream) = ctx.telemetry.stream() {
            stream.ended(stream_end);
        }
        let exchange = Exchange::Relayed {
            request: &request,
            client: client_ip,
            body_bytes: sent,
        };
        let (view, telemetry) = ctx.telemetry_parts();
        telemetry::request_finished(&exchange, &view, telemetry, status);
        drop(ctx);
        if let Some(next) = next {
            Box::pin(serve_next(&proxy, next)).await;
        }
    }
}

/// Relays the body to the bare `client` connection; returns how it ended, the body bytes
/// sent and the connection.
async fn relay_body(
    proxy: &EdgeProxy,
    opened: Opened,
    client: Stream,
    ctx: &mut RequestCtx,
) -> (End, u64, Stream) {
    let stream = ctx.telemetry.take_stream();
    // A heartbeat goes into chunks (or a body that ends with the connection), never into
    // a declared length.
    let heartbeat = ctx
        .proxy_route()
        .and_then(|r| r.sse_heartbeat)
        .filter(|_| stream.as_ref().is_some_and(|s| s.is_event_stream()))
        .filter(|_| matches!(opened.outgoing, Outgoing::Chunked | Outgoing::UntilClose));
    let mut pump = Pump {
        client,
        upstream: opened.upstream,
        decoder: BodyDecoder::new(opened.incoming),
        outgoing: opened.outgoing,
        idle: opened.idle,
        sent: 0,
        stream,
        heartbeat,
    };
    let end = pump.run(opened.preread).await;
    ctx.telemetry.put_stream(pump.stream.take());
    if matches!(end, End::Finished) {
        let keepalive = opened.keepalive && pump.decoder.reusable();
        release_upstream(proxy, pump.upstream, opened.reuse_key, keepalive);
    }
    (end, pump.sent, pump.client)
}

/// Puts an upstream connection in the relay's pool when it can carry another request;
/// otherwise it closes.
fn release_upstream(proxy: &EdgeProxy, upstream: Stream, key: u64, keepalive: bool) {
    if keepalive {
        let pool = &proxy.shared.relay_connector;
        pool.release_stream(upstream, key, Some(UPSTREAM_IDLE_TIMEOUT));
    }
}

/// A stream whose answer header the client has: what the body's relay starts from.
struct Opened {
    upstream: Stream,
    /// The upstream pool's key for the connection.
    reuse_key: u64,
    /// Whether the upstream keeps the connection after the answer.
    keepalive: bool,
    incoming: framing::Incoming,
    outgoing: Outgoing,
    /// Body bytes read with the answer's header.
    preread: Bytes,
    /// The status the client was sent.
    status: u16,
    /// The route's `timeout`, between reads.
    idle: Option<std::time::Duration>,
}

/// Connects, forwards the request (body streamed) and sends the client the answer's
/// header (and, for an answer without a body, its end).
async fn open(proxy: &EdgeProxy, session: &mut Session, ctx: &mut RequestCtx) -> Result<Opened> {
    let (mut upstream, peer, reused) = connect(proxy, session, ctx).await?;
    let (read_timeout, write_timeout) = (peer.options.read_timeout, peer.options.write_timeout);

    let has_body = !session.is_body_empty();
    let mut request = upstream_request(session.req_header(), has_body);
    proxy
        .upstream_request_filter(session, &mut request, ctx)
        .await?;
    // On a reused connection, what is sent is held (bounded) to be sent again on a new
    // one, should the upstream have closed the connection under the request.
    let mut sent = Sent::new(reused);
    let header = exchange::header_wire(&request)?;
    let expect_continue = has_body && is_expect_continue_req(session.req_header());
    let framing = exchange::request_framing(&request);
    let (mut header_sent, mut body_done) = (false, !has_body);
    let answer = loop {
        let attempt = async {
            if !header_sent {
                sent.write(&mut upstream, &header, write_timeout).await?;
                header_sent = true;
                if expect_continue {
                    // As nginx does, the proxy itself asks for the body it is about to
                    // stream (the upstream is not asked: `upstream_request` leaves `Expect`
                    // out).
                    session
                        .as_downstream_mut()
                        .write_continue_response()
                        .await
                        .map_err(|e| e.into_down())?;
                }
            }
            if !body_done {
                let sending = (&mut sent, write_timeout);
                forward_request_body(proxy, session, ctx, &mut upstream, framing, sending).await?;
                body_done = true;
            }
            // An answer can take long to start (a model's first token): a client leaving
            // meanwhile ends the exchange as it does mid-stream.
            let answer = exchange::read_answer(&mut upstream, &request, read_timeout);
            unless_client_leaves(session, answer).await
        };
        match attempt.await {
            Ok(answer) => break answer,
            Err(e) if sent.can_resend() && super::stale::closed_under_request(&e) => {
                tracing::debug!(route = ctx.route_label(), "stale pooled connection: {e}");
                upstream = proxy
                    .shared
                    .relay_connector
                    .new_stream(&*peer)
                    .await
                    .map_err(|e| e.into_up())?;
                sent.resend(&mut upstream, write_timeout).await?;
            }
            Err(e) => return Err(e),
        }
    };
    drop(sent);
    let UpstreamAnswer {
        header,
        incoming,
        preread,
        keepalive,
    } = answer;
    let mut response = Box::new(header);
    proxy
        .upstream_response_filter(session, &mut response, ctx)
        .await?;
    proxy.response_filter(session, &mut response, ctx).await?;
    let client_version = session.req_header().version;
    let mut outgoing = Outgoing::choose(incoming, client_version, &mut response);
    if incoming == Incoming::Length(0) {
        outgoing = Outgoing::Empty; // complete with its header
    }
    if outgoing == Outgoing::UntilClose {
        session.set_keepalive(None);
    }
    let status = response.status.as_u16();
    let no_body = outgoing == Outgoing::Empty;
    session
        .write_response_header(response, no_body)
        .await
        .map_err(|e| e.into_down())?;
    if no_body {
        session
            .write_response_body(None, true)
            .await
            .map_err(|e| e.into_down())?;
    }
    Ok(Opened {
        upstream,
        reuse_key: peer.reuse_hash(),
        keepalive: keepalive && (!no_body || preread.is_empty()),
        incoming,
        outgoing,
        preread,
        status,
        idle: read_timeout,
    })
}

/// Takes the client's session apart into its bare connection, and how the connection goes
/// on after the stream, if it can.
///
/// The session comes boxed and is dropped here: moving it out of its box would leave the
/// box's memory (2 KiB) with the task until the stream ends.
async fn take_apart(
    mut session: Box<Session>,
    outgoing: Outgoing,
) -> Result<(Stream, Option<HttpPersistentSettings>)> {
    let settings = HttpPersistentSettings::for_session(session.as_downstream());
    let downstream = take_downstream(&mut session);
    let ServerSession::H1(mut h1) = downstream else {
        let e = Error::explain(
            ErrorType::InternalError,
            "relayed a session that is not HTTP/1",
        );
        return Err(e);
    };
    let (mut client, settings) = if outgoing != Outgoing::UntilClose && h1.will_keepalive() {
        // Pingora hands over the bytes a client sent past its request only with pipelining
        // on; without them the connection closes after this answer, as in Pingora's own
        // pipeline, rather than at once with the session.
        h1.set_pipelining_enabled(true);
        let Some(reusable) = h1.reuse().await.map_err(|e| e.into_down())? else {
            let e = Error::explain(
                ErrorType::ConnectionClosed,
                "client connection not reusable",
            );
            return Err(e.into_down());
        };
        let (stream, pipelined) = reusable.into_parts();
        (stream, pipelined.is_none().then_some(settings))
    } else {
        (h1.into_inner(), None)
    };
    // The answer's header may still be in the connection's write buffer.
    client
        .flush()
        .await
        .or_err(ErrorType::WriteError, "sending the answer header")
        .map_err(|e| e.into_down())?;
    Ok((client, settings))
}

/// Hands a session's connection back to Pingora's pipeline when it can carry the client's
/// next request.
async fn serve_session(proxy: &EdgeProxy, mut session: Box<Session>) {
    let downstream = take_downstream(&mut session);
    let settings = HttpPersistentSettings::for_session(&downstream);
    // `None` unless the client keeps the connection and the exchange ended cleanly.
    if let Ok(Some(stream)) = downstream.finish().await {
        let next = ReusedHttpStream::from_reusable_stream(stream, settings);
        serve_next(proxy, next).await;
    }
}

/// Serves a kept-alive connection's next requests in Pingora's pipeline, as Pingora's own
/// keep-alive loop does (not once the proxy stops accepting).
async fn serve_next(proxy: &EdgeProxy, next: ReusedHttpStream) {
    let shutdown = &proxy.shared.shutdown;
    let pipeline = proxy.shared.pipeline.get().and_then(Weak::upgrade);
    let Some(pipeline) = pipeline.filter(|_| !*shutdown.borrow()) else {
        return;
    };
    let mut next = Some(next);
    while let Some(reused) = next {
        next = super::guard::serve_next(&pipeline, reused, shutdown).await;
    }
}

/// Bounds one read or write of a relayed stream by `limit`, if any. The error says what
/// failed or timed out; which side it was is the caller's to tell (`into_up`, `into_down`).
async fn within<T>(
    limit: Option<std::time::Duration>,
    kind: ErrorType,
    what: &'static str,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T> {
    let result = match limit {
        Some(limit) => match tokio::time::timeout(limit, io).await {
            Ok(result) => result,
            Err(_) => {
                let timed_out = match kind {
                    ErrorType::WriteError => ErrorType::WriteTimedout,
                    _ => ErrorType::ReadTimedout,
                };
                return Err(Error::explain(timed_out, what));
            }
        },
        None => io.await,
    };
    result.or_err(kind, what)
}

/// Writes `bytes` to `stream` and flushes them, within `limit`.
async fn write_flushed(
    stream: &mut Stream,
    bytes: &[u8],
    limit: Option<std::time::Duration>,
    what: &'static str,
) -> Result<()> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    within(limit, ErrorType::WriteError, what, write).await
}

/// The client's session, out of `session`, which keeps a closed placeholder.
fn take_downstream(session: &mut Session) -> ServerSession {
    std::mem::replace(
        session.as_downstream_mut(),
        ServerSession::new_http1(closed_stream()),
    )
}

/// A connection that is already closed: what stands in for a session moved elsewhere.
fn closed_stream() -> Stream {
    Box::new(Cursor::new(Vec::new()))
}

/// An upstream connection (and whether it was reused from the pool), trying the next
/// address as Pingora does when `fail_to_connect` marks the error for retry.
async fn connect(
    proxy: &EdgeProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(Stream, Box<HttpPeer>, bool)> {
    loop {
        let peer = proxy.upstream_peer(session, ctx).await?;
        match proxy.shared.relay_connector.get_stream(&*peer).await {
            Ok((stream, reused)) => return Ok((stream, peer, reused)),
            Err(e) => {
                let e = proxy.fail_to_connect(session, &peer, ctx, e.into_up());
                if !e.retry() {
                    return Err(e);
                }
            }
        }
    }
}

/// The most of a request (header and body) held to be sent again when a reused upstream
/// connection turns out closed: Pingora's retry buffer holds as much.
const RESEND_LIMIT: usize = 64 * 1024;

/// What has been written of the request upstream; held, up to [`RESEND_LIMIT`], when the
/// connection was reused, so that it can be sent again on a new one.
struct Sent {
    held: Option<Vec<u8>>,
}

impl Sent {
    fn new(reused: bool) -> Sent {
        Sent {
            held: reused.then(Vec::new),
        }
    }

    /// Writes (and flushes) `wire` upstream, holding it while it fits.
    async fn write(
        &mut self,
        upstream: &mut Stream,
        wire: &[u8],
        timeout: Option<std::time::Duration>,
    ) -> Result<()> {
        if let Some(held) = &mut self.held {
            if held.len() + wire.len() <= RESEND_LIMIT {
                held.extend_from_slice(wire);
            } else {
                self.held = None; // too big to send again: a failure now is final
            }
        }
        write_flushed(upstream, wire, timeout, "writing the request")
            .await
            .map_err(|e| e.into_up())
    }

    /// Whether everything sent so far is held, so the request can go again.
    fn can_resend(&self) -> bool {
        self.held.is_some()
    }

    /// Sends what is held on a new connection; the next failure is final.
    async fn resend(
        &mut self,
        upstream: &mut Stream,
        timeout: Option<std::time::Duration>,
    ) -> Result<()> {
        let held = self.held.take().unwrap_or_default();
        write_flushed(upstream, &held, timeout, "writing the request again")
            .await
            .map_err(|e| e.into_up())
    }
}

/// Streams the client's request body to the upstream, through `request_body_filter`.
async fn forward_request_body(
    proxy: &EdgeProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
    upstream: &mut Stream,
    framing: Outgoing,
    (sent, timeout): (&mut Sent, Option<std::time::Duration>),
) -> Result<()> {
    let mut wire = Vec::new();
    loop {
        let mut chunk = session
            .as_downstream_mut()
            .read_request_body()
            .await
            .map_err(|e| e.into_down())?;
        let end = chunk.is_none() || session.as_downstream_mut().is_body_done();
        proxy
            .request_body_filter(session, &mut chunk, end, ctx)
            .await?;
        wire.clear();
        if let Some(data) = &chunk {
            framing.encode(data, &mut wire);
        }
        if end {
            wire.extend_from_slice(framing.end());
        }
        sent.write(upstream, &wire, timeout).await?;
        if end {
            return Ok(());
        }
    }
}

/// The client's request as the upstream gets it before the route's filters: HTTP/1.1,
/// without the hop-by-hop headers of the client's connection (RFC 9110 §7.6.1) nor an
/// `Expect` the proxy answers itself, and with a body framed for this connection.
fn upstream_request(client: &RequestHeader, has_body: bool) -> RequestHeader {
    let mut request = client.clone();
    request.set_version(Version::HTTP_11);
    let nominated: Vec<HeaderName> = fields::list_items(&client.headers, header::CONNECTION)
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect();
    for name in nominated.iter().chain(&HOP_BY_HOP) {
        request.remove_header(name);
    }
    request.remove_header(&header::EXPECT);
    if has_body && client.headers.contains_key(header::TRANSFER_ENCODING) {
        // The client's chunks are decoded on the way in; the upstream gets chunks of ours,
        // and a Content-Length beside Transfer-Encoding says nothing (RFC 9112 §6.3).
        request.remove_header(&header::CONTENT_LENGTH);
    }
    if has_body && !request.headers.contains_key(header::CONTENT_LENGTH) {
        // A header that is already valid cannot fail to insert.
        let _ = request.insert_header(header::TRANSFER_ENCODING, "chunked");
    }
    request
}

/// The headers of one connection, never forwarded: the same list Pingora strips on its
/// own pipeline.
static HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// Waits for `upstream_io` unless the client leaves first. The request is read to its end
/// by then, so anything from the client (its close, or bytes past its request) is its
/// leaving; the upstream connection is then dropped, closed at once.
async fn unless_client_leaves<T>(
    session: &mut Session,
    upstream_io: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        result = upstream_io => result.map_err(|e| e.into_up()),
        gone = session.as_downstream_mut().read_body_or_idle(true) => Err(gone
            .err()
            .unwrap_or_else(|| Error::explain(ErrorType::ConnectionClosed, "client left the stream"))
            .into_down()),
    }
}
