//! `import-nginx` and `run`/`check -c nginx.conf` (SPEC §1): positioned errors for bad
//! input, includes, warnings, reload of an nginx.conf; and nginx's location rules that hold
//! for TOML configs too (SPEC §2): the 301 to the slashed path, `add_header`'s status rule,
//! `internal` locations.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use hyper::Response;

use crate::common::{self, fetch, free_port, full, wait_until, Backend, Proxy, Recorded};

const NEWEST: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/nginx/iflytek-520bed76.conf"
);

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(common::binary())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run astron-edge")
}

/// An nginx.conf with `server_body` inside `http { server { listen 80; ... } }`.
fn conf(server_body: &str) -> String {
    format!("events {{}}\nhttp {{\n    server {{\n        listen 80;\n{server_body}    }}\n}}\n")
}

/// `import-nginx` and `check -c` both refuse `text` with `nginx.conf:LINE:COL: needle`.
fn refused_at(text: &str, line: usize, col: usize, needle: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("nginx.conf"), text).expect("write");
    for args in [["import-nginx", "nginx.conf"], ["check", "-c"]] {
        let mut args = args.to_vec();
        if args[0] == "check" {
            args.push("nginx.conf");
        }
        let out = run(&args, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let expected = format!("nginx.conf:{line}:{col}: ");
        assert!(
            stderr.contains(&expected) && stderr.contains(needle),
            "{args:?}: wanted {expected}...{needle}, got: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn a_syntax_error_names_its_place() {
    refused_at(
        &conf("        location / {\n            return 200\n        }\n"),
        7,
        9,
        "unexpected \"}\" after \"return\"",
    );
    refused_at("http {\n    server {\n", 2, 12, "unexpected end of file");
    refused_at(
        "http { add_header \"X 1; }\n",
        1,
        19,
        "unterminated quoted string",
    );
}

#[test]
fn an_unknown_directive_names_its_place() {
    refused_at(
        &conf("        location / {\n            proxy_pas http://a:1;\n        }\n"),
        6,
        13,
        "unknown directive \"proxy_pas\"",
    );
}

#[test]
fn an_unsupported_directive_names_its_place() {
    refused_at(
        &conf("        location / {\n            try_files $uri /index.html;\n            proxy_pass http://a:1;\n        }\n"),
        6,
        13,
        "\"try_files\" is not supported",
    );
    // rewrite: only the prefix-replacing form (it becomes upstream_path).
    refused_at(
        &conf("        location / {\n            rewrite ^/a(.*)$ /b$1 break;\n            proxy_pass http://a:1;\n        }\n"),
        6,
        21,
        "rewrite is supported only as",
    );
    refused_at(
        &conf("        location / {\n            proxy_pass http://a:1;\n            add_header X-A 1 always;\n        }\n"),
        7,
        24,
        "always inside a location",
    );
}

#[test]
fn a_missing_include_names_the_include() {
    refused_at(
        &conf("        include conf.d/missing.conf;\n"),
        5,
        17,
        "cannot read included file",
    );
}

#[test]
fn proxy_pass_to_an_undefined_upstream_names_its_place() {
    refused_at(
        &conf("        location / {\n            proxy_pass http://backend;\n        }\n"),
        6,
        24,
        "no upstream \"backend\" is defined",
    );
}

#[test]
fn an_error_found_in_the_imported_toml_points_into_the_nginx_file() {
    // A header name nginx takes but HTTP does not: caught by validation of the TOML,
    // reported at the add_header line of the nginx file.
    refused_at(
        &conf("        location / {\n            proxy_pass http://a:1;\n            add_header \"Bad Name\" 1;\n        }\n"),
        7,
        24,
        "invalid header name",
    );
}

#[test]
fn includes_are_followed_relative_and_by_glob() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("conf.d")).expect("mkdir");
    std::fs::write(
        dir.path().join("nginx.conf"),
        conf("        include conf.d/*.conf;\n"),
    )
    .expect("write");
    std::fs::write(
        dir.path().join("conf.d/a.conf"),
        "location /a/ { proxy_pass http://a.internal:81/; }\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("conf.d/b.conf"),
        "\nlocation = /b { return 204; }\n",
    )
    .expect("write");
    let out = run(&["import-nginx", "nginx.conf"], dir.path());
    let toml = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(toml.contains("# conf.d/a.conf:1  location /a/"), "{toml}");
    assert!(toml.contains("# conf.d/b.conf:2  location = /b"), "{toml}");
    assert!(
        toml.contains("servers = [\"${A_INTERNAL_ADDR:-a.internal:81}\"]"),
        "{toml}"
    );
}

