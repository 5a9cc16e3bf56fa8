//! nginx.conf syntax: the lexer (tokens with their `LINE:COL`) and the parser of
//! directives and blocks, with `include` followed (relative paths, globs).
//!
//! Only the syntax lives here; what the directives mean is `import.rs`'s job.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::NginxError;

/// Where a token starts: file, 1-based line and column (in characters, as editors count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pos {
    pub file: Arc<Path>,
    pub line: usize,
    pub col: usize,
}

impl Pos {
    /// `FILE:LINE`, the form of the importer's comments and warnings.
    pub(super) fn file_line(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }

    pub(super) fn error(&self, message: impl Into<String>) -> NginxError {
        NginxError {
            file: self.file.to_path_buf(),
            line: self.line,
            col: self.col,
            message: message.into(),
        }
    }
}

/// One argument of a directive, unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Arg {
    pub text: String,
    /// Written in quotes: `""` is an empty argument, not a missing one.
    pub quoted: bool,
    pub pos: Pos,
}

/// `name arg... ;` or `name arg... { directives }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Directive {
    pub name: String,
    pub args: Vec<Arg>,
    pub pos: Pos,
    pub block: Option<Vec<Directive>>,
}

/// How deep `include` may nest before it is taken for a loop.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Reads and parses `path`, splicing in every `include` (except `mime.types`, whose
/// directive is kept for the importer to ignore with a warning).
pub(super) fn parse_file(path: &Path) -> Result<Vec<Directive>, NginxError> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    parse_included(path, &base, 0, None)
}

/// The files other than `path` that `directives` (parsed from `path`) came from: the
/// included files that hold at least one directive, in order, each once.
pub(super) fn included_files(path: &Path, directives: &[Directive]) -> Vec<PathBuf> {
    fn walk(path: &Path, directives: &[Directive], files: &mut Vec<PathBuf>) {
        for directive in directives {
            let file = &*directive.pos.file;
            if file != path && !files.iter().any(|f| f == file) {
                files.push(file.to_path_buf());
            }
            walk(path, directive.block.as_deref().unwrap_or_default(), files);
        }
    }
    let mut files = Vec::new();
    walk(path, directives, &mut files);
    files
}

/// Parses `text` as if read from `path` (includes are taken relative to its directory).
#[cfg(test)]
pub(super) fn parse_text(path: &Path, text: &str) -> Result<Vec<Directive>, NginxError> {
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let file: Arc<Path> = Arc::from(path);
    let tokens = lex(&file, text)?;
    let mut parser = Parser {
        tokens,
        next: 0,
        base,
        depth: 0,
    };
    parser.block(None)
}

fn parse_included(
    path: &Path,
    base: &Path,
    depth: usize,
    at: Option<&Pos>,
) -> Result<Vec<Directive>, NginxError> {
    let file: Arc<Path> = Arc::from(path);
    let bytes = std::fs::read(path).map_err(|e| match at {
        Some(pos) => pos.error(format!("cannot read included file {}: {e}", path.display())),
        None => NginxError::whole_file(path, format!("cannot read nginx config: {e}")),
    })?;
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            let valid = e.utf8_error().valid_up_to();
            let text = String::from_utf8_lossy(&e.as_bytes()[..valid]).into_owned();
            let (line, col) = end_position(&text);
            return Err(NginxError {
                file: path.to_owned(),
                line,
                col,
                message: "the file is not UTF-8".into(),
            });
        }
    };
    let tokens = lex(&file, &text)?;
    let mut parser = Parser {
        tokens,
        next: 0,
        base: base.to_owned(),
        depth,
    };
    parser.block(None)
}

/// Line and column just after `text`.
fn end_position(text: &str) -> (usize, usize) {
    let line = text.matches('\n').count() + 1;
    let col = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Word(String, bool),
    Semi,
    Open,
    Close,
}

fn lex(file: &Arc<Path>, text: &str) -> Result<Vec<(Tok, Pos)>, NginxError> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let (mut line, mut col) = (1usize, 1usize);
    let pos = |line, col| Pos {
        file: file.clone(),
        line,
        col,
    };
    // Advances over one character, keeping the position.
    macro_rules! bump {
        () => {{
            let c = chars.next();
            if c == Some('\n') {
                line += 1;
                col = 1;
            } else if c.is_some() {
                col += 1;
            }
            c
        }};
    }
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                bump!();
            }
            '#' => {
                while let Some(&c) = chars.peek() {
                    if c == '\n' {
                        break;
                    }
                    bump!();
                }
            }
            ';' => {
                out.push((Tok::Semi, pos(line, col)));
                bump!();
            }
            '{' => {
                out.push((Tok::Open, pos(line, col)));
                bump!();
            }
            '}' => {
                out.push((Tok::Close, pos(line, col)));
                bump!();
            }
            '"' | '\'' => {
                let start = pos(line, col);
                let quote = c;
                bump!();
                let mut word = String::new();
                loop {
                    match bump!() {
                        None => return Err(start.error("unterminated quoted string")),
                        Some('\\') => match bump!() {
                            None => return Err(start.error("unterminated quoted string")),
                            Some(e) if e == quote || e == '\\' => word.push(e),
                            Some('n') => word.push('\n'),
                            Some('t') => word.push('\t'),
                            Some('r') => word.push('\r'),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                        },
                        Some(c) if c == quote => break,
                        Some(c) => word.push(c),
                    }
                }
                // nginx wants a separator after a quoted string.
                if let Some(&next) = chars.peek() {
                    if !(next.is_whitespace() || next == ';' || next == '{' || next == '}') {
                        return Err(pos(line, col)
                            .error(format!("unexpected {next:?} after a quoted string")));
                    }
                }
                out.push((Tok::Word(word, true), start));
            }
            _ => {
                let start = pos(line, col);
                let mut word = String::new();
                let mut braces = 0usize;
                while let Some(&c) = chars.peek() {
                    if braces == 0 && (c.is_whitespace() || c == ';' || c == '}') {
                        break;
                    }
                    if c == '{' {
                        // `${var}` inside a word; any other `{` opens a block.
                        if word.ends_with('$') {
                            braces += 1;
                        } else if braces == 0 {
                            break;
                        }
                    } else if c == '}' {
                        braces -= 1;
                    } else if c == '\\' {
                        word.push(c);
                        bump!();
                        match chars.peek() {
                            Some(&e) => {
                                word.push(e);
                                bump!();
                            }
                            None => break,
                        }
                        continue;
                    }
                    word.push(c);
                    bump!();
                }
                if braces > 0 {
                    return Err(start.error("unterminated ${ in a word"));
                }
                out.push((Tok::Word(word, false), start));
            }
        }
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<(Tok, Pos)>,
    next: usize,
    base: PathBuf,
    depth: usize,
}

