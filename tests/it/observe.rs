//! Observability of issue 20 against the real binary: request ids on every kind of answer
//! and on what the proxy sends, access-log rotation under concurrent load, a real
//! Prometheus scraping across a reload that moves the metrics listener, the access log
//! switching file and format at a reload without losing a line, the asset cache shrunk
//! by a reload. (OTLP: kept spans and gzip export are in `telemetry_otlp`.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, text_response, wait_until, Backend, Proxy, Recorded, Route, TestConfig};

fn is_generated_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn request_id(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no X-Request-ID on {} {:?}", response.status(), response))
        .to_owned()
}

/// Every answer carries `X-Request-ID` — proxied, local (return, unmatched, health), a
/// 502, a relayed SSE stream, an auth denial — and it is what the upstream and the auth
/// service were sent and what the JSON access log says. A valid client id is kept, an
/// invalid one replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_and_every_request_sent_carries_the_request_id() {
    let app = Backend::echo().await;
    let stream = Backend::start(|_| async {
        hyper::Response::builder()
            .status(200)
            .header("content-type", "text/event-stream")
            .body(common::full("data: one\n\n"))
            .expect("response")
    })
    .await;
    let auth = Backend::start(|req: Recorded| async move {
        if req.header("authorization") == Some("Bearer ok") {
            text_response(200, "ok")
        } else {
            text_response(401, "no")
        }
    })
    .await;
    let proxy = Proxy::with(
        &TestConfig::new()
            .set("access_log.path", "access.log")
            .set("access_log.format", "json")
            .upstream("app", [app.addr])
            .upstream("stream", [stream.addr])
            .upstream("authsvc", [auth.addr])
            .upstream("down", [format!("127.0.0.1:{}", common::free_port())])
            .set("auth.gate.upstream", "authsvc")
            .set("auth.gate.path", "/check")
            .set("auth.gate.forward_headers", vec!["Authorization"])
            .route(Route::prefix("api", "/api/").to("app"))
            .route(
                Route::prefix("chat", "/chat/")
                    .to("stream")
                    .set("sse", true),
            )
            .route(
                Route::prefix("secure", "/secure/")
                    .to("app")
                    .set("auth", "gate"),
            )
            .route(Route::exact("gone", "/gone").set("return", 410))
            .route(Route::prefix("broken", "/broken/").to("down")),
    );
    // a fresh client per request: the proxy closes the connection after some answers
    let get = |path: &str, id: Option<&str>| {
        let mut request = common::client().get(proxy.url(path));
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request.send()
    };

    // proxied: generated, sent upstream, returned
    let proxied = get("/api/generated", None).await.expect("proxied");
    let generated = request_id(&proxied);
    assert!(is_generated_id(&generated), "{generated}");
    assert_eq!(app.last().header("x-request-id"), Some(generated.as_str()));

    // a valid client id is kept end to end
    let kept = "client-7:a.b_c";
    let proxied = get("/api/kept", Some(kept)).await.expect("kept");
    assert_eq!(request_id(&proxied), kept);
    assert_eq!(app.last().header("x-request-id"), Some(kept));

    // invalid ones are replaced, upstream too
    for invalid in ["has space", "semi;colon", &"x".repeat(129)] {
        let proxied = get("/api/replaced", Some(invalid)).await.expect("replaced");
        let replaced = request_id(&proxied);
        assert!(is_generated_id(&replaced), "{invalid:?} -> {replaced}");
        assert_eq!(app.last().header("x-request-id"), Some(replaced.as_str()));
    }

    // local answers and errors
    for (path, status) in [
        ("/gone", 410),
        ("/nowhere", 404),
        ("/health", 200),
        ("/broken/x", 502),
    ] {
        let answer = get(path, None).await.expect(path);
        assert_eq!(answer.status(), status, "{path}");
        assert!(is_generated_id(&request_id(&answer)), "{path}");
        let answer = get(path, Some("local-1")).await.expect(path);
        assert_eq!(request_id(&answer), "local-1", "{path}");
    }

    // a relayed SSE stream
    let streamed = get("/chat/run", Some("stream-1")).await.expect("stream");
    assert_eq!(streamed.status(), 200);
    assert_eq!(request_id(&streamed), "stream-1");
    assert_eq!(streamed.text().await.expect("events"), "data: one\n\n");
    assert_eq!(stream.last().header("x-request-id"), Some("stream-1"));
    let streamed = get("/chat/run", None).await.expect("stream");
    let stream_id = request_id(&streamed);
    assert!(is_generated_id(&stream_id));
    assert_eq!(
        stream.last().header("x-request-id"),
        Some(stream_id.as_str())
    );

    // forward auth: the auth service gets the id; a denial returns it
    let denied = get("/secure/x", Some("auth-1")).await.expect("denied");
    assert_eq!(denied.status(), 401);
    assert_eq!(request_id(&denied), "auth-1");
    assert_eq!(auth.last().header("x-request-id"), Some("auth-1"));
    let allowed = common::client()
        .get(proxy.url("/secure/y"))
        .header("authorization", "Bearer ok")
        .send()
        .await
        .expect("allowed");
    assert_eq!(allowed.status(), 200);
    let allowed_id = request_id(&allowed);
    assert_eq!(
        auth.last().header("x-request-id"),
        Some(allowed_id.as_str())
    );
    assert_eq!(app.last().header("x-request-id"), Some(allowed_id.as_str()));

    // the JSON access log has each id with its request
    let log = proxy.dir().join("access.log");
    let logged = |id: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["request_id"] == id)
    };
    let all_there = wait_until(Duration::from_secs(10), || {
        [
            generated.as_str(),
            kept,
            "stream-1",
            "auth-1",
            allowed_id.as_str(),
        ]
        .iter()
        .all(|id| logged(id))
    })
    .await;
    assert!(
        all_there,
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// `path`, then `path.1`, `path.2`, ... as long as they exist.
fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut files = vec![path.to_owned()];
    for n in 1.. {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let rotated = PathBuf::from(name);
        if !rotated.exists() {
            break;
        }
        files.push(rotated);
    }
    files
}

