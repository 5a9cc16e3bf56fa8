//! gzip, decided per response by nginx's rules (SPEC §3) and done as a stream.
//!
//! Pingora's compression module is not used: it cannot apply the config's `types` and
//! `min_length`, treats `text/event-stream` as compressible, and inspects every response
//! even when nothing is compressed. Here the decision is made once in `response_filter`
//! ([`response_filter`]) and the body goes through a [`GzipStream`] chunk by chunk, so the
//! memory of a compressed response is deflate's window plus what one chunk produces,
//! whatever the body size.

use std::cell::RefCell;

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use http::{header, HeaderValue, Method, StatusCode, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

use crate::config::GzipConfig;
use crate::fields;

static GZIP: HeaderValue = HeaderValue::from_static("gzip");
static CHUNKED: HeaderValue = HeaderValue::from_static("chunked");
static ACCEPT_ENCODING: HeaderValue = HeaderValue::from_static("Accept-Encoding");

/// The initial capacity of the buffer deflate writes into: one typical output chunk.
const OUT_CAPACITY: usize = 16 * 1024;

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Not a compressible type (or gzip is off): leave the response alone.
    Untouched,
    /// A compressible type that stays plain (client, size, status...): only `Vary`.
    VaryOnly,
    /// Compress it.
    Compress,
}

/// Decides and rewrites the response header of a proxied response; returns the encoder
/// for its body when it is to be compressed. With gzip off this is one branch.
pub(crate) fn response_filter(
    config: &GzipConfig,
    req: &RequestHeader,
    resp: &mut ResponseHeader,
) -> Result<Option<Box<GzipStream>>> {
    if !config.enabled {
        return Ok(None);
    }
    match plan(config, req, resp) {
        Plan::Untouched => Ok(None),
        Plan::VaryOnly => merge_vary(resp).map(|()| None),
        Plan::Compress => {
            merge_vary(resp)?;
            start_compressed(resp)?;
            Ok(Some(Box::new(GzipStream::new(config.level))))
        }
    }
}

/// nginx's gzip rules. The caller has checked that gzip is on and the route is not `sse`
/// (whose answers get no body stages at all).
pub(crate) fn plan(config: &GzipConfig, req: &RequestHeader, resp: &ResponseHeader) -> Plan {
    if !is_compressible_type(config, resp.headers.get(header::CONTENT_TYPE)) {
        return Plan::Untouched;
    }
    let status = resp.status;
    let no_body = req.method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    // A range of the identity body cannot be compressed on its own.
    let partial =
        status == StatusCode::PARTIAL_CONTENT || resp.headers.contains_key(header::CONTENT_RANGE);
    let encoded = resp.headers.get(header::CONTENT_ENCODING).is_some_and(|v| {
        !v.as_bytes().is_empty() && !v.as_bytes().eq_ignore_ascii_case(b"identity")
    });
    // A body known to be empty gets no body task, so a gzip trailer could never be written.
    let too_short = match fields::content_length(&resp.headers).ok().flatten() {
        Some(len) => len == 0 || len < config.min_length,
        None => false,
    };
    // Chunked framing (needed once Content-Length is gone) is HTTP/1.1; nginx's
    // gzip_http_version 1.1 refuses older clients too.
    let old_client = req.version < Version::HTTP_11;
    if no_body || partial || encoded || too_short || old_client || !accepts_gzip(req) {
        Plan::VaryOnly
    } else {
        Plan::Compress
    }
}

/// The media type (no parameters) is in `gzip.types`; `*` in the list takes every type.
pub(crate) fn is_compressible_type(
    config: &GzipConfig,
    content_type: Option<&HeaderValue>,
) -> bool {
    let Some(media) = content_type.and_then(media_type) else {
        return false;
    };
    config
        .types
        .iter()
        .any(|t| t == "*" || t.eq_ignore_ascii_case(media))
}

/// `text/html; charset=utf-8` → `text/html`.
pub(crate) fn media_type(content_type: &HeaderValue) -> Option<&str> {
    let value = content_type.to_str().ok()?;
    let media = value.split(';').next().unwrap_or(value).trim();
    (!media.is_empty()).then_some(media)
}

