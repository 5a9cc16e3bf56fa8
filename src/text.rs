//! Text for the per-request paths without `core::fmt`: addresses, numbers and hex are
//! written for every forwarded request, log line and span, and the formatting machinery
//! (padding, dynamic dispatch) was a measurable share of their cost.

use std::cell::Cell;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// An IP address as `Display` writes it, in a stack buffer: a request's client address
/// is formatted once and read by the access log and the span.
#[derive(Clone, Copy)]
pub(crate) struct IpText {
    buf: [u8; 46],
    len: usize,
}

impl IpText {
    /// `ip` as text. The last address formatted on the thread is kept: the requests of a
    /// keep-alive connection, and all those that come through one load balancer, have the
    /// same client address, and comparing it costs a tenth of formatting it.
    pub(crate) fn new(ip: IpAddr) -> IpText {
        thread_local! {
            static LAST: Cell<Option<(IpAddr, IpText)>> = const { Cell::new(None) };
        }
        LAST.with(|last| match last.get() {
            Some((seen, text)) if seen == ip => text,
            _ => {
                let text = IpText::format(ip);
                last.set(Some((ip, text)));
                text
            }
        })
    }

    fn format(ip: IpAddr) -> IpText {
        let mut buf = [0; 46];
        let len = match ip {
            IpAddr::V4(v4) => {
                let (digits, len) = ipv4_digits(v4);
                buf[..len].copy_from_slice(&digits[..len]);
                len
            }
            IpAddr::V6(v6) => {
                let mut rest = &mut buf[..];
                // at most 39 characters
                match std::io::Write::write_fmt(&mut rest, format_args!("{v6}")) {
                    Ok(()) => 46 - rest.len(),
                    Err(_) => 0,
                }
            }
        };
        IpText { buf, len }
    }

    /// ASCII, so also valid UTF-8 as it is.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub(crate) fn as_str(&self) -> &str {
        // ASCII digits, dots, colons and hex: always UTF-8
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

/// A socket address as `Display` writes it.
pub(crate) fn push_socket_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            out.push_str(IpText::new(IpAddr::V4(*v4.ip())).as_str());
            out.push(':');
            push_u64(out, u64::from(v4.port()));
        }
        SocketAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

pub(crate) fn socket_addr_string(addr: SocketAddr) -> String {
    let mut out = String::with_capacity(21);
    push_socket_addr(&mut out, addr);
    out
}

/// Dotted decimal in a stack buffer and its length: this runs for every forwarded request.
fn ipv4_digits(ip: Ipv4Addr) -> ([u8; 15], usize) {
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + (octet / 10) % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    (buf, len)
}

/// A decimal number (`itoa`: no formatting machinery, no per-digit pushes).
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// Lowercase hex of `bytes` into `out`, which is twice as long.
pub(crate) fn put_hex(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_as_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.3.45",
            "255.255.255.255",
            "::1",
            "fe80::1",
            "::ffff:192.168.100.200",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            // twice: formatted, then the thread's last address
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
        for addr in ["127.0.0.1:0", "192.168.1.20:65535", "[::1]:8080"] {
            let addr: SocketAddr = addr.parse().expect("addr");
            assert_eq!(socket_addr_string(addr), addr.to_string());
        }
        for n in [0, 7, 10, 1234, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
        let mut out = [0; 6];
        put_hex(&mut out, &[0x0a, 0xff, 0x00]);
        assert_eq!(&out, b"0aff00");
    }
}