#[test]
fn the_newest_stack_conf_imports_with_warnings_and_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run(&["import-nginx", NEWEST, "-o", "edge.toml"], dir.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Ignored directives: a warning each, FILE:LINE, and the same as a TOML comment.
    assert!(
        stderr.lines().any(|l| l
            .ends_with("iflytek-520bed76.conf:23: ignored: sendfile (no effect on astron-edge)")),
        "{stderr}"
    );
    let toml = std::fs::read_to_string(dir.path().join("edge.toml")).expect("written");
    assert!(toml.contains("# ignored: sendfile"), "{toml}");
    assert!(toml.contains("iflytek-520bed76.conf:99  location = /workflow/v1/chat/completions"));
    let check = run(&["check", "-c", "edge.toml"], dir.path());
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // The nginx.conf itself checks the same.
    let check = run(&["check", "-c", NEWEST], dir.path());
    let summary = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        summary.contains("auth=gateway-auth-workflow sse"),
        "{summary}"
    );
}

#[tokio::test]
async fn an_nginx_conf_reloads_and_a_broken_edit_keeps_the_old_one() {
    let backend = Backend::echo().await;
    let port = free_port();
    let text = |answer: &str| {
        format!(
            "http {{\n server {{\n  listen 127.0.0.1:{port};\n  location /api/ {{ proxy_pass http://{}/; }}\n  location = /v {{ return 200 \"{answer}\"; }}\n }}\n}}\n",
            backend.addr
        )
    };
    let proxy = Proxy::start_named("nginx.conf", &text("one"), port, &[]);
    let first = fetch(&proxy, "GET", "/v", &[]).await;
    assert_eq!(first.body, b"one");
    std::fs::write(&proxy.config_path, text("two")).expect("rewrite");
    proxy.signal("HUP");
    let mut seen = false;
    for _ in 0..100 {
        if fetch(&proxy, "GET", "/v", &[]).await.body == b"two" {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "the edit was not applied: {}", proxy.stderr());
    // Broken: the error names the nginx file's line, the old routes keep serving.
    std::fs::write(
        &proxy.config_path,
        text("three").replace("return 200", "retrun 200"),
    )
    .expect("rewrite");
    proxy.signal("HUP");
    assert!(
        wait_until(Duration::from_secs(5), || proxy
            .stderr()
            .contains("nginx.conf:5:19: unknown directive \"retrun\""))
        .await,
        "{}",
        proxy.stderr()
    );
    assert_eq!(fetch(&proxy, "GET", "/v", &[]).await.body, b"two");
    let proxied = fetch(&proxy, "GET", "/api/x?q=1", &[]).await;
    assert_eq!(proxied.body, b"path=/x?q=1");
}

/// An edit of a file the nginx.conf `include`s is a config change like an edit of the
/// nginx.conf itself: reloaded without a signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_of_an_included_file_reloads() {
    let port = free_port();
    let conf_d = tempfile::tempdir().expect("conf.d");
    let routes = |answer: &str| format!("location = /v {{ return 200 \"{answer}\"; }}\n");
    let included = conf_d.path().join("routes.conf");
    std::fs::write(&included, routes("one")).expect("write");
    let main = format!(
        "http {{\n server {{\n  listen 127.0.0.1:{port};\n  include {}/*.conf;\n }}\n}}\n",
        conf_d.path().display()
    );
    let proxy = Proxy::start_named("nginx.conf", &main, port, &[]);
    assert_eq!(fetch(&proxy, "GET", "/v", &[]).await.body, b"one");
    let tmp = conf_d.path().join("routes.tmp");
    std::fs::write(&tmp, routes("two")).expect("write");
    std::fs::rename(&tmp, &included).expect("rename");
    let mut reloaded = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !reloaded && std::time::Instant::now() < deadline {
        reloaded = fetch(&proxy, "GET", "/v", &[]).await.body == b"two";
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reloaded,
        "the included file's edit was not applied: {}",
        proxy.stderr()
    );
}

// --- nginx's location rules in TOML configs -------------------------------------------

/// A backend answering 404 for paths with `missing`, 200 otherwise; auth at `/auth` allows.
async fn backend() -> Backend {
    Backend::start(|req: Recorded| async move {
        let status = if req.uri.contains("missing") {
            404
        } else {
            200
        };
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(full(format!("path={}", req.uri)))
            .expect("answer")
    })
    .await
}

