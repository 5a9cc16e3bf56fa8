//! Body framing of a relayed answer (RFC 9112 §6–7): how the upstream delimits its body, how
//! the client gets it, and a decoder that keeps no buffer between reads, so that a stream
//! waiting for its next event holds none.

use std::borrow::Cow;

use http::{header, HeaderMap, Method, StatusCode, Version};
use pingora::http::ResponseHeader;

/// The longest chunk-size or trailer line taken across reads (nginx: one buffer, 4 KiB).
const MAX_LINE: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum FramingError {
    #[error("invalid Content-Length in the upstream answer")]
    ContentLength,
    #[error("invalid chunk size in the upstream answer")]
    ChunkSize,
    #[error("chunk not followed by CRLF in the upstream answer")]
    ChunkEnd,
    #[error("chunk-size or trailer line over {MAX_LINE} bytes in the upstream answer")]
    LineTooLong,
}

/// How the upstream delimits its answer's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Incoming {
    /// No body: a `HEAD` request, or a 1xx, 204 or 304 answer.
    Empty,
    Length(u64),
    Chunked,
    /// Whatever comes until the upstream closes the connection.
    UntilClose,
}

impl Incoming {
    /// RFC 9112 §6.3, for the answer with `status` and `headers` to a `method` request.
    pub(super) fn of(
        method: &Method,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Result<Incoming, FramingError> {
        if method == Method::HEAD
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(Incoming::Empty);
        }
        if let Some(last) = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
        {
            // Only a final `chunked` delimits the body; any other coding runs to the close.
            let chunked = last
                .as_bytes()
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            return Ok(if chunked {
                Incoming::Chunked
            } else {
                Incoming::UntilClose
            });
        }
        let mut length = None;
        // Repeated values (in one header or several) must agree (RFC 9110 §8.6).
        for value in headers.get_all(header::CONTENT_LENGTH) {
            for part in value.as_bytes().split(|b| *b == b',') {
                let n = parse_decimal(part.trim_ascii()).ok_or(FramingError::ContentLength)?;
                if length.is_some_and(|l| l != n) {
                    return Err(FramingError::ContentLength);
                }
                length = Some(n);
            }
        }
        Ok(length.map_or(Incoming::UntilClose, Incoming::Length))
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// How the client gets the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outgoing {
    Empty,
    /// The upstream's `Content-Length`, bytes as they come.
    Length,
    Chunked,
    /// To an HTTP/1.0 client, which knows no chunks: the body ends with the connection.
    UntilClose,
}

impl Outgoing {
    /// The client's framing for an `incoming` body, with the headers that announce it.
    pub(super) fn choose(
        incoming: Incoming,
        client: Version,
        answer: &mut ResponseHeader,
    ) -> Outgoing {
        let outgoing = match incoming {
            Incoming::Empty => return Outgoing::Empty,
            Incoming::Length(_) => return Outgoing::Length,
            Incoming::Chunked | Incoming::UntilClose if client >= Version::HTTP_11 => {
                Outgoing::Chunked
            }
            Incoming::Chunked | Incoming::UntilClose => Outgoing::UntilClose,
        };
        // The chunks are ours: whatever the upstream said of its own framing goes.
        answer.remove_header(&header::CONTENT_LENGTH);
        answer.remove_header(&header::TRANSFER_ENCODING);
        if outgoing == Outgoing::Chunked {
            // A valid name and value: inserting cannot fail.
            let _ = answer.insert_header(header::TRANSFER_ENCODING, "chunked");
        }
        outgoing
    }

    /// Appends `data` framed for the client.
    pub(super) fn encode(self, data: &[u8], out: &mut Vec<u8>) {
        if data.is_empty() {
            return; // an empty chunk would end a chunked body
        }
        if self == Outgoing::Chunked {
            let mut size = [0u8; 16];
            let digits = chunk_size_hex(data.len(), &mut size);
            out.extend_from_slice(digits);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(data);
        }
    }

