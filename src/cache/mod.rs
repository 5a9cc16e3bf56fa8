//! Static caching: the `cache = "immutable" | "no-store"` response headers (nginx's
//! `expires` + `add_header Cache-Control`), and the in-memory asset cache of `[cache]`.
//!
//! The asset cache keeps complete `200` answers of `immutable` routes in memory and serves
//! them from `request_filter` without contacting the upstream. It lives as long as the
//! process (reloads keep it), and every request checks its own config snapshot before
//! using it: a route that a reload made something other than `immutable` is never served
//! from it, whatever it still holds.

mod store;

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;

pub(crate) use store::{Entry, Store};

use crate::client::host_without_port;
use crate::compress;
use crate::config::{CacheConfig, CachePolicy, GzipConfig, ProxyRoute};
use crate::fields;
use store::{IMMUTABLE, X_CACHE};

static MISS: HeaderValue = HeaderValue::from_static("MISS");
static NO_STORE: HeaderValue =
    HeaderValue::from_static("no-store, no-cache, must-revalidate, proxy-revalidate, max-age=0");
static NO_CACHE: HeaderValue = HeaderValue::from_static("no-cache");
/// nginx's `expires epoch`.
static EPOCH: HeaderValue = HeaderValue::from_static("Thu, 01 Jan 1970 00:00:01 GMT");

/// nginx's `expires 1y`.
const ONE_YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
/// Bodies up to this size get their gzip variant made inline at the end of the miss (a few
/// milliseconds at most); larger ones on the blocking pool, so no worker thread stalls.
const INLINE_GZIP_LIMIT: usize = 256 * 1024;

/// Upstream headers that are not part of a stored answer: hop-by-hop, framing, and the
/// ones the policy or the serving sets afresh.
const NOT_STORED: [header::HeaderName; 8] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::CONTENT_LENGTH,
    header::CACHE_CONTROL,
    header::EXPIRES,
    header::PRAGMA,
    header::DATE,
    header::AGE,
];

/// Sets the route's cache headers, replacing the upstream's, on the statuses nginx's
/// `expires` applies to; error answers keep what they have.
pub(crate) fn apply_policy(resp: &mut ResponseHeader, policy: CachePolicy) -> Result<()> {
    if !matches!(
        resp.status.as_u16(),
        200 | 201 | 204 | 206 | 301 | 302 | 303 | 304 | 307 | 308
    ) {
        return Ok(());
    }
    match policy {
        CachePolicy::Immutable => {
            resp.insert_header(header::CACHE_CONTROL, IMMUTABLE.clone())?;
            resp.insert_header(header::EXPIRES, expires_in_a_year())?;
        }
        CachePolicy::NoStore => {
            resp.insert_header(header::CACHE_CONTROL, NO_STORE.clone())?;
            resp.insert_header(header::PRAGMA, NO_CACHE.clone())?;
            resp.insert_header(header::EXPIRES, EPOCH.clone())?;
        }
    }
    Ok(())
}

/// `Expires` one year from now, formatted once per second per thread.
fn expires_in_a_year() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let date = httpdate::fmt_http_date(now + ONE_YEAR);
            if let Ok(value) = HeaderValue::from_str(&date) {
                *cached = (second, value);
            }
        }
        cached.1.clone()
    })
}

/// The process-wide asset store, made on the first request that finds `[cache]` in its
/// config. Each lookup makes it follow its config's `[cache]`: after a reload that
/// shrinks it, the first request evicts down to the new size; one that removes `[cache]`
/// empties it.
#[derive(Default)]
pub(crate) struct AssetCache {
    store: OnceLock<Arc<Store>>,
}

/// What the asset cache says about a request.
pub(crate) enum Lookup {
    /// The cache does not apply (off, not an `immutable` route, not GET/HEAD, ...).
    Bypass,
    Hit(Arc<Entry>),
    /// Not held: the response may be captured and stored ([`response_filter`]).
    Miss(Box<Capture>),
}

impl AssetCache {
    /// Looks the request up if its route, by the request's own config snapshot, is
    /// cacheable: `immutable`, not `sse`, no forward auth (a hit must never skip an auth
    /// check), and the method is GET or HEAD.
    pub(crate) fn lookup(
        &self,
        settings: Option<CacheConfig>,
        route: &ProxyRoute,
        req: &RequestHeader,
        normalized_path: &str,
    ) -> Lookup {
        let Some(settings) = settings else {
            if let Some(store) = self.store.get() {
                store.follow(None);
            }
            return Lookup::Bypass;
        };
        if route.cache != Some(CachePolicy::Immutable)
            || route.sse
            || route.auth.is_some()
            || !(req.method == Method::GET || req.method == Method::HEAD)
        {
            return Lookup::Bypass;
        }
        let store = self.store.get_or_init(|| Arc::new(Store::new(settings)));
        store.follow(Some(settings));
        let key = cache_key(req, normalized_path);
        match store.get(&key) {
            Some(entry) => Lookup::Hit(entry),
            None => Lookup::Miss(Box::new(Capture {
                key,
                store: Arc::clone(store),
                pending: None,
            })),
        }
    }
}

