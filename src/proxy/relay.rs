//! SSE streams relayed outside Pingora's per-connection pipeline, to cut what an idle
//! stream holds.
//!
//! Pingora runs each downstream connection as one future: `HttpProxy::process_new_http`,
//! 14,336 bytes for this proxy (`cargo +nightly rustc --release --lib --
//! -Zprint-type-sizes`), inside a 3.8 KB connection future, plus the two task channels of
//! its HTTP/1 pipeline. All of it lives as long as the response does: for an SSE stream
//! that waits seconds between events for up to 30 minutes, that is most of its memory.
//!
//! So once `request_filter` has sent a request to an `sse` route (forward auth, if any,
//! has let it through), the downstream session is taken out of Pingora's pipeline, which
//! then ends as for a request the proxy answered itself, and a task of its own relays the
//! stream through the same phases Pingora would call: `upstream_peer` and
//! `fail_to_connect`, the request and response filters, `fail_to_proxy` and `logging`.
//! When the stream has ended cleanly, the connection goes back to Pingora's pipeline for
//! the client's next request, as in Pingora's own keep-alive loop.
//!
//! Only HTTP/1 requests without `Upgrade` take this path; the rest stay in Pingora's.

use std::io::Cursor;
use std::sync::Weak;

use http::{header, HeaderName, Version};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::client::HttpSession as UpstreamSession;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::{ProxyHttp, Session};
use pingora::ErrorType;

use super::{EdgeProxy, RequestCtx, RequestKind, UPSTREAM_IDLE_TIMEOUT};

/// Whether the request, just past `request_filter`, is relayed off Pingora's pipeline.
pub fn detachable(session: &Session, ctx: &RequestCtx) -> bool {
    let downstream = session.as_downstream();
    ctx.proxy_route().is_some_and(|r| r.sse)
        && matches!(downstream, ServerSession::H1(_))
        && !downstream
            .req_header()
            .headers
            .contains_key(header::UPGRADE)
}

/// Takes the downstream session and the request's context out of Pingora's pipeline and
/// spawns their relay. What is left behind is a closed placeholder, so that Pingora's
/// pipeline ends at once without answering, logging or reusing anything.
pub fn detach(proxy: &EdgeProxy, session: &mut Session, ctx: &mut RequestCtx) {
    let mut relayed = Session::new_h1(closed_stream());
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
/// the session and the context twice (rust-lang/rust#62958).
#[allow(clippy::manual_async_fn)]
fn relay(
    proxy: EdgeProxy,
    mut session: Session,
    mut ctx: RequestCtx,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let reusable = match stream(&proxy, &mut session, &mut ctx).await {
            Ok(()) => {
                proxy.logging(&mut session, None, &mut ctx).await;
                true
            }
            Err(e) => {
                let failed = proxy.fail_to_proxy(&mut session, &e, &mut ctx).await;
                proxy.logging(&mut session, Some(&e), &mut ctx).await;
                failed.can_reuse_downstream
            }
        };
        drop(ctx); // the request is over: the drain no longer waits for it
        if reusable {
            // Boxed: the relay task does not carry its room (~2 KB) while the stream runs.
            Box::pin(serve_next(&proxy, session)).await;
        }
    }
}

/// Hands a kept-alive connection back to Pingora's pipeline for the client's next
/// requests, as Pingora's own keep-alive loop does (not once the proxy stops accepting).
async fn serve_next(proxy: &EdgeProxy, mut session: Session) {
    let shutdown = &proxy.shared.shutdown;
    let pipeline = proxy.shared.pipeline.get().and_then(Weak::upgrade);
    let Some(pipeline) = pipeline.filter(|_| !*shutdown.borrow()) else {
        return;
    };
    let downstream = std::mem::replace(
        session.as_downstream_mut(),
        ServerSession::new_http1(closed_stream()),
    );
    let settings = HttpPersistentSettings::for_session(&downstream);
    // `None` unless the client keeps the connection and the exchange ended cleanly.
    let Ok(Some(stream)) = downstream.finish().await else {
        return;
    };
    let mut next = Some(ReusedHttpStream::from_reusable_stream(stream, settings));
    while let Some((stream, settings)) = next.map(ReusedHttpStream::consume) {
        let mut session = ServerSession::new_http1(stream);
        if let Some(settings) = settings {
            settings.apply_to_session(&mut session);
        }
        next = pipeline.process_new_http(session, shutdown).await;
    }
}

