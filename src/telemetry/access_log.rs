//! The access log (SPEC §4): nginx's `main` format or one JSON object per line, to stdout
//! or to a file that is reopened on `SIGUSR1` (logrotate's `postrotate` signal).
//!
//! A request only formats its line (one `String`) and hands it to a bounded channel; a
//! dedicated writer thread does all the I/O, so a slow disk or a blocked stdout never holds
//! a request. When the channel is full the line is dropped and counted in
//! `edge_access_log_dropped_total` rather than waiting.
//!
//! The writer drains the channel in batches (one `write` per batch) and then lingers a
//! few milliseconds before looking again, so under load a request almost never has
//! to wake it: the cost of a line on the request path is its formatting and a lock-free
//! enqueue.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use http::Version;

use crate::config::{LogFormat, LogTarget};
use crate::state::SharedState;
use crate::text::IpText;

/// Lines that may wait for the writer; beyond this they are dropped (and counted).
const QUEUE_LINES: usize = 16 * 1024;
/// How long the writer waits after a batch so that the next one is larger: at most this
/// late on disk, a line costs the request path no wake-up of the writer under load.
const LINGER: Duration = Duration::from_millis(10);
/// Output buffer of the writer: one `write` per batch up to this size.
const WRITE_BUFFER: usize = 64 * 1024;

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
pub fn format_line(format: LogFormat, entry: &Entry<'_>, now: SystemTime) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    match format {
        LogFormat::Main => format_main(&mut out, entry, now),
        LogFormat::Json => format_json(&mut out, entry, now),
    }
    out.push(b'\n');
    out
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
    use std::cell::RefCell;
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

enum Message {
    Line(Vec<u8>),
    /// Nothing to write: look at the reopen flag now.
    Wake,
    /// Everything queued before this is written and flushed; then the sender is answered.
    Flush(mpsc::Sender<()>),
}

/// The handle of the access-log writer.
pub struct AccessLog {
    tx: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
}

impl AccessLog {
    /// Starts the writer thread. It follows `access_log.path` of the live config, so a
    /// reload that changes it takes effect with the next line.
    pub fn start(state: SharedState) -> io::Result<AccessLog> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let reopen = Arc::new(AtomicBool::new(false));
        let mut output = Output::open(&state.load().config.access_log.target);
        let writer = Writer {
            state,
            reopen: reopen.clone(),
        };
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(&rx, &mut output))?;
        Ok(AccessLog { tx, reopen })
    }

    /// Queues a line; never waits. A full queue drops the line and counts it.
    pub fn write(&self, line: Vec<u8>) {
        match self.tx.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => super::metrics::access_log_line_dropped(),
            // The writer is gone only at exit.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Reopens the file (after logrotate moved it): `SIGUSR1`.
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        let _ = self.tx.try_send(Message::Wake);
    }

    /// Waits until every line queued so far is written, or `deadline` passes.
    pub fn flush(&self, deadline: Instant) -> bool {
        let (ack_tx, ack_rx) = mpsc::channel();
        let mut message = Message::Flush(ack_tx);
        loop {
            match self.tx.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(back)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    message = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        ack_rx.recv_timeout(left).is_ok()
    }
}

struct Writer {
    state: SharedState,
    reopen: Arc<AtomicBool>,
}

impl Writer {
    fn run(&self, rx: &Receiver<Message>, output: &mut Output) {
        let mut acks = Vec::new();
        // Blocks only while idle; a batch is everything queued, up to the queue size.
        while let Ok(first) = rx.recv() {
            self.follow_config(output);
            let mut batch = 0usize;
            let mut next = Some(first);
            while let Some(message) = next {
                // Before every message, so that lines queued after a SIGUSR1 already go
                // to the new file.
                if self.reopen.swap(false, Ordering::AcqRel) {
                    output.reopen();
                }
                match message {
                    Message::Line(line) => output.write(&line),
                    Message::Wake => {}
                    Message::Flush(ack) => acks.push(ack),
                }
                batch += 1;
                next = if batch < QUEUE_LINES {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            output.flush();
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
            std::thread::sleep(LINGER);
        }
    }

    /// Switches the output when a reload changed `access_log.path`.
    fn follow_config(&self, output: &mut Output) {
        let snapshot = self.state.load();
        let target = &snapshot.config.access_log.target;
        if *target != output.target {
            output.flush();
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
    Stdout(BufWriter<io::Stdout>),
    File(BufWriter<File>),
}

impl Output {
    fn open(target: &LogTarget) -> Output {
        let sink = match target {
            LogTarget::Off => Sink::Discard,
            LogTarget::Stdout => Sink::Stdout(BufWriter::with_capacity(WRITE_BUFFER, io::stdout())),
            LogTarget::File(path) => match open_append(path) {
                Ok(file) => Sink::File(BufWriter::with_capacity(WRITE_BUFFER, file)),
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
            self.flush();
            *self = Output::open(&target);
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let result = match &mut self.sink {
            Sink::Discard => Ok(()),
            Sink::Stdout(w) => w.write_all(bytes),
            Sink::File(w) => w.write_all(bytes),
        };
        if let Err(e) = result {
            tracing::warn!("access log write failed: {e}");
        }
    }

    fn flush(&mut self) {
        let result = match &mut self.sink {
            Sink::Discard => Ok(()),
            Sink::Stdout(w) => w.flush(),
            Sink::File(w) => w.flush(),
        };
        if let Err(e) = result {
            tracing::warn!("access log flush failed: {e}");
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
        String::from_utf8(format_line(format, entry, now)).expect("UTF-8")
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
        let text = format!("[access_log]\npath = {path:?}\n");
        let config = crate::config::parse(Path::new("test.toml"), &text).expect("config");
        crate::state::shared(crate::state::Snapshot::new(config, None))
    }

    #[test]
    fn writer_appends_flushes_reopens_and_follows_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let state = state_logging_to(path.to_str().expect("utf-8 path"));
        let log = AccessLog::start(state.clone()).expect("start");
        let flush = || assert!(log.flush(Instant::now() + Duration::from_secs(5)));
        log.write("one\n".into());
        flush();
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "one\n");
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rename");
        log.reopen();
        log.write("two\n".into());
        flush();
        assert_eq!(std::fs::read_to_string(&rotated).expect("read"), "one\n");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two\n");
        let other = dir.path().join("other.log");
        let reloaded = state_logging_to(other.to_str().expect("utf-8 path")).load_full();
        state.store(reloaded);
        log.write("three\n".into());
        flush();
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two\n");
        assert_eq!(std::fs::read_to_string(&other).expect("read"), "three\n");
    }
}
