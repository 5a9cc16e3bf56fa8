//! The access log (SPEC §4): nginx's `main` format or one JSON object per line, to stdout
//! or to a file that is reopened on `SIGUSR1` (logrotate's `postrotate` signal).
//!
//! A request formats its line in a buffer of its thread and appends it to one bounded
//! queue of bytes; a dedicated writer thread does all the I/O, so a slow disk or a blocked
//! stdout never holds a request. When the queue is full the line is dropped and counted
//! in `edge_access_log_dropped_total` rather than waiting.
//!
//! The writer takes everything queued at once and writes it with one `write`, then
//! lingers ([`LINGER`]) before looking again: under load the queue is never empty when a
//! request appends, so no request wakes the writer, and a line costs the request path its
//! formatting and one short lock, with no allocation. Lines queued before a `SIGUSR1` but
//! not yet written go to the reopened file: none is lost.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::Version;

use crate::config::{LogFormat, LogTarget};
use crate::state::SharedState;
use crate::text::IpText;

/// Lines that may wait for the writer; beyond this they are dropped (and counted). Room
/// for a [`LINGER`] at over a million requests a second.
const QUEUE_LINES: usize = 64 * 1024;
/// Bytes that may wait for the writer (long user agents and paths add up).
const QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// How long the writer waits after a batch so that the next one is larger: at most this
/// late on disk, a line costs the request path no wake-up of the writer under load. Each
/// wake-up of the writer preempts a worker on a busy machine: 10 ms cost 1.4 % more CPU
/// per request than 50 ms (`bench/contend.sh`, full telemetry, 8 rounds).
const LINGER: Duration = Duration::from_millis(50);
/// A thread's line buffer: room for a common line; one that grew past the second
/// figure (a huge user agent) is let go.
const SCRATCH_CAPACITY: usize = 512;
const KEEP_SCRATCH_CAPACITY: usize = 16 * 1024;
/// The writer's batch buffer is cut back to this after a burst (a [`LINGER`] of lines at
/// several thousand requests a second fits).
const KEEP_BATCH_CAPACITY: usize = 1024 * 1024;

/// Everything one line says, borrowed from the finished request.
pub struct Entry<'a> {
    pub remote_addr: Option<&'a IpText>,
    /// The raw `Authorization` header, for `$remote_user` (Basic auth).
    pub authorization: Option<&'a [u8]>,
    pub method: &'a str,
    /// Path and query exactly as the client sent them.
    pub target: &'a [u8],
    pub version: Version,
    pub status: u16,
    pub body_bytes_sent: u64,
    pub referer: Option<&'a [u8]>,
    pub user_agent: Option<&'a [u8]>,
    pub x_forwarded_for: Option<&'a [u8]>,
    pub request_time: Duration,
    pub upstream_response_time: Option<Duration>,
    pub upstream_addr: Option<SocketAddr>,
    pub route: &'a str,
    /// 32 lowercase hex digits when the request has a trace.
    pub trace_id: Option<String>,
}

/// Formats one line, newline included.
fn format_line(out: &mut Vec<u8>, format: LogFormat, entry: &Entry<'_>, now: SystemTime) {
    match format {
        LogFormat::Main => format_main(out, entry, now),
        LogFormat::Json => format_json(out, entry, now),
    }
    out.push(b'\n');
}

