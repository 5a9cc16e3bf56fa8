//! The TOML writer of the importer: lines of text, each remembering the nginx position it
//! came from, so that an error found later in the TOML can be reported in the nginx file.

use super::syntax::Pos;

#[derive(Default)]
pub(super) struct Toml {
    text: String,
    /// One entry per line written so far.
    origins: Vec<Option<Pos>>,
}

impl Toml {
    /// Writes one line that came from `origin` (or from nowhere in particular).
    pub(super) fn line(&mut self, origin: Option<&Pos>, text: &str) {
        for part in text.split('\n') {
            self.text.push_str(part);
            self.text.push('\n');
            self.origins.push(origin.cloned());
        }
    }

    /// `# FILE:LINE what`: the source comment above each table.
    pub(super) fn source(&mut self, pos: &Pos, what: &str) {
        self.line(Some(pos), &format!("# {}  {what}", pos.file_line()));
    }

    pub(super) fn blank(&mut self) {
        self.line(None, "");
    }

    pub(super) fn finish(self) -> (String, Vec<Option<Pos>>) {
        (self.text, self.origins)
    }
}

/// A TOML basic string. `$` before `{` or `$` is doubled: the loader expands `${VAR}`,
/// and nothing taken from nginx must turn into an environment lookup.
pub(super) fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '$' if matches!(chars.peek(), Some('{') | Some('$')) => out.push_str("$$"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A string holding a `${VAR:-default}` reference the importer means (upstream addresses,
/// the listener): written as is.
pub(super) fn quote_env(var: &str, default: &str) -> String {
    format!("\"${{{var}:-{default}}}\"")
}

/// A TOML literal string when the text allows one (regexes read better without escapes).
pub(super) fn quote_literal(text: &str) -> String {
    if text.contains(['\'', '\n', '\r']) || text.contains("${") || text.contains("$$") {
        quote(text)
    } else {
        format!("'{text}'")
    }
}

pub(super) fn list(items: &[String]) -> String {
    format!("[{}]", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_the_text() {
        assert_eq!(quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quote("x${Y}"), r#""x$${Y}""#);
        assert_eq!(quote_literal(r"\.(js)$"), r"'\.(js)$'");
        assert_eq!(quote_literal("it's"), r#""it's""#);
    }
}
