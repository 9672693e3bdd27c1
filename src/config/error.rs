//! One config error, said once and clearly: the file, the line and column,
//! the key, what is wrong, and a hint when there is an obvious one.

use std::fmt;
use std::ops::Range;
use std::path::Path;

/// A config file that cannot be used (boxed: it travels in every `Result`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(Box<Details>);

impl std::ops::Deref for ConfigError {
    type Target = Details;
    fn deref(&self) -> &Details {
        &self.0
    }
}

/// What a [`ConfigError`] says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Details {
    /// The file, as the user named it.
    pub file: String,
    /// 1-based line and column, when the error has a place.
    pub position: Option<(usize, usize)>,
    /// The key, as a path: `tunnels[1].local`.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// "did you mean `local`?", when a near key or value exists.
    pub hint: Option<String>,
    /// The offending line and the width to underline, for the snippet.
    snippet: Option<(String, usize)>,
}

impl ConfigError {
    /// An error about the whole file (it cannot be read, say).
    pub fn whole(file: &Path, message: impl Into<String>) -> ConfigError {
        ConfigError(Box::new(Details {
            file: file.display().to_string(),
            position: None,
            key: None,
            message: message.into(),
            hint: None,
            snippet: None,
        }))
    }

    /// An error at `span` of `source`, about `key`.
    pub fn at(
        file: &Path,
        source: &str,
        span: Option<Range<usize>>,
        key: Option<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let mut error = ConfigError::whole(file, message);
        error.0.key = key.filter(|k| !k.is_empty() && k != ".");
        if let Some(span) = span {
            let start = span.start.min(source.len());
            let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
            let line_end = source[start..]
                .find('\n')
                .map_or(source.len(), |i| start + i);
            let line = source[..start].matches('\n').count() + 1;
            let column = source[line_start..start].chars().count() + 1;
            let text = source[line_start..line_end].trim_end_matches('\r');
            let width = source[start..span.end.clamp(start, line_end)]
                .chars()
                .count()
                .max(1);
            error.0.position = Some((line, column));
            error.0.snippet = Some((text.to_string(), width));
        }
        error
    }

    /// Builds the error for a serde/TOML failure: rewords serde's messages
    /// for people, names the key, and finds a hint.
    pub fn from_toml(
        file: &Path,
        source: &str,
        path: Option<String>,
        error: &toml::de::Error,
    ) -> ConfigError {
        let raw = error.message().trim().to_string();
        // `Spanned` values add a private segment to serde's path
        let path = path
            .map(|p| p.replace(".$__serde_spanned_private_value", ""))
            .filter(|p| p != ".");
        let (mut message, hint, mut key) = reword(&raw, path.as_deref());
        if raw == "duplicate key"
            && let Some(name) = error.span().and_then(|s| source.get(s))
        {
            message = format!("duplicate key `{name}`: it is set twice");
            key = Some(name.to_string());
        }
        let mut e = ConfigError::at(file, source, error.span(), key, message);
        e.0.hint = hint;
        e
    }

    /// The 1-based line, if the error has a place.
    pub fn line(&self) -> Option<usize> {
        self.position.map(|(line, _)| line)
    }
}

