//! From the file's text to a [`Config`]: every rule of SPEC §2 "Validation", each error
//! at the position of the value at fault (or of its table when a key is missing).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use toml::Spanned;

use super::schema::{RawAuth, RawConfig, RawRoute, RawUpstream, Str};
use super::*;
use crate::routing::{Matcher, Router, RouterError, SlashRedirects};

const DEFAULT_LISTEN: &str = "0.0.0.0:80";
const DEFAULT_BODY_LIMIT: u64 = 1 << 20; // nginx's client_max_body_size default
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(75); // nginx's keepalive_timeout default
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(60); // nginx's client_header_timeout
const DEFAULT_HEADER_MAX_SIZE: u64 = 32 << 10; // nginx's large_client_header_buffers: 4 x 8k
/// Worker threads: more than this is a typo, not a machine (and tokio would fail to spawn them).
const MAX_THREADS: u64 = 1024;
/// The request-header limit's range: at least a request line, at most what Pingora's parser takes.
const HEADER_MAX_SIZE_RANGE: std::ops::RangeInclusive<u64> = 1024..=(1 << 20) - 1;
const DEFAULT_CACHE_OBJECT_CAP: u64 = 8 << 20;
/// A span at least this slow is kept whatever the sampler said (SPEC §6).
const DEFAULT_SLOW_THRESHOLD: Duration = Duration::from_secs(2);
/// Access-log rotation: files kept by default, and bounds.
const DEFAULT_LOG_FILES: u32 = 5;
const MAX_LOG_FILES: u32 = 100;
const MIN_LOG_SIZE: u64 = 1 << 10;
const MAX_LOG_SIZE: u64 = 1 << 40;
const DEFAULT_GZIP_TYPES: &[&str] = &[
    "text/plain",
    "text/css",
    "text/xml",
    "text/javascript",
    "application/xml+rss",
    "application/javascript",
    "application/json",
];

/// Carries the file name and text so every check can build a positioned error.
struct Checker<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    fn err(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file, self.text, span, message)
    }

    fn socket_addr(&self, value: &Spanned<Str>, what: &str) -> Result<SocketAddr, ConfigError> {
        value.get_ref().0.parse().map_err(|_| {
            self.err(
                value.span(),
                format!(
                    "{what}: {:?} is not an address like 0.0.0.0:80",
                    value.get_ref().0
                ),
            )
        })
    }

    fn header_name(&self, name: &str, span: Range<usize>) -> Result<HeaderName, ConfigError> {
        HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| self.err(span, format!("invalid header name {name:?}")))
    }

    fn header_value(&self, value: &Spanned<Str>) -> Result<HeaderValue, ConfigError> {
        HeaderValue::from_str(&value.get_ref().0).map_err(|_| {
            self.err(
                value.span(),
                format!("invalid header value {:?}", value.get_ref().0),
            )
        })
    }

    fn header_map(
        &self,
        map: &BTreeMap<String, Spanned<Str>>,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
        map.iter()
            .map(|(name, value)| {
                Ok((
                    self.header_name(name, value.span())?,
                    self.header_value(value)?,
                ))
            })
            .collect()
    }

    fn header_names(&self, names: &[Spanned<Str>]) -> Result<Vec<HeaderName>, ConfigError> {
        names
            .iter()
            .map(|name| self.header_name(&name.get_ref().0, name.span()))
            .collect()
    }

    fn readable_file(
        &self,
        value: &Spanned<Str>,
        base: &Path,
        what: &str,
    ) -> Result<PathBuf, ConfigError> {
        let path = base.join(&value.get_ref().0);
        match std::fs::read(&path) {
            Ok(bytes) if bytes.windows(11).any(|w| w == b"-----BEGIN ") => Ok(path),
            Ok(_) => Err(self.err(
                value.span(),
                format!("{what} {} holds no PEM data", path.display()),
            )),
            Err(e) => Err(self.err(value.span(), format!("{what} {}: {e}", path.display()))),
        }
    }
}

