//! nginx `location` selection over normalised paths.
//!
//! Each kind of matcher lives in the structure that answers its question
//! without scanning every route, because the router runs on every request and
//! configs may hold hundreds of routes:
//!
//! - exact paths in a hash map (one lookup);
//! - both kinds of prefix in one byte trie, so the longest matching prefix is
//!   found in a single walk along the path;
//! - regexes in one [`RegexSet`], which tries all of them in one pass and
//!   reports the matching ones by index, lowest (first in file order) first.

use std::cmp::Reverse;
use std::collections::HashMap;

use regex::RegexSet;

/// One route's matcher as written in the config (`exact`, `priority_prefix`, `prefix`, `regex`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// nginx `location = /p`: the path equals the string.
    Exact(String),
    /// nginx `location ^~ /p/`: the path starts with the string; when it is
    /// the longest matching prefix, regex routes are not tried.
    PriorityPrefix(String),
    /// nginx `location /p/`: the path starts with the string; a matching
    /// regex route wins over it.
    Prefix(String),
    /// nginx `location ~` / `~*`: Rust `regex` syntax, unanchored, `(?i)` for
    /// case-insensitive.
    Regex(String),
}

/// The route chosen for a path: its index in the config's route list, and how many bytes of the
/// normalised path the matcher covered (exact: the whole path; prefixes: the prefix length; regex: 0).
///
/// `matched_len` always falls on a `char` boundary of the path, so
/// `&path[matched_len..]` is the part left over for `upstream_path` rewriting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch {
    /// Position of the route in the matcher list given to [`Router::new`].
    pub index: usize,
    /// Bytes of the normalised path covered by the matcher.
    pub matched_len: usize,
}

/// Why a [`Router`] cannot be built from a list of matchers.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// One route's regex does not compile (syntax error, or too large on its own).
    #[error("route {index}: invalid regex: {source}")]
    Regex {
        /// Position of the offending route in the matcher list.
        index: usize,
        /// The compiler's explanation.
        #[source]
        source: regex::Error,
    },
    /// Every regex compiles on its own, but all of them together exceed the
    /// regex engine's size limit.
    #[error("regex routes are too large together: {source}")]
    RegexSet {
        /// The compiler's explanation.
        #[source]
        source: regex::Error,
    },
}

/// Picks the route for a normalised path with nginx's `location` precedence.
///
/// Immutable once built, `Send + Sync`: build one per config and share it in
/// an `Arc` across requests.
#[derive(Debug)]
pub struct Router {
    /// Exact path → route index.
    exact: HashMap<Box<str>, usize>,
    /// Both kinds of prefix.
    prefixes: PrefixTrie,
    /// The regex routes' patterns, in file order.
    regexes: RegexSet,
    /// Route index of each pattern in `regexes`.
    regex_routes: Box<[usize]>,
    /// What [`Router::match_order`] reports, computed once at build time.
    match_order: Box<[usize]>,
}

impl Router {
    /// `matchers[i]` is route i's matcher, in file order.
    ///
    /// When several routes have the same exact path or the same prefix string,
    /// the first one in file order is the one that can be selected.
    ///
    /// # Errors
    ///
    /// [`RouterError::Regex`] names the first route whose regex does not
    /// compile; [`RouterError::RegexSet`] means the regexes only fail together.
    pub fn new(matchers: &[Matcher]) -> Result<Router, RouterError> {
        let mut exact = HashMap::new();
        let mut exact_routes = Vec::new();
        let mut prefixes = PrefixTrie::default();
        let mut prefix_order = Vec::new();
        let mut patterns = Vec::new();
        let mut regex_routes = Vec::new();

        for (index, matcher) in matchers.iter().enumerate() {
            match matcher {
                Matcher::Exact(path) => {
                    exact.entry(path.as_str().into()).or_insert(index);
                    exact_routes.push(index);
                }
                Matcher::PriorityPrefix(prefix) | Matcher::Prefix(prefix) => {
                    let route = PrefixRoute {
                        index,
                        priority: matches!(matcher, Matcher::PriorityPrefix(_)),
                    };
                    // A duplicate prefix is shadowed by the first route with
                    // that string: list it right after that route, which is
                    // the one whose kind decides what happens.
                    let winner = prefixes.insert(prefix.as_bytes(), route);
                    prefix_order.push((
                        Reverse(prefix.len()),
                        !winner.priority,
                        winner.index,
                        index,
                    ));
                }
                Matcher::Regex(pattern) => {
                    patterns.push(pattern.as_str());
                    regex_routes.push(index);
                }
            }
        }

        let regexes = compile_regex_set(&patterns, &regex_routes)?;

        prefix_order.sort_unstable();
        let match_order = exact_routes
            .into_iter()
            .chain(prefix_order.into_iter().map(|(.., index)| index))
            .chain(regex_routes.iter().copied())
            .collect();

        Ok(Router {
            exact,
            prefixes,
            regexes,
            regex_routes: regex_routes.into(),
            match_order,
        })
    }