/// serde's message in words for people, the hint, and the key it is about.
fn reword(raw: &str, path: Option<&str>) -> (String, Option<String>, Option<String>) {
    let join = |name: &str| match path {
        Some(p) if !p.ends_with(name) => format!("{p}.{name}"),
        Some(p) => p.to_string(),
        None => name.to_string(),
    };
    let within = |container: Option<&str>| match container {
        Some(c) => format!(" in `{c}`"),
        None => " at the top level".to_string(),
    };
    if let Some(rest) = raw.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let container = path.map(|p| p.strip_suffix(name).unwrap_or(p).trim_end_matches('.'));
        let container = container.filter(|c| !c.is_empty());
        let expected = quoted_after_expected(rest);
        let message = format!("unknown key `{name}`{}", within(container));
        return (message, hint(name, &expected), Some(join(name)));
    }
    if let Some(rest) = raw.strip_prefix("unknown variant `") {
        let name = rest.split('`').next().unwrap_or_default();
        let expected = quoted_after_expected(rest);
        let list = expected
            .iter()
            .map(|e| format!("`{e}`"))
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!("unknown value `{name}`; expected one of {list}");
        return (message, hint(name, &expected), path.map(str::to_string));
    }
    if let Some(rest) = raw.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let message = format!("missing required key `{name}`{}", within(path));
        return (message, None, Some(join(name)));
    }
    if let Some(rest) = raw.strip_prefix("unknown value `") {
        // our own MailFormat message
        let name = rest.split('`').next().unwrap_or_default();
        let expected = quoted_after_expected(rest);
        return (
            raw.to_string(),
            hint(name, &expected),
            path.map(str::to_string),
        );
    }
    let mut message = raw.to_string();
    for (rust, words) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number (0 to 65535)"),
    ] {
        message = message.replace(rust, words);
    }
    if message.starts_with("invalid type") {
        message = message.replacen("invalid type: ", "wrong type: found ", 1);
    }
    (message, None, path.map(str::to_string))
}

/// The backquoted words after "expected" in a serde message.
fn quoted_after_expected(message: &str) -> Vec<String> {
    let Some((_, list)) = message.split_once("expected") else {
        return Vec::new();
    };
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// "did you mean `x`?" when one candidate is close to what was written.
pub fn hint(written: &str, candidates: &[String]) -> Option<String> {
    let written_lower = written.to_ascii_lowercase();
    // close: similar as a whole, or a typo or two away (`wbe` for `web`)
    let close = |c: &str| {
        strsim::jaro_winkler(&written_lower, c) >= 0.8
            || strsim::damerau_levenshtein(&written_lower, c) <= 1 + c.len() / 6
    };
    candidates
        .iter()
        .filter(|c| close(c))
        .map(|c| (strsim::jaro_winkler(&written_lower, c), c))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
        .or_else(|| {
            (!candidates.is_empty() && candidates.len() <= 12).then(|| {
                let list: Vec<String> = candidates.iter().map(|c| format!("`{c}`")).collect();
                format!("expected one of {}", list.join(", "))
            })
        })
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": ")?;
        if let Some(key) = &self.key
            && !self.message.contains(&format!("`{key}`"))
            && !self
                .message
                .contains(&format!("`{}`", key.rsplit('.').next().unwrap_or(key)))
        {
            // "`tokens` is not supported yet", "`http`: `x` is not an address"
            let joiner = if self.message.starts_with("is ") {
                " "
            } else {
                ": "
            };
            write!(f, "`{key}`{joiner}")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "; {hint}")?;
        }
        if let (Some((line, column)), Some((text, width))) = (self.position, &self.snippet) {
            let gutter = line.to_string().len();
            write!(
                f,
                "\n {:gutter$} |\n {line} | {text}\n {:gutter$} | {}{}",
                "",
                "",
                " ".repeat(column - 1),
                "^".repeat(*width)
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_pick_the_nearest_key() {
        let keys: Vec<String> = ["name", "local", "host_header", "mail"]
            .map(String::from)
            .to_vec();
        assert_eq!(hint("locall", &keys).unwrap(), "did you mean `local`?");
        assert_eq!(
            hint("hostheader", &keys).unwrap(),
            "did you mean `host_header`?"
        );
        assert!(hint("zzz", &keys).unwrap().starts_with("expected one of"));
        let names: Vec<String> = ["api", "web"].map(String::from).to_vec();
        assert_eq!(hint("wbe", &names).unwrap(), "did you mean `web`?");
    }

    #[test]
    fn positions_are_one_based_and_underlined() {
        let src = "a = 1\nlocall = 3\n";
        let e = ConfigError::at(
            Path::new("f.toml"),
            src,
            Some(6..12),
            Some("locall".into()),
            "unknown key `locall`",
        );
        assert_eq!(e.position, Some((2, 1)));
        let shown = e.to_string();
        assert!(
            shown.starts_with("f.toml:2:1: unknown key `locall`"),
            "{shown}"
        );
        assert!(shown.contains(" 2 | locall = 3\n   | ^^^^^^"), "{shown}");
    }
}
