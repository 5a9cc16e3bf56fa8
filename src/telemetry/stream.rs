//! Streams as their users see them (SPEC §3 "Streams on any route", §4, §5, §6): how a
//! stream ended, its time to first byte and the SSE events it carried.
//!
//! A request becomes a stream at its answer's header (a 2xx on an `sse` route, or any
//! `Content-Type: text/event-stream` answer); only then is a [`Stream`] boxed into the
//! request's telemetry, so a request that is not a stream pays one `None` check per body
//! chunk and nothing else. Both paths feed it: the relay (`proxy::relay::pump`) and
//! Pingora's pipeline (`response_body_filter`, `logging`).

use std::time::{Duration, Instant};

use http::{header, HeaderMap};
use pingora::{Error, ErrorSource, ErrorType};

use crate::metrics::{self, SseStreamGuard};

/// How a stream ended: the `end` label of `edge_sse_streams_total`, the log's `stream_end`
/// and the span's `edge.stream.end`. In the order of [`metrics::STREAM_ENDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// The upstream's own clean end reached the client.
    Complete,
    ClientClosed,
    /// The upstream failed, reset or sent a broken body mid-stream.
    UpstreamError,
    /// Nothing came from the upstream within the route's `timeout`.
    IdleTimeout,
    /// The shutdown's grace period ran out.
    Shutdown,
}

impl StreamEnd {
    /// The label value, one of [`metrics::STREAM_ENDS`].
    pub(crate) fn as_str(self) -> &'static str {
        metrics::STREAM_ENDS[self as usize]
    }

    /// What a failed request's error says of how its stream ended (Pingora's pipeline,
    /// whose `logging` gets the error, if any).
    pub(crate) fn of(error: Option<&Error>) -> StreamEnd {
        let Some(e) = error else {
            return StreamEnd::Complete;
        };
        match (e.esource(), e.etype()) {
            (ErrorSource::Downstream, _) => StreamEnd::ClientClosed,
            (ErrorSource::Upstream, ErrorType::ReadTimedout) => StreamEnd::IdleTimeout,
            _ => StreamEnd::UpstreamError,
        }
    }
}

/// Whether an answer is an SSE stream by its `Content-Type` (parameters and case aside).
pub(crate) fn is_event_stream(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let media = v
            .as_bytes()
            .split(|b| *b == b';')
            .next()
            .unwrap_or_default();
        media
            .trim_ascii()
            .eq_ignore_ascii_case(b"text/event-stream")
    })
}

/// One stream's state, from its answer's header to its end.
pub(crate) struct Stream {
    /// When the first body byte went to the client.
    first_byte: Option<Instant>,
    events: EventScan,
    end: Option<StreamEnd>,
    /// `Content-Type: text/event-stream`: events are counted, heartbeats may be sent.
    event_stream: bool,
    /// Counted in `edge_sse_streams_active` while it lives (Prometheus on).
    _active: Option<SseStreamGuard>,
}

impl Stream {
    /// A stream of the route labelled `route`; `event_stream` per [`is_event_stream`].
    pub(crate) fn open(route: &str, event_stream: bool) -> Stream {
        Stream {
            first_byte: None,
            events: EventScan::default(),
            end: None,
            event_stream,
            _active: metrics::requests_counted().then(|| metrics::sse_stream_opened(route)),
        }
    }

    /// Body bytes of the upstream's answer just written to the client (heartbeats are
    /// not: they are neither a first byte nor an event).
    pub(crate) fn sent(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.first_byte.get_or_insert_with(Instant::now);
        if self.event_stream {
            self.events.scan(data);
        }
    }

    pub(crate) fn is_event_stream(&self) -> bool {
        self.event_stream
    }

    /// Records how the stream ended; the first reason given is kept.
    pub(crate) fn ended(&mut self, end: StreamEnd) {
        self.end.get_or_insert(end);
    }

    /// What the log line, the metrics and the span report of a stream that began at
    /// `started` (the request's arrival).
    pub(crate) fn report(&self, started: Instant) -> StreamReport {
        StreamReport {
            end: self.end.unwrap_or(StreamEnd::Complete),
            time_to_first_byte: self
                .first_byte
                .map(|t| t.saturating_duration_since(started)),
            events: self.events.events,
        }
    }
}

/// A finished stream, as reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StreamReport {
    pub end: StreamEnd,
    /// `None` when no body byte reached the client.
    pub time_to_first_byte: Option<Duration>,
    pub events: u64,
}

