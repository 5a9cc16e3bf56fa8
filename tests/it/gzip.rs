//! gzip through the running proxy: which responses are compressed (type, length, client,
//! encoding, method, route), the headers that go with it, and a large streamed body
//! compressed chunk by chunk with bounded proxy memory.

use crate::common;
use std::io::Read;
use std::time::Duration;

use crate::common::{
    channel_body, client, full, Backend, Fetched, Proxy, Recorded, Route, TestConfig,
};
use bytes::Bytes;
use hyper::Response;

const TYPES: [&str; 8] = [
    "text/plain",
    "text/css",
    "text/xml",
    "text/javascript",
    "application/xml+rss",
    "application/javascript",
    "application/json",
    "text/html",
];

/// Compressible but not trivially so (about 2:1), so output sizes are realistic.
fn body_of(len: usize) -> Vec<u8> {
    let mut state: u32 = 0x2545_f491;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            const ALPHABET: &[u8] = b"abcdefghijklmnop  \n{}\":,";
            ALPHABET[state as usize % ALPHABET.len()]
        })
        .collect()
}

/// Query parameters of the test backend: `ct` content type, `len` body length, `ce` a
/// Content-Encoding to claim, `vary` a Vary to send, `stream` a chunked body of `len` bytes.
fn param<'a>(uri: &'a str, name: &str) -> Option<&'a str> {
    uri.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

async fn backend() -> Backend {
    Backend::start(|req: Recorded| async move {
        let ct = param(&req.uri, "ct")
            .unwrap_or("text/plain")
            .replace("%20", " ");
        let len: usize = param(&req.uri, "len")
            .and_then(|l| l.parse().ok())
            .unwrap_or(5000);
        let mut resp = Response::builder().status(200).header("Content-Type", ct);
        if let Some(ce) = param(&req.uri, "ce") {
            resp = resp.header("Content-Encoding", ce);
        }
        if let Some(vary) = param(&req.uri, "vary") {
            resp = resp.header("Vary", vary);
        }
        if param(&req.uri, "stream").is_some() {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                let data = Bytes::from(body_of(len));
                let mut offset = 0;
                while offset < data.len() {
                    let end = (offset + 64 * 1024).min(data.len());
                    if tx.send(data.slice(offset..end)).await.is_err() {
                        return;
                    }
                    offset = end;
                }
            });
            return resp.body(body).expect("response");
        }
        resp.body(full(body_of(len))).expect("response")
    })
    .await
}

fn start(backend: &Backend) -> Proxy {
    Proxy::with(
        &TestConfig::new()
            .set("gzip.enabled", true)
            .set("gzip.min_length", 1000)
            .set("gzip.level", 6)
            .set("gzip.types", TYPES[..7].to_vec())
            .upstream("app", [backend.addr])
            .route(
                Route::prefix("events", "/events/")
                    .to("app")
                    .set("sse", true),
            )
            .route(Route::prefix("all", "/").to("app")),
    )
}

/// `method path` with the given `Accept-Encoding`, if any.
async fn fetch(proxy: &Proxy, method: &str, path: &str, accept: Option<&str>) -> Fetched {
    let headers: Vec<(&str, &str)> = accept.map(|a| ("Accept-Encoding", a)).into_iter().collect();
    common::fetch(proxy, method, path, &headers).await
}

