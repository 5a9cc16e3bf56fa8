//! A pooled upstream connection the upstream closed just as it was reused (SPEC §3
//! "Pooled upstream connections"): uvicorn, behind core-workflow and agent-runtime-api,
//! closes idle connections after 5 s, and a request sent on one that is already closing
//! gets no answer. Such a request is sent again on a new connection when that is safe:
//! no byte of the answer came, and the request has no body or one the proxy still holds.
//!
//! Pingora 0.9 retries only idempotent requests there by default (`error_while_proxy`);
//! a POST to a model is as safe to re-send, since the upstream never took it.

use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{ErrorSource, ErrorType};

use super::RequestCtx;

/// Whether `e`, on the upstream side of an exchange whose answer has not begun, is what a
/// connection closed under the request looks like.
pub(super) fn closed_under_request(e: &Error) -> bool {
    e.esource() == &ErrorSource::Upstream
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        )
}

/// `error_while_proxy` of Pingora's pipeline: retried on a new connection when the
/// connection was reused, nothing of the answer came and the body (if any) is still held
/// in Pingora's retry buffer.
pub(super) fn pipeline_retry(
    peer: &HttpPeer,
    session: &mut Session,
    e: Box<Error>,
    ctx: &RequestCtx,
    client_reused: bool,
) -> Box<Error> {
    let mut e = e.more_context(format!("Peer: {peer}"));
    let safe = client_reused
        && ctx.telemetry.upstream_status().is_none()
        && !session.as_ref().retry_buffer_truncated()
        && closed_under_request(&e);
    e.set_retry(safe);
    e
}
