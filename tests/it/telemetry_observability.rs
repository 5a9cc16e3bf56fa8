//! `docker/observability/`: the alert rules pass `promtool`, and every metric a dashboard
//! or rule query names is one the proxy exports.

use crate::common;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use astron_edge::METRIC_NAMES;

fn observability(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docker/observability")
        .join(file)
}

/// `promtool` from Debian's `prometheus` package (see [`common::tool`]).
fn promtool() -> Option<&'static str> {
    common::tool("promtool", &["/usr/bin/promtool", "/bin/promtool"])
}

fn run_promtool(args: &[&str]) {
    let Some(promtool) = promtool() else {
        return;
    };
    let output = Command::new(promtool)
        .args(args)
        .current_dir(observability(""))
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `edge_*` metric names in a PromQL expression, histogram suffixes folded.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let name = regex::Regex::new(r"\bedge_[a-z0-9_]+").expect("regex");
    name.find_iter(expr)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = n.strip_suffix(suffix)?;
                    METRIC_NAMES.contains(&base).then(|| base.to_owned())
                })
                .unwrap_or_else(|| n.to_owned())
        })
        .collect()
}

fn assert_exported(names: &BTreeSet<String>, what: &str) {
    assert!(!names.is_empty(), "{what} names no metric");
    for name in names {
        assert!(
            METRIC_NAMES.contains(&name.as_str()),
            "{what} queries {name}, which the proxy does not export"
        );
    }
}

#[test]
fn alert_rules_pass_promtool_and_fire_as_tested() {
    run_promtool(&["check", "rules", "alerts.yml"]);
    run_promtool(&["test", "rules", "alerts.test.yml"]);
    run_promtool(&["check", "config", "prometheus.yml"]);
}

#[test]
fn alert_rules_query_exported_metrics() {
    let rules = std::fs::read_to_string(observability("alerts.yml")).expect("alerts.yml");
    let names = metric_names(&rules);
    assert_exported(&names, "alerts.yml");
    for alert in [
        "AstronEdgeHigh5xxRatio",
        "AstronEdgeHighP99Latency",
        "AstronEdgeUpstreamFailures",
        "AstronEdgeConfigReloadFailed",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "{alert} missing"
        );
    }
}

fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn dashboard_parses_and_queries_only_exported_metrics() {
    let text = std::fs::read_to_string(observability("grafana-dashboard.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    assert!(all.len() >= 10, "too few queries: {all:?}");
    let mut names = BTreeSet::new();
    for expr in &all {
        let found = metric_names(expr);
        assert!(
            !found.is_empty(),
            "query names no astron-edge metric: {expr}"
        );
        names.extend(found);
    }
    assert_exported(&names, "grafana-dashboard.json");

    let titles: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter_map(|p| p["title"].as_str().map(str::to_lowercase))
        .collect();
    for wanted in [
        "requests/s by route",
        "error ratio",
        "p50 / p95 / p99",
        "active sse streams",
        "upstream latency",
        "reloads",
        "stream time to first byte",
        "stream ends/s by reason",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel for {wanted:?} in {titles:?}"
        );
    }
    for name in [
        "edge_http_requests_total",
        "edge_http_request_duration_seconds",
        "edge_sse_streams_active",
        "edge_upstream_duration_seconds",
        "edge_config_reloads_total",
        "edge_sse_streams_total",
        "edge_sse_time_to_first_byte_seconds",
    ] {
        assert!(names.contains(name), "the dashboard does not show {name}");
    }
}
