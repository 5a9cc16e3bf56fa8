//! The configuration: schema, `${VAR}` expansion, units, validation, positioned errors.
//!
//! [`load`] turns a file into a [`Config`] that is ready to serve: every name resolved,
//! every regex compiled, every header parsed. Nothing in a `Config` can fail later on the
//! request path because of what the file said.

mod error;
mod expand;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod path_fuzz;
mod schema;
mod units;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

pub use error::ConfigError;
pub use units::parse_duration;

use crate::routing::{Matcher, Router, SlashRedirects};

/// The default config path, relative to the working directory.
pub const DEFAULT_CONFIG_PATH: &str = "conf/astron-edge.toml";

/// Reads, expands and validates a TOML config file (`source::load` picks the syntax).
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ConfigError::whole_file(path, format!("cannot read config file: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        // The position of the first byte that is not UTF-8, counted in the valid text before it.
        let valid = e.utf8_error().valid_up_to();
        let before = String::from_utf8_lossy(&e.as_bytes()[..valid]);
        ConfigError::at(path, &before, valid..valid, "the file is not valid UTF-8")
    })?;
    parse(path, &text)
}

/// Validates config text; `path` names the file in errors and anchors relative TLS paths.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    validate::validate(path, text)
}

/// A validated configuration.
#[derive(Debug)]
pub struct Config {
    pub source: PathBuf,
    /// Files `include`d by an nginx.conf `source` (empty for TOML): a reload watches them
    /// as it watches `source`.
    pub included_files: Vec<PathBuf>,
    pub server: ServerConfig,
    pub health_paths: Vec<String>,
    pub access_log: AccessLogConfig,
    pub metrics_listen: Option<SocketAddr>,
    pub telemetry: TelemetryConfig,
    pub gzip: GzipConfig,
    pub cache: Option<CacheConfig>,
    /// Added to every response: proxied, local and errors.
    pub response_headers: Vec<(HeaderName, HeaderValue)>,
    pub upstreams: Vec<UpstreamConfig>,
    pub auth: Vec<AuthConfig>,
    /// In file order; `Router` indices point into this list.
    pub routes: Vec<RouteConfig>,
    pub router: Router,
    /// nginx's 301 to the slashed path of a proxying prefix route.
    pub slash_redirects: SlashRedirects,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: Vec<SocketAddr>,
    /// 0 = one per core.
    pub threads: usize,
    pub client_max_body_size: u64,
    pub keepalive_timeout: Duration,
    pub grace_period: Duration,
    /// SSE routes relayed off Pingora's pipeline (`proxy::relay`); `false`: all in it.
    pub sse_relay: bool,
    /// The whole request header must arrive within this, counted from its first byte.
    pub client_header_timeout: Duration,
    /// The largest request header accepted, in bytes.
    pub client_header_max_size: usize,
    /// Whether header names with `_` reach routing, auth and upstreams (nginx's
    /// `underscores_in_headers`); off: they are dropped.
    pub underscores_in_headers: bool,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// nginx's `log_format main`.
    Main,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub target: LogTarget,
    pub format: LogFormat,
    /// `max_size` / `max_files`: the file is rotated by the proxy itself; `None`: never
    /// (then `SIGUSR1` and logrotate, as with nginx).
    pub rotation: Option<Rotation>,
}

/// `access_log.max_size` and `access_log.max_files` (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The file is renamed to `FILE.1` before a batch would take it past this size.
    pub max_size: u64,
    /// Rotated files kept (`FILE.1` … `FILE.N`); the oldest is dropped.
    pub max_files: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    pub enabled: bool,
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    pub service_name: String,
    pub sampling_ratio: f64,
    pub metrics_interval: Duration,
    /// A span slower than this (a stream: its time to first byte) is exported even when
    /// head sampling left it out, as are error spans when `keep_errors` (SPEC §6).
    pub slow_threshold: Duration,
    pub keep_errors: bool,
    /// `compression = "gzip"`: OTLP payloads gzip-compressed.
    pub gzip: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GzipConfig {
    pub enabled: bool,
    pub min_length: u64,
    pub level: u32,
    /// Media types without parameters, lower case; `text/html` is always included.
    pub types: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    pub max_size: u64,
    pub max_object_size: u64,
}

