//! A typed builder for the configs tests start the proxy with, rendered as TOML by the
//! `toml` crate (quoting and escaping are its business, not each test's `format!`).
//!
//! ```ignore
//! let config = TestConfig::new()
//!     .upstream("app", [backend.addr])
//!     .route(Route::prefix("app-route", "/").to("app").set("sse", true));
//! let proxy = Proxy::with(&config);
//! ```

use std::fmt::Display;

use toml::{Table, Value};

/// A whole config but `[server]`'s listener, which [`crate::common::Proxy`] adds. The
/// access log is off unless a test sets `access_log.path`.
#[derive(Clone)]
pub(crate) struct TestConfig {
    table: Table,
    routes: Vec<Value>,
}

impl Default for TestConfig {
    fn default() -> Self {
        TestConfig::new()
    }
}

impl TestConfig {
    pub(crate) fn new() -> TestConfig {
        TestConfig {
            table: Table::new(),
            routes: Vec::new(),
        }
        .set("access_log.path", "off")
    }

    /// Sets a key by its dotted path (`"gzip.min_length"`, `"server.client_max_body_size"`),
    /// creating the tables on the way.
    pub(crate) fn set(mut self, dotted: &str, value: impl Into<Value>) -> TestConfig {
        set_dotted(&mut self.table, dotted, value.into());
        self
    }

    /// Removes a key by its dotted path (`"access_log.path"`: back to the default, stdout,
    /// for a test that logs where the proxy logs when no path is set).
    pub(crate) fn unset(mut self, dotted: &str) -> TestConfig {
        unset_dotted(&mut self.table, dotted);
        self
    }

    /// `[upstreams.NAME]` with these servers (`host:port` or a `SocketAddr`).
    pub(crate) fn upstream<A: Display>(
        self,
        name: &str,
        servers: impl IntoIterator<Item = A>,
    ) -> TestConfig {
        let servers: Vec<Value> = servers
            .into_iter()
            .map(|s| Value::String(s.to_string()))
            .collect();
        self.set(&format!("upstreams.{name}.servers"), servers)
    }

    /// `[server.tls]`: a TLS listener on `listen` with this certificate and key.
    pub(crate) fn tls(
        self,
        listen: std::net::SocketAddr,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> TestConfig {
        self.set("server.tls.listen", vec![listen.to_string()])
            .set("server.tls.cert", cert.display().to_string())
            .set("server.tls.key", key.display().to_string())
    }

    pub(crate) fn route(mut self, route: Route) -> TestConfig {
        self.routes.push(Value::Table(route.0));
        self
    }

    pub(crate) fn render(&self) -> String {
        let mut table = self.table.clone();
        if !self.routes.is_empty() {
            table.insert("routes".into(), Value::Array(self.routes.clone()));
        }
        toml::to_string(&table).unwrap_or_else(|e| panic!("test config renders: {e}"))
    }
}

/// One `[[routes]]` entry.
pub(crate) struct Route(Table);

impl Route {
    fn matcher(name: &str, kind: &str, path: &str) -> Route {
        let mut table = Table::new();
        table.insert("name".into(), name.into());
        table.insert(kind.into(), path.into());
        Route(table)
    }

    pub(crate) fn prefix(name: &str, path: &str) -> Route {
        Route::matcher(name, "prefix", path)
    }

    pub(crate) fn exact(name: &str, path: &str) -> Route {
        Route::matcher(name, "exact", path)
    }

    /// A route matched by the regex `pattern` (nginx's `location ~ PATTERN`).
    pub(crate) fn regex(name: &str, pattern: &str) -> Route {
        Route::matcher(name, "regex", pattern)
    }

    /// Proxies to the upstream `name`.
    pub(crate) fn to(self, upstream: &str) -> Route {
        self.set("upstream", upstream)
    }

    pub(crate) fn set(mut self, key: &str, value: impl Into<Value>) -> Route {
        set_dotted(&mut self.0, key, value.into());
        self
    }
}

fn set_dotted(table: &mut Table, dotted: &str, value: Value) {
    match dotted.split_once('.') {
        None => {
            table.insert(dotted.into(), value);
        }
        Some((head, rest)) => {
            let inner = table
                .entry(head)
                .or_insert_with(|| Value::Table(Table::new()));
            match inner {
                Value::Table(inner) => set_dotted(inner, rest, value),
                other => panic!("{head} is {other:?}, not a table"),
            }
        }
    }
}

fn unset_dotted(table: &mut Table, dotted: &str) {
    match dotted.split_once('.') {
        None => {
            table.remove(dotted);
        }
        Some((head, rest)) => {
            if let Some(Value::Table(inner)) = table.get_mut(head) {
                unset_dotted(inner, rest);
                if inner.is_empty() {
                    table.remove(head);
                }
            }
        }
    }
}