fn assert_plain(got: &Fetched, len: usize, what: &str) {
    assert_eq!(got.status, 200, "{what}");
    assert_eq!(got.header("content-encoding"), None, "{what}");
    assert_eq!(got.body, body_of(len), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_type_is_compressed_above_min_length() {
    let b = backend().await;
    let proxy = start(&b);
    // text/html is compressible without being listed, as in nginx
    let mut types: Vec<String> = TYPES.iter().map(|t| t.to_string()).collect();
    types.push("application/json;%20charset=utf-8".into());
    types.push("TEXT/CSS".into());
    for ct in types {
        for len in [1000, 5000, 300_000] {
            let path = format!("/x?ct={ct}&len={len}");
            let got = fetch(&proxy, "GET", &path, Some("gzip, deflate, br")).await;
            assert_eq!(got.status, 200, "{path}");
            assert_eq!(got.header("content-encoding"), Some("gzip"), "{path}");
            assert_eq!(got.header("content-length"), None, "{path}");
            assert_eq!(got.header("transfer-encoding"), Some("chunked"), "{path}");
            assert_eq!(got.header("vary"), Some("Accept-Encoding"), "{path}");
            assert!(got.body.len() < len, "{path}: not smaller");
            assert_eq!(got.gunzip(), body_of(len), "{path}");
        }
    }
}

/// Compressed answers go out corked (one segment instead of three): the cork must be
/// lifted when each response ends, or every answer would wait for the kernel's 200 ms
/// ceiling. Nine answers in a row on one kept-alive connection: the median is far below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_answers_are_not_held_back() {
    let b = backend().await;
    let proxy = start(&b);
    let client = client();
    let mut times = Vec::new();
    for _ in 0..9 {
        let started = std::time::Instant::now();
        let resp = client
            .get(proxy.url("/x?ct=application/json&len=20000"))
            .header("Accept-Encoding", "gzip")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.headers()["content-encoding"], "gzip");
        resp.bytes().await.expect("body");
        times.push(started.elapsed());
    }
    assert_eq!(
        b.connections(),
        1,
        "the client connection was kept alive upstream too"
    );
    times.sort();
    assert!(
        times[4] < Duration::from_millis(100),
        "median answer took {:?}: held back by the cork",
        times[4]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_bodies_stay_plain_but_vary() {
    let b = backend().await;
    let proxy = start(&b);
    for len in [0, 10, 999] {
        let got = fetch(&proxy, "GET", &format!("/x?len={len}"), Some("gzip")).await;
        assert_plain(&got, len, "short");
        assert_eq!(got.header("content-length"), Some(len.to_string().as_str()));
        assert_eq!(got.header("vary"), Some("Accept-Encoding"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_types_are_untouched() {
    let b = backend().await;
    let proxy = start(&b);
    for ct in ["image/png", "application/octet-stream", "text/event-stream"] {
        let got = fetch(&proxy, "GET", &format!("/x?ct={ct}"), Some("gzip")).await;
        assert_plain(&got, 5000, ct);
        assert_eq!(got.header("vary"), None, "{ct}");
        assert_eq!(got.header("content-length"), Some("5000"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_refuse_gzip_get_plain() {
    let b = backend().await;
    let proxy = start(&b);
    for accept in [
        None,
        Some("gzip;q=0"),
        Some("br, deflate"),
        Some("gzip;q=0, *"),
    ] {
        let got = fetch(&proxy, "GET", "/x?ct=application/json", accept).await;
        assert_plain(&got, 5000, &format!("{accept:?}"));
        assert_eq!(got.header("vary"), Some("Accept-Encoding"), "{accept:?}");
        assert_eq!(got.header("content-length"), Some("5000"));
    }
    let got = fetch(&proxy, "GET", "/x", Some("br;q=1, gzip;q=0.5")).await;
    assert_eq!(got.header("content-encoding"), Some("gzip"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_bodies_pass_through() {
    let b = backend().await;
    let proxy = start(&b);
    let got = fetch(&proxy, "GET", "/x?ce=br", Some("gzip, br")).await;
    assert_eq!(got.header("content-encoding"), Some("br"));
    assert_eq!(got.body, body_of(5000), "bytes untouched");
    assert_eq!(got.header("vary"), Some("Accept-Encoding"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_is_merged_into_the_upstreams() {
    let b = backend().await;
    let proxy = start(&b);
    let got = fetch(&proxy, "GET", "/x?vary=Origin", Some("gzip")).await;
    let vary: Vec<_> = got.headers.get_all("vary").iter().collect();
    assert_eq!(vary, ["Origin, Accept-Encoding"]);
    let got = fetch(&proxy, "GET", "/x?vary=accept-encoding", None).await;
    let vary: Vec<_> = got.headers.get_all("vary").iter().collect();
    assert_eq!(vary, ["accept-encoding"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_not_compressed() {
    let b = backend().await;
    let proxy = start(&b);
    let got = fetch(&proxy, "HEAD", "/x?ct=application/json", Some("gzip")).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-encoding"), None);
    assert_eq!(got.header("content-length"), Some("5000"));
    assert_eq!(got.header("vary"), Some("Accept-Encoding"));
    assert!(got.body.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_routes_are_never_compressed() {
    let b = backend().await;
    let proxy = start(&b);
    let got = fetch(&proxy, "GET", "/events/x?ct=application/json", Some("gzip")).await;
    assert_plain(&got, 5000, "sse route");
    assert_eq!(got.header("vary"), None);
}

/// Resident set of the proxy (KiB): current and peak.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("memory field")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_streamed_body_is_compressed_as_a_stream() {
    const LEN: usize = 5 << 20;
    let b = backend().await;
    let proxy = start(&b);
    // warm up: the runtime, the pools and the allocator's arenas
    for _ in 0..4 {
        let got = fetch(&proxy, "GET", "/x?stream=1&len=300000", Some("gzip")).await;
        assert_eq!(got.gunzip().len(), 300_000);
    }
    let (_, peak_before) = memory_kib(proxy.pid());

    let resp = client()
        .get(proxy.url(&format!("/x?stream=1&len={LEN}&ct=application/json")))
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    assert!(resp.headers().get("content-length").is_none());
    // chunk by chunk: a proxy that compressed the whole body before sending would hold
    // all of it (and show it in its peak memory)
    let mut compressed = Vec::new();
    let mut resp = resp;
    let mut chunks = 0;
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(20), resp.chunk())
        .await
        .expect("chunk in time")
        .expect("body")
    {
        compressed.extend_from_slice(&chunk);
        chunks += 1;
    }
    let (_, peak_after) = memory_kib(proxy.pid());
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut plain)
        .expect("a valid gzip stream");
    assert_eq!(plain.len(), LEN);
    assert!(plain == body_of(LEN), "decompresses to the same bytes");
    assert!(
        compressed.len() < LEN * 3 / 4,
        "compressed: {}",
        compressed.len()
    );
    assert!(chunks > 4, "sent as many chunks, not one block ({chunks})");
    let growth = peak_after.saturating_sub(peak_before);
    assert!(
        growth < 4 * 1024,
        "proxy peak memory grew by {growth} KiB for a {} KiB body",
        LEN / 1024
    );
}