/// One `host:port` of an upstream, resolved when requests come.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub name: String,
    pub servers: Vec<ServerAddr>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub name: String,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub path: String,
    pub timeout: Duration,
    pub forward_headers: Vec<HeaderName>,
    pub copy_headers: Vec<HeaderName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub name: String,
    pub matcher: Matcher,
    pub action: RouteAction,
    /// Added on the statuses nginx's `add_header` (without `always`) adds on.
    pub add_response_headers: Vec<(HeaderName, HeaderValue)>,
    /// nginx `internal`: clients get 404, the route is never proxied.
    pub internal: bool,
    /// `false`: no access-log line (nginx `access_log off` in a location).
    pub access_log: bool,
    /// The route's own body limit; `None` = `server.client_max_body_size`.
    pub client_max_body_size: Option<u64>,
}

impl RouteConfig {
    /// The route's proxy settings, when it proxies.
    pub fn proxy(&self) -> Option<&ProxyRoute> {
        match &self.action {
            RouteAction::Proxy(proxy) => Some(proxy),
            RouteAction::Return { .. } => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    Proxy(ProxyRoute),
    Return {
        status: StatusCode,
        body: Option<String>,
        /// `Location` of a redirecting `return` (nginx `return 302 /path`).
        redirect: Option<HeaderValue>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub upstream_path: Option<String>,
    /// Index into `Config::auth`.
    pub auth: Option<usize>,
    pub sse: bool,
    /// Idle time after which a `text/event-stream` answer gets a `":\n\n"` comment.
    pub sse_heartbeat: Option<Duration>,
    /// Whether `Upgrade` requests (WebSocket) pass to the upstream; elsewhere the upgrade
    /// headers are not forwarded.
    pub websocket: bool,
    pub timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub cache: Option<CachePolicy>,
    /// `None` removes the header.
    pub set_request_headers: Vec<(HeaderName, Option<HeaderValue>)>,
    pub hide_response_headers: Vec<HeaderName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CachePolicy {
    Immutable,
    NoStore,
}

impl Config {
    /// A one-screen summary for `astron-edge check`: listeners, upstreams, routes in match order.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let listen: Vec<String> = self.server.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(out, "listen: {}", listen.join(", "));
        if let Some(tls) = &self.server.tls {
            let listen: Vec<String> = tls.listen.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(out, "listen (tls): {}", listen.join(", "));
        }
        if let Some(metrics) = self.metrics_listen {
            let _ = writeln!(out, "metrics: http://{metrics}/metrics");
        }
        let _ = writeln!(out, "health: {}", self.health_paths.join(", "));
        let _ = writeln!(out, "upstreams:");
        for upstream in &self.upstreams {
            let servers: Vec<String> = upstream.servers.iter().map(|s| s.to_string()).collect();
            let _ = writeln!(out, "  {:<24} {}", upstream.name, servers.join(", "));
        }
        let _ = writeln!(out, "routes (match order):");
        for index in self.router.match_order() {
            let route = &self.routes[index];
            let matcher = match &route.matcher {
                Matcher::Exact(p) => format!("= {p}"),
                Matcher::PriorityPrefix(p) => format!("^~ {p}"),
                Matcher::Prefix(p) => p.clone(),
                Matcher::Regex(r) => format!("~ {r}"),
            };
            let action = match &route.action {
                RouteAction::Proxy(proxy) => {
                    let mut action = format!("-> {}", self.upstreams[proxy.upstream].name);
                    if let Some(path) = &proxy.upstream_path {
                        action.push_str(&format!(" {path}"));
                    }
                    if let Some(auth) = proxy.auth {
                        action.push_str(&format!(" auth={}", self.auth[auth].name));
                    }
                    if proxy.sse {
                        action.push_str(" sse");
                    }
                    if proxy.websocket {
                        action.push_str(" websocket");
                    }
                    action
                }
                RouteAction::Return { status, .. } => format!("return {}", status.as_u16()),
            };
            let internal = if route.internal {
                " (internal: 404)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:<40} {:<28} {action}{internal}",
                matcher, route.name
            );
        }
        out
    }
}
