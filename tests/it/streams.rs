//! Streams that tell the truth (SPEC §3 "Streams on any route", "How a stream ends",
//! "Heartbeats", "Pooled upstream connections", "Body size"; §4 and §5 stream fields):
//! raw client bytes against hand-made upstreams, on the relay and in Pingora's pipeline.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::Response;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{self, channel_body, Backend, Proxy, Route, TestConfig};

const EVENT_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                          Transfer-Encoding: chunked\r\n\r\n";

/// The request line's path of the request head read from `stream`; `None` at its close.
async fn read_request(stream: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    head.split_whitespace().nth(1).map(str::to_owned)
}

/// What the upstream read from the proxy after the request head of `/quiet`.
type Seen = Arc<Mutex<Vec<u8>>>;

/// `/clean`: two events and the terminating chunk. `/dies`: one event, then the upstream
/// closes. `/reset`: one event, then a TCP reset. `/idle`: one event, then silence.
/// `/quiet`: one event, 1.2 s of silence (recording anything the proxy sends meanwhile),
/// a second event and the end. `/zero`: `Content-Length: 0`, the connection kept.
async fn stream_upstream(seen: Seen) -> SocketAddr {
    common::raw_upstream(move |mut stream| {
        let seen = seen.clone();
        async move {
            while let Some(path) = read_request(&mut stream).await {
                let event = b"d\r\ndata: first\n\n\r\n";
                match path.as_str() {
                    "/zero" => {
                        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                                    Content-Length: 0\r\n\r\n";
                        let _ = stream.write_all(head.as_bytes()).await;
                        continue;
                    }
                    "/clean" => {
                        let _ = stream.write_all(EVENT_HEAD.as_bytes()).await;
                        let _ = stream.write_all(event).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let _ = stream
                            .write_all(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
                            .await;
                        continue;
                    }
                    "/quiet" => {
                        let _ = stream.write_all(EVENT_HEAD.as_bytes()).await;
                        let _ = stream.write_all(event).await;
                        let mut buf = [0u8; 64];
                        let quiet = Duration::from_millis(1200);
                        if let Ok(Ok(n)) = tokio::time::timeout(quiet, stream.read(&mut buf)).await
                        {
                            seen.lock()
                                .expect("lock")
                                .extend_from_slice(&buf[..n.max(1)]);
                        }
                        let _ = stream
                            .write_all(b"e\r\ndata: second\n\n\r\n0\r\n\r\n")
                            .await;
                        continue;
                    }
                    _ => {}
                }
                let _ = stream.write_all(EVENT_HEAD.as_bytes()).await;
                let _ = stream.write_all(event).await;
                match path.as_str() {
                    "/reset" => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    }
                    "/idle" => tokio::time::sleep(Duration::from_secs(5)).await,
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
                return;
            }
        }
    })
    .await
}

struct Setup {
    proxy: Proxy,
    metrics: SocketAddr,
    log: std::path::PathBuf,
    seen: Seen,
}

/// The proxy with the sse route `s` (`timeout = "2s"`, heartbeats every 300 ms) on the
/// stream upstream, its JSON access log and metrics.
async fn setup(relay: bool) -> Setup {
    let seen = Seen::default();
    let upstream = stream_upstream(seen.clone()).await;
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let log = dir.join("access.log");
    let proxy = Proxy::with_relay(
        relay,
        &TestConfig::new()
            .set("access_log.path", log.display().to_string())
            .set("access_log.format", "json")
            .set("metrics.listen", metrics.to_string())
            .upstream("up", [upstream])
            .route(
                Route::prefix("s", "/")
                    .to("up")
                    .set("sse", true)
                    .set("timeout", "2s")
                    .set("sse_heartbeat", "300ms"),
            ),
    );
    Setup {
        proxy,
        metrics,
        log,
        seen,
    }
}

/// Sends `GET path` with `Connection: close` and reads the raw answer to the close.
async fn raw_get(proxy: &Proxy, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n");
    common::raw_request(proxy.addr, request.as_bytes()).await
}

/// The access-log lines (JSON) of requests to `path`, once there are `n`.
async fn log_lines(log: &std::path::Path, path: &str, n: usize) -> Vec<serde_json::Value> {
    let read = || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["path"] == path)
            .collect::<Vec<_>>()
    };
    common::wait_until(Duration::from_secs(5), || read().len() >= n).await;
    read()
}

