//! Forward auth (nginx `auth_request`) on the workflow routes: allow with copied identity
//! headers, 401/403 relayed, anything else 500, forged identity never reaching upstream.

use crate::common;
use std::time::{Duration, Instant};

use crate::common::{free_port, full, Backend, Proxy, Recorded, Route, TestConfig};
use hyper::Response;

const AUTH_PATH: &str = "/internal/gateway/auth/workflow";

/// The auth service: its answer depends on the client's `Authorization`.
async fn auth_service() -> Backend {
    Backend::start(|req: Recorded| async move {
        let answer = |status: u16| Response::builder().status(status);
        let token = req.header("authorization").unwrap_or("").to_owned();
        let resp = match token.as_str() {
            "Bearer good" => answer(200)
                .header("X-Consumer-Username", "alice")
                .header("X-Workflow-Gateway-Timestamp", "1700000000")
                .header("X-Workflow-Gateway-Signature", "sig-alice"),
            "Bearer partial" => answer(204).header("X-Consumer-Username", "bob"),
            "Bearer expired" => answer(401)
                .header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
                .header("Content-Type", "application/json"),
            "Bearer forbidden" => answer(403),
            "Bearer boom" => answer(500),
            "Bearer redirect" => answer(302).header("Location", "/login"),
            "Bearer slow" => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                answer(200)
            }
            _ => answer(401).header("WWW-Authenticate", "Bearer"),
        };
        let body = match token.as_str() {
            "Bearer expired" => "{\"error\":\"token expired\"}",
            "Bearer forbidden" => "forbidden",
            _ => "",
        };
        resp.body(full(body)).expect("response")
    })
    .await
}

/// The workflow service: echoes, and sends back headers the proxy must hide.
async fn workflow_service() -> Backend {
    Backend::start(|req: Recorded| async move {
        Response::builder()
            .status(200)
            .header("Content-Type", "text/plain")
            .header("X-Workflow-Internal-Key", "internal-secret")
            .header("X-Consumer-Username", "leak")
            .header("X-Workflow-Gateway-Signature", "leak")
            .body(full(format!("{} {}", req.method, req.uri)))
            .expect("response")
    })
    .await
}

fn config(auth_addr: &str, workflow: &Backend) -> TestConfig {
    let no_internal_key = toml::Table::from_iter([("X-Workflow-Internal-Key".into(), "".into())]);
    TestConfig::new()
        .upstream("hub", [auth_addr])
        .upstream("workflow", [workflow.addr])
        .set("auth.gateway.upstream", "hub")
        .set("auth.gateway.path", AUTH_PATH)
        .set("auth.gateway.timeout", "1s")
        .set("auth.gateway.forward_headers", vec!["Authorization"])
        .set("auth.gateway.copy_headers", IDENTITY.to_vec())
        .route(
            Route::exact("workflow-chat", "/workflow/v1/chat/completions")
                .to("workflow")
                .set("auth", "gateway")
                .set("sse", true)
                .set("set_request_headers", no_internal_key)
                .set(
                    "hide_response_headers",
                    [&IDENTITY[..], &["X-Workflow-Internal-Key"]].concat(),
                ),
        )
}

/// The identity headers the gateway's auth answer carries.
const IDENTITY: [&str; 3] = [
    "X-Consumer-Username",
    "X-Workflow-Gateway-Timestamp",
    "X-Workflow-Gateway-Signature",
];

struct Setup {
    auth: Backend,
    workflow: Backend,
    proxy: Proxy,
}

async fn setup() -> Setup {
    let auth = auth_service().await;
    let workflow = workflow_service().await;
    let proxy = Proxy::with(&config(&auth.addr.to_string(), &workflow));
    Setup {
        auth,
        workflow,
        proxy,
    }
}

