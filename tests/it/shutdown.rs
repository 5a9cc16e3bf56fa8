//! Stopping (SPEC §1) with real signals: SIGTERM drains and exits 0 as soon as nothing
//! runs, or at the end of the grace period; SIGINT stops at once; SIGQUIT hands the
//! listening sockets to a process started with `run --upgrade` without a failed request.

use crate::common;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{
    channel_body, client, text_response, wait_until, Backend, Proxy, Route, TestConfig,
};
use bytes::Bytes;
use futures_util::StreamExt;

fn routes(backend: &Backend) -> TestConfig {
    TestConfig::new()
        .upstream("app", [backend.addr])
        .route(Route::prefix("app", "/").to("app"))
}

/// A proxy whose `[server]` table has `grace_period = grace` (not the 2 s of
/// [`Proxy::with`], hence `with_listener`).
fn proxy_with_grace(backend: &Backend, grace: &str) -> Proxy {
    let config = routes(backend)
        .set("server.threads", 2)
        .set("server.grace_period", grace);
    Proxy::with_listener(&config, &[])
}

/// A backend that answers `/slow` after `delay` and streams `/stream` forever (a chunk
/// every 100 ms, until the client goes away); anything else at once.
async fn backend(delay: Duration) -> Backend {
    Backend::start(move |req| async move {
        match req.uri.as_str() {
            "/slow" => {
                tokio::time::sleep(delay).await;
                text_response(200, "slow done")
            }
            "/stream" => {
                let (tx, body) = channel_body();
                tokio::spawn(async move {
                    while tx.send(Bytes::from_static(b"data: tick\n\n")).await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                });
                hyper::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(body)
                    .expect("response")
            }
            _ => text_response(200, "fast"),
        }
    })
    .await
}

