//! Canonical request paths, the way nginx computes them before matching
//! `location`s, and the reverse step of putting such a path back on the wire.
//!
//! Routing on the raw path would let a client pick a different route than the
//! one its request really addresses (`/public/%2e%2e/admin`, `//admin`,
//! `/%61dmin`), so every decision is taken on the normalised form instead.

use std::borrow::Cow;

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

/// Why a request path cannot be normalised. Every variant means the request
/// is malformed and should be answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NormalizeError {
    /// The path does not start with `/` (empty, `*`, or an absolute URI that
    /// the caller did not split).
    #[error("path does not start with /")]
    NotAbsolute,
    /// A `%` that is not followed by two hex digits.
    #[error("malformed percent escape")]
    BadEscape,
    /// The decoded bytes are not UTF-8, so they cannot be matched as text.
    #[error("decoded path is not UTF-8")]
    NotUtf8,
    /// A NUL byte, raw or as `%00`: it would truncate the path in any C
    /// component behind the proxy.
    #[error("path contains a NUL byte")]
    Nul,
    /// More `..` segments than there are segments to remove.
    #[error("path climbs above the root")]
    AboveRoot,
}

/// Normalises a raw request path (without its query string) as nginx does
/// before `location` matching:
///
/// - every `%XX` escape is decoded, `%2F` included: the decoded `/` separates
///   segments like a literal one, and `%2e%2e` is a `..` segment;
/// - `//` runs are merged into a single `/`;
/// - `.` segments are removed and `..` segments remove the segment before them;
/// - a trailing `/` is kept, and a trailing `.` or `..` segment leaves one
///   (`/a/b/..` is `/a/`), so directory-style prefixes still match.
///
/// Decoding happens once: `%2541` becomes `%41`, not `A`.
///
/// Paths that need none of this (no `%`, no `//`, no dot segment — nearly all
/// real requests) are returned borrowed, without allocating.
///
/// # Errors
///
/// See [`NormalizeError`]: the path must start with `/`, escapes must be
/// well-formed, the decoded path must be UTF-8 without NUL bytes, and it must
/// not climb above `/`.
pub(crate) fn normalize_path(raw: &str) -> Result<Cow<'_, str>, NormalizeError> {
    if !raw.starts_with('/') {
        return Err(NormalizeError::NotAbsolute);
    }
    if is_normal(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded =
        String::from_utf8(percent_decode(raw.as_bytes())?).map_err(|_| NormalizeError::NotUtf8)?;
    resolve_segments(&decoded).map(Cow::Owned)
}

/// Whether `path` (which starts with `/`) is already normalised: no escape,
/// no NUL, no empty segment except a trailing one, no `.` or `..` segment.
///
/// One pass over the bytes; this runs on every request.
fn is_normal(path: &str) -> bool {
    // The first item of the split is the empty string before the leading `/`.
    let mut segments = path.split('/').skip(1).peekable();
    while let Some(segment) = segments.next() {
        let is_last = segments.peek().is_none();
        if (segment.is_empty() && !is_last)
            || segment == "."
            || segment == ".."
            || segment.bytes().any(|b| b == b'%' || b == 0)
        {
            return false;
        }
    }
    true
}

/// Decodes every `%XX` escape of `raw` strictly (unlike
/// `percent_encoding::percent_decode`, which passes malformed escapes through,
/// hiding requests that nginx would reject) and rejects NUL bytes.
fn percent_decode(raw: &[u8]) -> Result<Vec<u8>, NormalizeError> {
    let mut decoded = Vec::with_capacity(raw.len());
    let mut bytes = raw.iter().copied();
    while let Some(byte) = bytes.next() {
        let byte = if byte == b'%' {
            let high = bytes.next().and_then(hex_value);
            let low = bytes.next().and_then(hex_value);
            match (high, low) {
                (Some(high), Some(low)) => (high << 4) | low,
                _ => return Err(NormalizeError::BadEscape),
            }
        } else {
            byte
        };
        if byte == 0 {
            return Err(NormalizeError::Nul);
        }
        decoded.push(byte);
    }
    Ok(decoded)
}

/// The value of one hex digit, either case.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Merges empty segments and resolves `.` and `..` in a decoded path that
/// starts with `/`.
fn resolve_segments(decoded: &str) -> Result<String, NormalizeError> {
    let mut resolved = String::with_capacity(decoded.len());
    resolved.push('/');
    // Where each kept segment starts in `resolved`, so that `..` can cut the
    // last one off. Every kept segment is written followed by a `/`.
    let mut segment_starts = Vec::new();
    let mut ends_with_slash = true;
    // The first item of the split is the empty string before the leading `/`.
    for segment in decoded.split('/').skip(1) {
        // An empty, `.` or `..` last segment leaves the path ending in `/`.
        ends_with_slash = true;
        match segment {
            "" | "." => {}
            ".." => {
                let start = segment_starts.pop().ok_or(NormalizeError::AboveRoot)?;
                resolved.truncate(start);
            }
            _ => {
                segment_starts.push(resolved.len());
                resolved.push_str(segment);
                resolved.push('/');
                ends_with_slash = false;
            }
        }
    }
    if !ends_with_slash {
        // The last segment was written with a `/` after it that the input
        // did not have.
        resolved.pop();
    }
    Ok(resolved)
}

