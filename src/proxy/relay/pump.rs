//! The body of a relayed stream: upstream bytes to the client as they arrive.
//!
//! While the stream waits for its next event it holds no buffer: each read polls the
//! upstream with a buffer on the stack, and only bytes that arrived are copied out, framed
//! for the client, written and dropped. So an idle stream costs its two connections, its
//! task and the decoder's few words.

use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use pingora::prelude::*;
use pingora::protocols::Stream;
use pingora::ErrorType;
use tokio::io::{AsyncRead, ReadBuf};

use super::exchange::framing_error;
use super::framing::{BodyDecoder, Outgoing};

/// The most read from the upstream at once (Pingora reads bodies in 64 KiB; an event is
/// far smaller, and a larger one comes in several reads).
const READ_SIZE: usize = 16 * 1024;

/// The two ends of a stream whose answer header the client already has.
pub(super) struct Pump {
    pub client: Stream,
    pub upstream: Stream,
    pub decoder: BodyDecoder,
    pub outgoing: Outgoing,
    /// The route's `timeout`: the longest wait for the next bytes, or to write them.
    pub idle: Option<Duration>,
    /// Body bytes the client has been sent.
    pub sent: u64,
    /// The stream's telemetry: first byte, events.
    pub stream: Option<Box<crate::telemetry::Stream>>,
    /// The route's `sse_heartbeat`, for an event stream whose framing can carry one.
    pub heartbeat: Option<Duration>,
}

/// The SSE comment line a quiet event stream gets (SPEC §3 "Heartbeats").
const HEARTBEAT: &[u8] = b":\n\n";

/// How a stream ended.
pub(super) enum End {
    /// The upstream's body is complete and so is the client's.
    Finished,
    /// Nothing came within the route's `timeout`: the client's connection is closed
    /// without the body's end (as nginx at `proxy_read_timeout`), so it sees a cut.
    Idle,
    /// The shutdown's grace period ran out: cut as `Idle`.
    Shutdown,
    /// The client closed its connection, or sent something, which it does only to leave.
    ClientLeft(Box<Error>),
    /// The upstream failed or broke off mid-body: the client's connection is closed
    /// without the body's end, so the client can tell the stream did not finish.
    UpstreamFailed(Box<Error>),
}

/// What one wait brought.
enum Event {
    /// Bytes for the client (framed); `true` when the upstream's body is complete.
    Data(Vec<u8>, u64, bool),
    UpstreamClosed,
    UpstreamError(Box<Error>),
    ClientLeft(Box<Error>),
    Idle,
    Heartbeat,
    Shutdown,
}

impl Pump {
    /// Relays until the stream ends, starting with the body bytes `preread` with the answer's
    /// header.
    pub(super) async fn run(&mut self, preread: Bytes) -> End {
        let idle_timer = tokio::time::sleep(self.idle.unwrap_or(Duration::MAX));
        tokio::pin!(idle_timer);
        // Boxed, and only with heartbeats on: a held stream without them keeps no timer.
        let mut heartbeat_timer = self
            .heartbeat
            .map(|every| Box::pin(tokio::time::sleep(every)));
        let mut grace_over = crate::shutdown::grace_over();
        let mut first = (!preread.is_empty()).then(|| self.frame(&preread));
        drop(preread);
        loop {
            let event = if let Some(first) = first.take() {
                first
            } else {
                let (upstream, client) = (&mut self.upstream, &mut self.client);
                let mut body = Body {
                    decoder: &mut self.decoder,
                    outgoing: self.outgoing,
                    stream: self.stream.as_deref_mut(),
                };
                tokio::select! {
                    biased;
                    event = poll_fn(|cx| poll_upstream(upstream, &mut body, cx)) => event,
                    gone = poll_fn(|cx| poll_client(client, cx)) => Event::ClientLeft(gone),
                    () = &mut idle_timer, if self.idle.is_some() => Event::Idle,
                    () = poll_fn(|cx| poll_timer(&mut heartbeat_timer, cx)) => Event::Heartbeat,
                    _ = grace_over.wait_for(|over| *over) => Event::Shutdown,
                }
            };
            match event {
                Event::Data(mut out, data_bytes, complete) => {
                    if complete {
                        out.extend_from_slice(self.outgoing.end());
                    }
                    // (A read of chunk framing alone has nothing for the client.)
                    if !out.is_empty() {
                        if let Err(e) = self.write(&out).await {
                            return End::ClientLeft(e);
                        }
                        rearm(&mut heartbeat_timer, self.heartbeat);
                    }
                    self.sent += data_bytes;
                    if complete {
                        return End::Finished;
                    }
                    if let Some(idle) = self.idle {
                        idle_timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + idle);
                    }
                }
                Event::UpstreamClosed if self.decoder.ends_at_close() => {
                    return match self.write(self.outgoing.end()).await {
                        Ok(()) => End::Finished,
                        Err(e) => End::ClientLeft(e),
                    };
                }
                Event::UpstreamClosed => {
                    let e = Error::explain(ErrorType::ConnectionClosed, "upstream closed mid-body");
                    return End::UpstreamFailed(e.into_up());
                }
                Event::UpstreamError(e) => return End::UpstreamFailed(e),
                Event::ClientLeft(e) => return End::ClientLeft(e),
                Event::Idle => return End::Idle,
                Event::Shutdown => return End::Shutdown,
                Event::Heartbeat => {
                    // To the client only: the upstream's idle timer runs on.
                    let mut out = Vec::with_capacity(HEARTBEAT.len() + 8);
                    self.outgoing.encode(HEARTBEAT, &mut out);
                    if let Err(e) = self.write(&out).await {
                        return End::ClientLeft(e);
                    }
                    self.sent += HEARTBEAT.len() as u64;
                    rearm(&mut heartbeat_timer, self.heartbeat);
                }
            }
        }
    }

    /// `wire` from the upstream, decoded and framed for the client.
    fn frame(&mut self, wire: &[u8]) -> Event {
        let mut body = Body {
            decoder: &mut self.decoder,
            outgoing: self.outgoing,
            stream: self.stream.as_deref_mut(),
        };
        frame(&mut body, wire)
    }

    /// Writes and flushes `bytes` to the client, within the route's `timeout`.
    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let what = "writing the stream to the client";
        super::write_flushed(&mut self.client, bytes, self.idle, what)
            .await
            .map_err(|e| e.into_down())
    }
}

