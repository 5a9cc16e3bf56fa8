//! What the container deployment relies on, checked without a Docker engine: the
//! `astron-edge health` exit codes, the compose service (parsed as YAML and its healthcheck
//! run for real), the Dockerfile against `.ci/run`, and the Kubernetes example.

use crate::common;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Backend, Proxy};
use serde::Deserialize;
use serde_yaml::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Runs `astron-edge ARGS` with `env`; its exit code.
fn run_edge(args: &[&str], env: &[(&str, &str)]) -> i32 {
    let out = Command::new(common::binary())
        .args(args)
        .envs(env.iter().copied())
        .env_remove("ASTRON_EDGE_CONFIG")
        .output()
        .expect("run astron-edge");
    out.status.code().unwrap_or(-1)
}

// ---------------------------------------------------------------- astron-edge health

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exit_codes() {
    let proxy = Proxy::start("[[routes]]\nname = \"down\"\nexact = \"/down\"\nreturn = 503\n");
    let health = proxy.url("/health");
    assert_eq!(
        run_edge(&["health", "--url", &health], &[]),
        0,
        "running proxy"
    );
    // Without --url: the config's first listener and health path.
    let config = proxy.config_path.to_str().expect("utf-8 path");
    assert_eq!(
        run_edge(&["health", "-c", config], &[]),
        0,
        "URL from the config"
    );
    assert_eq!(
        run_edge(&["health", "--url", &proxy.url("/down")], &[]),
        1,
        "a 503 answer"
    );
    let closed = format!("http://127.0.0.1:{}/health", common::free_port());
    assert_eq!(
        run_edge(&["health", "--url", &closed], &[]),
        1,
        "closed port"
    );
}

// ---------------------------------------------------------------- docker-compose.yaml

fn compose() -> Value {
    serde_yaml::from_str(&read("docker/docker-compose.yaml")).expect("compose file is YAML")
}

fn service(compose: &Value) -> &Value {
    &compose["services"]["astron-edge"]
}

