//! Request routing: path normalisation and nginx-style location matching.
//!
//! A request is routed in two steps, exactly as nginx does it:
//!
//! 1. [`normalize_path`] turns the raw request path into its canonical form
//!    (percent-escapes decoded, `//` merged, `.` and `..` resolved), so that
//!    `/a/%2e%2e/b` and `/b` can never be routed differently.
//! 2. [`Router::find`] picks the route for that canonical path with nginx's
//!    `location` precedence (`=`, `^~`, `~`/`~*`, plain prefix).
//!
//! When a route rewrites the path for its upstream, [`encode_path`] turns the
//! canonical path back into something that may be sent on the wire.

#[cfg(test)]
mod fuzz;
mod matcher;
mod normalize;

pub use matcher::{Matcher, RouteMatch, Router, RouterError};
pub use normalize::{encode_path, normalize_path, NormalizeError};
