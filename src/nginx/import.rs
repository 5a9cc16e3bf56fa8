//! What nginx's directives mean, as astron-edge config: the `http`/`server`/`location`
//! tree with nginx's inheritance, turned into TOML text (see `mod.rs`).
//!
//! Three kinds of directive: those astron-edge expresses (mapped), those without effect on
//! a proxy of this kind (a `# ignored:` comment and a warning), and those that would change
//! behaviour and cannot be expressed (an error at their position). A directive this file
//! does not know at all is an error too, as in `nginx -t`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::emit::{list, quote, quote_env, quote_literal, Toml};
use super::syntax::{Arg, Directive, Pos};
use super::values::{duration_text, size, size_text, time};
use super::NginxError;
use crate::config::ConfigError;

/// nginx's defaults where the conf sets none.
const NGINX_PROXY_TIMEOUT: Duration = Duration::from_secs(60);
const NGINX_GZIP_MIN_LENGTH: u64 = 20;
const NGINX_GZIP_LEVEL: u32 = 1;
/// `log_format main` as nginx's documentation (and the stack) write it, whitespace folded.
const MAIN_FORMAT: &str = "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" \"$http_x_forwarded_for\"";
/// The statuses nginx's `add_header` (without `always`) and `expires` apply to.
const SUCCESS_STATUSES: &str = "200, 201, 204, 206, 301, 302, 303, 304, 307, 308";

/// Directives without effect on a proxy of this kind: ignored with a warning.
const NO_EFFECT: &[&str] = &[
    "user",
    "pid",
    "worker_processes",
    "worker_rlimit_nofile",
    "worker_connections",
    "worker_cpu_affinity",
    "worker_priority",
    "worker_shutdown_timeout",
    "events",
    "multi_accept",
    "use",
    "accept_mutex",
    "sendfile",
    "tcp_nopush",
    "tcp_nodelay",
    "types_hash_max_size",
    "types_hash_bucket_size",
    "server_names_hash_bucket_size",
    "server_names_hash_max_size",
    "types",
    "default_type",
    "error_log",
    "client_body_temp_path",
    "proxy_temp_path",
    "fastcgi_temp_path",
    "uwsgi_temp_path",
    "scgi_temp_path",
    "server_name",
    "server_tokens",
    "proxy_buffer_size",
    "proxy_buffers",
    "proxy_busy_buffers_size",
    "client_body_buffer_size",
    "ssl_protocols",
    "ssl_ciphers",
    "ssl_prefer_server_ciphers",
    "ssl_session_cache",
    "ssl_session_timeout",
    "ssl_session_tickets",
    "reset_timedout_connection",
    "gzip_http_version",
    "gzip_buffers",
    "gzip_disable",
];

/// Real nginx directives that change behaviour in ways astron-edge cannot express.
const UNSUPPORTED: &[&str] = &[
    "if",
    "set",
    "map",
    "geo",
    "root",
    "alias",
    "try_files",
    "index",
    "autoindex",
    "error_page",
    "fastcgi_pass",
    "uwsgi_pass",
    "scgi_pass",
    "grpc_pass",
    "memcached_pass",
    "limit_req",
    "limit_req_zone",
    "limit_conn",
    "limit_conn_zone",
    "limit_rate",
    "allow",
    "deny",
    "auth_basic",
    "auth_basic_user_file",
    "satisfy",
    "sub_filter",
    "proxy_redirect",
    "proxy_cookie_path",
    "proxy_cookie_domain",
    "proxy_cache_path",
    "proxy_cache_valid",
    "proxy_cache_key",
    "proxy_next_upstream",
    "proxy_intercept_errors",
    "proxy_pass_request_headers",
    "proxy_ssl_server_name",
    "proxy_ssl_verify",
    "real_ip_header",
    "set_real_ip_from",
    "resolver",
    "split_clients",
    "stream",
    "mail",
    "load_module",
    "ssl_client_certificate",
    "ssl_verify_client",
    "ssl_stapling",
    "charset",
    "merge_slashes",
    "underscores_in_headers",
    "ignore_invalid_headers",
    "large_client_header_buffers",
    "client_header_timeout",
    "client_body_timeout",
    "send_timeout",
    "absolute_redirect",
    "server_name_in_redirect",
    "port_in_redirect",
    "add_trailer",
    "etag",
    "expires_by_type",
    "mirror",
    "return_",
];

/// The result of an import: TOML text, warnings, and where each TOML line came from.
pub struct Import {
    pub toml: String,
    /// `FILE:LINE: message`, one per ignored directive.
    pub warnings: Vec<String>,
    origins: Vec<Option<Pos>>,
}

impl Import {
    /// An error found in the generated TOML, moved to the nginx place its line came from.
    pub fn locate(&self, nginx_file: &Path, e: ConfigError) -> ConfigError {
        let Some((line, _)) = e.position() else {
            return e;
        };
        let origin = self.origins[..line.min(self.origins.len())]
            .iter()
            .rev()
            .flatten()
            .next();
        match origin {
            Some(pos) => ConfigError::at_position(&pos.file, pos.line, pos.col, e.message()),
            None => ConfigError::at_position(nginx_file, 1, 1, e.message()),
        }
    }
}

pub(super) fn import(path: &Path, directives: &[Directive]) -> Result<Import, NginxError> {
    let mut im = Importer {
        base: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        ignored: Vec::new(),
        http: None,
    };
    for d in directives {
        match d.name.as_str() {
            "http" => {
                if im.http.is_some() {
                    return Err(d.pos.error("\"http\" directive is duplicate"));
                }
                im.http = Some(im.http_block(d)?);
            }
            _ => im.other(d, "main")?,
        }
    }
    let Some(http) = im.http.take() else {
        return Err(NginxError {
            file: path.to_owned(),
            line: 1,
            col: 1,
            message: "no \"http\" block: nothing to import".into(),
        });
    };
    let mut toml = Toml::default();
    write_toml(&mut toml, path, &http, &im.ignored)?;
    let warnings = im
        .ignored
        .iter()
        .map(|(pos, why)| format!("{}: {why}", pos.file_line()))
        .collect();
    let (toml, origins) = toml.finish();
    Ok(Import {
        toml,
        warnings,
        origins,
    })
}

struct Importer {
    /// The directory relative paths (certificates, includes) are taken from.
    base: PathBuf,
    ignored: Vec<(Pos, String)>,
    http: Option<Http>,
}

/// Settings nginx inherits from `http` to `server` to `location` (and nested locations).
/// Array-like directives (`add_header`, `proxy_set_header`, `proxy_hide_header`,
/// `auth_request_set`) are inherited only by a level that has none of its own.
#[derive(Clone, Default)]
struct Level {
    add_header: Option<Vec<AddHeader>>,
    proxy_set_header: Option<Vec<(Arg, Arg)>>,
    proxy_hide_header: Option<Vec<Arg>>,
    auth_request_set: Option<Vec<(Arg, Arg)>>,
    read_timeout: Option<(Duration, Pos)>,
    send_timeout: Option<(Duration, Pos)>,
    connect_timeout: Option<(Duration, Pos)>,
    client_max_body_size: Option<(u64, Pos)>,
    buffering_off: Option<bool>,
    expires: Option<Arg>,
    access_log_off: Option<bool>,
    auth_request: Option<Option<Arg>>,
}

impl Level {
    fn inherit(self, outer: &Level) -> Level {
        Level {
            add_header: self.add_header.or_else(|| outer.add_header.clone()),
            proxy_set_header: self
                .proxy_set_header
                .or_else(|| outer.proxy_set_header.clone()),
            proxy_hide_header: self
                .proxy_hide_header
                .or_else(|| outer.proxy_hide_header.clone()),
            auth_request_set: self
                .auth_request_set
                .or_else(|| outer.auth_request_set.clone()),
            read_timeout: self.read_timeout.or_else(|| outer.read_timeout.clone()),
            send_timeout: self.send_timeout.or_else(|| outer.send_timeout.clone()),
            connect_timeout: self
                .connect_timeout
                .or_else(|| outer.connect_timeout.clone()),
            client_max_body_size: self
                .client_max_body_size
                .or_else(|| outer.client_max_body_size.clone()),
            buffering_off: self.buffering_off.or(outer.buffering_off),
            expires: self.expires.or_else(|| outer.expires.clone()),
            access_log_off: self.access_log_off.or(outer.access_log_off),
            auth_request: self.auth_request.or_else(|| outer.auth_request.clone()),
        }
    }
}