/// Scrapes until `series` has `want` (bounded), and returns that scrape.
async fn scrape_until(metrics: SocketAddr, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = common::metrics_text(metrics).await;
        if value(&text, series) == Some(want) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the series whose line starts with `series` (name and labels, as printed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

async fn clean_ends_carry_the_terminating_chunk_and_cuts_do_not(relay: bool) {
    let s = setup(relay).await;
    let clean = raw_get(&s.proxy, "/clean").await;
    assert!(clean.starts_with("HTTP/1.1 200"), "{clean}");
    assert!(
        clean.ends_with("0\r\n\r\n"),
        "a clean end without its end: {clean:?}"
    );
    for cut in ["/dies", "/reset", "/idle"] {
        let started = Instant::now();
        // Kept alive: a cut must close the connection (or the client would wait on).
        let request = format!("GET {cut} HTTP/1.1\r\nHost: edge\r\n\r\n");
        let answer = common::raw_request(s.proxy.addr, request.as_bytes()).await;
        assert!(answer.contains("data: first"), "{cut}: {answer:?}");
        assert!(
            !answer.contains("0\r\n\r\n"),
            "{cut}: a cut stream looks finished: {answer:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(4), "{cut}: not cut");
    }
    let ends = [
        ("/clean", "complete"),
        ("/dies", "upstream_error"),
        ("/reset", "upstream_error"),
        ("/idle", "idle_timeout"),
    ];
    for (path, end) in ends {
        let lines = log_lines(&s.log, path, 1).await;
        let line = lines
            .first()
            .unwrap_or_else(|| panic!("no log line for {path}"));
        assert_eq!(line["stream_end"], end, "{path}: {line}");
        assert_eq!(
            line["sse_events"],
            if path == "/clean" { 2 } else { 1 },
            "{line}"
        );
        let ttfb = line["time_to_first_byte"]
            .as_f64()
            .expect("a time to first byte");
        assert!((0.0..2.0).contains(&ttfb), "{line}");
    }
    let text = scrape_until(
        s.metrics,
        "edge_sse_streams_total{end=\"idle_timeout\",route=\"s\"}",
        1.0,
    )
    .await;
    for (end, n) in [
        ("complete", 1.0),
        ("upstream_error", 2.0),
        ("idle_timeout", 1.0),
    ] {
        let series = format!("edge_sse_streams_total{{end=\"{end}\",route=\"s\"}}");
        assert_eq!(value(&text, &series), Some(n), "{series}\n{text}");
    }
    let events = value(&text, "edge_sse_events_total{route=\"s\"}");
    assert_eq!(events, Some(5.0), "{text}");
    let ttfb = value(
        &text,
        "edge_sse_time_to_first_byte_seconds_count{route=\"s\"}",
    );
    assert_eq!(ttfb, Some(4.0), "{text}");
    let durations = value(&text, "edge_sse_stream_duration_seconds_count{route=\"s\"}");
    assert_eq!(durations, Some(4.0), "{text}");
    assert_eq!(
        value(&text, "edge_sse_streams_active{route=\"s\"}"),
        Some(0.0)
    );
}

/// Opens `GET /idle` on a raw connection and reads until its first event has arrived:
/// the connection, and the bytes read so far.
async fn open_idle_stream(proxy: SocketAddr) -> (TcpStream, Vec<u8>) {
    let mut client = TcpStream::connect(proxy).await.expect("connect");
    client
        .write_all(b"GET /idle HTTP/1.1\r\nHost: edge\r\n\r\n")
        .await
        .expect("request");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("data: first") {
        let n = client.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    (client, seen)
}

async fn a_client_leaving_is_reported_as_client_closed(relay: bool) {
    let s = setup(relay).await;
    let (client, _) = open_idle_stream(s.proxy.addr).await;
    drop(client);
    let lines = log_lines(&s.log, "/idle", 1).await;
    assert_eq!(lines[0]["stream_end"], "client_closed", "{}", lines[0]);
}

async fn content_length_zero_completes_and_the_connection_goes_on(relay: bool) {
    let s = setup(relay).await;
    let mut client = TcpStream::connect(s.proxy.addr).await.expect("connect");
    for round in 0..2 {
        client
            .write_all(b"GET /zero HTTP/1.1\r\nHost: edge\r\n\r\n")
            .await
            .expect("request");
        let head = tokio::time::timeout(Duration::from_secs(3), read_request(&mut client)).await;
        assert!(
            matches!(head, Ok(Some(_))),
            "round {round}: no answer on the kept connection"
        );
    }
    let lines = log_lines(&s.log, "/zero", 2).await;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["stream_end"], "complete");
    let text = common::metrics_text(s.metrics).await;
    assert_eq!(
        value(&text, "edge_sse_streams_active{route=\"s\"}"),
        Some(0.0)
    );
    assert_eq!(
        value(&text, "edge_http_requests_in_flight{route=\"s\"}"),
        Some(0.0)
    );
}

/// Heartbeats reach the client of a quiet stream, never the upstream, and do not keep a
/// stream past the route timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_fill_a_quiet_stream_and_the_upstream_sees_nothing() {
    let s = setup(true).await;
    let quiet = raw_get(&s.proxy, "/quiet").await;
    let (_, body) = quiet.split_once("\r\n\r\n").expect("head and body");
    let beats = body.matches("3\r\n:\n\n\r\n").count();
    assert!(beats >= 2, "no heartbeats in the gap: {body:?}");
    assert!(body.ends_with("0\r\n\r\n"), "{body:?}");
    assert!(
        s.seen.lock().expect("lock").is_empty(),
        "the upstream saw heartbeats"
    );
    let lines = log_lines(&s.log, "/quiet", 1).await;
    assert_eq!(lines[0]["sse_events"], 2, "heartbeats counted as events");
    let started = Instant::now();
    let idle = raw_get(&s.proxy, "/idle").await;
    assert!(idle.contains("3\r\n:\n\n\r\n"), "{idle:?}");
    assert!(!idle.contains("0\r\n\r\n"), "{idle:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "heartbeats kept the idle stream"
    );
}

/// An event stream on a plain route arrives event by event, uncompressed, and is reported.
async fn an_event_stream_on_a_plain_route_flows_uncompressed(relay: bool) {
    let next = Arc::new(tokio::sync::Notify::new());
    let notify = next.clone();
    let backend = Backend::start(move |_| {
        let notify = notify.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let _ = tx
                    .send(Bytes::from(format!("data: {}\n\n", "x".repeat(2000))))
                    .await;
                notify.notified().await;
                let _ = tx.send(Bytes::from("data: second\n\n")).await;
            });
            Response::builder()
                .header("Content-Type", "text/event-stream")
                .body(body)
                .expect("response")
        }
    })
    .await;
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let proxy = Proxy::with_relay(
        relay,
        &TestConfig::new()
            .set("metrics.listen", metrics.to_string())
            .set("gzip.enabled", true)
            .set("gzip.min_length", 1)
            .set("gzip.types", vec!["text/event-stream", "text/plain"])
            .upstream("hub", [backend.addr])
            .route(Route::prefix("console-api", "/console-api/").to("hub")),
    );
    let mut resp = common::client()
        .get(proxy.url("/console-api/workflow/resume"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.headers().get("content-encoding"), None);
    let first = tokio::time::timeout(Duration::from_secs(3), resp.chunk())
        .await
        .expect("the first event was held back")
        .expect("chunk")
        .expect("an event");
    assert!(first.starts_with(b"data: xxx"), "{first:?}");
    next.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        rest.extend_from_slice(&chunk);
    }
    assert!(rest.ends_with(b"data: second\n\n"), "{rest:?}");
    let series = "edge_sse_streams_total{end=\"complete\",route=\"console-api\"}";
    let text = scrape_until(metrics, series, 1.0).await;
    assert_eq!(
        value(&text, "edge_sse_events_total{route=\"console-api\"}"),
        Some(2.0)
    );
}

