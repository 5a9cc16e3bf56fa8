//! The integration tests: one binary (as ripgrep does), a module per area, all of them
//! driving the real `astron-edge` binary over real sockets (see `common`).

mod common;

mod asset_cache;
mod auth;
mod config_check;
mod deploy;
mod gzip;
mod hostile;
mod layering;
mod nginx_import;
mod nginx_parity;
mod observe;
mod reload;
mod routing;
mod shutdown;
mod sse;
mod sse_framing;
mod static_assets;
mod streams;
mod telemetry_access_log;
mod telemetry_metrics;
mod telemetry_observability;
mod telemetry_otlp;
mod tls;
mod upstream;
