//! The in-memory asset cache (`[cache]`) through the running proxy: hits served without
//! the upstream, what is never stored, eviction at the size cap, conditional requests and
//! the gzip variant.

use crate::common;
use std::io::Read;

use crate::common::{full, Backend, Fetched, Proxy, Recorded, Route, TestConfig};
use hyper::Response;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// A JavaScript-ish body of `len` bytes, distinct per `seed`.
fn asset(seed: &str, len: usize) -> Vec<u8> {
    let line = format!("function {seed}(a){{return a+1}}\n");
    line.bytes().cycle().take(len).collect()
}

fn param<'a>(uri: &'a str, name: &str) -> Option<&'a str> {
    uri.split_once('?')?
        .1
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// The static front end. Query: `len` body length (default 20000), `ct` content type,
/// `cookie` sends Set-Cookie, `cc` a Cache-Control, `status` another status, `chunked`
/// no Content-Length.
async fn frontend() -> Backend {
    Backend::start(|req: Recorded| async move {
        let path = req.uri.split('?').next().unwrap_or("/").to_owned();
        let len = param(&req.uri, "len")
            .and_then(|l| l.parse().ok())
            .unwrap_or(20_000);
        let status: u16 = param(&req.uri, "status")
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let mut resp = Response::builder()
            .status(status)
            .header(
                "Content-Type",
                param(&req.uri, "ct").unwrap_or("application/javascript"),
            )
            .header("ETag", "\"v1\"")
            .header("Last-Modified", "Wed, 21 Oct 2015 07:28:00 GMT")
            .header(
                "Cache-Control",
                param(&req.uri, "cc").unwrap_or("max-age=60"),
            )
            .header("X-Served-By", "frontend");
        if param(&req.uri, "cookie").is_some() {
            resp = resp.header("Set-Cookie", "session=abc");
        }
        let body = asset(&path.replace(['/', '.'], "_"), len);
        if param(&req.uri, "chunked").is_some() {
            let (tx, body_stream) = common::channel_body();
            tokio::spawn(async move {
                for piece in body.chunks(16 * 1024) {
                    if tx.send(bytes::Bytes::copy_from_slice(piece)).await.is_err() {
                        return;
                    }
                }
            });
            return resp.body(body_stream).expect("response");
        }
        resp.body(full(body)).expect("response")
    })
    .await
}

/// The proxy's config in front of `backend` with an asset cache of `max_size`.
fn config(backend: &Backend, max_size: &str) -> TestConfig {
    TestConfig::new()
        .set("cache.max_size", max_size)
        .set("gzip.enabled", true)
        .set("gzip.min_length", 1000)
        .set("gzip.level", 6)
        .set("response_headers.X-Frame-Options", "SAMEORIGIN")
        .upstream("frontend", [backend.addr])
        .route(
            Route::regex("assets", r"(?i)\.(js|css|png)$")
                .to("frontend")
                .set("cache", "immutable"),
        )
        .route(Route::prefix("other", "/").to("frontend"))
}

/// The proxy in front of `backend` with an asset cache of `max_size`.
fn start(backend: &Backend, max_size: &str) -> Proxy {
    Proxy::with(&config(backend, max_size))
}