#[derive(Clone)]
struct AddHeader {
    name: Arg,
    value: Arg,
    always: bool,
}

#[derive(Default)]
struct Http {
    level: Level,
    keepalive_timeout: Option<(Duration, Pos)>,
    access_log: Option<(String, Pos)>,
    log_formats: BTreeMap<String, (String, Pos)>,
    gzip: Gzip,
    upstreams: Vec<UpstreamBlock>,
    server: Option<Server>,
}

#[derive(Default)]
struct Gzip {
    on: Option<(bool, Pos)>,
    level: Option<(u32, Pos)>,
    min_length: Option<(u64, Pos)>,
    types: Option<(Vec<String>, Pos)>,
    vary: Option<bool>,
}

struct UpstreamBlock {
    name: String,
    pos: Pos,
    servers: Vec<Arg>,
}

#[derive(Default)]
struct Server {
    pos: Option<Pos>,
    level: Level,
    listen: Vec<(String, Pos)>,
    tls_listen: Vec<(String, Pos)>,
    cert: Option<(PathBuf, Pos)>,
    key: Option<(PathBuf, Pos)>,
    locations: Vec<Location>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Modifier {
    Exact,
    Priority,
    Prefix,
    Regex,
    RegexNoCase,
}

struct Location {
    modifier: Modifier,
    path: Arg,
    pos: Pos,
    level: Level,
    internal: bool,
    proxy_pass: Option<Arg>,
    ret: Option<(Arg, Option<Arg>)>,
    /// `rewrite ^<location>(.*)$ /new/$1 break;`: the replacement of the location's path.
    rewrite: Option<(String, Pos)>,
    ignored_here: Vec<(Pos, String)>,
    /// This location (or one it is nested in) has `add_header` of its own: they are the
    /// route's headers; otherwise it inherits the server's, which are `[response_headers]`.
    own_add_header: bool,
}

impl Importer {
    fn warn(&mut self, pos: &Pos, why: impl Into<String>) {
        self.ignored.push((pos.clone(), why.into()));
    }

    /// A directive not handled by the context it appears in: ignored, or an error.
    fn other(&mut self, d: &Directive, context: &str) -> Result<(), NginxError> {
        let name = d.name.as_str();
        if name == "include" {
            // Only `mime.types` is left by the parser: types do not matter to a proxy.
            self.warn(
                &d.pos,
                "ignored: include mime.types (a proxy passes the upstream's Content-Type)",
            );
            return Ok(());
        }
        if NO_EFFECT.contains(&name) {
            self.warn(
                &d.pos,
                format!("ignored: {name} (no effect on astron-edge)"),
            );
            return Ok(());
        }
        if UNSUPPORTED.contains(&name) {
            return Err(d.pos.error(format!(
                "\"{name}\" is not supported by astron-edge (it would change behaviour and has no equivalent)"
            )));
        }
        if KNOWN_ELSEWHERE.contains(&name) {
            return Err(d.pos.error(format!(
                "\"{name}\" directive is not allowed here ({context})"
            )));
        }
        Err(d.pos.error(format!("unknown directive \"{name}\"")))
    }

    fn http_block(&mut self, d: &Directive) -> Result<Http, NginxError> {
        let block = block_of(d)?;
        let mut http = Http::default();
        let mut servers = Vec::new();
        for d in block {
            if self.level_directive(d, &mut http.level)? {
                continue;
            }
            match d.name.as_str() {
                "server" => servers.push(d),
                "upstream" => http.upstreams.push(self.upstream_block(d)?),
                "keepalive_timeout" => {
                    let args = args(d, 1, 2)?;
                    let t = time_arg(&args[0])?;
                    if args.len() == 2 {
                        self.warn(&args[1].pos, "ignored: keepalive_timeout's header timeout");
                    }
                    http.keepalive_timeout = Some((t, args[0].pos.clone()));
                }
                "log_format" => {
                    let args = args(d, 2, usize::MAX)?;
                    let format = args[1..]
                        .iter()
                        .map(|a| a.text.as_str())
                        .collect::<String>();
                    let folded = format.split_whitespace().collect::<Vec<_>>().join(" ");
                    http.log_formats
                        .insert(args[0].text.clone(), (folded, args[0].pos.clone()));
                }
                "access_log" => {
                    let args = args(d, 1, usize::MAX)?;
                    http.access_log = Some(self.access_log(args, &http.log_formats)?);
                }
                "gzip" => http.gzip.on = Some((on_off(d)?, d.pos.clone())),
                "gzip_comp_level" => {
                    let a = &args(d, 1, 1)?[0];
                    let level = a
                        .text
                        .parse::<u32>()
                        .ok()
                        .filter(|l| (1..=9).contains(l))
                        .ok_or_else(|| a.pos.error("gzip_comp_level must be 1 to 9"))?;
                    http.gzip.level = Some((level, a.pos.clone()));
                }
                "gzip_min_length" => {
                    let a = &args(d, 1, 1)?[0];
                    let n = size(&a.text).ok_or_else(|| a.pos.error("invalid size"))?;
                    http.gzip.min_length = Some((n, a.pos.clone()));
                }
                "gzip_types" => {
                    let types = args(d, 1, usize::MAX)?
                        .iter()
                        .map(|a| a.text.to_ascii_lowercase())
                        .collect();
                    http.gzip.types = Some((types, d.pos.clone()));
                }
                "gzip_vary" => http.gzip.vary = Some(on_off(d)?),
                "gzip_proxied" => {
                    let args = args(d, 1, usize::MAX)?;
                    if args.iter().any(|a| a.text != "off" && a.text != "any") {
                        return Err(args[0].pos.error(
                            "gzip_proxied: only \"off\" and \"any\" can be expressed (astron-edge compresses whatever the request's Via)",
                        ));
                    }
                    if args[0].text == "off" {
                        self.warn(&d.pos, "gzip_proxied off: nginx leaves answers to requests carrying Via uncompressed; astron-edge compresses them too");
                    }
                }
                _ => self.other(d, "http")?,
            }
        }
        for d in servers {
            if let Some(first) = &http.server {
                return Err(d.pos.error(format!(
                    "a second \"server\" block: astron-edge serves one site (routing by Host is not built); the first is at {}",
                    first.pos.as_ref().map_or(String::new(), Pos::file_line)
                )));
            }
            let server = self.server_block(d, &http.level)?;
            http.server = Some(server);
        }
        Ok(http)
    }

    fn access_log(
        &mut self,
        args: &[Arg],
        formats: &BTreeMap<String, (String, Pos)>,
    ) -> Result<(String, Pos), NginxError> {
        let path = &args[0];
        if path.text == "off" {
            return Ok(("off".into(), path.pos.clone()));
        }
        match args.get(1) {
            None => self.warn(
                &path.pos,
                "access_log without a format is nginx's \"combined\"; astron-edge writes \"main\"",
            ),
            Some(f) => {
                let Some((format, _)) = formats.get(&f.text) else {
                    return Err(f.pos.error(format!("unknown log format \"{}\"", f.text)));
                };
                if format != MAIN_FORMAT {
                    return Err(f.pos.error(format!(
                        "log format \"{}\" is not nginx's main format; astron-edge writes \"main\" or \"json\"",
                        f.text
                    )));
                }
            }
        }
        for extra in args.iter().skip(2) {
            self.warn(
                &extra.pos,
                format!("ignored: access_log parameter {}", extra.text),
            );
        }
        Ok((path.text.clone(), path.pos.clone()))
    }

    fn upstream_block(&mut self, d: &Directive) -> Result<UpstreamBlock, NginxError> {
        let [name] = d.args.as_slice() else {
            return Err(d
                .pos
                .error("invalid number of arguments in \"upstream\" directive"));
        };
        let mut servers = Vec::new();
        for inner in block_of(d)? {
            match inner.name.as_str() {
                "server" => {
                    let args = args(inner, 1, usize::MAX)?;
                    for param in &args[1..] {
                        let key = param.text.split('=').next().unwrap_or("");
                        match key {
                            "max_fails" | "fail_timeout" | "weight" => self.warn(
                                &param.pos,
                                format!("ignored: server parameter {} (astron-edge: round robin, a refused connection tries the next server)", param.text),
                            ),
                            _ => {
                                return Err(param.pos.error(format!(
                                    "upstream server parameter \"{}\" is not supported",
                                    param.text
                                )))
                            }
                        }
                    }
                    if args[0].text.starts_with("unix:") {
                        return Err(args[0].pos.error("unix sockets are not supported upstreams"));
                    }
                    servers.push(args[0].clone());
                }
                "keepalive" | "keepalive_timeout" | "keepalive_requests" | "keepalive_time" => {
                    self.warn(
                        &inner.pos,
                        format!("ignored: {} (astron-edge keeps a pool of idle upstream connections itself)", inner.name),
                    )
                }
                _ => self.other(inner, "upstream")?,
            }
        }
        if servers.is_empty() {
            return Err(d
                .pos
                .error(format!("no servers in upstream \"{}\"", name.text)));
        }
        Ok(UpstreamBlock {
            name: name.text.clone(),
            pos: d.pos.clone(),
            servers,
        })
    }