fn refuses_connections(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    let delay = Duration::from_millis(1500);
    let backend = backend(delay).await;
    let mut proxy = proxy_with_grace(&backend, "10s");
    let slow = tokio::spawn({
        let url = proxy.url("/slow");
        async move {
            let response = client().get(url).send().await?;
            let status = response.status().as_u16();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        }
    });
    assert!(
        wait_until(Duration::from_secs(5), || backend.count() == 1).await,
        "the slow request never reached the backend"
    );

    let sent = Instant::now();
    proxy.signal("TERM");
    assert!(
        wait_until(Duration::from_secs(1), || refuses_connections(proxy.addr)).await,
        "new connections are still accepted while draining"
    );
    let (status, body) = slow
        .await
        .expect("task")
        .expect("the slow request completes");
    assert_eq!((status, body.as_str()), (200, "slow done"));
    let exit = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("exits within the grace period");
    let took = sent.elapsed();
    assert!(exit.success(), "exit status {exit}");
    assert!(
        took < delay + Duration::from_secs(1),
        "took {took:?}: waited for more than the running request"
    );
    eprintln!("SIGTERM with a {delay:?} request in flight: exit after {took:?}");
    assert_eq!(backend.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_nothing_in_flight_exits_at_once() {
    let backend = backend(Duration::ZERO).await;
    let mut proxy = proxy_with_grace(&backend, "30s");
    // An idle keep-alive connection does not hold the stop back.
    let http = client();
    assert_eq!(
        http.get(proxy.url("/"))
            .send()
            .await
            .expect("request")
            .status(),
        200
    );
    let sent = Instant::now();
    proxy.signal("TERM");
    let exit = proxy
        .wait_exit(Duration::from_secs(5))
        .expect("exits long before the 30 s grace period");
    let took = sent.elapsed();
    assert!(exit.success(), "exit status {exit}");
    eprintln!("SIGTERM with nothing in flight: exit after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_longer_than_the_grace_period_is_closed_at_its_end() {
    let backend = backend(Duration::ZERO).await;
    let mut proxy = proxy_with_grace(&backend, "1s");
    let response = client()
        .get(proxy.url("/stream"))
        .send()
        .await
        .expect("stream opened");
    let mut body = response.bytes_stream();
    body.next().await.expect("a first chunk").expect("read");

    let sent = Instant::now();
    proxy.signal("TERM");
    let mut chunks_after = 0;
    // The stream goes on during the grace period, then ends (cut, not completed).
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("the stream is closed within 10 s")
    {
        match chunk {
            Ok(_) => chunks_after += 1,
            Err(_) => break,
        }
    }
    let closed_after = sent.elapsed();
    assert!(
        chunks_after >= 5,
        "the stream stopped early: {chunks_after} chunks"
    );
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}, grace period 1 s"
    );
    let exit = proxy.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(exit.success(), "exit status {exit}");
    eprintln!(
        "SIGTERM with a stream open, grace period 1 s: stream closed after {closed_after:?}, \
         exit after {:?}",
        sent.elapsed()
    );
    assert!(
        proxy.stderr().contains("grace period over"),
        "{}",
        proxy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_at_once() {
    let backend = backend(Duration::from_secs(20)).await;
    let mut proxy = proxy_with_grace(&backend, "30s");
    let slow = tokio::spawn(client().get(proxy.url("/slow")).send());
    assert!(wait_until(Duration::from_secs(5), || backend.count() == 1).await);
    let sent = Instant::now();
    proxy.signal("INT");
    let exit = proxy
        .wait_exit(Duration::from_secs(3))
        .expect("exits at once");
    assert!(exit.success(), "exit status {exit}");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "took {:?}",
        sent.elapsed()
    );
    assert!(
        slow.await.expect("task").is_err(),
        "the running request is cut"
    );
}

/// A second proxy process on the same config, taking over with `run --upgrade`.
struct Upgraded {
    child: Child,
}

impl Drop for Upgraded {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_hands_the_sockets_over_without_a_failed_request() {
    let backend = backend(Duration::ZERO).await;
    let mut old = proxy_with_grace(&backend, "1s");
    let stderr = std::fs::File::create(old.dir().join("upgraded.log")).expect("log file");
    let mut new = Upgraded {
        child: Command::new(common::binary())
            .args(["run", "--upgrade", "-c"])
            .arg(&old.config_path)
            .current_dir(old.dir())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn the upgraded process"),
    };

    // Requests all along, each on a new connection, so every accept is tested.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = tokio::spawn({
        let (url, stop, ok, failed) = (old.url("/"), stop.clone(), ok.clone(), failed.clone());
        async move {
            let http = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });

    // While the new process waits for the sockets (it has loaded the config): an edit,
    // and a SIGHUP that must not kill it. It applies the edit once it runs.
    let upgraded_log = old.dir().join("upgraded.log");
    let log_has =
        |needle: &str| std::fs::read_to_string(&upgraded_log).is_ok_and(|log| log.contains(needle));
    assert!(
        wait_until(Duration::from_secs(10), || log_has("Bootstrap starting")).await,
        "the new process did not load its config"
    );
    let edited = std::fs::read_to_string(&old.config_path).expect("config")
        + "[[routes]]\nname = \"new\"\nexact = \"/new\"\nreturn = 200\nbody = \"new\"\n";
    let tmp = old.dir().join("edited.tmp");
    std::fs::write(&tmp, edited).expect("write");
    std::fs::rename(&tmp, &old.config_path).expect("rename");
    let hup = Command::new("kill")
        .args(["-HUP", &new.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(hup.success());

    old.signal("QUIT");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &upgraded_log
        )
        .is_ok_and(|log| log.contains("astron-edge starting")))
        .await,
        "the new process did not start: {}",
        std::fs::read_to_string(&upgraded_log).unwrap_or_default()
    );
    // Pingora's schedule: the old process keeps accepting for 5 s, then drains for the
    // grace period (1 s here) and exits.
    let exit = old
        .wait_exit(Duration::from_secs(15))
        .expect("the old process exits");
    assert!(exit.success(), "old process exit status {exit}");
    let served_before = ok.load(Ordering::Relaxed);
    // The new process alone now serves.
    assert!(
        wait_until(Duration::from_secs(5), || ok.load(Ordering::Relaxed)
            > served_before + 20)
        .await,
        "no request served after the old process exited"
    );
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load task");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during the upgrade ({} served)",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        new.child.try_wait().expect("status").is_none(),
        "the new process is running"
    );
    let answer = client().get(old.url("/new")).send().await.expect("request");
    assert_eq!(
        answer.status(),
        200,
        "the edit made during the hand-over is served"
    );
}
