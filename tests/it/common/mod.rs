//! Shared test harness: the real `astron-edge` binary, real HTTP servers on 127.0.0.1.
//!
//! Every port is picked free by the OS (bind to port 0), every wait is bounded, and every
//! process and server is torn down on drop, so tests run in parallel and end by themselves.

use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

mod config;
pub(crate) use config::{Route, TestConfig};

pub(crate) type Body = BoxBody<Bytes, Infallible>;
type BoxFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
type Handler = Arc<dyn Fn(Recorded) -> BoxFuture + Send + Sync>;

/// A request as the test backend received it (body read in full).
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub method: String,
    /// Path and query exactly as received on the request line.
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub(crate) fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into()).boxed()
}

pub(crate) fn text_response(status: u16, body: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(full(body.to_owned()))
        .expect("valid response")
}

/// A streaming body fed through a channel; `send` fails once the client has gone
/// (hyper drops the body, and with it the receiver).
pub(crate) fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(Frame::data(chunk)), rx))
    });
    (tx, StreamBody::new(stream).boxed())
}

/// A real HTTP/1.1 server on 127.0.0.1 that records every request.
pub(crate) struct Backend {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    /// Answers 200 with `path=<uri>` for everything.
    pub(crate) async fn echo() -> Backend {
        Backend::start(
            |req: Recorded| async move { text_response(200, &format!("path={}", req.uri)) },
        )
        .await
    }