/// Ready when the heartbeat timer, if there is one, fires.
fn poll_timer(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>, cx: &mut Context<'_>) -> Poll<()> {
    match timer {
        Some(timer) => timer.as_mut().poll(cx),
        None => Poll::Pending,
    }
}

/// Starts the heartbeat timer's wait over: something was just written to the client.
fn rearm(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>, every: Option<Duration>) {
    if let (Some(timer), Some(every)) = (timer, every) {
        timer.as_mut().reset(tokio::time::Instant::now() + every);
    }
}

/// Reads what the upstream has ready into a buffer on the stack and returns it decoded and
/// framed for the client; nothing is kept while the upstream has nothing.
fn poll_upstream(upstream: &mut Stream, body: &mut Body<'_>, cx: &mut Context<'_>) -> Poll<Event> {
    // Uninitialised: zeroing 16 KiB on every poll showed in `perf` (1.3 % of the proxy's time).
    let mut buf = [MaybeUninit::<u8>::uninit(); READ_SIZE];
    let mut read = ReadBuf::uninit(&mut buf);
    match Pin::new(upstream).poll_read(cx, &mut read) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(e)) => Poll::Ready(Event::UpstreamError(
            Error::because(ErrorType::ReadError, "reading the stream from upstream", e).into_up(),
        )),
        Poll::Ready(Ok(())) if read.filled().is_empty() => Poll::Ready(Event::UpstreamClosed),
        Poll::Ready(Ok(())) => Poll::Ready(frame(body, read.filled())),
    }
}

/// What turns the upstream's bytes into the client's: the decoder, the client's framing,
/// and the stream's telemetry that sees the data pass.
struct Body<'a> {
    decoder: &'a mut BodyDecoder,
    outgoing: Outgoing,
    stream: Option<&'a mut crate::telemetry::Stream>,
}

/// `wire` from the upstream, decoded and framed for the client.
fn frame(body: &mut Body<'_>, wire: &[u8]) -> Event {
    // Room for the bytes, and a chunk header and end per run of data.
    let mut out = Vec::with_capacity(wire.len() + 32);
    let mut data_bytes = 0;
    let (outgoing, stream) = (body.outgoing, &mut body.stream);
    let decoded = body.decoder.decode(wire, &mut |data| {
        data_bytes += data.len() as u64;
        outgoing.encode(data, &mut out);
        if let Some(stream) = stream.as_deref_mut() {
            stream.sent(data);
        }
    });
    match decoded {
        Ok(()) => Event::Data(out, data_bytes, body.decoder.is_done()),
        Err(e) => Event::UpstreamError(framing_error(e)),
    }
}

/// Ready when the client leaves: its request is complete, so its close, or any byte it
/// sends (a pipelined request the stream would hold up), ends the stream.
fn poll_client(client: &mut Stream, cx: &mut Context<'_>) -> Poll<Box<Error>> {
    let mut buf = [0u8; 1];
    let mut read = ReadBuf::new(&mut buf);
    match Pin::new(client).poll_read(cx, &mut read) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(e)) => Poll::Ready(
            Error::because(ErrorType::ReadError, "client connection failed", e).into_down(),
        ),
        Poll::Ready(Ok(())) => Poll::Ready(
            Error::explain(ErrorType::ConnectionClosed, "client left the stream").into_down(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::relay::framing::Incoming;

    /// A held stream's task is mostly this future, for up to 30 minutes: what it carries is
    /// paid per stream (the SSE benchmark holds 9,800). 752 bytes (debug build) before
    /// stream telemetry and heartbeats; they add 24, and a heartbeat timer only when on.
    #[test]
    fn a_held_stream_waits_in_a_small_future() {
        let mut pump = Pump {
            client: Box::new(std::io::Cursor::new(Vec::new())),
            upstream: Box::new(std::io::Cursor::new(Vec::new())),
            decoder: BodyDecoder::new(Incoming::Chunked),
            outgoing: Outgoing::Chunked,
            idle: None,
            sent: 0,
            stream: None,
            heartbeat: None,
        };
        let run = pump.run(Bytes::new());
        let size = std::mem::size_of_val(&run);
        assert!(size <= 800, "the stream's future is {size} bytes");
    }
}
