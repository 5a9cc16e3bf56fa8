//! astron-edge: the edge proxy of the astron-agent compose stack, on Pingora.
//!
//! The binary (`main.rs`) is only the command line; everything else is here so the
//! integration tests and benchmarks can reach it.

pub mod auth;
pub mod cache;
mod client;
pub mod compress;
pub mod config;
pub mod healthcheck;
pub mod metrics;
pub mod nginx;
mod otlp_wire;
pub mod proxy;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod source;
pub mod state;
pub mod telemetry;
mod text;
pub mod tls;
pub mod upstream;