    pub(crate) async fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        // Through `free_port`, so a backend never lands on a port another test of this
        // binary holds as "closed" (the OS would otherwise hand that port out again). The
        // port is free when picked but may be taken before the bind (an outgoing connection
        // of another test, on a machine crowded with TIME_WAIT sockets): then pick again.
        let mut attempts = 0;
        let listener = loop {
            match TcpListener::bind(("127.0.0.1", free_port())).await {
                Ok(listener) => break listener,
                Err(e) if attempts < 5 && e.kind() == std::io::ErrorKind::AddrInUse => {
                    attempts += 1
                }
                Err(e) => panic!("bind backend: {e}"),
            }
        };
        Backend::serve(listener, handler)
    }

    /// Serves on an already bound listener (for "the upstream starts later" tests).
    pub(crate) fn serve<F, Fut>(listener: TcpListener, handler: F) -> Backend
    where
        F: Fn(Recorded) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        let addr = listener.local_addr().expect("backend addr");
        let handler: Handler = Arc::new(move |r| Box::pin(handler(r)));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let recorded = requests.clone();
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let accepted = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let handler = handler.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let handler = handler.clone();
                            let recorded = recorded.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                // Only complete requests are recorded: a body cut short is not a request.
                                let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
                                    return Ok(text_response(400, "incomplete body"));
                                };
                                let rec = Recorded {
                                    method: parts.method.to_string(),
                                    uri: parts.uri.to_string(),
                                    headers: parts.headers,
                                    body,
                                };
                                recorded.lock().expect("lock").push(rec.clone());
                                Ok::<_, Infallible>(handler(rec).await)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            requests,
            connections,
            task,
        }
    }

    pub(crate) fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().expect("lock").clone()
    }

    /// TCP connections accepted so far (to check keep-alive reuse).
    pub(crate) fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn count(&self) -> usize {
        self.requests.lock().expect("lock").len()
    }

    pub(crate) fn last(&self) -> Recorded {
        self.requests().pop().expect("the backend saw a request")
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A port nothing listens on (bound once by the OS, then released). Never the same port
/// twice in one test binary: parallel tests must not get each other's listen and metrics ports.
pub(crate) fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().expect("lock");
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// The real proxy binary, started on a config written for the test.
pub(crate) struct Proxy {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

pub(crate) fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_astron-edge")
}

impl Proxy {
    /// Starts the proxy with `body` appended to a `[server]` table on a free port; waits
    /// (bounded) until `/health` answers.
    pub(crate) fn start(body: &str) -> Proxy {
        Proxy::start_with_env(body, &[])
    }

    /// Starts `config` with a listener on a free port, 2 threads and a 2 s grace period.
    pub(crate) fn with(config: &TestConfig) -> Proxy {
        Proxy::with_env(config, &[])
    }

    /// [`Proxy::with`] with `server.sse_relay` set: SSE routes relayed off Pingora's
    /// pipeline (`true`, the default) or left in it.
    pub(crate) fn with_relay(relay: bool, config: &TestConfig) -> Proxy {
        Proxy::with(&config.clone().set("server.sse_relay", relay))
    }

    /// [`Proxy::with`] with extra environment variables for the proxy.
    pub(crate) fn with_env(config: &TestConfig, env: &[(&str, &str)]) -> Proxy {
        let config = config
            .clone()
            .set("server.threads", 2)
            .set("server.grace_period", "2s");
        Proxy::with_listener(&config, env)
    }

    /// Starts `config` with only a listener on a free port added: threads and grace period
    /// stay what `config` says (the proxy's defaults unless set).
    pub(crate) fn with_listener(config: &TestConfig, env: &[(&str, &str)]) -> Proxy {
        Proxy::start_on_free_port(
            |port| {
                let config = config
                    .clone()
                    .set("server.listen", vec![format!("127.0.0.1:{port}")]);
                (config.render(), Vec::new())
            },
            env,
        )
    }

    pub(crate) fn start_with_env(body: &str, env: &[(&str, &str)]) -> Proxy {
        Proxy::start_on_free_port(
            |port| {
                let config = format!(
                "[server]\nlisten = [\"127.0.0.1:{port}\"]\nthreads = 2\ngrace_period = \"2s\"\n{body}"
            );
                (config, Vec::new())
            },
            env,
        )
    }

    /// Starts the config `make` builds for a free port (and its extra environment); when
    /// another process took a port between `free_port` and the proxy's bind, tries again
    /// with new ports (a few times) instead of failing the test.
    fn start_on_free_port(
        make: impl Fn(u16) -> (String, Vec<(&'static str, String)>),
        env: &[(&str, &str)],
    ) -> Proxy {
        let mut attempts = 0;
        loop {
            let port = free_port();
            let (config, extra) = make(port);
            let mut all: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            all.extend_from_slice(env);
            match Proxy::try_start_raw("astron-edge.toml", &config, port, &all, None) {
                Ok(proxy) => return proxy,
                Err(stderr) if stderr.contains("in use") && attempts < 3 => attempts += 1,
                Err(stderr) => panic!("astron-edge did not start: {stderr}"),
            }
        }
    }

    /// Starts the shipped `conf/astron-edge.toml` on a free port, its metrics listener on
    /// another, access log off; `env` adds or overrides variables (the `*_ADDR` upstreams).
    pub(crate) fn shipped(env: &[(&str, &str)]) -> Proxy {
        let config = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/astron-edge.toml"
        ))
        .expect("shipped config");
        Proxy::start_on_free_port(
            |port| {
                let extra = vec![
                    ("EDGE_LISTEN", format!("127.0.0.1:{port}")),
                    ("EDGE_METRICS_LISTEN", format!("127.0.0.1:{}", free_port())),
                    ("EDGE_ACCESS_LOG", "off".to_owned()),
                ];
                (config.clone(), extra)
            },
            env,
        )
    }

    /// The shipped config with every upstream on one backend.
    pub(crate) fn shipped_on(backend: &Backend) -> Proxy {
        let addr = backend.addr.to_string();
        Proxy::shipped(&[
            ("CONSOLE_FRONTEND_ADDR", &addr),
            ("CONSOLE_HUB_ADDR", &addr),
            ("CORE_WORKFLOW_ADDR", &addr),
            ("AGENT_RUNTIME_API_ADDR", &addr),
        ])
    }

    /// Starts with a complete config, written as `file_name` (`nginx.conf`: nginx syntax),
    /// whose listener is `127.0.0.1:{port}`.
    pub(crate) fn start_named(
        file_name: &str,
        config: &str,
        port: u16,
        env: &[(&str, &str)],
    ) -> Proxy {
        Proxy::try_start_raw(file_name, config, port, env, None)
            .unwrap_or_else(|stderr| panic!("astron-edge did not start: {stderr}"))
    }

    /// [`Proxy::start`] with `hosts` as the proxy's `/etc/hosts`: the proxy runs in a mount
    /// namespace of its own (`unshare -m`) where the file is bind-mounted over `/etc/hosts`,
    /// so a test can make a name resolve mid-test by appending to it, without touching the
    /// machine's file. `None` (the test skips) where namespaces are not allowed; under CI
    /// that fails the test instead.
    pub(crate) fn start_with_hosts(config: &TestConfig, hosts: &Path) -> Option<Proxy> {
        let allowed = Command::new("unshare")
            .args(["-m", "true"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !allowed {
            assert!(
                std::env::var_os("CI").is_none(),
                "unshare -m is not allowed here (needs root or CAP_SYS_ADMIN)"
            );
            eprintln!("SKIPPED: unshare -m is not allowed here");
            return None;
        }
        let port = free_port();
        let config = config
            .clone()
            .set("server.listen", vec![format!("127.0.0.1:{port}")])
            .render();
        Some(
            Proxy::try_start_raw("astron-edge.toml", &config, port, &[], Some(hosts))
                .unwrap_or_else(|stderr| panic!("astron-edge did not start: {stderr}")),
        )
    }

    /// [`Proxy::start_named`], or the proxy's stderr when it exited or never became ready.
    fn try_start_raw(
        file_name: &str,
        config: &str,
        port: u16,
        env: &[(&str, &str)],
        hosts: Option<&Path>,
    ) -> Result<Proxy, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join(file_name);
        std::fs::write(&config_path, config).expect("write config");
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).expect("stdout file");
        let mut cmd = match hosts {
            None => Command::new(binary()),
            Some(hosts) => {
                let mut cmd = Command::new("unshare");
                cmd.args([
                    "-m",
                    "sh",
                    "-c",
                    r#"mount --bind "$0" /etc/hosts && exec "$@""#,
                ])
                .arg(hosts)
                .arg(binary());
                cmd
            }
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn astron-edge");
        let mut proxy = Proxy {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            dir,
            config_path,
        };
        proxy.wait_ready()?;
        Ok(proxy)
    }

    /// Waits (bounded) until `/health` answers; the proxy's stderr when it exited first or
    /// never answered.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited early ({status}): {}", self.stderr()));
            }
            if raw_get_status(self.addr, "/health") == Some(200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("not ready within 20 s: {}", self.stderr()))
    }

    /// Waits (up to 2 s) for an ERROR line of the proxy's that names every one of `names`
    /// (a route and its upstream, say).
    pub(crate) async fn logged_error(&self, names: &[&str]) -> bool {
        wait_until(Duration::from_secs(2), || {
            self.stderr()
                .lines()
                .any(|l| l.contains("ERROR") && names.iter().all(|n| l.contains(n)))
        })
        .await
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub(crate) fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) for the process to exit; `None` if it is still running.
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read in full: status, headers, raw (never decompressed) body.
pub(crate) struct Fetched {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Fetched {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn x_cache(&self) -> Option<&str> {
        self.header("x-cache")
    }

    pub(crate) fn gunzip(&self) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&self.body[..])
            .read_to_end(&mut out)
            .expect("a valid gzip body");
        out
    }
}

