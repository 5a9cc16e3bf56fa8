//! Hot reload (SPEC §3) through the real binary: each way a config file changes on disk
//! (write in place, rename over it, Kubernetes' `..data` symlink swap), `SIGHUP`, a broken
//! file, a stream that outlives its route, and reloads every 100 ms under load.

use crate::common;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{channel_body, client, wait_until, Backend, Proxy};
use bytes::Bytes;
use futures_util::StreamExt;

/// How soon a changed file must be serving (the bound).
const APPLIED_WITHIN: Duration = Duration::from_secs(2);

/// The complete config the harness writes, with `body` after the `[server]` table.
fn config(proxy: &Proxy, body: &str) -> String {
    format!(
        "[server]\nlisten = [\"{}\"]\nthreads = 2\ngrace_period = \"2s\"\n{body}",
        proxy.addr
    )
}

/// One upstream `app` on `backend` and an exact route `/NAME` to it per name.
fn routes(backend: &Backend, names: &[&str]) -> String {
    let mut out = format!(
        "[access_log]\npath = \"off\"\n[upstreams.app]\nservers = [\"{}\"]\n",
        backend.addr
    );
    for name in names {
        out.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nexact = \"/{name}\"\nupstream = \"app\"\n"
        ));
    }
    out
}

/// Writes `text` to `path` the way editors and `mv` do: a new file renamed over the old.
fn replace_by_rename(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename over config");
}

