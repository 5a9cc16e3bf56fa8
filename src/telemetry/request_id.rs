//! Request IDs (SPEC §3): one id per request that joins the access log, the span, the
//! upstream's own log and what the client saw.
//!
//! A client's `X-Request-ID` of 1–128 characters from `A-Z a-z 0-9 . _ : -` is kept (a
//! service in front of the proxy, or the browser app, already named the request);
//! anything else is replaced. A new id is 32 lowercase hex digits: the trace id when the
//! request has a span, so that the id alone finds the trace, and 16 random bytes
//! otherwise.
//!
//! Cost: the id is decided once per request, in `request_filter`. Keeping the client's
//! value clones a header value that shares the request's buffer (a reference count);
//! a new one is 32 bytes formatted on the stack and one small allocation for the header
//! value that the upstream request and the answer then share. The random bytes come from
//! the per-thread generator the span ids use.

use http::header::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::text;

pub(crate) static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The name as it is written on the wire (Pingora keeps a `&'static str`'s case).
const WIRE_NAME: &str = "X-Request-ID";
/// The longest client value kept.
const MAX_LEN: usize = 128;

/// Whether a client's `X-Request-ID` is kept as it is.
pub(crate) fn is_valid(value: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&value.len())
        && value
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Decides the request's id, once: the client's valid one, else the trace id of its
/// span, else a random one. Call after the span is started.
pub(crate) fn assign(req: &RequestHeader, tel: &mut super::RequestTelemetry) {
    if tel.request_id.is_some() {
        return;
    }
    let client = req.headers.get(&X_REQUEST_ID);
    let id = match client.filter(|v| is_valid(v.as_bytes())) {
        Some(kept) => kept.clone(),
        None => {
            let bytes = match tel.server_span() {
                Some(span) => span.context().trace_id,
                None => super::traces::random_id(),
            };
            generated(&bytes)
        }
    };
    tel.request_id = Some(id);
}

/// 32 lowercase hex digits of `bytes`.
fn generated(bytes: &[u8; 16]) -> HeaderValue {
    let mut hex = [0; 32];
    text::put_hex(&mut hex, bytes);
    // hex digits are always a valid header value
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// The request's id, once assigned.
pub(crate) fn of(tel: &super::RequestTelemetry) -> Option<&HeaderValue> {
    tel.request_id.as_ref()
}

/// `X-Request-ID` on a request the proxy sends (upstream), replacing the client's.
pub(crate) fn set_on_request(
    tel: &super::RequestTelemetry,
    request: &mut RequestHeader,
) -> pingora::Result<()> {
    if let Some(id) = of(tel) {
        request.insert_header(WIRE_NAME, id.clone())?;
    }
    Ok(())
}

/// `X-Request-ID` on an answer to the client.
pub(crate) fn set_on_response(
    tel: &super::RequestTelemetry,
    response: &mut pingora::http::ResponseHeader,
) -> pingora::Result<()> {
    if let Some(id) = of(tel) {
        response.insert_header(WIRE_NAME, id.clone())?;
    }
    Ok(())
}

/// The header for a sub-request (forward auth).
pub(crate) fn header(tel: &super::RequestTelemetry) -> Option<(HeaderName, HeaderValue)> {
    of(tel).map(|id| (X_REQUEST_ID.clone(), id.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_kept_only_when_valid() {
        assert!(is_valid(b"abc-123_x.y:z"));
        assert!(is_valid(&[b'a'; 128]));
        assert!(!is_valid(&[b'a'; 129]));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"has space"));
        assert!(!is_valid(b"semi;colon"));
        assert!(!is_valid("ünï".as_bytes()));
    }

    #[test]
    fn a_new_id_is_32_lowercase_hex_digits() {
        let id = generated(&0x0af7651916cd43dd8448eb211c80319c_u128.to_be_bytes());
        assert_eq!(id, "0af7651916cd43dd8448eb211c80319c");
        let random = generated(&crate::telemetry::traces::random_id());
        assert_eq!(random.len(), 32);
        assert!(random
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)));
    }
}