    fn server_block(&mut self, d: &Directive, outer: &Level) -> Result<Server, NginxError> {
        let mut server = Server {
            pos: Some(d.pos.clone()),
            ..Server::default()
        };
        let mut locations = Vec::new();
        let mut own = Level::default();
        for d in block_of(d)? {
            if self.level_directive(d, &mut own)? {
                continue;
            }
            match d.name.as_str() {
                "listen" => {
                    let args = args(d, 1, usize::MAX)?;
                    let addr = listen_addr(&args[0])?;
                    let mut ssl = false;
                    for param in &args[1..] {
                        match param.text.as_str() {
                            "ssl" => ssl = true,
                            "http2" | "default_server" | "default" | "reuseport" => {}
                            p if p.starts_with("backlog=") => {}
                            p => {
                                return Err(param
                                    .pos
                                    .error(format!("listen parameter \"{p}\" is not supported")))
                            }
                        }
                    }
                    let list = if ssl {
                        &mut server.tls_listen
                    } else {
                        &mut server.listen
                    };
                    list.push((addr, args[0].pos.clone()));
                }
                "ssl_certificate" => {
                    let a = &args(d, 1, 1)?[0];
                    server.cert = Some((self.base.join(&a.text), a.pos.clone()));
                }
                "ssl_certificate_key" => {
                    let a = &args(d, 1, 1)?[0];
                    server.key = Some((self.base.join(&a.text), a.pos.clone()));
                }
                "location" => locations.push(d),
                _ => self.other(d, "server")?,
            }
        }
        server.level = own.inherit(outer);
        for d in locations {
            self.location(d, &server.level, None, &mut server.locations)?;
        }
        Ok(server)
    }

    /// One `location` (and the ones nested in it), appended to `out` in file order.
    fn location(
        &mut self,
        d: &Directive,
        outer: &Level,
        parent: Option<(Modifier, &str, bool)>,
        out: &mut Vec<Location>,
    ) -> Result<(), NginxError> {
        let (modifier, path) = location_args(d)?;
        if path.text.starts_with('@') {
            return Err(path.pos.error("named locations are not supported"));
        }
        if let Some((pm, ppath, _)) = parent {
            match (pm, modifier) {
                (Modifier::Exact, _) => {
                    return Err(d
                        .pos
                        .error("location is nested in an exact location (nginx refuses it too)"))
                }
                (Modifier::Regex | Modifier::RegexNoCase, _)
                | (_, Modifier::Regex | Modifier::RegexNoCase) => {
                    return Err(d
                        .pos
                        .error("regex locations nested with other locations are not supported"))
                }
                _ if !path.text.starts_with(ppath) => {
                    return Err(path.pos.error(format!(
                        "location \"{}\" is outside location \"{ppath}\"",
                        path.text
                    )))
                }
                _ => {}
            }
        }
        let mut own = Level::default();
        let mut loc = Location {
            modifier,
            path: path.clone(),
            pos: d.pos.clone(),
            level: Level::default(),
            internal: false,
            proxy_pass: None,
            ret: None,
            rewrite: None,
            ignored_here: Vec::new(),
            own_add_header: false,
        };
        let mut nested = Vec::new();
        for d in block_of(d)? {
            if self.level_directive(d, &mut own)? {
                continue;
            }
            match d.name.as_str() {
                "location" => nested.push(d),
                "internal" => {
                    args(d, 0, 0)?;
                    loc.internal = true;
                }
                "proxy_pass" => loc.proxy_pass = Some(args(d, 1, 1)?[0].clone()),
                "rewrite" => {
                    if loc.rewrite.is_some() {
                        return Err(d.pos.error("only one rewrite per location is supported"));
                    }
                    loc.rewrite = Some(prefix_rewrite(args(d, 2, 3)?, modifier, &path.text)?);
                }
                "return" => {
                    let args = args(d, 1, 2)?;
                    loc.ret = Some((args[0].clone(), args.get(1).cloned()));
                }
                _ => {
                    let before = self.ignored.len();
                    self.other(d, "location")?;
                    loc.ignored_here
                        .extend(self.ignored[before..].iter().cloned());
                }
            }
        }
        loc.own_add_header = own.add_header.is_some() || parent.is_some_and(|p| p.2);
        let own_add_header = loc.own_add_header;
        loc.level = own.inherit(outer);
        let level = loc.level.clone();
        let path_text = path.text.clone();
        out.push(loc);
        for d in nested {
            self.location(d, &level, Some((modifier, &path_text, own_add_header)), out)?;
        }
        Ok(())
    }