/// host + normalised path + query. A host never contains `/`, a path always starts with
/// it, and `?` is only there when the request had a query: no two requests share a key.
fn cache_key(req: &RequestHeader, normalized_path: &str) -> String {
    let mut key = host_without_port(req)
        .map(|h| h.into_owned())
        .unwrap_or_default();
    let query = req.uri.query();
    key.reserve(normalized_path.len() + query.map_or(0, |q| q.len() + 1));
    key.push_str(normalized_path);
    if let Some(query) = query {
        key.push('?');
        key.push_str(query);
    }
    key
}

/// A missed request on its way through the proxy: the body is collected here, up to the
/// object cap, and stored when the response ends complete.
pub(crate) struct Capture {
    key: String,
    store: Arc<Store>,
    pending: Option<CapturedBody>,
}

struct CapturedBody {
    head: ResponseHeader,
    body: BytesMut,
    expected: Option<usize>,
}

impl Capture {
    /// Starts collecting when the answer may be stored: a `200` to a GET, no `Set-Cookie`,
    /// not `private`/`no-store`/`no-cache`, not already encoded, varying on nothing but
    /// `Accept-Encoding`, no credentials in the request, and not longer than the cap.
    fn start(&mut self, req: &RequestHeader, resp: &ResponseHeader) -> Result<()> {
        let h = &resp.headers;
        let expected = fields::content_length(h).ok().flatten();
        let storable = resp.status == StatusCode::OK
            && req.method == Method::GET
            && !req.headers.contains_key(header::AUTHORIZATION)
            && !h.contains_key(header::SET_COOKIE)
            && !h.contains_key(header::CONTENT_RANGE)
            && h.get_all(header::CACHE_CONTROL).iter().all(|v| {
                !list_has(v, |d| {
                    let d = d.split('=').next().unwrap_or(d).trim();
                    ["private", "no-store", "no-cache"]
                        .iter()
                        .any(|bad| d.eq_ignore_ascii_case(bad))
                })
            })
            && h.get(header::CONTENT_ENCODING).is_none_or(|v| {
                v.as_bytes().is_empty() || v.as_bytes().eq_ignore_ascii_case(b"identity")
            })
            && h.get_all(header::VARY)
                .iter()
                .all(|v| !list_has(v, |d| !d.eq_ignore_ascii_case("accept-encoding")))
            && expected.is_none_or(|len| len <= self.store.object_cap());
        if !storable {
            return Ok(());
        }
        let mut head = ResponseHeader::build(StatusCode::OK, Some(h.len()))?;
        for (name, value) in h {
            if !NOT_STORED.contains(name) && !name.as_str().eq_ignore_ascii_case("keep-alive") {
                head.append_header(name.clone(), value.clone())?;
            }
        }
        let expected = expected.and_then(|len| usize::try_from(len).ok());
        self.pending = Some(CapturedBody {
            head,
            body: BytesMut::with_capacity(expected.unwrap_or(0)),
            expected,
        });
        Ok(())
    }

    /// Builds the entry and stores it; gzip variants of large bodies are made on the
    /// blocking pool and stored when done.
    fn finish(self, gzip: &GzipConfig) {
        let Some(pending) = self.pending else { return };
        let body = pending.body.freeze();
        if pending.expected.is_some_and(|len| len != body.len()) {
            return; // cut short: never store a partial body
        }
        let compressible = gzip.enabled
            && compress::is_compressible_type(gzip, pending.head.headers.get(header::CONTENT_TYPE));
        let level = (compressible && body.len() as u64 >= gzip.min_length).then_some(gzip.level);
        let inline = level.is_none() || body.len() <= INLINE_GZIP_LIMIT;
        let (key, store, head) = (self.key, self.store, pending.head);
        let build = move || match Entry::build(head, body, level, compressible) {
            Ok(entry) => store.insert(key, entry),
            Err(e) => tracing::debug!("asset not cached: {e}"),
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !inline => drop(runtime.spawn_blocking(build)),
            _ => build(),
        }
    }
}