async fn chat(proxy: &Proxy, token: &str) -> reqwest::Response {
    common::client()
        .post(proxy.url("/workflow/v1/chat/completions?stream=true&x=1"))
        .header("Authorization", token)
        .header("X-Consumer-Username", "mallory")
        .header("X-Workflow-Gateway-Timestamp", "0")
        .header("X-Workflow-Gateway-Signature", "forged")
        .header("X-Workflow-Internal-Key", "forged")
        .header("X-Forwarded-For", "198.51.100.1")
        .body("{\"flow_id\":\"1\"}")
        .send()
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_request_carries_the_auth_identity_only() {
    let s = setup().await;
    let resp = chat(&s.proxy, "Bearer good").await;
    assert_eq!(resp.status(), 200);
    for hidden in [
        "x-workflow-internal-key",
        "x-consumer-username",
        "x-workflow-gateway-signature",
    ] {
        assert!(
            resp.headers().get(hidden).is_none(),
            "{hidden} reached the client"
        );
    }
    assert_eq!(
        resp.text().await.expect("body"),
        "POST /workflow/v1/chat/completions?stream=true&x=1"
    );

    let upstream = s.workflow.last();
    assert_eq!(upstream.header("x-consumer-username"), Some("alice"));
    assert_eq!(
        upstream.header("x-workflow-gateway-timestamp"),
        Some("1700000000")
    );
    assert_eq!(
        upstream.header("x-workflow-gateway-signature"),
        Some("sig-alice")
    );
    assert_eq!(upstream.header("x-workflow-internal-key"), None);
    assert_eq!(
        upstream.header("authorization"),
        None,
        "Authorization reached the upstream"
    );
    assert_eq!(upstream.body.as_ref(), b"{\"flow_id\":\"1\"}");

    let check = s.auth.last();
    assert_eq!(check.method, "GET");
    assert_eq!(check.uri, AUTH_PATH);
    assert!(check.body.is_empty());
    assert!(check.header("content-length").is_none_or(|v| v == "0"));
    assert_eq!(check.header("authorization"), Some("Bearer good"));
    assert_eq!(
        check.header("x-original-uri"),
        Some("/workflow/v1/chat/completions?stream=true&x=1")
    );
    assert_eq!(check.header("x-original-method"), Some("POST"));
    assert_eq!(check.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(
        check.header("x-forwarded-for"),
        Some("198.51.100.1, 127.0.0.1")
    );
    assert_eq!(check.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        check.header("x-consumer-username"),
        None,
        "client identity headers leak to auth"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_missing_from_the_auth_answer_are_removed() {
    let s = setup().await;
    let resp = chat(&s.proxy, "Bearer partial").await;
    assert_eq!(resp.status(), 200);
    let upstream = s.workflow.last();
    assert_eq!(upstream.header("x-consumer-username"), Some("bob"));
    assert_eq!(
        upstream.header("x-workflow-gateway-signature"),
        None,
        "forged signature passed"
    );
    assert_eq!(
        upstream.header("x-workflow-gateway-timestamp"),
        None,
        "forged timestamp passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_relayed_as_is() {
    let s = setup().await;
    let resp = chat(&s.proxy, "Bearer expired").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.text().await.expect("body"),
        "{\"error\":\"token expired\"}"
    );

    let resp = chat(&s.proxy, "Bearer forbidden").await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.text().await.expect("body"), "forbidden");
    assert_eq!(
        s.workflow.count(),
        0,
        "a denied request reached the workflow service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_auth_answers_are_500() {
    let s = setup().await;
    for token in ["Bearer boom", "Bearer redirect"] {
        let resp = chat(&s.proxy, token).await;
        assert_eq!(resp.status(), 500, "{token}");
    }
    assert_eq!(s.workflow.count(), 0);
    assert!(
        s.proxy.stderr().contains("forward auth failed"),
        "{}",
        s.proxy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_timeout_is_500_within_the_timeout() {
    let s = setup().await;
    let started = Instant::now();
    let resp = chat(&s.proxy, "Bearer slow").await;
    assert_eq!(resp.status(), 500);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    assert_eq!(s.workflow.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_service_down_is_500() {
    let workflow = workflow_service().await;
    let proxy = Proxy::with(&config(&format!("127.0.0.1:{}", free_port()), &workflow));
    let resp = chat(&proxy, "Bearer good").await;
    assert_eq!(resp.status(), 500);
    assert_eq!(workflow.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_connections_are_reused() {
    let s = setup().await;
    for _ in 0..5 {
        assert_eq!(chat(&s.proxy, "Bearer good").await.status(), 200);
    }
    assert_eq!(s.auth.count(), 5);
    assert!(
        s.auth.connections() <= 2,
        "{} connections for 5 auth calls",
        s.auth.connections()
    );
}
