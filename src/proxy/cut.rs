//! Cutting an answer the client has started to get (SPEC §3 "How a stream ends"): only
//! the upstream's own clean end may look like one, so a stream the proxy ends itself (idle
//! past the route timeout, an upstream failing mid-body, the grace period over) must reach
//! the client as an interruption — `fetch-event-source` and `EventSource` then report an
//! error instead of showing a truncated answer as complete.

use pingora::protocols::http::ServerSession;
use pingora::proxy::Session;

/// Ends the client's answer without its end: over HTTP/2 the stream is reset
/// (`RST_STREAM`); over HTTP/1 nothing is written, and the connection, which cannot be
/// reused (`fail_to_proxy` says so), closes without the terminating chunk.
pub(super) fn cut(session: &mut Session) {
    if let ServerSession::H2(h2) = session.as_downstream_mut() {
        h2.shutdown();
    }
}
