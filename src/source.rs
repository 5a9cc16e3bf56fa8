//! Where the config comes from: a TOML file, or an nginx.conf imported in memory (SPEC §1:
//! a name not ending in `.toml`). A module above both `config` and `nginx`, so that the
//! importer can validate through `config` without `config` knowing the importer.

use std::path::Path;

use crate::config::{self, Config, ConfigError};
use crate::nginx;

/// Reads, expands and validates the config at `path`, in the syntax its name says; what
/// `run` and `check` load at start and at every reload.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    if nginx::is_nginx_path(path) {
        nginx::load(path)
    } else {
        config::load(path)
    }
}
