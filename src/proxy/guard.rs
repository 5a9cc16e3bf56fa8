//! The connection layer under Pingora's HTTP/1 parser: what Pingora 0.9 decides before the
//! proxy's phases run, and nothing in its settings changes.
//!
//! - The request header must arrive whole within `server.client_header_timeout`, counted
//!   from its first byte (Pingora's timeout is per read), and fit in
//!   `server.client_header_max_size` (Pingora takes up to 1 MiB): otherwise 408 or 431 and
//!   the connection closes.
//! - A request Pingora's parser refuses gets the proxy's own 400 (with `[response_headers]`,
//!   `Connection: close`, an access-log line and a count as route `unmatched`) instead of
//!   Pingora's bare one.
//! - Raw `"`, `<` and `>` in a request target, which nginx accepts and the `http` crate
//!   under Pingora refuses, are percent-encoded on the way in.
//! - Pipelined requests are turned on for every connection (Pingora's default drops them).
//!
//! [`Guarded`] wraps each HTTP/1 connection. It follows the request header as the bytes
//! pass (no copy, no allocation on the common path): from the first byte of a request to
//! the end of its header, or until the proxy's first phase says Pingora parsed it
//! ([`request_parsed`]); [`serve`] marks the start of each request on the connection.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use http::StatusCode;
use pingora::apps::{HttpServerApp, ReusedHttpStream};
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;
use pingora::protocols::tls::ALPN;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora::proxy::{HttpProxy, Session};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{EdgeProxy, RequestCtx, RequestKind};
use crate::state::SharedState;
use crate::telemetry::{self, Exchange};

/// Bytes of a request line kept for the log line of a refused request.
const LINE_COPY: usize = 256;

/// Serves an accepted connection: HTTP/1 through [`Guarded`] in Pingora's keep-alive loop,
/// anything else (HTTP/2 by ALPN) as Pingora does.
pub(super) async fn serve(
    pipeline: &Arc<HttpProxy<EdgeProxy>>,
    stream: Stream,
    shutdown: &ShutdownWatch,
    state: &SharedState,
) -> Option<Stream> {
    if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        return pingora::apps::ServerApp::process_new(pipeline, stream, shutdown).await;
    }
    let guarded: Stream = Box::new(Guarded::new(stream, state.clone()));
    let mut session = ServerSession::new_http1(guarded);
    // Pingora's defaults for a new connection; the request phases set the configured ones.
    session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
    session.set_pipelining_enabled(true);
    let mut next = pipeline.process_new_http(session, shutdown).await;
    while let Some(reused) = next {
        next = serve_next(pipeline, reused, shutdown).await;
    }
    None
}

/// The next request of a kept-alive connection, in Pingora's pipeline.
pub(super) async fn serve_next(
    pipeline: &Arc<HttpProxy<EdgeProxy>>,
    reused: ReusedHttpStream,
    shutdown: &ShutdownWatch,
) -> Option<ReusedHttpStream> {
    let (stream, settings) = reused.consume();
    let stream = next_request(stream);
    let mut session = ServerSession::new_http1(stream);
    if let Some(settings) = settings {
        settings.apply_to_session(&mut session);
    }
    pipeline.process_new_http(session, shutdown).await
}

/// Marks the start of a connection's next request: its header is watched again.
fn next_request(stream: Stream) -> Stream {
    if !stream.as_any().is::<Guarded>() {
        return stream; // a relay's closed placeholder: nothing to watch
    }
    match stream.into_any().downcast::<Guarded>() {
        Ok(mut guarded) => {
            guarded.await_header();
            guarded
        }
        // Checked just above: a type that is a `Guarded` downcasts to one.
        Err(_) => Box::new(std::io::Cursor::new(Vec::new())),
    }
}

/// Called from the first request phase: Pingora has parsed the header, the body is not the
/// guard's business.
pub(super) fn request_parsed(session: &Session) {
    let guarded = session
        .as_downstream()
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<Guarded>());
    if let Some(guarded) = guarded {
        guarded.parsed.store(true, Ordering::Release);
    }
}

