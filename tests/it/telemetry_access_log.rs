//! The access log of the real proxy: nginx's `main` format field by field, JSON lines with
//! the SPEC fields, health probes left out, the file reopened on SIGUSR1, stdout.

use crate::common;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::common::{wait_until, Backend, Proxy, Route, TestConfig};

fn config(path: &str, format: &str, app: SocketAddr) -> TestConfig {
    TestConfig::new()
        .set("access_log.path", path)
        .set("access_log.format", format)
        .upstream("app", [app])
        .route(Route::prefix("api", "/api/").to("app"))
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn wait_for_lines(path: &Path, n: usize) -> Vec<String> {
    let complete = wait_until(Duration::from_secs(10), || lines(path).len() >= n).await;
    assert!(complete, "expected {n} lines, got {:?}", lines(path));
    lines(path)
}

/// nginx `log_format main`, one capture per field.
const MAIN: &str = concat!(
    r#"^(?P<addr>\S+) - (?P<user>\S+) \[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "#,
    r#""(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "#,
    r#""(?P<agent>[^"]*)" "(?P<xff>[^"]*)"$"#
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn main_lines_match_nginx_field_by_field_and_health_is_not_logged() {
    let app = Backend::echo().await;
    let proxy = Proxy::with(&config("access.log", "main", app.addr));
    let log = proxy.dir().join("access.log");
    let client = common::client();
    // The readiness probes of the harness are health requests: none may be logged.
    assert!(lines(&log).is_empty(), "health logged: {:?}", lines(&log));

    let first = client
        .get(proxy.url("/api/items?page=2&q=a%20b"))
        .header("referer", "http://console.example/space")
        .header("user-agent", "Mozilla/5.0 (test)")
        .header("x-forwarded-for", "203.0.113.7")
        .basic_auth("alice", Some("secret"))
        .send()
        .await
        .expect("request");
    assert_eq!(first.status(), 200);
    let first_len = first.bytes().await.expect("body").len();
    let health = client
        .get(proxy.url("/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), 200);
    let missing = client.get(proxy.url("/nowhere")).send().await.expect("404");
    assert_eq!(missing.status(), 404);
    let missing_len = missing.bytes().await.expect("body").len();

    let logged = wait_for_lines(&log, 2).await;
    assert_eq!(logged.len(), 2, "health must not be logged: {logged:?}");
    let main = regex::Regex::new(MAIN).expect("regex");

    let f = main
        .captures(&logged[0])
        .unwrap_or_else(|| panic!("not nginx main: {:?}", logged[0]));
    assert_eq!(&f["addr"], "127.0.0.1");
    assert_eq!(&f["user"], "alice");
    let time =
        chrono::DateTime::parse_from_str(&f["time"], "%d/%b/%Y:%H:%M:%S %z").expect("time_local");
    let age = chrono::Utc::now().signed_duration_since(time);
    assert!(age.num_seconds().abs() < 60, "time_local {time} is not now");
    assert_eq!(&f["request"], "GET /api/items?page=2&q=a%20b HTTP/1.1");
    assert_eq!(&f["status"], "200");
    assert_eq!(f["bytes"].parse::<usize>().expect("bytes"), first_len);
    assert_eq!(&f["referer"], "http://console.example/space");
    assert_eq!(&f["agent"], "Mozilla/5.0 (test)");
    assert_eq!(&f["xff"], "203.0.113.7");

    let f = main
        .captures(&logged[1])
        .unwrap_or_else(|| panic!("not nginx main: {:?}", logged[1]));
    assert_eq!(&f["user"], "-");
    assert_eq!(&f["request"], "GET /nowhere HTTP/1.1");
    assert_eq!(&f["status"], "404");
    assert_eq!(f["bytes"].parse::<usize>().expect("bytes"), missing_len);
    assert_eq!(&f["referer"], "-");
    assert_eq!(&f["xff"], "-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_parse_with_the_spec_fields() {
    let app = Backend::echo().await;
    let proxy = Proxy::with(&config("stdout", "json", app.addr));
    let response = common::client()
        .post(proxy.url("/api/run?stream=1"))
        .header("user-agent", "sdk/2")
        .body("payload")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let len = response.bytes().await.expect("body").len();

    let logged = wait_until(Duration::from_secs(10), || {
        proxy.stdout().lines().any(|l| l.contains("/api/run"))
    })
    .await;
    assert!(logged, "no JSON line on stdout: {:?}", proxy.stdout());
    let line = proxy
        .stdout()
        .lines()
        .find(|l| l.contains("/api/run"))
        .expect("line")
        .to_owned();
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    chrono::DateTime::parse_from_rfc3339(v["time"].as_str().expect("time")).expect("RFC 3339");
    assert_eq!(v["remote_addr"], "127.0.0.1");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/api/run");
    assert_eq!(v["query"], "stream=1");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["body_bytes_sent"], len);
    assert!(v["request_time"].as_f64().is_some_and(|t| t >= 0.0));
    assert!(v["upstream_response_time"]
        .as_f64()
        .is_some_and(|t| t >= 0.0));
    assert_eq!(v["upstream_addr"], app.addr.to_string());
    assert_eq!(v["route"], "api");
    assert!(v["referer"].is_null());
    assert_eq!(v["user_agent"], "sdk/2");
    assert!(v["x_forwarded_for"].is_null());
    // Tracing is off: no trace id, but the field is there.
    assert!(v.get("trace_id").is_some_and(|t| t.is_null()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_log_file() {
    let app = Backend::echo().await;
    let proxy = Proxy::with(&config("access.log", "main", app.addr));
    let log = proxy.dir().join("access.log");
    let rotated = proxy.dir().join("access.log.1");
    let client = common::client();
    let get = |path: &str| client.get(proxy.url(path)).send();

    assert_eq!(get("/api/before").await.expect("request").status(), 200);
    wait_for_lines(&log, 1).await;
    // logrotate: move the file, then signal.
    std::fs::rename(&log, &rotated).expect("rotate");
    proxy.signal("USR1");
    let reopened = wait_until(Duration::from_secs(10), || log.exists()).await;
    assert!(reopened, "SIGUSR1 did not reopen the access log");

    assert_eq!(get("/api/after").await.expect("request").status(), 200);
    let new_lines = wait_for_lines(&log, 1).await;
    assert_eq!(new_lines.len(), 1);
    assert!(new_lines[0].contains("GET /api/after "), "{new_lines:?}");
    let old_lines = lines(&rotated);
    assert_eq!(old_lines.len(), 1);
    assert!(old_lines[0].contains("GET /api/before "), "{old_lines:?}");
    // The process is alive and well after the signal.
    assert_eq!(get("/health").await.expect("health").status(), 200);
}
