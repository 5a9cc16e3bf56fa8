//! Server-Sent Events: every chunk forwarded at once, no gzip, the SSE headers, the route
//! timeout between chunks, client disconnect reaching the upstream, streamed uploads.

use crate::common;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{channel_body, full, Backend, Proxy, Recorded, Route, TestConfig};
use bytes::Bytes;
use hyper::Response;

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

fn event_stream(body: common::Body) -> Response<common::Body> {
    Response::builder()
        .status(200)
        .header("Content-Type", "text/event-stream")
        .body(body)
        .expect("response")
}

/// `/events?n=N&every=MS`: N events MS apart, each stamped with its send time.
/// `/gap?ms=MS`: one event, a pause of MS, a second event.
/// `/forever`: an event every 100 ms until the client is gone (then `gone` is set).
async fn sse_backend(gone: Arc<Mutex<Option<Instant>>>) -> Backend {
    Backend::start(move |req: Recorded| {
        let gone = gone.clone();
        async move {
            let query: std::collections::HashMap<String, u64> = req
                .uri
                .split_once('?')
                .map(|(_, q)| q)
                .unwrap_or("")
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
                .collect();
            let (tx, body) = channel_body();
            let path = req.uri.split('?').next().unwrap_or("").to_owned();
            let is_upload = path == "/upload";
            tokio::spawn(async move {
                match path.as_str() {
                    "/events" => {
                        let every =
                            Duration::from_millis(query.get("every").copied().unwrap_or(300));
                        for seq in 0..query.get("n").copied().unwrap_or(5) {
                            let event = format!("id: {seq}\ndata: {}\n\n", now_ms());
                            if tx.send(Bytes::from(event)).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(every).await;
                        }
                    }
                    "/gap" => {
                        let _ = tx.send(Bytes::from("data: first\n\n")).await;
                        tokio::time::sleep(Duration::from_millis(
                            query.get("ms").copied().unwrap_or(0),
                        ))
                        .await;
                        let _ = tx.send(Bytes::from("data: second\n\n")).await;
                    }
                    _ => loop {
                        if tx.send(Bytes::from("data: tick\n\n")).await.is_err() {
                            *gone.lock().expect("lock") = Some(Instant::now());
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    },
                }
            });
            if is_upload {
                return Response::builder()
                    .status(200)
                    .body(full(format!("{} bytes", req.body.len())))
                    .expect("response");
            }
            event_stream(body)
        }
    })
    .await
}

fn config(backend: &Backend) -> TestConfig {
    TestConfig::new()
        .set("server.client_max_body_size", "20m")
        .set("gzip.enabled", true)
        .set("gzip.min_length", 1)
        .set("gzip.types", vec!["text/event-stream", "text/plain"])
        .upstream("workflow", [backend.addr])
        .route(
            Route::prefix("stream", "/")
                .to("workflow")
                .set("sse", true)
                .set("timeout", "3s"),
        )
}

struct Setup {
    backend: Backend,
    proxy: Proxy,
    gone: Arc<Mutex<Option<Instant>>>,
}

async fn setup(relay: bool) -> Setup {
    let gone = Arc::new(Mutex::new(None));
    let backend = sse_backend(gone.clone()).await;
    let proxy = Proxy::with_relay(relay, &config(&backend));
    Setup {
        backend,
        proxy,
        gone,
    }
}

async fn each_event_arrives_alone_and_at_once(relay: bool) {
    let s = setup(relay).await;
    let mut resp = common::client()
        .get(s.proxy.url("/events?n=5&every=300"))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    assert_eq!(resp.headers()["x-accel-buffering"], "no");
    assert!(
        resp.headers().get("content-encoding").is_none(),
        "an SSE stream was compressed"
    );
    let mut events = 0;
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        let arrived = now_ms();
        let text = String::from_utf8(chunk.to_vec()).expect("utf-8 event");
        assert_eq!(
            text.matches("data: ").count(),
            1,
            "events batched together: {text:?}"
        );
        let sent: u128 = text
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .and_then(|v| v.parse().ok())
            .expect("stamp");
        let delay = arrived.saturating_sub(sent);
        assert!(delay <= 50, "event {events} took {delay} ms");
        events += 1;
    }
    assert_eq!(events, 5);
    let upstream = s.backend.last();
    assert_eq!(upstream.header("x-accel-buffering"), Some("no"));
}