fn rules_config(addr: std::net::SocketAddr) -> String {
    format!(
        r#"[access_log]
path = "off"
[response_headers]
"X-Frame-Options" = "SAMEORIGIN"
[upstreams.app]
servers = ["{addr}"]
[auth.gate]
upstream = "app"
path = "/missing-auth"
[[routes]]
name = "api"
prefix = "/api/"
upstream = "app"
upstream_path = "/"
add_response_headers = {{ "X-Route" = "api" }}
[[routes]]
name = "guarded"
priority_prefix = "/guarded/"
upstream = "app"
auth = "gate"
add_response_headers = {{ "X-Route" = "guarded" }}
[[routes]]
name = "stream"
prefix = "/stream/"
upstream = "app"
sse = true
[[routes]]
name = "taken"
prefix = "/taken/"
upstream = "app"
[[routes]]
name = "taken-exact"
exact = "/taken"
return = 200
body = "exact"
[[routes]]
name = "closed"
priority_prefix = "/closed/"
return = 404
[[routes]]
name = "subrequest"
exact = "/_auth"
upstream = "app"
internal = true
[[routes]]
name = "moved"
exact = "/old"
return = 302
redirect = "/new/"
[[routes]]
name = "rest"
prefix = "/"
upstream = "app"
"#
    )
}

#[tokio::test]
async fn a_slashed_prefix_redirects_its_bare_path_before_auth_with_its_headers() {
    let app = backend().await;
    let proxy = Proxy::start(&rules_config(app.addr));
    let r = fetch(&proxy, "GET", "/api?x=1&y=2", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/api/?x=1&y=2"));
    assert_eq!(r.header("x-route"), Some("api"));
    assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
    // Before forward auth (whose service would answer 404, a 500 for the client).
    let r = fetch(&proxy, "GET", "/guarded", &[]).await;
    assert_eq!((r.status, r.header("location")), (301, Some("/guarded/")));
    assert_eq!(r.header("x-route"), Some("guarded"));
    // An sse route's headers follow the same rule: on the 301.
    let r = fetch(&proxy, "GET", "/stream", &[]).await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    // Normalised first, as nginx matches: `/a/../api` is `/api`.
    let r = fetch(&proxy, "GET", "/a/%2e%2e/api", &[]).await;
    assert_eq!(r.header("location"), Some("/api/"));
    // An exact route of the bare path takes it; a return route never redirects.
    let r = fetch(&proxy, "GET", "/taken", &[]).await;
    assert_eq!((r.status, r.body.as_slice()), (200, b"exact".as_slice()));
    let r = fetch(&proxy, "GET", "/closed", &[]).await;
    assert_eq!(r.status, 200, "goes to the / route");
    assert_eq!(r.body, b"path=/closed");
    assert_eq!(app.count(), 1, "no redirect reached the upstream");
}

#[tokio::test]
async fn route_headers_go_on_success_statuses_only() {
    let app = backend().await;
    let proxy = Proxy::start(&rules_config(app.addr));
    let ok = fetch(&proxy, "GET", "/api/x", &[]).await;
    assert_eq!((ok.status, ok.header("x-route")), (200, Some("api")));
    let missing = fetch(&proxy, "GET", "/api/missing", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-route"), None);
    assert_eq!(
        missing.header("x-frame-options"),
        Some("SAMEORIGIN"),
        "server level: always"
    );
    // The headers an sse route adds: on 200, not on 404.
    let ok = fetch(&proxy, "GET", "/stream/x", &[]).await;
    assert_eq!(ok.header("x-accel-buffering"), Some("no"));
    let missing = fetch(&proxy, "GET", "/stream/missing", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("x-accel-buffering"), None);
    assert_eq!(missing.header("cache-control"), None);
    // A forward-auth failure (500) carries none of the route's.
    let denied = fetch(&proxy, "GET", "/guarded/x", &[]).await;
    assert_eq!(denied.status, 500);
    assert_eq!(denied.header("x-route"), None);
}

#[tokio::test]
async fn internal_routes_are_404_and_never_proxied_and_return_redirects() {
    let app = backend().await;
    let proxy = Proxy::start(&rules_config(app.addr));
    for path in ["/_auth", "/_auth?x=1", "/a/../_auth", "/%5Fauth"] {
        let r = fetch(&proxy, "GET", path, &[]).await;
        assert_eq!(r.status, 404, "{path}");
    }
    assert_eq!(app.count(), 0);
    let r = fetch(&proxy, "GET", "/old", &[]).await;
    assert_eq!((r.status, r.header("location")), (302, Some("/new/")));
}

#[test]
fn the_shipped_config_is_the_import_of_the_newest_stack_conf() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("sh")
        .arg(format!("{root}/tests/fixtures/nginx/shipped.sh"))
        .arg(common::binary())
        .output()
        .expect("shipped.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shipped =
        std::fs::read_to_string(format!("{root}/conf/astron-edge.toml")).expect("shipped");
    assert!(
        String::from_utf8_lossy(&out.stdout) == shipped,
        "conf/astron-edge.toml differs from tests/fixtures/nginx/shipped.sh's output: regenerate it"
    );
}
