//! astron-edge: the edge proxy of the astron-agent compose stack, on Pingora.
//!
//! The binary (`main.rs`) is only the command line; everything else is here so the
//! integration tests and benchmarks can reach it.

pub mod config;
pub mod healthcheck;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod state;
pub mod upstream;
