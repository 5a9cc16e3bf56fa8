//! Property test of the loader on hostile files: no input panics, and every refusal names
//! a position (`FILE:LINE:COL`), a byte that is not UTF-8 included.

use std::path::Path;

use proptest::prelude::*;

/// A line of a config: a table header, a known key with a value of any kind, or junk.
fn line() -> impl Strategy<Value = String> {
    let tables = prop::sample::select(vec![
        "[server]",
        "[server.tls]",
        "[health]",
        "[access_log]",
        "[metrics]",
        "[telemetry]",
        "[gzip]",
        "[cache]",
        "[response_headers]",
        "[upstreams.a]",
        "[auth.g]",
        "[[routes]]",
        "[[server]]",
        "[routes]",
    ]);
    let keys = prop::sample::select(vec![
        "listen",
        "threads",
        "client_max_body_size",
        "keepalive_timeout",
        "grace_period",
        "client_header_timeout",
        "client_header_max_size",
        "underscores_in_headers",
        "paths",
        "path",
        "format",
        "enabled",
        "endpoint",
        "protocol",
        "sampling_ratio",
        "min_length",
        "level",
        "types",
        "max_size",
        "servers",
        "timeout",
        "connect_timeout",
        "upstream",
        "name",
        "exact",
        "prefix",
        "priority_prefix",
        "regex",
        "return",
        "body",
        "auth",
        "sse",
        "websocket",
        "cache",
        "upstream_path",
        "set_request_headers",
        "cert",
        "key",
        "\"X-A\"",
        "colour",
    ]);
    let values = prop::sample::select(vec![
        "\"/\"",
        "\"/a/\"",
        "\"a\"",
        "\"\"",
        "\"30s\"",
        "\"0s\"",
        "\"99999999999d\"",
        "\"20m\"",
        "\"99999999999g\"",
        "\"1k\"",
        "0",
        "1",
        "-1",
        "1024",
        "1025",
        "9223372036854775807",
        "1.5",
        "true",
        "[]",
        "[\"127.0.0.1:1\"]",
        "[\"a:1\", \"b\"]",
        "{ \"X-A\" = \"\" }",
        "\"(\"",
        "\"${NOPE}\"",
        "\"${NOPE:-x}\"",
        "404",
        "99",
        "\"a\\u0000\"",
        "\"é\"",
    ]);
    prop_oneof![
        tables.prop_map(str::to_owned),
        (keys, values).prop_map(|(k, v)| format!("{k} = {v}")),
        "\\PC{0,12}",
    ]
}

fn config_text() -> impl Strategy<Value = String> {
    prop::collection::vec(line(), 0..30).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn no_text_panics_and_every_refusal_has_a_position(text in config_text()) {
        if let Err(e) = super::parse(Path::new("fuzz.toml"), &text) {
            prop_assert!(e.position().is_some(), "{e}");
        }
    }

    #[test]
    fn no_bytes_panic_and_every_refusal_has_a_position(
        text in config_text(),
        junk in prop::collection::vec(any::<u8>(), 0..8),
        at in any::<prop::sample::Index>(),
    ) {
        let mut bytes = text.into_bytes();
        let at = at.index(bytes.len() + 1);
        bytes.splice(at..at, junk);
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fuzz.toml");
        std::fs::write(&path, &bytes).expect("write");
        if let Err(e) = super::load(&path) {
            prop_assert!(e.position().is_some(), "{e}");
        }
    }
}