/// nginx `log_format main`:
/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
/// "$http_referer" "$http_user_agent" "$http_x_forwarded_for"`.
fn format_main(out: &mut Vec<u8>, e: &Entry<'_>, now: SystemTime) {
    match e.remote_addr {
        Some(ip) => out.extend_from_slice(ip.as_bytes()),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" - ");
    match e.authorization.and_then(basic_auth_user) {
        Some(user) => push_nginx_escaped(out, user.as_bytes()),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" [");
    with_times(now, |local, _| out.extend_from_slice(local.as_bytes()));
    out.extend_from_slice(b"] \"");
    // a method is a token (`http` checks): nothing in it to escape
    out.extend_from_slice(e.method.as_bytes());
    out.push(b' ');
    push_nginx_escaped(out, e.target);
    out.push(b' ');
    out.extend_from_slice(version_str(e.version).as_bytes());
    out.extend_from_slice(b"\" ");
    out.extend_from_slice(itoa::Buffer::new().format(e.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(e.body_bytes_sent).as_bytes());
    out.extend_from_slice(b" \"");
    push_nginx_field(out, e.referer);
    out.extend_from_slice(b"\" \"");
    push_nginx_field(out, e.user_agent);
    out.extend_from_slice(b"\" \"");
    push_nginx_field(out, e.x_forwarded_for);
    out.push(b'"');
}

/// One JSON object with the SPEC §4 fields; absent values are `null`.
fn format_json(out: &mut Vec<u8>, e: &Entry<'_>, now: SystemTime) {
    let (path, query) = match e.target.iter().position(|&b| b == b'?') {
        Some(i) => (&e.target[..i], &e.target[i + 1..]),
        None => (e.target, &[][..]),
    };
    out.extend_from_slice(b"{\"time\":\"");
    with_times(now, |_, iso| out.extend_from_slice(iso.as_bytes()));
    out.extend_from_slice(b"\",\"remote_addr\":");
    match e.remote_addr {
        Some(ip) => {
            out.push(b'"');
            out.extend_from_slice(ip.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"remote_user\":");
    push_json_opt(
        out,
        e.authorization
            .and_then(basic_auth_user)
            .as_deref()
            .map(str::as_bytes),
    );
    out.extend_from_slice(b",\"method\":");
    push_json_str(out, e.method.as_bytes());
    out.extend_from_slice(b",\"path\":");
    push_json_str(out, path);
    out.extend_from_slice(b",\"query\":");
    push_json_str(out, query);
    out.extend_from_slice(b",\"protocol\":");
    push_json_str(out, version_str(e.version).as_bytes());
    let _ = write!(
        out,
        ",\"status\":{},\"body_bytes_sent\":{},\"request_time\":{:.3},\"upstream_response_time\":",
        e.status,
        e.body_bytes_sent,
        e.request_time.as_secs_f64()
    );
    match e.upstream_response_time {
        Some(t) => {
            let _ = write!(out, "{:.3}", t.as_secs_f64());
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream_addr\":");
    match e.upstream_addr {
        Some(addr) => {
            let _ = write!(out, "\"{addr}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"route\":");
    push_json_str(out, e.route.as_bytes());
    out.extend_from_slice(b",\"referer\":");
    push_json_opt(out, e.referer);
    out.extend_from_slice(b",\"user_agent\":");
    push_json_opt(out, e.user_agent);
    out.extend_from_slice(b",\"x_forwarded_for\":");
    push_json_opt(out, e.x_forwarded_for);
    out.extend_from_slice(b",\"trace_id\":");
    push_json_opt(out, e.trace_id.as_deref().map(str::as_bytes));
    out.push(b'}');
}

fn version_str(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `$remote_user`: the user name of a `Basic` `Authorization` header.
fn basic_auth_user(header: &[u8]) -> Option<String> {
    let header = std::str::from_utf8(header).ok()?.trim();
    let (scheme, credentials) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let user = decoded.split_once(':').map_or(decoded.as_str(), |(u, _)| u);
    (!user.is_empty()).then(|| user.to_owned())
}

/// A header field as nginx logs it: `-` when absent or empty.
fn push_nginx_field(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) if !v.is_empty() => push_nginx_escaped(out, v),
        _ => out.push(b'-'),
    }
}

/// nginx's default log escaping: `"`, `\`, control bytes and bytes ≥ 0x7f as `\xHH`.
/// Runs of plain bytes are copied whole: user agents and paths are mostly plain.
fn push_nginx_escaped(out: &mut Vec<u8>, mut value: &[u8]) {
    let needs_escape = |b: &u8| *b == b'"' || *b == b'\\' || !(0x20..0x7f).contains(b);
    while !value.is_empty() {
        let plain = value.iter().position(needs_escape).unwrap_or(value.len());
        out.extend_from_slice(&value[..plain]);
        if let Some(b) = value.get(plain) {
            let _ = write!(out, "\\x{b:02X}");
        }
        value = value.get(plain + 1..).unwrap_or_default();
    }
}

fn push_json_opt(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => push_json_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string; bytes that are not UTF-8 become U+FFFD.
fn push_json_str(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    for c in String::from_utf8_lossy(value).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out.push(b'"');
}

/// Calls `f` with `$time_local` (`22/Nov/2026:13:04:05 +0000`) and the RFC 3339 time of
/// `now`, in the local time zone. Both are formatted once per second per thread.
fn with_times(now: SystemTime, f: impl FnOnce(&str, &str)) {
    thread_local! {
        static CACHE: RefCell<(i64, String, String)> = const { RefCell::new((i64::MIN, String::new(), String::new())) };
    }
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != secs {
            let time = chrono::DateTime::<chrono::Local>::from(
                UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs()),
            );
            cache.1.clear();
            let _ = write!(cache.1, "{}", time.format("%d/%b/%Y:%H:%M:%S %z"));
            cache.2.clear();
            let _ = write!(cache.2, "{}", time.format("%Y-%m-%dT%H:%M:%S%:z"));
            cache.0 = secs;
        }
        f(&cache.1, &cache.2);
    });
}

/// Lines waiting for the writer, and what else it is asked to do.
#[derive(Default)]
struct Pending {
    /// Whole lines, newlines included, in the order they were queued.
    bytes: Vec<u8>,
    lines: usize,
    /// Answered once every line queued before them is written ([`AccessLog::flush`]).
    acks: Vec<mpsc::Sender<()>>,
    /// `SIGUSR1`: reopen the file before writing what is pending.
    reopen: bool,
    /// The handle is gone: write what is pending and stop.
    closed: bool,
}

/// What [`Pending::append`] did with a line.
#[derive(Debug, PartialEq)]
enum Appended {
    /// The first line since the writer took the last batch: it may be parked.
    First,
    More,
    /// The queue is full.
    Dropped,
}

impl Pending {
    fn append(&mut self, line: &[u8]) -> Appended {
        if self.lines >= QUEUE_LINES || self.bytes.len() + line.len() > QUEUE_BYTES {
            return Appended::Dropped;
        }
        let first = self.bytes.is_empty();
        self.bytes.extend_from_slice(line);
        self.lines += 1;
        if first {
            Appended::First
        } else {
            Appended::More
        }
    }

    fn has_work(&self) -> bool {
        !self.bytes.is_empty() || !self.acks.is_empty() || self.reopen || self.closed
    }
}

/// The handle of the access-log writer.
pub struct AccessLog {
    pending: Arc<Mutex<Pending>>,
    writer: Thread,
}

/// The lock is only ever held to append or take bytes, never while formatting or writing,
/// so a panic cannot leave a line half-written in it.
fn lock(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// Where a request formats its line before appending it whole: one buffer per thread,
    /// reused, so a line costs no allocation and the queue's lock is held for a copy only.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(SCRATCH_CAPACITY));
}

impl AccessLog {
    /// Starts the writer thread. It follows `access_log.path` of the live config, so a
    /// reload that changes it takes effect with the next batch.
    pub fn start(state: SharedState) -> io::Result<AccessLog> {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let output = Output::open(&state.load().config.access_log.target);
        let writer = Writer {
            state,
            pending: pending.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(output))?;
        Ok(AccessLog {
            pending,
            writer: thread.thread().clone(),
        })
    }

    /// Formats `entry` and queues the line; never waits. A full queue drops the line and
    /// counts it.
    pub fn log(&self, format: LogFormat, entry: &Entry<'_>, now: SystemTime) {
        SCRATCH.with_borrow_mut(|line| {
            line.clear();
            format_line(line, format, entry, now);
            self.queue(line);
            if line.capacity() > KEEP_SCRATCH_CAPACITY {
                *line = Vec::with_capacity(SCRATCH_CAPACITY);
            }
        });
    }

    /// Appends one whole line. Only the first line after the writer took the last batch
    /// wakes it; under load it is already awake, lingering.
    fn queue(&self, line: &[u8]) {
        let appended = lock(&self.pending).append(line);
        match appended {
            Appended::First => self.writer.unpark(),
            Appended::More => {}
            Appended::Dropped => super::metrics::access_log_line_dropped(),
        }
    }

    /// Reopens the file (after logrotate moved it): `SIGUSR1`.
    pub fn reopen(&self) {
        lock(&self.pending).reopen = true;
        self.writer.unpark();
    }

    /// Waits until every line queued so far is written, or `deadline` passes.
    pub fn flush(&self, deadline: Instant) -> bool {
        let (ack_tx, ack_rx) = mpsc::channel();
        lock(&self.pending).acks.push(ack_tx);
        self.writer.unpark();
        ack_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        lock(&self.pending).closed = true;
        self.writer.unpark();
    }
}

struct Writer {
    state: SharedState,
    pending: Arc<Mutex<Pending>>,
}

impl Writer {
    fn run(&self, mut output: Output) {
        let mut batch = Vec::new();
        let mut acks = Vec::new();
        loop {
            // Parked only while idle: a request's first line unparks it.
            while !lock(&self.pending).has_work() {
                std::thread::park();
            }
            // Lines keep coming under load: wait for more of them, so that a write is
            // a whole batch and requests have no reason to wake the writer meanwhile.
            std::thread::sleep(LINGER);
            let (reopen, closed) = {
                let mut pending = lock(&self.pending);
                std::mem::swap(&mut pending.bytes, &mut batch);
                pending.lines = 0;
                acks.append(&mut pending.acks);
                (std::mem::take(&mut pending.reopen), pending.closed)
            };
            self.follow_config(&mut output);
            if reopen {
                output.reopen();
            }
            output.write(&batch);
            batch.clear();
            if batch.capacity() > KEEP_BATCH_CAPACITY {
                batch.shrink_to(KEEP_BATCH_CAPACITY);
            }
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            if closed {
                return;
            }
        }
    }

    /// Switches the output when a reload changed `access_log.path`.
    fn follow_config(&self, output: &mut Output) {
        let snapshot = self.state.load();
        let target = &snapshot.config.access_log.target;
        if *target != output.target {
            *output = Output::open(target);
        }
    }
}

/// Where lines go.
struct Output {
    target: LogTarget,
    sink: Sink,
}

enum Sink {
    Discard,
    Stdout(io::Stdout),
    File(File),
}

impl Output {
    fn open(target: &LogTarget) -> Output {
        let sink = match target {
            LogTarget::Off => Sink::Discard,
            LogTarget::Stdout => Sink::Stdout(io::stdout()),
            LogTarget::File(path) => match open_append(path) {
                Ok(file) => Sink::File(file),
                Err(e) => {
                    tracing::error!(path = %path.display(), "cannot open the access log: {e}");
                    Sink::Discard
                }
            },
        };
        Output {
            target: target.clone(),
            sink,
        }
    }

    fn reopen(&mut self) {
        if let LogTarget::File(path) = &self.target {
            tracing::info!(path = %path.display(), "reopening the access log");
            let target = self.target.clone();
            *self = Output::open(&target);
        }
    }

    /// A batch of whole lines in one `write` (stdout: its lock held for the batch).
    fn write(&mut self, batch: &[u8]) {
        let result = match &mut self.sink {
            Sink::Discard => Ok(()),
            Sink::Stdout(w) => w.lock().write_all(batch).and_then(|()| w.flush()),
            Sink::File(w) => w.write_all(batch),
        };
        if let Err(e) = result {
            tracing::warn!("access log write failed: {e}");
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;

    static CLIENT: LazyLock<IpText> = LazyLock::new(|| IpText::new([10, 1, 2, 3].into()));

    fn entry<'a>() -> Entry<'a> {
        Entry {
            remote_addr: Some(&CLIENT),
            authorization: None,
            method: "GET",
            target: b"/console-api/x?a=1&b=\"2\"",
            version: Version::HTTP_11,
            status: 200,
            body_bytes_sent: 1234,
            referer: Some(b"http://h/p"),
            user_agent: Some(b"curl/8.0"),
            x_forwarded_for: None,
            request_time: Duration::from_millis(1500),
            upstream_response_time: Some(Duration::from_millis(1200)),
            upstream_addr: Some("127.0.0.1:8080".parse().expect("addr")),
            route: "console-api",
            trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        }
    }

    fn text_line(format: LogFormat, entry: &Entry<'_>, now: SystemTime) -> String {
        let mut line = Vec::new();
        format_line(&mut line, format, entry, now);
        String::from_utf8(line).expect("UTF-8")
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn main_line_is_nginx_main() {
        let line = text_line(LogFormat::Main, &entry(), at(1_795_000_000));
        let offset = chrono::DateTime::<chrono::Local>::from(at(1_795_000_000))
            .format("%z")
            .to_string();
        let expected_time = chrono::DateTime::<chrono::Local>::from(at(1_795_000_000))
            .format("%d/%b/%Y:%H:%M:%S")
            .to_string();
        assert_eq!(
            line,
            format!(
                "10.1.2.3 - - [{expected_time} {offset}] \"GET /console-api/x?a=1&b=\\x222\\x22 HTTP/1.1\" 200 1234 \"http://h/p\" \"curl/8.0\" \"-\"\n"
            )
        );
    }

    #[test]
    fn remote_user_comes_from_basic_auth() {
        let mut e = entry();
        // "alice:secret"
        e.authorization = Some(b"Basic YWxpY2U6c2VjcmV0");
        let line = text_line(LogFormat::Main, &e, at(0));
        assert!(line.starts_with("10.1.2.3 - alice ["), "{line}");
        e.authorization = Some(b"Bearer abc");
        let line = text_line(LogFormat::Main, &e, at(0));
        assert!(line.starts_with("10.1.2.3 - - ["), "{line}");
        e.authorization = Some(b"Basic !!!");
        assert!(text_line(LogFormat::Main, &e, at(0)).starts_with("10.1.2.3 - - ["));
    }

    #[test]
    fn control_and_high_bytes_are_escaped_like_nginx() {
        let mut e = entry();
        e.user_agent = Some(b"a\"b\\c\x01\xff");
        let line = text_line(LogFormat::Main, &e, at(0));
        assert!(line.contains("\"a\\x22b\\x5Cc\\x01\\xFF\""), "{line}");
    }

    #[test]
    fn json_line_has_the_spec_fields() {
        let line = text_line(LogFormat::Json, &entry(), at(1_795_000_000));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("json");
        assert_eq!(v["remote_addr"], "10.1.2.3");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/console-api/x");
        assert_eq!(v["query"], "a=1&b=\"2\"");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["body_bytes_sent"], 1234);
        assert_eq!(v["request_time"], 1.5);
        assert_eq!(v["upstream_response_time"], 1.2);
        assert_eq!(v["upstream_addr"], "127.0.0.1:8080");
        assert_eq!(v["route"], "console-api");
        assert_eq!(v["referer"], "http://h/p");
        assert_eq!(v["user_agent"], "curl/8.0");
        assert!(v["x_forwarded_for"].is_null());
        assert_eq!(v["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        let time = v["time"].as_str().expect("time");
        chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339 time");
    }

    #[test]
    fn json_escapes_what_json_needs() {
        let mut e = entry();
        e.user_agent = Some(b"q\"\\\n\x01\xff");
        let line = text_line(LogFormat::Json, &e, at(0));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).expect("json");
        assert_eq!(v["user_agent"], "q\"\\\n\u{1}\u{fffd}");
    }

    fn state_logging_to(path: &str) -> SharedState {
        let text = format!(
            "[access_log]\npath = {path:?}\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nreturn = 404\n"
        );
        let config = crate::config::parse(Path::new("test.toml"), &text).expect("config");
        crate::state::shared(crate::state::Snapshot::new(config, None))
    }

    #[test]
    fn the_queue_is_bounded_in_lines_and_bytes() {
        let mut pending = Pending::default();
        assert_eq!(pending.append(b"a\n"), Appended::First);
        assert_eq!(pending.append(b"b\n"), Appended::More);
        for _ in 2..QUEUE_LINES {
            assert_eq!(pending.append(b"c\n"), Appended::More);
        }
        assert_eq!(pending.append(b"d\n"), Appended::Dropped);
        assert_eq!(pending.lines, QUEUE_LINES);
        assert!(pending.bytes.starts_with(b"a\nb\nc\n"));

        let mut pending = Pending::default();
        let long = vec![b'x'; QUEUE_BYTES / 2];
        assert_eq!(pending.append(&long), Appended::First);
        assert_eq!(pending.append(&long), Appended::More);
        assert_eq!(pending.append(b"\n"), Appended::Dropped);
        assert_eq!(pending.bytes.len(), QUEUE_BYTES);
    }

    #[test]
    fn writer_appends_flushes_reopens_and_follows_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let state = state_logging_to(path.to_str().expect("utf-8 path"));
        let log = AccessLog::start(state.clone()).expect("start");
        let flush = || assert!(log.flush(Instant::now() + Duration::from_secs(5)));
        log.queue(b"one\n");
        flush();
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "one\n");
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rename");
        log.reopen();
        log.queue(b"two\n");
        flush();
        assert_eq!(std::fs::read_to_string(&rotated).expect("read"), "one\n");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two\n");
        let other = dir.path().join("other.log");
        let reloaded = state_logging_to(other.to_str().expect("utf-8 path")).load_full();
        state.store(reloaded);
        log.queue(b"three\n");
        flush();
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two\n");
        assert_eq!(std::fs::read_to_string(&other).expect("read"), "three\n");
    }
}