/// Counts SSE events in bytes arriving in any pieces: an event ends with a blank line
/// after at least one line of its own (lines end in LF or CRLF). A scan for line feeds
/// (`memchr`), no allocation; the state between pieces is two small words, so an event
/// split across reads is counted once.
#[derive(Debug, Default, Clone)]
pub(crate) struct EventScan {
    /// What the current (unfinished) line holds so far.
    line: Line,
    /// A line with content has been seen since the last event's end.
    in_event: bool,
    pub events: u64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Line {
    #[default]
    Empty,
    /// Just a CR (the start of a CRLF ending a blank line).
    Cr,
    Content,
}

impl Line {
    fn with(self, piece: &[u8]) -> Line {
        match (self, piece) {
            (line, []) => line,
            (Line::Empty, b"\r") => Line::Cr,
            _ => Line::Content,
        }
    }
}

impl EventScan {
    pub(crate) fn scan(&mut self, data: &[u8]) {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', data) {
            let line = self.line.with(&data[start..end]);
            if line == Line::Content {
                self.in_event = true;
            } else if self.in_event {
                self.events += 1;
                self.in_event = false;
            }
            self.line = Line::Empty;
            start = end + 1;
        }
        self.line = self.line.with(&data[start..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(pieces: &[&[u8]]) -> u64 {
        let mut scan = EventScan::default();
        for piece in pieces {
            scan.scan(piece);
        }
        scan.events
    }

    #[test]
    fn events_end_with_a_blank_line_whatever_the_pieces() {
        let wire: &[u8] =
            b": comment\n\ndata: a\ndata: b\n\nid: 2\r\ndata: c\r\n\r\n\n\ndata: open";
        assert_eq!(count(&[wire]), 3);
        for split in 0..=wire.len() {
            let (a, b) = wire.split_at(split);
            assert_eq!(count(&[a, b]), 3, "split at {split}");
        }
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(count(&bytes), 3);
        assert_eq!(count(&[b"\n\n\r\n"]), 0, "blank lines alone are no event");
        assert_eq!(count(&[b"data: x\n", b"\n"]), 1);
    }

    #[test]
    fn event_stream_content_types() {
        let of = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static(value));
            is_event_stream(&headers)
        };
        assert!(of("text/event-stream"));
        assert!(of("Text/Event-Stream; charset=utf-8"));
        assert!(!of("text/event-streams"));
        assert!(!of("application/json"));
        assert!(!is_event_stream(&HeaderMap::new()));
    }

    #[test]
    fn a_stream_reports_its_first_byte_events_and_first_end() {
        let started = Instant::now();
        let mut stream = Stream::open("t-stream", true);
        stream.sent(b"");
        assert_eq!(stream.report(started).time_to_first_byte, None);
        stream.sent(b"data: 1\n\n");
        stream.ended(StreamEnd::IdleTimeout);
        stream.ended(StreamEnd::Complete);
        let report = stream.report(started);
        assert!(report.time_to_first_byte.is_some());
        assert_eq!(report.events, 1);
        assert_eq!(report.end, StreamEnd::IdleTimeout);
    }

    #[test]
    fn end_labels_follow_the_variants() {
        assert_eq!(StreamEnd::Complete.as_str(), "complete");
        assert_eq!(StreamEnd::ClientClosed.as_str(), "client_closed");
        assert_eq!(StreamEnd::UpstreamError.as_str(), "upstream_error");
        assert_eq!(StreamEnd::IdleTimeout.as_str(), "idle_timeout");
        assert_eq!(StreamEnd::Shutdown.as_str(), "shutdown");
    }

    #[test]
    fn errors_say_how_a_stream_ended() {
        assert_eq!(StreamEnd::of(None), StreamEnd::Complete);
        let idle = Error::explain(ErrorType::ReadTimedout, "idle").into_up();
        assert_eq!(StreamEnd::of(Some(&idle)), StreamEnd::IdleTimeout);
        let reset = Error::explain(ErrorType::ReadError, "reset").into_up();
        assert_eq!(StreamEnd::of(Some(&reset)), StreamEnd::UpstreamError);
        let gone = Error::explain(ErrorType::WriteError, "gone").into_down();
        assert_eq!(StreamEnd::of(Some(&gone)), StreamEnd::ClientClosed);
    }
}
