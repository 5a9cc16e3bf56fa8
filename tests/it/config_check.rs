//! `astron-edge check`: exit codes, the summary, and every validation rule of SPEC §2
//! reported as `FILE:LINE:COL: message` at the offending value.

use crate::common;
use std::process::Command;

struct Checked {
    code: i32,
    stdout: String,
    stderr: String,
    path: String,
}

fn check_with_env(config: &str, env: &[(&str, &str)]) -> Checked {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, config).expect("write");
    let mut cmd = Command::new(common::binary());
    cmd.arg("check")
        .arg("-c")
        .arg(&path)
        .current_dir(dir.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run check");
    Checked {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        path: path.display().to_string(),
    }
}

fn check(config: &str) -> Checked {
    check_with_env(config, &[])
}

/// Asserts the config is rejected at `line:col` with a message containing `needle`.
fn rejected_at(config: &str, line: usize, col: usize, needle: &str) {
    let out = check(config);
    assert_eq!(out.code, 1, "accepted:\n{config}\n{}", out.stdout);
    let prefix = format!("{}:{line}:{col}: ", out.path);
    let first = out.stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&prefix),
        "expected {prefix}… got {first:?}\n{config}"
    );
    assert!(first.contains(needle), "expected {needle:?} in {first:?}");
    assert_eq!(
        out.stderr.lines().count(),
        1,
        "one error line: {}",
        out.stderr
    );
}

const UPSTREAM: &str = "[upstreams.app]\nservers = [\"127.0.0.1:9\"]\n";

#[test]
fn shipped_config_is_valid_and_summarised() {
    let out = Command::new(common::binary())
        .args([
            "check",
            "-c",
            concat!(env!("CARGO_MANIFEST_DIR"), "/conf/astron-edge.toml"),
        ])
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "routes (match order)",
        "= /workflow/v1/chat/completions",
        "^~ /openapi/v1/",
        "console-hub:8080",
        "configuration is valid",
    ] {
        assert!(stdout.contains(needle), "{needle} missing from:\n{stdout}");
    }
    // exact routes are listed before prefixes, regexes last
    let exact = stdout.find("= /runtime-config.js").expect("exact");
    let prefix = stdout.find("/console-api/ ").expect("prefix");
    let regex = stdout.find("~ (?i)").expect("regex");
    assert!(exact < prefix && prefix < regex);
}

#[test]
fn config_path_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("x.toml");
    std::fs::write(
        &path,
        format!("{UPSTREAM}[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"app\"\n"),
    )
    .expect("write");
    let out = Command::new(common::binary())
        .arg("check")
        .env("ASTRON_EDGE_CONFIG", &path)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(common::binary())
        .args(["check", "-c", "/nonexistent/edge.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/edge.toml"));
}

#[test]
fn env_expansion_with_defaults() {
    let config =
        "[upstreams.app]\nservers = [\"${EDGE_TEST_HOST:-fallback-host}:${EDGE_TEST_PORT:-81}\"]\n\
                  [[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"app\"\n";
    let out = check(config);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("fallback-host:81"), "{}", out.stdout);
    let out = check_with_env(
        config,
        &[("EDGE_TEST_HOST", "hub"), ("EDGE_TEST_PORT", "8080")],
    );
    assert!(out.stdout.contains("hub:8080"), "{}", out.stdout);
    // unset without default is an error at the value
    rejected_at(
        "[upstreams.app]\nservers = [\"${EDGE_TEST_SURELY_UNSET}:1\"]\n",
        2,
        11,
        "EDGE_TEST_SURELY_UNSET",
    );
}

#[test]
fn invalid_toml() {
    rejected_at("[server]\nlisten = [\"0.0.0.0:80\"\n", 3, 1, "");
}

#[test]
fn unknown_keys() {
    rejected_at(
        "[server]\nlisen = [\"0.0.0.0:80\"]\n",
        2,
        1,
        "unknown field `lisen`",
    );
    rejected_at(
        &format!("{UPSTREAM}[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"app\"\ntimout = \"1s\"\n"),
        7,
        1,
        "unknown field `timout`",
    );
    rejected_at("[serverr]\n", 1, 2, "unknown field `serverr`");
}

#[test]
fn route_matchers_and_actions() {
    rejected_at(
        &format!("{UPSTREAM}[[routes]]\nname = \"r\"\nupstream = \"app\"\n"),
        3,
        1,
        "needs one of exact",
    );
    rejected_at(
        &format!("{UPSTREAM}[[routes]]\nname = \"r\"\nexact = \"/a\"\nprefix = \"/\"\nupstream = \"app\"\n"),
        6,
        10,
        "more than one matcher",
    );
    rejected_at(
        &format!("{UPSTREAM}[[routes]]\nname = \"r\"\nprefix = \"/\"\n"),
        3,
        1,
        "needs either upstream or return",
    );
    rejected_at(
        &format!("{UPSTREAM}[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"app\"\nreturn = 404\n"),
        7,
        10,
        "both upstream and return",
    );
}

#[test]
fn unknown_references() {
    rejected_at(
        &format!("{UPSTREAM}[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"nope\"\n"),
        6,
        12,
        "unknown upstream",
    );
    rejected_at(
        &format!("{UPSTREAM}[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"app\"\nauth = \"nope\"\n"),
        7,
        8,
        "unknown auth",
    );
    rejected_at(
        "[auth.a]\nupstream = \"nope\"\npath = \"/x\"\n",
        2,
        12,
        "unknown upstream",
    );
}

#[test]
fn duplicates() {
    let route = |name: &str, exact: &str| {
        format!("[[routes]]\nname = \"{name}\"\nexact = \"{exact}\"\nupstream = \"app\"\n")
    };
    rejected_at(
        &format!("{UPSTREAM}{}{}", route("a", "/x"), route("a", "/y")),
        8,
        8,
        "duplicate route name",
    );
    rejected_at(
        &format!("{UPSTREAM}{}{}", route("a", "/x"), route("b", "/x")),
        9,
        9,
        "same exact path",
    );
}

#[test]
fn bad_regex_duration_size() {
    rejected_at(
        &format!("{UPSTREAM}[[routes]]\nname = \"r\"\nregex = '(unclosed'\nupstream = \"app\"\n"),
        5,
        9,
        "invalid regex",
    );
    rejected_at(&format!("{UPSTREAM}[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"app\"\ntimeout = \"soon\"\n"), 7, 11, "duration");
    rejected_at("[server]\nclient_max_body_size = \"20x\"\n", 2, 24, "size");
    rejected_at("[server]\ngrace_period = \"30\"\n", 2, 16, "unit");
}

#[test]
fn tls_files_must_exist() {
    rejected_at(
        "[server.tls]\nlisten = [\"127.0.0.1:8443\"]\ncert = \"missing.crt\"\nkey = \"missing.key\"\n",
        3,
        8,
        "missing.crt",
    );
}

#[test]
fn unresolvable_upstream_host_is_not_an_error() {
    let out = check("[upstreams.app]\nservers = [\"not-started-yet.invalid:8080\"]\n[[routes]]\nname = \"r\"\nprefix = \"/\"\nupstream = \"app\"\n");
    assert_eq!(out.code, 0, "{}", out.stderr);
}