    /// The inheritable directives, at any level; `true` when `d` was one of them.
    fn level_directive(&mut self, d: &Directive, level: &mut Level) -> Result<bool, NginxError> {
        match d.name.as_str() {
            "add_header" => {
                let args = args(d, 2, 3)?;
                let always = match args.get(2) {
                    None => false,
                    Some(a) if a.text == "always" => true,
                    Some(a) => return Err(a.pos.error("expected \"always\"")),
                };
                level
                    .add_header
                    .get_or_insert_with(Vec::new)
                    .push(AddHeader {
                        name: args[0].clone(),
                        value: args[1].clone(),
                        always,
                    });
            }
            "proxy_set_header" => {
                let args = args(d, 2, 2)?;
                level
                    .proxy_set_header
                    .get_or_insert_with(Vec::new)
                    .push((args[0].clone(), args[1].clone()));
            }
            "proxy_hide_header" => {
                let args = args(d, 1, 1)?;
                level
                    .proxy_hide_header
                    .get_or_insert_with(Vec::new)
                    .push(args[0].clone());
            }
            "auth_request_set" => {
                let args = args(d, 2, 2)?;
                level
                    .auth_request_set
                    .get_or_insert_with(Vec::new)
                    .push((args[0].clone(), args[1].clone()));
            }
            "auth_request" => {
                let a = &args(d, 1, 1)?[0];
                level.auth_request = Some((a.text != "off").then(|| a.clone()));
            }
            "proxy_read_timeout" => level.read_timeout = Some(timeout(d)?),
            "proxy_send_timeout" => level.send_timeout = Some(timeout(d)?),
            "proxy_connect_timeout" => level.connect_timeout = Some(timeout(d)?),
            "client_max_body_size" => {
                let a = &args(d, 1, 1)?[0];
                if level.client_max_body_size.is_some() {
                    return Err(d
                        .pos
                        .error("\"client_max_body_size\" directive is duplicate"));
                }
                let n = size(&a.text).ok_or_else(|| a.pos.error("invalid size"))?;
                if n == 0 {
                    return Err(a
                        .pos
                        .error("client_max_body_size 0 (no limit) is not supported; give a size"));
                }
                level.client_max_body_size = Some((n, a.pos.clone()));
            }
            "proxy_buffering" => level.buffering_off = Some(!on_off(d)?),
            "expires" => level.expires = Some(args(d, 1, 1)?[0].clone()),
            "access_log" if args(d, 1, 1).is_ok_and(|a| a[0].text == "off") => {
                level.access_log_off = Some(true);
            }
            "proxy_http_version" | "proxy_request_buffering" | "chunked_transfer_encoding" => {
                args(d, 1, 1)?;
                self.warn(
                    &d.pos,
                    format!(
                        "ignored: {} {} (astron-edge speaks HTTP/1.1 upstream and streams request and response bodies as they come)",
                        d.name, d.args[0].text
                    ),
                );
            }
            "proxy_cache" => {
                let a = &args(d, 1, 1)?[0];
                if a.text != "off" {
                    return Err(a.pos.error(
                        "proxy_cache zones are not supported (astron-edge's asset cache: [cache] and cache = \"immutable\")",
                    ));
                }
                self.warn(&d.pos, "ignored: proxy_cache off (the default)");
            }
            "proxy_pass_request_body" => {
                let on = on_off(d)?;
                if on {
                    self.warn(&d.pos, "ignored: proxy_pass_request_body on (the default)");
                } else {
                    // Only meaningful in the auth location: checked where auth is built.
                    self.warn(&d.pos, "ignored: proxy_pass_request_body off (astron-edge's forward auth sends no body)");
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Directives valid in nginx but in another context than where they were found.
const KNOWN_ELSEWHERE: &[&str] = &[
    "http",
    "server",
    "location",
    "upstream",
    "listen",
    "proxy_pass",
    "return",
    "internal",
    "keepalive_timeout",
    "log_format",
    "gzip",
    "gzip_comp_level",
    "gzip_min_length",
    "gzip_types",
    "gzip_vary",
    "gzip_proxied",
    "ssl_certificate",
    "ssl_certificate_key",
    "keepalive",
    "access_log",
];

/// The one `rewrite` form that is a prefix replacement, as `upstream_path` expresses it:
/// `rewrite ^<path>(.*)$ <new>$1 break;` in a prefix location of `<path>` (`<path>` may end
/// in `/?` for a location ending in `/`). Anything else is an error at its position.
fn prefix_rewrite(
    args: &[Arg],
    modifier: Modifier,
    location: &str,
) -> Result<(String, Pos), NginxError> {
    let unsupported = |a: &Arg| {
        a.pos.error(
            "rewrite is supported only as `rewrite ^<location path>(.*)$ /new/$1 break;` in a prefix location (it becomes upstream_path)",
        )
    };
    if !matches!(modifier, Modifier::Prefix | Modifier::Priority) {
        return Err(unsupported(&args[0]));
    }
    match args.get(2) {
        Some(flag) if flag.text == "break" => {}
        Some(flag) => return Err(unsupported(flag)),
        None => return Err(unsupported(&args[0])),
    }
    let matched = args[0]
        .text
        .strip_prefix('^')
        .and_then(|p| p.strip_suffix("(.*)$"))
        .ok_or_else(|| unsupported(&args[0]))?;
    let same = matched == location
        || location
            .strip_suffix('/')
            .is_some_and(|bare| matched == format!("{bare}/?"));
    if !same {
        return Err(unsupported(&args[0]));
    }
    let new = args[1]
        .text
        .strip_suffix("$1")
        .filter(|n| n.starts_with('/') && !n.contains('$'))
        .ok_or_else(|| unsupported(&args[1]))?;
    Ok((new.to_owned(), args[1].pos.clone()))
}

fn block_of(d: &Directive) -> Result<&[Directive], NginxError> {
    d.block.as_deref().ok_or_else(|| {
        d.pos
            .error(format!("directive \"{}\" has no opening \"{{\"", d.name))
    })
}

/// The arguments of a block-less directive, between `min` and `max` of them.
fn args(d: &Directive, min: usize, max: usize) -> Result<&[Arg], NginxError> {
    if d.block.is_some() {
        return Err(d
            .pos
            .error(format!("directive \"{}\" takes no block", d.name)));
    }
    if d.args.len() < min || d.args.len() > max {
        return Err(d.pos.error(format!(
            "invalid number of arguments in \"{}\" directive",
            d.name
        )));
    }
    Ok(&d.args)
}

fn on_off(d: &Directive) -> Result<bool, NginxError> {
    let a = &args(d, 1, 1)?[0];
    match a.text.as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(a.pos.error(format!(
            "invalid value \"{}\" in \"{}\" directive, it must be \"on\" or \"off\"",
            a.text, d.name
        ))),
    }
}

fn time_arg(a: &Arg) -> Result<Duration, NginxError> {
    time(&a.text).ok_or_else(|| a.pos.error(format!("invalid time \"{}\"", a.text)))
}

fn timeout(d: &Directive) -> Result<(Duration, Pos), NginxError> {
    let a = &args(d, 1, 1)?[0];
    Ok((time_arg(a)?, a.pos.clone()))
}

fn location_args(d: &Directive) -> Result<(Modifier, &Arg), NginxError> {
    if d.block.is_none() {
        return Err(d.pos.error("directive \"location\" has no opening \"{\""));
    }
    let modifier = |text: &str, pos: &Pos| match text {
        "=" => Ok(Modifier::Exact),
        "^~" => Ok(Modifier::Priority),
        "~" => Ok(Modifier::Regex),
        "~*" => Ok(Modifier::RegexNoCase),
        _ => Err(pos.error(format!("invalid location modifier \"{text}\""))),
    };
    match d.args.as_slice() {
        [path] => Ok((Modifier::Prefix, path)),
        [m, path] => Ok((modifier(&m.text, &m.pos)?, path)),
        _ => Err(d
            .pos
            .error("invalid number of arguments in \"location\" directive")),
    }
}

/// nginx's `listen` address forms: `80`, `1.2.3.4:80`, `[::]:80`, `*:80`, `localhost:80`.
fn listen_addr(a: &Arg) -> Result<String, NginxError> {
    let t = a.text.as_str();
    if t.starts_with("unix:") {
        return Err(a.pos.error("unix socket listeners are not supported"));
    }
    let addr = if t.bytes().all(|b| b.is_ascii_digit()) {
        format!("0.0.0.0:{t}")
    } else if let Some(port) = t.strip_prefix("*:") {
        format!("0.0.0.0:{port}")
    } else if let Some(port) = t.strip_prefix("localhost:") {
        format!("127.0.0.1:{port}")
    } else if t.contains(':') {
        t.to_owned()
    } else {
        format!("{t}:80")
    };
    addr.parse::<std::net::SocketAddr>().map_err(|_| {
        a.pos
            .error(format!("listen \"{t}\": not an IP address and port"))
    })?;
    Ok(addr)
}

// ---------------------------------------------------------------------------------------
// From the tree to TOML.

/// An upstream as astron-edge sees it: an `upstream {}` block or a `host:port` of proxy_pass.
struct UpstreamOut {
    name: String,
    pos: Pos,
    /// `(text, env var)`; env var is set for the implicit upstreams (SPEC's `${VAR:-host:port}`).
    servers: Vec<(String, Option<String>)>,
}

struct AuthOut {
    name: String,
    pos: Pos,
    upstream: String,
    path: String,
    timeout: Duration,
    forward_headers: Vec<String>,
    copy_headers: Vec<String>,
    location: usize,
}

struct RouteOut {
    name: String,
    location: usize,
    lines: Vec<(Option<Pos>, String)>,
    comments: Vec<String>,
}

fn write_toml(
    toml: &mut Toml,
    path: &Path,
    http: &Http,
    ignored: &[(Pos, String)],
) -> Result<(), NginxError> {
    let Some(server) = &http.server else {
        return Err(NginxError {
            file: path.to_owned(),
            line: 1,
            col: 1,
            message: "no \"server\" block: nothing to import".into(),
        });
    };
    toml.line(
        None,
        &format!(
            "# astron-edge config imported from {} by `astron-edge import-nginx`.\n\
             # Each table names the nginx FILE:LINE it comes from. Differences from nginx that\n\
             # stay: [response_headers] (nginx's server-level add_header ... always) go on every\n\
             # answer, even of locations with add_header of their own; route headers go on\n\
             # {SUCCESS_STATUSES} only, as add_header without always.",
            path.display()
        ),
    );
    for (pos, why) in ignored {
        toml.line(Some(pos), &format!("# {why}  ({})", pos.file_line()));
    }
    toml.blank();

    // [server]
    toml.line(None, "[server]");
    let listen: Vec<String> = match server.listen.as_slice() {
        [] if server.tls_listen.is_empty() => vec![quote_env("EDGE_LISTEN", "0.0.0.0:80")],
        [] => Vec::new(),
        [(one, _)] => vec![quote_env("EDGE_LISTEN", one)],
        many => many.iter().map(|(a, _)| quote(a)).collect(),
    };
    if listen.is_empty() {
        // TLS only: astron-edge still wants a plain listener; keep it on localhost.
        toml.line(
            None,
            "listen = [\"127.0.0.1:80\"]   # nginx.conf has TLS listeners only",
        );
    } else {
        let pos = server.listen.first().map(|l| &l.1).or(server.pos.as_ref());
        toml.line(pos, &format!("listen = {}", list(&listen)));
    }
    let body = server
        .level
        .client_max_body_size
        .clone()
        .unwrap_or((1 << 20, server.pos.clone().unwrap_or_else(|| dummy(path))));
    toml.line(
        Some(&body.1),
        &format!("client_max_body_size = {}", size_text(body.0)),
    );
    let keepalive = http
        .keepalive_timeout
        .clone()
        .map(|(d, p)| (d, Some(p)))
        .unwrap_or((Duration::from_secs(75), None));
    toml.line(
        keepalive.1.as_ref(),
        &format!("keepalive_timeout = {}", quote(&duration_text(keepalive.0))),
    );
    if !server.tls_listen.is_empty() {
        let (cert, key) = match (&server.cert, &server.key) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                return Err(server.tls_listen[0]
                    .1
                    .error("listen ... ssl needs ssl_certificate and ssl_certificate_key"))
            }
        };
        toml.blank();
        toml.line(Some(&server.tls_listen[0].1), "[server.tls]");
        let tls: Vec<String> = server.tls_listen.iter().map(|(a, _)| quote(a)).collect();
        toml.line(
            Some(&server.tls_listen[0].1),
            &format!("listen = {}", list(&tls)),
        );
        toml.line(
            Some(&cert.1),
            &format!("cert = {}", quote(&cert.0.to_string_lossy())),
        );
        toml.line(
            Some(&key.1),
            &format!("key = {}", quote(&key.0.to_string_lossy())),
        );
    }
    toml.blank();

    // [access_log]
    toml.line(None, "[access_log]");
    match &http.access_log {
        Some((p, pos)) if p == "off" => toml.line(Some(pos), "path = \"off\""),
        Some((p, pos)) if p == "/var/log/nginx/access.log" || p == "/dev/stdout" => toml.line(
            Some(pos),
            &format!(
                "path = {}   # nginx's image links {p} to stdout",
                quote_env("EDGE_ACCESS_LOG", "stdout")
            ),
        ),
        Some((p, pos)) => toml.line(Some(pos), &format!("path = {}", quote(p))),
        None => toml.line(None, "path = \"stdout\""),
    }
    toml.line(None, "format = \"main\"");
    toml.blank();
    toml.line(
        None,
        "[metrics]   # nginx has no such thing: from the environment",
    );
    toml.line(
        None,
        &format!(
            "listen = {}",
            quote_env("EDGE_METRICS_LISTEN", "127.0.0.1:9145")
        ),
    );
    toml.blank();

    // [gzip]
    let gzip = &http.gzip;
    toml.line(gzip.on.as_ref().map(|g| &g.1), "[gzip]");
    toml.line(
        gzip.on.as_ref().map(|g| &g.1),
        &format!("enabled = {}", gzip.on.as_ref().is_some_and(|g| g.0)),
    );
    let level = gzip
        .level
        .clone()
        .map_or((NGINX_GZIP_LEVEL, None), |(l, p)| (l, Some(p)));
    toml.line(level.1.as_ref(), &format!("level = {}", level.0));
    let min = gzip
        .min_length
        .clone()
        .map_or((NGINX_GZIP_MIN_LENGTH, None), |(l, p)| (l, Some(p)));
    toml.line(min.1.as_ref(), &format!("min_length = {}", min.0));
    let types: Vec<String> = gzip
        .types
        .as_ref()
        .map_or_else(|| vec!["text/html".to_owned()], |t| t.0.clone())
        .iter()
        .map(|t| quote(t))
        .collect();
    toml.line(
        gzip.types.as_ref().map(|t| &t.1),
        &format!("types = {}", list(&types)),
    );
    if gzip.on.as_ref().is_some_and(|g| g.0) && gzip.vary != Some(true) {
        toml.line(
            None,
            "# note: astron-edge sends Vary: Accept-Encoding as gzip_vary on does",
        );
    }
    toml.blank();

    // [response_headers]: server-level add_header.
    toml.line(None, "[response_headers]");
    for h in server.level.add_header.iter().flatten() {
        reject_variables(&h.value)?;
        let note = if h.always {
            ""
        } else {
            "   # nginx: without always, success statuses only; here on every answer"
        };
        toml.line(
            Some(&h.name.pos),
            &format!("{} = {}{note}", quote(&h.name.text), quote(&h.value.text)),
        );
    }
    toml.blank();

    let mut upstreams = upstream_blocks(http);
    let mut auths: Vec<AuthOut> = Vec::new();
    let mut routes: Vec<RouteOut> = Vec::new();
    for (index, loc) in server.locations.iter().enumerate() {
        let route = route(index, loc, server, &mut upstreams, &mut auths, &routes)?;
        routes.push(route);
    }

    for u in &upstreams {
        toml.source(&u.pos, &format!("upstream {}", u.name));
        toml.line(Some(&u.pos), &format!("[upstreams.{}]", quote(&u.name)));
        let servers: Vec<String> = u
            .servers
            .iter()
            .map(|(s, env)| match env {
                Some(var) => quote_env(var, s),
                None => quote(s),
            })
            .collect();
        toml.line(Some(&u.pos), &format!("servers = {}", list(&servers)));
        toml.line(
            Some(&u.pos),
            &format!(
                "connect_timeout = {}   # nginx's default; routes set their own\ntimeout = {}",
                quote(&duration_text(NGINX_PROXY_TIMEOUT)),
                quote(&duration_text(NGINX_PROXY_TIMEOUT))
            ),
        );
        toml.blank();
    }
    for a in &auths {
        toml.source(
            &a.pos,
            &format!("auth_request {} (location {})", a.path, a.location + 1),
        );
        toml.line(Some(&a.pos), &format!("[auth.{}]", quote(&a.name)));
        toml.line(Some(&a.pos), &format!("upstream = {}", quote(&a.upstream)));
        toml.line(Some(&a.pos), &format!("path = {}", quote(&a.path)));
        toml.line(
            Some(&a.pos),
            &format!("timeout = {}", quote(&duration_text(a.timeout))),
        );
        let fwd: Vec<String> = a.forward_headers.iter().map(|h| quote(h)).collect();
        toml.line(Some(&a.pos), &format!("forward_headers = {}", list(&fwd)));
        let copy: Vec<String> = a.copy_headers.iter().map(|h| quote(h)).collect();
        toml.line(Some(&a.pos), &format!("copy_headers = {}", list(&copy)));
        toml.blank();
    }
    for r in &routes {
        let loc = &server.locations[r.location];
        toml.source(&loc.pos, &location_label(loc));
        for c in &r.comments {
            toml.line(Some(&loc.pos), &format!("# {c}"));
        }
        toml.line(Some(&loc.pos), "[[routes]]");
        toml.line(Some(&loc.pos), &format!("name = {}", quote(&r.name)));
        for (pos, line) in &r.lines {
            toml.line(pos.as_ref().or(Some(&loc.pos)), line);
        }
        toml.blank();
    }
    Ok(())
}

fn dummy(path: &Path) -> Pos {
    Pos {
        file: std::sync::Arc::from(path),
        line: 1,
        col: 1,
    }
}

fn location_label(loc: &Location) -> String {
    let m = match loc.modifier {
        Modifier::Exact => "= ",
        Modifier::Priority => "^~ ",
        Modifier::Prefix => "",
        Modifier::Regex => "~ ",
        Modifier::RegexNoCase => "~* ",
    };
    format!("location {m}{}", loc.path.text)
}

fn upstream_blocks(http: &Http) -> Vec<UpstreamOut> {
    http.upstreams
        .iter()
        .map(|u| UpstreamOut {
            name: u.name.clone(),
            pos: u.pos.clone(),
            servers: u
                .servers
                .iter()
                .map(|s| {
                    let text = if s.text.contains(':') {
                        s.text.clone()
                    } else {
                        format!("{}:80", s.text)
                    };
                    (text, None)
                })
                .collect(),
        })
        .collect()
}

/// `proxy_pass http://host:port/uri` → (upstream name, the URI if any).
fn proxy_target(
    arg: &Arg,
    upstreams: &mut Vec<UpstreamOut>,
) -> Result<(String, Option<String>), NginxError> {
    if arg.text.contains('$') {
        return Err(arg.pos.error("proxy_pass with variables is not supported"));
    }
    let Some(rest) = arg.text.strip_prefix("http://") else {
        return Err(arg.pos.error(if arg.text.starts_with("https://") {
            "proxy_pass to https:// upstreams is not supported"
        } else {
            "invalid URL prefix in proxy_pass (expected http://)"
        }));
    };
    let (authority, uri) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(rest[i..].to_owned())),
        None => (rest, None),
    };
    if authority.is_empty() {
        return Err(arg.pos.error("no host in proxy_pass"));
    }
    if let Some(u) = upstreams
        .iter()
        .find(|u| u.name == authority && u.servers.iter().all(|s| s.1.is_none()))
    {
        return Ok((u.name.clone(), uri));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => (h, p),
        Some(_) => {
            return Err(arg
                .pos
                .error(format!("invalid port in proxy_pass \"{authority}\"")))
        }
        // A bare name is an upstream block's, in all likelihood: a typo must not become a
        // host name nginx would have refused to start with.
        None if !authority.contains('.') && authority != "localhost" => {
            return Err(arg.pos.error(format!(
                "no upstream \"{authority}\" is defined (an upstream block, or host:port)"
            )))
        }
        None => (authority, "80"),
    };
    let server = format!("{host}:{port}");
    if let Some(u) = upstreams
        .iter()
        .find(|u| u.servers.len() == 1 && u.servers[0].0 == server && u.servers[0].1.is_some())
    {
        return Ok((u.name.clone(), uri));
    }
    // An upstream named after the host (host-port when the host is taken by another port),
    // its address from `${HOST_ADDR:-host:port}` as the shipped TOML does.
    let mut name = host.to_owned();
    if upstreams.iter().any(|u| u.name == name) {
        name = format!("{host}-{port}");
    }
    let var = format!(
        "{}_ADDR",
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            })
            .collect::<String>()
    );
    upstreams.push(UpstreamOut {
        name: name.clone(),
        pos: arg.pos.clone(),
        servers: vec![(server, Some(var))],
    });
    Ok((name, uri))
}

