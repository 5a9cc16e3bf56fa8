//! Reading HTTP field values the one way every feature needs them: the elements of a
//! comma-separated list (`Connection`, `Vary`, `Cache-Control`, `If-None-Match`, …) and a
//! declared `Content-Length`.

use http::header::{self, AsHeaderName, HeaderMap, HeaderValue};

/// The trimmed, non-empty elements of every `name` field in `headers`; values that are not
/// text contribute nothing.
pub(crate) fn list_items<'a, K: AsHeaderName>(
    headers: &'a HeaderMap,
    name: K,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(value_items)
}

/// The trimmed, non-empty elements of one comma-separated value.
pub(crate) fn value_items(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// A `Content-Length` that is not one decimal number.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct InvalidContentLength;

/// The declared body length: `Ok(None)` when there is none, an error when the (first)
/// field is not a number.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, InvalidContentLength> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(parse_length)
        .transpose()
}

fn parse_length(value: &HeaderValue) -> Result<u64, InvalidContentLength> {
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .ok_or(InvalidContentLength)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(fields: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in fields {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn list_items_walk_every_field_and_skip_empty_elements() {
        let map = headers(&[("vary", " Accept-Encoding ,, Origin"), ("vary", "*")]);
        let items: Vec<&str> = list_items(&map, header::VARY).collect();
        assert_eq!(items, ["Accept-Encoding", "Origin", "*"]);
        let mut opaque = HeaderMap::new();
        opaque.insert(header::VARY, HeaderValue::from_bytes(b"a\xff, b").unwrap());
        assert_eq!(list_items(&opaque, header::VARY).count(), 0);
    }

    #[test]
    fn content_length_is_a_number_absent_or_invalid() {
        assert_eq!(content_length(&headers(&[])), Ok(None));
        assert_eq!(
            content_length(&headers(&[("content-length", " 42 ")])),
            Ok(Some(42))
        );
        for bad in ["-1", "4 2", "0x10", "", "99999999999999999999"] {
            let map = headers(&[("content-length", bad)]);
            assert_eq!(content_length(&map), Err(InvalidContentLength), "{bad:?}");
        }
    }
}