async fn status_of(url: &str) -> Option<u16> {
    client()
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Polls `path` until it answers `status`; the time that took, or `None` after `within`.
async fn time_until_status(
    proxy: &Proxy,
    path: &str,
    status: u16,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if status_of(&proxy.url(path)).await == Some(status) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

fn reloads_logged(proxy: &Proxy) -> usize {
    proxy
        .stderr()
        .lines()
        .filter(|l| l.contains("config reloaded"))
        .count()
}

/// Starts a proxy serving `/old` and checks that `/new` is not there yet.
async fn proxy_with_old_route(backend: &Backend) -> Proxy {
    let proxy = Proxy::start(&routes(backend, &["old"]));
    assert_eq!(status_of(&proxy.url("/old")).await, Some(200));
    assert_eq!(status_of(&proxy.url("/new")).await, Some(404));
    proxy
}

async fn assert_new_route_applied(proxy: &Proxy, what: &str) {
    let took = time_until_status(proxy, "/new", 200, APPLIED_WITHIN).await;
    assert!(
        took.is_some(),
        "{what}: /new not served within {APPLIED_WITHIN:?}:\n{}",
        proxy.stderr()
    );
    assert_eq!(status_of(&proxy.url("/old")).await, Some(404), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_in_place_is_applied() {
    let backend = Backend::echo().await;
    let proxy = proxy_with_old_route(&backend).await;
    // std::fs::write truncates and writes the same inode.
    std::fs::write(
        &proxy.config_path,
        config(&proxy, &routes(&backend, &["new"])),
    )
    .expect("write in place");
    assert_new_route_applied(&proxy, "write in place").await;
    assert!(proxy.stderr().contains("trigger=\"file change\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_over_the_file_is_applied() {
    let backend = Backend::echo().await;
    let proxy = proxy_with_old_route(&backend).await;
    replace_by_rename(
        &proxy.config_path,
        &config(&proxy, &routes(&backend, &["new"])),
    );
    assert_new_route_applied(&proxy, "rename").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_symlink_swap_is_applied() {
    let backend = Backend::echo().await;
    let proxy = proxy_with_old_route(&backend).await;
    let dir = proxy.dir().to_owned();
    let name = "astron-edge.toml";
    // Lay the file out as a ConfigMap volume does: NAME -> ..data/NAME, ..data -> ..rev1.
    // Same contents as running, so this step is no reload.
    let running = std::fs::read_to_string(&proxy.config_path).expect("read config");
    std::fs::create_dir(dir.join("..rev1")).expect("rev1");
    std::fs::write(dir.join("..rev1").join(name), &running).expect("rev1 file");
    std::os::unix::fs::symlink("..rev1", dir.join("..data")).expect("..data");
    std::os::unix::fs::symlink(format!("..data/{name}"), dir.join("link.tmp")).expect("link");
    std::fs::rename(dir.join("link.tmp"), &proxy.config_path).expect("file -> symlink");

    // The kubelet's update: a new revision directory, then `..data` swapped atomically.
    std::fs::create_dir(dir.join("..rev2")).expect("rev2");
    std::fs::write(
        dir.join("..rev2").join(name),
        config(&proxy, &routes(&backend, &["new"])),
    )
    .expect("rev2 file");
    std::os::unix::fs::symlink("..rev2", dir.join("..data_tmp")).expect("..data_tmp");
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(dir.join("..rev1")).expect("old revision removed");

    assert_new_route_applied(&proxy, "symlink swap").await;
    assert_eq!(reloads_logged(&proxy), 1, "{}", proxy.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_a_change_the_watcher_cannot_see() {
    let backend = Backend::echo().await;
    let proxy = proxy_with_old_route(&backend).await;
    // A write through a hard link in another directory changes the file's contents but
    // raises no event in the watched directory (as on a network file system): only SIGHUP
    // can bring the change in.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let link = elsewhere.path().join("edge.toml");
    std::fs::hard_link(&proxy.config_path, &link).expect("hard link");
    std::fs::write(&link, config(&proxy, &routes(&backend, &["new"]))).expect("write via link");
    proxy.signal("HUP");
    assert_new_route_applied(&proxy, "SIGHUP").await;
    let stderr = proxy.stderr();
    assert!(stderr.contains("trigger=\"SIGHUP\""), "{stderr}");
    assert!(!stderr.contains("trigger=\"file change\""), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_file_is_refused_and_the_old_routes_keep_serving() {
    let backend = Backend::echo().await;
    let metrics = format!(
        "[metrics]\nlisten = \"127.0.0.1:{}\"\n",
        common::free_port()
    );
    let with_metrics = |names: &[&str]| format!("{metrics}{}", routes(&backend, names));
    let proxy = Proxy::start(&with_metrics(&["old"]));
    assert_eq!(status_of(&proxy.url("/old")).await, Some(200));
    let broken = config(
        &proxy,
        &format!("{}colour = \"blue\"\n", with_metrics(&["new"])),
    );
    let line = broken.lines().count();
    replace_by_rename(&proxy.config_path, &broken);

    let position = format!("{}:{line}:1: ", proxy.config_path.display());
    let refused = wait_until(APPLIED_WITHIN, || proxy.stderr().contains(&position)).await;
    assert!(refused, "no {position} error:\n{}", proxy.stderr());
    let stderr = proxy.stderr();
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "one error line: {errors:#?}");
    assert!(
        errors[0].contains("unknown field `colour`"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("config reload refused"), "{}", errors[0]);
    assert_eq!(status_of(&proxy.url("/old")).await, Some(200));
    assert_eq!(status_of(&proxy.url("/new")).await, Some(404));

    // Fixed, it is applied.
    replace_by_rename(&proxy.config_path, &config(&proxy, &with_metrics(&["new"])));
    assert_new_route_applied(&proxy, "fixed file").await;

    // One refused and one applied reload, counted (the first load is not a reload).
    let text = common::metrics_text(metrics_addr(&metrics)).await;
    for expected in [
        "edge_config_reloads_total{result=\"error\"} 1",
        "edge_config_reloads_total{result=\"success\"} 1",
    ] {
        assert!(text.contains(expected), "no {expected:?} in\n{text}");
    }
    assert!(text.contains("edge_config_last_reload_success_timestamp_seconds"));
}

/// The address in a `[metrics]` table written by the test.
fn metrics_addr(table: &str) -> &str {
    table
        .split('"')
        .nth(1)
        .expect("the metrics table has an address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_opened_before_a_reload_that_removes_its_route_completes() {
    const CHUNKS: usize = 10;
    let backend = Backend::start(|_req| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            for i in 0..CHUNKS {
                if tx
                    .send(Bytes::from(format!("data: {i}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        hyper::Response::builder()
            .header("content-type", "text/event-stream")
            .body(body)
            .expect("response")
    })
    .await;
    let stream_route =
        "[[routes]]\nname = \"events\"\nexact = \"/events\"\nupstream = \"app\"\nsse = true\n";
    let proxy = Proxy::start(&format!("{}{stream_route}", routes(&backend, &["old"])));

    let response = client()
        .get(proxy.url("/events"))
        .send()
        .await
        .expect("stream opened");
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut received = body
        .next()
        .await
        .expect("first chunk")
        .expect("first chunk read")
        .to_vec();

    replace_by_rename(
        &proxy.config_path,
        &config(&proxy, &routes(&backend, &["new"])),
    );
    assert!(
        time_until_status(&proxy, "/events", 404, APPLIED_WITHIN)
            .await
            .is_some(),
        "the route was not removed:\n{}",
        proxy.stderr()
    );
    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.expect("the running stream is not cut"));
    }
    let expected: String = (0..CHUNKS).map(|i| format!("data: {i}\n\n")).collect();
    assert_eq!(String::from_utf8_lossy(&received), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_every_100ms_under_load_fails_no_request() {
    const CLIENTS: usize = 50;
    const LOAD_FOR: Duration = Duration::from_secs(10);
    let backend = Backend::echo().await;
    let proxy = Proxy::start(&routes(&backend, &["load"]));
    // Two configs that both serve /load but differ, so every reload is a real swap.
    let configs = [
        config(&proxy, &routes(&backend, &["load"])),
        config(
            &proxy,
            &format!(
                "{}[response_headers]\n\"X-Config\" = \"b\"\n",
                routes(&backend, &["load", "extra"])
            ),
        ),
    ];

    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let deadline = Instant::now() + LOAD_FOR;
    let http = client();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, ok, failures) = (
            http.clone(),
            proxy.url("/load"),
            ok.clone(),
            failures.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let outcome = match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(body) if body == "path=/load" => Ok(()),
                        Ok(body) => Err(format!("body {body:?}")),
                        Err(e) => Err(format!("body: {e}")),
                    },
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(format!("request: {e}")),
                };
                match outcome {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failures.lock().expect("lock").push(e),
                }
            }
        }));
    }
    // A reload every 100 ms: the file renamed over (watcher) and SIGHUP (immediate). On a
    // thread of its own, so that spawning `kill` never stalls the clients' runtime.
    let reloader = std::thread::spawn({
        let (path, pid) = (proxy.config_path.clone(), proxy.pid().to_string());
        move || {
            let mut sent = 0;
            let mut next = Instant::now();
            while next < deadline {
                replace_by_rename(&path, &configs[sent % 2]);
                let hup = std::process::Command::new("kill")
                    .args(["-HUP", &pid])
                    .status();
                assert!(hup.is_ok_and(|s| s.success()), "kill -HUP");
                sent += 1;
                next += Duration::from_millis(100);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            sent
        }
    });
    let reloads_sent = tokio::task::spawn_blocking(move || reloader.join())
        .await
        .expect("join task")
        .expect("reloader thread");
    for task in tasks {
        task.await.expect("client task");
    }

    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failed requests (of {}), first: {:?}",
        failures.len(),
        failures.len() + ok.load(Ordering::Relaxed),
        failures.first()
    );
    let served = ok.load(Ordering::Relaxed);
    assert!(served > 200, "only {served} requests in {LOAD_FOR:?}");
    let applied = reloads_logged(&proxy);
    assert!(
        applied >= reloads_sent / 2,
        "{applied} reloads applied of {reloads_sent} sent"
    );
    assert!(!proxy.stderr().contains("ERROR"), "{}", proxy.stderr());
    eprintln!("{served} requests, 0 failed, {applied} reloads applied of {reloads_sent} sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_change_needs_a_restart_and_the_rest_is_applied() {
    let backend = Backend::echo().await;
    let proxy = proxy_with_old_route(&backend).await;
    let elsewhere = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let moved = config(&proxy, &routes(&backend, &["new"])).replace(
        &format!("listen = [\"{}\"]", proxy.addr),
        &format!("listen = [\"{elsewhere}\"]"),
    );
    replace_by_rename(&proxy.config_path, &moved);
    // Served on the running listener; nothing is bound on the new address.
    assert_new_route_applied(&proxy, "listen changed").await;
    let stderr = proxy.stderr();
    assert!(
        stderr.contains("a change of server.listen needs a restart"),
        "{stderr}"
    );
    assert!(std::net::TcpStream::connect(elsewhere).is_err());
}
