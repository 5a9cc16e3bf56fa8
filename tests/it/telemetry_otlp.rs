//! OTLP traces and metrics against a real collector protocol: a gRPC receiver built from
//! the `opentelemetry-proto` tonic server types runs inside the test, the real proxy
//! exports to it. Also http/protobuf, and collectors that are down or never answer.

use crate::common;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{text_response, wait_until, Backend, Proxy, Route, TestConfig};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tonic::codec::CompressionEncoding;

/// A span as received, with the service name of its resource.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    service: String,
    pub(crate) span: Span,
}

/// Attributes as strings, by key.
type Attributes = HashMap<String, String>;

/// The in-test collector: records what the proxy exports over gRPC.
#[derive(Clone, Default)]
pub(crate) struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
    /// `x-tenant` metadata of the last trace export.
    tenant: Arc<Mutex<Option<String>>>,
    /// Metric name → the attribute sets of its data points.
    metrics: Arc<Mutex<HashMap<String, Vec<Attributes>>>>,
    /// `grpc-encoding` of each export ("identity" when absent): traces, then metrics.
    encodings: Arc<Mutex<(Vec<String>, Vec<String>)>>,
}

/// The `grpc-encoding` a request came with.
fn grpc_encoding<T>(request: &tonic::Request<T>) -> String {
    request
        .metadata()
        .get("grpc-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .to_owned()
}

impl Collector {
    fn record_spans(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.resource_spans {
            let attrs = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = attrs.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("lock").clone()
    }

    fn span_named(&self, name: &str) -> Option<Received> {
        self.spans().into_iter().find(|r| r.span.name == name)
    }

    fn metric_points(&self, name: &str) -> Vec<HashMap<String, String>> {
        self.metrics
            .lock()
            .expect("lock")
            .get(name)
            .cloned()
            .unwrap_or_default()
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let encoding = grpc_encoding(&request);
        self.encodings.lock().expect("lock").0.push(encoding);
        let tenant = request.metadata().get("x-tenant");
        *self.tenant.lock().expect("lock") = tenant.and_then(|v| v.to_str().ok()).map(Into::into);
        self.record_spans(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let encoding = grpc_encoding(&request);
        self.encodings.lock().expect("lock").1.push(encoding);
        let mut metrics = self.metrics.lock().expect("lock");
        for resource in request.into_inner().resource_metrics {
            for scope in resource.scope_metrics {
                for metric in scope.metrics {
                    let points: Vec<HashMap<String, String>> = match metric.data {
                        Some(Data::Histogram(h)) => h
                            .data_points
                            .iter()
                            .map(|p| attributes(&p.attributes))
                            .collect(),
                        _ => Vec::new(),
                    };
                    metrics.entry(metric.name).or_default().extend(points);
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Starts the gRPC collector on a free port; it stops when the test's runtime ends.
pub(crate) async fn start_collector() -> (Collector, SocketAddr) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", common::free_port()))
        .await
        .expect("bind collector");
    let addr = listener.local_addr().expect("collector addr");
    let collector = Collector::default();
    let server = tonic::transport::Server::builder()
        .add_service(
            TraceServiceServer::new(collector.clone()).accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            MetricsServiceServer::new(collector.clone())
                .accept_compressed(CompressionEncoding::Gzip),
        )
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    (collector, addr)
}

pub(crate) fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The upstream answers 200; the auth service allows everything.
fn config(collector: &str, protocol: &str, app: SocketAddr, auth: SocketAddr) -> TestConfig {
    TestConfig::new()
        .set("access_log.path", "access.log")
        .set("access_log.format", "json")
        .set("telemetry.enabled", true)
        .set("telemetry.endpoint", collector)
        .set("telemetry.protocol", protocol)
        .set("telemetry.service_name", "edge-under-test")
        .set("telemetry.metrics_interval", "300ms")
        .upstream("app", [app])
        .upstream("authsvc", [auth])
        .upstream("down", [format!("127.0.0.1:{}", common::free_port())])
        .set("upstreams.down.connect_timeout", "1s")
        .set("auth.gate.upstream", "authsvc")
        .set("auth.gate.path", "/check")
        .set("auth.gate.timeout", "5s")
        .route(Route::prefix("api", "/api/").to("app"))
        .route(
            Route::prefix("secure", "/secure/")
                .to("app")
                .set("auth", "gate"),
        )
        .route(Route::prefix("broken", "/broken/").to("down"))
}

/// Exports quickly, so the tests wait milliseconds rather than the default 5 s.
pub(crate) const FAST_EXPORT: &[(&str, &str)] = &[
    ("OTLP_TRACE_SCHEDULE_DELAY_MILLIS", "100"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=edge"),
];

async fn edge_with_collector() -> (Collector, Backend, Backend, Proxy) {
    let (collector, addr) = start_collector().await;
    let app = Backend::echo().await;
    let auth = Backend::start(|_| async { text_response(200, "ok") }).await;
    let proxy = Proxy::with_env(
        &config(&format!("http://{addr}"), "grpc", app.addr, auth.addr),
        FAST_EXPORT,
    );
    (collector, app, auth, proxy)
}

pub(crate) async fn wait_for_span(collector: &Collector, name: &str) -> Received {
    let found = wait_until(Duration::from_secs(15), || {
        collector.span_named(name).is_some()
    })
    .await;
    assert!(found, "no span {name:?}; got {:?}", collector.spans());
    collector.span_named(name).expect("span")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_span_has_every_spec_attribute_and_joins_the_incoming_trace() {
    let (collector, app, _auth, proxy) = edge_with_collector().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_id = "00f067aa0ba902b7";
    let response = common::client()
        .get(proxy.url("/api/items?page=2"))
        .header("traceparent", format!("00-{trace_id}-{parent_id}-01"))
        .header("user-agent", "telemetry-test/1.0")
        .header("host", "edge.example:8080")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);

    let received = wait_for_span(&collector, "GET api").await;
    let span = &received.span;
    assert_eq!(received.service, "edge-under-test");
    // OTEL_EXPORTER_OTLP_HEADERS travel as gRPC metadata.
    assert_eq!(
        collector.tenant.lock().expect("lock").as_deref(),
        Some("edge")
    );
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert_eq!(hex(&span.trace_id), trace_id, "same trace as the client's");
    assert_eq!(
        hex(&span.parent_span_id),
        parent_id,
        "child of the client's span"
    );
    let attrs = attributes(&span.attributes);
    let expect = [
        ("http.request.method", "GET".to_string()),
        ("url.path", "/api/items".to_string()),
        ("http.route", "api".to_string()),
        ("http.response.status_code", "200".to_string()),
        ("client.address", "127.0.0.1".to_string()),
        ("server.address", "edge.example".to_string()),
        ("user_agent.original", "telemetry-test/1.0".to_string()),
        ("upstream.address", app.addr.to_string()),
    ];
    for (key, value) in expect {
        assert_eq!(attrs.get(key), Some(&value), "{key} in {attrs:?}");
    }
    assert_ne!(
        span.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );

    // The upstream got the proxy's own traceparent: same trace, parent = the proxy's span.
    let upstream_traceparent = app.last().header("traceparent").map(str::to_owned);
    assert_eq!(
        upstream_traceparent,
        Some(format!("00-{trace_id}-{}-01", hex(&span.span_id)))
    );

    // The JSON access log carries the trace id.
    let log = proxy.dir().join("access.log");
    let logged = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(trace_id))
    })
    .await;
    assert!(logged, "trace_id not in the access log");
}

/// The client's sampled flag decides (parent-based sampling) and its `tracestate` travels
/// on with the proxy's own `traceparent`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_parent_is_followed_and_tracestate_travels() {
    let (collector, app, _auth, proxy) = edge_with_collector().await;
    let client = common::client();
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let sampled_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let send = |path: &'static str, traceparent: String| {
        client
            .get(proxy.url(path))
            .header("traceparent", traceparent)
            .header("tracestate", "vendor=1,other=x")
            .send()
    };
    // What the upstream got of a request that was answered 200.
    let forwarded = |path: &'static str, traceparent: String| {
        let sent = send(path, traceparent);
        async {
            let response = sent.await.expect("request");
            assert_eq!(response.status(), 200);
            app.last()
        }
    };
    let upstream = forwarded(
        "/api/unsampled",
        format!("00-{unsampled_trace}-b7ad6b7169203331-00"),
    )
    .await;
    let traceparent = upstream.header("traceparent").unwrap_or_default();
    assert!(
        traceparent.starts_with(&format!("00-{unsampled_trace}-")) && traceparent.ends_with("-00"),
        "unsampled context propagated: {traceparent}"
    );
    assert!(
        !traceparent.contains("b7ad6b7169203331"),
        "the proxy's own span id"
    );
    assert_eq!(upstream.header("tracestate"), Some("vendor=1,other=x"));

    forwarded(
        "/api/sampled",
        format!("00-{sampled_trace}-b7ad6b7169203331-01"),
    )
    .await;
    let span = wait_for_span(&collector, "GET api").await.span;
    assert_eq!(hex(&span.trace_id), sampled_trace);
    assert_eq!(span.trace_state, "vendor=1,other=x");
    // sampled, parent known to be remote, and remote (SpanFlags)
    assert_eq!(span.flags, 0x301);
    // Spans leave in order: the unsampled one would have been in this export or before.
    assert!(
        collector
            .spans()
            .iter()
            .all(|r| hex(&r.span.trace_id) != unsampled_trace),
        "an unsampled request was exported"
    );

    // Without a valid traceparent the client's tracestate has no span to belong to: the
    // upstream gets the proxy's new trace and no tracestate.
    let upstream = forwarded("/api/orphan-state", "not-a-traceparent".into()).await;
    let traceparent = upstream.header("traceparent").unwrap_or_default();
    assert!(
        traceparent.len() == 55 && !traceparent.contains(sampled_trace),
        "a new trace: {traceparent}"
    );
    assert_eq!(upstream.header("tracestate"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_traceparent_starts_a_trace_and_5xx_is_an_error() {
    let (collector, app, _auth, proxy) = edge_with_collector().await;
    let client = common::client();
    let ok = client
        .get(proxy.url("/api/fresh"))
        .send()
        .await
        .expect("ok");
    assert_eq!(ok.status(), 200);
    let failed = client
        .get(proxy.url("/broken/x"))
        .send()
        .await
        .expect("502");
    assert_eq!(failed.status(), 502);

    let fresh = wait_for_span(&collector, "GET api").await.span;
    assert!(fresh.parent_span_id.is_empty(), "a root span");
    let traceparent = app.last().header("traceparent").map(str::to_owned);
    assert_eq!(
        traceparent,
        Some(format!(
            "00-{}-{}-01",
            hex(&fresh.trace_id),
            hex(&fresh.span_id)
        ))
    );
    let broken = wait_for_span(&collector, "GET broken").await.span;
    assert_eq!(
        broken.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(
        attributes(&broken.attributes).get("http.response.status_code"),
        Some(&"502".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_call_is_a_client_child_span_with_its_own_traceparent() {
    let (collector, app, auth, proxy) = edge_with_collector().await;
    let response = common::client()
        .get(proxy.url("/secure/data"))
        .header("authorization", "Bearer t")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);

    let server = wait_for_span(&collector, "GET secure").await.span;
    let client = wait_for_span(&collector, "GET gate").await.span;
    assert_eq!(client.kind, SpanKind::Client as i32);
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.parent_span_id, server.span_id);
    let auth_traceparent = auth.last().header("traceparent").map(str::to_owned);
    assert_eq!(
        auth_traceparent,
        Some(format!(
            "00-{}-{}-01",
            hex(&client.trace_id),
            hex(&client.span_id)
        ))
    );
    // The upstream request is the server span's child, not the auth span's.
    let upstream_traceparent = app.last().header("traceparent").map(str::to_owned);
    assert_eq!(
        upstream_traceparent,
        Some(format!(
            "00-{}-{}-01",
            hex(&server.trace_id),
            hex(&server.span_id)
        ))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_arrive_under_the_semantic_convention_names() {
    let (collector, _app, _auth, proxy) = edge_with_collector().await;
    let response = common::client()
        .post(proxy.url("/api/submit"))
        .body("x")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let arrived = wait_until(Duration::from_secs(15), || {
        let server = collector.metric_points("http.server.request.duration");
        let client = collector.metric_points("http.client.request.duration");
        server
            .iter()
            .any(|p| p.get("http.route").map(String::as_str) == Some("api"))
            && !client.is_empty()
    })
    .await;
    assert!(arrived, "semantic-convention metrics did not arrive");
    let point = collector
        .metric_points("http.server.request.duration")
        .into_iter()
        .find(|p| p.get("http.route").map(String::as_str) == Some("api"))
        .expect("point");
    assert_eq!(point["http.request.method"], "POST");
    assert_eq!(point["http.response.status_code"], "200");
    let client = collector.metric_points("http.client.request.duration");
    assert!(
        client
            .iter()
            .any(|p| p.get("server.address").map(String::as_str) == Some("app")),
        "{client:?}"
    );
}

/// An OTLP/HTTP receiver: a plain HTTP server that records the protobuf bodies it is sent.
async fn otlp_http_receiver() -> Backend {
    Backend::start(|_| async {
        hyper::Response::builder()
            .status(200)
            .header("content-type", "application/x-protobuf")
            .body(common::full(Vec::new()))
            .expect("response")
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_and_environment_overrides() {
    let receiver = otlp_http_receiver().await;
    let app = Backend::echo().await;
    // The table says off and points elsewhere: the environment turns it on and redirects.
    let table = TestConfig::new()
        .set("telemetry.enabled", false)
        .set(
            "telemetry.endpoint",
            format!("http://127.0.0.1:{}", common::free_port()),
        )
        .upstream("app", [app.addr])
        .route(Route::prefix("api", "/api/").to("app"));
    let endpoint = format!("http://{}", receiver.addr);
    let proxy = Proxy::with_env(
        &table,
        &[
            ("OTLP_ENABLE", "1"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "edge-from-env"),
            ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"),
            ("OTLP_TRACE_SCHEDULE_DELAY_MILLIS", "100"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-api-key=secret%20one,x-tenant=a",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-tenant=b"),
        ],
    );
    assert_eq!(
        common::fetch(&proxy, "GET", "/api/x", &[]).await.status,
        200
    );

    let collector = Collector::default();
    let arrived = wait_until(Duration::from_secs(15), || {
        for req in receiver.requests() {
            if req.uri == "/v1/traces" {
                if let Ok(decoded) = ExportTraceServiceRequest::decode(req.body.clone()) {
                    collector.record_spans(decoded);
                }
            }
        }
        collector.span_named("GET api").is_some()
    })
    .await;
    assert!(arrived, "no span over http/protobuf");
    let received = collector.span_named("GET api").expect("span");
    assert_eq!(received.service, "edge-from-env");
    let request = receiver
        .requests()
        .into_iter()
        .find(|r| r.uri == "/v1/traces")
        .expect("trace export");
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.header("content-type"),
        Some("application/x-protobuf")
    );
    // OTEL_EXPORTER_OTLP_HEADERS, percent-decoded; the traces-specific variable wins.
    assert_eq!(request.header("x-api-key"), Some("secret one"));
    assert_eq!(request.header("x-tenant"), Some("b"));
    let decoded = ExportTraceServiceRequest::decode(request.body).expect("protobuf");
    let resource = decoded.resource_spans[0]
        .resource
        .as_ref()
        .expect("resource");
    assert_eq!(
        attributes(&resource.attributes).get("deployment.environment"),
        Some(&"test".to_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_spans_and_metrics_are_flushed_at_shutdown() {
    let (collector, addr) = start_collector().await;
    let app = Backend::echo().await;
    let auth = Backend::start(|_| async { text_response(200, "ok") }).await;
    // Nothing is exported on a schedule within the test: only the shutdown flush can.
    let config = config(&format!("http://{addr}"), "grpc", app.addr, auth.addr)
        .set("telemetry.metrics_interval", "10m");
    let mut proxy = Proxy::with_env(&config, &[("OTLP_TRACE_SCHEDULE_DELAY_MILLIS", "600000")]);
    assert_eq!(
        common::fetch(&proxy, "GET", "/api/last", &[]).await.status,
        200
    );
    let logged_before_exit = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(proxy.dir().join("access.log")).is_ok_and(|t| !t.is_empty())
    })
    .await;
    assert!(logged_before_exit);
    assert!(collector.spans().is_empty(), "exported before the shutdown");

    proxy.signal("TERM");
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "did not exit cleanly: {status:?}\n{}",
        proxy.stderr()
    );
    assert!(
        collector.span_named("GET api").is_some(),
        "the pending span was not flushed at exit"
    );
    assert!(
        !collector
            .metric_points("http.server.request.duration")
            .is_empty(),
        "the metrics were not flushed at exit"
    );
}

/// 200 requests through a proxy whose collector is `collector`: all succeed, none slowly,
/// and SIGTERM still ends the process within its bounds. Returns the spans the bounded
/// export queue dropped.
async fn requests_unaffected_by(collector: &str) -> u64 {
    let app = Backend::echo().await;
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let body = TestConfig::new()
        .set("metrics.listen", metrics.to_string())
        .set("telemetry.enabled", true)
        .set("telemetry.endpoint", collector)
        .set("telemetry.metrics_interval", "200ms")
        .upstream("app", [app.addr])
        .route(Route::prefix("api", "/").to("app"));
    let mut proxy = Proxy::with_env(
        &body,
        &[
            ("OTLP_TRACE_SCHEDULE_DELAY_MILLIS", "50"),
            ("OTLP_TRACE_MAX_QUEUE_SIZE", "64"),
            ("OTLP_TRACE_MAX_EXPORT_BATCH_SIZE", "16"),
        ],
    );
    let client = common::client();
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    for i in 0..200 {
        let t = Instant::now();
        let response = client
            .get(proxy.url(&format!("/item/{i}")))
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), 200, "request {i}");
        slowest = slowest.max(t.elapsed());
    }
    // An export on the request path would cost seconds (connect / 10 s export timeout).
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "200 requests took {:?}",
        started.elapsed()
    );

    let scrape = common::metrics_text(metrics).await;
    let dropped = scrape
        .lines()
        .find_map(|l| l.strip_prefix("edge_otlp_spans_dropped_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("edge_otlp_spans_dropped_total");

    proxy.signal("TERM");
    // grace period 2 s (nothing in flight: no wait) + flush bound 3 s + margin
    let status = proxy.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "did not exit cleanly: {status:?}\n{}",
        proxy.stderr()
    );
    dropped as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_on_a_closed_port_costs_requests_nothing() {
    requests_unaffected_by(&format!("http://127.0.0.1:{}", common::free_port())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_requests_nothing() {
    // Accepts connections and reads nothing, answers nothing.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", common::free_port()))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            keep.lock().expect("lock").push(stream);
        }
    });
    let dropped = requests_unaffected_by(&format!("http://{addr}")).await;
    // The export is stuck, the queue holds 64: the rest is dropped, and counted.
    assert!(dropped > 0, "no dropped spans counted");
    assert!(
        !held.lock().expect("lock").is_empty(),
        "the proxy never tried the collector"
    );
}

/// `http.request.header.x-request-id`, a one-element string array (semantic conventions).
fn request_id_attribute(span: &Span) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == "http.request.header.x-request-id")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::ArrayValue(array) => match array.values.first()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        })
}

/// `sampling_ratio = 0`: only spans of errors (a 502) and of slow requests are exported,
/// each counted; the upstream still gets the head decision (unsampled) in its
/// `traceparent`; the request id is the span's trace id and one of its attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_and_slow_spans_are_kept_at_sampling_ratio_zero() {
    let (collector, addr) = start_collector().await;
    let app = Backend::echo().await;
    let slow = Backend::start(|_| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        text_response(200, "slow")
    })
    .await;
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let proxy = Proxy::with_env(
        &TestConfig::new()
            .set("metrics.listen", metrics.to_string())
            .set("telemetry.enabled", true)
            .set("telemetry.endpoint", format!("http://{addr}"))
            .set("telemetry.sampling_ratio", 0.0)
            .set("telemetry.slow_threshold", "300ms")
            .upstream("app", [app.addr])
            .upstream("slow", [slow.addr])
            .upstream("down", [format!("127.0.0.1:{}", common::free_port())])
            .route(Route::prefix("api", "/api/").to("app"))
            .route(Route::prefix("lagging", "/lagging/").to("slow"))
            .route(Route::prefix("broken", "/broken/").to("down")),
        FAST_EXPORT,
    );
    let client = common::client();
    let get = |path: &'static str| client.get(proxy.url(path)).send();
    for _ in 0..5 {
        assert_eq!(get("/api/fast").await.expect("fast").status(), 200);
    }
    let lagging = get("/lagging/x").await.expect("slow");
    assert_eq!(lagging.status(), 200);
    // the proxy closes the connection after a 502: a client of its own
    let failed = common::client()
        .get(proxy.url("/broken/x"))
        .send()
        .await
        .expect("502");
    assert_eq!(failed.status(), 502);
    let failed_id = failed
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .expect("request id on the 502");

    let broken = wait_for_span(&collector, "GET broken").await.span;
    assert_eq!(
        broken.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    // the request id is the trace id of the request's span, and on the span
    assert_eq!(hex(&broken.trace_id), failed_id);
    assert_eq!(request_id_attribute(&broken), Some(failed_id));
    let kept_slow = wait_for_span(&collector, "GET lagging").await.span;
    let upstream_traceparent = slow.last().header("traceparent").map(str::to_owned);
    assert_eq!(
        upstream_traceparent,
        Some(format!(
            "00-{}-{}-00",
            hex(&kept_slow.trace_id),
            hex(&kept_slow.span_id)
        )),
        "the upstream keeps the head decision"
    );
    // the fast ones went before the kept ones, and none is there
    assert!(
        collector.span_named("GET api").is_none(),
        "{:?}",
        collector.spans()
    );

    let scrape = common::metrics_text(metrics).await;
    assert!(
        scrape.contains("edge_trace_spans_kept_total{reason=\"error\"} 1\n"),
        "{scrape}"
    );
    assert!(
        scrape.contains("edge_trace_spans_kept_total{reason=\"slow\"} 1\n"),
        "{scrape}"
    );
}

/// `compression = "gzip"` over gRPC: the collector sees `grpc-encoding: gzip` on span and
/// metric exports (tonic decodes them: a wrong encoding would fail the export).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_is_gzip_compressed() {
    let (collector, addr) = start_collector().await;
    let app = Backend::echo().await;
    let auth = Backend::start(|_| async { text_response(200, "ok") }).await;
    let table = config(&format!("http://{addr}"), "grpc", app.addr, auth.addr)
        .set("telemetry.compression", "gzip");
    let proxy = Proxy::with_env(&table, FAST_EXPORT);
    assert_eq!(
        common::fetch(&proxy, "GET", "/api/zipped", &[])
            .await
            .status,
        200
    );
    wait_for_span(&collector, "GET api").await;
    let metrics_arrived = wait_until(Duration::from_secs(15), || {
        !collector
            .metric_points("http.server.request.duration")
            .is_empty()
    })
    .await;
    assert!(metrics_arrived, "no metrics export");
    let (traces, metrics) = collector.encodings.lock().expect("lock").clone();
    assert!(
        !traces.is_empty() && traces.iter().all(|e| e == "gzip"),
        "{traces:?}"
    );
    assert!(
        !metrics.is_empty() && metrics.iter().all(|e| e == "gzip"),
        "{metrics:?}"
    );
}

/// `OTEL_EXPORTER_OTLP_COMPRESSION=gzip` over http/protobuf: `Content-Encoding: gzip`
/// bodies that inflate to valid export requests, spans and metrics alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_export_is_gzip_compressed_from_the_environment() {
    use std::io::Read as _;
    let receiver = otlp_http_receiver().await;
    let app = Backend::echo().await;
    let table = TestConfig::new()
        .set("telemetry.enabled", true)
        .set("telemetry.endpoint", format!("http://{}", receiver.addr))
        .set("telemetry.protocol", "http/protobuf")
        .set("telemetry.metrics_interval", "300ms")
        .upstream("app", [app.addr])
        .route(Route::prefix("api", "/api/").to("app"));
    let proxy = Proxy::with_env(
        &table,
        &[
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTLP_TRACE_SCHEDULE_DELAY_MILLIS", "100"),
        ],
    );
    assert_eq!(
        common::fetch(&proxy, "GET", "/api/x", &[]).await.status,
        200
    );
    let inflate = |body: &[u8]| {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .expect("a gzip body");
        out
    };
    let both = wait_until(Duration::from_secs(15), || {
        let requests = receiver.requests();
        ["/v1/traces", "/v1/metrics"]
            .iter()
            .all(|signal| requests.iter().any(|r| r.uri == *signal))
    })
    .await;
    assert!(both, "exports: {:?}", receiver.requests());
    let collector = Collector::default();
    for request in receiver.requests() {
        assert_eq!(
            request.header("content-encoding"),
            Some("gzip"),
            "{}",
            request.uri
        );
        let body = inflate(&request.body);
        match request.uri.as_str() {
            "/v1/traces" => {
                collector.record_spans(ExportTraceServiceRequest::decode(&body[..]).expect("spans"))
            }
            "/v1/metrics" => {
                ExportMetricsServiceRequest::decode(&body[..]).expect("metrics");
            }
            other => panic!("unexpected export to {other}"),
        }
    }
    assert!(collector.span_named("GET api").is_some());
}

/// A reload that points `[telemetry]` at another collector: new requests' spans go there,
/// with the new sampling ratio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_export_to_another_collector() {
    let (first, first_addr) = start_collector().await;
    let (second, second_addr) = start_collector().await;
    let app = Backend::echo().await;
    let auth = Backend::start(|_| async { text_response(200, "ok") }).await;
    let table =
        |collector: SocketAddr| config(&format!("http://{collector}"), "grpc", app.addr, auth.addr);
    let proxy = Proxy::with_env(&table(first_addr), FAST_EXPORT);
    let client = common::client();
    let get = |path: &'static str| client.get(proxy.url(path)).send();
    assert_eq!(get("/api/before").await.expect("before").status(), 200);
    wait_for_span(&first, "GET api").await;

    std::fs::write(&proxy.config_path, table(second_addr).render()).expect("rewrite config");
    let reloaded = wait_until(Duration::from_secs(10), || {
        proxy.stderr().contains("config reloaded")
    })
    .await;
    assert!(reloaded, "{}", proxy.stderr());
    assert_eq!(get("/api/after").await.expect("after").status(), 200);
    let after = wait_for_span(&second, "GET api").await.span;
    assert!(attributes(&after.attributes)["url.path"].ends_with("/api/after"));
    assert!(
        first
            .spans()
            .iter()
            .all(|r| attributes(&r.span.attributes)["url.path"] != "/api/after"),
        "the old collector got a span after the reload"
    );
}
