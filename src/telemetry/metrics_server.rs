//! The metrics listener: `GET /metrics` in Prometheus text format on `metrics.listen`.
//!
//! A small server of its own on the telemetry runtime rather than a Pingora service:
//! Pingora's listeners are fixed when the server starts, and a reload must be able to
//! move this one (SPEC §3) — bind the new address, then close the old one. Scrapes never
//! compete with the public listeners. One request per connection (`Connection: close`),
//! a bounded request header read within a deadline, a bounded number of connections.
//!
//! The socket has `SO_REUSEPORT`, like Pingora's listeners: during a zero-downtime
//! upgrade (SIGQUIT) the new process binds the same address while the old one still
//! serves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// The longest request header read.
const MAX_HEADER: usize = 8 * 1024;
/// A scraper has this long to send its request and take the answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 32;

/// A bound, serving metrics listener; dropping it closes the port.
pub(super) struct MetricsListener {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MetricsListener {
    /// Binds `addr` and serves it on `runtime`.
    pub(super) fn bind(addr: SocketAddr, runtime: &Handle) -> std::io::Result<MetricsListener> {
        let listener = {
            let _enter = runtime.enter();
            TcpListener::from_std(bind_std(addr)?)?
        };
        let task = runtime.spawn(serve(listener));
        Ok(MetricsListener { addr, task })
    }
}

fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

async fn serve(listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, answer(stream)).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::debug!("metrics listener: accept failed: {e}");
                // e.g. out of file descriptors: do not spin
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request header and answers it.
async fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let (method, path) = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                break (
                    req.method.unwrap_or_default().to_owned(),
                    req.path.unwrap_or_default().to_owned(),
                );
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEADER => {}
            _ => {
                let response = response(400, "text/plain", b"400 Bad Request\n", false);
                return stream.write_all(&response).await;
            }
        }
    };
    let path = path.split('?').next().unwrap_or_default();
    let head = method == "HEAD";
    let response = match (method.as_str(), path) {
        ("GET" | "HEAD", "/metrics") => response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            &super::metrics::render(),
            head,
        ),
        (_, "/metrics") => response(405, "text/plain", b"405 Method Not Allowed\n", head),
        _ => response(404, "text/plain", b"404 Not Found\n", head),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

fn response(status: u16, content_type: &str, body: &[u8], head: bool) -> Vec<u8> {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).await.expect("read");
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_closes_its_port_when_dropped() {
        super::super::metrics::init();
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let listener = MetricsListener::bind(addr, &Handle::current()).expect("bind");
        let scrape = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(scrape.starts_with("HTTP/1.1 200 OK\r\n"), "{scrape}");
        assert!(scrape.contains("edge_config_reloads_total"), "{scrape}");
        let head = get(addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert!(get(addr, "POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 405"));
        assert!(get(addr, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        drop(listener);
        // the accept loop is aborted on the runtime: the port refuses shortly after
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "the old port still accepts");
    }
}