/// A connection that is already closed: what stands in for a session moved elsewhere.
fn closed_stream() -> Stream {
    Box::new(Cursor::new(Vec::new()))
}

/// Connects, forwards the request (body streamed) and relays the answer chunk by chunk,
/// each written and flushed as it arrives, until the upstream ends it, the route's
/// `timeout` passes without a chunk, or the client leaves.
async fn stream(proxy: &EdgeProxy, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
    // Connecting and pooling are large futures (9 and 3 KB): boxed, so that the task does not
    // carry their room for the whole stream.
    let (mut upstream, peer) = Box::pin(connect(proxy, session, ctx)).await?;

    let has_body = !session.is_body_empty();
    let mut request = upstream_request(session.req_header(), has_body);
    proxy
        .upstream_request_filter(session, &mut request, ctx)
        .await?;
    upstream
        .write_request_header(Box::new(request))
        .await
        .map_err(|e| e.into_up())?;
    if has_body {
        forward_request_body(proxy, session, ctx, &mut upstream).await?;
    }
    upstream
        .finish_request_body()
        .await
        .map_err(|e| e.into_up())?;

    // An answer can take long to start (a model's first token): a client leaving meanwhile
    // ends the exchange as it does mid-stream. Interim answers (1xx) are not relayed, as in
    // nginx.
    loop {
        unless_client_leaves(session, upstream.read_response_header()).await?;
        if !upstream
            .response_header()
            .is_some_and(|h| h.status.is_informational())
        {
            break;
        }
    }
    let mut response: Box<ResponseHeader> = match upstream.response_header() {
        Some(header) => Box::new(header.clone()),
        None => {
            let e = Error::explain(ErrorType::InvalidHTTPHeader, "no upstream response header");
            return Err(e.into_up());
        }
    };
    proxy
        .upstream_response_filter(session, &mut response, ctx)
        .await?;
    proxy.response_filter(session, &mut response, ctx).await?;
    let no_body = upstream.response_done();
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

    let mut end = no_body;
    while !end {
        let mut chunk = unless_client_leaves(session, upstream.read_response_body()).await?;
        end = chunk.is_none() || upstream.response_done();
        proxy.response_body_filter(session, &mut chunk, end, ctx)?;
        session
            .write_response_body(chunk, end)
            .await
            .map_err(|e| e.into_down())?;
    }
    if upstream.response_done() {
        let pool = &proxy.shared.relay_connector;
        Box::pin(pool.release_http_session(upstream, &*peer, Some(UPSTREAM_IDLE_TIMEOUT))).await;
    }
    Ok(())
}

/// An upstream connection, trying the next address as Pingora does when `fail_to_connect`
/// marks the error for retry.
async fn connect(
    proxy: &EdgeProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(UpstreamSession, Box<HttpPeer>)> {
    loop {
        let peer = proxy.upstream_peer(session, ctx).await?;
        match proxy.shared.relay_connector.get_http_session(&*peer).await {
            Ok((mut upstream, _reused)) => {
                upstream.set_read_timeout(peer.options.read_timeout);
                upstream.set_write_timeout(peer.options.write_timeout);
                return Ok((upstream, peer));
            }
            Err(e) => {
                let e = proxy.fail_to_connect(session, &peer, ctx, e.into_up());
                if !e.retry() {
                    return Err(e);
                }
            }
        }
    }
}

/// Streams the client's request body to the upstream, through `request_body_filter`.
async fn forward_request_body(
    proxy: &EdgeProxy,
    session: &mut Session,
    ctx: &mut RequestCtx,
    upstream: &mut UpstreamSession,
) -> Result<()> {
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
        if let Some(data) = chunk.filter(|d| !d.is_empty()) {
            upstream
                .write_request_body(data, end)
                .await
                .map_err(|e| e.into_up())?;
        }
        if end {
            return Ok(());
        }
    }
}

/// The client's request as the upstream gets it before the route's filters: HTTP/1.1,
/// without the hop-by-hop headers of the client's connection (RFC 9110 §7.6.1), and with a
/// body framed for this connection.
fn upstream_request(client: &RequestHeader, has_body: bool) -> RequestHeader {
    let mut request = client.clone();
    request.set_version(Version::HTTP_11);
    let nominated: Vec<HeaderName> = client
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in nominated.iter().chain(&HOP_BY_HOP) {
        request.remove_header(name);
    }
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