pub(super) fn validate(file: &Path, text: &str) -> Result<Config, ConfigError> {
    let check = Checker { file, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        check.err(span, e.message().trim_end().to_owned())
    })?;
    // Relative TLS paths are taken from the working directory, as nginx takes them from its prefix.
    let base = Path::new(".");

    let server = server(&check, &raw, base)?;
    let health_paths = match &raw.health.paths {
        None => vec!["/health".to_owned()],
        Some(paths) => paths
            .iter()
            .map(|p| {
                if p.get_ref().0.starts_with('/') {
                    Ok(p.get_ref().0.clone())
                } else {
                    Err(check.err(p.span(), "a health path must start with /"))
                }
            })
            .collect::<Result<_, _>>()?,
    };
    let access_log = access_log(&check, &raw)?;
    let metrics_listen = match raw.metrics.as_ref().and_then(|m| m.listen.as_ref()) {
        Some(listen) => Some(check.socket_addr(listen, "metrics.listen")?),
        None => None,
    };
    let telemetry = telemetry(&check, &raw)?;
    let gzip = gzip(&check, &raw)?;
    let cache = raw.cache.as_ref().map(|c| CacheConfig {
        max_size: c.max_size.0,
        max_object_size: c.max_object_size.map_or(DEFAULT_CACHE_OBJECT_CAP, |s| s.0),
    });
    let response_headers = check.header_map(&raw.response_headers)?;

    let upstreams = raw
        .upstreams
        .iter()
        .map(|(name, upstream)| self::upstream(&check, name, upstream))
        .collect::<Result<Vec<_>, _>>()?;
    let upstream_index: HashMap<&str, usize> = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| (u.name.as_str(), i))
        .collect();

    let auth = raw
        .auth
        .iter()
        .map(|(name, auth)| self::auth(&check, name, auth, &upstream_index))
        .collect::<Result<Vec<_>, _>>()?;
    let auth_index: HashMap<&str, usize> = auth
        .iter()
        .enumerate()
        .map(|(i, a)| (a.name.as_str(), i))
        .collect();

    let mut names = HashSet::new();
    let mut exact_paths = HashSet::new();
    let mut routes = Vec::with_capacity(raw.routes.len());
    for spanned in &raw.routes {
        let route = self::route(&check, spanned, &upstream_index, &auth_index)?;
        let raw_route = spanned.get_ref();
        if !names.insert(route.name.clone()) {
            return Err(check.err(
                raw_route.name.span(),
                format!("duplicate route name {:?}", route.name),
            ));
        }
        if let Matcher::Exact(path) = &route.matcher {
            if !exact_paths.insert(path.clone()) {
                let span = raw_route
                    .exact
                    .as_ref()
                    .map_or(spanned.span(), |e| e.span());
                return Err(check.err(
                    span,
                    format!("two routes have the same exact path {path:?}"),
                ));
            }
        }
        routes.push(route);
    }
    if routes.is_empty() {
        // An editor may truncate the file before writing it: serving 404 for everything
        // is worse than keeping the running config.
        let at = raw
            .routes
            .first()
            .map_or(text.len()..text.len(), |r| r.span());
        return Err(check.err(
            at,
            "the config has no [[routes]]: refusing to serve nothing",
        ));
    }
    let matchers: Vec<Matcher> = routes.iter().map(|r| r.matcher.clone()).collect();
    let router = Router::new(&matchers).map_err(|e| match e {
        RouterError::Regex { index, source } => {
            let span = raw.routes[index]
                .get_ref()
                .regex
                .as_ref()
                .map_or(raw.routes[index].span(), |r| r.span());
            check.err(span, format!("invalid regex: {source}"))
        }
        other => check.err(0..0, other.to_string()),
    })?;

    let slash_redirects = SlashRedirects::new(
        routes
            .iter()
            .map(|r| (&r.matcher, matches!(r.action, RouteAction::Proxy(_)))),
    );
    Ok(Config {
        included_files: Vec::new(),
        slash_redirects,
        source: file.to_owned(),
        server,
        health_paths,
        access_log,
        metrics_listen,
        telemetry,
        gzip,
        cache,
        response_headers,
        upstreams,
        auth,
        routes,
        router,
    })
}

