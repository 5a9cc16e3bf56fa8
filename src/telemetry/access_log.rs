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
//!
//! With `max_size` (SPEC §4) the writer rotates the file itself, between two lines:
//! `FILE` becomes `FILE.1` (`FILE.1` becomes `FILE.2`, …, up to `max_files`, the oldest
//! dropped) before a write would take it past the size. Only the writer thread writes
//! and renames, so no line is lost or split across files.

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

use crate::config::{LogFormat, LogTarget, Rotation};
use crate::state::{SharedState, Snapshot};
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
pub(crate) struct LogEntry<'a> {
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
    /// The request's trace id, when it has a span (JSON only).
    pub trace_id: Option<[u8; 16]>,
    /// `X-Request-ID` (JSON only).
    pub request_id: Option<&'a [u8]>,
    /// The stream fields of a stream's line (JSON only).
    pub stream: Option<super::stream::StreamReport>,
}

/// Formats one line, newline included.
fn format_line(out: &mut Vec<u8>, format: LogFormat, entry: &LogEntry<'_>, now: SystemTime) {
    match format {
        LogFormat::Main => format_main(out, entry, now),
        LogFormat::Json => format_json(out, entry, now),
    }
    out.push(b'\n');
}

/// nginx `log_format main`:
/// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
/// "$http_referer" "$http_user_agent" "$http_x_forwarded_for"`.
fn format_main(out: &mut Vec<u8>, e: &LogEntry<'_>, now: SystemTime) {
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
fn format_json(out: &mut Vec<u8>, e: &LogEntry<'_>, now: SystemTime) {
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
    let mut hex = [0; 32];
    let trace_id = e.trace_id.map(|id| {
        crate::text::put_hex(&mut hex, &id);
        &hex[..]
    });
    push_json_opt(out, trace_id);
    out.extend_from_slice(b",\"request_id\":");
    push_json_opt(out, e.request_id);
    if let Some(stream) = &e.stream {
        out.extend_from_slice(b",\"time_to_first_byte\":");
        match stream.time_to_first_byte {
            Some(t) => {
                let _ = write!(out, "{:.3}", t.as_secs_f64());
            }
            None => out.extend_from_slice(b"null"),
        }
        let _ = write!(
            out,
            ",\"sse_events\":{},\"stream_end\":\"{}\"",
            stream.events,
            stream.end.as_str()
        );
    }
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
struct LineQueue {
    /// Whole lines, newlines included, in the order they were queued.
    bytes: Vec<u8>,
    lines: usize,
    /// Where in `bytes` lines formatted under another config start: each run goes to
    /// the file (and rotation) of the config it was formatted with, so a reload that
    /// changes `access_log.path` or `format` never puts a line in the other file.
    segments: Vec<Segment>,
    /// Answered once every line queued before them is written ([`AccessLog::flush`]).
    acks: Vec<mpsc::Sender<()>>,
    /// `SIGUSR1`: reopen the file before writing what is pending.
    reopen: bool,
    /// The handle is gone: write what is pending and stop.
    closed: bool,
}

/// Lines of `bytes[start..]` (up to the next segment) were formatted under `snapshot`.
struct Segment {
    start: usize,
    snapshot: Arc<Snapshot>,
}

/// What [`LineQueue::append`] did with a line.
#[derive(Debug, PartialEq)]
enum Appended {
    /// The first line since the writer took the last batch: it may be parked.
    First,
    More,
    /// The queue is full.
    Dropped,
}

impl LineQueue {
    /// Appends a line formatted under `snapshot`; a new segment starts when it is not
    /// the config of the previous line (an `Arc` clone per batch and per reload).
    fn append(&mut self, line: &[u8], snapshot: &Arc<Snapshot>) -> Appended {
        if self.lines >= QUEUE_LINES || self.bytes.len() + line.len() > QUEUE_BYTES {
            return Appended::Dropped;
        }
        if !self
            .segments
            .last()
            .is_some_and(|s| Arc::ptr_eq(&s.snapshot, snapshot))
        {
            self.segments.push(Segment {
                start: self.bytes.len(),
                snapshot: snapshot.clone(),
            });
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
pub(crate) struct AccessLog {
    state: SharedState,
    pending: Arc<Mutex<LineQueue>>,
    writer: Thread,
}

/// The lock is only ever held to append or take bytes, never while formatting or writing,
/// so a panic cannot leave a line half-written in it.
fn lock(pending: &Mutex<LineQueue>) -> MutexGuard<'_, LineQueue> {
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
    pub(crate) fn start(state: SharedState) -> io::Result<AccessLog> {
        let pending = Arc::new(Mutex::new(LineQueue::default()));
        let output = Output::open(&state.load().config.access_log.target);
        let writer = Writer {
            state: state.clone(),
            pending: pending.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run(output))?;
        Ok(AccessLog {
            state,
            pending,
            writer: thread.thread().clone(),
        })
    }

    /// Whether the live config logs at all (`access_log.path` is not `"off"`).
    pub(crate) fn enabled(&self) -> bool {
        self.state.load().config.access_log.target != LogTarget::Off
    }

    /// Formats `entry` in the live config's format and queues the line, tagged with that
    /// config; never waits. A full queue drops the line and counts it.
    pub(crate) fn log(&self, entry: &LogEntry<'_>, now: SystemTime) {
        let live = self.state.load_full();
        let config = &live.config.access_log;
        if config.target == LogTarget::Off {
            return;
        }
        SCRATCH.with_borrow_mut(|line| {
            line.clear();
            format_line(line, config.format, entry, now);
            self.queue(line, &live);
            if line.capacity() > KEEP_SCRATCH_CAPACITY {
                *line = Vec::with_capacity(SCRATCH_CAPACITY);
            }
        });
    }

    /// Appends one whole line. Only the first line after the writer took the last batch
    /// wakes it; under load it is already awake, lingering.
    fn queue(&self, line: &[u8], snapshot: &Arc<Snapshot>) {
        let appended = lock(&self.pending).append(line, snapshot);
        match appended {
            Appended::First => self.writer.unpark(),
            Appended::More => {}
            Appended::Dropped => super::metrics::access_log_line_dropped(),
        }
    }

    /// Reopens the file (after logrotate moved it): `SIGUSR1`.
    pub(crate) fn reopen(&self) {
        lock(&self.pending).reopen = true;
        self.writer.unpark();
    }

    /// Waits until every line queued so far is written, or `deadline` passes.
    pub(crate) fn flush(&self, deadline: Instant) -> bool {
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
    pending: Arc<Mutex<LineQueue>>,
}

impl Writer {
    fn run(&self, mut output: Output) {
        let mut batch = Vec::new();
        let mut segments = Vec::new();
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
                std::mem::swap(&mut pending.segments, &mut segments);
                pending.lines = 0;
                acks.append(&mut pending.acks);
                (std::mem::take(&mut pending.reopen), pending.closed)
            };
            if reopen {
                output.reopen();
            }
            for (i, segment) in segments.iter().enumerate() {
                let end = segments.get(i + 1).map_or(batch.len(), |next| next.start);
                follow_config(&segment.snapshot, &mut output);
                output.write(&batch[segment.start..end]);
            }
            segments.clear();
            // a reload with no line since still moves the file (and closes the old one)
            follow_config(&self.state.load(), &mut output);
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
}

/// Switches the output to the file of `snapshot`'s `access_log.path`, and its rotation.
fn follow_config(snapshot: &Snapshot, output: &mut Output) {
    let config = &snapshot.config.access_log;
    if config.target != output.target {
        *output = Output::open(&config.target);
    }
    output.rotation = config.rotation;
}

/// Where lines go.
struct Output {
    target: LogTarget,
    sink: Sink,
    /// `max_size` / `max_files` of the live config (files only).
    rotation: Option<Rotation>,
    /// Bytes in the file: what it had when opened plus what was written since.
    size: u64,
}

enum Sink {
    Discard,
    Stdout(io::Stdout),
    File(File),
}

impl Output {
    fn open(target: &LogTarget) -> Output {
        let mut size = 0;
        let sink = match target {
            LogTarget::Off => Sink::Discard,
            LogTarget::Stdout => Sink::Stdout(io::stdout()),
            LogTarget::File(path) => match open_append(path) {
                Ok(file) => {
                    size = file.metadata().map_or(0, |m| m.len());
                    Sink::File(file)
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), "cannot open the access log: {e}");
                    Sink::Discard
                }
            },
        };
        Output {
            target: target.clone(),
            sink,
            rotation: None,
            size,
        }
    }

    fn reopen(&mut self) {
        if let LogTarget::File(path) = &self.target {
            tracing::info!(path = %path.display(), "reopening the access log");
            let target = self.target.clone();
            let rotation = self.rotation;
            *self = Output::open(&target);
            self.rotation = rotation;
        }
    }

    /// A batch of whole lines in one `write` (stdout: its lock held for the batch). With
    /// rotation, the batch is cut at the last line that fits and the file rotated before
    /// the rest: a file grows past `max_size` only by a single line longer than that.
    fn write(&mut self, mut batch: &[u8]) {
        while !batch.is_empty() {
            let take = match (self.rotation, &self.sink) {
                (Some(rotation), Sink::File(_)) => {
                    let room = rotation.max_size.saturating_sub(self.size);
                    match whole_lines_within(batch, room) {
                        0 if self.size > 0 => {
                            self.rotate(rotation);
                            continue;
                        }
                        // a line longer than max_size: a file of its own
                        0 => batch
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(batch.len(), |i| i + 1),
                        n => n,
                    }
                }
                _ => batch.len(),
            };
            let (now, rest) = batch.split_at(take);
            self.write_all(now);
            batch = rest;
        }
    }

    fn write_all(&mut self, bytes: &[u8]) {
        let result = match &mut self.sink {
            Sink::Discard => Ok(()),
            Sink::Stdout(w) => w.lock().write_all(bytes).and_then(|()| w.flush()),
            Sink::File(w) => w.write_all(bytes),
        };
        match result {
            Ok(()) => self.size += bytes.len() as u64,
            Err(e) => tracing::warn!("access log write failed: {e}"),
        }
    }

    /// `FILE.N-1` → `FILE.N` … `FILE` → `FILE.1` (the oldest dropped), then a new `FILE`.
    /// A rename that fails is logged and the file goes on growing: no line is lost.
    fn rotate(&mut self, rotation: Rotation) {
        let LogTarget::File(path) = &self.target else {
            return;
        };
        let path = path.clone();
        let numbered = |n: u32| {
            let mut name = path.clone().into_os_string();
            name.push(format!(".{n}"));
            std::path::PathBuf::from(name)
        };
        let mut result = Ok(());
        for n in (1..rotation.max_files).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => result = Err(e),
                _ => {}
            }
        }
        if result.is_ok() {
            result = std::fs::rename(&path, numbered(1));
        }
        match result {
            Ok(()) => {
                *self = Output::open(&self.target.clone());
                self.rotation = Some(rotation);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "access log rotation failed: {e}");
                // go on in the same file until the next rotation is due
                self.size = 0;
            }
        }
    }
}