/// `Accept-Encoding` allows gzip: an explicit `gzip` (or `x-gzip`) with q > 0, or, when gzip
/// is not named, `*` with q > 0. An unreadable q-value counts as 0, as in nginx.
pub(crate) fn accepts_gzip(req: &RequestHeader) -> bool {
    let mut gzip: Option<bool> = None;
    let mut any: Option<bool> = None;
    for item in fields::list_items(&req.headers, header::ACCEPT_ENCODING) {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let accepted = parts
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("q")
                    .then(|| quality_above_zero(v.trim()))
            })
            .unwrap_or(true);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(gzip.unwrap_or(false) || accepted);
        } else if coding == "*" {
            any = Some(accepted);
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// RFC 9110 qvalue: `0`, `0.`, `0.000` are zero; `1`, `0.5`, `1.000` are not; anything else
/// is malformed and counts as zero.
fn quality_above_zero(q: &str) -> bool {
    let (int, frac) = q.split_once('.').unwrap_or((q, ""));
    let well_formed = matches!(int, "0" | "1")
        && frac.len() <= 3
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (int == "0" || frac.bytes().all(|b| b == b'0'));
    well_formed && (int == "1" || frac.bytes().any(|b| b != b'0'))
}

/// Adds `Accept-Encoding` to `Vary` unless it (or `*`) is already there.
pub(crate) fn merge_vary(resp: &mut ResponseHeader) -> Result<()> {
    let mut merged: Option<String> = None;
    for value in resp.headers.get_all(header::VARY) {
        let text = value.to_str().unwrap_or("");
        if fields::value_items(text).any(|v| v == "*" || v.eq_ignore_ascii_case("accept-encoding"))
        {
            return Ok(());
        }
        let merged = merged.get_or_insert_with(String::new);
        if !merged.is_empty() && !text.trim().is_empty() {
            merged.push_str(", ");
        }
        merged.push_str(text.trim());
    }
    match merged {
        Some(mut list) if !list.is_empty() => {
            list.push_str(", Accept-Encoding");
            resp.insert_header(header::VARY, list)
        }
        _ => resp.insert_header(header::VARY, ACCEPT_ENCODING.clone()),
    }
}

/// Header changes for a body that will be gzipped: chunked instead of a length, no byte
/// ranges, and a weak `ETag` (the bytes differ from the upstream's), as nginx does.
pub(crate) fn start_compressed(resp: &mut ResponseHeader) -> Result<()> {
    resp.remove_header(&header::CONTENT_LENGTH);
    resp.remove_header(&header::ACCEPT_RANGES);
    resp.insert_header(header::CONTENT_ENCODING, GZIP.clone())?;
    // Pingora picks chunked framing before response_filter runs, only for bodies without a
    // length: with the length removed here, it must be asked for explicitly (HTTP/2 drops it).
    resp.set_version(Version::HTTP_11);
    resp.insert_header(header::TRANSFER_ENCODING, CHUNKED.clone())?;
    if let Some(weak) = resp.headers.get(header::ETAG).and_then(weak_etag) {
        resp.insert_header(header::ETAG, weak)?;
    }
    Ok(())
}

/// `"abc"` → `W/"abc"`; `None` when the tag is already weak (or not a tag).
pub(crate) fn weak_etag(etag: &HeaderValue) -> Option<HeaderValue> {
    let bytes = etag.as_bytes();
    if !bytes.starts_with(b"\"") {
        return None;
    }
    let mut weak = Vec::with_capacity(bytes.len() + 2);
    weak.extend_from_slice(b"W/");
    weak.extend_from_slice(bytes);
    HeaderValue::from_bytes(&weak).ok()
}

/// Idle deflate streams kept per worker thread. Making one allocates and clears about
/// 300 KiB (window, hash chains); a reset one only clears its hash table. Bounded: at most
/// this many per thread, the rest are freed.
const POOL_PER_THREAD: usize = 4;

/// gzip member header: deflate, no name, no mtime, OS = Unix (as nginx writes it).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];

/// Compressed output held back until this much is ready (or the body ends).
const EMIT_MIN: usize = 8 * 1024;

/// Spare room below which the output buffer grows before deflate writes into it.
const MIN_SPARE: usize = 1024;

thread_local! {
    static POOL: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
}

/// A reset raw-deflate stream of `level` from this thread's pool, or a new one.
fn take_deflate(level: u32) -> Compress {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let found = pool.iter().position(|(l, _)| *l == level);
        found.map(|i| pool.swap_remove(i).1)
    })
    .unwrap_or_else(|| Compress::new(Compression::new(level), false))
}

