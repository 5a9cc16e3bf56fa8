//! nginx's trailing-slash redirect (SPEC §2): a prefix route whose path ends in `/` and
//! that proxies answers the same path without the slash with `301` to the slashed path
//! (an `internal` one with 404, as nginx checks `internal` first) —
//! unless a route of its own takes that path (an `exact` one, or a prefix equal to it,
//! which nginx's location tree finds first).

use std::collections::HashMap;

use super::Matcher;

/// The slash-less paths that redirect, each to the route that causes it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SlashRedirects {
    by_path: HashMap<String, usize>,
}

impl SlashRedirects {
    /// `routes`: each route's matcher and whether it proxies to an upstream, in file order.
    pub fn new<'a>(routes: impl Iterator<Item = (&'a Matcher, bool)> + Clone) -> Self {
        let taken = |path: &str| {
            routes.clone().any(|(m, _)| {
                matches!(m, Matcher::Exact(p) | Matcher::Prefix(p) | Matcher::PriorityPrefix(p) if p == path)
            })
        };
        let mut by_path = HashMap::new();
        for (index, (matcher, proxies)) in routes.clone().enumerate() {
            let (Matcher::Prefix(p) | Matcher::PriorityPrefix(p)) = matcher else {
                continue;
            };
            let Some(bare) = p.strip_suffix('/') else {
                continue;
            };
            if proxies && !bare.is_empty() && !taken(bare) {
                by_path.entry(bare.to_owned()).or_insert(index);
            }
        }
        SlashRedirects { by_path }
    }

    /// The route whose slashed path `normalized` lacks only its final `/`.
    pub fn find(&self, normalized: &str) -> Option<usize> {
        if self.by_path.is_empty() || normalized.ends_with('/') {
            return None;
        }
        self.by_path.get(normalized).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_proxying_slashed_prefixes_redirect() {
        let routes = [
            (Matcher::Prefix("/console-api/".into()), true),
            (Matcher::PriorityPrefix("/openapi/v1/".into()), true),
            (Matcher::PriorityPrefix("/workflow/v1/".into()), false),
            (Matcher::Prefix("/taken/".into()), true),
            (Matcher::Exact("/taken".into()), true),
            (Matcher::Prefix("/".into()), true),
            (Matcher::Prefix("/noslash".into()), true),
        ];
        let r = SlashRedirects::new(routes.iter().map(|(m, p)| (m, *p)));
        assert_eq!(r.find("/console-api"), Some(0));
        assert_eq!(r.find("/openapi/v1"), Some(1));
        assert_eq!(r.find("/workflow/v1"), None);
        assert_eq!(r.find("/taken"), None);
        assert_eq!(r.find("/console-api/"), None);
        assert_eq!(r.find(""), None);
        assert_eq!(r.find("/noslash"), None);
    }
}