fn reject_variables(a: &Arg) -> Result<(), NginxError> {
    if a.text.contains('$') {
        return Err(a.pos.error(format!(
            "\"{}\": nginx variables cannot be expressed here",
            a.text
        )));
    }
    Ok(())
}

/// A route name from a location path: `/console-api/chat-message/` → `console-api-chat-message`.
fn route_name(loc: &Location, index: usize, taken: &[RouteOut]) -> String {
    let base = match loc.modifier {
        Modifier::Regex | Modifier::RegexNoCase => format!("regex-{}", index + 1),
        _ => {
            let slug: String = loc
                .path
                .text
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect();
            let slug = slug
                .split('-')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("-");
            if slug.is_empty() {
                "root".to_owned()
            } else {
                slug
            }
        }
    };
    let base = if loc.modifier == Modifier::Exact && taken.iter().any(|r| r.name == base) {
        format!("{base}-exact")
    } else {
        base
    };
    let mut name = base.clone();
    let mut n = 2;
    while taken.iter().any(|r| r.name == name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// The `$upstream_http_*` header an `auth_request_set` variable holds.
fn auth_variable<'a>(level: &'a Level, var: &str) -> Option<&'a Arg> {
    level
        .auth_request_set
        .iter()
        .flatten()
        .find(|(name, _)| name.text.strip_prefix('$') == Some(var))
        .map(|(_, value)| value)
}

