//! What a tunnel asks of the SMTP adapter, in its hello (`"smtp"` in the
//! tunnel's adapters): the path and format of the POST, and routes by
//! recipient.

use serde::{Deserialize, Serialize};

/// How a tunnel wants its mail: the POST the SMTP adapter builds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailSettings {
    /// The path mail is POSTed to (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `json` (default), `multipart` or `raw`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Recipient patterns to paths, tried in order; the first match gives
    /// the path, and a recipient no route matches goes to `path`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<MailRoute>,
}

/// One mail route: recipients matching `pattern` are POSTed to `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailRoute {
    /// A recipient address pattern, case-insensitive, where `*` matches any
    /// run of characters: `support@*`, `*+orders@*`, `*`.
    pub pattern: String,
    /// The path the matching mail is POSTed to, e.g. `/support`.
    pub path: String,
}

impl MailRoute {
    /// Whether `recipient` (a bare address, `<>` optional) matches the pattern.
    pub fn matches(&self, recipient: &str) -> bool {
        let recipient = recipient
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_ascii_lowercase();
        glob(&self.pattern.to_ascii_lowercase(), &recipient)
    }
}

/// `*`-only wildcard matching, linear in practice (greedy with backtracking
/// to the last star).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_routes_match_recipient_patterns() {
        let route = |pattern: &str| MailRoute {
            pattern: pattern.into(),
            path: "/p".into(),
        };
        assert!(route("support@*").matches("Support@Shop.Example.com"));
        assert!(route("support@*").matches("<support@x>"));
        assert!(!route("support@*").matches("support+tag@x"));
        assert!(route("*+orders@*").matches("ann+orders@x"));
        assert!(route("*").matches("anyone@anywhere"));
        assert!(route("a*b*c@x").matches("abxbyc@x"));
        assert!(!route("a*b*c@x").matches("abxbyd@x"));
        assert!(!route("exact@x").matches("exact@xy"));
        let m: MailSettings = serde_json::from_str(r#"{"path":"/in"}"#).unwrap();
        assert!(m.routes.is_empty());
        let json = serde_json::to_string(&MailSettings::default()).unwrap();
        assert_eq!(json, "{}");
    }
}
