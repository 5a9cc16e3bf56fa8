//! Per-request checks for hostile and odd input (SPEC §3 "Hostile and odd input"), on the
//! header Pingora has parsed: what nginx refuses is refused here, before routing, auth and
//! forwarding. Each check is a scan of bytes already in the header: nothing is allocated
//! unless a request has something to remove.

use std::time::Duration;

use http::{header, HeaderName, HeaderValue, Method, StatusCode, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::Session;
use pingora::upstreams::peer::H1UpgradePolicy;
use pingora::{Error, ErrorSource, ErrorType};

/// What the request target is, once it passed [`verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// `/path?query`: routed as it is.
    Origin,
    /// `http://host/path?query`: routed by its path, sent upstream in origin form.
    Absolute,
    /// `OPTIONS *`: about the server itself, answered by the proxy.
    Asterisk,
}

/// A refusal: the status and why (for the debug log).
pub(super) type Refusal = (StatusCode, &'static str);

/// The method, version and target checks nginx makes before anything else.
pub(super) fn verdict(req: &RequestHeader) -> Result<Target, Refusal> {
    let method = req.method.as_str().as_bytes();
    // nginx: a method is upper-case letters, `_` and `-`; anything else is a bad request.
    if !method
        .iter()
        .all(|b| b.is_ascii_uppercase() || *b == b'_' || *b == b'-')
    {
        return Err((StatusCode::BAD_REQUEST, "method is not an upper-case token"));
    }
    if req.method == Method::TRACE {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "TRACE is not allowed"));
    }
    if req.version == Version::HTTP_11 && !req.headers.contains_key(header::HOST) {
        return Err((StatusCode::BAD_REQUEST, "HTTP/1.1 request without Host"));
    }
    target_form(req.raw_path(), &req.method)
}

/// Which of the three forms SPEC allows the raw target is in.
fn target_form(raw: &[u8], method: &Method) -> Result<Target, Refusal> {
    match raw {
        [b'/', ..] => Ok(Target::Origin),
        b"*" if method == Method::OPTIONS => Ok(Target::Asterisk),
        _ if is_absolute_http(raw) => Ok(Target::Absolute),
        _ => Err((
            StatusCode::BAD_REQUEST,
            "request target is neither /path nor http://host/path",
        )),
    }
}

/// `http://` or `https://` (scheme in any case) followed by an authority.
fn is_absolute_http(raw: &[u8]) -> bool {
    let rest = match raw.iter().position(|b| *b == b':') {
        Some(4) if raw[..4].eq_ignore_ascii_case(b"http") => &raw[4..],
        Some(5) if raw[..5].eq_ignore_ascii_case(b"https") => &raw[5..],
        _ => return false,
    };
    rest.len() > 3 && rest.starts_with(b"://")
}

/// The headers forwarding relies on, which a client's `Connection` must not remove.
const PROTECTED: [&str; 4] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Removes what must not reach routing, auth or upstreams: header names with `_` (unless
/// `underscores` allows them, as nginx's `underscores_in_headers`), and `Connection`
/// tokens that name `Host` or a forwarding header (nginx never lets `Connection` remove a
/// header; Pingora would refuse the request, and the SSE relay would drop the header).
pub(super) fn scrub(req: &mut RequestHeader, underscores: bool) {
    if !underscores && req.headers.keys().any(|n| n.as_str().contains('_')) {
        let dropped: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|n| n.as_str().contains('_'))
            .cloned()
            .collect();
        for name in &dropped {
            req.remove_header(name);
        }
    }
    let nominates_protected = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(is_protected);
    if nominates_protected {
        keep_unprotected_tokens(req);
    }
}

fn is_protected(token: &[u8]) -> bool {
    let token = token.trim_ascii();
    PROTECTED
        .iter()
        .any(|p| p.as_bytes().eq_ignore_ascii_case(token))
}

/// Rewrites `Connection` without the protected tokens (the rest, `close` included, stays).
fn keep_unprotected_tokens(req: &mut RequestHeader) {
    let kept: Vec<Vec<u8>> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty() && !is_protected(t))
        .map(<[u8]>::to_vec)
        .collect();
    let value = kept.join(&b", "[..]);
    req.remove_header(&header::CONNECTION);
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        if !value.is_empty() {
            // Cannot fail: the name is valid and the header map has room for one entry.
            let _ = req.insert_header(header::CONNECTION, value);
        }
    }
}