fn give_back(level: u32, mut deflate: Compress) {
    deflate.reset();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_PER_THREAD {
            pool.push((level, deflate));
        }
    });
}

/// A gzip encoder fed one body chunk at a time.
///
/// Each chunk's compressed output replaces the chunk (possibly nothing yet: deflate emits
/// when its block fills, and less than `EMIT_MIN` waits); the end of the stream writes the
/// rest and the gzip trailer.
/// Nothing is flushed per chunk, as nginx does not: SSE routes are never compressed.
/// The deflate stream comes from, and goes back to, a per-thread pool.
pub(crate) struct GzipStream {
    level: u32,
    /// `None` only while being dropped.
    deflate: Option<Compress>,
    crc: Crc,
    /// Output not handed out yet; starts with the gzip header.
    out: Vec<u8>,
}

impl GzipStream {
    pub(crate) fn new(level: u32) -> Self {
        let mut out = Vec::with_capacity(OUT_CAPACITY);
        out.extend_from_slice(&GZIP_HEADER);
        GzipStream {
            level,
            deflate: Some(take_deflate(level)),
            crc: Crc::new(),
            out,
        }
    }

    /// Replaces `body` with its compressed form (`None` when deflate has nothing to emit yet).
    pub(crate) fn filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> std::io::Result<()> {
        *body = self.push(body.as_deref().unwrap_or_default(), end_of_stream)?;
        Ok(())
    }

    fn push(&mut self, input: &[u8], end_of_stream: bool) -> std::io::Result<Option<Bytes>> {
        self.crc.update(input);
        self.deflate(input, FlushCompress::None)?;
        if end_of_stream {
            self.deflate(&[], FlushCompress::Finish)?;
            self.out.extend_from_slice(&self.crc.sum().to_le_bytes());
            self.out.extend_from_slice(&self.crc.amount().to_le_bytes());
        }
        // Small pieces wait for more: each one costs the client connection a write of its
        // own (chunk framing, flush).
        if self.out.is_empty() || (!end_of_stream && self.out.len() < EMIT_MIN) {
            return Ok(None);
        }
        let next = if end_of_stream {
            Vec::new()
        } else {
            Vec::with_capacity(OUT_CAPACITY)
        };
        Ok(Some(Bytes::from(std::mem::replace(&mut self.out, next))))
    }

    /// Runs deflate until it has taken all of `input` (and, on `Finish`, ended the stream),
    /// growing the output buffer as needed.
    fn deflate(&mut self, mut input: &[u8], flush: FlushCompress) -> std::io::Result<()> {
        let Some(deflate) = self.deflate.as_mut() else {
            return Err(std::io::Error::other("gzip stream already closed"));
        };
        loop {
            if self.out.capacity() - self.out.len() < MIN_SPARE {
                self.out.reserve(OUT_CAPACITY);
            }
            let before = deflate.total_in();
            let status = deflate
                .compress_vec(input, &mut self.out, flush)
                .map_err(std::io::Error::other)?;
            let consumed = usize::try_from(deflate.total_in() - before).unwrap_or(input.len());
            input = input.get(consumed..).unwrap_or_default();
            let room_left = self.out.len() < self.out.capacity();
            let done = match flush {
                FlushCompress::Finish => status == Status::StreamEnd,
                _ => input.is_empty() && room_left,
            };
            if done {
                return Ok(());
            }
        }
    }
}

impl Drop for GzipStream {
    fn drop(&mut self) {
        if let Some(deflate) = self.deflate.take() {
            give_back(self.level, deflate);
        }
    }
}

