//! The shipped `conf/astron-edge.toml` through the running proxy: every route of the
//! compose stack reaches the right service with the right path and headers, nginx
//! precedence holds, and normalisation tricks never reach an internal path.

use crate::common;
use crate::common::{raw_request, Backend, Proxy};

struct Stack {
    frontend: Backend,
    hub: Backend,
    workflow: Backend,
    runtime: Backend,
    proxy: Proxy,
}

async fn stack() -> Stack {
    let frontend = Backend::echo().await;
    let hub = Backend::echo().await;
    let workflow = Backend::echo().await;
    let runtime = Backend::echo().await;
    let (f, h, w, r) = (
        frontend.addr.to_string(),
        hub.addr.to_string(),
        workflow.addr.to_string(),
        runtime.addr.to_string(),
    );
    let proxy = Proxy::shipped(&[
        ("CONSOLE_FRONTEND_ADDR", &f),
        ("CONSOLE_HUB_ADDR", &h),
        ("CORE_WORKFLOW_ADDR", &w),
        ("AGENT_RUNTIME_API_ADDR", &r),
    ]);
    Stack {
        frontend,
        hub,
        workflow,
        runtime,
        proxy,
    }
}

/// Sends a raw GET (so the path goes out exactly as written) and returns the status.
async fn get_status(proxy: &Proxy, path: &str) -> u16 {
    let answer = raw_request(
        proxy.addr,
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status for {path}: {answer:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_reaches_its_service_with_its_path() {
    let s = stack().await;
    // (request path, backend, path the backend must see)
    let cases: &[(&str, &Backend, &str)] = &[
        ("/runtime-config.js", &s.frontend, "/runtime-config.js"),
        (
            "/assets/index.3f2a.JS",
            &s.frontend,
            "/assets/index.3f2a.JS",
        ),
        ("/assets/logo.svg?v=2", &s.frontend, "/assets/logo.svg?v=2"),
        // a regex beats a plain prefix, as in nginx
        (
            "/console-api/logo.png",
            &s.frontend,
            "/console-api/logo.png",
        ),
        (
            "/console-api/chat-message/list?page=2",
            &s.hub,
            "/chat-message/list?page=2",
        ),
        ("/console-api/workflow/chat", &s.hub, "/workflow/chat"),
        // the query never takes part in matching, and is kept
        (
            "/console-api/workflow/chat?x=1",
            &s.hub,
            "/workflow/chat?x=1",
        ),
        ("/console-api/user/info?a=b", &s.hub, "/user/info?a=b"),
        ("/console-api/", &s.hub, "/"),
        ("/", &s.frontend, "/"),
        (
            "/space/agents?tab=all",
            &s.frontend,
            "/space/agents?tab=all",
        ),
        // without upstream_path the path goes upstream exactly as received
        ("/a//b/%7Euser", &s.frontend, "/a//b/%7Euser"),
    ];
    for (path, backend, expected) in cases {
        let before = backend.count();
        assert_eq!(get_status(&s.proxy, path).await, 200, "{path}");
        assert_eq!(
            backend.count(),
            before + 1,
            "{path} reached the wrong service"
        );
        assert_eq!(backend.last().uri, *expected, "{path}");
    }
    assert_eq!(s.workflow.count() + s.runtime.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_paths_are_404_and_never_reach_a_service() {
    let s = stack().await;
    let blocked = [
        "/console-api/internal/gateway/auth/workflow",
        "/console-api/workflow/artifacts/internal-upload",
        "/console-api/skill-sandbox/internal-runtime-config",
        "/console-api/internal/agent-runtime/run",
        "/workflow/v1/other",
        // ^~ beats a regex
        "/workflow/v1/bundle.js",
        "/console-api/internal/agent-runtime/x.png",
        // normalisation attacks
        "/console-api//internal/agent-runtime/x",
        "/console-api/./internal/agent-runtime/x",
        "/console-api/foo/../internal/agent-runtime/x",
        "/console-api/foo/%2e%2e/internal/agent-runtime/x",
        "/console-api/foo/%2E%2e/internal/agent-runtime/x",
        "/console-api/%69nternal/agent-runtime/x",
        "/%63onsole-api/internal/agent-runtime/x",
        "/console-api%2Finternal/agent-runtime/x",
        "/console-api%2finternal%2fgateway%2fauth%2fworkflow",
        "/workflow//v1/other",
        "/workflow/v1/./other",
    ];
    for path in blocked {
        assert_eq!(get_status(&s.proxy, path).await, 404, "{path}");
    }
    assert_eq!(s.hub.count(), 0, "an internal path reached console-hub");
    assert_eq!(s.workflow.count(), 0);
    assert_eq!(s.frontend.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_above_root_are_400() {
    let s = stack().await;
    for path in [
        "/..",
        "/../etc/passwd",
        "/%2e%2e/x",
        "/a/../../b",
        "/console-api/%2e%2e%2f%2e%2e/x",
    ] {
        assert_eq!(get_status(&s.proxy, path).await, 400, "{path}");
    }
    assert_eq!(s.frontend.count() + s.hub.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_with_nothing_behind() {
    // default upstream names (console-hub, …) do not resolve here: nothing runs behind
    let proxy = Proxy::shipped(&[]);
    for path in ["/health", "/nginx-health"] {
        let resp = common::client()
            .get(proxy.url(path))
            .send()
            .await
            .expect("health");
        assert_eq!(resp.status(), 200);
        // `/nginx-health` is the stack's own location (`add_header Content-Type text/plain`).
        let content_type = resp.headers()["content-type"].to_str().expect("ascii");
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        assert_eq!(resp.headers()["x-frame-options"], "SAMEORIGIN");
    }
    let resp = common::client()
        .head(proxy.url("/health"))
        .send()
        .await
        .expect("head");
    assert_eq!(resp.status(), 200);
    // and a proxied route answers 502, not a hang or a crash
    let resp = common::client()
        .get(proxy.url("/console-api/x"))
        .send()
        .await
        .expect("502");
    assert_eq!(resp.status(), 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_identity_headers_are_set_by_the_proxy() {
    let s = stack().await;
    let resp = common::client()
        .get(s.proxy.url("/console-api/me"))
        .header("Host", "Console.Example.com:8080")
        .header("X-Forwarded-For", "203.0.113.7")
        .header("X-Real-IP", "6.6.6.6")
        .header("X-Forwarded-Proto", "https")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let seen = s.hub.last();
    assert_eq!(seen.header("host"), Some("console.example.com"));
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));

    common::client()
        .get(s.proxy.url("/x"))
        .send()
        .await
        .expect("request");
    let seen = s.frontend.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_on_every_answer() {
    let s = stack().await;
    let client = common::client();
    let ok = client.get(s.proxy.url("/")).send().await.expect("200");
    let not_found = client
        .get(s.proxy.url("/workflow/v1/x"))
        .send()
        .await
        .expect("404");
    // a client that sends the whole body still gets its 413 (the proxy drains, like
    // nginx's lingering close, instead of resetting the connection under it)
    let too_large = client
        .post(s.proxy.url("/console-api/upload"))
        .body(vec![b'x'; 21 << 20])
        .send()
        .await
        .expect("413");
    assert_eq!(ok.status(), 200);
    assert_eq!(not_found.status(), 404);
    assert_eq!(too_large.status(), 413);
    for resp in [&ok, &not_found, &too_large] {
        assert_eq!(resp.headers()["x-frame-options"], "SAMEORIGIN");
        assert_eq!(resp.headers()["x-xss-protection"], "1; mode=block");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
    }
    assert_eq!(s.hub.count(), 0, "the 413 body reached console-hub");
}
