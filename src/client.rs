//! The client as the proxy saw it, and the identity headers it forwards for it.
//!
//! The identity headers (`X-Real-IP`, `X-Forwarded-For`, `X-Forwarded-Proto`, `Host`) are
//! always written by the proxy, never passed through from the client, so a service behind
//! it can trust them. Used for the upstream request (`proxy`) and for forward auth's
//! sub-request (`auth`), hence a module below both.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::IpAddr;

use http::header::{self, HeaderValue};
use pingora::http::RequestHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

use crate::text::IpText;

pub(crate) static X_REAL_IP: header::HeaderName = header::HeaderName::from_static("x-real-ip");
pub(crate) static X_FORWARDED_FOR: header::HeaderName =
    header::HeaderName::from_static("x-forwarded-for");

/// The client's IP address, when it came over TCP.
pub(crate) fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The client as the proxy saw it.
pub(crate) struct ClientIdentity {
    pub ip: Option<IpAddr>,
    pub https: bool,
}

impl ClientIdentity {
    pub(crate) fn of(session: &Session) -> Self {
        ClientIdentity {
            ip: client_ip(session),
            https: session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        }
    }

    pub(crate) fn proto(&self) -> &'static str {
        if self.https {
            "https"
        } else {
            "http"
        }
    }

    /// nginx `$proxy_add_x_forwarded_for`: the client's values, then the client address.
    fn forwarded_for(req: &RequestHeader, ip: &HeaderValue) -> Option<HeaderValue> {
        let mut existing = req.headers.get_all(&X_FORWARDED_FOR).iter().peekable();
        existing.peek()?;
        let mut value = Vec::with_capacity(64);
        for part in existing {
            value.extend_from_slice(part.as_bytes());
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(ip.as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
    }

    /// Sets the identity headers on a request going to an upstream or to forward auth.
    pub(crate) fn apply(&self, from: &RequestHeader, to: &mut RequestHeader) -> Result<()> {
        match self.ip.map(ip_header_value) {
            Some(ip) => {
                let forwarded_for = Self::forwarded_for(from, &ip).unwrap_or_else(|| ip.clone());
                // Static names: Pingora keeps the case of a `&'static str` without copying it
                // (a `HeaderName` is first re-cased into a new buffer), and upstreams see
                // the spelling nginx sends.
                to.insert_header("X-Forwarded-For", forwarded_for)?;
                to.insert_header("X-Real-IP", ip)?;
            }
            None => {
                // A Unix-socket client has no address: forward none rather than the client's.
                to.remove_header(&X_FORWARDED_FOR);
                to.remove_header(&X_REAL_IP);
            }
        }
        to.insert_header("X-Forwarded-Proto", self.proto())?;
        Ok(())
    }
}

/// The client address as a header value. As with [`IpText::new`], the last one made on the
/// thread is kept, and handed out again as a clone of its shared bytes.
fn ip_header_value(ip: IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((seen, value)) if *seen == ip => value.clone(),
        _ => {
            let value = HeaderValue::from_bytes(IpText::new(ip).as_bytes())
                .unwrap_or_else(|_| HeaderValue::from_static("-"));
            *last = Some((ip, value.clone()));
            value
        }
    })
}

/// nginx `$host`: the host of the request line, else of `Host`, without the port, lower
/// case. Borrowed when the request already carries it in that form (the common case).
pub(crate) fn host_without_port(req: &RequestHeader) -> Option<Cow<'_, str>> {
    let host = match req.uri.authority() {
        Some(authority) => authority.host(),
        None => {
            let header = req.headers.get(header::HOST)?.to_str().ok()?;
            match header.strip_prefix('[') {
                Some(v6) => &header[..v6.find(']')? + 2],
                None => header.split(':').next()?,
            }
        }
    };
    if host.is_empty() {
        None
    } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Some(Cow::Owned(host.to_ascii_lowercase()))
    } else {
        Some(Cow::Borrowed(host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kept_address_value_follows_the_client() {
        for ip in ["10.0.0.1", "10.0.0.1", "::1", "10.0.0.1", "192.168.7.200"] {
            let parsed: IpAddr = ip.parse().expect("ip");
            assert_eq!(ip_header_value(parsed), ip);
        }
    }

    #[test]
    fn client_addresses_format_like_display() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.30.40",
            "127.0.0.1",
            "255.255.255.255",
            "192.168.100.9",
            "::1",
            "2001:db8::1",
        ] {
            let parsed: IpAddr = ip.parse().expect("ip");
            assert_eq!(ip_header_value(parsed).to_str().ok(), Some(ip));
        }
    }

    #[test]
    fn host_header_loses_its_port() {
        let mut req = RequestHeader::build("GET", b"/", None).expect("request");
        req.insert_header("host", "Example.COM:8080").expect("host");
        assert_eq!(host_without_port(&req).as_deref(), Some("example.com"));
        req.insert_header("host", "[::1]:80").expect("host");
        assert_eq!(host_without_port(&req).as_deref(), Some("[::1]"));
        req.insert_header("host", "plain.example").expect("host");
        assert!(matches!(
            host_without_port(&req),
            Some(Cow::Borrowed("plain.example"))
        ));
        req.remove_header("host");
        assert_eq!(host_without_port(&req), None);
    }
}
