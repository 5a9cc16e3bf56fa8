//! The config file as written: serde types that mirror SPEC §2 one to one.
//!
//! Every table rejects unknown keys, every string goes through `${VAR}` expansion while
//! it is deserialised, and values that later checks may reject are kept `Spanned`, so
//! that every error can name its `LINE:COL`. Semantic checks live in `validate.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use super::expand::expand_env;
use super::units::{bounded_size, parse_duration, parse_size};

/// A config string after `${VAR}` / `${VAR:-default}` expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Str(pub String);

impl<'de> Deserialize<'de> for Str {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        expand_env(&raw).map(Str).map_err(de::Error::custom)
    }
}

/// A duration string with a unit (`"30s"`), expanded then parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let Str(text) = Str::deserialize(deserializer)?;
        parse_duration(&text).map(Dur).map_err(de::Error::custom)
    }
}

/// A size in bytes: an integer, or a string with an optional unit (`"20m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"20m\", \"64k\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                let v = u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))?;
                self.visit_u64(v)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                bounded_size(v).map(Size).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                let expanded = expand_env(v).map_err(E::custom)?;
                parse_size(&expanded).map(Size).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub access_log: RawAccessLog,
    pub metrics: Option<RawMetrics>,
    #[serde(default)]
    pub telemetry: RawTelemetry,
    pub gzip: Option<RawGzip>,
    pub cache: Option<RawCache>,
    #[serde(default)]
    pub response_headers: BTreeMap<String, Spanned<Str>>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<RawUpstream>>,
    #[serde(default)]
    pub auth: BTreeMap<String, Spanned<RawAuth>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub listen: Option<Spanned<Vec<Spanned<Str>>>>,
    pub threads: Option<Spanned<u64>>,
    pub client_max_body_size: Option<Size>,
    pub keepalive_timeout: Option<Dur>,
    pub grace_period: Option<Dur>,
    pub sse_relay: Option<bool>,
    pub client_header_timeout: Option<Spanned<Dur>>,
    pub client_header_max_size: Option<Spanned<Size>>,
    pub underscores_in_headers: Option<bool>,
    pub tls: Option<Spanned<RawTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub listen: Vec<Spanned<Str>>,
    pub cert: Spanned<Str>,
    pub key: Spanned<Str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub paths: Option<Vec<Spanned<Str>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAccessLog {
    pub path: Option<Spanned<Str>>,
    pub format: Option<Spanned<Str>>,
    pub max_size: Option<Spanned<Size>>,
    pub max_files: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub listen: Option<Spanned<Str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub enabled: Option<bool>,
    pub endpoint: Option<Spanned<Str>>,
    pub protocol: Option<Spanned<Str>>,
    pub service_name: Option<Str>,
    pub sampling_ratio: Option<Spanned<f64>>,
    pub metrics_interval: Option<Dur>,
    pub slow_threshold: Option<Dur>,
    pub keep_errors: Option<bool>,
    pub compression: Option<Spanned<Str>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGzip {
    pub enabled: Option<bool>,
    pub min_length: Option<Size>,
    pub level: Option<Spanned<u32>>,
    pub types: Option<Vec<Str>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub max_size: Size,
    pub max_object_size: Option<Size>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub servers: Spanned<Vec<Spanned<Str>>>,
    pub connect_timeout: Option<Dur>,
    pub timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub upstream: Spanned<Str>,
    pub path: Spanned<Str>,
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub forward_headers: Vec<Spanned<Str>>,
    #[serde(default)]
    pub copy_headers: Vec<Spanned<Str>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub name: Spanned<Str>,
    pub exact: Option<Spanned<Str>>,
    pub priority_prefix: Option<Spanned<Str>>,
    pub prefix: Option<Spanned<Str>>,
    pub regex: Option<Spanned<Str>>,
    pub upstream: Option<Spanned<Str>>,
    #[serde(rename = "return")]
    pub return_status: Option<Spanned<u16>>,
    pub body: Option<Spanned<Str>>,
    pub upstream_path: Option<Spanned<Str>>,
    pub auth: Option<Spanned<Str>>,
    #[serde(default)]
    pub sse: bool,
    pub sse_heartbeat: Option<Spanned<Dur>>,
    #[serde(default)]
    pub websocket: bool,
    pub timeout: Option<Dur>,
    pub connect_timeout: Option<Dur>,
    pub cache: Option<Spanned<Str>>,
    #[serde(default)]
    pub set_request_headers: BTreeMap<String, Spanned<Str>>,
    #[serde(default)]
    pub hide_response_headers: Vec<Spanned<Str>>,
    #[serde(default)]
    pub add_response_headers: BTreeMap<String, Spanned<Str>>,

    // --- nginx location rules (issue 17, `import-nginx`) ---
    /// nginx `internal`: answered 404 to every client request, never proxied.
    #[serde(default)]
    pub internal: bool,
    /// nginx `access_log off` in a location: no access-log line for this route.
    pub access_log: Option<bool>,
    /// nginx `client_max_body_size` in a location: this route's own limit.
    pub client_max_body_size: Option<Size>,
    /// nginx `return 301..308 URL`: the `Location` of a `return` route.
    pub redirect: Option<Spanned<Str>>,
}