/// An upstream that closes a connection idle for `idle`, as uvicorn does (5 s), with the
/// race made certain: a request that arrives on a kept connection after about `idle`
/// finds it closing (it is read, and the connection closes without an answer).
async fn closing_upstream(idle: Duration) -> SocketAddr {
    common::raw_upstream(move |mut stream| async move {
        let mut served = 0;
        loop {
            let waiting = Instant::now();
            let limit = idle + Duration::from_millis(500);
            let Ok(Some(path)) = tokio::time::timeout(limit, read_request(&mut stream)).await
            else {
                return; // idle too long (or closed): close
            };
            if served > 0 && waiting.elapsed() >= idle.saturating_sub(Duration::from_millis(300)) {
                return; // closed just as the proxy reused it
            }
            // POST bodies here are 4 bytes (`Content-Length: 4`).
            if path.starts_with("/post") {
                let mut body = [0u8; 4];
                if stream.read_exact(&mut body).await.is_err() {
                    return;
                }
            }
            let answer =
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok";
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            served += 1;
        }
    })
    .await
}

async fn requests_on_connections_the_upstream_closes_idle_do_not_fail(relay: bool) {
    let idle = Duration::from_secs(1);
    let upstream = closing_upstream(idle).await;
    let proxy = Proxy::with_relay(relay, &common::sse_route_to("pooled", upstream));
    let client = common::client();
    for round in 0..6 {
        let resp = if round % 2 == 0 {
            client.get(proxy.url("/get")).send().await
        } else {
            client.post(proxy.url("/post")).body("abcd").send().await
        }
        .expect("an answer");
        assert_eq!(resp.status(), 200, "round {round}");
        assert_eq!(resp.text().await.expect("body"), "ok", "round {round}");
        // The scenario: the next request comes exactly as the upstream closes.
        tokio::time::sleep(idle).await;
    }
}