/// Every request path logged, with how often, across `files`; panics on a line that is
/// not a whole `main` line.
fn logged_paths(files: &[PathBuf]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends mid-line",
            file.display()
        );
        for line in text.lines() {
            let path = line
                .split('"')
                .nth(1)
                .and_then(|request| request.split(' ').nth(1))
                .unwrap_or_else(|| panic!("not a main line in {}: {line:?}", file.display()));
            assert!(line.ends_with('"'), "split line: {line:?}");
            *seen.entry(path.to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

/// `max_size` / `max_files` under concurrent load: every line exactly once across the
/// files, none split, no file past the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_concurrent_load_loses_and_splits_no_line() {
    const REQUESTS: usize = 3000;
    const MAX_SIZE: u64 = 16 * 1024;
    let app = Backend::echo().await;
    let proxy = Proxy::with(
        &TestConfig::new()
            .set("access_log.path", "access.log")
            .set("access_log.max_size", "16k")
            .set("access_log.max_files", 100)
            .upstream("app", [app.addr])
            .route(Route::prefix("api", "/api/").to("app")),
    );
    let client = common::client();
    let proxy_url = Arc::new(proxy.url("/api/"));
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let (client, base) = (client.clone(), proxy_url.clone());
        tasks.push(tokio::spawn(async move {
            for i in (worker..REQUESTS).step_by(16) {
                let response = client
                    .get(format!("{base}{i}"))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
    let log = proxy.dir().join("access.log");
    let complete = wait_until(Duration::from_secs(20), || {
        logged_paths(&log_files(&log)).values().sum::<usize>() >= REQUESTS
    })
    .await;
    let files = log_files(&log);
    let seen = logged_paths(&files);
    assert!(complete, "{} lines logged", seen.values().sum::<usize>());
    assert!(files.len() > 5, "rotated {} times", files.len() - 1);
    for i in 0..REQUESTS {
        assert_eq!(seen.get(&format!("/api/{i}")), Some(&1), "/api/{i}");
    }
    assert_eq!(seen.len(), REQUESTS);
    for file in &files {
        let size = std::fs::metadata(file).expect("size").len();
        assert!(size <= MAX_SIZE, "{} is {size} bytes", file.display());
    }
}

/// The value of `query` for each `instance` Prometheus has a sample of.
async fn prometheus_values(web: SocketAddr, query: &str) -> HashMap<String, String> {
    let url = format!("http://{web}/api/v1/query");
    let Ok(response) = common::client()
        .get(&url)
        .query(&[("query", query)])
        .send()
        .await
    else {
        return HashMap::new();
    };
    let text = response.text().await.unwrap_or_default();
    let Ok(body) = serde_json::from_str::<serde_json::Value>(&text) else {
        return HashMap::new();
    };
    body["data"]["result"]
        .as_array()
        .map(|series| {
            series
                .iter()
                .filter_map(|s| {
                    let instance = s["metric"]["instance"].as_str()?.to_owned();
                    let value = s["value"][1].as_str()?.to_owned();
                    Some((instance, value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A real Prometheus scrapes the old and the new metrics address; a reload moves the
/// listener: the old target goes down, the new one comes up and reports the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_follows_a_reload_that_moves_the_metrics_listener() {
    let Some(prometheus) = common::tool("prometheus", &["/usr/bin/prometheus", "/bin/prometheus"])
    else {
        return;
    };
    let app = Backend::echo().await;
    let old = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let new = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let config = |metrics: SocketAddr| {
        TestConfig::new()
            .set("metrics.listen", metrics.to_string())
            .upstream("app", [app.addr])
            .route(Route::prefix("api", "/api/").to("app"))
    };
    let proxy = Proxy::with(&config(old));

    let prometheus = &common::Prometheus::start(prometheus, "200ms", &[old, new]);
    let web = prometheus.web;

    // Waits (bounded) until Prometheus says `up` is `old_up` / `new_up` for the two.
    let wait_up = |old_up: &'static str, new_up: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = prometheus_values(web, "up").await;
            if up.get(&old.to_string()).map(String::as_str) == Some(old_up)
                && up.get(&new.to_string()).map(String::as_str) == Some(new_up)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "up = {up:?}, wanted {old_up}/{new_up}: {}",
                prometheus.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait_up("1", "0").await;

    std::fs::write(&proxy.config_path, config(new).render()).expect("rewrite config");
    let moved = wait_until(Duration::from_secs(10), || {
        proxy.stderr().contains("metrics listener moved")
    })
    .await;
    assert!(moved, "{}", proxy.stderr());
    assert!(
        std::net::TcpStream::connect(old).is_err(),
        "the old metrics port still accepts"
    );
    wait_up("0", "1").await;
    let reloads = prometheus_values(web, "edge_config_reloads_total{result=\"success\"}").await;
    assert_eq!(reloads.get(&new.to_string()).map(String::as_str), Some("1"));
}

/// A reload that moves the access log to another file and format while requests run:
/// every request is in exactly one of the two files, each line whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reload_switches_the_access_log_without_losing_a_line() {
    const BEFORE_AND_AFTER: usize = 150;
    let app = Backend::echo().await;
    let config = |path: &str, format: &str| {
        TestConfig::new()
            .set("access_log.path", path)
            .set("access_log.format", format)
            .upstream("app", [app.addr])
            .route(Route::prefix("api", "/api/").to("app"))
    };
    let proxy = Proxy::with(&config("first.log", "main"));
    let client = common::client();
    let base = Arc::new(proxy.url("/api/"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // requests flow without a pause until told to stop: across the reload, whenever it lands
    let sender = {
        let (client, base, stop) = (client.clone(), base.clone(), stop.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let response = client
                    .get(format!("{base}{sent}"))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(response.status(), 200);
                sent += 1;
            }
            sent
        })
    };
    let started = wait_until(Duration::from_secs(20), || app.count() >= BEFORE_AND_AFTER).await;
    assert!(started);
    std::fs::write(&proxy.config_path, config("second.log", "json").render()).expect("rewrite");
    let reloaded = wait_until(Duration::from_secs(10), || {
        proxy.stderr().contains("config reloaded")
    })
    .await;
    assert!(reloaded, "{}", proxy.stderr());
    let at_reload = app.count();
    let after = wait_until(Duration::from_secs(20), || {
        app.count() >= at_reload + BEFORE_AND_AFTER
    })
    .await;
    assert!(after);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let requests = sender.await.expect("sender");

    let (first, second) = (
        proxy.dir().join("first.log"),
        proxy.dir().join("second.log"),
    );
    let count = |first: &str, second: &str| {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for line in first.lines() {
            let path = line.split('"').nth(1).and_then(|r| r.split(' ').nth(1));
            *seen.entry(path.expect("main line").to_owned()).or_default() += 1;
        }
        for line in second.lines() {
            let value: serde_json::Value = serde_json::from_str(line).expect("json line");
            let path = value["path"].as_str().expect("path").to_owned();
            *seen.entry(path).or_default() += 1;
        }
        seen
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let all = wait_until(Duration::from_secs(10), || {
        count(&read(&first), &read(&second)).values().sum::<usize>() >= requests
    })
    .await;
    let seen = count(&read(&first), &read(&second));
    assert!(all, "{} lines", seen.values().sum::<usize>());
    for i in 0..requests {
        assert_eq!(seen.get(&format!("/api/{i}")), Some(&1), "/api/{i}");
    }
    assert!(!read(&first).is_empty() && !read(&second).is_empty());
}

/// A reload that makes `[cache] max_size` smaller: what no longer fits is let go (the
/// assets come back as misses), what fits is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_shrinks_the_asset_cache_evicts() {
    let body = "x".repeat(60 * 1024);
    let app = Backend::start(move |_| {
        let body = body.clone();
        async move {
            hyper::Response::builder()
                .status(200)
                .header("content-type", "application/javascript")
                .body(common::full(body))
                .expect("response")
        }
    })
    .await;
    let config = |max_size: &str| {
        TestConfig::new()
            .set("cache.max_size", max_size)
            .upstream("app", [app.addr])
            .route(
                Route::prefix("assets", "/assets/")
                    .to("app")
                    .set("cache", "immutable"),
            )
    };
    let proxy = Proxy::with(&config("4m"));
    let assets: Vec<String> = (0..20).map(|i| format!("/assets/{i}.js")).collect();
    for path in &assets {
        assert_eq!(common::fetch(&proxy, "GET", path, &[]).await.status, 200);
    }
    let hits = |proxy: &Proxy| {
        let proxy = proxy.url("");
        let assets = assets.clone();
        async move {
            let mut hits = 0;
            for path in &assets {
                let response = common::client()
                    .get(format!("{}{}", proxy.trim_end_matches('/'), path))
                    .send()
                    .await
                    .expect("asset");
                if response
                    .headers()
                    .get("x-cache")
                    .and_then(|v| v.to_str().ok())
                    == Some("HIT")
                {
                    hits += 1;
                }
            }
            hits
        }
    };
    // stored on the first round (stores may finish just after the answer)
    let mut before = 0;
    for _ in 0..20 {
        before = hits(&proxy).await;
        if before == assets.len() {
            break;
        }
    }
    assert_eq!(before, assets.len(), "all 20 assets cached at 4m");
    let misses_before = app.count();

    std::fs::write(&proxy.config_path, config("256k").render()).expect("rewrite");
    let reloaded = wait_until(Duration::from_secs(10), || {
        proxy.stderr().contains("config reloaded")
    })
    .await;
    assert!(reloaded, "{}", proxy.stderr());
    let after = hits(&proxy).await;
    // 256 KiB hold at most four 60 KiB assets (and their gzip variants count too)
    assert!(after <= 4, "{after} hits after shrinking to 256k");
    assert!(app.count() > misses_before, "evicted assets fetched again");
}
