//! Prometheus metrics, scraped for real from the proxy's `metrics.listen`: counters move by
//! exactly the requests made, random paths create no series, the SSE gauge follows the
//! streams, and a real Prometheus server can scrape and query them.

use crate::common;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{channel_body, Backend, Proxy, Recorded, Route, TestConfig};
use bytes::Bytes;

/// One series: metric name and its labels.
type Series = (String, BTreeMap<String, String>);

/// Parses the Prometheus text format (the subset the proxy writes).
fn parse(text: &str) -> HashMap<Series, f64> {
    let label = regex::Regex::new(r#"(\w+)="((?:[^"\\]|\\.)*)""#).expect("regex");
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = label
            .captures_iter(labels)
            .map(|c| (c[1].to_owned(), c[2].to_owned()))
            .collect();
        let value = value.parse().unwrap_or(f64::NAN);
        out.insert((name.to_owned(), labels), value);
    }
    out
}

fn series(name: &str, labels: &[(&str, &str)]) -> Series {
    (
        name.to_owned(),
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

async fn scrape(metrics: SocketAddr) -> HashMap<Series, f64> {
    let response = common::client()
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    parse(&response.text().await.expect("body"))
}

/// A scrape in which every request made so far is counted.
///
/// A request is counted at its very end, after the client may already have its answer,
/// and leaves `edge_http_requests_in_flight` only after its counters moved. One scrape is
/// not a snapshot, though: the registry reads its metric families in hash order, so the
/// in-flight gauge can read 0 after the counters were read. So once a scrape shows nothing
/// in flight, one more scrape, all of whose reads come later, is the settled one.
async fn settled_scrape(metrics: SocketAddr) -> HashMap<Series, f64> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = scrape(metrics).await;
        let in_flight: f64 = now
            .iter()
            .filter(|((name, _), _)| name == "edge_http_requests_in_flight")
            .map(|(_, v)| *v)
            .sum();
        // A scrape itself is not a proxied request: 0 means all are done.
        if in_flight == 0.0 {
            return scrape(metrics).await;
        }
        assert!(Instant::now() < deadline, "requests still in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn delta(before: &HashMap<Series, f64>, after: &HashMap<Series, f64>, s: &Series) -> f64 {
    after.get(s).copied().unwrap_or(0.0) - before.get(s).copied().unwrap_or(0.0)
}

fn config(metrics: SocketAddr, app: SocketAddr) -> TestConfig {
    TestConfig::new()
        .set("metrics.listen", metrics.to_string())
        .upstream("app", [app])
        .upstream("dead", [format!("127.0.0.1:{}", common::free_port())])
        .set("upstreams.dead.connect_timeout", "1s")
        .route(Route::prefix("api", "/api/").to("app"))
        .route(Route::exact("gone", "/gone").set("return", 410))
        .route(Route::prefix("dead", "/dead/").to("dead"))
}

fn metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], common::free_port()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_by_exactly_the_requests_made() {
    let app = Backend::echo().await;
    let metrics = metrics_addr();
    let proxy = Proxy::with(&config(metrics, app.addr));
    let client = common::client();
    let before = settled_scrape(metrics).await;

    let mut api_body_bytes = 0usize;
    let requests: &[(&str, &str, u16)] = &[
        ("GET", "/api/a", 200),
        ("GET", "/api/a", 200),
        ("GET", "/api/a?x=1", 200),
        ("POST", "/api/b", 200),
        ("POST", "/api/b", 200),
        ("DELETE", "/api/c", 200),
        ("GET", "/gone", 410),
        ("GET", "/health", 200),
        ("GET", "/health", 200),
        ("GET", "/nope", 404),
        ("GET", "/dead/x", 502),
    ];
    for (method, path, status) in requests {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = client
            .request(method, proxy.url(path))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status().as_u16(), *status, "{path}");
        let body = response.bytes().await.expect("body");
        if path.starts_with("/api/") {
            api_body_bytes += body.len();
        }
    }
    let after = settled_scrape(metrics).await;

    let total = "edge_http_requests_total";
    let expected = [
        (("api", "GET", "200"), 3.0),
        (("api", "POST", "200"), 2.0),
        (("api", "DELETE", "200"), 1.0),
        (("gone", "GET", "410"), 1.0),
        (("health", "GET", "200"), 2.0),
        (("unmatched", "GET", "404"), 1.0),
        (("dead", "GET", "502"), 1.0),
    ];
    for ((route, method, status), n) in expected {
        let labels = [("route", route), ("method", method), ("status", status)];
        assert_eq!(
            delta(&before, &after, &series(total, &labels)),
            n,
            "{total} {labels:?}"
        );
        let count = series("edge_http_request_duration_seconds_count", &labels);
        assert_eq!(
            delta(&before, &after, &count),
            n,
            "duration count {labels:?}"
        );
    }
    // ... and no other series moved.
    let moved: f64 = after
        .iter()
        .filter(|((name, _), _)| name == total)
        .map(|(s, _)| delta(&before, &after, s))
        .sum();
    assert_eq!(moved, requests.len() as f64);

    let upstream = "edge_upstream_requests_total";
    assert_eq!(
        delta(
            &before,
            &after,
            &series(upstream, &[("upstream", "app"), ("status", "200")])
        ),
        6.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            &series(upstream, &[("upstream", "dead"), ("status", "502")])
        ),
        1.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            &series(
                "edge_upstream_duration_seconds_count",
                &[("upstream", "app")]
            )
        ),
        6.0
    );
    assert_eq!(
        delta(
            &before,
            &after,
            &series("edge_http_response_body_bytes_total", &[("route", "api")])
        ),
        api_body_bytes as f64
    );
    assert!(
        after
            .get(&series(
                "edge_config_last_reload_success_timestamp_seconds",
                &[]
            ))
            .is_some_and(|t| *t > 1.0e9),
        "the first load sets the last-success timestamp"
    );
    drop(proxy);
}