/// A YAML list of strings, or a map's keys (compose accepts both for several keys).
fn names(value: &Value) -> Vec<String> {
    match value {
        Value::Sequence(items) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Value::Mapping(map) => map
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

/// An environment entry, from the map or the `KEY=value` list form.
fn env_value(environment: &Value, key: &str) -> Option<String> {
    match environment {
        Value::Mapping(map) => map.get(key).map(|v| match v {
            Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }),
        Value::Sequence(items) => items.iter().filter_map(Value::as_str).find_map(|item| {
            item.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        }),
        _ => None,
    }
}

fn seconds(duration: &str) -> u64 {
    astron_edge::parse_duration(duration)
        .unwrap_or_else(|e| panic!("{duration}: {e}"))
        .as_secs()
}

/// `grace_period` of a config text, through the real parser.
fn grace_period(config: &str) -> u64 {
    astron_edge::parse_config(Path::new("inline.toml"), config)
        .expect("valid config")
        .server
        .grace_period
        .as_secs()
}

#[test]
fn compose_service_replaces_nginx() {
    let compose = compose();
    let edge = service(&compose);
    assert!(edge.is_mapping(), "no services.astron-edge");

    assert_eq!(
        edge["build"]["dockerfile"].as_str(),
        Some("docker/Dockerfile")
    );
    assert!(names(&edge["ports"]).contains(&"${EXPOSE_NGINX_PORT:-80}:80".to_owned()));
    assert_eq!(edge["restart"].as_str(), Some("always"));
    let networks = names(&edge["networks"]);
    assert!(networks.contains(&"astron-agent-network".to_owned()));

    let depends = names(&edge["depends_on"]);
    for dependency in ["console-frontend", "console-hub"] {
        assert!(
            depends.contains(&dependency.to_owned()),
            "depends_on {depends:?}"
        );
    }

    let nofile = &edge["ulimits"]["nofile"];
    let limits: Vec<u64> = match nofile {
        Value::Number(n) => n.as_u64().into_iter().collect(),
        _ => [&nofile["soft"], &nofile["hard"]]
            .iter()
            .filter_map(|v| v.as_u64())
            .collect(),
    };
    assert!(
        !limits.is_empty() && limits.iter().all(|&n| n == 65535),
        "nofile {nofile:?}"
    );

    let environment = &edge["environment"];
    for key in ["OTLP_ENABLE", "OTLP_ENDPOINT", "OTEL_SERVICE_NAME"] {
        assert!(env_value(environment, key).is_some(), "no {key}");
    }
    assert_eq!(
        env_value(environment, "ASTRON_EDGE_CONFIG").as_deref(),
        Some("/etc/astron-edge/astron-edge.toml")
    );

    // The config directory mounted read-only (a directory, so renames reach the proxy);
    // a named volume for the logs.
    let volumes = names(&edge["volumes"]);
    assert!(
        volumes
            .iter()
            .any(|v| v.ends_with(":/etc/astron-edge:ro") && v.contains("/conf")),
        "config mount {volumes:?}"
    );
    let log_volume = volumes
        .iter()
        .find_map(|v| v.strip_suffix(":/var/log/astron-edge"))
        .expect("a log volume at /var/log/astron-edge");
    assert!(
        names(&compose["volumes"]).contains(&log_volume.to_owned()),
        "{log_volume} is not declared"
    );

    // Docker waits longer than the proxy's drain before it kills.
    let stop = edge["stop_grace_period"]
        .as_str()
        .expect("stop_grace_period");
    let shipped = grace_period(&read("conf/astron-edge.toml"));
    assert!(
        seconds(stop) > shipped,
        "stop_grace_period {stop} <= grace_period {shipped}s"
    );

    // The stack's nginx does not start next to it.
    assert!(names(&compose["services"]["nginx"]["profiles"]).len() == 1);
}

/// The compose healthcheck's own command, run against a proxy on the shipped config with
/// the compose environment's config path: what `docker compose ps` would report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_healthcheck_command_passes_against_the_shipped_config() {
    let compose = compose();
    let healthcheck = &service(&compose)["healthcheck"];
    let test: Vec<&str> = healthcheck["test"]
        .as_sequence()
        .expect("exec-form healthcheck")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(test, ["CMD", "astron-edge-entrypoint", "health"]);
    // The stack's healthcheck variables, with its defaults.
    assert_eq!(
        healthcheck["interval"].as_str(),
        Some("${HEALTH_CHECK_INTERVAL:-30s}")
    );
    assert_eq!(
        healthcheck["timeout"].as_str(),
        Some("${HEALTH_CHECK_TIMEOUT:-10s}")
    );
    assert_eq!(
        healthcheck["retries"].as_str(),
        Some("${HEALTH_CHECK_RETRIES:-60}")
    );
    for key in ["interval", "timeout"] {
        assert!(healthcheck[key].is_string(), "healthcheck.{key}");
    }

    let backend = Backend::echo().await;
    let proxy = Proxy::shipped_on(&backend);
    let listen = proxy.addr.to_string();
    let config = repo("conf/astron-edge.toml");
    let status = entrypoint()
        .args(&test[2..])
        .env("ASTRON_EDGE_CONFIG", &config)
        .env("EDGE_LISTEN", &listen)
        .status()
        .expect("run the healthcheck");
    assert!(status.success(), "healthcheck failed: {status}");
}

/// `docker/entrypoint.sh` as the image runs it (`astron-edge-entrypoint`), with the
/// binary under test on its PATH.
fn entrypoint() -> Command {
    let bin_dir = Path::new(common::binary()).parent().expect("binary dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("sh");
    cmd.arg(repo("docker/entrypoint.sh")).env("PATH", path);
    cmd
}

/// The one-line swap of the stack's compose file (its nginx service's `image:`): the
/// stack's own nginx.conf mounted at /etc/nginx/nginx.conf is what the image serves.
#[test]
fn the_image_serves_a_mounted_nginx_conf_when_no_config_is_named() {
    let nginx_conf = repo("tests/fixtures/nginx/iflytek-520bed76.conf");
    let out = entrypoint()
        .arg("check")
        .env_remove("ASTRON_EDGE_CONFIG")
        .env("ASTRON_EDGE_NGINX_CONF", &nginx_conf)
        .output()
        .expect("entrypoint check");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(summary.contains("auth=gateway-auth-workflow"), "{summary}");
    // Without one: the shipped TOML's place in the image.
    let out = entrypoint()
        .arg("check")
        .env_remove("ASTRON_EDGE_CONFIG")
        .env("ASTRON_EDGE_NGINX_CONF", "/nonexistent/nginx.conf")
        .output()
        .expect("entrypoint check");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/etc/astron-edge/astron-edge.toml"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- Dockerfile

/// The Dockerfile's instructions: comments dropped, continuation lines joined.
fn dockerfile() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("docker/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

fn instructions<'a>(all: &'a [String], keyword: &str) -> Vec<&'a str> {
    all.iter()
        .filter_map(|i| {
            i.strip_prefix(keyword)
                .filter(|rest| rest.starts_with(' '))
                .map(str::trim)
        })
        .collect()
}

#[test]
fn dockerfile_runtime_contract() {
    let all = dockerfile();
    let healthcheck = instructions(&all, "HEALTHCHECK");
    assert!(
        healthcheck
            .iter()
            .any(|h| h.contains(r#"CMD ["astron-edge-entrypoint", "health"]"#)),
        "{healthcheck:?}"
    );
    let expose = instructions(&all, "EXPOSE");
    assert!(expose.contains(&"80 443"), "EXPOSE {expose:?}");
    let user = *instructions(&all, "USER").last().expect("a USER");
    assert!(!["root", "0", "0:0"].contains(&user), "runs as {user}");
    assert!(
        all.iter()
            .any(|i| i.contains("useradd") && i.contains(user)),
        "user {user} is not created"
    );
    let config = "/etc/astron-edge/astron-edge.toml";
    assert!(read("docker/entrypoint.sh").contains(&format!("ASTRON_EDGE_CONFIG={config}")));
    let copies = instructions(&all, "COPY");
    assert!(copies.contains(&format!("conf/astron-edge.toml {config}").as_str()));
    assert!(copies.contains(&"docker/entrypoint.sh /usr/local/bin/astron-edge-entrypoint"));
    let entrypoint = instructions(&all, "ENTRYPOINT");
    assert_eq!(entrypoint, [r#"["astron-edge-entrypoint"]"#]);
}

/// "A green CI means the image builds": the image's build steps are CI's.
#[test]
fn dockerfile_builds_as_ci_does() {
    let all = dockerfile();
    let ci = read(".ci/run");
    let run = instructions(&all, "RUN");
    let env = instructions(&all, "ENV");

    // cmake for zlib-ng, installed by both.
    assert!(ci.contains("cmake"), ".ci/run no longer installs cmake");
    assert!(
        run.iter()
            .any(|r| r.contains("apt-get install") && r.contains("cmake")),
        "the Dockerfile does not install cmake"
    );
    // The same cmake policy override.
    let policy = ci
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("export CMAKE_POLICY_VERSION_MINIMUM=")
        })
        .expect(".ci/run sets CMAKE_POLICY_VERSION_MINIMUM");
    assert!(
        env.iter()
            .any(|e| e.contains(&format!("CMAKE_POLICY_VERSION_MINIMUM={policy}"))),
        "the Dockerfile's CMAKE_POLICY_VERSION_MINIMUM differs from .ci/run's {policy}"
    );
    // Both build from the lock file.
    assert!(ci.contains("cargo test --locked"));
    let builds: Vec<&&str> = run.iter().filter(|r| r.contains("cargo build")).collect();
    assert!(!builds.is_empty(), "no cargo build in the Dockerfile");
    assert!(builds.iter().all(|b| b.contains("--locked")), "{builds:?}");

    // The dependency layer copies only the manifests; the stub build then needs every
    // explicit target of Cargo.toml to live in what the image copies.
    let copies = instructions(&all, "COPY");
    assert!(copies.contains(&"Cargo.toml Cargo.lock ./"), "{copies:?}");
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml");
    for kind in ["bin", "bench", "test", "example"] {
        for target in manifest
            .get(kind)
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(path) = target.get("path").and_then(toml::Value::as_str) {
                assert!(
                    path.starts_with("src/"),
                    "[[{kind}]] {path}: the Dockerfile copies only src/ and conf/"
                );
            }
        }
    }
    assert!(
        manifest["package"].get("build").is_none(),
        "a build script is not copied by the Dockerfile"
    );
    let ignored = read("docker/Dockerfile.dockerignore");
    for needed in ["src", "conf", "Cargo.toml", "Cargo.lock"] {
        assert!(
            !ignored
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == needed),
            "{needed} is excluded from the build context"
        );
    }
}

/// The image's profile-guided build has what `bench/pgo.sh` needs: the script, its
/// harness, and the training tools.
#[test]
fn dockerfile_pgo_build_has_its_script_and_tools() {
    use std::os::unix::fs::PermissionsExt;

    let all = dockerfile();
    let run = instructions(&all, "RUN");
    assert!(
        run.iter().any(|r| r.contains("bench/pgo.sh")),
        "the image is no longer built with bench/pgo.sh: update this test and the README"
    );
    assert!(
        instructions(&all, "COPY").contains(&"bench ./bench"),
        "bench/ is not copied"
    );
    let mode = std::fs::metadata(repo("bench/pgo.sh"))
        .expect("bench/pgo.sh")
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "bench/pgo.sh is not executable");
    let script = read("bench/pgo.sh");
    assert!(script.contains("source \"$BENCH_DIR/lib.sh\""));
    let install = run
        .iter()
        .find(|r| r.contains("apt-get install"))
        .expect("an apt-get install");
    for tool in ["nginx", "wrk", "curl", "python3"] {
        assert!(
            install.split_whitespace().any(|w| w == tool),
            "{tool} is not installed for the PGO training"
        );
    }
    let ignored = read("docker/Dockerfile.dockerignore");
    assert!(
        !ignored
            .lines()
            .any(|l| ["bench", "bench/"].contains(&l.trim())),
        "bench/ is excluded from the build context"
    );
}

// ---------------------------------------------------------------- Kubernetes example

fn k8s_documents() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read("docker/k8s/astron-edge.yaml"))
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind}"))
}

