//! One syslog message, read as RFC 5424, else as RFC 3164, else as it is.
//!
//! Nothing is refused here: a message that fits neither RFC is delivered
//! with `format: "raw"` and the priority RFC 3164 gives a message without
//! one (user.notice). Fields a message leaves out are `None`.

use serde::Serialize;
use serde_json::{Map, Value};

/// Which RFC a message was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The IETF syslog protocol (`<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD MSG`).
    Rfc5424,
    /// The BSD syslog format (`<PRI>Mmm dd hh:mm:ss HOST TAG[PID]: MSG`).
    Rfc3164,
    /// Neither: the whole text is the message.
    Raw,
}

/// A message, read.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parsed {
    /// 0 (kern) to 23 (local7).
    pub facility: u8,
    /// 0 (emerg) to 7 (debug).
    pub severity: u8,
    /// RFC 3339, as the sender wrote it (RFC 5424), or built from an RFC
    /// 3164 stamp taken as UTC in the current year.
    pub timestamp: Option<String>,
    /// The sender's host name.
    pub hostname: Option<String>,
    /// The program (RFC 3164: the tag).
    pub app_name: Option<String>,
    /// The process id, or any id the sender gives.
    pub procid: Option<String>,
    /// The kind of message (RFC 5424 only).
    pub msgid: Option<String>,
    /// SD-ID to its parameters (RFC 5424 only); a parameter given twice
    /// keeps its last value.
    pub structured_data: Map<String, Value>,
    /// The free text, UTF-8 (invalid bytes replaced), without a BOM or a
    /// trailing newline.
    pub message: String,
    /// How it was read.
    pub format: Format,
}

/// RFC 3164's priority for a message without one: user.notice.
const DEFAULT_PRIORITY: u8 = 13;

/// Reads `bytes` as well as it can. `year` is the current year, for RFC
/// 3164 stamps (which have none).
pub fn parse(bytes: &[u8], year: i32) -> Parsed {
    let bytes = trim_end(bytes);
    let Some((priority, rest)) = priority(bytes) else {
        return raw(bytes);
    };
    rfc5424(priority, rest)
        .or_else(|| Some(rfc3164(priority, rest, year)))
        .unwrap_or_else(|| raw(bytes))
}

fn raw(bytes: &[u8]) -> Parsed {
    Parsed {
        facility: DEFAULT_PRIORITY >> 3,
        severity: DEFAULT_PRIORITY & 7,
        timestamp: None,
        hostname: None,
        app_name: None,
        procid: None,
        msgid: None,
        structured_data: Map::new(),
        message: String::from_utf8_lossy(bytes).into_owned(),
        format: Format::Raw,
    }
}

/// Drops what senders append: a newline, a carriage return, a NUL
/// (Python's `SysLogHandler`).
fn trim_end(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., b'\n' | b'\r' | b'\0'] = bytes {
        bytes = rest;
    }
    bytes
}

/// `<PRI>`: 1 to 3 digits, at most 191, no leading zero but `<0>`.
fn priority(bytes: &[u8]) -> Option<(u8, &[u8])> {
    let rest = bytes.strip_prefix(b"<")?;
    let end = rest.iter().take(4).position(|&b| b == b'>')?;
    let digits = &rest[..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return None;
    }
    let value: u16 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let value = u8::try_from(value).ok().filter(|&v| v <= 191)?;
    Some((value, &rest[end + 1..]))
}

fn with_priority(priority: u8, format: Format) -> Parsed {
    Parsed {
        facility: priority >> 3,
        severity: priority & 7,
        format,
        ..raw(b"")
    }
}