impl Parser {
    /// Directives up to the matching `}` (`open` is the `{`), or to the end of the file.
    fn block(&mut self, open: Option<&Pos>) -> Result<Vec<Directive>, NginxError> {
        let mut out = Vec::new();
        loop {
            let Some((tok, pos)) = self.tokens.get(self.next).cloned() else {
                return match open {
                    Some(open) => Err(open.error("unexpected end of file, expecting \"}\"")),
                    None => Ok(out),
                };
            };
            self.next += 1;
            let name = match tok {
                Tok::Close if open.is_some() => return Ok(out),
                Tok::Close => return Err(pos.error("unexpected \"}\"")),
                Tok::Semi => return Err(pos.error("unexpected \";\"")),
                Tok::Open => return Err(pos.error("unexpected \"{\"")),
                Tok::Word(name, _) => name,
            };
            let mut args = Vec::new();
            let block = loop {
                let Some((tok, at)) = self.tokens.get(self.next).cloned() else {
                    let end = self.tokens.last().map_or(pos.clone(), |t| t.1.clone());
                    return Err(end.error(format!(
                        "unexpected end of file, expecting \";\" or \"{{\" after \"{name}\""
                    )));
                };
                self.next += 1;
                match tok {
                    Tok::Word(text, quoted) => args.push(Arg {
                        text,
                        quoted,
                        pos: at,
                    }),
                    Tok::Semi => break None,
                    Tok::Open => break Some(self.block(Some(&at))?),
                    Tok::Close => {
                        return Err(at.error(format!("unexpected \"}}\" after \"{name}\"")))
                    }
                }
            };
            let directive = Directive {
                name,
                args,
                pos,
                block,
            };
            if directive.name == "include" && directive.block.is_none() {
                self.include(directive, &mut out)?;
            } else {
                out.push(directive);
            }
        }
    }

    /// Splices the directives of the included file(s) in place of `include`.
    fn include(
        &mut self,
        directive: Directive,
        out: &mut Vec<Directive>,
    ) -> Result<(), NginxError> {
        let [arg] = directive.args.as_slice() else {
            return Err(directive
                .pos
                .error("\"include\" takes exactly one argument"));
        };
        if arg.text.rsplit('/').next() == Some("mime.types") {
            out.push(directive);
            return Ok(());
        }
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(arg.pos.error("includes nest too deep (an include loop?)"));
        }
        let pattern = self.base.join(&arg.text);
        let files: Vec<PathBuf> = if arg.text.contains(['*', '?', '[']) {
            let pattern = pattern.to_string_lossy().into_owned();
            let mut files = glob::glob(&pattern)
                .map_err(|e| arg.pos.error(format!("bad include pattern: {e}")))?
                .filter_map(Result::ok)
                .collect::<Vec<_>>();
            files.sort();
            files
        } else {
            vec![pattern]
        };
        for file in files {
            out.extend(parse_included(
                &file,
                &self.base,
                self.depth + 1,
                Some(&arg.pos),
            )?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Directive>, NginxError> {
        parse_text(Path::new("t.conf"), text)
    }

    #[test]
    fn directives_blocks_and_positions() {
        let d = parse("a 1 '2 3';\nb {\n  c \"x\\\"y\" ${v}w;\n}\n").unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].args[1].text, "2 3");
        assert!(d[0].args[1].quoted);
        let c = &d[1].block.as_ref().unwrap()[0];
        assert_eq!((c.pos.line, c.pos.col), (3, 3));
        assert_eq!(c.args[0].text, "x\"y");
        assert_eq!(c.args[1].text, "${v}w");
        assert_eq!(c.args[1].pos.col, 12);
    }

    #[test]
    fn comments_and_regexes() {
        let d = parse("location ~* \\.(js|css)$ { # c\n return 404; }").unwrap();
        assert_eq!(d[0].args[1].text, "\\.(js|css)$");
        assert_eq!(d[0].block.as_ref().unwrap()[0].name, "return");
    }

    #[test]
    fn syntax_errors_have_positions() {
        let e = parse("a {\n b;\n").unwrap_err();
        assert_eq!((e.line, e.col), (1, 3));
        let e = parse("a b").unwrap_err();
        assert_eq!(e.line, 1);
        let e = parse("}\n").unwrap_err();
        assert_eq!((e.line, e.col), (1, 1));
        let e = parse("a \"x;\n").unwrap_err();
        assert_eq!((e.line, e.col), (1, 3));
        let e = parse("a \"x\"y;").unwrap_err();
        assert_eq!((e.line, e.col), (1, 6));
    }
}