async fn an_idle_gap_shorter_than_the_timeout_survives(relay: bool) {
    let s = setup(relay).await;
    let resp = common::client()
        .get(s.proxy.url("/gap?ms=1000"))
        .send()
        .await
        .expect("request");
    let body = resp.text().await.expect("complete stream");
    assert_eq!(body, "data: first\n\ndata: second\n\n");
}

async fn an_idle_gap_longer_than_the_timeout_cuts_the_stream(relay: bool) {
    let s = setup(relay).await;
    let started = Instant::now();
    let mut resp = common::client()
        .get(s.proxy.url("/gap?ms=4000"))
        .send()
        .await
        .expect("request");
    let first = resp.chunk().await.expect("first chunk").expect("an event");
    assert_eq!(first.as_ref(), b"data: first\n\n");
    let mut rest = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(6), resp.chunk()).await {
            Ok(Ok(Some(chunk))) => rest.extend_from_slice(&chunk),
            Ok(Ok(None)) => panic!("the idle stream ended as if complete instead of cut"),
            Ok(Err(_)) => break, // cut: no terminating chunk (SPEC §3 "How a stream ends")
            Err(_) => panic!("the stream hung past the route timeout"),
        }
    }
    let took = started.elapsed();
    assert!(rest.is_empty(), "the late event came through: {rest:?}");
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(3900),
        "{took:?}"
    );
}

async fn client_going_away_closes_the_upstream_at_once(relay: bool) {
    let s = setup(relay).await;
    let mut resp = common::client()
        .get(s.proxy.url("/forever"))
        .send()
        .await
        .expect("request");
    for _ in 0..2 {
        resp.chunk().await.expect("chunk").expect("an event");
    }
    let closed = Instant::now();
    drop(resp);
    let gone = common::wait_until(Duration::from_secs(3), || {
        s.gone.lock().expect("lock").is_some()
    })
    .await;
    assert!(gone, "the upstream never saw the client leave");
    let after = s
        .gone
        .lock()
        .expect("lock")
        .map(|t| t.duration_since(closed))
        .unwrap_or_default();
    assert!(
        after < Duration::from_secs(1),
        "the upstream saw EOF after {after:?}"
    );
}

async fn large_chunked_upload_arrives_intact(relay: bool) {
    let s = setup(relay).await;
    let payload: Vec<u8> = (0..(3 << 20)).map(|i| (i % 251) as u8).collect();
    let chunks: Vec<Result<Bytes, std::io::Error>> = payload
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let resp = common::client()
        .post(s.proxy.url("/upload"))
        .body(body)
        .send()
        .await
        .expect("upload");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.text().await.expect("body"),
        format!("{} bytes", payload.len())
    );
    let seen = s.backend.last();
    assert_eq!(seen.header("transfer-encoding"), Some("chunked"));
    assert!(
        seen.body.as_ref() == payload.as_slice(),
        "the body changed on the way"
    );
}