/// `1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [MSG]` after the PRI.
fn rfc5424(priority: u8, rest: &[u8]) -> Option<Parsed> {
    let rest = rest.strip_prefix(b"1 ")?;
    let mut fields = Fields(rest);
    let timestamp = fields.next(64)?;
    let timestamp = match timestamp {
        "-" => None,
        stamp if is_rfc3339(stamp) => Some(stamp.to_string()),
        _ => return None,
    };
    let hostname = nil(fields.next(255)?);
    let app_name = nil(fields.next(48)?);
    let procid = nil(fields.next(128)?);
    let msgid = nil(fields.next(32)?);
    let (structured_data, rest) = structured_data(fields.0)?;
    let message = match rest {
        [] => &[][..],
        [b' ', message @ ..] => message.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(message),
        _ => return None,
    };
    Some(Parsed {
        timestamp,
        hostname,
        app_name,
        procid,
        msgid,
        structured_data,
        message: String::from_utf8_lossy(message).into_owned(),
        ..with_priority(priority, Format::Rfc5424)
    })
}

/// The space-separated header fields of RFC 5424.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    /// The next field of at most `max` printable ASCII characters, and the
    /// space after it.
    fn next(&mut self, max: usize) -> Option<&'a str> {
        let end = self.0.iter().position(|&b| b == b' ')?;
        let field = &self.0[..end];
        if field.is_empty() || field.len() > max || !field.iter().all(|b| (33..=126).contains(b)) {
            return None;
        }
        self.0 = &self.0[end + 1..];
        std::str::from_utf8(field).ok()
    }
}

fn nil(field: &str) -> Option<String> {
    (field != "-").then(|| field.to_string())
}

/// `YYYY-MM-DDTHH:MM:SS[.1-6 digits](Z|+HH:MM|-HH:MM)`.
fn is_rfc3339(stamp: &str) -> bool {
    let b = stamp.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let shape = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && b.get(13) == Some(&b':')
        && digits(14..16)
        && b.get(16) == Some(&b':')
        && digits(17..19);
    if !shape {
        return false;
    }
    let mut rest = &b[19..];
    if let [b'.', tail @ ..] = rest {
        let fraction = tail.iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=6).contains(&fraction) {
            return false;
        }
        rest = &tail[fraction..];
    }
    match rest {
        [b'Z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit()),
        _ => false,
    }
}

/// `-`, or `[ID name="value" ...]` elements; returns them and what
/// follows.
fn structured_data(bytes: &[u8]) -> Option<(Map<String, Value>, &[u8])> {
    let mut map = Map::new();
    if let Some(rest) = bytes.strip_prefix(b"-") {
        return Some((map, rest));
    }
    let mut rest = bytes;
    while let Some(after) = rest.strip_prefix(b"[") {
        let (id, params, after) = element(after)?;
        let entry = map.entry(id).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(entry) = entry {
            entry.extend(params);
        }
        rest = after;
    }
    (!map.is_empty()).then_some((map, rest))
}

/// One element after its `[`: its id, its parameters, what follows `]`.
fn element(bytes: &[u8]) -> Option<(String, Map<String, Value>, &[u8])> {
    let name_end = |b: &[u8]| {
        b.iter()
            .position(|&c| matches!(c, b' ' | b']' | b'=' | b'"') || !(33..=126).contains(&c))
            .unwrap_or(b.len())
    };
    let end = name_end(bytes);
    if end == 0 || end > 32 {
        return None;
    }
    let id = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut rest = &bytes[end..];
    let mut params = Map::new();
    loop {
        match rest {
            [b']', after @ ..] => return Some((id, params, after)),
            [b' ', after @ ..] => {
                let end = name_end(after);
                if end == 0 || end > 32 {
                    return None;
                }
                let name = String::from_utf8_lossy(&after[..end]).into_owned();
                let value = after[end..].strip_prefix(b"=\"")?;
                let (value, after) = param_value(value)?;
                params.insert(name, Value::String(value));
                rest = after;
            }
            _ => return None,
        }
    }
}