/// `true` when any element of a comma-separated header value satisfies `f`, and for a
/// value that is not text (so that such a value never makes an answer storable).
fn list_has(value: &HeaderValue, f: impl Fn(&str) -> bool) -> bool {
    value
        .to_str()
        .map_or(true, |v| fields::value_items(v).any(f))
}

/// For a request the cache will try to store (`proxy` calls it then, in
/// `upstream_request_filter`): asks the upstream for the identity body. A front end that
/// gzips whenever the client accepts it (the stack's console-frontend) would otherwise
/// answer with a `Content-Encoding` the cache refuses; the proxy compresses what it serves
/// from the cache itself.
pub(crate) fn ask_for_identity(upstream_request: &mut RequestHeader) {
    upstream_request.remove_header(&header::ACCEPT_ENCODING);
}

/// In `response_filter`: starts capturing a missed response (`asset`, dropped when the
/// answer cannot be stored), marks it `X-Cache: MISS`, and sets the route's cache headers.
/// One branch each when neither applies.
pub(crate) fn response_filter(
    req: &RequestHeader,
    resp: &mut ResponseHeader,
    asset: &mut Option<Box<Capture>>,
    policy: Option<CachePolicy>,
) -> Result<()> {
    if let Some(capture) = asset.as_mut() {
        capture.start(req, resp)?;
        if capture.pending.is_none() {
            *asset = None;
        }
        resp.insert_header(X_CACHE.clone(), MISS.clone())?;
    }
    if let Some(policy) = policy {
        apply_policy(resp, policy)?;
    }
    Ok(())
}

/// In `response_body_filter`, before compression: collects the identity body of a missed
/// response; gives up as soon as it grows past the object cap; stores it at the end (with
/// its gzip variant, made by `gzip`'s rules).
pub(crate) fn body_filter(
    body: &Option<Bytes>,
    end_of_stream: bool,
    asset: &mut Option<Box<Capture>>,
    gzip: &GzipConfig,
) {
    let Some(capture) = asset.as_mut() else {
        return;
    };
    let Some(pending) = capture.pending.as_mut() else {
        return;
    };
    if let Some(chunk) = body {
        if (pending.body.len() + chunk.len()) as u64 > capture.store.object_cap() {
            *asset = None;
            return;
        }
        pending.body.extend_from_slice(chunk);
    }
    if end_of_stream {
        if let Some(capture) = asset.take() {
            capture.finish(gzip);
        }
    }
}

/// The answer to a hit: the stored header and body (the gzip variant when the client
/// takes it and `gzip`, the current config, still compresses the type), or `304` to a
/// matching conditional request; with `Expires`, and without the headers the route hides
/// now (a reload may have changed the list). `None` for the body of a `HEAD` or a `304`.
pub(crate) fn hit_answer(
    req: &RequestHeader,
    entry: &Entry,
    gzip: &GzipConfig,
    hide: &[header::HeaderName],
) -> Result<(Box<ResponseHeader>, Option<Bytes>)> {
    let head_only = req.method == Method::HEAD;
    let (mut resp, body) = if is_not_modified(req, entry) {
        (Box::new(entry.not_modified.clone()), None)
    } else {
        let variant = match &entry.gzip {
            Some(gz) if req.method == Method::GET && gzip_applies(gzip, entry, req) => gz,
            _ => &entry.identity,
        };
        (
            Box::new(variant.head.clone()),
            (!head_only).then(|| variant.body.clone()),
        )
    };
    resp.insert_header(header::EXPIRES, expires_in_a_year())?;
    for name in hide {
        resp.remove_header(name);
    }
    Ok((resp, body))
}

fn gzip_applies(config: &GzipConfig, entry: &Entry, req: &RequestHeader) -> bool {
    config.enabled
        && entry
            .media_type
            .as_deref()
            .is_some_and(|m| config.types.iter().any(|t| t == "*" || t == m))
        && compress::accepts_gzip(req)
}

/// `If-None-Match` (weak comparison, `*` included) decides when present; otherwise
/// `If-Modified-Since` not older than `Last-Modified`.
fn is_not_modified(req: &RequestHeader, entry: &Entry) -> bool {
    let mut none_match = req.headers.get_all(header::IF_NONE_MATCH).iter().peekable();
    if none_match.peek().is_some() {
        let Some(etag) = entry.etag.as_ref().and_then(|e| e.to_str().ok()) else {
            return false;
        };
        let etag = opaque_tag(etag);
        return fields::list_items(&req.headers, header::IF_NONE_MATCH)
            .any(|tag| tag == "*" || opaque_tag(tag) == etag);
    }
    let Some(last_modified) = entry.last_modified else {
        return false;
    };
    req.headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .is_some_and(|since| last_modified <= since)
}