/// The bytes that may not appear raw in the path of an HTTP request line:
/// controls, DEL, space and the characters RFC 3986 excludes from paths or
/// reserves for other URI parts (`%` itself, so that a decoded `%` survives,
/// `?` and `#`, which would start a query or fragment). Everything else ASCII
/// — `/` and the other pchars — stays raw; non-ASCII bytes are always encoded.
const PATH_ENCODE_SET: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'|')
    .add(b'\\')
    .add(b'^');

/// Re-encodes a path produced by [`normalize_path`] so that it can be sent
/// upstream: the bytes that may not appear raw in a request path are
/// percent-encoded, everything else is left alone. Decoding the result again
/// gives back `normalized` exactly.
///
/// Borrowed when nothing needs encoding, which is the common case.
#[must_use]
pub(crate) fn encode_path(normalized: &str) -> Cow<'_, str> {
    utf8_percent_encode(normalized, PATH_ENCODE_SET).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn norm(raw: &str) -> Result<String, NormalizeError> {
        normalize_path(raw).map(Cow::into_owned)
    }

    #[test]
    fn already_normal_paths_are_borrowed() {
        for path in [
            "/",
            "/console-api/",
            "/a/b",
            "/a/b/",
            "/.well-known/x",
            "/a/...",
            "/a/.b/c..",
            "/é/ü",
        ] {
            let normalized = normalize_path(path);
            assert!(
                matches!(normalized, Ok(Cow::Borrowed(p)) if p == path),
                "{path}: {normalized:?}"
            );
        }
    }

    #[test]
    fn paths_needing_work_are_owned() {
        for path in ["//a", "/a/./b", "/a/../b", "/%61", "/a/.", "/a/.."] {
            assert!(matches!(normalize_path(path), Ok(Cow::Owned(_))), "{path}");
        }
    }

    #[test]
    fn merges_slashes() {
        assert_eq!(norm("//"), Ok("/".into()));
        assert_eq!(norm("//a///b"), Ok("/a/b".into()));
        assert_eq!(norm("/a//b//"), Ok("/a/b/".into()));
    }

    #[test]
    fn removes_dot_segments() {
        assert_eq!(norm("/./a/./b"), Ok("/a/b".into()));
        assert_eq!(norm("/a/."), Ok("/a/".into()));
        assert_eq!(norm("/."), Ok("/".into()));
        assert_eq!(norm("/a/./"), Ok("/a/".into()));
    }

    #[test]
    fn resolves_dot_dot_segments() {
        assert_eq!(norm("/a/../b"), Ok("/b".into()));
        assert_eq!(norm("/a/b/../../c"), Ok("/c".into()));
        assert_eq!(norm("/a/b/.."), Ok("/a/".into()));
        assert_eq!(norm("/a/.."), Ok("/".into()));
        assert_eq!(norm("/a//../b"), Ok("/b".into()));
        assert_eq!(norm("/a/b/../"), Ok("/a/".into()));
    }

    #[test]
    fn decodes_encoded_dots() {
        assert_eq!(norm("/a/%2e%2e/b"), Ok("/b".into()));
        assert_eq!(norm("/a/%2E%2e/b"), Ok("/b".into()));
        assert_eq!(norm("/a/.%2E/b"), Ok("/b".into()));
        assert_eq!(norm("/a/%2e/b"), Ok("/a/b".into()));
        assert_eq!(
            norm("/public/%2e%2e/console-api/x"),
            Ok("/console-api/x".into())
        );
    }

    #[test]
    fn encoded_slash_is_a_separator() {
        assert_eq!(
            norm("/console-api%2Finternal/agent-runtime/x"),
            Ok("/console-api/internal/agent-runtime/x".into())
        );
        assert_eq!(norm("/a%2f%2Fb"), Ok("/a/b".into()));
        assert_eq!(norm("/a/b%2F..%2Fc"), Ok("/a/c".into()));
        assert_eq!(norm("/a%2F"), Ok("/a/".into()));
    }

    #[test]
    fn decodes_encoded_letters_and_unicode() {
        assert_eq!(norm("/%63onsole-api/"), Ok("/console-api/".into()));
        assert_eq!(norm("/%43%6f"), Ok("/Co".into()));
        assert_eq!(norm("/caf%C3%A9"), Ok("/café".into()));
        assert_eq!(norm("/a%20b"), Ok("/a b".into()));
    }

    #[test]
    fn decodes_only_once() {
        assert_eq!(norm("/%2541"), Ok("/%41".into()));
        assert_eq!(norm("/%252e%252e/a"), Ok("/%2e%2e/a".into()));
    }

    #[test]
    fn keeps_trailing_slash() {
        assert_eq!(norm("/a/b/"), Ok("/a/b/".into()));
        assert_eq!(norm("/a/b//"), Ok("/a/b/".into()));
        assert_eq!(norm("/a/b"), Ok("/a/b".into()));
    }

    #[test]
    fn rejects_climbing_above_root() {
        for path in [
            "/..",
            "/../",
            "/a/../..",
            "/%2e%2e/x",
            "/a/%2E%2E/%2e%2e",
            "/./..",
        ] {
            assert_eq!(norm(path), Err(NormalizeError::AboveRoot), "{path}");
        }
    }

    #[test]
    fn rejects_bad_escapes() {
        for path in ["/%zz", "/%4", "/a%", "/%g0", "/%0g/x", "/%%41"] {
            assert_eq!(norm(path), Err(NormalizeError::BadEscape), "{path}");
        }
    }

    #[test]
    fn rejects_nul() {
        assert_eq!(norm("/a%00b"), Err(NormalizeError::Nul));
        assert_eq!(norm("/a\0b"), Err(NormalizeError::Nul));
    }

    #[test]
    fn rejects_non_utf8() {
        assert_eq!(norm("/%ff"), Err(NormalizeError::NotUtf8));
        assert_eq!(norm("/%C3"), Err(NormalizeError::NotUtf8));
        assert_eq!(norm("/%C3%28"), Err(NormalizeError::NotUtf8));
    }

    #[test]
    fn rejects_relative_paths() {
        for path in ["", "a/b", "*", "%2Fa", "http://h/a"] {
            assert_eq!(norm(path), Err(NormalizeError::NotAbsolute), "{path}");
        }
    }

    #[test]
    fn encode_leaves_plain_paths_borrowed() {
        for path in ["/", "/console-api/v1/x", "/a-b_c.d~e/!$&'()*+,;=:@/[]"] {
            assert!(matches!(encode_path(path), Cow::Borrowed(p) if p == path));
        }
    }

    #[test]
    fn encode_escapes_what_may_not_be_raw() {
        assert_eq!(encode_path("/a b"), "/a%20b");
        assert_eq!(encode_path("/100%"), "/100%25");
        assert_eq!(encode_path("/a?b#c"), "/a%3Fb%23c");
        assert_eq!(encode_path("/café"), "/caf%C3%A9");
        assert_eq!(
            encode_path("/{\"x\"}|\\^`<>"),
            "/%7B%22x%22%7D%7C%5C%5E%60%3C%3E"
        );
        assert_eq!(encode_path("/\t\x7f"), "/%09%7F");
    }

    #[test]
    fn encode_round_trips() {
        for path in [
            "/a b/c",
            "/100%/x",
            "/%41",
            "/a?b",
            "/a#b",
            "/café/日本語/",
            "/emoji/🦀",
            "/mixed %?#é/",
        ] {
            assert_eq!(norm(&encode_path(path)), Ok(path.to_owned()), "{path}");
        }
    }

    /// Path pieces that exercise every rule: separators, dot segments, their
    /// encoded forms, letters and multi-byte text. There is deliberately no
    /// `%25`, whose decoded `%` would be decoded again by a second pass.
    fn path_piece() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "/", "/", "/", ".", ".", "..", "%2e", "%2E", "%2f", "%2F", "a", "b", "Z", "%61", "é",
            "%C3%A9", " ", "%", "%0", "%00", "%ff",
        ])
    }

    fn raw_path() -> impl Strategy<Value = String> {
        prop::collection::vec(path_piece(), 0..16)
            .prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    fn assert_canonical(path: &str) {
        assert!(path.starts_with('/'), "{path:?}");
        assert!(!path.contains("//"), "{path:?}");
        assert!(!path.contains("/./") && !path.contains("/../"), "{path:?}");
        assert!(!path.ends_with("/.") && !path.ends_with("/.."), "{path:?}");
    }

    proptest! {
        #[test]
        fn normalised_paths_are_canonical_and_stable(raw in raw_path()) {
            if let Ok(normalized) = normalize_path(&raw) {
                assert_canonical(&normalized);
                let again = normalize_path(&normalized);
                prop_assert!(matches!(again, Ok(Cow::Borrowed(_))), "{:?}", again);
                prop_assert_eq!(again, Ok(normalized.clone()));
                prop_assert_eq!(norm(&encode_path(&normalized)), Ok(normalized.into_owned()));
            }
        }

        #[test]
        fn borrowed_means_unchanged(raw in raw_path()) {
            if let Ok(Cow::Borrowed(normalized)) = normalize_path(&raw) {
                prop_assert_eq!(normalized, raw.as_str());
            }
        }

        #[test]
        fn any_input_is_handled(raw in "/\\PC*") {
            if let Ok(normalized) = normalize_path(&raw) {
                assert_canonical(&normalized);
                prop_assert_eq!(norm(&encode_path(&normalized)), Ok(normalized.into_owned()));
            }
        }
    }
}
