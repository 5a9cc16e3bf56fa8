//! Property tests of the normaliser and the matcher together, on the shipped config:
//! what an attacker controls is the raw path, so these generate hostile ones.

use std::path::Path;

use proptest::prelude::*;

use super::{Config, RouteAction};
use crate::routing::{normalize_path, Matcher};

/// Parsed once: building its router (regexes) per case would dominate the run.
fn shipped() -> &'static Config {
    static SHIPPED: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    SHIPPED.get_or_init(|| {
        let text = include_str!("../../conf/astron-edge.toml");
        super::parse(Path::new("conf/astron-edge.toml"), text).expect("shipped config")
    })
}

/// The prefixes the shipped config keeps internal: its `priority_prefix` routes that answer
/// 404 themselves.
fn internal_prefixes(config: &Config) -> Vec<String> {
    config
        .routes
        .iter()
        .filter(|r| matches!(r.action, RouteAction::Return { .. }))
        .filter_map(|r| match &r.matcher {
            Matcher::PriorityPrefix(p) => Some(p.clone()),
            _ => None,
        })
        .collect()
}

/// Pieces a hostile path is made of: separators, dot segments in every spelling, escapes
/// of the separators themselves, and the words of the internal prefixes.
fn hostile_path() -> impl Strategy<Value = String> {
    let pieces = prop::sample::select(vec![
        "/",
        "//",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2e%2e",
        ".%2e",
        "%2f",
        "%2F",
        "%25",
        "%5c",
        "\\",
        ";",
        "%00",
        "%",
        "%zz",
        "console-api",
        "internal",
        "workflow",
        "v1",
        "gateway",
        "auth",
        "agent-runtime",
        "a",
        "é",
        "%C3%A9",
        "%ff",
    ]);
    prop::collection::vec(pieces, 0..24).prop_map(|p| format!("/{}", p.concat()))
}

/// One way of writing `path` on the wire that decodes to it: any byte percent-encoded,
/// `/` doubled, `./` and `x/../` inserted after a separator.
fn encoded(path: String) -> impl Strategy<Value = String> {
    let n = path.len();
    prop::collection::vec(0u8..6, n).prop_map(move |choices| {
        let mut out = String::new();
        for (b, choice) in path.bytes().zip(choices) {
            match (b, choice) {
                (_, 0) => out.push_str(&format!("%{b:02X}")),
                (_, 1) => out.push_str(&format!("%{b:02x}")),
                (b'/', 2) => out.push_str("//"),
                (b'/', 3) => out.push_str("/./"),
                (b'/', 4) => out.push_str("/x/%2e%2e/"),
                _ => out.push(b as char),
            }
        }
        out
    })
}

/// An internal prefix, a path under it as written plainly, and one encoding of that path.
fn internal_path() -> impl Strategy<Value = (String, String, String)> {
    let prefixes = internal_prefixes(shipped());
    (prop::sample::select(prefixes), "[a-z0-9/._-]{0,12}").prop_flat_map(|(prefix, rest)| {
        let path = format!("{prefix}{rest}");
        (Just(prefix), Just(path.clone()), encoded(path))
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// A normalised path never climbs above `/`, has no dot segment left, and matching it
    /// again after re-normalising (when nothing was decoded to a `%`) finds the same route.
    #[test]
    fn normalised_paths_stay_under_the_root_and_match_stably(raw in hostile_path()) {
        let config = shipped();
        if let Ok(normalized) = normalize_path(&raw) {
            prop_assert!(normalized.starts_with('/'));
            for segment in normalized.split('/') {
                prop_assert!(segment != "." && segment != "..", "{normalized}");
            }
            // Decoding happens once, as in nginx: `%2541` is `%41` (see `normalize_path`).
            if !normalized.contains('%') {
                let again = normalize_path(&normalized);
                prop_assert_eq!(again.as_deref(), Ok(&*normalized));
                prop_assert_eq!(config.router.find(&normalized), config.router.find(again.as_deref().unwrap_or("")));
            }
        }
    }

    /// However an internal path is encoded, it reaches only its own 404 route. (A path
    /// whose own dot segments climb out of the prefix, `/workflow/v1/..`, is not internal.)
    #[test]
    fn internal_prefixes_are_never_reachable_through_any_encoding((prefix, plain, raw) in internal_path()) {
        let config = shipped();
        let internal = normalize_path(&plain).is_ok_and(|p| p.starts_with(prefix.as_str()));
        // A path refused outright (400) reaches nothing either.
        if let (true, Ok(normalized)) = (internal, normalize_path(&raw)) {
            let found = config.router.find(&normalized);
            let route = found.map(|m| &config.routes[m.index]);
            let kept_internal = route.is_some_and(|r| {
                matches!(r.action, RouteAction::Return { .. })
                    && matches!(&r.matcher, Matcher::PriorityPrefix(p) if normalized.starts_with(p.as_str()))
            });
            prop_assert!(kept_internal, "{raw} -> {normalized} -> {:?} (prefix {prefix})", route.map(|r| &r.name));
        }
    }
}