#[test]
fn kubernetes_example_probes_health_and_reloads_its_configmap() {
    let docs = k8s_documents();
    let deployment = of_kind(&docs, "Deployment");
    let spec = &deployment["spec"];
    assert!(
        spec["replicas"].as_u64().unwrap_or(0) >= 2,
        "several replicas"
    );
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(
            container[probe]["httpGet"]["path"].as_str(),
            Some("/health"),
            "{probe}"
        );
    }
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    // The ConfigMap is mounted as a directory (a subPath mount never sees updates).
    let mount = container["volumeMounts"]
        .as_sequence()
        .expect("volume mounts")
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/etc/astron-edge"))
        .expect("config mount");
    assert!(mount["subPath"].is_null(), "subPath mount: no hot reload");

    // Its config is valid, and the pod waits for the drain before it is killed.
    let configmap = of_kind(&docs, "ConfigMap");
    let config = configmap["data"]["astron-edge.toml"]
        .as_str()
        .expect("astron-edge.toml in the ConfigMap");
    let grace = grace_period(config);
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > grace,
        "{termination}s <= grace_period {grace}s"
    );

    let service = of_kind(&docs, "Service");
    assert_eq!(
        service["spec"]["selector"], spec["selector"]["matchLabels"],
        "the Service selects the Deployment's pods"
    );
}
