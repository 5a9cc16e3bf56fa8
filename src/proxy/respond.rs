//! Answers the proxy writes itself: health, `return` routes, and errors.
//!
//! Every one of them carries the global `[response_headers]` (and the route's
//! `add_response_headers` when a route was matched), as nginx's `add_header ... always`.

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{ErrorSource, ErrorType};

use super::context::RequestCtx;
use super::X_ACCEL_BUFFERING;
use crate::auth::Denial;
use crate::config::RouteAction;
use crate::routing::{encode_path, Matcher};

/// Writes a complete plain-text answer. `body = None` sends the status's reason phrase.
pub(super) async fn local_response(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: StatusCode,
    body: Option<&str>,
) -> Result<()> {
    local_answer(session, ctx, status, body, None).await
}

/// [`local_response`] with an optional `Location` (redirecting `return` routes, the 301 to
/// a slashed path).
pub(super) async fn local_answer(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: StatusCode,
    body: Option<&str>,
    location: Option<Cow<'_, HeaderValue>>,
) -> Result<()> {
    let body = match body {
        Some(text) => Bytes::copy_from_slice(text.as_bytes()),
        None => Bytes::from(format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )),
    };
    let mut resp = ResponseHeader::build(status, Some(4))?;
    resp.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    resp.insert_header(header::CONTENT_LENGTH, body.len())?;
    if let Some(location) = location {
        resp.insert_header(header::LOCATION, location.into_owned())?;
    }
    add_configured_headers(&mut resp, ctx)?;
    ctx.local_status = Some(status.as_u16());
    let head_only = session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Relays a 401/403 of the auth service: its status, `WWW-Authenticate`, type and body.
pub(super) async fn relay_denial(
    session: &mut Session,
    ctx: &mut RequestCtx,
    denial: Denial,
) -> Result<()> {
    let status = StatusCode::from_u16(denial.status).unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = ResponseHeader::build(status, Some(4))?;
    for (name, value) in denial.headers {
        resp.insert_header(name, value)?;
    }
    resp.insert_header(header::CONTENT_LENGTH, denial.body.len())?;
    add_configured_headers(&mut resp, ctx)?;
    ctx.local_status = Some(status.as_u16());
    let head_only = session.req_header().method == Method::HEAD || denial.body.is_empty();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(denial.body), true).await?;
    }
    Ok(())
}

/// The global headers (every answer), then the matched route's own ones and those of an
/// `sse` route (the statuses of nginx's `add_header` without `always`), and the request's
/// `X-Request-ID`.
pub(crate) fn add_configured_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    crate::telemetry::request_id::set_on_response(&ctx.telemetry, resp)?;
    for (name, value) in &ctx.snapshot.config.response_headers {
        resp.insert_header(name.clone(), value.clone())?;
    }
    let Some(route) = ctx.route().filter(|_| adds_headers(resp.status)) else {
        return Ok(());
    };
    if matches!(&route.action, RouteAction::Proxy(p) if p.sse) {
        resp.insert_header(header::CACHE_CONTROL, "no-cache")?;
        resp.insert_header(X_ACCEL_BUFFERING.clone(), "no")?;
    }
    for (name, value) in &route.add_response_headers {
        resp.insert_header(name.clone(), value.clone())?;
    }
    Ok(())
}

/// Whether nginx's `add_header` without `always` (and `expires`) touches an answer with
/// this status: 200, 201, 204, 206, 301, 302, 303, 304, 307, 308.
pub(super) fn adds_headers(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    )
}

/// `Location` of the 301 to route `index`'s slashed path: the route's path, query kept.
pub(super) fn slash_location(
    ctx: &RequestCtx,
    index: usize,
    req: &RequestHeader,
) -> Option<HeaderValue> {
    let (Matcher::Prefix(path) | Matcher::PriorityPrefix(path)) =
        &ctx.snapshot.config.routes.get(index)?.matcher
    else {
        return None;
    };
    let path = encode_path(path);
    let value = match req.uri.query() {
        Some(query) => HeaderValue::from_str(&format!("{path}?{query}")),
        None => HeaderValue::from_str(&path),
    };
    value.ok()
}

/// The status an error becomes: 502 unreachable, 504 timeout, 4xx for client faults,
/// 0 when the client is gone and nothing can be written.
pub(super) fn error_status(e: &Error) -> u16 {
    use ErrorType::*;
    match (e.etype(), e.esource()) {
        (HTTPStatus(code), _) => *code,
        (ConnectTimedout | ReadTimedout | WriteTimedout, ErrorSource::Upstream) => 504,
        (ConnectTimedout, _) => 504,
        (_, ErrorSource::Upstream) => 502,
        (ReadTimedout, ErrorSource::Downstream) => 408,
        (ReadError | WriteError | ConnectionClosed | WriteTimedout, ErrorSource::Downstream) => 0,
        (_, ErrorSource::Downstream) => 400,
        (ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure, _) => 502,
        _ => 500,
    }
}
