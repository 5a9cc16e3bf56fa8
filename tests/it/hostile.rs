//! Hostile and odd input (SPEC §3, issue 18), each attack sent with raw sockets as an
//! attacker would: what the client gets is nginx's answer (or SPEC's where it differs), and
//! no upstream sees what it should not.

use std::fmt::Display;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{
    self, raw_request, upgrading_upstream, wait_until, Backend, Proxy, Route, TestConfig, UPGRADE,
};

/// The route `app`: everything to the upstream `app`.
fn app_route() -> Route {
    Route::prefix("app", "/").to("app")
}

/// `route` to the upstream `app` on `server`, access log to `access.log` in the proxy's
/// directory, a security header on every answer.
fn config_with(server: impl Display, route: Route) -> TestConfig {
    TestConfig::new()
        .set("access_log.path", "access.log")
        .set("response_headers.X-Frame-Options", "SAMEORIGIN")
        .upstream("app", [server])
        .route(route)
}

/// One route `/` to `backend`, access log to `access.log` in the proxy's directory.
fn config(backend: &Backend) -> TestConfig {
    config_with(backend.addr, app_route())
}

fn status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The header of the first answer in `answer`, lower-cased, for `contains` checks.
fn head(answer: &str) -> String {
    answer
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn access_log(proxy: &Proxy) -> String {
    std::fs::read_to_string(proxy.dir().join("access.log")).unwrap_or_default()
}

/// Reads until the peer closes or `within` passes; the bytes and whether it closed.
async fn read_until_close(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(within, stream.read_to_end(&mut out))
        .await
        .is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[tokio::test]
async fn request_targets_other_than_path_or_url_get_400() {
    let backend = Backend::echo().await;
    let proxy = Proxy::with(&config(&backend));
    for target in [
        "../../etc/passwd",
        "a%00b",
        "x%0d%0aSet-Cookie:%20a=b",
        "*",
        "/a/../../etc/passwd",
        "/%2e%2e/%2e%2e/x",
        "ftp://h/x",
    ] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\n\r\n");
        let answer = raw_request(proxy.addr, request.as_bytes()).await;
        assert_eq!(status(&answer), 400, "{target}: {answer}");
        assert!(head(&answer).contains("connection: close"), "{answer}");
    }
    // `OPTIONS *` asks about the proxy itself: answered, not forwarded.
    let answer = raw_request(proxy.addr, b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(backend.count(), 0, "{:?}", backend.requests());

    // Absolute form: routed by its path, sent upstream in origin form.
    let answer = raw_request(
        proxy.addr,
        b"GET http://t/abs/./x?q=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(backend.last().uri, "/abs/./x?q=1");
    assert_eq!(backend.count(), 1);
}

#[tokio::test]
async fn header_names_with_underscores_never_reach_auth_or_upstream() {
    let backend = Backend::echo().await;
    let proxy = Proxy::with(
        &config_with(backend.addr, app_route().set("auth", "gate"))
            .set("auth.gate.upstream", "app")
            .set("auth.gate.path", "/auth")
            .set("auth.gate.copy_headers", vec!["X-Consumer-Username"]),
    );
    let request = b"GET /chat HTTP/1.1\r\nHost: t\r\nX_Consumer_Username: admin\r\n\
                    X-Other_Thing: 1\r\nConnection: close\r\n\r\n";
    let answer = raw_request(proxy.addr, request).await;
    assert_eq!(status(&answer), 200, "{answer}");
    let seen = backend.requests();
    assert_eq!(seen.len(), 2, "auth and upstream: {seen:?}");
    for request in &seen {
        for name in request.headers.keys() {
            assert!(
                !name.as_str().contains('_'),
                "{name} reached {}",
                request.uri
            );
        }
    }
    assert!(seen[1].header("x-consumer-username").is_none());

    // `underscores_in_headers = true` passes them, as nginx's directive does.
    let backend = Backend::echo().await;
    let proxy = Proxy::with(&config(&backend).set("server.underscores_in_headers", true));
    let answer = raw_request(proxy.addr, request).await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(backend.last().header("x_consumer_username"), Some("admin"));
}

#[tokio::test]
async fn a_slow_header_gets_408_from_its_first_byte_not_per_read() {
    let backend = Backend::echo().await;
    let proxy = Proxy::with(&config(&backend).set("server.client_header_timeout", "1s"));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let started = Instant::now();
    // One byte every 100 ms: no read waits long, the whole header never completes in time.
    let header = b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut answer = Vec::new();
    for byte in header {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await
        {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
    }
    let (rest, closed) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned() + &rest;
    let elapsed = started.elapsed();
    assert_eq!(status(&answer), 408, "{answer}");
    assert!(closed, "the connection stays open after the 408");
    assert!(head(&answer).contains("connection: close"), "{answer}");
    assert!(
        head(&answer).contains("x-frame-options: sameorigin"),
        "{answer}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4),
        "{elapsed:?}"
    );
    assert_eq!(backend.count(), 0);
    assert!(
        wait_until(Duration::from_secs(2), || access_log(&proxy)
            .contains("\"GET /slow HTTP/1.1\" 408"))
        .await,
        "{}",
        access_log(&proxy)
    );

    // An idle kept-alive connection waits for its next request past the header timeout:
    // that is the keep-alive timeout's business, not a slow header.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.expect("read");
    assert_eq!(status(&String::from_utf8_lossy(&buf[..n])), 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream
        .write_all(b"GET /two HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (answer, _) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status(&answer), 200, "{answer}");
}

#[tokio::test]
async fn a_header_over_the_limit_gets_431_and_never_reaches_the_upstream() {
    let backend = Backend::echo().await;
    let proxy = Proxy::with(&config(&backend));
    // Default 32k: a 40 KiB header is refused, a 30 KiB one passes.
    let big = format!(
        "GET /big HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40 << 10)
    );
    let answer = raw_request(proxy.addr, big.as_bytes()).await;
    assert_eq!(status(&answer), 431, "{}", &answer[..answer.len().min(300)]);
    assert!(head(&answer).contains("connection: close"), "{answer}");
    assert_eq!(backend.count(), 0);
    let fits = format!(
        "GET /fits HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(30 << 10)
    );
    let answer = raw_request(proxy.addr, fits.as_bytes()).await;
    assert_eq!(status(&answer), 200, "{}", &answer[..answer.len().min(300)]);
}

fn check(config: &[u8]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, config).expect("write");
    let out = Command::new(common::binary())
        .arg("check")
        .arg("-c")
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .expect("check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path.display().to_string(),
    )
}

/// `check` refuses `config` with `FILE:LINE:COL: …needle…` and does not panic.
fn refused_at(config: &[u8], line: usize, col: usize, needle: &str) {
    let (code, stderr, path) = check(config);
    assert_eq!(code, 1, "{stderr}");
    let prefix = format!("{path}:{line}:{col}: ");
    assert!(stderr.starts_with(&prefix), "expected {prefix}: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn a_config_without_routes_is_refused_at_check_start_and_reload() {
    refused_at(b"", 1, 1, "no [[routes]]");
    refused_at(b"# being rewritten\n\n", 3, 1, "no [[routes]]");
    refused_at(b"[server]\nthreads = 1\n", 3, 1, "no [[routes]]");

    // At start: the process exits with the error.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, "# nothing yet\n").expect("write");
    let out = Command::new(common::binary())
        .arg("run")
        .arg("-c")
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [[routes]]"));

    // At reload: the truncated file is refused, the old routes keep serving.
    let backend = Backend::echo().await;
    let proxy = Proxy::with(&config(&backend));
    std::fs::write(&proxy.config_path, "").expect("truncate");
    proxy.signal("HUP");
    let refused = wait_until(Duration::from_secs(5), || {
        proxy.stderr().contains("no [[routes]]")
    })
    .await;
    assert!(refused, "{}", proxy.stderr());
    let answer = raw_request(
        proxy.addr,
        b"GET /still HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 200, "{answer}");
}

const ROUTE: &str = "[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n\
                     [[routes]]\nname = \"a\"\nprefix = \"/\"\nupstream = \"app\"\n";

#[test]
fn numbers_out_of_bounds_are_refused_with_a_position_never_a_panic() {
    for (server, col, needle) in [
        ("threads = 9223372036854775807", 11, "server.threads"),
        ("threads = 100000", 11, "server.threads"),
        ("threads = -1", 11, ""),
        (
            "client_header_max_size = \"2g\"",
            26,
            "client_header_max_size",
        ),
        ("client_header_max_size = 10", 26, "client_header_max_size"),
        (
            "client_header_timeout = \"0s\"",
            25,
            "client_header_timeout",
        ),
        ("keepalive_timeout = \"99999d\"", 21, "too large"),
        ("client_max_body_size = \"99999999g\"", 24, "too large"),
    ] {
        let config = format!("[server]\n{server}\n{ROUTE}");
        refused_at(config.as_bytes(), 2, col, needle);
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let backend = Backend::echo().await;
    let proxy = Proxy::with(&config(&backend));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let pipelined = b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n\
        POST /two HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
        POST /three HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
        GET /four HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    stream.write_all(pipelined).await.expect("write");
    let (answer, closed) = read_until_close(&mut stream, Duration::from_secs(10)).await;
    assert!(closed, "{answer}");
    let bodies: Vec<&str> = answer
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|a| a.rsplit("\r\n\r\n").next().unwrap_or(""))
        .collect();
    assert_eq!(
        bodies,
        ["path=/one", "path=/two", "path=/three", "path=/four"],
        "{answer}"
    );
    let seen = backend.requests();
    assert_eq!(&seen[1].body[..], b"hello");
    assert_eq!(&seen[2].body[..], b"abc");
}

#[tokio::test]
async fn requests_the_parser_refuses_get_the_proxys_400_a_log_line_and_a_count() {
    let backend = Backend::echo().await;
    let metrics = common::free_port();
    let proxy =
        Proxy::with(&config(&backend).set("metrics.listen", format!("127.0.0.1:{metrics}")));
    for bad in [
        &b"GET /a HTTP/1.1\r\nHost: t\r\n\x01bad: x\r\n\r\n"[..],
        b"GET /b HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n",
        b"CONNECT t:443 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /c HTTP/9.9\r\nHost: t\r\n\r\n",
    ] {
        let answer = raw_request(proxy.addr, bad).await;
        assert_eq!(status(&answer), 400, "{bad:?}: {answer}");
        let head = head(&answer);
        assert!(head.contains("x-frame-options: sameorigin"), "{answer}");
        assert!(head.contains("connection: close"), "{answer}");
    }
    assert_eq!(backend.count(), 0);
    let logged = wait_until(Duration::from_secs(2), || {
        access_log(&proxy).matches("\" 400 ").count() >= 4
    })
    .await;
    assert!(logged, "{}", access_log(&proxy));
    assert!(
        access_log(&proxy).contains("\"GET /a HTTP/1.1\" 400"),
        "{}",
        access_log(&proxy)
    );
    let text = common::metrics_text(format!("127.0.0.1:{metrics}")).await;
    // CONNECT is counted under method `OTHER`: the four refusals, whatever their method.
    let counted: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("edge_http_requests_total")
                && l.contains("route=\"unmatched\"")
                && l.contains("status=\"400\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, 4.0, "{text}");
}

#[tokio::test]
async fn query_strings_nginx_accepts_are_accepted() {
    let backend = Backend::echo().await;
    let proxy = Proxy::with(&config(&backend));
    let answer = raw_request(
        proxy.addr,
        b"GET /q?a=\"x\"&b=<y>&c=`{}|` HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 200, "{answer}");
    // `"`, `<`, `>` arrive percent-encoded (the `http` crate under Pingora refuses them
    // raw); the rest as sent.
    assert_eq!(backend.last().uri, "/q?a=%22x%22&b=%3Cy%3E&c=`{}|`");

    // The same with the request line cut inside the target (two writes).
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(b"GET /q?a=\"x").await.expect("write");
    stream.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
        .write_all(b"\"<> HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let (answer, _) = read_until_close(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(backend.last().uri, "/q?a=%22x%22%3C%3E");
}

#[tokio::test]
async fn host_methods_and_connection_as_nginx() {
    let backend = Backend::echo().await;
    let proxy = Proxy::with(&config(&backend));
    for (request, expected) in [
        (&b"GET /nohost HTTP/1.1\r\n\r\n"[..], 400),
        (b"get /lower HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"Get /mixed HTTP/1.1\r\nHost: t\r\n\r\n", 400),
        (b"TRACE /trace HTTP/1.1\r\nHost: t\r\n\r\n", 405),
    ] {
        let answer = raw_request(proxy.addr, request).await;
        assert_eq!(status(&answer), expected, "{answer}");
    }
    assert_eq!(backend.count(), 0);
    // Unknown upper-case methods pass, as in nginx; HTTP/1.0 needs no Host.
    let answer = raw_request(
        proxy.addr,
        b"PURGE-IT /m HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status(&answer), 200, "{answer}");
    assert_eq!(backend.last().method, "PURGE-IT");
    let answer = raw_request(proxy.addr, b"GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!(status(&answer), 200, "{answer}");

    // `Connection` cannot remove Host or a forwarding header, on a plain and an SSE route.
    for sse in [false, true] {
        let route = if sse { "sse = true" } else { "" };
        let backend = Backend::echo().await;
        let app = if sse {
            app_route().set("sse", true)
        } else {
            app_route()
        };
        let proxy = Proxy::with(&config_with(backend.addr, app));
        let answer = raw_request(
            proxy.addr,
            b"GET /c HTTP/1.1\r\nHost: t\r\nConnection: close, Host, X-Forwarded-For, X-Real-IP\r\n\r\n",
        )
        .await;
        assert_eq!(status(&answer), 200, "{route}: {answer}");
        let seen = backend.last();
        assert_eq!(seen.header("host"), Some("t"), "{route}");
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"), "{route}");
        assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"), "{route}");
    }
}

#[tokio::test]
async fn upgrades_pass_only_on_websocket_routes() {
    let (addr, seen) = upgrading_upstream().await;
    // No access_log key: the proxy's default (stdout).
    let proxy = Proxy::with(
        &TestConfig::new()
            .unset("access_log.path")
            .upstream("ws", [addr])
            .route(
                Route::prefix("ws", "/ws")
                    .to("ws")
                    .set("websocket", true)
                    .set("timeout", "5s"),
            )
            .route(Route::prefix("plain", "/").to("ws")),
    );

    // On the websocket route: the tunnel works both ways.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream.write_all(UPGRADE).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.expect("read");
    let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert_eq!(status(&answer), 101, "{answer}");
    stream.write_all(b"ping").await.expect("write");
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping");
    assert!(seen.lock().expect("lock")[0].contains("upgrade: websocket"));
    drop(stream);

    // Elsewhere the upgrade headers are not forwarded, and the upstream's 101 to a
    // request that did not ask for it is a 502.
    let plain = UPGRADE.to_vec();
    let plain = String::from_utf8(plain)
        .expect("text")
        .replace("GET /ws", "GET /other");
    let answer = raw_request(proxy.addr, plain.as_bytes()).await;
    assert_eq!(status(&answer), 502, "{answer}");
    assert!(head(&answer).contains("connection: close"), "{answer}");
    let forwarded = seen.lock().expect("lock")[1].clone();
    assert!(!forwarded.contains("upgrade:"), "{forwarded}");
    let answer = raw_request(proxy.addr, b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(status(&answer), 502, "{answer}");
}

#[tokio::test]
async fn answers_after_which_the_proxy_closes_say_connection_close() {
    // 502: the upstream refuses the connection.
    let backend = Backend::echo().await;
    let dead = format!("127.0.0.1:{}", common::free_port());
    let proxy = Proxy::with(&config_with(dead, app_route()));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /down HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let (answer, closed) = read_until_close(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status(&answer), 502, "{answer}");
    assert!(head(&answer).contains("connection: close"), "{answer}");
    assert!(closed);

    // 400 after a broken chunked body: the upstream never gets a complete request.
    let proxy = Proxy::with(&config(&backend));
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
        .await
        .expect("write");
    let (answer, closed) = read_until_close(&mut stream, Duration::from_secs(10)).await;
    assert_eq!(status(&answer), 400, "{answer}");
    assert!(head(&answer).contains("connection: close"), "{answer}");
    assert!(closed);
    assert_eq!(backend.count(), 0);
}

#[test]
fn config_errors_always_have_a_position() {
    // A byte that is not UTF-8: its own position.
    let mut text = b"[server]\nthreads = 1\n# caf".to_vec();
    text.push(0xE9);
    text.extend_from_slice(b"\n");
    text.extend_from_slice(ROUTE.as_bytes());
    refused_at(&text, 3, 6, "not valid UTF-8");
    // `listen = []`: at the value.
    refused_at(
        format!("[server]\nlisten = []\n{ROUTE}").as_bytes(),
        2,
        10,
        "server.listen is empty",
    );
}

/// nginx on a free port in front of `backend`, killed on drop.
struct Nginx {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM: the master stops its worker first (a KILL would leave the worker running).
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx(bin: &str, backend: &Backend) -> Nginx {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = common::free_port();
    let d = dir.path().display();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n\
         http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
         fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
         server {{ listen 127.0.0.1:{port}; location = /nginx-ready {{ return 200; }}\n\
         location / {{ proxy_pass http://{}; }} }} }}\n",
        backend.addr
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).expect("conf");
    let child = Command::new(bin)
        .args([
            "-p",
            &d.to_string(),
            "-c",
            "nginx.conf",
            "-g",
            "daemon off;",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nginx");
    let nginx = Nginx {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    // Answered by nginx itself: the test's backend shares this (blocked) thread.
    while common::raw_get_status(nginx.addr, "/nginx-ready").is_none() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    nginx
}

#[tokio::test]
async fn nginx_gives_the_same_answers() {
    let Some(bin) = common::tool("nginx", &["/usr/sbin/nginx"]) else {
        return;
    };
    let backend = Backend::echo().await;
    let nginx = nginx(bin, &backend);
    let proxy = Proxy::with(&config(&backend));
    for request in [
        &b"GET ../../etc/passwd HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET a%00b HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /a/../../x HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET http://t/abs HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"get /a HTTP/1.1\r\nHost: t\r\n\r\n",
        b"TRACE /a HTTP/1.1\r\nHost: t\r\n\r\n",
        b"F-O_O /a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"CONNECT t:443 HTTP/1.1\r\nHost: t\r\n\r\n",
        b"GET /a HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.0\r\n\r\n",
        // (Raw `"`, `<`, `>`: nginx passes them raw and the test's hyper backend refuses
        // them; see `query_strings_nginx_accepts_are_accepted`.)
        b"GET /q?c=`{}|` HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        b"GET /u HTTP/1.1\r\nHost: t\r\nX_A: 1\r\nConnection: close, Host\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: t\r\n\x01bad: x\r\n\r\n",
    ] {
        let theirs = status(&raw_request(nginx.addr, request).await);
        let ours = status(&raw_request(proxy.addr, request).await);
        assert_eq!(ours, theirs, "{}", String::from_utf8_lossy(request));
    }
    // Neither forwards a header with `_`, both keep Host.
    for seen in backend.requests() {
        assert!(seen.headers.keys().all(|n| !n.as_str().contains('_')));
        assert!(seen.header("host").is_some());
    }
}
