//! Answers the proxy writes itself: health, `return` routes, and errors.
//!
//! Every one of them carries the global `[response_headers]` (and the route's
//! `add_response_headers` when a route was matched), as nginx's `add_header ... always`.

use bytes::Bytes;
use http::{header, Method, StatusCode};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;
use pingora::{ErrorSource, ErrorType};

use super::context::RequestCtx;
use crate::auth::Denial;

/// Writes a complete plain-text answer. `body = None` sends the status's reason phrase.
pub async fn local_response(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: StatusCode,
    body: Option<&str>,
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
pub async fn relay_denial(
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

/// The global headers, then the matched route's own ones, and the request's
/// `X-Request-ID`.
pub fn add_configured_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    crate::telemetry::request_id::set_on_response(&ctx.telemetry, resp)?;
    for (name, value) in &ctx.snapshot.config.response_headers {
        resp.insert_header(name.clone(), value.clone())?;
    }
    if let Some(route) = ctx.route() {
        for (name, value) in &route.add_response_headers {
            resp.insert_header(name.clone(), value.clone())?;
        }
    }
    Ok(())
}

/// The status an error becomes: 502 unreachable, 504 timeout, 4xx for client faults,
/// 0 when the client is gone and nothing can be written.
pub fn error_status(e: &Error) -> u16 {
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