    /// What ends the body: the last chunk; nothing for the other framings.
    pub(super) fn end(self) -> &'static [u8] {
        match self {
            Outgoing::Chunked => b"0\r\n\r\n",
            _ => b"",
        }
    }
}

/// `n` in lowercase hex, in `buf`.
fn chunk_size_hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[n % 16];
        n /= 16;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Takes the upstream's body apart as bytes arrive, in any pieces: the data, and where it
/// ends. Between reads it keeps a few words (and a line split across reads, if any).
#[derive(Debug)]
pub(super) struct BodyDecoder {
    state: State,
    /// A chunk-size or trailer line split across reads; empty (unallocated) otherwise.
    line: Vec<u8>,
    /// Bytes came past the end of the body: the connection cannot carry another answer.
    overread: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    UntilClose,
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data; `true` once its CR is seen.
    ChunkEnd(bool),
    Trailers,
    Done,
}

impl BodyDecoder {
    pub(super) fn new(incoming: Incoming) -> BodyDecoder {
        let state = match incoming {
            Incoming::Empty | Incoming::Length(0) => State::Done,
            Incoming::Length(n) => State::Length(n),
            Incoming::Chunked => State::ChunkSize,
            Incoming::UntilClose => State::UntilClose,
        };
        BodyDecoder {
            state,
            line: Vec::new(),
            overread: false,
        }
    }

    /// Whether the whole body has been seen.
    pub(super) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the upstream closing now ends the body as it should (rather than cutting it).
    pub(super) fn ends_at_close(&self) -> bool {
        matches!(self.state, State::UntilClose | State::Done)
    }

    /// Whether the connection can carry the next request: the body ended where it said.
    pub(super) fn reusable(&self) -> bool {
        self.is_done() && !self.overread
    }