/// Reads from `stream` until `until` has come, within 5 s; returns all that was read.
async fn read_until(stream: &mut tokio::net::TcpStream, until: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains(until) {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the answer stalled")
            .expect("read");
        assert!(
            n > 0,
            "closed before {until:?}: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// A client waiting for `100 Continue` gets it from the proxy at once (as from nginx), not
/// after its own timeout; the upstream, which gets the body streamed, is not asked.
async fn a_client_expecting_100_continue_is_told_to_go_on(relay: bool) {
    use tokio::io::AsyncWriteExt;
    let s = setup(relay).await;
    let mut client = tokio::net::TcpStream::connect(s.proxy.addr)
        .await
        .expect("connect");
    client
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .await
        .expect("request header");
    // curl sends its body anyway after 1 s: the interim answer must come before that.
    let interim = tokio::time::timeout(
        Duration::from_millis(900),
        read_until(&mut client, "\r\n\r\n"),
    )
    .await
    .expect("no 100 Continue within 0.9 s");
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    client.write_all(b"hello").await.expect("body");
    let answer = read_until(&mut client, "5 bytes").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = s.backend.last();
    assert_eq!(seen.body.as_ref(), b"hello");
    assert_eq!(seen.header("expect"), None, "the upstream was asked too");
}

async fn upstream_dying_mid_stream_ends_the_client_stream_and_is_logged(relay: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw upstream: one event of a chunked SSE response, then the connection drops.
    let addr = common::raw_upstream(|mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(b"d\r\ndata: first\n\n\r\n").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let proxy = Proxy::with_relay(relay, &common::sse_route_to("dying", addr));
    let mut resp = common::client()
        .get(proxy.url("/x"))
        .send()
        .await
        .expect("request");
    let first = resp.chunk().await.expect("first").expect("an event");
    assert_eq!(first.as_ref(), b"data: first\n\n");
    let end = tokio::time::timeout(Duration::from_secs(5), resp.chunk()).await;
    assert!(
        end.is_ok(),
        "the client stream hung after the upstream died"
    );
    let logged = proxy.logged_error(&["dying", "workflow"]).await;
    assert!(
        logged,
        "no error line with route and upstream: {}",
        proxy.stderr()
    );
}

async fn client_leaving_before_the_answer_starts_closes_the_upstream_at_once(relay: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw upstream that reads the request and never answers (a model slow to its first
    // token), and notes when the request came and when the proxy closed the connection.
    let reached = Arc::new(Mutex::new(None));
    let closed_at = Arc::new(Mutex::new(None));
    let (reached_by, closed_by) = (reached.clone(), closed_at.clone());
    let addr = common::raw_upstream(move |mut stream| {
        let (reached_by, closed_by) = (reached_by.clone(), closed_by.clone());
        async move {
            let mut buf = [0u8; 4096];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                *reached_by.lock().expect("lock") = Some(Instant::now());
            }
            *closed_by.lock().expect("lock") = Some(Instant::now());
        }
    })
    .await;
    let proxy = Proxy::with_relay(relay, &common::sse_route_to("slow", addr));
    let mut client = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    client
        .write_all(b"GET /chat HTTP/1.1\r\nHost: edge\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .expect("request");
    let forwarded = common::wait_until(Duration::from_secs(3), || {
        reached.lock().expect("lock").is_some()
    })
    .await;
    assert!(forwarded, "the request never reached the upstream");
    let left = Instant::now();
    drop(client);
    let closed = common::wait_until(Duration::from_secs(3), || {
        closed_at.lock().expect("lock").is_some()
    })
    .await;
    assert!(closed, "the upstream connection outlived the client");
    let after = closed_at
        .lock()
        .expect("lock")
        .map(|t| t.duration_since(left))
        .unwrap_or_default();
    assert!(after < Duration::from_secs(1), "closed after {after:?}");
}

/// Reads one chunked HTTP/1.1 response from `stream`: its head and body up to the
/// terminating chunk.
async fn read_chunked_response(stream: &mut tokio::net::TcpStream) -> String {
    read_until(stream, "\r\n0\r\n\r\n").await
}

async fn the_connection_stays_open_for_the_next_request_after_a_stream(relay: bool) {
    use tokio::io::AsyncWriteExt;
    let s = setup(relay).await;
    let mut client = tokio::net::TcpStream::connect(s.proxy.addr)
        .await
        .expect("connect");
    for round in 0..3 {
        client
            .write_all(b"GET /events?n=2&every=20 HTTP/1.1\r\nHost: edge\r\n\r\n")
            .await
            .expect("request");
        let response = read_chunked_response(&mut client).await;
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "round {round}: {response}"
        );
        assert_eq!(
            response.matches("data: ").count(),
            2,
            "round {round}: {response}"
        );
        assert!(
            !response.to_ascii_lowercase().contains("connection: close"),
            "round {round} closes the connection: {response}"
        );
    }
}

/// The headers of the client's connection stay on it, on SSE routes as on the others.
async fn hop_by_hop_headers_are_not_forwarded(relay: bool) {
    let s = setup(relay).await;
    let upstream = Backend::start(|_req: Recorded| async { Response::new(full("ok")) }).await;
    let proxy = Proxy::with_relay(
        relay,
        &TestConfig::new()
            .upstream("sse", [s.backend.addr])
            .upstream("plain", [upstream.addr])
            .route(
                Route::prefix("stream", "/events")
                    .to("sse")
                    .set("sse", true),
            )
            .route(Route::prefix("plain", "/").to("plain")),
    );
    for (path, backend) in [("/events?n=1", &s.backend), ("/plain", &upstream)] {
        let resp = common::client()
            .get(proxy.url(path))
            .header("Connection", "keep-alive, X-Drop-Me")
            .header("X-Drop-Me", "1")
            .header("Keep-Alive", "timeout=5")
            .header("TE", "trailers")
            .header("Proxy-Authorization", "Basic c2VjcmV0OnNlY3JldA==")
            .header("X-Kept", "1")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{path}");
        if let Err(e) = resp.bytes().await {
            panic!("{path}: {e:?}");
        }
        let seen = backend.last();
        for dropped in ["x-drop-me", "keep-alive", "te", "proxy-authorization"] {
            assert_eq!(seen.header(dropped), None, "{path} forwarded {dropped}");
        }
        assert_eq!(seen.header("x-kept"), Some("1"), "{path}");
    }
}

async fn interim_answers_before_the_stream_are_not_relayed(relay: bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A raw upstream: 103 Early Hints, then the stream: one event and its end.
    let addr = common::raw_upstream(|mut stream| async move {
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        let answer = "HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n\
                      HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                      Transfer-Encoding: chunked\r\n\r\nd\r\ndata: first\n\n\r\n0\r\n\r\n";
        let _ = stream.write_all(answer.as_bytes()).await;
    })
    .await;
    let proxy = Proxy::with_relay(relay, &common::sse_route_to("hints", addr));
    let resp = common::client()
        .get(proxy.url("/chat"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.text().await.expect("body"), "data: first\n\n");
}

/// SPEC §4: an SSE request is logged when its stream ends, with the bytes actually sent.
async fn a_stream_is_logged_when_it_ends_with_the_bytes_sent(relay: bool) {
    let gone = Arc::new(Mutex::new(None));
    let backend = sse_backend(gone).await;
    let proxy = Proxy::with_relay(
        relay,
        &TestConfig::new()
            .set("access_log.path", "access.log")
            .set("access_log.format", "json")
            .upstream("workflow", [backend.addr])
            .route(Route::prefix("stream", "/").to("workflow").set("sse", true)),
    );
    let log = proxy.dir().join("access.log");
    let lines = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let mut resp = common::client()
        .get(proxy.url("/events?n=3&every=300"))
        .send()
        .await
        .expect("request");
    let mut body = Vec::new();
    for _ in 0..2 {
        body.extend_from_slice(&resp.chunk().await.expect("chunk").expect("an event"));
    }
    // The stream still runs, 300 ms after its first event: a line logged at its start
    // would be on disk by now (the writer lingers 10 ms).
    assert!(lines().is_empty(), "logged before the end: {:?}", lines());
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        body.extend_from_slice(&chunk);
    }
    let logged = common::wait_until(Duration::from_secs(5), || lines().len() == 1).await;
    assert!(logged, "no line after the stream ended: {:?}", lines());
    let line: serde_json::Value = serde_json::from_str(&lines()[0]).expect("json line");
    assert_eq!(line["route"], "stream");
    assert_eq!(line["status"], 200);
    assert_eq!(line["body_bytes_sent"], body.len());
}

crate::on_both_paths!(
    each_event_arrives_alone_and_at_once,
    an_idle_gap_shorter_than_the_timeout_survives,
    an_idle_gap_longer_than_the_timeout_cuts_the_stream,
    client_going_away_closes_the_upstream_at_once,
    large_chunked_upload_arrives_intact,
    upstream_dying_mid_stream_ends_the_client_stream_and_is_logged,
    client_leaving_before_the_answer_starts_closes_the_upstream_at_once,
    the_connection_stays_open_for_the_next_request_after_a_stream,
    hop_by_hop_headers_are_not_forwarded,
    interim_answers_before_the_stream_are_not_relayed,
    a_stream_is_logged_when_it_ends_with_the_bytes_sent,
);

/// The relay only: Pingora's pipeline passes `Expect` on to the upstream, which answers `100 Continue` itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_expecting_100_continue_is_told_to_go_on_on_the_relay() {
    a_client_expecting_100_continue_is_told_to_go_on(true).await
}