/// Upgrades (WebSocket) pass only on `websocket` routes (as in the stack's nginx, which has
/// none): elsewhere Pingora does not forward the upgrade headers. On a `websocket` route
/// the client side of the tunnel may be idle as long as the route's `timeout`.
pub(super) fn upgrades(
    session: &mut Session,
    websocket: bool,
    timeout: Duration,
    peer: &mut HttpPeer,
) {
    let policy = &mut peer.options.http_upstream_request_policy;
    if websocket {
        policy.h1_upgrade = H1UpgradePolicy::WebSocketOnly;
        if session.is_upgrade_req() {
            session.set_read_timeout(Some(timeout));
        }
    } else {
        policy.h1_upgrade = H1UpgradePolicy::Deny;
    }
}

/// An upstream `101` to a request that did not ask to upgrade (or was not let) is a broken
/// upstream: 502, never a tunnel.
pub(super) fn unasked_upgrade(
    session: &Session,
    websocket: bool,
    response: &ResponseHeader,
) -> pingora::Result<()> {
    if response.status == StatusCode::SWITCHING_PROTOCOLS
        && !(websocket && session.is_upgrade_req())
    {
        let mut e = Error::explain(
            ErrorType::HTTPStatus(502),
            "upstream 101 to a request without upgrade",
        );
        e.esource = ErrorSource::Upstream;
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &[u8], headers: &[(&str, &str)]) -> RequestHeader {
        let mut req = RequestHeader::build(method, target, None).expect("request");
        for (k, v) in headers {
            req.append_header(k.to_string(), *v).expect("header");
        }
        req
    }

    #[test]
    fn methods_as_nginx() {
        let ok = |m: &str| verdict(&req(m, b"/", &[("Host", "h")])).map(|_| ());
        assert_eq!(ok("GET"), Ok(()));
        assert_eq!(ok("F-O_O"), Ok(()));
        assert_eq!(ok("get").map_err(|e| e.0), Err(StatusCode::BAD_REQUEST));
        assert_eq!(ok("Get").map_err(|e| e.0), Err(StatusCode::BAD_REQUEST));
        assert_eq!(
            ok("TRACE").map_err(|e| e.0),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
    }

    #[test]
    fn host_required_on_http11() {
        let mut r = req("GET", b"/", &[]);
        assert!(verdict(&r).is_err());
        r.set_version(Version::HTTP_10);
        assert_eq!(verdict(&r), Ok(Target::Origin));
    }

    #[test]
    fn target_forms() {
        let get = Method::GET;
        assert_eq!(target_form(b"/a", &get), Ok(Target::Origin));
        assert_eq!(target_form(b"http://h/a", &get), Ok(Target::Absolute));
        assert_eq!(target_form(b"HTTPS://h/a", &get), Ok(Target::Absolute));
        assert_eq!(target_form(b"*", &Method::OPTIONS), Ok(Target::Asterisk));
        for bad in [
            &b"*"[..],
            b"../../etc/passwd",
            b"a%00b",
            b"x%0d%0a",
            b"http:/x",
            b"ftp://h/",
        ] {
            assert!(target_form(bad, &get).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn underscored_names_dropped() {
        let mut r = req(
            "GET",
            b"/",
            &[("X_Consumer_Username", "admin"), ("X-A", "1")],
        );
        scrub(&mut r, false);
        assert!(r.headers.get("x_consumer_username").is_none());
        assert!(r.headers.get("x-a").is_some());
        let mut r = req("GET", b"/", &[("X_B", "1")]);
        scrub(&mut r, true);
        assert!(r.headers.get("x_b").is_some());
    }

    #[test]
    fn connection_cannot_name_host() {
        let mut r = req(
            "GET",
            b"/",
            &[
                ("Host", "h"),
                ("Connection", "close, Host, X-Forwarded-For"),
            ],
        );
        scrub(&mut r, false);
        assert_eq!(
            r.headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..])
        );
        let mut r = req("GET", b"/", &[("Connection", "host")]);
        scrub(&mut r, false);
        assert!(r.headers.get("connection").is_none());
    }
}