/// A quoted value after its opening quote, with `\"`, `\\` and `\]`
/// unescaped; and what follows the closing quote.
fn param_value(bytes: &[u8]) -> Option<(String, &[u8])> {
    let mut value = Vec::new();
    let mut i = 0;
    while let Some(&c) = bytes.get(i) {
        match c {
            b'"' => {
                return Some((
                    String::from_utf8_lossy(&value).into_owned(),
                    &bytes[i + 1..],
                ));
            }
            b'\\' if matches!(bytes.get(i + 1), Some(b'"' | b'\\' | b']')) => {
                value.push(bytes[i + 1]);
                i += 2;
            }
            _ => {
                value.push(c);
                i += 1;
            }
        }
    }
    None
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `[Mmm dd hh:mm:ss HOSTNAME ]TAG[[PID]]: MSG` after the PRI. Without a
/// stamp, as Python's `SysLogHandler` sends, there is no host name either.
fn rfc3164(priority: u8, rest: &[u8], year: i32) -> Parsed {
    let mut parsed = with_priority(priority, Format::Rfc3164);
    let mut rest = rest;
    if let Some((stamp, after)) = bsd_stamp(rest, year) {
        parsed.timestamp = Some(stamp);
        rest = after;
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if end > 0 && rest[..end].iter().all(|b| (33..=126).contains(b)) {
            parsed.hostname = Some(String::from_utf8_lossy(&rest[..end]).into_owned());
            rest = rest.get(end + 1..).unwrap_or_default();
        }
    }
    if let Some((app, procid, message)) = tag(rest) {
        parsed.app_name = Some(app);
        parsed.procid = procid;
        rest = message;
    }
    parsed.message = String::from_utf8_lossy(rest).into_owned();
    parsed
}

/// `Mmm dd hh:mm:ss ` (the day padded with a space or a zero) as RFC 3339.
fn bsd_stamp(bytes: &[u8], year: i32) -> Option<(String, &[u8])> {
    let text = std::str::from_utf8(bytes.get(..16)?).ok()?;
    let month = MONTHS.iter().position(|m| text.starts_with(m))? + 1;
    let day: u32 = text.get(4..6)?.trim_start().parse().ok()?;
    let time = text.get(7..15)?;
    let t = time.as_bytes();
    let valid_time =
        t[2] == b':' && t[5] == b':' && [0, 1, 3, 4, 6, 7].iter().all(|&i| t[i].is_ascii_digit());
    if text.as_bytes()[3] != b' ' || text.as_bytes()[6] != b' ' || text.as_bytes()[15] != b' ' {
        return None;
    }
    if !(1..=31).contains(&day) || !valid_time {
        return None;
    }
    Some((
        format!("{year:04}-{month:02}-{day:02}T{time}Z"),
        &bytes[16..],
    ))
}

/// `TAG: `, `TAG[PID]: ` — a tag of up to 48 name characters.
fn tag(bytes: &[u8]) -> Option<(String, Option<String>, &[u8])> {
    let end = bytes
        .iter()
        .take(49)
        .position(|&b| matches!(b, b':' | b'[' | b' '))?;
    if end == 0 {
        return None;
    }
    let app = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let mut rest = &bytes[end..];
    let mut procid = None;
    if let Some(after) = rest.strip_prefix(b"[") {
        let close = after.iter().take(129).position(|&b| b == b']')?;
        procid = Some(String::from_utf8_lossy(&after[..close]).into_owned());
        rest = &after[close + 1..];
    }
    let rest = rest.strip_prefix(b":")?;
    Some((app, procid, rest.strip_prefix(b" ").unwrap_or(rest)))
}

/// The name of a facility number.
pub fn facility_name(facility: u8) -> &'static str {
    const NAMES: [&str; 24] = [
        "kern",
        "user",
        "mail",
        "daemon",
        "auth",
        "syslog",
        "lpr",
        "news",
        "uucp",
        "cron",
        "authpriv",
        "ftp",
        "ntp",
        "security",
        "console",
        "solaris-cron",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ];
    NAMES
        .get(usize::from(facility))
        .copied()
        .unwrap_or("unknown")
}

