//! `astron-edge health`: the compose healthcheck, since the runtime image has no curl.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::config::Config;

const TIMEOUT: Duration = Duration::from_secs(3);

/// The probe URL for a config: its first listener (a wildcard address becomes loopback)
/// and its first health path.
pub fn default_url(config: &Config) -> String {
    let mut addr = config
        .server
        .listen
        .first()
        .copied()
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 80)));
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let path = config
        .health_paths
        .first()
        .map_or("/health", String::as_str);
    format!("http://{addr}{path}")
}

/// GETs `url` (plain `http://` only) and succeeds on a 200 answer.
pub fn probe(url: &str) -> anyhow::Result<()> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs can be probed"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("{url}: bad address"))?
        .next()
        .with_context(|| format!("{url}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("{url}: connect"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: astron-edge-health\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 32];
    let n = stream
        .read(&mut head)
        .with_context(|| format!("{url}: read"))?;
    let status_line = String::from_utf8_lossy(&head[..n]);
    let status = status_line.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        bail!(
            "{url}: status {}",
            if status.is_empty() { "none" } else { status }
        );
    }
    Ok(())
}