fn server(check: &Checker<'_>, raw: &RawConfig, base: &Path) -> Result<ServerConfig, ConfigError> {
    let s = &raw.server;
    let listen = match &s.listen {
        Some(list) if list.get_ref().is_empty() => {
            return Err(check.err(list.span(), "server.listen is empty"))
        }
        Some(list) => list
            .get_ref()
            .iter()
            .map(|l| check.socket_addr(l, "server.listen"))
            .collect::<Result<_, _>>()?,
        None => vec![DEFAULT_LISTEN
            .parse()
            .map_err(|_| check.err(0..0, "bad default listen"))?],
    };
    let tls = match &s.tls {
        None => None,
        Some(tls) => {
            let t = tls.get_ref();
            if t.listen.is_empty() {
                return Err(check.err(tls.span(), "server.tls.listen is empty"));
            }
            let config = TlsConfig {
                listen: t
                    .listen
                    .iter()
                    .map(|l| check.socket_addr(l, "server.tls.listen"))
                    .collect::<Result<_, _>>()?,
                cert: check.readable_file(&t.cert, base, "certificate")?,
                key: check.readable_file(&t.key, base, "private key")?,
            };
            // Readable is not enough: a key of another certificate would fail every handshake.
            crate::tls::load_certified_key(&config.cert, &config.key)
                .map_err(|e| check.err(t.key.span(), e))?;
            Some(config)
        }
    };
    let threads = match &s.threads {
        None => 0,
        Some(t) if *t.get_ref() <= MAX_THREADS => *t.get_ref() as usize,
        Some(t) => {
            return Err(check.err(
                t.span(),
                format!("server.threads must be between 0 (one per core) and {MAX_THREADS}"),
            ))
        }
    };
    let client_header_timeout = match &s.client_header_timeout {
        None => DEFAULT_HEADER_TIMEOUT,
        Some(t) if !t.get_ref().0.is_zero() => t.get_ref().0,
        Some(t) => return Err(check.err(t.span(), "server.client_header_timeout must be above 0")),
    };
    let client_header_max_size = match &s.client_header_max_size {
        None => DEFAULT_HEADER_MAX_SIZE,
        Some(size) if HEADER_MAX_SIZE_RANGE.contains(&size.get_ref().0) => size.get_ref().0,
        Some(size) => {
            return Err(check.err(
                size.span(),
                "server.client_header_max_size must be between 1k and 1023k",
            ))
        }
    };
    Ok(ServerConfig {
        listen,
        threads,
        client_max_body_size: s.client_max_body_size.map_or(DEFAULT_BODY_LIMIT, |v| v.0),
        keepalive_timeout: s.keepalive_timeout.map_or(DEFAULT_KEEPALIVE, |v| v.0),
        grace_period: s.grace_period.map_or(DEFAULT_GRACE, |v| v.0),
        sse_relay: s.sse_relay.unwrap_or(true),
        client_header_timeout,
        client_header_max_size: usize::try_from(client_header_max_size).unwrap_or(usize::MAX),
        underscores_in_headers: s.underscores_in_headers.unwrap_or(false),
        tls,
    })
}