/// Where the connection is in its current request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the first byte of a request: the keep-alive timeout's time, not ours.
    Idle,
    /// Header bytes are arriving; the deadline runs.
    Header,
    /// The header's end went by; Pingora has not said yet that it parsed it.
    Passed,
    /// Pingora parsed the header: bytes pass untouched until the next request.
    Request,
    /// The proxy's own answer is being written; the connection closes after it.
    Answering,
    /// The answer is out: Pingora is fed one byte its parser refuses (so it gives up quietly,
    /// as on a malformed request), then the end of the stream; what it writes is dropped.
    Closed { fed: bool },
}

/// An HTTP/1 connection whose request headers are bounded in time and size.
pub(super) struct Guarded {
    inner: Stream,
    state: SharedState,
    phase: Phase,
    /// Set through a shared reference by [`request_parsed`].
    parsed: AtomicBool,
    timeout: Duration,
    max_size: usize,
    header_bytes: usize,
    /// True at the start of a line (only `\r` since the last `\n`): a `\n` now ends the header.
    at_line_start: bool,
    /// Where the scan is in the request line: 0 method, 1 target, 2 version, 3 past it.
    line_part: u8,
    line: [u8; LINE_COPY],
    line_len: usize,
    /// When the current header must be complete.
    deadline: Instant,
    /// The timer of `deadline`, made once per connection and only armed when a header
    /// actually has to wait for more bytes (most arrive in one read).
    timer: Option<Pin<Box<Sleep>>>,
    answer: Vec<u8>,
    answered: usize,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

impl Guarded {
    fn new(inner: Stream, state: SharedState) -> Guarded {
        let mut guarded = Guarded {
            inner,
            state,
            phase: Phase::Idle,
            parsed: AtomicBool::new(false),
            timeout: Duration::ZERO,
            max_size: 0,
            header_bytes: 0,
            at_line_start: false,
            line_part: 0,
            line: [0; LINE_COPY],
            line_len: 0,
            deadline: Instant::now(),
            timer: None,
            answer: Vec::new(),
            answered: 0,
        };
        guarded.await_header();
        guarded
    }

    /// The next bytes start a request header; the limits are the current config's.
    fn await_header(&mut self) {
        if matches!(self.phase, Phase::Answering | Phase::Closed { .. }) {
            return;
        }
        let server = &self.state.load().config.server;
        self.timeout = server.client_header_timeout;
        self.max_size = server.client_header_max_size;
        self.phase = Phase::Idle;
        self.parsed.store(false, Ordering::Release);
        self.header_bytes = 0;
        self.at_line_start = false;
        self.line_part = 0;
        self.line_len = 0;
    }

    /// Follows Pingora's word that it parsed the header.
    fn sync(&mut self) {
        if matches!(self.phase, Phase::Idle | Phase::Header | Phase::Passed)
            && self.parsed.load(Ordering::Acquire)
        {
            self.phase = Phase::Request;
        }
    }

    fn start_deadline(&mut self) {
        self.deadline = Instant::now() + self.timeout;
    }

    /// Whether the header's time is up; otherwise, when the header waits for bytes
    /// (`waiting`), the timer wakes the task at the deadline.
    fn deadline_passed(&mut self, cx: &mut Context<'_>, waiting: bool) -> bool {
        if self.phase != Phase::Header {
            return false;
        }
        if Instant::now() >= self.deadline {
            return true;
        }
        if waiting {
            let deadline = self.deadline;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            return timer.as_mut().poll(cx).is_ready();
        }
        false
    }

    /// Follows the header through `bytes`, just read: copies the request line's start,
    /// finds the header's end. Returns how many of `bytes` belong to the header and how
    /// many `"`, `<`, `>` the target holds.
    fn scan(&mut self, bytes: &[u8]) -> (usize, usize) {
        let mut to_escape = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if self.line_part < 3 {
                self.follow_request_line(b);
                if self.line_part == 1 && needs_escape(b) {
                    to_escape += 1;
                }
            }
            match b {
                b'\n' if self.at_line_start && self.line_part == 3 => {
                    self.phase = Phase::Passed;
                    return (i + 1, to_escape);
                }
                b'\n' => self.at_line_start = true,
                b'\r' => {}
                _ => self.at_line_start = false,
            }
        }
        (bytes.len(), to_escape)
    }

