//! Load generator for the SSE benchmark scenario of `bench/run.sh` (not part of the proxy).
//!
//! `sse_bench backend --listen ADDR --every-ms MS`
//!     an SSE upstream: every connection gets an event every MS milliseconds (phases spread),
//!     each event stamped with its send time in nanoseconds since the Unix epoch.
//! `sse_bench client --url http://HOST:PORT/PATH --streams N --hold-secs S`
//!     opens N streams, prints `established N` once all are open, holds them S seconds,
//!     then prints one line: `streams=N lost=L events=E p50_us=.. p99_us=.. max_us=..`,
//!     where latency is receive time minus the event's stamp (added latency plus the
//!     backend's own write, identical for every proxy measured). Only events received
//!     once every stream is open (plus `--settle-secs`, default 3) count: the ramp-up,
//!     when the proxy is busy accepting thousands of connections, is not what an event
//!     on a held stream costs.
//!
//! Raw sockets and hand-written HTTP/1.1 keep the generator itself cheap next to a proxy.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("backend") => {
            let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:0".into());
            let every = arg(&args, "--every-ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(3000u64);
            backend(&listen, Duration::from_millis(every)).await
        }
        Some("client") => {
            let url = arg(&args, "--url").unwrap_or_default();
            let streams = arg(&args, "--streams")
                .and_then(|v| v.parse().ok())
                .unwrap_or(100usize);
            let hold = arg(&args, "--hold-secs")
                .and_then(|v| v.parse().ok())
                .unwrap_or(30u64);
            let settle = arg(&args, "--settle-secs")
                .and_then(|v| v.parse().ok())
                .unwrap_or(3u64);
            client(
                &url,
                streams,
                Duration::from_secs(hold),
                Duration::from_secs(settle),
            )
            .await
        }
        _ => {
            eprintln!("usage: sse_bench backend --listen ADDR --every-ms MS | client --url URL --streams N --hold-secs S");
            std::process::exit(2);
        }
    }
}

async fn backend(listen: &str, every: Duration) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    println!("listening {}", listener.local_addr()?);
    let seq = Arc::new(AtomicUsize::new(0));
    loop {
        let (mut stream, _) = listener.accept().await?;
        let n = seq.fetch_add(1, Ordering::Relaxed) as u64;
        tokio::spawn(async move {
            let mut head = [0u8; 2048];
            let mut read = 0;
            while !head[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut head[read..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => read += k,
                }
                if read == head.len() {
                    return;
                }
            }
            let reply = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
            if stream.write_all(reply.as_bytes()).await.is_err() {
                return;
            }
            // Spread the phases so events do not all fire in the same millisecond.
            let phase = Duration::from_millis((n * 7919) % every.as_millis().max(1) as u64);
            tokio::time::sleep(phase).await;
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let event = format!("data: {}\n\n", now_ns());
                let frame = format!("{:x}\r\n{event}\r\n", event.len());
                if stream.write_all(frame.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn client(
    url: &str,
    streams: usize,
    hold: Duration,
    settle: Duration,
) -> std::io::Result<()> {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let request = Arc::new(format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\n\r\n"
    ));
    let authority = Arc::new(authority.to_owned());
    let established = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(bool, Vec<u64>)>();
    // `true` once the hold is over: streams stop reading and report their samples.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    for _ in 0..streams {
        let (request, authority, established, tx, mut stop) = (
            request.clone(),
            authority.clone(),
            established.clone(),
            tx.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let ok = stream_once(
                &authority,
                &request,
                &established,
                &mut latencies,
                &mut stop,
            )
            .await;
            let _ = tx.send((ok, latencies));
        });
        // A gentle ramp: the listen backlog of either proxy is not what is measured.
        tokio::task::yield_now().await;
    }
    drop(tx);
    let ramp_deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while established.load(Ordering::Relaxed) < streams
        && tokio::time::Instant::now() < ramp_deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("established {}", established.load(Ordering::Relaxed));
    let hold_end = tokio::time::Instant::now() + hold;
    tokio::time::sleep(settle.min(hold)).await;
    MEASURING.store(true, Ordering::Relaxed);
    // Streams report when they end; those still open at hold_end are fine.
    // A stream that reports before the hold is over has ended early: lost.
    let mut lost = 0usize;
    let mut all = Vec::new();
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((_, lat)) => { lost += 1; all.extend(lat); }
                None => break,
            },
            _ = tokio::time::sleep_until(hold_end) => break,
        }
    }
    // Then every stream is told to stop and hands over its samples.
    let _ = stop_tx.send(true);
    let collect_end = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some((_, lat))) = tokio::time::timeout_at(collect_end, rx.recv()).await {
        all.extend(lat);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
            / 1000
    };
    println!(
        "streams={} lost={} events={} p50_us={} p99_us={} max_us={}",
        established.load(Ordering::Relaxed),
        lost + streams.saturating_sub(established.load(Ordering::Relaxed)),
        all.len(),
        pct(0.50),
        pct(0.99),
        all.last().copied().unwrap_or(0) / 1000
    );
    Ok(())
}

/// Set once every stream is open and settled: latencies count from then on.
static MEASURING: AtomicBool = AtomicBool::new(false);

/// Runs one stream; `true` when it was stopped on purpose, `false` when it ended or failed.
async fn stream_once(
    authority: &str,
    request: &str,
    established: &AtomicUsize,
    latencies: &mut Vec<u64>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    let Ok(mut stream) = TcpStream::connect(authority).await else {
        return false;
    };
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    let mut pending = Vec::new();
    let mut counted = false;
    loop {
        let n = tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            },
            _ = stop.changed() => return true,
        };
        let received = now_ns();
        if !counted && buf[..n].starts_with(b"HTTP/1.1 200") {
            counted = true;
            established.fetch_add(1, Ordering::Relaxed);
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(start) = find(&pending, b"data: ") {
            let Some(end) = find(&pending[start..], b"\n") else {
                break;
            };
            let stamp = std::str::from_utf8(&pending[start + 6..start + end])
                .ok()
                .and_then(|s| s.parse::<u128>().ok());
            if let (Some(stamp), true) = (stamp, MEASURING.load(Ordering::Relaxed)) {
                latencies.push(received.saturating_sub(stamp) as u64);
            }
            pending.drain(..start + end);
        }
        if pending.len() > 8192 {
            pending.clear();
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
