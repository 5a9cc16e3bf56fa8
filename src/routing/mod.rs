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

mod matcher;
mod normalize;
mod slash;

pub(crate) use matcher::{Matcher, Router, RouterError};
pub(crate) use normalize::{encode_path, normalize_path, NormalizeError};
pub(crate) use slash::SlashRedirects;