fn header_var(name: &str) -> String {
    name.to_ascii_lowercase().replace('-', "_")
}

fn route(
    index: usize,
    loc: &Location,
    server: &Server,
    upstreams: &mut Vec<UpstreamOut>,
    auths: &mut Vec<AuthOut>,
    taken: &[RouteOut],
) -> Result<RouteOut, NginxError> {
    let name = route_name(loc, index, taken);
    let mut lines: Vec<(Option<Pos>, String)> = Vec::new();
    let mut comments = Vec::new();
    let level = &loc.level;
    let path = &loc.path;
    reject_variables(path).or_else(|e| match loc.modifier {
        Modifier::Regex | Modifier::RegexNoCase => Ok(()),
        _ => Err(e),
    })?;
    match loc.modifier {
        Modifier::Exact => lines.push((
            Some(path.pos.clone()),
            format!("exact = {}", quote(&path.text)),
        )),
        Modifier::Priority => lines.push((
            Some(path.pos.clone()),
            format!("priority_prefix = {}", quote(&path.text)),
        )),
        Modifier::Prefix => lines.push((
            Some(path.pos.clone()),
            format!("prefix = {}", quote(&path.text)),
        )),
        Modifier::Regex | Modifier::RegexNoCase => {
            let re = if loc.modifier == Modifier::RegexNoCase {
                format!("(?i){}", path.text)
            } else {
                path.text.clone()
            };
            regex::Regex::new(&re).map_err(|e| {
                path.pos.error(format!(
                    "regex cannot be expressed in Rust's regex syntax: {}",
                    e.to_string().lines().last().unwrap_or("")
                ))
            })?;
            lines.push((
                Some(path.pos.clone()),
                format!("regex = {}", quote_literal(&re)),
            ));
        }
    }
    if !matches!(loc.modifier, Modifier::Regex | Modifier::RegexNoCase)
        && !path.text.starts_with('/')
    {
        return Err(path.pos.error("a location path must start with /"));
    }
    if loc.internal {
        lines.push((
            None,
            "internal = true   # nginx: internal (404 to clients)".into(),
        ));
    }
    if level.access_log_off == Some(true) {
        lines.push((None, "access_log = false".into()));
    }
    if let Some((n, pos)) = &level.client_max_body_size {
        if server.level.client_max_body_size.as_ref().map(|s| s.0) != Some(*n) {
            lines.push((
                Some(pos.clone()),
                format!("client_max_body_size = {}", size_text(*n)),
            ));
        }
    }

    // The action: return wins over proxy_pass (it runs in nginx's rewrite phase); an
    // internal location answers clients 404 and is reached by auth_request only.
    let mut headers_done: Vec<String> = Vec::new();
    let mut sse = false;
    if loc.internal {
        // Answered 404 to clients; the upstream stays so that, as in nginx, the bare path of
        // a slashed internal location is 404 too (not the next route's).
        match &loc.proxy_pass {
            Some(target) => {
                let (upstream, uri) = proxy_target(target, upstreams)?;
                lines.push((
                    Some(target.pos.clone()),
                    format!("upstream = {}", quote(&upstream)),
                ));
                if let (Some(uri), false) = (
                    uri,
                    matches!(loc.modifier, Modifier::Regex | Modifier::RegexNoCase),
                ) {
                    lines.push((
                        Some(target.pos.clone()),
                        format!("upstream_path = {}", quote(&uri)),
                    ));
                }
            }
            None => lines.push((None, "return = 404".into())),
        }
    } else if let Some((code, text)) = &loc.ret {
        let (status, text) = match code.text.parse::<u16>() {
            Ok(status) => (status, text.clone()),
            Err(_)
                if text.is_none()
                    && (code.text.starts_with("http://") || code.text.starts_with("https://")) =>
            {
                (302, Some(code.clone()))
            }
            Err(_) => {
                return Err(code
                    .pos
                    .error(format!("invalid return code \"{}\"", code.text)))
            }
        };
        if !(200..=599).contains(&status) {
            return Err(code.pos.error(format!("return {status} is not supported")));
        }
        lines.push((Some(code.pos.clone()), format!("return = {status}")));
        if let Some(text) = text {
            reject_variables(&text)?;
            let key = if matches!(status, 301 | 302 | 303 | 307 | 308) {
                "redirect"
            } else {
                "body"
            };
            lines.push((
                Some(text.pos.clone()),
                format!("{key} = {}", quote(&text.text)),
            ));
        }
        if loc.proxy_pass.is_some() {
            comments.push("note: nginx's return comes before proxy_pass, which never runs".into());
        }
    } else if let Some(target) = &loc.proxy_pass {
        let (upstream, uri) = proxy_target(target, upstreams)?;
        lines.push((
            Some(target.pos.clone()),
            format!("upstream = {}", quote(&upstream)),
        ));
        if let Some(uri) = uri {
            if matches!(loc.modifier, Modifier::Regex | Modifier::RegexNoCase) {
                return Err(target.pos.error(
                    "\"proxy_pass\" cannot have URI part in location given by regular expression",
                ));
            }
            if let Some((_, pos)) = &loc.rewrite {
                return Err(pos.error("rewrite with a proxy_pass that has a URI is not supported"));
            }
            lines.push((
                Some(target.pos.clone()),
                format!("upstream_path = {}", quote(&uri)),
            ));
        } else if let Some((new, pos)) = &loc.rewrite {
            // nginx sends the rewritten URI when proxy_pass has none: the same replacement.
            lines.push((Some(pos.clone()), format!("upstream_path = {}", quote(new))));
        }
        if let Some(Some(auth_uri)) = &level.auth_request {
            let auth = auth(auth_uri, loc, server, upstreams, auths)?;
            lines.push((
                Some(auth_uri.pos.clone()),
                format!("auth = {}", quote(&auth)),
            ));
        }
        sse = level.buffering_off == Some(true);
        if sse {
            lines.push((None, "sse = true   # proxy_buffering off".into()));
        }
        if let Some((t, pos)) = &level.connect_timeout {
            lines.push((
                Some(pos.clone()),
                format!("connect_timeout = {}", quote(&duration_text(*t))),
            ));
        }
        let read = level.read_timeout.clone();
        if let (Some((r, _)), Some((s, spos))) = (&read, &level.send_timeout) {
            if r != s {
                comments.push(format!(
                    "note: {}: proxy_send_timeout differs from proxy_read_timeout; astron-edge has one timeout (the read one)",
                    spos.file_line()
                ));
            }
        }
        if let Some((t, pos)) = read.or_else(|| level.send_timeout.clone()) {
            lines.push((Some(pos), format!("timeout = {}", quote(&duration_text(t)))));
        }
        proxy_headers(loc, sse, &mut lines, &mut comments)?;
        if let Some(hide) = &level.proxy_hide_header {
            let names: Vec<String> = hide.iter().map(|h| quote(&h.text)).collect();
            lines.push((
                Some(hide[0].pos.clone()),
                format!("hide_response_headers = {}", list(&names)),
            ));
        }
        // expires + add_header Cache-Control → the cache policies of SPEC §2.
        if let Some(policy) = cache_policy(loc, &mut headers_done)? {
            lines.push((
                level.expires.as_ref().map(|e| e.pos.clone()),
                format!("cache = {}", quote(policy)),
            ));
        }
    } else {
        return Err(loc
            .pos
            .error("location without proxy_pass or return: serving files is not supported"));
    }
    if loc.ret.is_some() && level.expires.as_ref().is_some_and(|e| e.text != "off") {
        return Err(level
            .expires
            .as_ref()
            .map_or(loc.pos.clone(), |e| e.pos.clone())
            .error("expires on a return location is not supported"));
    }

    // Route-level add_header: only when the location (or an enclosing location) has its
    // own; otherwise it inherits the server's, which are [response_headers] already.
    let own = level.add_header.as_ref().filter(|_| loc.own_add_header);
    let mut add = Vec::new();
    for h in own.into_iter().flatten() {
        let lname = h.name.text.to_ascii_lowercase();
        if headers_done.contains(&lname) {
            continue;
        }
        if sse
            && ((lname == "cache-control" && h.value.text == "no-cache")
                || (lname == "x-accel-buffering" && h.value.text == "no"))
        {
            continue;
        }
        reject_variables(&h.value)?;
        if h.always {
            return Err(h.name.pos.error(
                "add_header ... always inside a location is not supported (route headers go on success statuses only)",
            ));
        }
        add.push((
            h.name.pos.clone(),
            format!("{} = {}", quote(&h.name.text), quote(&h.value.text)),
        ));
    }
    if sse {
        for (wanted, value) in [("cache-control", "no-cache"), ("x-accel-buffering", "no")] {
            let has = own
                .into_iter()
                .flatten()
                .any(|h| h.name.text.eq_ignore_ascii_case(wanted) && h.value.text == value);
            if !has {
                comments.push(format!(
                    "note: an sse route adds {wanted}: {value} to its answers; this location does not"
                ));
            }
        }
    }
    if !add.is_empty() {
        let pos = add[0].0.clone();
        let items: Vec<String> = add.into_iter().map(|(_, s)| s).collect();
        lines.push((
            Some(pos),
            format!("add_response_headers = {{ {} }}", items.join(", ")),
        ));
    }
    for (pos, why) in &loc.ignored_here {
        comments.push(format!("{}: {why}", pos.file_line()));
    }
    Ok(RouteOut {
        name,
        location: index,
        lines,
        comments,
    })
}