    fn follow_request_line(&mut self, b: u8) {
        match (self.line_part, b) {
            // Empty lines before a request line are allowed (RFC 9112 §2.2).
            (0, b'\r' | b'\n') if self.line_len == 0 => return,
            (_, b'\n') => self.line_part = 3,
            (0 | 1, b' ') => self.line_part += 1,
            _ => {}
        }
        if self.line_part < 3 && b != b'\r' && self.line_len < LINE_COPY {
            self.line[self.line_len] = b;
            self.line_len += 1;
        }
    }

    /// Begins the proxy's own answer; the connection closes after it.
    fn answer_with(&mut self, status: StatusCode, why: &str) {
        let snapshot = self.state.load_full();
        let body = format!(
            "{} {}\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            httpdate::fmt_http_date(SystemTime::now()),
            body.len()
        )
        .into_bytes();
        for (name, value) in &snapshot.config.response_headers {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
        self.answer = out;
        self.answered = 0;
        self.phase = Phase::Answering;
        tracing::debug!(status = status.as_u16(), "request refused: {why}");
        self.report(snapshot, status, body.len() as u64);
    }

    /// The access-log line and the metrics of a refused request, as route `unmatched`.
    fn report(&self, snapshot: Arc<crate::state::Snapshot>, status: StatusCode, body: u64) {
        let Some(request) = logged_request(&self.line[..self.line_len]) else {
            return;
        };
        let mut ctx = RequestCtx::new(snapshot);
        ctx.kind = RequestKind::Local;
        let exchange = Exchange::Relayed {
            request: &request,
            client: self.client(),
            body_bytes: body,
        };
        let (view, telemetry) = ctx.telemetry_parts();
        telemetry::request_finished(&exchange, &view, telemetry, status.as_u16());
    }

    fn client(&self) -> Option<IpAddr> {
        let socket = self.inner.get_socket_digest()?;
        socket.peer_addr()?.as_inet().map(|a| a.ip())
    }

    /// Writes the answer; `Ready(Ok)` once all of it is out.
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while self.answered < self.answer.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.answer[self.answered..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            self.answered += n;
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.answer = Vec::new();
        self.phase = Phase::Closed { fed: false };
        Poll::Ready(Ok(()))
    }

    /// A read while the header is watched.
    fn poll_header(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Pending => {
                if self.deadline_passed(cx, true) {
                    self.answer_with(StatusCode::REQUEST_TIMEOUT, "header not complete in time");
                    return self.poll_refused(cx, buf);
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                if read == 0 || self.phase == Phase::Passed {
                    return Poll::Ready(Ok(()));
                }
                if self.phase == Phase::Idle {
                    self.phase = Phase::Header;
                    self.start_deadline();
                } else if self.deadline_passed(cx, false) {
                    buf.set_filled(before);
                    self.answer_with(StatusCode::REQUEST_TIMEOUT, "header not complete in time");
                    return self.poll_refused(cx, buf);
                }
                let line_part = self.line_part;
                let (header, to_escape) = self.scan(&buf.filled()[before..]);
                self.header_bytes += header;
                if self.header_bytes > self.max_size {
                    buf.set_filled(before);
                    self.answer_with(
                        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                        "header over client_header_max_size",
                    );
                    return self.poll_refused(cx, buf);
                }
                if to_escape > 0 {
                    escape_target(buf, before, line_part);
                }
                Poll::Ready(Ok(()))
            }
        }
    }

    /// A read once the proxy has answered: the answer goes out first.
    fn poll_refused(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.phase == Phase::Answering {
            ready!(self.poll_answer(cx))?;
        }
        if self.phase == (Phase::Closed { fed: false }) && buf.remaining() > 0 {
            buf.put_slice(b"\0");
            self.phase = Phase::Closed { fed: true };
        }
        Poll::Ready(Ok(()))
    }
}

/// Bytes of a request target nginx passes and the `http` crate refuses.
fn needs_escape(b: u8) -> bool {
    matches!(b, b'"' | b'<' | b'>')
}

/// Percent-encodes `"`, `<`, `>` in the request target among the bytes `buf` got from
/// `from` on, the request line being at `part` (as [`Guarded::line_part`]) before them.
/// Rare: it may allocate. Left as sent (Pingora then refuses the request) when the buffer
/// has no room for the longer target.
fn escape_target(buf: &mut ReadBuf<'_>, from: usize, mut part: u8) {
    let read = buf.filled()[from..].to_vec();
    let mut escaped = Vec::with_capacity(read.len() + 16);
    for &b in &read {
        match b {
            b' ' if part < 2 => part += 1,
            // Before the method, an empty line is allowed: not the request line's end.
            b'\r' | b'\n' if part > 0 => part = 3,
            _ => {}
        }
        if part == 1 && needs_escape(b) {
            escaped.extend_from_slice(match b {
                b'"' => b"%22",
                b'<' => b"%3C",
                _ => b"%3E",
            });
        } else {
            escaped.push(b);
        }
    }
    buf.set_filled(from);
    if buf.remaining() >= escaped.len() {
        buf.put_slice(&escaped);
    } else {
        buf.put_slice(&read);
    }
}

/// The request a refused request is logged as: its method and target as far as they can be
/// read, `-` otherwise.
fn logged_request(line: &[u8]) -> Option<RequestHeader> {
    let mut parts = line.splitn(3, |b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let method = http::Method::from_bytes(method)
        .unwrap_or_else(|_| http::Method::from_bytes(b"-").unwrap_or(http::Method::GET));
    let mut logged = String::with_capacity(target.len() + 1);
    if target.first() != Some(&b'/') {
        logged.push('/');
    }
    for &b in target {
        if b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'\\' | b'%') {
            logged.push(b as char);
        } else {
            logged.push_str(&format!("%{b:02X}"));
        }
    }
    let target = logged;
    RequestHeader::build_no_case(method.clone(), target.as_bytes(), Some(0))
        .or_else(|_| RequestHeader::build_no_case(method, b"/", Some(0)))
        .ok()
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.sync();
        match this.phase {
            Phase::Request => Pin::new(&mut this.inner).poll_read(cx, buf),
            Phase::Idle | Phase::Header | Phase::Passed => this.poll_header(cx, buf),
            Phase::Answering | Phase::Closed { .. } => this.poll_refused(cx, buf),
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.sync();
        match this.phase {
            Phase::Request => Pin::new(&mut this.inner).poll_write(cx, buf),
            // Pingora answering a request its parser refused (its bare 400, or 405 for
            // CONNECT): the proxy's own 400 goes instead, as nginx answers both.
            Phase::Idle | Phase::Header | Phase::Passed => {
                this.answer_with(StatusCode::BAD_REQUEST, "refused by the request parser");
                ready!(this.poll_answer(cx))?;
                Poll::Ready(Ok(buf.len()))
            }
            Phase::Answering => {
                ready!(this.poll_answer(cx))?;
                Poll::Ready(Ok(buf.len()))
            }
            Phase::Closed { .. } => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.phase == Phase::Answering {
            ready!(this.poll_answer(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.phase == Phase::Answering {
            ready!(this.poll_answer(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        if self.phase == Phase::Answering {
            let _ = std::future::poll_fn(|cx| self.poll_answer(cx)).await;
        }
        self.inner.shutdown().await;
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Guarded {}

/// The TCP connection under a guarded (or plain) stream, for socket options.
pub(super) fn tcp_of(stream: &Stream) -> Option<&pingora::protocols::l4::stream::Stream> {
    let any = stream.as_any();
    any.downcast_ref::<Guarded>()
        .map_or(any, |g| g.inner.as_any())
        .downcast_ref()
}
