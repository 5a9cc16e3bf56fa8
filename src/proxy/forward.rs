//! What the upstream sees: the rewritten path and the forwarded identity headers.
//!
//! The identity headers (`X-Real-IP`, `X-Forwarded-For`, `X-Forwarded-Proto`, `Host`) are
//! always written by the proxy, never passed through from the client, so a service behind
//! it can trust them.

use std::net::IpAddr;

use http::header::{self, HeaderValue};
use http::Uri;
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::config::ProxyRoute;
use crate::routing::encode_path;

pub static X_REAL_IP: header::HeaderName = header::HeaderName::from_static("x-real-ip");
pub static X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: header::HeaderName =
    header::HeaderName::from_static("x-forwarded-proto");

/// The client as the proxy saw it.
pub struct ClientIdentity {
    pub ip: Option<IpAddr>,
    pub https: bool,
}

impl ClientIdentity {
    pub fn of(session: &Session) -> Self {
        ClientIdentity {
            ip: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            https: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        }
    }

    pub fn proto(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// nginx `$proxy_add_x_forwarded_for`: the client's values, then the client address.
    pub fn forwarded_for(&self, req: &RequestHeader) -> Option<HeaderValue> {
        let ip = self.ip?.to_string();
        let mut value = String::new();
        for existing in req.headers.get_all(&X_FORWARDED_FOR) {
            if let Ok(text) = existing.to_str() {
                value.push_str(text);
                value.push_str(", ");
            }
        }
        value.push_str(&ip);
        HeaderValue::from_str(&value).ok()
    }

    /// Sets the identity headers on a request going to an upstream or to forward auth.
    pub fn apply(&self, from: &RequestHeader, to: &mut RequestHeader) -> Result<()> {
        let forwarded_for = self.forwarded_for(from);
        to.remove_header(&X_FORWARDED_FOR);
        match (self.ip, forwarded_for) {
            (Some(ip), Some(xff)) => {
                to.insert_header(X_REAL_IP.clone(), ip.to_string())?;
                to.insert_header(X_FORWARDED_FOR.clone(), xff)?;
            }
            _ => {
                to.remove_header(&X_REAL_IP);
            }
        }
        to.insert_header(X_FORWARDED_PROTO.clone(), self.proto())?;
        Ok(())
    }
}

/// nginx `$host`: the host of the request line, else of `Host`, without the port, lower case.
pub fn host_without_port(req: &RequestHeader) -> Option<String> {
    let authority = req
        .uri
        .authority()
        .map(|a| a.host().to_owned())
        .or_else(|| {
            let host = req.headers.get(header::HOST)?.to_str().ok()?;
            let host = match host.strip_prefix('[') {
                Some(v6) => format!("[{}]", v6.split(']').next()?),
                None => host.split(':').next()?.to_owned(),
            };
            Some(host)
        })?;
    (!authority.is_empty()).then(|| authority.to_ascii_lowercase())
}

/// The URI for a route with `upstream_path`: the matched part of the normalised path
/// replaced, re-encoded, the query kept as received.
pub fn rewrite_uri(
    route: &ProxyRoute,
    normalized: &str,
    matched_len: usize,
    query: Option<&str>,
) -> Option<Uri> {
    let replacement = route.upstream_path.as_deref()?;
    let rest = normalized.get(matched_len..).unwrap_or("");
    let path = format!("{replacement}{rest}");
    let mut uri = encode_path(&path).into_owned();
    if let Some(query) = query {
        uri.push('?');
        uri.push_str(query);
    }
    Uri::try_from(uri).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyRoute;

    fn route(upstream_path: Option<&str>) -> ProxyRoute {
        ProxyRoute {
            upstream: 0,
            upstream_path: upstream_path.map(str::to_owned),
            auth: None,
            sse: false,
            timeout: None,
            connect_timeout: None,
            cache: None,
            set_request_headers: Vec::new(),
            hide_response_headers: Vec::new(),
        }
    }

    #[test]
    fn rewrites_prefix_and_keeps_query() {
        let r = route(Some("/"));
        let uri = rewrite_uri(&r, "/console-api/chat/list", 13, Some("a=1&b"));
        assert_eq!(
            uri.map(|u| u.to_string()).as_deref(),
            Some("/chat/list?a=1&b")
        );
        let r = route(Some("/workflow/chat"));
        let uri = rewrite_uri(&r, "/console-api/workflow/chat", 26, None);
        assert_eq!(
            uri.map(|u| u.to_string()).as_deref(),
            Some("/workflow/chat")
        );
        let r = route(Some("/x/"));
        let uri = rewrite_uri(&r, "/p/a b", 3, None);
        assert_eq!(uri.map(|u| u.to_string()).as_deref(), Some("/x/a%20b"));
        assert!(rewrite_uri(&route(None), "/p", 2, None).is_none());
    }

    #[test]
    fn host_header_loses_its_port() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.insert_header("host", "Example.COM:8080").expect("host");
        assert_eq!(host_without_port(&req).as_deref(), Some("example.com"));
        req.insert_header("host", "[::1]:80").expect("host");
        assert_eq!(host_without_port(&req).as_deref(), Some("[::1]"));
        req.remove_header("host");
        assert_eq!(host_without_port(&req), None);
    }
}