fn access_log(check: &Checker<'_>, raw: &RawConfig) -> Result<AccessLogConfig, ConfigError> {
    let target = match &raw.access_log.path {
        None => LogTarget::Stdout,
        Some(p) => match p.get_ref().0.as_str() {
            "stdout" => LogTarget::Stdout,
            "off" => LogTarget::Off,
            "" => return Err(check.err(p.span(), "access_log.path is empty (use \"off\")")),
            path => LogTarget::File(PathBuf::from(path)),
        },
    };
    let format = match &raw.access_log.format {
        None => LogFormat::Main,
        Some(f) => match f.get_ref().0.as_str() {
            "main" => LogFormat::Main,
            "json" => LogFormat::Json,
            other => {
                return Err(check.err(
                    f.span(),
                    format!("access_log.format {other:?}: expected \"main\" or \"json\""),
                ))
            }
        },
    };
    let rotation = match (&raw.access_log.max_size, &raw.access_log.max_files) {
        (None, None) => None,
        (None, Some(files)) => {
            return Err(check.err(
                files.span(),
                "access_log.max_files needs access_log.max_size",
            ))
        }
        (Some(size), files) => {
            if !(MIN_LOG_SIZE..=MAX_LOG_SIZE).contains(&size.get_ref().0) {
                return Err(check.err(size.span(), "access_log.max_size must be between 1k and 1t"));
            }
            let max_files = match files {
                None => DEFAULT_LOG_FILES,
                Some(f) if (1..=MAX_LOG_FILES).contains(f.get_ref()) => *f.get_ref(),
                Some(f) => {
                    return Err(check.err(
                        f.span(),
                        format!("access_log.max_files must be between 1 and {MAX_LOG_FILES}"),
                    ))
                }
            };
            if target == LogTarget::Stdout || target == LogTarget::Off {
                return Err(check.err(
                    size.span(),
                    "access_log.max_size needs a file in access_log.path",
                ));
            }
            Some(Rotation {
                max_size: size.get_ref().0,
                max_files,
            })
        }
    };
    Ok(AccessLogConfig {
        target,
        format,
        rotation,
    })
}

fn telemetry(check: &Checker<'_>, raw: &RawConfig) -> Result<TelemetryConfig, ConfigError> {
    let t = &raw.telemetry;
    let protocol = match &t.protocol {
        None => OtlpProtocol::Grpc,
        Some(p) => match p.get_ref().0.as_str() {
            "grpc" => OtlpProtocol::Grpc,
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            other => {
                return Err(check.err(
                    p.span(),
                    format!("telemetry.protocol {other:?}: expected \"grpc\" or \"http/protobuf\""),
                ))
            }
        },
    };
    let sampling_ratio = match &t.sampling_ratio {
        None => 1.0,
        Some(r) if (0.0..=1.0).contains(r.get_ref()) => *r.get_ref(),
        Some(r) => {
            return Err(check.err(r.span(), "telemetry.sampling_ratio must be between 0 and 1"))
        }
    };
    let gzip = match &t.compression {
        None => false,
        Some(c) => match c.get_ref().0.as_str() {
            "gzip" => true,
            "none" => false,
            other => {
                return Err(check.err(
                    c.span(),
                    format!("telemetry.compression {other:?}: expected \"gzip\" or \"none\""),
                ))
            }
        },
    };
    let endpoint = match &t.endpoint {
        None => "http://127.0.0.1:4317".to_owned(),
        Some(e) if e.get_ref().0.is_empty() => {
            return Err(check.err(e.span(), "telemetry.endpoint is empty"))
        }
        Some(e) => e.get_ref().0.clone(),
    };
    Ok(TelemetryConfig {
        enabled: t.enabled.unwrap_or(false),
        endpoint,
        protocol,
        service_name: t
            .service_name
            .as_ref()
            .map_or_else(|| "astron-edge".to_owned(), |s| s.0.clone()),
        sampling_ratio,
        metrics_interval: t.metrics_interval.map_or(Duration::from_secs(3), |d| d.0),
        slow_threshold: t.slow_threshold.map_or(DEFAULT_SLOW_THRESHOLD, |d| d.0),
        keep_errors: t.keep_errors.unwrap_or(true),
        gzip,
    })
}