    /// nginx selection over an already normalised path.
    ///
    /// An exact match wins; otherwise the longest matching prefix (of both
    /// kinds) is found, and wins at once if it is a priority prefix; otherwise
    /// the first regex route in file order that matches wins; otherwise the
    /// longest prefix; otherwise there is no route.
    #[must_use]
    pub fn find(&self, path: &str) -> Option<RouteMatch> {
        if let Some(&index) = self.exact.get(path) {
            return Some(RouteMatch {
                index,
                matched_len: path.len(),
            });
        }
        let longest_prefix = self.prefixes.longest_match(path.as_bytes());
        if let Some((route, matched_len)) = longest_prefix.filter(|(route, _)| route.priority) {
            return Some(route.matched(matched_len));
        }
        // `RegexSet` reports matches in pattern order, which is file order.
        let first_regex = self.regexes.matches(path).iter().next();
        if let Some(&index) = first_regex.and_then(|pattern| self.regex_routes.get(pattern)) {
            return Some(RouteMatch {
                index,
                matched_len: 0,
            });
        }
        longest_prefix.map(|(route, matched_len)| route.matched(matched_len))
    }

    /// Route indices in the order nginx considers them, for `astron-edge check`'s summary:
    /// exact routes, then prefixes longest first (priority before plain at equal length), then regexes in file order.
    ///
    /// Exact routes are listed in file order. A prefix route whose string
    /// repeats an earlier route's is listed right after that earlier route,
    /// which shadows it. Every index appears exactly once.
    #[must_use]
    pub fn match_order(&self) -> Vec<usize> {
        self.match_order.to_vec()
    }
}

/// Compiles the regex routes into one set, or finds the route to blame.
///
/// The set is compiled first because that is the only compilation needed when
/// the config is valid; patterns are compiled one by one only to name the
/// culprit after the set failed.
fn compile_regex_set(patterns: &[&str], routes: &[usize]) -> Result<RegexSet, RouterError> {
    RegexSet::new(patterns).map_err(|set_error| {
        patterns
            .iter()
            .zip(routes)
            .find_map(|(pattern, &index)| {
                regex::Regex::new(pattern)
                    .err()
                    .map(|source| RouterError::Regex { index, source })
            })
            .unwrap_or(RouterError::RegexSet { source: set_error })
    })
}

/// A prefix route as stored in the trie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PrefixRoute {
    index: usize,
    /// `priority_prefix` rather than `prefix`.
    priority: bool,
}

impl PrefixRoute {
    /// This route, chosen with a prefix of `matched_len` bytes.
    fn matched(self, matched_len: usize) -> RouteMatch {
        RouteMatch {
            index: self.index,
            matched_len,
        }
    }
}

/// A byte trie of prefix strings: walking it along a path visits every
/// prefix of the path that is a route, shortest first, in one pass.
///
/// Nodes live in one vector and refer to their children by position, which
/// keeps them together in memory and lets the trie be built and dropped
/// without recursion however long a prefix is.
#[derive(Debug)]
struct PrefixTrie {
    /// `nodes[0]` is the root, the empty prefix.
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// `(byte, position of the child in PrefixTrie::nodes)`, sorted by byte.
    children: Vec<(u8, usize)>,
    /// The route whose prefix ends at this node.
    route: Option<PrefixRoute>,
}

impl Default for PrefixTrie {
    fn default() -> Self {
        PrefixTrie {
            nodes: vec![TrieNode::default()],
        }
    }
}

