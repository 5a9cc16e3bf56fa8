//! `${VAR}` and `${VAR:-default}` expansion of config strings, as compose files do it.

/// Expands every `${VAR}` / `${VAR:-default}` in `text` with `lookup`.
///
/// `${VAR:-default}` uses the default when the variable is unset or empty (the shell's
/// `:-`); `${VAR}` with the variable unset is an error, so a forgotten variable cannot
/// silently become an empty host name. `$$` writes a literal `$`.
pub(super) fn expand_with(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unterminated variable reference in {text:?}"))?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?} in {text:?}"));
            }
            match (lookup(name).filter(|v| default.is_none() || !v.is_empty()), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Expands from the process environment.
pub(super) fn expand_env(text: &str) -> Result<String, String> {
    expand_with(text, |name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("hub".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands() {
        assert_eq!(expand_with("plain", env).as_deref(), Ok("plain"));
        assert_eq!(expand_with("${HOST}:8080", env).as_deref(), Ok("hub:8080"));
        assert_eq!(expand_with("${MISSING:-x:1}", env).as_deref(), Ok("x:1"));
        assert_eq!(expand_with("${EMPTY:-d}", env).as_deref(), Ok("d"));
        assert_eq!(expand_with("${EMPTY}", env).as_deref(), Ok(""));
        assert_eq!(expand_with("a$$b", env).as_deref(), Ok("a$b"));
        assert_eq!(expand_with("cost $5", env).as_deref(), Ok("cost $5"));
        assert_eq!(expand_with("${HOST}${HOST}", env).as_deref(), Ok("hubhub"));
    }

    #[test]
    fn rejects() {
        assert!(expand_with("${MISSING}", env)
            .unwrap_err()
            .contains("MISSING"));
        assert!(expand_with("${HOST", env).is_err());
        assert!(expand_with("${}", env).is_err());
        assert!(expand_with("${A B}", env).is_err());
    }
}
