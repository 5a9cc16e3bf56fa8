//! Config errors that point at the offending place: `FILE:LINE:COL: message`, like `nginx -t`.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A config that cannot be used, with the position of the value (or table) at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    file: PathBuf,
    position: Option<(usize, usize)>,
    message: String,
}

impl ConfigError {
    /// An error with no position in the file (the file itself cannot be read).
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            position: None,
            message: message.into(),
        }
    }

    /// An error at byte offset `span.start` of `source`.
    pub fn at(file: &Path, source: &str, span: Range<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            position: Some(line_col(source, span.start)),
            message: one_line(&message.into()),
        }
    }

    /// An error at a known 1-based `line` and `col` of `file` (an imported nginx.conf).
    pub fn at_position(file: &Path, line: usize, col: usize, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_owned(),
            position: Some((line, col)),
            message: one_line(&message.into()),
        }
    }

    /// The 1-based line and column, when the error has a position.
    pub fn position(&self) -> Option<(usize, usize)> {
        self.position
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Errors are one line each (log scrapers and `check` users rely on it): the multi-line
/// messages of the TOML and regex parsers are folded.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(source: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(source.len());
    while !source.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let src = "a = 1\nbb = \"é\"\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        assert_eq!(line_col(src, 11), (2, 6));
        let err = ConfigError::at(Path::new("x.toml"), src, 6..8, "bad");
        assert_eq!(err.to_string(), "x.toml:2:1: bad");
    }
}