/// `method path` through the proxy with extra request headers, read in full.
pub(crate) async fn fetch(
    proxy: &Proxy,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Fetched {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client().request(method, proxy.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("response");
    Fetched {
        status: resp.status().as_u16(),
        headers: resp.headers().clone(),
        body: resp.bytes().await.expect("body").to_vec(),
    }
}

/// An HTTP client that never decompresses, follows no redirect and uses no proxy.
pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Sends raw bytes and reads the whole answer until the server closes (or 5 s pass).
pub(crate) async fn raw_request(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Status of a `GET path` with `Connection: close`, `None` when nothing answered.
pub(crate) fn raw_get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Polls `check` until it is true or `within` passes.
pub(crate) async fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// A raw TCP upstream on 127.0.0.1, for answers no HTTP server library would give:
/// `serve` runs on each connection it accepts.
pub(crate) async fn raw_upstream<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// One SSE route `name` to the upstream at `addr`, with a 30 s timeout.
pub(crate) fn sse_route_to(name: &str, addr: std::net::SocketAddr) -> TestConfig {
    TestConfig::new().upstream("workflow", [addr]).route(
        Route::prefix(name, "/")
            .to("workflow")
            .set("sse", true)
            .set("timeout", "30s"),
    )
}

/// An external tool the test needs (`promtool`, `prometheus`, `nginx`): its path, or `None`
/// with a line saying the test skipped. Under CI (`CI` set, as `.ci/run` does, which installs
/// every tool) a missing tool fails the test instead: no silent skip where it counts.
pub(crate) fn tool(name: &str, candidates: &[&'static str]) -> Option<&'static str> {
    let found = candidates
        .iter()
        .copied()
        .find(|p| std::path::Path::new(p).exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} not found at {candidates:?} (Debian: .ci/run installs it)"
        );
        eprintln!("SKIPPED: {name} not found at {candidates:?} (.ci/run installs it)");
    }
    found
}

/// Runs each `async fn name(relay: bool)` of the module as two tests, `name::relay` and
/// `name::pipeline`: streams relayed off Pingora's pipeline and streams in it
/// (`server.sse_relay`).
#[macro_export]
macro_rules! on_both_paths {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn relay() {
                    super::$name(true).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn pipeline() {
                    super::$name(false).await
                }
            }
        )*
    };
}

/// The text of a `GET /metrics` on the proxy's metrics listener.
pub(crate) async fn metrics_text(metrics: impl std::fmt::Display) -> String {
    client()
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

/// A real Prometheus scraping `targets` every `interval`, killed when dropped.
pub(crate) struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    /// Its HTTP API.
    pub(crate) web: SocketAddr,
}

impl Prometheus {
    /// Starts `binary` (from [`tool`]) with its data in a temp dir of its own.
    pub(crate) fn start(binary: &str, interval: &str, targets: &[SocketAddr]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_file = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config_file,
            format!(
                "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n\
                 scrape_configs:\n  - job_name: astron-edge\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("prometheus.yml");
        let web = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, dir, web }
    }

    /// What Prometheus has logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An upstream that answers every request `101` and then echoes what it gets, recording
/// each request header.
pub(crate) async fn upgrading_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let addr = raw_upstream(move |mut stream| {
        let record = record.clone();
        async move {
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            record
                .lock()
                .expect("lock")
                .push(String::from_utf8_lossy(&got).to_ascii_lowercase());
            let _ = stream
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .await;
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (addr, seen)
}

/// A WebSocket upgrade request for `/ws`.
pub(crate) const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