fn gzip(check: &Checker<'_>, raw: &RawConfig) -> Result<GzipConfig, ConfigError> {
    let Some(g) = &raw.gzip else {
        return Ok(GzipConfig {
            enabled: false,
            min_length: 1000,
            level: 6,
            types: default_gzip_types(),
        });
    };
    let level = match &g.level {
        None => 6,
        Some(l) if (1..=9).contains(l.get_ref()) => *l.get_ref(),
        Some(l) => return Err(check.err(l.span(), "gzip.level must be between 1 and 9")),
    };
    let mut types: Vec<String> = match &g.types {
        None => default_gzip_types(),
        Some(types) => types
            .iter()
            .map(|t| t.0.trim().to_ascii_lowercase())
            .collect(),
    };
    if !types.iter().any(|t| t == "text/html") {
        types.push("text/html".to_owned());
    }
    Ok(GzipConfig {
        enabled: g.enabled.unwrap_or(true),
        min_length: g.min_length.map_or(1000, |s| s.0),
        level,
        types,
    })
}

fn default_gzip_types() -> Vec<String> {
    DEFAULT_GZIP_TYPES
        .iter()
        .chain(std::iter::once(&"text/html"))
        .map(|t| (*t).to_owned())
        .collect()
}

fn upstream(
    check: &Checker<'_>,
    name: &str,
    raw: &Spanned<RawUpstream>,
) -> Result<UpstreamConfig, ConfigError> {
    let u = raw.get_ref();
    if u.servers.get_ref().is_empty() {
        return Err(check.err(
            u.servers.span(),
            format!("upstream {name:?} has no servers"),
        ));
    }
    let servers = u
        .servers
        .get_ref()
        .iter()
        .map(|s| {
            parse_server_addr(&s.get_ref().0).ok_or_else(|| {
                check.err(
                    s.span(),
                    format!("upstream server {:?} is not host:port", s.get_ref().0),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(UpstreamConfig {
        name: name.to_owned(),
        servers,
        connect_timeout: u.connect_timeout.map_or(DEFAULT_CONNECT_TIMEOUT, |d| d.0),
        timeout: u.timeout.map_or(DEFAULT_UPSTREAM_TIMEOUT, |d| d.0),
    })
}

/// `host:port` or `[v6]:port`; the host is resolved later, so any name is fine here.
fn parse_server_addr(text: &str) -> Option<ServerAddr> {
    let (host, port) = text.rsplit_once(':')?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']')?,
        None if host.contains(':') => return None,
        None => host,
    };
    let port: u16 = port.parse().ok()?;
    let valid = !host.is_empty()
        && port != 0
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    valid.then(|| ServerAddr {
        host: host.to_owned(),
        port,
    })
}

fn auth(
    check: &Checker<'_>,
    name: &str,
    raw: &Spanned<RawAuth>,
    upstreams: &HashMap<&str, usize>,
) -> Result<AuthConfig, ConfigError> {
    let a = raw.get_ref();
    let upstream = *upstreams
        .get(a.upstream.get_ref().0.as_str())
        .ok_or_else(|| {
            check.err(
                a.upstream.span(),
                format!(
                    "auth {name:?} names unknown upstream {:?}",
                    a.upstream.get_ref().0
                ),
            )
        })?;
    let path = a.path.get_ref().0.clone();
    if !path.starts_with('/') {
        return Err(check.err(a.path.span(), "an auth path must start with /"));
    }
    Ok(AuthConfig {
        name: name.to_owned(),
        upstream,
        path,
        timeout: a.timeout.map_or(DEFAULT_AUTH_TIMEOUT, |d| d.0),
        forward_headers: check.header_names(&a.forward_headers)?,
        copy_headers: check.header_names(&a.copy_headers)?,
    })
}

fn route(
    check: &Checker<'_>,
    spanned: &Spanned<RawRoute>,
    upstreams: &HashMap<&str, usize>,
    auths: &HashMap<&str, usize>,
) -> Result<RouteConfig, ConfigError> {
    let r = spanned.get_ref();
    let name = r.name.get_ref().0.clone();
    if name.is_empty() {
        return Err(check.err(r.name.span(), "a route name cannot be empty"));
    }
    let candidates = [
        r.exact
            .as_ref()
            .map(|v| (v, Matcher::Exact(v.get_ref().0.clone()))),
        r.priority_prefix
            .as_ref()
            .map(|v| (v, Matcher::PriorityPrefix(v.get_ref().0.clone()))),
        r.prefix
            .as_ref()
            .map(|v| (v, Matcher::Prefix(v.get_ref().0.clone()))),
        r.regex
            .as_ref()
            .map(|v| (v, Matcher::Regex(v.get_ref().0.clone()))),
    ];
    let mut given = candidates.into_iter().flatten();
    let (matcher_value, matcher) = match (given.next(), given.next()) {
        (None, _) => {
            return Err(check.err(
                spanned.span(),
                format!("route {name:?} needs one of exact, priority_prefix, prefix or regex"),
            ))
        }
        (Some(_), Some((second, _))) => {
            return Err(check.err(
                second.span(),
                format!("route {name:?} has more than one matcher"),
            ))
        }
        (Some(one), None) => one,
    };
    if !matches!(matcher, Matcher::Regex(_)) && !matcher_value.get_ref().0.starts_with('/') {
        return Err(check.err(matcher_value.span(), "a route path must start with /"));
    }

    let action = match (&r.upstream, &r.return_status) {
        (None, None) => {
            return Err(check.err(
                spanned.span(),
                format!("route {name:?} needs either upstream or return"),
            ))
        }
        (Some(_), Some(status)) => {
            return Err(check.err(
                status.span(),
                format!("route {name:?} has both upstream and return"),
            ))
        }
        (None, Some(status)) => {
            let code = StatusCode::from_u16(*status.get_ref())
                .ok()
                .filter(|c| (200..=599).contains(&c.as_u16()))
                .ok_or_else(|| {
                    check.err(
                        status.span(),
                        "return must be an HTTP status between 200 and 599",
                    )
                })?;
            let proxy_only = [
                ("upstream_path", r.upstream_path.as_ref().map(|v| v.span())),
                ("auth", r.auth.as_ref().map(|v| v.span())),
                ("cache", r.cache.as_ref().map(|v| v.span())),
            ];
            if let Some((key, Some(span))) = proxy_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(check.err(
                    span,
                    format!("{key} only applies to routes with an upstream"),
                ));
            }
            let redirect = match &r.redirect {
                None => None,
                Some(url) if !code.is_redirection() || code.as_u16() == 304 => {
                    return Err(check.err(
                        url.span(),
                        "redirect needs return = 301, 302, 303, 307 or 308",
                    ))
                }
                Some(url) if r.body.is_some() => {
                    return Err(check.err(url.span(), "a route has either body or redirect"))
                }
                Some(url) => Some(check.header_value(url)?),
            };
            RouteAction::Return {
                status: code,
                body: r.body.as_ref().map(|b| b.get_ref().0.clone()),
                redirect,
            }
        }
        (Some(upstream), None) => {
            if let Some(body) = &r.body {
                return Err(check.err(body.span(), "body only applies to return routes"));
            }
            if let Some(redirect) = &r.redirect {
                return Err(check.err(redirect.span(), "redirect only applies to return routes"));
            }
            RouteAction::Proxy(proxy_route(check, r, &matcher, upstream, upstreams, auths)?)
        }
    };
    Ok(RouteConfig {
        name,
        matcher,
        action,
        add_response_headers: check.header_map(&r.add_response_headers)?,
        internal: r.internal,
        access_log: r.access_log.unwrap_or(true),
        client_max_body_size: r.client_max_body_size.map(|s| s.0),
    })
}

fn proxy_route(
    check: &Checker<'_>,
    r: &RawRoute,
    matcher: &Matcher,
    upstream: &Spanned<Str>,
    upstreams: &HashMap<&str, usize>,
    auths: &HashMap<&str, usize>,
) -> Result<ProxyRoute, ConfigError> {
    let upstream_index = *upstreams
        .get(upstream.get_ref().0.as_str())
        .ok_or_else(|| {
            check.err(
                upstream.span(),
                format!("unknown upstream {:?}", upstream.get_ref().0),
            )
        })?;
    let auth = match &r.auth {
        None => None,
        Some(a) => Some(
            *auths
                .get(a.get_ref().0.as_str())
                .ok_or_else(|| check.err(a.span(), format!("unknown auth {:?}", a.get_ref().0)))?,
        ),
    };
    let upstream_path = match &r.upstream_path {
        None => None,
        Some(p) if matches!(matcher, Matcher::Regex(_)) => {
            return Err(check.err(
                p.span(),
                "upstream_path cannot be used with a regex route (nginx forbids a URI in proxy_pass there too)",
            ))
        }
        Some(p) if !p.get_ref().0.starts_with('/') => {
            return Err(check.err(p.span(), "upstream_path must start with /"))
        }
        Some(p) => Some(p.get_ref().0.clone()),
    };
    let cache = match &r.cache {
        None => None,
        Some(c) => match c.get_ref().0.as_str() {
            "immutable" => Some(CachePolicy::Immutable),
            "no-store" => Some(CachePolicy::NoStore),
            other => {
                return Err(check.err(
                    c.span(),
                    format!("cache {other:?}: expected \"immutable\" or \"no-store\""),
                ))
            }
        },
    };
    let set_request_headers = r
        .set_request_headers
        .iter()
        .map(|(name, value)| {
            let name = check.header_name(name, value.span())?;
            let value = if value.get_ref().0.is_empty() {
                None
            } else {
                Some(check.header_value(value)?)
            };
            Ok((name, value))
        })
        .collect::<Result<_, ConfigError>>()?;
    Ok(ProxyRoute {
        upstream: upstream_index,
        upstream_path,
        auth,
        sse: r.sse,
        sse_heartbeat: sse_heartbeat(check, r)?,
        websocket: r.websocket,
        timeout: r.timeout.map(|d| d.0),
        connect_timeout: r.connect_timeout.map(|d| d.0),
        cache,
        set_request_headers,
        hide_response_headers: check.header_names(&r.hide_response_headers)?,
    })
}

/// Heartbeat intervals taken: shorter would flood clients, longer is no heartbeat for
/// load balancers that cut at 60-100 s.
const HEARTBEAT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(3600);

/// `sse_heartbeat`: `"0s"` is off; written by the SSE relay, so only on `sse` routes.
fn sse_heartbeat(check: &Checker<'_>, r: &RawRoute) -> Result<Option<Duration>, ConfigError> {
    let Some(value) = &r.sse_heartbeat else {
        return Ok(None);
    };
    let every = value.get_ref().0;
    if every.is_zero() {
        return Ok(None);
    }
    if !r.sse {
        let message = "sse_heartbeat needs sse = true (heartbeats are written by the SSE relay)";
        return Err(check.err(value.span(), message));
    }
    if !HEARTBEAT_RANGE.contains(&every) {
        let message = "sse_heartbeat must be between 100ms and 1h (or \"0s\": off)";
        return Err(check.err(value.span(), message));
    }
    Ok(Some(every))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        let addr = |s: &str| parse_server_addr(s).map(|a| a.to_string());
        assert_eq!(
            addr("console-hub:8080").as_deref(),
            Some("console-hub:8080")
        );
        assert_eq!(addr("127.0.0.1:1").as_deref(), Some("127.0.0.1:1"));
        assert_eq!(addr("[::1]:80").as_deref(), Some("[::1]:80"));
        assert_eq!(addr("hub"), None);
        assert_eq!(addr("hub:0"), None);
        assert_eq!(addr(":80"), None);
        assert_eq!(addr("::1:80"), None);
        assert_eq!(addr("hub:99999"), None);
        assert_eq!(addr("h b:80"), None);
    }
}
