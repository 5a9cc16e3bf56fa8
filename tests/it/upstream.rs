//! Upstream failures and bad input: 502 / 504 with one error line, retry to the next
//! server, upstreams that appear after the proxy, 413 both ways, malformed requests.

use crate::common;
use std::fmt::Display;
use std::time::{Duration, Instant};

use crate::common::{free_port, raw_request, text_response, Backend, Proxy, Route, TestConfig};

/// The upstream `app` on `servers` behind `route`, with a security header on every answer.
fn proxied<A: Display>(servers: impl IntoIterator<Item = A>, route: Route) -> TestConfig {
    TestConfig::new()
        .set("response_headers.X-Frame-Options", "SAMEORIGIN")
        .upstream("app", servers)
        .set("upstreams.app.connect_timeout", "2s")
        .route(route)
}

/// The route every test here uses; `sse` picks the way to the upstream.
fn app_route(sse: bool) -> Route {
    Route::prefix("app-route", "/").to("app").set("sse", sse)
}

/// Both ways a request reaches its upstream: Pingora's pipeline, and the relay of SSE routes.
const SSE_OR_NOT: [bool; 2] = [false, true];

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_port_is_502_with_one_error_line() {
    for sse in SSE_OR_NOT {
        let port = free_port();
        let proxy = Proxy::with(&proxied([format!("127.0.0.1:{port}")], app_route(sse)));
        let resp = common::client()
            .get(proxy.url("/x"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 502, "sse={sse}");
        assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
        assert_eq!(resp.headers()["x-frame-options"], "SAMEORIGIN");
        let body = resp.text().await.expect("body");
        assert!(
            body.len() < 64 && body.contains("502"),
            "sse={sse}: {body:?}"
        );
        let found = proxy.logged_error(&["app-route", "app"]).await;
        assert!(
            found,
            "sse={sse}: no error line with route and upstream: {}",
            proxy.stderr()
        );
        let lines = proxy
            .stderr()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .count();
        assert_eq!(lines, 1, "sse={sse}: {}", proxy.stderr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_at_the_route_timeout() {
    let backend = Backend::start(|_| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        text_response(200, "late")
    })
    .await;
    for sse in SSE_OR_NOT {
        let proxy = Proxy::with(&proxied(
            [backend.addr],
            app_route(sse).set("timeout", "1s"),
        ));
        let started = Instant::now();
        let resp = common::client()
            .get(proxy.url("/slow"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 504, "sse={sse}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "sse={sse}: {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_retries_the_next_server() {
    let backend = Backend::echo().await;
    let dead = free_port();
    for sse in SSE_OR_NOT {
        let proxy = Proxy::with(&proxied(
            [format!("127.0.0.1:{dead}"), backend.addr.to_string()],
            app_route(sse),
        ));
        for i in 0..6 {
            let resp = common::client()
                .get(proxy.url(&format!("/r{i}")))
                .send()
                .await
                .expect("request");
            assert_eq!(resp.status(), 200, "sse={sse}: request {i}");
        }
    }
    assert_eq!(backend.count(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests() {
    let a = Backend::echo().await;
    let b = Backend::echo().await;
    let proxy = Proxy::with(&proxied([a.addr, b.addr], app_route(false)));
    for _ in 0..10 {
        let resp = common::client()
            .get(proxy.url("/"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(a.count(), 5);
    assert_eq!(b.count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_starts_later_is_served_without_restart() {
    let port = free_port();
    let proxy = Proxy::with(&proxied([format!("localhost:{port}")], app_route(false)));
    let resp = common::client()
        .get(proxy.url("/early"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 502);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind late");
    let backend = Backend::serve(listener, |r| async move { text_response(200, &r.uri) });
    let resp = common::client()
        .get(proxy.url("/late"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.last().uri, "/late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_name_is_followed_once_it_resolves() {
    let backend = Backend::echo().await;
    let name = format!("astron-edge-late-{}.test", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").expect("hosts file");
    let config = proxied(
        [format!("{name}:{}", backend.addr.port())],
        app_route(false),
    );
    let Some(proxy) = Proxy::start_with_hosts(&config, &hosts) else {
        return;
    };
    let resp = common::client()
        .get(proxy.url("/before"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 502, "an unresolvable upstream is a 502");
    // Appended in place: the bind mount follows the file's inode, not its name.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&hosts)
        .expect("open hosts");
    std::io::Write::write_all(&mut file, format!("127.0.0.1 {name}\n").as_bytes()).expect("append");
    let resp = common::client()
        .get(proxy.url("/after"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(backend.last().uri, "/after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_over_the_limit_is_413_before_the_upstream() {
    let backend = Backend::echo().await;
    let proxy = Proxy::with(
        &proxied([backend.addr], app_route(false)).set("server.client_max_body_size", "1k"),
    );
    let answer = raw_request(
        proxy.addr,
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert!(answer.contains("X-Frame-Options") || answer.contains("x-frame-options"));
    // at the limit is fine
    let ok = common::client()
        .post(proxy.url("/upload"))
        .body(vec![b'a'; 1024])
        .send()
        .await
        .expect("post");
    assert_eq!(ok.status(), 200);
    assert_eq!(backend.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_growing_past_the_limit_is_413_and_never_complete_upstream() {
    let backend = Backend::echo().await;
    let proxy = Proxy::with(
        &proxied([backend.addr], app_route(false)).set("server.client_max_body_size", "1k"),
    );
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[b'z'; 0x200]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_request(proxy.addr, &request).await;
    assert_eq!(status_of(&answer), 413, "{answer}");
    assert_eq!(backend.count(), 0, "the upstream saw a complete request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_400_and_reach_no_upstream() {
    let backend = Backend::echo().await;
    let proxy = Proxy::with(&proxied([backend.addr], app_route(false)));
    let bad: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header Line\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        b"GET /\x01bad HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",
    ];
    for request in bad {
        let answer = raw_request(proxy.addr, request).await;
        assert_eq!(
            status_of(&answer),
            400,
            "{:?} → {answer:?}",
            String::from_utf8_lossy(request)
        );
    }
    assert_eq!(backend.count(), 0);
    // the proxy is still there
    let resp = common::client()
        .get(proxy.url("/fine"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
}
