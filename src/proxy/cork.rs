//! `TCP_CORK` around compressed answers: how the proxy writes them to the client.

use std::os::fd::{AsRawFd, BorrowedFd};

use pingora::proxy::Session;

/// Holds what is written to the client in the kernel (`TCP_CORK`) while a compressed
/// response goes out; [`release_segments`] sends it.
///
/// The length of a compressed body is unknown when its header is written, so Pingora sends
/// it chunked and flushes the header, every chunk and the terminator each on their own:
/// for a typical JSON answer three TCP segments where nginx sends one `writev`, and every
/// segment costs the loopback or NIC path and a wake-up of the client. Corked, the kernel
/// sends full segments only, and the rest when uncorked (at the latest after its 200 ms
/// ceiling, should the request end without [`release_segments`]). Streaming is not delayed
/// by more than deflate already does: a compressed body leaves the encoder in blocks, and
/// `sse` routes are never compressed. Plain TCP only (a TLS session is left as it is).
pub(super) fn hold_segments(session: &Session) {
    set_cork(session, true);
}

/// Sends what [`hold_segments`] held: called once the response is complete.
pub(super) fn release_segments(session: &Session) {
    set_cork(session, false);
}

fn set_cork(session: &Session, on: bool) {
    let Some(tcp) = session.stream().and_then(super::guard::tcp_of) else {
        return;
    };
    // SAFETY: the descriptor belongs to the session's stream, borrowed for this call: it
    // stays open while the borrow lives.
    let fd = unsafe { BorrowedFd::borrow_raw(tcp.as_raw_fd()) };
    if let Err(e) = socket2::SockRef::from(&fd).set_tcp_cork(on) {
        tracing::debug!("TCP_CORK {on}: {e}");
    }
}
