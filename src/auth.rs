//! Forward auth, as nginx's `auth_request`: a body-less `GET` to the auth service decides
//! whether a request goes on, and which identity headers go with it.
//!
//! The auth answer is the only source of the `copy_headers` on the upstream request: a
//! header the answer lacks is removed, so a client can never forge the gateway's identity.
//! Connections to the auth service come from Pingora's own pooled connector (keep-alive,
//! async), and the whole check is bounded by the auth `timeout`.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;

use crate::client::ClientIdentity;
use crate::config::AuthConfig;
use crate::upstream::Upstream;

/// An auth answer body larger than this is not relayed (and the connection not reused).
const MAX_DENY_BODY: usize = 64 * 1024;
/// Idle time of a pooled connection to the auth service.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

static X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
static X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");

/// What the auth service decided.
#[derive(Debug)]
pub(crate) enum AuthOutcome {
    /// 2xx: the `copy_headers` to set (`Some`) or remove (`None`) upstream.
    Allow(Vec<(HeaderName, Option<HeaderValue>)>),
    /// 401/403: returned to the client as is.
    Deny(Denial),
    /// Anything else, no answer in time, or no connection: the client gets 500.
    Error(String),
}

#[derive(Debug)]
pub(crate) struct Denial {
    pub status: u16,
    /// `WWW-Authenticate` and `Content-Type` of the auth answer.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
}

/// The shared forward-auth client (one per process; its pool outlives reloads).
pub(crate) struct AuthClient {
    connector: Connector,
}

impl Default for AuthClient {
    fn default() -> Self {
        AuthClient {
            connector: Connector::new(None),
        }
    }
}

impl AuthClient {
    /// Asks the auth service about `client`'s request, within `auth.timeout`.
    /// `extra` headers (e.g. the auth span's `traceparent`) go on the auth request.
    pub(crate) async fn check(
        &self,
        auth: &AuthConfig,
        upstream: &Upstream,
        client: &RequestHeader,
        identity: &ClientIdentity,
        extra: &[(HeaderName, HeaderValue)],
    ) -> AuthOutcome {
        let request = match auth_request(auth, upstream, client, identity, extra) {
            Ok(request) => request,
            Err(e) => return AuthOutcome::Error(format!("cannot build the auth request: {e}")),
        };
        match tokio::time::timeout(auth.timeout, self.exchange(auth, upstream, request)).await {
            Ok(outcome) => outcome,
            Err(_) => AuthOutcome::Error(format!("no answer within {:?}", auth.timeout)),
        }
    }

    async fn exchange(
        &self,
        auth: &AuthConfig,
        upstream: &Upstream,
        request: RequestHeader,
    ) -> AuthOutcome {
        let addrs = match upstream.addresses().await {
            Ok(addrs) => addrs,
            Err(e) => return AuthOutcome::Error(e.to_string()),
        };
        let start = upstream.start_slot();
        let mut last_error = String::from("no address");
        // Like proxied requests: a refused connection tries the next address.
        for attempt in 0..addrs.len() {
            let Some(addr) = Upstream::pick(&addrs, start, attempt) else {
                break;
            };
            let mut peer = HttpPeer::new(addr, false, String::new());
            peer.options.connection_timeout = Some(auth.timeout);
            peer.options.total_connection_timeout = Some(auth.timeout);
            peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
            let (mut session, _reused) = match self.connector.get_http_session(&peer).await {
                Ok(session) => session,
                Err(e) => {
                    upstream.mark_stale();
                    last_error = format!("connect {addr}: {e}");
                    continue;
                }
            };
            session.set_read_timeout(Some(auth.timeout));
            session.set_write_timeout(Some(auth.timeout));
            let result = async {
                session
                    .write_request_header(Box::new(request.clone()))
                    .await?;
                session.finish_request_body().await?;
                session.read_response_header().await?;
                let status = session.response_header().map_or(0, |r| r.status.as_u16());
                let body = read_body_capped(&mut session).await?;
                Ok::<_, Box<pingora::Error>>((status, body))
            }
            .await;
            let (status, body) = match result {
                Ok(answer) => answer,
                Err(e) => return AuthOutcome::Error(format!("{addr}: {e}")),
            };
            let outcome = decide(auth, status, &session, body);
            if session.response_done() {
                self.connector
                    .release_http_session(session, &peer, Some(POOL_IDLE_TIMEOUT))
                    .await;
            }
            return outcome;
        }
        AuthOutcome::Error(last_error)
    }
}

/// The auth request: `GET path`, no body, the forwarded client headers and the originals.
fn auth_request(
    auth: &AuthConfig,
    upstream: &Upstream,
    client: &RequestHeader,
    identity: &ClientIdentity,
    extra: &[(HeaderName, HeaderValue)],
) -> pingora::Result<RequestHeader> {
    let mut request = RequestHeader::build("GET", auth.path.as_bytes(), None)?;
    if let Some(server) = upstream.servers.first() {
        request.insert_header(header::HOST, server.to_string())?;
    }
    for name in &auth.forward_headers {
        for value in client.headers.get_all(name) {
            request.append_header(name.clone(), value.clone())?;
        }
    }
    let original_uri = client
        .uri
        .path_and_query()
        .map_or_else(|| client.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    request.insert_header(X_ORIGINAL_URI.clone(), original_uri)?;
    request.insert_header(X_ORIGINAL_METHOD.clone(), client.method.as_str())?;
    identity.apply(client, &mut request)?;
    for (name, value) in extra {
        request.insert_header(name.clone(), value.clone())?;
    }
    Ok(request)
}

/// Reads the auth answer's body, up to [`MAX_DENY_BODY`] (the rest is left unread, and the
/// connection then not reused).
async fn read_body_capped(
    session: &mut pingora::protocols::http::client::HttpSession,
) -> pingora::Result<Bytes> {
    let mut body = BytesMut::new();
    while body.len() <= MAX_DENY_BODY {
        match session.read_response_body().await? {
            Some(chunk) => body.extend_from_slice(&chunk),
            None => break,
        }
    }
    body.truncate(MAX_DENY_BODY);
    Ok(body.freeze())
}

fn decide(
    auth: &AuthConfig,
    status: u16,
    session: &pingora::protocols::http::client::HttpSession,
    body: Bytes,
) -> AuthOutcome {
    let Some(answer) = session.response_header() else {
        return AuthOutcome::Error("no response header".into());
    };
    match status {
        200..=299 => AuthOutcome::Allow(
            auth.copy_headers
                .iter()
                .map(|name| (name.clone(), answer.headers.get(name).cloned()))
                .collect(),
        ),
        401 | 403 => AuthOutcome::Deny(Denial {
            status,
            headers: [header::WWW_AUTHENTICATE, header::CONTENT_TYPE]
                .into_iter()
                .filter_map(|name| answer.headers.get(&name).cloned().map(|v| (name, v)))
                .collect(),
            body,
        }),
        other => AuthOutcome::Error(format!("auth service answered {other}")),
    }
}
