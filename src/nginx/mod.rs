//! nginx.conf as a config source (SPEC §1 `import-nginx`, `run -c nginx.conf`).
//!
//! [`import_file`] reads an nginx.conf (following `include`) and produces the equivalent
//! TOML text, every piece commented with the `FILE:LINE` it came from; [`load`] turns that
//! text into a [`Config`] at once, so that a mounted nginx.conf is served as it is, and any
//! error names the place in the nginx file, not in the generated TOML.

mod emit;
mod import;
mod syntax;
mod values;

use std::fmt;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigError};

pub use import::Import;
#[cfg(test)]
use syntax::parse_text;

/// An nginx.conf that cannot be imported: `FILE:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NginxError {
    pub file: PathBuf,
    /// 1-based; 0 when the whole file is at fault (it cannot be read).
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl NginxError {
    fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        NginxError {
            file: file.to_owned(),
            line: 0,
            col: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for NginxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.col,
                self.message
            )
        }
    }
}

impl std::error::Error for NginxError {}

impl From<NginxError> for ConfigError {
    fn from(e: NginxError) -> Self {
        if e.line == 0 {
            ConfigError::whole_file(&e.file, e.message)
        } else {
            ConfigError::at_position(&e.file, e.line, e.col, e.message)
        }
    }
}

/// Reads `path` as nginx syntax and imports it (see the module doc).
pub fn import_file(path: &Path) -> Result<Import, NginxError> {
    let directives = syntax::parse_file(path)?;
    import::import(path, &directives)
}

/// Imports `path` and validates the result: what `run`/`check -c nginx.conf` load at start
/// and at every reload. Warnings go to the log; errors point into the nginx file.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let directives = syntax::parse_file(path)?;
    let imported = import::import(path, &directives)?;
    for warning in &imported.warnings {
        tracing::warn!("{warning}");
    }
    let mut config =
        crate::config::parse(path, &imported.toml).map_err(|e| imported.locate(path, e))?;
    config.included_files = syntax::included_files(path, &directives);
    Ok(config)
}

/// Whether `path` names an nginx.conf rather than a TOML config (SPEC §1: any name not
/// ending in `.toml`).
pub(crate) fn is_nginx_path(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) != Some("toml")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Whatever the text, the import ends in TOML or in an error with a position; the TOML
    /// either validates or fails with a position (moved into the nginx file).
    fn no_panic_and_positioned(text: &str) {
        let path = Path::new("fuzz/nginx.conf");
        match parse_text(path, text).and_then(|d| import::import(path, &d)) {
            Ok(imported) => {
                if let Err(e) =
                    crate::config::parse(path, &imported.toml).map_err(|e| imported.locate(path, e))
                {
                    assert!(e.position().is_some(), "{e}");
                }
            }
            Err(e) => assert!(e.line > 0 && e.col > 0, "{e}"),
        }
    }

    const SOUP: &[&str] = &[
        "http",
        "server",
        "location",
        "upstream",
        "{",
        "}",
        ";",
        ";",
        "}",
        "proxy_pass",
        "http://a:1",
        "http://a:1/x/",
        "http://up",
        "return",
        "404",
        "200",
        "301",
        "\"x\"",
        "add_header",
        "X-A",
        "always",
        "listen",
        "80",
        "443",
        "ssl",
        "=",
        "^~",
        "~",
        "~*",
        "/",
        "/a/",
        "/a",
        "\\.(js)$",
        "(",
        "[",
        "proxy_set_header",
        "Host",
        "$host",
        "\"\"",
        "$http_x",
        "$v",
        "auth_request",
        "/auth",
        "auth_request_set",
        "$upstream_http_x",
        "expires",
        "1y",
        "-1",
        "gzip",
        "on",
        "off",
        "gzip_types",
        "text/plain",
        "client_max_body_size",
        "1m",
        "0",
        "keepalive_timeout",
        "internal",
        "proxy_buffering",
        "access_log",
        "include",
        "missing.conf",
        "#c\n",
        "\n",
        "rewrite",
        "proxy_read_timeout",
        "60s",
        "server_name",
        "ssl_certificate",
        "x.pem",
        "log_format",
        "main",
        "'",
        "\"",
        "\\",
        "${",
        "events",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            no_panic_and_positioned(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn directive_soup_never_panics(picks in proptest::collection::vec(0..SOUP.len(), 0..120)) {
            let text = picks.iter().map(|&i| SOUP[i]).collect::<Vec<_>>().join(" ");
            no_panic_and_positioned(&text);
        }

        #[test]
        fn soup_inside_a_valid_frame_never_panics(picks in proptest::collection::vec(0..SOUP.len(), 0..60)) {
            let soup = picks.iter().map(|&i| SOUP[i]).collect::<Vec<_>>().join(" ");
            let text = format!("http {{ server {{ listen 80; location / {{ {soup} }} }} }}");
            no_panic_and_positioned(&text);
        }
    }
}
