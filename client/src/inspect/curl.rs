//! "Copy as curl": an exchange's request as one command for a POSIX shell.
//!
//! Everything in it came from a visitor (method, path, headers, body), so
//! every part is quoted: a pasted command runs `curl` and nothing else,
//! whatever the visitor sent. A body that is not plain text goes through
//! `printf` with octal escapes, which POSIX shells all read the same way.

use super::exchange::Exchange;

/// Headers curl writes itself, or that describe the captured hop.
const LEFT_TO_CURL: [&str; 4] = ["host", "content-length", "connection", "transfer-encoding"];

/// The command that sends `exchange`'s request again to its public URL.
pub(crate) fn command(exchange: &Exchange) -> String {
    let request = &exchange.request;
    let host = request
        .header("host")
        .or_else(|| request.header(":authority"));
    let url = match host {
        Some(host) => format!("http://{host}{}", request.path),
        None => format!("http://localhost{}", request.path),
    };
    let mut parts = vec!["curl".to_string()];
    if exchange.http2 {
        parts.push("--http2-prior-knowledge".into());
    }
    parts.extend(["-X".into(), quote(&request.method), quote(&url)]);
    for (name, value) in request.headers() {
        // HTTP/2's pseudo-fields are curl's to write, from the URL.
        if name.starts_with(':') || LEFT_TO_CURL.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        let line = format!("{name}: {}", String::from_utf8_lossy(value));
        parts.push("-H".into());
        parts.push(quote(&line));
    }
    let body = request.body.to_vec();
    if body.is_empty() {
        return parts.join(" ");
    }
    match std::str::from_utf8(&body) {
        Ok(text) if !text.contains('\0') => {
            parts.push("--data-binary".into());
            parts.push(quote(text));
            parts.join(" ")
        }
        _ => {
            parts.push("--data-binary".into());
            parts.push("@-".into());
            format!("printf '{}' | {}", octal(&body), parts.join(" "))
        }
    }
}

/// `s` in single quotes, where a POSIX shell expands nothing; a quote
/// inside ends the quoting, adds an escaped quote and starts it again.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A `printf` format that writes exactly `bytes`: letters and digits as
/// they are, every other byte as `\ooo`.
fn octal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        if b.is_ascii_alphanumeric() {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\{b:03o}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_leave_nothing_for_the_shell() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$(id)`id`|;&\n"), "'$(id)`id`|;&\n'");
    }

    #[test]
    fn binary_bodies_become_octal_escapes() {
        assert_eq!(octal(b"a\0'%\\"), r"a\000\047\045\134");
    }
}