/// `Expect: 100-continue` and a chunked body growing past the limit: 413, logged as 413.
async fn an_expected_chunked_body_over_the_limit_gets_413(relay: bool) {
    let backend = Backend::echo().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    let proxy = Proxy::with_relay(
        relay,
        &TestConfig::new()
            .set("server.client_max_body_size", "1k")
            .set("access_log.path", log.display().to_string())
            .set("access_log.format", "json")
            .upstream("workflow", [backend.addr])
            .route(Route::prefix("up", "/").to("workflow").set("sse", true)),
    );
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .expect("header");
    let chunk = format!("200\r\n{}\r\n", "y".repeat(0x200));
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..8 {
        if client.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(50), client.read(&mut buf)).await
        {
            answer.extend_from_slice(&buf[..n]);
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(n) = client.read(&mut buf).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.contains("HTTP/1.1 413"), "{answer:?}");
    let lines = log_lines(&log, "/upload", 1).await;
    assert_eq!(lines[0]["status"], 413, "{}", lines[0]);
    assert!(
        backend.requests().is_empty(),
        "the upstream got a complete request"
    );
}

/// At shutdown, a relayed stream still running when the grace period ends is cut and
/// reported as `shutdown`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_by_the_shutdown_is_reported() {
    let upstream = stream_upstream(Seen::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("access.log");
    // A route timeout past the grace period (2 s, see `Proxy::with`).
    let mut proxy = Proxy::with(
        &TestConfig::new()
            .set("access_log.path", log.display().to_string())
            .set("access_log.format", "json")
            .upstream("up", [upstream])
            .route(
                Route::prefix("s", "/")
                    .to("up")
                    .set("sse", true)
                    .set("timeout", "30s"),
            ),
    );
    let (mut client, mut seen) = open_idle_stream(proxy.addr).await;
    let mut buf = [0u8; 1024];
    proxy.signal("TERM");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(n) = client.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(proxy.wait_exit(Duration::from_secs(5)).is_some(), "no exit");
    let seen = String::from_utf8_lossy(&seen);
    assert!(
        !seen.contains("0\r\n\r\n"),
        "the cut stream looks finished: {seen:?}"
    );
    let lines = log_lines(&log, "/idle", 1).await;
    assert_eq!(
        lines.first().map(|l| l["stream_end"].clone()),
        Some("shutdown".into())
    );
}

crate::on_both_paths!(
    clean_ends_carry_the_terminating_chunk_and_cuts_do_not,
    a_client_leaving_is_reported_as_client_closed,
    content_length_zero_completes_and_the_connection_goes_on,
    an_event_stream_on_a_plain_route_flows_uncompressed,
    requests_on_connections_the_upstream_closes_idle_do_not_fail,
    an_expected_chunked_body_over_the_limit_gets_413,
);