/// The length of the longest run of whole lines at the start of `batch` within `room`
/// bytes.
fn whole_lines_within(batch: &[u8], room: u64) -> usize {
    let limit = batch.len().min(usize::try_from(room).unwrap_or(usize::MAX));
    batch[..limit]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1)
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use super::*;

    static CLIENT: LazyLock<IpText> = LazyLock::new(|| IpText::new([10, 1, 2, 3].into()));

    fn entry<'a>() -> LogEntry<'a> {
        LogEntry {
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
            trace_id: Some(0x0af7651916cd43dd8448eb211c80319c_u128.to_be_bytes()),
            request_id: Some(b"req-42"),
            stream: None,
        }
    }

    fn text_line(format: LogFormat, entry: &LogEntry<'_>, now: SystemTime) -> String {
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
        assert_eq!(v["request_id"], "req-42");
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
    fn rotation_cuts_between_lines_and_keeps_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.log");
        let mut output = Output::open(&LogTarget::File(path.clone()));
        output.rotation = Some(Rotation {
            max_size: 10,
            max_files: 2,
        });
        output.write(b"111\n222\n333\n");
        output.write(b"444\n");
        output.write(b"0123456789abc\n55\n");
        let read = |suffix: &str| {
            let mut name = path.clone().into_os_string();
            name.push(suffix);
            std::fs::read_to_string(name).ok()
        };
        assert_eq!(read("").as_deref(), Some("55\n"));
        assert_eq!(read(".1").as_deref(), Some("0123456789abc\n"));
        assert_eq!(read(".2").as_deref(), Some("333\n444\n"));
        assert_eq!(read(".3"), None, "max_files: the oldest is dropped");
        assert_eq!(whole_lines_within(b"ab\ncd\n", 4), 3);
        assert_eq!(whole_lines_within(b"ab\ncd\n", 2), 0);
    }

    #[test]
    fn the_queue_is_bounded_in_lines_and_bytes() {
        let snapshot = state_logging_to("off").load_full();
        let mut pending = LineQueue::default();
        assert_eq!(pending.append(b"a\n", &snapshot), Appended::First);
        assert_eq!(pending.append(b"b\n", &snapshot), Appended::More);
        for _ in 2..QUEUE_LINES {
            assert_eq!(pending.append(b"c\n", &snapshot), Appended::More);
        }
        assert_eq!(pending.append(b"d\n", &snapshot), Appended::Dropped);
        assert_eq!(pending.lines, QUEUE_LINES);
        assert!(pending.bytes.starts_with(b"a\nb\nc\n"));

        let mut pending = LineQueue::default();
        let long = vec![b'x'; QUEUE_BYTES / 2];
        assert_eq!(pending.append(&long, &snapshot), Appended::First);
        assert_eq!(pending.append(&long, &snapshot), Appended::More);
        assert_eq!(pending.append(b"\n", &snapshot), Appended::Dropped);
        assert_eq!(pending.bytes.len(), QUEUE_BYTES);
    }

    #[test]
    fn writer_appends_flushes_reopens_and_follows_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let state = state_logging_to(path.to_str().expect("utf-8 path"));
        let log = AccessLog::start(state.clone()).expect("start");
        let flush = || assert!(log.flush(Instant::now() + Duration::from_secs(5)));
        log.queue(b"one\n", &state.load_full());
        flush();
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "one\n");
        let rotated = dir.path().join("access.log.1");
        std::fs::rename(&path, &rotated).expect("rename");
        log.reopen();
        log.queue(b"two\n", &state.load_full());
        flush();
        assert_eq!(std::fs::read_to_string(&rotated).expect("read"), "one\n");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two\n");
        let other = dir.path().join("other.log");
        let reloaded = state_logging_to(other.to_str().expect("utf-8 path")).load_full();
        state.store(reloaded);
        log.queue(b"three\n", &state.load_full());
        flush();
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "two\n");
        assert_eq!(std::fs::read_to_string(&other).expect("read"), "three\n");
    }
}
