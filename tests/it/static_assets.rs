//! Cache headers (`cache = "immutable" | "no-store"`) through the shipped
//! `conf/astron-edge.toml`: every asset extension in any case, `/runtime-config.js`, the
//! upstream's own values replaced, and nothing on error answers.

use std::time::{Duration, SystemTime};

use crate::common::{client, full, Backend, Proxy, Recorded};
use hyper::Response;

const IMMUTABLE: &str = "public, max-age=31536000, immutable";
const NO_STORE: &str = "no-store, no-cache, must-revalidate, proxy-revalidate, max-age=0";
const EXTENSIONS: [&str; 12] = [
    "js", "css", "png", "jpg", "jpeg", "gif", "ico", "svg", "woff", "woff2", "ttf", "eot",
];

/// The console front end: answers with its own cache headers, which the proxy must replace;
/// `/missing...` is a 404, `/moved...` a 301, `/broken...` a 500, `/same...` a 304.
async fn frontend() -> Backend {
    Backend::start(|req: Recorded| async move {
        let path = req.uri.split('?').next().unwrap_or("").to_owned();
        let status = if path.starts_with("/missing") {
            404
        } else if path.starts_with("/moved") {
            301
        } else if path.starts_with("/broken") {
            500
        } else if path.starts_with("/same") {
            304
        } else {
            200
        };
        let mut resp = Response::builder()
            .status(status)
            .header("Content-Type", "text/plain")
            .header("X-Path", path);
        if status != 404 {
            resp = resp
                .header("Cache-Control", "max-age=60")
                .header("Expires", "Wed, 21 Oct 2015 07:28:00 GMT");
        }
        if status == 301 {
            resp = resp.header("Location", "/elsewhere.js");
        }
        let body = if status == 304 { "" } else { "asset" };
        resp.body(full(body)).expect("response")
    })
    .await
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Seconds from now to the response's `Expires`.
fn expires_in(resp: &reqwest::Response) -> Duration {
    let expires = header(resp, "expires").expect("Expires");
    let expires = httpdate::parse_http_date(expires).expect("Expires is an HTTP date");
    expires
        .duration_since(SystemTime::now())
        .expect("Expires in the future")
}

fn assert_immutable(resp: &reqwest::Response, what: &str) {
    assert_eq!(header(resp, "cache-control"), Some(IMMUTABLE), "{what}");
    let ahead = expires_in(resp).as_secs();
    let year = 365 * 24 * 3600;
    assert!(
        (year - 60..=year).contains(&ahead),
        "{what}: Expires {ahead}s ahead"
    );
    assert_eq!(
        resp.headers().get_all("cache-control").iter().count(),
        1,
        "{what}: the upstream's Cache-Control is replaced, not added to"
    );
    assert_eq!(
        resp.headers().get_all("expires").iter().count(),
        1,
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_asset_extension_in_any_case_is_immutable() {
    let backend = frontend().await;
    let proxy = Proxy::shipped_on(&backend);
    let http = client();
    for ext in EXTENSIONS {
        for variant in [ext.to_owned(), ext.to_uppercase(), capitalised(ext)] {
            let path = format!("/assets/index.3f2a.{variant}");
            let resp = http.get(proxy.url(&path)).send().await.expect("asset");
            assert_eq!(resp.status(), 200, "{path}");
            assert_eq!(header(&resp, "x-path"), Some(path.as_str()), "{path}");
            assert_immutable(&resp, &path);
            // the global response headers are still there, and no asset cache is configured
            assert_eq!(header(&resp, "x-frame-options"), Some("SAMEORIGIN"));
            assert_eq!(header(&resp, "x-cache"), None);
        }
    }
    // with a query string too (never part of matching)
    let resp = http
        .get(proxy.url("/assets/logo.svg?v=2"))
        .send()
        .await
        .expect("asset");
    assert_immutable(&resp, "/assets/logo.svg?v=2");
}

fn capitalised(ext: &str) -> String {
    let mut chars = ext.chars();
    chars
        .next()
        .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_config_is_never_cached() {
    let backend = frontend().await;
    let proxy = Proxy::shipped_on(&backend);
    for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
        let resp = client()
            .request(method.clone(), proxy.url("/runtime-config.js"))
            .send()
            .await
            .expect("runtime config");
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-path"), Some("/runtime-config.js"));
        assert_eq!(header(&resp, "cache-control"), Some(NO_STORE), "{method}");
        assert_eq!(header(&resp, "pragma"), Some("no-cache"));
        assert_eq!(
            header(&resp, "expires"),
            Some("Thu, 01 Jan 1970 00:00:01 GMT")
        );
        assert_eq!(resp.headers().get_all("cache-control").iter().count(), 1);
        assert_eq!(resp.headers().get_all("expires").iter().count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_not_modified_get_them_errors_do_not() {
    let backend = frontend().await;
    let proxy = Proxy::shipped_on(&backend);
    let http = client();
    for path in ["/moved/app.js", "/same/app.js"] {
        let resp = http.get(proxy.url(path)).send().await.expect("asset");
        assert!(resp.status() == 301 || resp.status() == 304, "{path}");
        assert_immutable(&resp, path);
    }
    // an upstream 404 without cache headers gets none
    let resp = http
        .get(proxy.url("/missing/app.js"))
        .send()
        .await
        .expect("404");
    assert_eq!(resp.status(), 404);
    assert_eq!(header(&resp, "cache-control"), None);
    assert_eq!(header(&resp, "expires"), None);
    // an upstream 500 keeps its own values, untouched
    let resp = http
        .get(proxy.url("/broken/app.css"))
        .send()
        .await
        .expect("500");
    assert_eq!(resp.status(), 500);
    assert_eq!(header(&resp, "cache-control"), Some("max-age=60"));
    assert_eq!(
        header(&resp, "expires"),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_without_cache_pass_upstream_values() {
    let backend = frontend().await;
    let proxy = Proxy::shipped_on(&backend);
    let resp = client()
        .get(proxy.url("/space/agents"))
        .send()
        .await
        .expect("page");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "cache-control"), Some("max-age=60"));
    assert_eq!(
        header(&resp, "expires"),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
    assert_eq!(header(&resp, "pragma"), None);
}