/// Over HTTP/2 (TLS, ALPN), a clean end is the stream's end and a cut is a stream reset:
/// the client's body read fails instead of ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_see_a_reset_for_each_cut_and_an_end_for_a_clean_end() {
    let certified = rcgen::generate_simple_self_signed(vec!["edge.test".to_owned()])
        .expect("self-signed certificate");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("cert");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("key");
    let upstream = stream_upstream(Seen::default()).await;
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let proxy = Proxy::with(
        &TestConfig::new()
            .tls(tls_addr, &cert, &key)
            .upstream("up", [upstream])
            .route(
                Route::prefix("s", "/")
                    .to("up")
                    .set("sse", true)
                    .set("timeout", "1s"),
            ),
    );
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .resolve("edge.test", tls_addr)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    for (path, clean) in [
        ("/clean", true),
        ("/dies", false),
        ("/reset", false),
        ("/idle", false),
    ] {
        let url = format!("https://edge.test:{}{path}", tls_addr.port());
        let mut resp = client.get(url).send().await.expect("answer");
        assert_eq!(resp.version(), reqwest::Version::HTTP_2, "{path}");
        let mut body = Vec::new();
        let ended = loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break true,
                Err(_) => break false,
            }
        };
        assert!(body.starts_with(b"data: first\n\n"), "{path}: {body:?}");
        assert_eq!(ended, clean, "{path}: clean end {ended}, expected {clean}");
    }
    drop(proxy);
}

/// A stream's span carries its time to first byte, events and end (SPEC §6).
async fn a_stream_span_carries_its_ttfb_events_and_end(relay: bool) {
    use crate::telemetry_otlp::{attributes, start_collector, wait_for_span, FAST_EXPORT};
    let (collector, collector_addr) = start_collector().await;
    let upstream = stream_upstream(Seen::default()).await;
    let proxy = Proxy::with_listener(
        &TestConfig::new()
            .set("server.sse_relay", relay)
            .set("telemetry.enabled", true)
            .set("telemetry.endpoint", format!("http://{collector_addr}"))
            .upstream("up", [upstream])
            .route(
                Route::prefix("traced", "/")
                    .to("up")
                    .set("sse", true)
                    .set("timeout", "1s"),
            ),
        FAST_EXPORT,
    );
    raw_get(&proxy, "/clean").await;
    let span = wait_for_span(&collector, "GET traced").await;
    let attrs = attributes(&span.span.attributes);
    assert_eq!(
        attrs.get("edge.stream.end").map(String::as_str),
        Some("complete"),
        "{attrs:?}"
    );
    assert_eq!(
        attrs.get("edge.stream.events").map(String::as_str),
        Some("2"),
        "{attrs:?}"
    );
    let ttfb: f64 = attrs
        .get("edge.stream.time_to_first_byte")
        .and_then(|v| v.parse().ok())
        .expect("a time to first byte");
    assert!((0.0..2.0).contains(&ttfb), "{ttfb}");
}

crate::on_both_paths!(a_stream_span_carries_its_ttfb_events_and_end);

/// `sse_heartbeat` is checked where it is written: only on `sse` routes, within bounds.
#[test]
fn sse_heartbeat_is_validated_at_its_position() {
    let route = "[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"r\"\n\
                 prefix = \"/\"\nupstream = \"app\"\n";
    for (extra, needle) in [
        ("sse_heartbeat = \"15s\"\n", "needs sse = true"),
        (
            "sse = true\nsse_heartbeat = \"10ms\"\n",
            "between 100ms and 1h",
        ),
        (
            "sse = true\nsse_heartbeat = \"2h\"\n",
            "between 100ms and 1h",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("edge.toml");
        std::fs::write(&path, format!("{route}{extra}")).expect("config");
        let out = std::process::Command::new(common::binary())
            .arg("check")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "accepted: {extra}");
        let line = extra.lines().count() + 6;
        let at = format!("{}:{line}:17: ", path.display());
        assert!(
            stderr.starts_with(&at) && stderr.contains(needle),
            "{extra}: {stderr}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edge.toml");
    let config =
        format!("[server]\nsse_relay = false\n{route}sse = true\nsse_heartbeat = \"15s\"\n");
    std::fs::write(&path, config).expect("config");
    let out = std::process::Command::new(common::binary())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