/// An entity tag without its weakness marker, for the weak comparison of `If-None-Match`.
fn opaque_tag(tag: &str) -> &str {
    tag.trim().trim_start_matches("W/")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: Option<CacheConfig> = Some(CacheConfig {
        max_size: 1 << 20,
        max_object_size: 64 << 10,
    });

    fn route(cache: Option<CachePolicy>) -> ProxyRoute {
        ProxyRoute {
            upstream: 0,
            upstream_path: None,
            auth: None,
            sse: false,
            sse_heartbeat: None,
            websocket: false,
            timeout: None,
            connect_timeout: None,
            cache,
            set_request_headers: Vec::new(),
            hide_response_headers: Vec::new(),
        }
    }

    fn get(method: &str, uri: &str) -> RequestHeader {
        let mut req = RequestHeader::build(method, uri.as_bytes(), None).expect("request");
        req.insert_header(header::HOST, "Example.com:8080")
            .expect("host");
        req
    }

    fn gzip_off() -> GzipConfig {
        GzipConfig {
            enabled: false,
            min_length: 0,
            level: 1,
            types: Vec::new(),
        }
    }

    /// Runs one missed response through the capture, as the proxy's filters do.
    fn store_response(cache: &AssetCache, req: &RequestHeader, resp: &ResponseHeader, body: &str) {
        let Lookup::Miss(mut capture) = cache.lookup(
            SETTINGS,
            &route(Some(CachePolicy::Immutable)),
            req,
            req.uri.path(),
        ) else {
            panic!("expected a miss");
        };
        capture.start(req, resp).expect("start");
        if let Some(pending) = capture.pending.as_mut() {
            pending.body.extend_from_slice(body.as_bytes());
        }
        capture.finish(&gzip_off());
    }

    fn ok(headers: &[(&str, &str)]) -> ResponseHeader {
        let mut resp = ResponseHeader::build(200, None).expect("response");
        for (k, v) in headers {
            resp.append_header(k.to_string(), *v).expect("header");
        }
        resp
    }

    #[test]
    fn policy_of_the_requests_own_snapshot_decides() {
        let cache = AssetCache::default();
        let req = get("GET", "/a.js?v=1");
        store_response(
            &cache,
            &req,
            &ok(&[("content-type", "text/javascript")]),
            "x",
        );
        let immutable = route(Some(CachePolicy::Immutable));
        assert!(matches!(
            cache.lookup(SETTINGS, &immutable, &req, "/a.js"),
            Lookup::Hit(_)
        ));
        assert!(matches!(
            cache.lookup(SETTINGS, &immutable, &get("HEAD", "/a.js?v=1"), "/a.js"),
            Lookup::Hit(_)
        ));
        // the same entry, after a reload that changed the route or turned the cache off
        for other in [None, Some(CachePolicy::NoStore)] {
            assert!(matches!(
                cache.lookup(SETTINGS, &route(other), &req, "/a.js"),
                Lookup::Bypass
            ));
        }
        let mut with_auth = route(Some(CachePolicy::Immutable));
        with_auth.auth = Some(0);
        assert!(matches!(
            cache.lookup(SETTINGS, &with_auth, &req, "/a.js"),
            Lookup::Bypass
        ));
        let mut sse = route(Some(CachePolicy::Immutable));
        sse.sse = true;
        assert!(matches!(
            cache.lookup(SETTINGS, &sse, &req, "/a.js"),
            Lookup::Bypass
        ));
        assert!(matches!(
            cache.lookup(SETTINGS, &immutable, &get("POST", "/a.js?v=1"), "/a.js"),
            Lookup::Bypass
        ));
        // key: host without port, case-folded; query part of it
        assert!(matches!(
            cache.lookup(SETTINGS, &immutable, &get("GET", "/a.js?v=2"), "/a.js"),
            Lookup::Miss(_)
        ));
        assert!(matches!(
            cache.lookup(SETTINGS, &immutable, &get("GET", "/a.js"), "/a.js"),
            Lookup::Miss(_)
        ));
        let mut other_port = get("GET", "/a.js?v=1");
        other_port
            .insert_header(header::HOST, "example.com")
            .expect("host");
        assert!(matches!(
            cache.lookup(SETTINGS, &immutable, &other_port, "/a.js"),
            Lookup::Hit(_)
        ));
        // a reload that turned the cache off: bypassed, and what it held is let go
        assert!(matches!(
            cache.lookup(None, &immutable, &req, "/a.js"),
            Lookup::Bypass
        ));
        assert!(matches!(
            cache.lookup(SETTINGS, &immutable, &req, "/a.js"),
            Lookup::Miss(_)
        ));
    }

    #[test]
    fn only_shareable_complete_answers_are_stored() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("set-cookie", &[("set-cookie", "a=b")]),
            ("private", &[("cache-control", "public, Private")]),
            ("no-store", &[("cache-control", "no-store")]),
            ("encoded", &[("content-encoding", "gzip")]),
            ("vary cookie", &[("vary", "Accept-Encoding, Cookie")]),
            ("too long", &[("content-length", "100000")]),
            ("short body", &[("content-length", "5")]),
        ];
        for (i, (what, headers)) in cases.iter().enumerate() {
            let cache = AssetCache::default();
            let req = get("GET", &format!("/{i}.css"));
            store_response(&cache, &req, &ok(headers), "x");
            let immutable = route(Some(CachePolicy::Immutable));
            assert!(
                matches!(
                    cache.lookup(SETTINGS, &immutable, &req, req.uri.path()),
                    Lookup::Miss(_)
                ),
                "{what} was stored"
            );
        }
        let cache = AssetCache::default();
        let req = get("GET", "/ok.css");
        store_response(
            &cache,
            &req,
            &ok(&[("vary", "accept-encoding"), ("content-length", "1")]),
            "x",
        );
        let immutable = route(Some(CachePolicy::Immutable));
        assert!(matches!(
            cache.lookup(SETTINGS, &immutable, &req, "/ok.css"),
            Lookup::Hit(_)
        ));
    }

    #[test]
    fn conditional_requests() {
        let mut head = ResponseHeader::build(200, None).expect("head");
        head.insert_header(header::ETAG, "\"v1\"").expect("etag");
        head.insert_header(header::LAST_MODIFIED, "Wed, 21 Oct 2015 07:28:00 GMT")
            .expect("lm");
        let entry = Entry::build(head, Bytes::from_static(b"x"), None, false).expect("entry");
        let with = |name: header::HeaderName, value: &str| {
            let mut req = get("GET", "/a.js");
            req.insert_header(name, value).expect("header");
            req
        };
        assert!(is_not_modified(
            &with(header::IF_NONE_MATCH, "\"v0\", W/\"v1\""),
            &entry
        ));
        assert!(is_not_modified(&with(header::IF_NONE_MATCH, "*"), &entry));
        assert!(!is_not_modified(
            &with(header::IF_NONE_MATCH, "\"v2\""),
            &entry
        ));
        assert!(is_not_modified(
            &with(header::IF_MODIFIED_SINCE, "Wed, 21 Oct 2015 07:28:00 GMT"),
            &entry
        ));
        assert!(is_not_modified(
            &with(header::IF_MODIFIED_SINCE, "Thu, 22 Oct 2015 07:28:00 GMT"),
            &entry
        ));
        assert!(!is_not_modified(
            &with(header::IF_MODIFIED_SINCE, "Tue, 20 Oct 2015 07:28:00 GMT"),
            &entry
        ));
        assert!(!is_not_modified(
            &with(header::IF_MODIFIED_SINCE, "yesterday"),
            &entry
        ));
        assert!(!is_not_modified(&get("GET", "/a.js"), &entry));
    }

    #[test]
    fn policy_headers_only_on_listed_statuses() {
        for (status, expected) in [
            (200, true),
            (304, true),
            (308, true),
            (404, false),
            (500, false),
        ] {
            let mut resp = ResponseHeader::build(status, None).expect("resp");
            resp.insert_header(header::CACHE_CONTROL, "max-age=60")
                .expect("cc");
            apply_policy(&mut resp, CachePolicy::NoStore).expect("apply");
            let cc = resp.headers[header::CACHE_CONTROL].to_str().expect("text");
            assert_eq!(cc.starts_with("no-store"), expected, "{status}");
        }
        let mut resp = ResponseHeader::build(200, None).expect("resp");
        apply_policy(&mut resp, CachePolicy::Immutable).expect("apply");
        let expires = resp.headers[header::EXPIRES].to_str().expect("text");
        let expires = httpdate::parse_http_date(expires).expect("http date");
        let ahead = expires
            .duration_since(SystemTime::now())
            .expect("in the future");
        assert!(ahead > ONE_YEAR - Duration::from_secs(5) && ahead <= ONE_YEAR);
    }
}