/// The name of a severity number.
pub fn severity_name(severity: u8) -> &'static str {
    const NAMES: [&str; 8] = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ];
    NAMES
        .get(usize::from(severity))
        .copied()
        .unwrap_or("unknown")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn rfc5424_with_structured_data_and_a_bom() {
        let line = b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Appli\\\"cation\"][other x=\"y\\]\"] \xEF\xBB\xBFAn application event\n";
        let p = parse(line, 2026);
        assert_eq!(p.format, Format::Rfc5424);
        assert_eq!((p.facility, p.severity), (20, 5));
        assert_eq!(p.timestamp.as_deref(), Some("2003-10-11T22:14:15.003Z"));
        assert_eq!(p.hostname.as_deref(), Some("mymachine.example.com"));
        assert_eq!(p.app_name.as_deref(), Some("evntslog"));
        assert_eq!(p.procid, None);
        assert_eq!(p.msgid.as_deref(), Some("ID47"));
        assert_eq!(
            Value::Object(p.structured_data),
            json!({"exampleSDID@32473": {"iut": "3", "eventSource": "Appli\"cation"}, "other": {"x": "y]"}})
        );
        assert_eq!(p.message, "An application event");
    }

    #[test]
    fn rfc5424_with_nil_fields_and_no_message() {
        let p = parse(b"<34>1 - - - - - -", 2026);
        assert_eq!(p.format, Format::Rfc5424);
        assert_eq!(p.timestamp, None);
        assert_eq!(p.message, "");
        let p = parse(b"<34>1 2026-12-07T10:00:00+02:00 host app 42 - - hi", 2026);
        assert_eq!(p.timestamp.as_deref(), Some("2026-12-07T10:00:00+02:00"));
        assert_eq!(p.procid.as_deref(), Some("42"));
    }

    #[test]
    fn rfc3164_as_logger_and_rsyslog_send_it() {
        let p = parse(b"<13>Dec  7 14:03:09 box alice[1234]: hello there", 2026);
        assert_eq!(p.format, Format::Rfc3164);
        assert_eq!((p.facility, p.severity), (1, 5));
        assert_eq!(p.timestamp.as_deref(), Some("2026-12-07T14:03:09Z"));
        assert_eq!(p.hostname.as_deref(), Some("box"));
        assert_eq!(p.app_name.as_deref(), Some("alice"));
        assert_eq!(p.procid.as_deref(), Some("1234"));
        assert_eq!(p.message, "hello there");
    }

    #[test]
    fn python_sysloghandler_has_no_stamp_and_a_nul() {
        let p = parse(b"<11>myapp: it broke\0", 2026);
        assert_eq!(p.format, Format::Rfc3164);
        assert_eq!((p.facility, p.severity), (1, 3));
        assert_eq!(p.timestamp, None);
        assert_eq!(p.hostname, None);
        assert_eq!(p.app_name.as_deref(), Some("myapp"));
        assert_eq!(p.message, "it broke");
        let p = parse(b"<14>just text", 2026);
        assert_eq!(p.format, Format::Rfc3164);
        assert_eq!(p.message, "just text");
    }

    #[test]
    fn anything_else_is_raw_and_kept() {
        for garbage in [
            &b"hello"[..],
            b"<999>1 x",
            b"<01>x",
            b"<>",
            b"",
            b"\xff\xfe\x00garbage",
        ] {
            let p = parse(garbage, 2026);
            assert_eq!(p.format, Format::Raw, "{garbage:?}");
            assert_eq!((p.facility, p.severity), (1, 5));
        }
        assert_eq!(parse(b"hello\r\n", 2026).message, "hello");
        // a bad RFC 5424 header falls back to RFC 3164, keeping the text
        let p = parse(b"<13>1 not-a-time host app - - - x", 2026);
        assert_eq!(p.format, Format::Rfc3164);
        assert_eq!(p.message, "1 not-a-time host app - - - x");
    }

    #[test]
    fn names() {
        assert_eq!(facility_name(0), "kern");
        assert_eq!(facility_name(23), "local7");
        assert_eq!(severity_name(3), "err");
        assert_eq!(severity_name(7), "debug");
    }
}