impl PrefixTrie {
    /// Adds `prefix` for `route` unless an earlier route already has the same
    /// prefix; returns the route that keeps it.
    fn insert(&mut self, prefix: &[u8], route: PrefixRoute) -> PrefixRoute {
        let mut node = 0;
        for &byte in prefix {
            node = match self.child(node, byte) {
                Some(child) => child,
                None => {
                    let child = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    let children = &mut self.nodes[node].children;
                    let slot = children.partition_point(|&(b, _)| b < byte);
                    children.insert(slot, (byte, child));
                    child
                }
            };
        }
        *self.nodes[node].route.get_or_insert(route)
    }

    /// The route with the longest prefix of `path`, and that prefix's length.
    fn longest_match(&self, path: &[u8]) -> Option<(PrefixRoute, usize)> {
        let mut node = 0;
        let mut longest = self.nodes[node].route.map(|route| (route, 0));
        for (depth, &byte) in path.iter().enumerate() {
            match self.child(node, byte) {
                Some(child) => node = child,
                None => break,
            }
            if let Some(route) = self.nodes[node].route {
                longest = Some((route, depth + 1));
            }
        }
        longest
    }

    /// The child of `node` along `byte`.
    fn child(&self, node: usize, byte: u8) -> Option<usize> {
        let children = &self.nodes[node].children;
        children
            .binary_search_by_key(&byte, |&(b, _)| b)
            .ok()
            .map(|slot| children[slot].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Matcher::{Exact, Prefix, PriorityPrefix, Regex};

    fn router(matchers: &[Matcher]) -> Router {
        match Router::new(matchers) {
            Ok(router) => router,
            Err(error) => panic!("router: {error}"),
        }
    }

    fn exact(path: &str) -> Matcher {
        Exact(path.into())
    }
    fn priority(prefix: &str) -> Matcher {
        PriorityPrefix(prefix.into())
    }
    fn prefix(prefix: &str) -> Matcher {
        Prefix(prefix.into())
    }
    fn regex(pattern: &str) -> Matcher {
        Regex(pattern.into())
    }

    fn at(index: usize, matched_len: usize) -> Option<RouteMatch> {
        Some(RouteMatch { index, matched_len })
    }

    /// nginx selection written as plainly as possible, as a reference for
    /// the real router: one pass per matcher kind over the whole list.
    fn reference_find(matchers: &[Matcher], path: &str) -> Option<RouteMatch> {
        let exact = matchers
            .iter()
            .position(|m| matches!(m, Exact(p) if p == path));
        if let Some(index) = exact {
            return at(index, path.len());
        }
        let mut longest: Option<(usize, usize, bool)> = None;
        for (index, matcher) in matchers.iter().enumerate() {
            let (p, priority) = match matcher {
                PriorityPrefix(p) => (p, true),
                Prefix(p) => (p, false),
                _ => continue,
            };
            if path.starts_with(p.as_str()) && longest.is_none_or(|(_, len, _)| p.len() > len) {
                longest = Some((index, p.len(), priority));
            }
        }
        if let Some((index, len, true)) = longest {
            return at(index, len);
        }
        for (index, matcher) in matchers.iter().enumerate() {
            if let Regex(pattern) = matcher {
                if regex::Regex::new(pattern).is_ok_and(|re| re.is_match(path)) {
                    return at(index, 0);
                }
            }
        }
        longest.and_then(|(index, len, _)| at(index, len))
    }

    /// Whether `matcher` on its own accepts `path` with this match length.
    fn really_matches(matcher: &Matcher, path: &str, matched_len: usize) -> bool {
        match matcher {
            Exact(p) => p == path && matched_len == path.len(),
            PriorityPrefix(p) | Prefix(p) => path.starts_with(p.as_str()) && matched_len == p.len(),
            Regex(pattern) => {
                matched_len == 0 && regex::Regex::new(pattern).is_ok_and(|re| re.is_match(path))
            }
        }
    }

    #[test]
    fn router_is_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Router>();
    }

    #[test]
    fn exact_beats_prefix_and_regex() {
        let routes = [prefix("/api/"), regex("chat"), exact("/api/chat")];
        let r = router(&routes);
        assert_eq!(r.find("/api/chat"), at(2, 9));
        assert_eq!(r.find("/api/chat/"), at(1, 0));
        assert_eq!(r.find("/api/x"), at(0, 5));
    }

    #[test]
    fn exact_beats_priority_prefix() {
        let r = router(&[priority("/"), exact("/")]);
        assert_eq!(r.find("/"), at(1, 1));
        assert_eq!(r.find("/a"), at(0, 1));
    }

    #[test]
    fn longest_prefix_wins() {
        let routes = [
            prefix("/"),
            prefix("/console-api/"),
            priority("/console"),
            prefix("/console-api/internal/"),
        ];
        let r = router(&routes);
        assert_eq!(r.find("/console-api/internal/x"), at(3, 22));
        assert_eq!(r.find("/console-api/x"), at(1, 13));
        assert_eq!(r.find("/console-apix"), at(2, 8));
        assert_eq!(r.find("/other"), at(0, 1));
    }

    #[test]
    fn regex_beats_plain_prefix() {
        let r = router(&[prefix("/console-api/"), regex(r"(?i)\.(png|js)$")]);
        assert_eq!(r.find("/console-api/logo.png"), at(1, 0));
        assert_eq!(r.find("/console-api/logo.svg"), at(0, 13));
    }

    #[test]
    fn priority_prefix_beats_regex() {
        let r = router(&[priority("/static/"), regex(r"\.png$")]);
        assert_eq!(r.find("/static/logo.png"), at(0, 8));
        assert_eq!(r.find("/other/logo.png"), at(1, 0));
    }

    #[test]
    fn only_the_longest_prefix_kind_matters() {
        let routes = [
            priority("/static/"),
            prefix("/static/img/"),
            regex(r"\.png$"),
            priority("/static/img/raw/"),
        ];
        let r = router(&routes);
        // The longest prefix is plain, so the shorter priority prefix does
        // not stop the regexes.
        assert_eq!(r.find("/static/img/a.png"), at(2, 0));
        assert_eq!(r.find("/static/img/a.svg"), at(1, 12));
        // A longer priority prefix stops them.
        assert_eq!(r.find("/static/img/raw/a.png"), at(3, 16));
        assert_eq!(r.find("/static/a.png"), at(0, 8));
    }

    #[test]
    fn regexes_are_tried_in_file_order() {
        let routes = [regex(r"\.js$"), regex(r"^/app/"), regex(r"\.(js|css)$")];
        let r = router(&routes);
        assert_eq!(r.find("/app/main.js"), at(0, 0));
        assert_eq!(r.find("/app/main.css"), at(1, 0));
        assert_eq!(r.find("/main.css"), at(2, 0));
    }

    #[test]
    fn falls_back_to_longest_prefix_when_no_regex_matches() {
        let r = router(&[prefix("/"), prefix("/a/"), regex(r"\.png$")]);
        assert_eq!(r.find("/a/b.txt"), at(1, 3));
        assert_eq!(r.find("/b.txt"), at(0, 1));
    }

    #[test]
    fn nothing_matches() {
        let r = router(&[exact("/a"), prefix("/b/"), regex("^/c")]);
        assert_eq!(r.find("/a/"), None);
        assert_eq!(r.find("/b"), None);
        assert_eq!(r.find("/d"), None);
        assert_eq!(router(&[]).find("/"), None);
    }

    #[test]
    fn case_insensitive_regex() {
        let r = router(&[regex(r"(?i)\.png$"), regex(r"\.jpg$")]);
        assert_eq!(r.find("/A.PNG"), at(0, 0));
        assert_eq!(r.find("/a.png"), at(0, 0));
        assert_eq!(r.find("/a.JPG"), None);
        assert_eq!(r.find("/a.jpg"), at(1, 0));
    }

    #[test]
    fn prefixes_are_case_sensitive_bytes() {
        let r = router(&[prefix("/Api/"), prefix("/é/")]);
        assert_eq!(r.find("/api/x"), None);
        assert_eq!(r.find("/Api/x"), at(0, 5));
        assert_eq!(r.find("/é/x"), at(1, 4));
    }

    #[test]
    fn first_duplicate_prefix_wins() {
        let r = router(&[prefix("/a/"), priority("/a/"), regex("x")]);
        assert_eq!(r.find("/a/x"), at(2, 0));
        assert_eq!(r.find("/a/y"), at(0, 3));
        let r = router(&[priority("/a/"), prefix("/a/"), regex("x")]);
        assert_eq!(r.find("/a/x"), at(0, 3));
    }

    #[test]
    fn empty_prefix_matches_everything() {
        let r = router(&[prefix(""), prefix("/a")]);
        assert_eq!(r.find("/b"), at(0, 0));
        assert_eq!(r.find("/a"), at(1, 2));
    }

    #[test]
    fn invalid_regex_names_its_route() {
        let routes = [
            prefix("/"),
            regex(r"\.png$"),
            exact("/x"),
            regex("(unclosed"),
        ];
        match Router::new(&routes) {
            Err(RouterError::Regex { index, .. }) => assert_eq!(index, 3),
            other => panic!("expected a regex error, got {other:?}"),
        }
        let error = Router::new(&[regex("[z-a]")]).err().map(|e| e.to_string());
        assert!(
            error
                .as_deref()
                .is_some_and(|e| e.starts_with("route 0: invalid regex: ")),
            "{error:?}"
        );
    }

    #[test]
    fn match_order_follows_nginx() {
        let routes = [
            regex("a"),            // 0
            prefix("/"),           // 1
            exact("/x"),           // 2
            prefix("/abc/"),       // 3
            priority("/abd/"),     // 4
            regex("b"),            // 5
            priority("/abc/def/"), // 6
            exact("/y"),           // 7
            prefix("/ab/"),        // 8
            prefix("/abc/"),       // 9: shadowed by 3
            priority("/abe/"),     // 10
        ];
        let r = router(&routes);
        assert_eq!(r.match_order(), [2, 7, 6, 4, 10, 3, 9, 8, 1, 0, 5]);
    }

    #[test]
    fn several_hundred_routes() {
        let mut routes = Vec::new();
        for i in 0..300 {
            routes.push(exact(&format!("/exact/{i}")));
            routes.push(prefix(&format!("/svc{i}/")));
            routes.push(priority(&format!("/svc{i}/static/")));
        }
        for i in 0..200 {
            routes.push(regex(&format!(r"^/svc{i}/.*\.v{i}$")));
        }
        routes.push(prefix("/"));
        let r = router(&routes);

        assert_eq!(r.find("/exact/123"), at(3 * 123, 10));
        assert_eq!(r.find("/svc42/x"), at(3 * 42 + 1, 7));
        assert_eq!(r.find("/svc42/static/x.v42"), at(3 * 42 + 2, 14));
        assert_eq!(r.find("/svc42/x.v42"), at(900 + 42, 0));
        assert_eq!(r.find("/svc250/x.v250"), at(3 * 250 + 1, 8));
        assert_eq!(r.find("/nowhere"), at(1100, 1));
        for path in [
            "/svc7/a.v7",
            "/svc199/b",
            "/exact/299/",
            "/svc1/static/",
            "/",
        ] {
            assert_eq!(r.find(path), reference_find(&routes, path), "{path}");
        }
        assert_eq!(r.match_order().len(), routes.len());
    }

    fn matcher_strategy() -> impl Strategy<Value = Matcher> {
        let text =
            || prop::sample::select(vec!["/", "/a", "/a/", "/ab", "/a/b", "/b/", "/a/b.png", ""]);
        prop_oneof![
            text().prop_map(exact),
            text().prop_map(priority),
            text().prop_map(prefix),
            prop::sample::select(vec![
                r"\.png$",
                r"(?i)\.PNG$",
                "^/a",
                "b/",
                "^/a/b$",
                "a+",
                "é"
            ])
            .prop_map(regex),
        ]
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!["/", "a", "b", "A", ".png", ".PNG", "é"]),
            0..8,
        )
        .prop_map(|pieces| format!("/{}", pieces.concat()))
    }

    proptest! {
        #[test]
        fn find_is_nginx_selection(
            routes in prop::collection::vec(matcher_strategy(), 0..12),
            path in path_strategy(),
        ) {
            let r = router(&routes);
            let found = r.find(&path);
            prop_assert_eq!(found, r.find(&path));
            prop_assert_eq!(found, reference_find(&routes, &path));
            if let Some(RouteMatch { index, matched_len }) = found {
                prop_assert!(really_matches(&routes[index], &path, matched_len));
                prop_assert!(path.is_char_boundary(matched_len));
            }
            let mut order = r.match_order();
            order.sort_unstable();
            prop_assert_eq!(order, (0..routes.len()).collect::<Vec<_>>());
        }
    }
}