/// A tiny deterministic generator: no `rand` needed for "random" paths.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_paths_and_methods_create_no_new_label_values() {
    let app = Backend::echo().await;
    let metrics = metrics_addr();
    let proxy = Proxy::with(&config(metrics, app.addr));
    let client = common::client();
    // Warm the series every route can have, then count.
    for path in ["/api/x", "/gone", "/nope"] {
        client.get(proxy.url(path)).send().await.expect("warm");
    }
    let before = settled_scrape(metrics).await;

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut rng = XorShift(seed);
    let methods = ["GET", "POST", "BREW", "PROPFIND", "PURGE"];
    for i in 0..500 {
        let n = rng.next();
        let segment: String = (0..(n % 12 + 1))
            .map(|_| format!("%{:02X}", rng.next() % 256))
            .collect();
        let path = format!("/r{}/{segment}/{i}?q={}", n % 1000, rng.next());
        let method = methods[(n % methods.len() as u64) as usize];
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = client
            .request(method, proxy.url(&path))
            .send()
            .await
            .expect("request");
        assert!(response.status().is_client_error(), "{path}");
    }
    let after = settled_scrape(metrics).await;

    let allowed_routes: HashSet<&str> = ["api", "gone", "dead", "health", "unmatched"].into();
    let allowed_methods: HashSet<&str> = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
    ]
    .into();
    for (name, labels) in after.keys() {
        if let Some(route) = labels.get("route") {
            assert!(
                allowed_routes.contains(route.as_str()),
                "{name} route={route}"
            );
        }
        if let Some(method) = labels.get("method") {
            assert!(
                allowed_methods.contains(method.as_str()),
                "{name} method={method}"
            );
        }
        if let Some(status) = labels.get("status") {
            assert!(
                status.len() == 3 && status.bytes().all(|b| b.is_ascii_digit()),
                "{name} status={status}"
            );
        }
    }
    // 500 distinct paths, five methods: the only possible new series are `unmatched` ×
    // {GET, POST, OTHER} × {400 (a control byte in the path), 404}, GET 404 being warm.
    let new: Vec<&Series> = after.keys().filter(|s| !before.contains_key(*s)).collect();
    for (name, labels) in &new {
        assert_eq!(
            labels.get("route").map(String::as_str),
            Some("unmatched"),
            "{name}"
        );
    }
    let combinations: HashSet<(Option<&String>, Option<&String>)> = new
        .iter()
        .map(|(_, labels)| (labels.get("method"), labels.get("status")))
        .collect();
    assert!(
        combinations.len() <= 5,
        "new label values: {combinations:?}"
    );
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_gauge_goes_up_and_down() {
    // `/events/N`: a tick every 50 ms until stream N is stopped or its client leaves.
    let stopped: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = stopped.clone();
    let backend = Backend::start(move |req: Recorded| {
        let stop = stop.clone();
        async move {
            let (tx, body) = channel_body();
            tokio::spawn(async move {
                loop {
                    if stop.lock().expect("lock").contains(&req.uri) {
                        return;
                    }
                    if tx.send(Bytes::from("data: tick\n\n")).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
            hyper::Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(body)
                .expect("response")
        }
    })
    .await;
    let metrics = metrics_addr();
    let proxy = Proxy::with(
        &TestConfig::new()
            .set("metrics.listen", metrics.to_string())
            .upstream("events", [backend.addr])
            .route(
                Route::prefix("events", "/events/")
                    .to("events")
                    .set("sse", true)
                    .set("timeout", "60s"),
            ),
    );
    let active = series("edge_sse_streams_active", &[("route", "events")]);
    let in_flight = series("edge_http_requests_in_flight", &[("route", "events")]);
    let gauge = |s: &Series, scrape: &HashMap<Series, f64>| scrape.get(s).copied().unwrap_or(0.0);
    // Both gauges of the route: open SSE streams and requests in flight (they move at
    // slightly different moments of a request's end, so wait for both).
    let wait_for = |want: f64| {
        let (active, in_flight) = (active.clone(), in_flight.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let now = scrape(metrics).await;
                if gauge(&active, &now) == want && gauge(&in_flight, &now) == want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "gauges never reached {want}: sse {} in flight {}",
                    gauge(&active, &now),
                    gauge(&in_flight, &now)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    let client = common::client();
    let mut first = client
        .get(proxy.url("/events/1"))
        .send()
        .await
        .expect("stream 1");
    let mut second = client
        .get(proxy.url("/events/2"))
        .send()
        .await
        .expect("stream 2");
    assert!(first.chunk().await.expect("chunk").is_some());
    assert!(second.chunk().await.expect("chunk").is_some());
    wait_for(2.0).await;

    // The upstream ends stream 1: the client sees the end, the gauge goes down.
    stopped.lock().expect("lock").insert("/events/1".into());
    while first.chunk().await.expect("chunk").is_some() {}
    wait_for(1.0).await;

    // The client of stream 2 leaves.
    drop(second);
    wait_for(0.0).await;
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_proxy() {
    let Some(prometheus) = common::tool("prometheus", &["/usr/bin/prometheus", "/bin/prometheus"])
    else {
        return;
    };
    let app = Backend::echo().await;
    let metrics = metrics_addr();
    let proxy = Proxy::with(&config(metrics, app.addr));
    let client = common::client();
    for _ in 0..3 {
        let response = client
            .get(proxy.url("/api/p"))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200);
    }

    let prometheus = common::Prometheus::start(prometheus, "1s", &[metrics]);
    let web = prometheus.web;

    let query = format!("http://{web}/api/v1/query?query=edge_http_requests_total");
    let deadline = Instant::now() + Duration::from_secs(60);
    let series = loop {
        if let Ok(response) = client.get(&query).send().await {
            let text = response.text().await.unwrap_or_default();
            if let Ok(body) = serde_json::from_str::<serde_json::Value>(&text) {
                if let Some(result) = body["data"]["result"].as_array() {
                    if !result.is_empty() {
                        break result.clone();
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "prometheus returned no edge_http_requests_total: {}",
            prometheus.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let api = series
        .iter()
        .find(|s| s["metric"]["route"] == "api" && s["metric"]["method"] == "GET")
        .unwrap_or_else(|| panic!("no api series in {series:?}"));
    assert_eq!(api["metric"]["job"], "astron-edge");
    assert_eq!(api["metric"]["status"], "200");
    assert_eq!(api["value"][1], "3");
    drop(proxy);
}
