//! astron-edge: the edge proxy of the astron-agent compose stack, on Pingora.
//!
//! The binary (`main.rs`) is only the command line. The modules are private: what the
//! binary and the integration tests use is re-exported below, so the compiler sees every
//! other item's users and reports what has none.
//!
//! Dependencies run one way (checked by `tests/it/layering.rs`): the leaves (`routing`,
//! `tls`, `text`, `client`, `fields`, `signals`, `otlp_wire`, `metrics`), then `config`,
//! then `state` and `upstream`, then the features (`auth`, `cache`, `compress`,
//! `telemetry`), then `proxy`, then the process (`server`, `reload`, `shutdown`); `nginx`
//! and `source` sit on `config`.

mod auth;
mod cache;
mod client;
mod compress;
mod config;
mod fields;
mod healthcheck;
mod metrics;
mod nginx;
mod otlp_wire;
mod proxy;
mod reload;
mod routing;
mod server;
mod shutdown;
mod signals;
mod source;
mod state;
mod telemetry;
mod text;
mod tls;
mod upstream;

pub use config::{parse as parse_config, parse_duration, ConfigError, DEFAULT_CONFIG_PATH};
pub use healthcheck::{default_url as health_url, probe as probe_health};
pub use metrics::METRIC_NAMES;
pub use nginx::{import_file as import_nginx_file, Import as NginxImport, NginxError};
pub use server::{check, run};
pub use source::load as load_config;
pub use telemetry::log_levels::is_routine as is_routine_log;