    /// Feeds the bytes just read, handing each run of body data to `data`.
    pub(super) fn decode(
        &mut self,
        mut input: &[u8],
        data: &mut dyn FnMut(&[u8]),
    ) -> Result<(), FramingError> {
        while !input.is_empty() {
            match self.state {
                State::Done => {
                    self.overread = true;
                    return Ok(());
                }
                State::UntilClose => {
                    data(input);
                    return Ok(());
                }
                State::Length(left) | State::ChunkData(left) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                    let (body, rest) = input.split_at(n);
                    data(body);
                    input = rest;
                    let left = left - n as u64;
                    self.state = match self.state {
                        State::Length(_) if left == 0 => State::Done,
                        State::Length(_) => State::Length(left),
                        _ if left == 0 => State::ChunkEnd(false),
                        _ => State::ChunkData(left),
                    };
                }
                State::ChunkEnd(cr_seen) => {
                    self.state = match (cr_seen, input[0]) {
                        (false, b'\r') => State::ChunkEnd(true),
                        (_, b'\n') => State::ChunkSize,
                        _ => return Err(FramingError::ChunkEnd),
                    };
                    input = &input[1..];
                }
                State::ChunkSize | State::Trailers => {
                    let Some(line) = self.take_line(&mut input)? else {
                        return Ok(()); // the rest of the line comes with the next read
                    };
                    self.state = if self.state == State::Trailers {
                        // Trailers are not relayed: the chunks the client gets are ours.
                        let empty = matches!(&*line, b"\r\n" | b"\n");
                        if empty {
                            State::Done
                        } else {
                            State::Trailers
                        }
                    } else if !line.first().is_some_and(u8::is_ascii_hexdigit) {
                        // httparse reads a line without digits (`;ext`) as size 0.
                        return Err(FramingError::ChunkSize);
                    } else {
                        match httparse::parse_chunk_size(&line) {
                            Ok(httparse::Status::Complete((_, 0))) => State::Trailers,
                            Ok(httparse::Status::Complete((_, size))) => State::ChunkData(size),
                            _ => return Err(FramingError::ChunkSize),
                        }
                    };
                }
            }
        }
        Ok(())
    }

    /// The next whole line of `input` (advanced past it), joined with what earlier reads
    /// left of it; `None` when `input` ends inside the line, which is then kept.
    fn take_line<'a>(
        &mut self,
        input: &mut &'a [u8],
    ) -> Result<Option<Cow<'a, [u8]>>, FramingError> {
        let end = input.iter().position(|b| *b == b'\n');
        let taken = end.map_or(input.len(), |i| i + 1);
        if self.line.len() + taken > MAX_LINE {
            return Err(FramingError::LineTooLong);
        }
        let (head, rest) = input.split_at(taken);
        *input = rest;
        if end.is_none() {
            self.line.extend_from_slice(head);
            Ok(None)
        } else if self.line.is_empty() {
            Ok(Some(Cow::Borrowed(head)))
        } else {
            self.line.extend_from_slice(head);
            Ok(Some(Cow::Owned(std::mem::take(&mut self.line))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    fn incoming(method: Method, status: u16, pairs: &[(&'static str, &'static str)]) -> Incoming {
        let status = StatusCode::from_u16(status).expect("status");
        Incoming::of(&method, status, &headers(pairs)).expect("framing")
    }

    #[test]
    fn the_upstream_framing_follows_rfc_9112() {
        let get = || Method::GET;
        assert_eq!(
            incoming(Method::HEAD, 200, &[("content-length", "9")]),
            Incoming::Empty
        );
        for status in [101, 204, 304] {
            assert_eq!(
                incoming(get(), status, &[("content-length", "9")]),
                Incoming::Empty
            );
        }
        let chunked = [("transfer-encoding", "chunked"), ("content-length", "9")];
        assert_eq!(incoming(get(), 200, &chunked), Incoming::Chunked);
        let layered = [("transfer-encoding", "gzip, Chunked")];
        assert_eq!(incoming(get(), 200, &layered), Incoming::Chunked);
        let unchunked = [("transfer-encoding", "chunked, gzip")];
        assert_eq!(incoming(get(), 200, &unchunked), Incoming::UntilClose);
        assert_eq!(
            incoming(get(), 200, &[("content-length", "12")]),
            Incoming::Length(12)
        );
        let repeated = [("content-length", "5, 5"), ("content-length", "5")];
        assert_eq!(incoming(get(), 200, &repeated), Incoming::Length(5));
        assert_eq!(incoming(get(), 200, &[]), Incoming::UntilClose);
        for bad in [
            &[("content-length", "5, 6")][..],
            &[("content-length", "-1")],
            &[("content-length", "")],
        ] {
            let e = Incoming::of(&get(), StatusCode::OK, &headers(bad));
            assert_eq!(e, Err(FramingError::ContentLength), "{bad:?}");
        }
    }

    fn answer(pairs: &[(&'static str, &'static str)]) -> ResponseHeader {
        let mut answer = ResponseHeader::build(200, None).expect("answer");
        for (name, value) in pairs {
            answer.append_header(*name, *value).expect("header");
        }
        answer
    }

    #[test]
    fn the_client_gets_chunks_unless_it_speaks_http_1_0() {
        let choose = Outgoing::choose;
        let mut a = answer(&[
            ("transfer-encoding", "gzip, chunked"),
            ("content-length", "3"),
        ]);
        assert_eq!(
            choose(Incoming::Chunked, Version::HTTP_11, &mut a),
            Outgoing::Chunked
        );
        assert_eq!(a.headers["transfer-encoding"], "chunked");
        assert!(a.headers.get("content-length").is_none());

        let mut a = answer(&[]);
        assert_eq!(
            choose(Incoming::UntilClose, Version::HTTP_11, &mut a),
            Outgoing::Chunked
        );
        assert_eq!(a.headers["transfer-encoding"], "chunked");

        let mut a = answer(&[("transfer-encoding", "chunked")]);
        assert_eq!(
            choose(Incoming::Chunked, Version::HTTP_10, &mut a),
            Outgoing::UntilClose
        );
        assert!(a.headers.is_empty());

        let mut a = answer(&[("content-length", "3")]);
        assert_eq!(
            choose(Incoming::Length(3), Version::HTTP_10, &mut a),
            Outgoing::Length
        );
        assert_eq!(a.headers["content-length"], "3");
    }

    #[test]
    fn chunks_are_encoded_in_hex_and_empty_data_is_no_chunk() {
        let mut out = Vec::new();
        Outgoing::Chunked.encode(&[b'x'; 26], &mut out);
        Outgoing::Chunked.encode(b"", &mut out);
        Outgoing::Chunked.encode(b"!", &mut out);
        out.extend_from_slice(Outgoing::Chunked.end());
        let expected = [&b"1a\r\n"[..], &[b'x'; 26], b"\r\n1\r\n!\r\n0\r\n\r\n"].concat();
        assert_eq!(out, expected);
        let mut plain = Vec::new();
        Outgoing::UntilClose.encode(b"abc", &mut plain);
        assert_eq!(plain, b"abc");
        assert_eq!(Outgoing::Length.end(), b"");
    }

    /// Feeds `wire` in the given pieces; returns the data and the decoder.
    fn decode_in(incoming: Incoming, pieces: &[&[u8]]) -> (Vec<u8>, BodyDecoder) {
        let mut decoder = BodyDecoder::new(incoming);
        let mut data = Vec::new();
        for piece in pieces {
            decoder
                .decode(piece, &mut |d| data.extend_from_slice(d))
                .expect("decodes");
        }
        (data, decoder)
    }

    const CHUNKED: &[u8] =
        b"5;ext=\"a;b\"\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: 1\r\n\r\n";
    const DECODED: &[u8] = b"helloabcdefghijklmnopqrstuvwxyz";

    #[test]
    fn a_chunked_body_decodes_whatever_the_pieces() {
        let (data, decoder) = decode_in(Incoming::Chunked, &[CHUNKED]);
        assert_eq!(data, DECODED);
        assert!(decoder.is_done() && decoder.reusable());
        for split in 0..=CHUNKED.len() {
            let (a, b) = CHUNKED.split_at(split);
            let (data, decoder) = decode_in(Incoming::Chunked, &[a, b]);
            assert_eq!(data, DECODED, "split at {split}");
            assert!(decoder.reusable(), "split at {split}");
        }
        let bytes: Vec<&[u8]> = CHUNKED.chunks(1).collect();
        let (data, decoder) = decode_in(Incoming::Chunked, &bytes);
        assert_eq!(data, DECODED);
        assert!(decoder.reusable());
        assert!(
            decoder.line.capacity() == 0,
            "no line kept once it is taken"
        );
    }

    #[test]
    fn a_body_cut_short_or_overrun_is_told() {
        let (_, cut) = decode_in(Incoming::Chunked, &[&CHUNKED[..20]]);
        assert!(!cut.is_done() && !cut.ends_at_close());
        let (_, over) = decode_in(Incoming::Chunked, &[CHUNKED, b"HTTP/1.1 200 OK\r\n"]);
        assert!(over.is_done() && !over.reusable());

        let (data, exact) = decode_in(Incoming::Length(5), &[b"he", b"llo"]);
        assert_eq!(data, b"hello");
        assert!(exact.reusable());
        let (data, over) = decode_in(Incoming::Length(5), &[b"hello world"]);
        assert_eq!(data, b"hello");
        assert!(over.is_done() && !over.reusable());

        let (data, open) = decode_in(Incoming::UntilClose, &[b"a", b"b"]);
        assert_eq!(data, b"ab");
        assert!(open.ends_at_close() && !open.is_done());
        assert!(BodyDecoder::new(Incoming::Empty).reusable());
    }

    #[test]
    fn malformed_chunks_are_errors() {
        let decode = |wire: &[u8]| BodyDecoder::new(Incoming::Chunked).decode(wire, &mut |_| {});
        assert_eq!(decode(b"zz\r\n"), Err(FramingError::ChunkSize));
        assert_eq!(decode(b"3\r\nabcX"), Err(FramingError::ChunkEnd));
        let long = [b"1;".as_slice(), &[b'e'; MAX_LINE]].concat();
        assert_eq!(decode(&long), Err(FramingError::LineTooLong));
    }

    /// The plainest chunked decoder that could work, on the whole body at once: what
    /// [`BodyDecoder`] must agree with, whatever pieces the body arrives in.
    /// Lines end in LF, with or without CR (RFC 9112 §2.2 lets a recipient take a bare LF).
    fn reference_decode(mut wire: &[u8]) -> Option<Vec<u8>> {
        let mut data = Vec::new();
        let next_line = |wire: &mut &[u8]| {
            let end = wire.iter().position(|b| *b == b'\n')?;
            let line = wire[..end]
                .strip_suffix(b"\r")
                .unwrap_or(&wire[..end])
                .to_vec();
            *wire = &wire[end + 1..];
            Some(line)
        };
        loop {
            let line = next_line(&mut wire)?;
            let line = std::str::from_utf8(&line).ok()?;
            let size_text = line.split(';').next()?.trim_end_matches([' ', '\t']);
            let size = usize::from_str_radix(size_text, 16).ok()?;
            if size == 0 {
                // Trailers up to the blank line.
                while !next_line(&mut wire)?.is_empty() {}
                return Some(data);
            }
            data.extend_from_slice(wire.get(..size)?);
            wire = &wire[size..];
            wire = wire
                .strip_prefix(b"\r\n")
                .or_else(|| wire.strip_prefix(b"\n"))?;
        }
    }

    /// A chunked body of `chunks`, with chunk extensions and trailers where asked.
    fn encode_chunked(chunks: &[Vec<u8>], extension: bool, trailer: bool) -> Vec<u8> {
        let mut wire = Vec::new();
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            wire.extend_from_slice(format!("{:X}", chunk.len()).as_bytes());
            if extension {
                wire.extend_from_slice(b";name=\"v;x\"");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(chunk);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n");
        if trailer {
            wire.extend_from_slice(b"x-checksum: 1\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        wire
    }

    /// Splits `wire` at the given cut points (taken modulo its length).
    fn pieces<'a>(wire: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        at.sort_unstable();
        at.dedup();
        let mut out = Vec::new();
        let mut start = 0;
        for cut in at {
            out.push(&wire[start..cut]);
            start = cut;
        }
        out.push(&wire[start..]);
        out
    }

    proptest::proptest! {
        #[test]
        fn the_decoder_agrees_with_a_naive_one_in_any_pieces(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..8),
            extension in proptest::bool::ANY,
            trailer in proptest::bool::ANY,
            cuts in proptest::collection::vec(0usize..4096, 0..12),
        ) {
            let wire = encode_chunked(&chunks, extension, trailer);
            let expected = reference_decode(&wire).expect("the reference reads its own encoding");
            let (data, decoder) = decode_in(Incoming::Chunked, &pieces(&wire, &cuts));
            proptest::prop_assert_eq!(data, expected);
            proptest::prop_assert!(decoder.reusable());
        }

        #[test]
        fn the_decoder_fails_or_agrees_on_arbitrary_bytes(
            wire in proptest::collection::vec(proptest::sample::select(b"0123456789aAfF;\r\nxz =".to_vec()), 0..200),
            cuts in proptest::collection::vec(0usize..256, 0..8),
        ) {
            let mut decoder = BodyDecoder::new(Incoming::Chunked);
            let mut data = Vec::new();
            let mut failed = false;
            for piece in pieces(&wire, &cuts) {
                if decoder.decode(piece, &mut |d| data.extend_from_slice(d)).is_err() {
                    failed = true;
                    break;
                }
            }
            // Whatever the decoder completes, the reference reads the same way.
            if !failed && decoder.is_done() {
                let expected = reference_decode(&wire);
                proptest::prop_assert_eq!(Some(data), expected);
            }
        }
    }
}