/// `proxy_set_header` → built-in forwarding headers, set/remove, websocket, auth copies.
fn proxy_headers(
    loc: &Location,
    sse: bool,
    lines: &mut Vec<(Option<Pos>, String)>,
    comments: &mut Vec<String>,
) -> Result<(), NginxError> {
    let level = &loc.level;
    let mut set: Vec<String> = Vec::new();
    let mut standard = 0;
    // nginx passes a WebSocket upgrade where both are set (with HTTP/1.1 upstream).
    let (mut upgrade_header, mut connection_upgrade) = (None, false);
    for (name, value) in level.proxy_set_header.iter().flatten() {
        let lname = name.text.to_ascii_lowercase();
        let v = value.text.as_str();
        match (lname.as_str(), v) {
            ("host", "$host")
            | ("x-real-ip", "$remote_addr")
            | ("x-forwarded-for", "$proxy_add_x_forwarded_for")
            | ("x-forwarded-proto", "$scheme") => standard += 1,
            ("host" | "x-real-ip" | "x-forwarded-for" | "x-forwarded-proto", _) => {
                return Err(value.pos.error(format!(
                    "proxy_set_header {} {v}: astron-edge always sends {} as nginx's {}",
                    name.text,
                    name.text,
                    match lname.as_str() {
                        "host" => "$host",
                        "x-real-ip" => "$remote_addr",
                        "x-forwarded-for" => "$proxy_add_x_forwarded_for",
                        _ => "$scheme",
                    }
                )))
            }
            ("connection", "") => {}
            ("connection", "upgrade" | "$connection_upgrade") => connection_upgrade = true,
            ("upgrade", "$http_upgrade") => upgrade_header = Some(name.pos.clone()),
            ("x-accel-buffering", "no") if sse => {}
            (_, "") => set.push(format!("{} = \"\"", quote(&name.text))),
            (_, v) if !v.contains('$') => set.push(format!("{} = {}", quote(&name.text), quote(v))),
            (_, v) if v.strip_prefix("$http_") == Some(header_var(&name.text).as_str()) => {}
            (_, v) => {
                let var = v.strip_prefix('$').unwrap_or(v);
                match auth_variable(level, var) {
                    Some(source) if source.text.strip_prefix("$upstream_http_") == Some(header_var(&name.text).as_str()) => {}
                    Some(source) => {
                        return Err(source.pos.error(format!(
                            "auth_request_set ${var} {}: astron-edge copies an auth answer's header under its own name only ({} here)",
                            source.text, name.text
                        )))
                    }
                    None => {
                        return Err(value.pos.error(format!(
                            "proxy_set_header {} {v}: this value cannot be expressed",
                            name.text
                        )))
                    }
                }
            }
        }
    }
    if standard < 4 {
        comments.push("note: astron-edge sends Host ($host), X-Real-IP, X-Forwarded-For and X-Forwarded-Proto on every proxied request".into());
    }
    match (upgrade_header, connection_upgrade) {
        (Some(pos), true) => lines.push((Some(pos), "websocket = true".into())),
        (None, false) => {}
        _ => comments.push("note: only one of Upgrade $http_upgrade / Connection upgrade is set: nginx passes no WebSocket upgrade here, nor does astron-edge".into()),
    }
    if !set.is_empty() {
        let pos = level
            .proxy_set_header
            .as_ref()
            .and_then(|v| v.first())
            .map(|(n, _)| n.pos.clone());
        lines.push((
            pos,
            format!("set_request_headers = {{ {} }}", set.join(", ")),
        ));
    }
    Ok(())
}

/// `expires` with its `add_header Cache-Control` as one of astron-edge's cache policies.
fn cache_policy(
    loc: &Location,
    done: &mut Vec<String>,
) -> Result<Option<&'static str>, NginxError> {
    let Some(expires) = &loc.level.expires else {
        return Ok(None);
    };
    let headers = loc.level.add_header.as_deref().unwrap_or(&[]);
    let cc = headers
        .iter()
        .find(|h| h.name.text.eq_ignore_ascii_case("cache-control"))
        .map(|h| h.value.text.as_str());
    let policy = match (expires.text.as_str(), cc) {
        ("off", _) => return Ok(None),
        ("-1" | "epoch", Some("no-store, no-cache, must-revalidate, proxy-revalidate, max-age=0")) => {
            done.push("pragma".into());
            "no-store"
        }
        (t, Some("public, immutable")) if time(t) == Some(Duration::from_secs(31_536_000)) => "immutable",
        _ => {
            return Err(expires.pos.error(
                "expires is supported as \"expires 1y\" + add_header Cache-Control \"public, immutable\" (cache = \"immutable\") or \"expires -1\" + the no-store Cache-Control (cache = \"no-store\")",
            ))
        }
    };
    done.push("cache-control".into());
    Ok(Some(policy))
}

