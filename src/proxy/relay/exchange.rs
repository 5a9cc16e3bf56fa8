//! The upstream half of a relayed stream, up to its body: an HTTP/1.1 exchange on a pooled
//! connection.
//!
//! Written here rather than with Pingora's client session because that session keeps its
//! buffers (4 KiB for the answer's header, a 64 KiB body buffer, a copy of the request)
//! for as long as the body runs: for an SSE stream, half an hour. Here the header is read
//! into a buffer dropped once parsed, and the body is read by [`super::pump`] with none.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::protocols::Stream;
use pingora::ErrorType;
use tokio::io::AsyncReadExt;

use super::framing::{FramingError, Incoming, Outgoing};
use super::within;

/// The most header fields an answer may have (Pingora's limit).
const MAX_HEADERS: usize = 256;
/// The largest answer header taken (nginx: `proxy_buffer_size`, 4 or 8 KiB, then 502).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// What is read first: most answer headers fit.
const FIRST_READ: usize = 4096;

/// The upstream's answer, up to its body.
pub(super) struct UpstreamAnswer {
    pub header: ResponseHeader,
    pub incoming: Incoming,
    /// Body bytes that came with the header.
    pub preread: Bytes,
    /// Whether the upstream keeps the connection for another request.
    pub keepalive: bool,
}

/// The request's header as it goes on the wire.
pub(super) fn header_wire(request: &RequestHeader) -> Result<bytes::BytesMut> {
    http_req_header_to_wire(request).ok_or_else(|| {
        Error::explain(
            ErrorType::InvalidHTTPHeader,
            "request target cannot be sent",
        )
        .into_up()
    })
}

/// How the request body goes upstream: its `Content-Length`, or chunks of ours.
pub(super) fn request_framing(request: &RequestHeader) -> Outgoing {
    if request.headers.contains_key(header::CONTENT_LENGTH) {
        Outgoing::Length
    } else {
        Outgoing::Chunked
    }
}

/// Reads the answer's header, past any interim (1xx) answers, as nginx does not relay them.
pub(super) async fn read_answer(
    upstream: &mut Stream,
    request: &RequestHeader,
    timeout: Option<Duration>,
) -> Result<UpstreamAnswer> {
    let mut buf = BytesMut::with_capacity(FIRST_READ);
    loop {
        while let Some(len) = parse(&buf)? {
            let head = buf.split_to(len).freeze();
            let header = build(&head)?;
            if header.status.is_informational() {
                if header.status == http::StatusCode::SWITCHING_PROTOCOLS {
                    let e = Error::explain(ErrorType::InvalidHTTPHeader, "101 to a plain request");
                    return Err(e.into_up());
                }
                continue;
            }
            let incoming = Incoming::of(&request.method, header.status, &header.headers)
                .map_err(framing_error)?;
            let keepalive = keeps_alive(&header);
            return Ok(UpstreamAnswer {
                header,
                incoming,
                preread: buf.freeze(),
                keepalive,
            });
        }
        if buf.len() >= MAX_HEADER_BYTES {
            let e = Error::explain(
                ErrorType::InvalidHTTPHeader,
                "upstream answer header too big",
            );
            return Err(e.into_up());
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len());
        }
        let reading = upstream.read_buf(&mut buf);
        let read = within(
            timeout,
            ErrorType::ReadError,
            "reading the answer header",
            reading,
        )
        .await
        .map_err(|e| e.into_up())?;
        if read == 0 {
            // Closed before any byte of the answer: what a stale pooled connection does
            // (`super::super::stale`); closed inside the header: a broken answer.
            let e = if buf.is_empty() {
                Error::explain(
                    ErrorType::ConnectionClosed,
                    "upstream closed before answering",
                )
            } else {
                Error::explain(ErrorType::InvalidHTTPHeader, "upstream closed mid-header")
            };
            return Err(e.into_up());
        }
    }
}

pub(super) fn framing_error(e: FramingError) -> Box<Error> {
    Error::because(ErrorType::InvalidHTTPHeader, "upstream answer", e).into_up()
}

/// The length of the complete header at the start of `buf`, if it is there yet.
fn parse(buf: &[u8]) -> Result<Option<usize>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::Response::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => {
            Err(Error::because(ErrorType::InvalidHTTPHeader, "upstream answer header", e).into_up())
        }
    }
}

/// The answer header in `head` (complete, as [`parse`] found it), its field names spelled
/// as the upstream did and its values sharing `head`'s bytes.
fn build(head: &Bytes) -> Result<ResponseHeader> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let invalid = |e| Error::because(ErrorType::InvalidHTTPHeader, "upstream answer header", e);
    parsed.parse(head).map_err(|e| invalid(e).into_up())?;
    let code = parsed.code.unwrap_or_default();
    let mut header =
        ResponseHeader::build(code, Some(parsed.headers.len())).map_err(|e| e.into_up())?;
    header.set_version(match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    });
    header
        .set_reason_phrase(parsed.reason)
        .map_err(|e| e.into_up())?;
    for field in parsed.headers.iter() {
        let name = head.slice_ref(field.name.as_bytes());
        let value = pingora::http::header_value_from_raw(head.slice_ref(field.value));
        header.append_header(name, value).map_err(|e| e.into_up())?;
    }
    Ok(header)
}

/// Whether the upstream keeps the connection after this answer (RFC 9112 §9.3).
fn keeps_alive(header: &ResponseHeader) -> bool {
    let says = |token: &str| {
        header
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    };
    match header.version {
        Version::HTTP_11 => !says("close"),
        _ => says("keep-alive"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_of(wire: &[u8]) -> Result<ResponseHeader> {
        let head = Bytes::copy_from_slice(wire);
        let len = parse(&head)?.expect("complete");
        build(&head.slice(..len))
    }

    #[test]
    fn an_answer_header_keeps_its_spelling_and_values() {
        let header = answer_of(
            b"HTTP/1.1 201 Made\r\nContent-Type: text/event-stream\r\nX-Custom: a b\r\n\
              x-custom: c\r\n\r\ndata",
        )
        .expect("parses");
        assert_eq!(header.status, 201);
        assert_eq!(header.get_reason_phrase(), Some("Made"));
        assert_eq!(header.headers["content-type"], "text/event-stream");
        let custom: Vec<_> = header.headers.get_all("x-custom").iter().collect();
        assert_eq!(custom, ["a b", "c"]);
        let mut wire = Vec::new();
        header.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).expect("utf8");
        assert!(wire.contains("Content-Type: text/event-stream"), "{wire}");
        assert!(keeps_alive(&header));
    }

    #[test]
    fn a_partial_header_waits_and_a_broken_one_fails() {
        assert_eq!(parse(b"HTTP/1.1 200 OK\r\nContent-").ok(), Some(None));
        assert!(parse(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        assert!(parse(b"\x00\x01garbage\r\n\r\n").is_err());
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection() {
        let alive = |wire: &[u8]| keeps_alive(&answer_of(wire).expect("parses"));
        assert!(!alive(
            b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, close\r\n\r\n"
        ));
        assert!(!alive(b"HTTP/1.0 200 OK\r\n\r\n"));
        assert!(alive(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n"));
    }
}