/// Compresses a whole body at once (the cached variant); `None` when gzip would not make
/// it smaller.
pub(crate) fn gzip_all(body: &[u8], level: u32) -> Option<Bytes> {
    let mut stream = GzipStream::new(level);
    stream.out.reserve(body.len() / 3);
    let out = stream.push(body, true).ok()??;
    (out.len() < body.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn config() -> GzipConfig {
        GzipConfig {
            enabled: true,
            min_length: 1000,
            level: 6,
            types: vec!["application/json".into(), "text/html".into()],
        }
    }

    fn request(method: &str, accept: Option<&str>) -> RequestHeader {
        let mut req = RequestHeader::build(method, b"/", None).expect("request");
        if let Some(accept) = accept {
            req.insert_header(header::ACCEPT_ENCODING, accept)
                .expect("header");
        }
        req
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(status, None).expect("response");
        for (k, v) in headers {
            resp.append_header(k.to_string(), *v).expect("header");
        }
        resp
    }

    fn accepts(value: &str) -> bool {
        accepts_gzip(&request("GET", Some(value)))
    }

    /// The header phase hands back an encoder exactly when it rewrote the header for one.
    #[test]
    fn the_header_phase_returns_the_encoder_it_planned() {
        let req = request("GET", Some("gzip"));
        let json = [("Content-Type", "application/json")];
        let mut resp = response(200, &json);
        let encoder = response_filter(&config(), &req, &mut resp).expect("filter");
        assert!(encoder.is_some());
        assert_eq!(resp.headers["content-encoding"], "gzip");

        let mut short = response(200, &[json[0], ("Content-Length", "10")]);
        let encoder = response_filter(&config(), &req, &mut short).expect("filter");
        assert!(encoder.is_none());
        assert_eq!(short.headers["vary"], "Accept-Encoding");

        let off = GzipConfig {
            enabled: false,
            ..config()
        };
        let mut plain = response(200, &json);
        assert!(response_filter(&off, &req, &mut plain)
            .expect("filter")
            .is_none());
        assert!(plain.headers.get("vary").is_none());
    }

    #[test]
    fn accept_encoding_q_values() {
        assert!(accepts("gzip"));
        assert!(accepts("deflate, gzip;q=0.5"));
        assert!(accepts("GZIP ; Q=1.0"));
        assert!(accepts("x-gzip"));
        assert!(accepts("*"));
        assert!(accepts("br;q=1, *;q=0.1"));
        assert!(!accepts("gzip;q=0"));
        assert!(!accepts("gzip;q=0.000"));
        assert!(!accepts("gzip;q=0, *"), "an explicit refusal beats *");
        assert!(!accepts("br, deflate"));
        assert!(!accepts("*;q=0"));
        assert!(!accepts("gzip;q=abc"), "malformed q counts as 0");
        assert!(!accepts("gzip;q=2"));
        assert!(!accepts("gzipx"));
        assert!(!accepts_gzip(&request("GET", None)));
    }

    #[test]
    fn plan_follows_nginx_rules() {
        let c = config();
        let json = [("content-type", "application/json; charset=utf-8")];
        let gz = request("GET", Some("gzip"));
        assert_eq!(plan(&c, &gz, &response(200, &json)), Plan::Compress);
        assert_eq!(
            plan(&c, &gz, &response(200, &[("content-type", "Text/HTML")])),
            Plan::Compress
        );
        assert_eq!(
            plan(&c, &gz, &response(200, &[("content-type", "image/png")])),
            Plan::Untouched
        );
        assert_eq!(plan(&c, &gz, &response(200, &[])), Plan::Untouched);
        let short = [
            ("content-type", "application/json"),
            ("content-length", "999"),
        ];
        assert_eq!(plan(&c, &gz, &response(200, &short)), Plan::VaryOnly);
        let long = [
            ("content-type", "application/json"),
            ("content-length", "1000"),
        ];
        assert_eq!(plan(&c, &gz, &response(200, &long)), Plan::Compress);
        let encoded = [
            ("content-type", "application/json"),
            ("content-encoding", "br"),
        ];
        assert_eq!(plan(&c, &gz, &response(200, &encoded)), Plan::VaryOnly);
        for status in [204, 206, 304] {
            assert_eq!(
                plan(&c, &gz, &response(status, &json)),
                Plan::VaryOnly,
                "{status}"
            );
        }
        assert_eq!(
            plan(&c, &request("HEAD", Some("gzip")), &response(200, &json)),
            Plan::VaryOnly
        );
        assert_eq!(
            plan(&c, &request("GET", None), &response(200, &json)),
            Plan::VaryOnly
        );
        let mut old = request("GET", Some("gzip"));
        old.set_version(Version::HTTP_10);
        assert_eq!(plan(&c, &old, &response(200, &json)), Plan::VaryOnly);
        let zero = [
            ("content-type", "application/json"),
            ("content-length", "0"),
        ];
        let mut any_length = config();
        any_length.min_length = 0;
        assert_eq!(
            plan(&any_length, &gz, &response(200, &zero)),
            Plan::VaryOnly
        );
    }

    #[test]
    fn vary_is_merged_once() {
        let mut resp = response(200, &[]);
        merge_vary(&mut resp).expect("vary");
        assert_eq!(resp.headers[header::VARY], "Accept-Encoding");
        let mut resp = response(200, &[("vary", "Origin"), ("vary", "Cookie")]);
        merge_vary(&mut resp).expect("vary");
        let all: Vec<_> = resp.headers.get_all(header::VARY).iter().collect();
        assert_eq!(all, ["Origin, Cookie, Accept-Encoding"]);
        let mut resp = response(200, &[("vary", "origin, accept-encoding")]);
        merge_vary(&mut resp).expect("vary");
        assert_eq!(resp.headers[header::VARY], "origin, accept-encoding");
    }

    #[test]
    fn compressed_headers() {
        let mut resp = response(
            200,
            &[
                ("content-length", "5000"),
                ("etag", "\"v1\""),
                ("accept-ranges", "bytes"),
            ],
        );
        start_compressed(&mut resp).expect("start");
        assert!(resp.headers.get(header::CONTENT_LENGTH).is_none());
        assert!(resp.headers.get(header::ACCEPT_RANGES).is_none());
        assert_eq!(resp.headers[header::CONTENT_ENCODING], "gzip");
        assert_eq!(resp.headers[header::TRANSFER_ENCODING], "chunked");
        assert_eq!(resp.headers[header::ETAG], "W/\"v1\"");
        let mut weak = response(200, &[("etag", "W/\"v1\"")]);
        start_compressed(&mut weak).expect("start");
        assert_eq!(weak.headers[header::ETAG], "W/\"v1\"");
    }

    #[test]
    fn stream_round_trips_chunk_by_chunk() {
        let input: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let mut stream = GzipStream::new(6);
        let mut out = Vec::new();
        let chunks: Vec<&[u8]> = input.chunks(7_000).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut body = Some(Bytes::copy_from_slice(chunk));
            stream
                .filter(&mut body, i + 1 == chunks.len())
                .expect("filter");
            if let Some(b) = body {
                out.extend_from_slice(&b);
            }
        }
        let mut decoded = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut decoded)
            .expect("valid gzip");
        assert_eq!(decoded, input);
        // an empty final call still closes the stream
        let mut stream = GzipStream::new(1);
        let mut body = Some(Bytes::from_static(b"hello"));
        stream.filter(&mut body, false).expect("filter");
        let mut out = body.map(|b| b.to_vec()).unwrap_or_default();
        let mut end = None;
        stream.filter(&mut end, true).expect("finish");
        out.extend_from_slice(&end.expect("trailer"));
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_string(&mut decoded)
            .expect("valid gzip");
        assert_eq!(decoded, "hello");
    }

    #[test]
    fn deflate_streams_are_reused_and_the_pool_is_bounded() {
        let pooled =
            |level: u32| POOL.with(|p| p.borrow().iter().filter(|(l, _)| *l == level).count());
        let streams: Vec<GzipStream> = (0..POOL_PER_THREAD + 2)
            .map(|_| GzipStream::new(3))
            .collect();
        drop(streams);
        assert_eq!(pooled(3), POOL_PER_THREAD);
        // a reused stream, even one dropped half-way, starts clean
        let mut half = GzipStream::new(3);
        half.filter(&mut Some(Bytes::from_static(b"left over")), false)
            .expect("filter");
        drop(half);
        for _ in 0..3 {
            let gz = gzip_all("reused ".repeat(200).as_bytes(), 3).expect("smaller");
            let mut decoded = String::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_string(&mut decoded)
                .expect("valid gzip");
            assert_eq!(decoded, "reused ".repeat(200));
        }
        assert_eq!(pooled(3), POOL_PER_THREAD);
        assert_eq!(pooled(7), 0, "levels are kept apart");
    }

    #[test]
    fn whole_body_only_when_smaller() {
        let text = "abc".repeat(1000);
        let gz = gzip_all(text.as_bytes(), 6).expect("smaller");
        let mut decoded = String::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_string(&mut decoded)
            .expect("valid gzip");
        assert_eq!(decoded, text);
        assert!(gzip_all(b"x", 6).is_none());
    }
}