/// The `[auth.*]` a location's `auth_request` becomes (one per auth location and set of
/// copied headers); returns its name.
fn auth(
    uri: &Arg,
    loc: &Location,
    server: &Server,
    upstreams: &mut Vec<UpstreamOut>,
    auths: &mut Vec<AuthOut>,
) -> Result<String, NginxError> {
    // The location the subrequest lands in: exact first, then the longest prefix.
    let target = server
        .locations
        .iter()
        .enumerate()
        .find(|(_, l)| l.modifier == Modifier::Exact && l.path.text == uri.text)
        .or_else(|| {
            server
                .locations
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    matches!(l.modifier, Modifier::Prefix | Modifier::Priority)
                        && uri.text.starts_with(&l.path.text)
                })
                .max_by_key(|(_, l)| l.path.text.len())
        });
    let Some((index, target)) = target else {
        return Err(uri.pos.error(format!(
            "no location serves the auth_request URI {}",
            uri.text
        )));
    };
    let Some(pass) = &target.proxy_pass else {
        return Err(uri.pos.error(format!(
            "the auth location {} has no proxy_pass",
            target.pos.file_line()
        )));
    };
    let (upstream, path) = proxy_target(pass, upstreams)?;
    let path = match path {
        Some(p) if target.modifier == Modifier::Exact => p,
        Some(p) => format!("{p}{}", &uri.text[target.path.text.len()..]),
        None => uri.text.clone(),
    };
    let mut forward = Vec::new();
    for (name, value) in target.level.proxy_set_header.iter().flatten() {
        let lname = name.text.to_ascii_lowercase();
        match (lname.as_str(), value.text.as_str()) {
            (_, "")
            | ("x-original-uri", "$request_uri")
            | ("x-original-method", "$request_method")
            | ("x-real-ip", "$remote_addr")
            | ("x-forwarded-for", "$proxy_add_x_forwarded_for")
            | ("x-forwarded-proto", "$scheme")
            | ("host", "$host") => {}
            (_, v) if v.strip_prefix("$http_") == Some(header_var(&name.text).as_str()) => {
                forward.push(name.text.clone())
            }
            (_, v) => {
                return Err(value.pos.error(format!(
                    "proxy_set_header {} {v} in the auth location cannot be expressed (forward auth sends forward_headers, X-Original-URI, X-Original-Method and the X-Forwarded-* set)",
                    name.text
                )))
            }
        }
    }
    // The headers the protected location copies from the auth answer.
    let mut copy = Vec::new();
    for (name, value) in loc.level.proxy_set_header.iter().flatten() {
        if let Some(var) = value.text.strip_prefix('$') {
            if auth_variable(&loc.level, var).is_some() {
                copy.push(name.text.clone());
            }
        }
    }
    let timeout = target
        .level
        .read_timeout
        .as_ref()
        .map_or(NGINX_PROXY_TIMEOUT, |t| t.0);
    if let Some(existing) = auths
        .iter()
        .find(|a| a.location == index && a.copy_headers == copy)
    {
        return Ok(existing.name.clone());
    }
    let base: String = target
        .path
        .text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect::<String>()
        .split('-')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    let mut name = base.clone();
    let mut n = 2;
    while auths.iter().any(|a| a.name == name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    auths.push(AuthOut {
        name: name.clone(),
        pos: target.pos.clone(),
        upstream,
        path,
        timeout,
        forward_headers: forward,
        copy_headers: copy,
        location: index,
    });
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nginx::syntax::parse_text;

    fn toml_of(text: &str) -> String {
        let path = Path::new("t/nginx.conf");
        let directives = parse_text(path, text).expect("parses");
        import(path, &directives).expect("imports").toml
    }

    /// The lines of the route whose `name = "..."` is `name`.
    fn route<'a>(toml: &'a str, name: &str) -> Vec<&'a str> {
        let start = toml
            .find(&format!("name = \"{name}\""))
            .unwrap_or_else(|| panic!("no route {name}: {toml}"));
        toml[start..]
            .lines()
            .take_while(|l| !l.is_empty())
            .collect()
    }

    #[test]
    fn array_directives_are_inherited_only_by_levels_without_their_own() {
        let toml = toml_of(
            "http { proxy_read_timeout 5s; server { listen 80;\n\
             proxy_set_header X-A 1;\n\
             location /a/ { proxy_pass http://h:1; }\n\
             location /b/ { proxy_pass http://h:1; proxy_set_header X-B 2;\n\
               add_header X-Own 1;\n\
               location /b/c/ { proxy_pass http://h:1; proxy_read_timeout 7s; } }\n\
             } }",
        );
        let a = route(&toml, "a");
        assert!(
            a.contains(&"set_request_headers = { \"X-A\" = \"1\" }"),
            "{a:?}"
        );
        assert!(a.contains(&"timeout = \"5s\""), "{a:?}");
        let b = route(&toml, "b");
        assert!(
            b.contains(&"set_request_headers = { \"X-B\" = \"2\" }"),
            "{b:?}"
        );
        // The nested location inherits its parent's arrays and overrides the scalar.
        let c = route(&toml, "b-c");
        assert!(
            c.contains(&"set_request_headers = { \"X-B\" = \"2\" }"),
            "{c:?}"
        );
        assert!(
            c.contains(&"add_response_headers = { \"X-Own\" = \"1\" }"),
            "{c:?}"
        );
        assert!(c.contains(&"timeout = \"7s\""), "{c:?}");
    }

    #[test]
    fn upgrade_headers_make_a_websocket_route_only_together() {
        let toml = toml_of(
            "http { server { listen 80;\n\
             location /ws/ { proxy_pass http://h:1; proxy_http_version 1.1;\n\
               proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\"; }\n\
             location /half/ { proxy_pass http://h:1; proxy_set_header Upgrade $http_upgrade; }\n\
             } }",
        );
        assert!(route(&toml, "ws").contains(&"websocket = true"), "{toml}");
        let half = route(&toml, "half");
        assert!(!half.iter().any(|l| l.contains("websocket")), "{toml}");
        assert!(
            toml.contains("nginx passes no WebSocket upgrade here"),
            "{toml}"
        );
    }

    #[test]
    fn nginx_defaults_where_the_conf_sets_none() {
        let toml = toml_of("http { server { location / { proxy_pass http://h:1; } } }");
        assert!(toml.contains("client_max_body_size = \"1m\""), "{toml}");
        assert!(toml.contains("keepalive_timeout = \"75s\""), "{toml}");
        assert!(toml.contains("connect_timeout = \"60s\""), "{toml}");
        assert!(
            toml.contains("enabled = false"),
            "gzip is off in nginx by default"
        );
        assert!(toml.contains("level = 1"), "{toml}");
        assert!(toml.contains("min_length = 20"), "{toml}");
        assert!(
            toml.contains("listen = [\"${EDGE_LISTEN:-0.0.0.0:80}\"]"),
            "{toml}"
        );
    }

    #[test]
    fn upstream_blocks_and_returns() {
        let toml = toml_of(
            "http { upstream pool { server 10.0.0.1:81; server b.internal; keepalive 8; }\n\
             server { listen 8080;\n\
             location = / { return 302 /demo/; }\n\
             location /x { return https://example.com/; }\n\
             location /api/ { proxy_pass http://pool/v1/; } } }",
        );
        assert!(
            toml.contains("servers = [\"10.0.0.1:81\", \"b.internal:80\"]"),
            "{toml}"
        );
        let root = route(&toml, "root");
        assert!(root.contains(&"return = 302") && root.contains(&"redirect = \"/demo/\""));
        let x = route(&toml, "x");
        assert!(x.contains(&"redirect = \"https://example.com/\""), "{x:?}");
        let api = route(&toml, "api");
        assert!(api.contains(&"upstream = \"pool\"") && api.contains(&"upstream_path = \"/v1/\""));
    }
}
