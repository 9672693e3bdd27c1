//! The visible reply in a mail body: quoted history and signature removed
//! where they can be recognised.
//!
//! Heuristics in the manner of GitHub's `email_reply_parser` and Mailgun's
//! `stripped-text`:
//! - everything from a quote header on is history: `On <date>, <name> wrote:`
//!   (also split over two lines, and in a few other languages), `-----Original
//!   Message-----`, an Outlook `From:`/`Sent:` block;
//! - lines quoted with `>` are history;
//! - a signature starts at the `-- ` delimiter line, or is a trailing
//!   `Sent from my ...` line.
//!
//! When nothing is recognised the whole text is the reply.

/// The reply text and, when one was recognised, the signature.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// The visible reply, trimmed, with `\n` line ends.
    pub text: String,
    /// The signature, without its delimiter line.
    pub signature: Option<String>,
}

const WROTE_MARKERS: &[&str] = &[
    "wrote:",
    "a écrit :",
    "a écrit:",
    "schrieb:",
    "escribió:",
    "scrisse:",
    "napisał(a):",
    "escreveu:",
    "schreef:",
    "skrev:",
];

fn ends_with_wrote(line: &str) -> bool {
    let lower = line.trim_end().to_lowercase();
    WROTE_MARKERS.iter().any(|m| lower.ends_with(m))
}

fn is_quote_header(lines: &[&str], i: usize) -> bool {
    let line = lines[i].trim();
    // Every header below starts with one of these (in either case): most
    // lines are ruled out without being lowercased.
    let candidate = line.bytes().next().is_some_and(|b| {
        matches!(
            b.to_ascii_lowercase(),
            b'o' | b'l' | b'a' | b'e' | b'i' | b'd' | b'w' | b'f' | b'-'
        )
    });
    if !candidate {
        return false;
    }
    let lower = line.to_lowercase();
    if lower.starts_with('>') {
        return false;
    }
    // "On Tue, 1 Jan 2030 at 10:00, Ann <ann@example.com> wrote:", perhaps
    // wrapped over two lines.
    let starts_like_attribution = [
        "on ", "le ", "am ", "el ", "il ", "em ", "op ", "den ", "w dniu ",
    ]
    .iter()
    .any(|p| lower.starts_with(p));
    if starts_like_attribution {
        if ends_with_wrote(line) {
            return true;
        }
        if let Some(next) = lines.get(i + 1)
            && ends_with_wrote(next)
            && !next.trim_start().starts_with('>')
        {
            return true;
        }
    }
    if lower.trim_matches('-').trim() == "original message" && lower.starts_with("---") {
        return true;
    }
    // Outlook: "From: ..." followed by "Sent:"/"Date:" and "Subject:" lines.
    if lower.starts_with("from:") {
        let block: Vec<String> = lines
            .iter()
            .skip(i + 1)
            .take(5)
            .map(|l| l.trim().to_lowercase())
            .collect();
        let has = |p: &str| block.iter().any(|l| l.starts_with(p));
        if (has("sent:") || has("date:")) && has("subject:") {
            return true;
        }
    }
    false
}

fn is_signature_start(line: &str) -> bool {
    line == "-- " || line.trim_end() == "--"
}

fn is_mobile_signature(line: &str) -> bool {
    let lower = line.trim().to_lowercase();
    lower.starts_with("sent from my ") || lower.starts_with("get outlook for ")
}

fn trim_blank_lines(lines: &[&str]) -> String {
    let start = lines
        .iter()
        .position(|l| !l.trim().is_empty())
        .unwrap_or(lines.len());
    let end = lines
        .iter()
        .rposition(|l| !l.trim().is_empty())
        .map_or(start, |e| e + 1);
    lines[start..end.max(start)]
        .iter()
        .map(|l| l.trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Splits `body` (a plain-text mail body) into the visible reply and the
/// signature.
pub fn extract(body: &str) -> Reply {
    let all: Vec<&str> = body
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    // 1. Cut at the first quote header or Outlook separator.
    let mut end = all.len();
    for i in 0..all.len() {
        let line = all[i].trim();
        let underline = line.len() >= 20 && line.chars().all(|c| c == '_');
        if is_quote_header(&all, i)
            || (underline
                && all
                    .get(i + 1)
                    .is_some_and(|n| n.trim().to_lowercase().starts_with("from:")))
        {
            end = i;
            break;
        }
    }
    // 2. Drop quoted lines.
    let unquoted: Vec<&str> = all[..end]
        .iter()
        .copied()
        .filter(|l| !l.trim_start().starts_with('>'))
        .collect();
    // 3. Split off the signature.
    let mut signature = None;
    let mut text_end = unquoted.len();
    if let Some(pos) = unquoted.iter().position(|l| is_signature_start(l)) {
        let sig = trim_blank_lines(&unquoted[pos + 1..]);
        signature = (!sig.is_empty()).then_some(sig);
        text_end = pos;
    } else if let Some(pos) = unquoted.iter().rposition(|l| !l.trim().is_empty())
        && is_mobile_signature(unquoted[pos])
    {
        signature = Some(unquoted[pos].trim().to_string());
        text_end = pos;
    }
    Reply {
        text: trim_blank_lines(&unquoted[..text_end]),
        signature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmail_top_post() {
        let r = extract(
            "Sounds good, see you then.\r\n\r\nAnn\r\n\r\nOn Tue, Jan 1, 2030 at 10:00 AM Bob <bob@example.com>\r\nwrote:\r\n\r\n> Shall we meet?\r\n> Bob\r\n",
        );
        assert_eq!(r.text, "Sounds good, see you then.\n\nAnn");
        assert_eq!(r.signature, None);
    }

    #[test]
    fn signature_and_quote() {
        let r = extract("Yes.\n-- \nAnn Example\nACME\n\nOn Mon, Bob wrote:\n> ok?\n");
        assert_eq!(r.text, "Yes.");
        assert_eq!(r.signature.as_deref(), Some("Ann Example\nACME"));
    }

    #[test]
    fn outlook_and_mobile() {
        let r = extract(
            "Fine by me\n\nSent from my iPhone\n\n________________________________\nFrom: Bob\nSent: Monday\nSubject: x\n\nold",
        );
        assert_eq!(r.text, "Fine by me");
        assert_eq!(r.signature.as_deref(), Some("Sent from my iPhone"));
        let r = extract("Top\n-----Original Message-----\nFrom: Bob\nold text");
        assert_eq!(r.text, "Top");
        let r =
            extract("Merci\n\nLe lun. 1 janv. 2030 à 10:00, Bob <b@example.com> a écrit :\n> x");
        assert_eq!(r.text, "Merci");
    }

    #[test]
    fn plain_text_is_kept() {
        let r = extract("Hello,\n\nOn the other hand, we wrote code.\nThanks");
        assert_eq!(
            r.text,
            "Hello,\n\nOn the other hand, we wrote code.\nThanks"
        );
        assert_eq!(extract("").text, "");
    }
}