async fn get(proxy: &Proxy, path: &str) -> Fetched {
    common::fetch(proxy, "GET", path, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_request_is_a_hit_without_the_upstream() {
    let b = frontend().await;
    let proxy = start(&b, "16m");
    let first = get(&proxy, "/assets/app.3f2a.js").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.x_cache(), Some("MISS"));
    assert_eq!(b.count(), 1);

    let hit = get(&proxy, "/assets/app.3f2a.js").await;
    assert_eq!(b.count(), 1, "the upstream was not contacted");
    assert_eq!(hit.status, 200);
    assert_eq!(hit.x_cache(), Some("HIT"));
    assert_eq!(hit.body, first.body);
    assert_eq!(hit.header("content-length"), Some("20000"));
    assert_eq!(hit.header("content-type"), Some("application/javascript"));
    assert_eq!(hit.header("etag"), Some("\"v1\""));
    assert_eq!(hit.header("x-served-by"), Some("frontend"));
    assert_eq!(hit.header("cache-control"), Some(IMMUTABLE));
    assert_eq!(hit.header("x-frame-options"), Some("SAMEORIGIN"));
    assert_eq!(hit.header("vary"), Some("Accept-Encoding"));
    let expires =
        httpdate::parse_http_date(hit.header("expires").expect("Expires")).expect("HTTP date");
    assert!(expires > std::time::SystemTime::now() + std::time::Duration::from_secs(364 * 86400));

    // HEAD from the same entry, no body
    let head = common::fetch(&proxy, "HEAD", "/assets/app.3f2a.js", &[]).await;
    assert_eq!(head.x_cache(), Some("HIT"));
    assert_eq!(head.header("content-length"), Some("20000"));
    assert!(head.body.is_empty());
    assert_eq!(b.count(), 1);

    // the key: the same path after normalisation (`//` merged) is the same entry; another
    // query or host is another
    let normalised = get(&proxy, "/assets//app.3f2a.js").await;
    assert_eq!(normalised.x_cache(), Some("HIT"));
    let other_query = get(&proxy, "/assets/app.3f2a.js?v=2").await;
    assert_eq!(other_query.x_cache(), Some("MISS"));
    let other_host = common::fetch(
        &proxy,
        "GET",
        "/assets/app.3f2a.js",
        &[("Host", "cdn.example")],
    )
    .await;
    assert_eq!(other_host.x_cache(), Some("MISS"));
    assert_eq!(b.count(), 3);

    // routes without cache = "immutable" have no X-Cache
    let page = get(&proxy, "/index.html").await;
    assert_eq!(page.x_cache(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_or_personal_answers_are_not_stored() {
    let b = frontend().await;
    let proxy = start(&b, "16m");
    let cases = [
        "/a.js?cookie=1",
        "/b.js?cc=private",
        "/c.js?cc=no-store",
        "/d.js?cc=public,Private",
        "/e.js?status=404",
        "/f.js?status=203",
    ];
    for path in cases {
        let before = b.count();
        for _ in 0..2 {
            let got = get(&proxy, path).await;
            assert_eq!(got.x_cache(), Some("MISS"), "{path}");
        }
        assert_eq!(b.count(), before + 2, "{path} was served from the cache");
    }
    // credentials in the request: never stored
    for _ in 0..2 {
        let got = common::fetch(&proxy, "GET", "/g.js", &[("Authorization", "Bearer x")]).await;
        assert_eq!(got.x_cache(), Some("MISS"));
    }
    assert_eq!(b.count(), cases.len() * 2 + 2);
    // a HEAD miss stores nothing (no body), the following GET does
    common::fetch(&proxy, "HEAD", "/h.js", &[]).await;
    assert_eq!(get(&proxy, "/h.js").await.x_cache(), Some("MISS"));
    assert_eq!(get(&proxy, "/h.js").await.x_cache(), Some("HIT"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_object_cap_are_not_stored() {
    let b = frontend().await;
    let proxy = Proxy::with(&config(&b, "16m").set("cache.max_object_size", "64k"));
    for path in ["/big.js?len=70000", "/big-chunked.js?len=70000&chunked=1"] {
        for _ in 0..2 {
            let got = get(&proxy, path).await;
            assert_eq!(got.x_cache(), Some("MISS"), "{path}");
            assert_eq!(got.body.len(), 70_000, "{path}: still served in full");
        }
    }
    assert_eq!(b.count(), 4);
    // at the cap, chunked: stored
    get(&proxy, "/fits.js?len=65536&chunked=1").await;
    assert_eq!(
        get(&proxy, "/fits.js?len=65536&chunked=1").await.x_cache(),
        Some("HIT")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_at_the_size_cap_drops_the_least_used() {
    let b = frontend().await;
    // room for four 56 KiB images (not compressible: no gzip variant), not five
    let proxy = start(&b, "256k");
    let path = |name: &str| format!("/{name}.png?len=57344&ct=image/png");
    for name in ["a", "b", "c", "d"] {
        assert_eq!(get(&proxy, &path(name)).await.x_cache(), Some("MISS"));
    }
    assert_eq!(get(&proxy, &path("a")).await.x_cache(), Some("HIT"));
    // a fifth entry: the oldest one nobody asked for again (b) makes room
    assert_eq!(get(&proxy, &path("e")).await.x_cache(), Some("MISS"));
    let before = b.count();
    for name in ["e", "a", "c", "d"] {
        assert_eq!(
            get(&proxy, &path(name)).await.x_cache(),
            Some("HIT"),
            "{name}"
        );
    }
    assert_eq!(b.count(), before);
    assert_eq!(get(&proxy, &path("b")).await.x_cache(), Some("MISS"));
    assert_eq!(b.count(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_requests_get_304_from_the_cache() {
    let b = frontend().await;
    let proxy = start(&b, "16m");
    get(&proxy, "/app.css").await;
    let cases: [(&str, &str, u16); 5] = [
        ("If-None-Match", "\"v1\"", 304),
        ("If-None-Match", "\"v0\", W/\"v1\"", 304),
        ("If-None-Match", "\"v2\"", 200),
        ("If-Modified-Since", "Wed, 21 Oct 2015 07:28:00 GMT", 304),
        ("If-Modified-Since", "Tue, 20 Oct 2015 07:28:00 GMT", 200),
    ];
    for (name, value, status) in cases {
        let got = common::fetch(&proxy, "GET", "/app.css", &[(name, value)]).await;
        assert_eq!(got.status, status, "{name}: {value}");
        assert_eq!(got.x_cache(), Some("HIT"));
        assert_eq!(got.header("etag"), Some("\"v1\""));
        assert_eq!(got.header("cache-control"), Some(IMMUTABLE));
        assert_eq!(got.header("x-frame-options"), Some("SAMEORIGIN"));
        if status == 304 {
            assert!(got.body.is_empty());
            assert!(got.header("expires").is_some());
        } else {
            assert_eq!(got.body.len(), 20_000);
        }
    }
    // If-None-Match decides when both are sent
    let got = common::fetch(
        &proxy,
        "GET",
        "/app.css",
        &[
            ("If-None-Match", "\"v2\""),
            ("If-Modified-Since", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ],
    )
    .await;
    assert_eq!(got.status, 200);
    assert_eq!(b.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_and_plain_variants_from_one_entry() {
    let b = frontend().await;
    let proxy = start(&b, "16m");
    let gzip = [("Accept-Encoding", "gzip")];
    // the miss itself is compressed on the way through
    let miss = common::fetch(&proxy, "GET", "/app.js", &gzip).await;
    assert_eq!(miss.x_cache(), Some("MISS"));
    assert_eq!(miss.header("content-encoding"), Some("gzip"));
    let expected = asset("_app_js", 20_000);
    for _ in 0..2 {
        let hit = common::fetch(&proxy, "GET", "/app.js", &gzip).await;
        assert_eq!(hit.x_cache(), Some("HIT"));
        assert_eq!(hit.header("content-encoding"), Some("gzip"));
        assert_eq!(hit.header("vary"), Some("Accept-Encoding"));
        assert_eq!(hit.header("etag"), Some("W/\"v1\""));
        assert_eq!(
            hit.header("content-length"),
            Some(hit.body.len().to_string().as_str())
        );
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&hit.body[..])
            .read_to_end(&mut plain)
            .expect("valid gzip");
        assert_eq!(plain, expected);
    }
    for accept in [None, Some("gzip;q=0"), Some("br")] {
        let headers: Vec<(&str, &str)> =
            accept.map(|a| ("Accept-Encoding", a)).into_iter().collect();
        let hit = common::fetch(&proxy, "GET", "/app.js", &headers).await;
        assert_eq!(hit.x_cache(), Some("HIT"));
        assert_eq!(hit.header("content-encoding"), None, "{accept:?}");
        assert_eq!(hit.header("etag"), Some("\"v1\""));
        assert_eq!(hit.body, expected, "{accept:?}");
    }
    // HEAD: the identity headers, as for a proxied HEAD
    let head = common::fetch(&proxy, "HEAD", "/app.js", &gzip).await;
    assert_eq!(head.header("content-encoding"), None);
    assert_eq!(head.header("content-length"), Some("20000"));
    // a type gzip does not take is served plain to everyone
    get(&proxy, "/logo.png?ct=image/png").await;
    let png = common::fetch(&proxy, "GET", "/logo.png?ct=image/png", &gzip).await;
    assert_eq!(png.x_cache(), Some("HIT"));
    assert_eq!(png.header("content-encoding"), None);
    assert_eq!(png.header("vary"), None);
    assert_eq!(b.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_assets_get_their_gzip_variant_off_the_request_path() {
    let b = frontend().await;
    let proxy = start(&b, "16m");
    let path = "/vendor.js?len=1000000";
    assert_eq!(get(&proxy, path).await.x_cache(), Some("MISS"));
    // made on the blocking pool: stored a moment after the miss has been answered
    let mut hit = None;
    for _ in 0..100 {
        let got = common::fetch(&proxy, "GET", path, &[("Accept-Encoding", "gzip")]).await;
        if got.x_cache() == Some("HIT") {
            hit = Some(got);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let hit = hit.expect("stored within 5 s");
    assert_eq!(hit.header("content-encoding"), Some("gzip"));
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(&hit.body[..])
        .read_to_end(&mut plain)
        .expect("valid gzip");
    assert_eq!(plain, asset("_vendor_js", 1_000_000));
}

/// The stack's console-frontend is an nginx that gzips JS and CSS whenever the client
/// accepts it (issue 17, item 5): the cache asks it for the identity body, stores that,
/// and compresses for gzip clients itself — the hit needs no upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frontend_that_gzips_on_request_still_fills_the_cache() {
    let b = Backend::start(|req: Recorded| async move {
        let body = asset("gz", 20_000);
        let resp = Response::builder()
            .status(200)
            .header("Content-Type", "application/javascript");
        if req
            .header("accept-encoding")
            .is_some_and(|a| a.contains("gzip"))
        {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut encoder, &body).expect("gzip");
            let gz = encoder.finish().expect("gzip");
            return resp
                .header("Content-Encoding", "gzip")
                .header("Vary", "Accept-Encoding")
                .body(full(gz))
                .expect("response");
        }
        resp.body(full(body)).expect("response")
    })
    .await;
    let proxy = start(&b, "16m");
    let gzip = [("Accept-Encoding", "gzip, deflate, br")];
    let first = common::fetch(&proxy, "GET", "/assets/app.js", &gzip).await;
    assert_eq!((first.status, first.x_cache()), (200, Some("MISS")));
    assert_eq!(
        b.last().header("accept-encoding"),
        None,
        "identity asked upstream"
    );
    assert_eq!(
        first.header("content-encoding"),
        Some("gzip"),
        "compressed by the proxy"
    );
    assert_eq!(first.gunzip(), asset("gz", 20_000));
    let hit = common::fetch(&proxy, "GET", "/assets/app.js", &gzip).await;
    assert_eq!(hit.x_cache(), Some("HIT"));
    assert_eq!(hit.header("content-encoding"), Some("gzip"));
    assert_eq!(hit.gunzip(), asset("gz", 20_000));
    let plain = get(&proxy, "/assets/app.js").await;
    assert_eq!(plain.x_cache(), Some("HIT"));
    assert_eq!(plain.body, asset("gz", 20_000));
    assert_eq!(b.count(), 1, "one upstream request for all three");
    // Routes the cache does not store pass the client's Accept-Encoding on.
    let other = common::fetch(&proxy, "GET", "/page", &gzip).await;
    assert_eq!(other.status, 200);
    assert_eq!(
        b.last().header("accept-encoding"),
        Some("gzip, deflate, br")
    );
}
