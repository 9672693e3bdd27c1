//! Mail an app sends, in Postmark's JSON shape (`POST /email` on its
//! client, which calls this adapter's `send`; `/email/batch` calls
//! `send-batch`).
//!
//! A message is checked (its `From` must be at the calling tunnel's own
//! mail domain, `anything@NAME.DOMAIN`: no open relay, no spoofing), built
//! as MIME, and its recipients split: those at one of this server's
//! tunnels get it as any received mail (through the same delivery and
//! spool), the others go to the server's relay. Without a relay, a public
//! server refuses mail for other domains; the server inside `droid http`
//! catches it instead (nothing leaves the machine unless asked).

use std::time::SystemTime;

use base64::Engine as _;
use bytes::Bytes;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment, Mailbox, Mailboxes, MultiPart, SinglePart};
use lettre::{Address, Message};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::route::Destination;

/// One message, as Postmark's API takes it (fields it has that Droid does
/// not use, like `TrackOpens`, are accepted and ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Email {
    /// `ann@NAME.DOMAIN` or `Ann <ann@NAME.DOMAIN>`.
    pub from: String,
    /// Comma-separated recipients.
    pub to: Option<String>,
    /// Comma-separated copies.
    pub cc: Option<String>,
    /// Comma-separated blind copies (in the envelope, not the headers).
    pub bcc: Option<String>,
    /// The subject, any UTF-8.
    pub subject: Option<String>,
    /// The plain-text body.
    pub text_body: Option<String>,
    /// The HTML body.
    pub html_body: Option<String>,
    /// Where replies go.
    pub reply_to: Option<String>,
    /// More headers (`In-Reply-To`, `References`...).
    #[serde(default)]
    pub headers: Vec<NameValue>,
    /// Files, base64.
    #[serde(default)]
    pub attachments: Vec<PostmarkAttachment>,
    /// Postmark's tag; accepted, not sent.
    pub tag: Option<String>,
    /// Postmark's metadata; accepted, not sent.
    pub metadata: Option<Value>,
}

/// `{"Name": ..., "Value": ...}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NameValue {
    /// The header's name.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// `{"Name", "Content" (base64), "ContentType", "ContentID"}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PostmarkAttachment {
    /// The file name.
    pub name: String,
    /// The bytes, base64.
    pub content: String,
    /// Its media type (default `application/octet-stream`).
    pub content_type: Option<String>,
    /// `cid:...` (with or without the prefix): an inline part the HTML
    /// refers to.
    #[serde(rename = "ContentID")]
    pub content_id: Option<String>,
}

/// Why a message is not sent: the status the app gets, Postmark's
/// `ErrorCode`, and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The HTTP status.
    pub status: u16,
    /// Postmark's error code (300: invalid request; 400: the sender is
    /// not allowed; 405: sending not allowed here; 429: too many; 701:
    /// the relay refused or cannot be reached).
    pub code: u16,
    /// What to do about it.
    pub message: String,
}

impl Refused {
    /// A request that cannot be sent as it is (422, code 300).
    pub fn invalid(message: impl Into<String>) -> Refused {
        Refused {
            status: 422,
            code: 300,
            message: message.into(),
        }
    }

    /// The answer's body, in Postmark's shape.
    pub fn body(&self) -> Value {
        json!({ "ErrorCode": self.code, "Message": self.message })
    }
}

/// Recipients of one message (Postmark's limit).
pub const MAX_RECIPIENTS: usize = 50;

/// Headers the message gets from the other fields; the app may not set
/// them in `Headers`.
const OWN_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "reply-to",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// A message built, ready to go.
pub struct Built {
    /// The MIME bytes.
    pub raw: Bytes,
    /// The envelope sender.
    pub from: Address,
    /// Every envelope recipient (To, Cc and Bcc).
    pub recipients: Vec<Address>,
    /// `Message-ID`, without angle brackets.
    pub message_id: String,
    /// The `To` field as given, for the answer.
    pub to: String,
}

fn mailboxes(field: &str, value: Option<&str>) -> Result<Vec<Mailbox>, Refused> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(Vec::new()),
        Some(list) => list
            .parse::<Mailboxes>()
            .map(|m| m.into_iter().collect())
            .map_err(|e| Refused::invalid(format!("`{field}` is not a list of addresses: {e}"))),
    }
}

/// The tunnel of `callers` whose mail domain `from` is at, if any.
pub fn sender_tunnel<'a>(
    from: &Address,
    callers: &'a [Destination],
    domain: &str,
) -> Option<&'a Destination> {
    let at = from.domain().to_ascii_lowercase();
    callers
        .iter()
        .find(|t| at == format!("{}.{}", t.name, domain).to_ascii_lowercase())
}

/// Builds `email` as MIME, its `Message-ID` at `id_domain`.
pub fn build(email: &Email, id_domain: &str) -> Result<Built, Refused> {
    let from: Mailbox = email
        .from
        .parse()
        .map_err(|e| Refused::invalid(format!("`From` is not an address: {e}")))?;
    let to = mailboxes("To", email.to.as_deref())?;
    let cc = mailboxes("Cc", email.cc.as_deref())?;
    let bcc = mailboxes("Bcc", email.bcc.as_deref())?;
    if to.is_empty() && cc.is_empty() && bcc.is_empty() {
        return Err(Refused::invalid("no recipients: give `To`, `Cc` or `Bcc`"));
    }
    let count = to.len() + cc.len() + bcc.len();
    if count > MAX_RECIPIENTS {
        return Err(Refused::invalid(format!(
            "{count} recipients; a message takes at most {MAX_RECIPIENTS} (To, Cc and Bcc together)"
        )));
    }
    let message_id = format!(
        "{}@{id_domain}",
        ulid::Ulid::generate().to_string().to_lowercase()
    );
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(email.subject.clone().unwrap_or_default())
        .message_id(Some(format!("<{message_id}>")))
        .date_now();
    for mailbox in &to {
        builder = builder.to(mailbox.clone());
    }
    for mailbox in &cc {
        builder = builder.cc(mailbox.clone());
    }
    for mailbox in &bcc {
        builder = builder.bcc(mailbox.clone());
    }
    for mailbox in mailboxes("ReplyTo", email.reply_to.as_deref())? {
        builder = builder.reply_to(mailbox);
    }
    for header in &email.headers {
        builder = builder.raw_header(header_value(header)?);
    }
    let message = builder
        .multipart(body(email)?)
        .map_err(|e| Refused::invalid(format!("the message cannot be built: {e}")))?;
    let recipients = to
        .iter()
        .chain(&cc)
        .chain(&bcc)
        .map(|m| m.email.clone())
        .collect();
    Ok(Built {
        raw: Bytes::from(message.formatted()),
        from: from.email,
        recipients,
        message_id,
        to: email.to.clone().unwrap_or_default(),
    })
}

/// Headers that say what a server found (authentication, the path), which
/// an app may not write: its mail would reach other tunnels' apps looking
/// checked.
const TRUST_HEADERS: &[&str] = &[
    "authentication-results",
    "dkim-signature",
    "received",
    "return-path",
    "sender",
];

/// Prefixes of more such headers.
const TRUST_PREFIXES: &[&str] = &["arc-", "resent-", "droid-"];

fn header_value(header: &NameValue) -> Result<HeaderValue, Refused> {
    let name = header.name.as_str();
    // RFC 5322 §2.2: printable ASCII but the colon; nothing else, or a
    // line break in a name would start a header of its own.
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
        return Err(Refused::invalid(format!(
            "{name:?} is not a header name (printable ASCII, no colon or space)"
        )));
    }
    let lower = name.to_ascii_lowercase();
    if OWN_HEADERS.contains(&lower.as_str()) {
        return Err(Refused::invalid(format!(
            "`{name}` comes from the message's own field; leave it out of `Headers`"
        )));
    }
    if TRUST_HEADERS.contains(&lower.as_str())
        || TRUST_PREFIXES.iter().any(|p| lower.starts_with(p))
    {
        return Err(Refused::invalid(format!(
            "`{name}` is a header servers write about a mail, not its sender; leave it out of `Headers`"
        )));
    }
    if header.value.contains(['\r', '\n']) {
        return Err(Refused::invalid(format!(
            "the header `{name}` has a line break in its value"
        )));
    }
    let name = HeaderName::new_from_ascii(name.to_string())
        .map_err(|_| Refused::invalid(format!("`{name}` is not a header name")))?;
    Ok(HeaderValue::new(name, header.value.clone()))
}

/// The text and HTML (alternatives, with inline parts beside the HTML),
/// then the attachments.
fn body(email: &Email) -> Result<MultiPart, Refused> {
    let text = email.text_body.clone();
    let html = email.html_body.clone();
    let alternatives = match (text, html) {
        (Some(text), Some(html)) => MultiPart::alternative_plain_html(text, html),
        (None, Some(html)) => MultiPart::alternative().singlepart(SinglePart::html(html)),
        (text, None) => {
            MultiPart::alternative().singlepart(SinglePart::plain(text.unwrap_or_default()))
        }
    };
    let mut inline = Vec::new();
    let mut files = Vec::new();
    for attachment in &email.attachments {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(attachment.content.trim())
            .map_err(|e| {
                Refused::invalid(format!(
                    "the attachment `{}` is not base64: {e}",
                    attachment.name
                ))
            })?;
        let media = attachment
            .content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        let content_type = ContentType::parse(media).map_err(|_| {
            Refused::invalid(format!(
                "the attachment `{}` has no valid ContentType",
                attachment.name
            ))
        })?;
        match attachment.content_id.as_deref() {
            Some(cid) => {
                let cid = cid.trim_start_matches("cid:").to_string();
                inline.push(
                    Attachment::new_inline_with_name(cid, attachment.name.clone())
                        .body(bytes, content_type),
                );
            }
            None => files.push(Attachment::new(attachment.name.clone()).body(bytes, content_type)),
        }
    }
    let with_inline = if inline.is_empty() {
        alternatives
    } else {
        inline
            .into_iter()
            .fold(MultiPart::related().multipart(alternatives), |m, part| {
                m.singlepart(part)
            })
    };
    Ok(files
        .into_iter()
        .fold(MultiPart::mixed().multipart(with_inline), |m, part| {
            m.singlepart(part)
        }))
}

/// The answer to a message sent, in Postmark's shape.
pub fn sent(built: &Built, message: &str) -> Value {
    json!({
        "To": built.to,
        "SubmittedAt": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        "MessageID": built.message_id,
        "ErrorCode": 0,
        "Message": message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn email(json: Value) -> Email {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_message_is_built_with_its_recipients_and_headers() {
        let built = build(
            &email(json!({
                "From": "Ann <ann@app.droid.test>", "To": "bob@example.com, Cy <cy@example.org>",
                "Bcc": "hidden@example.net", "Subject": "Grüße", "TextBody": "hi",
                "Headers": [{"Name": "In-Reply-To", "Value": "<a1@example.com>"}],
                "Attachments": [{"Name": "a.bin", "Content": "AAEC", "ContentType": "application/octet-stream"}],
            })),
            "app.droid.test",
        )
        .unwrap();
        let text = String::from_utf8_lossy(&built.raw);
        assert!(text.contains("In-Reply-To: <a1@example.com>"), "{text}");
        assert!(
            !text.contains("hidden@example.net"),
            "Bcc stays out of the headers"
        );
        assert_eq!(built.recipients.len(), 3);
        assert!(built.message_id.ends_with("@app.droid.test"));
    }

    #[test]
    fn bad_input_is_refused_with_a_sentence() {
        let no_rcpt = build(&email(json!({"From": "a@x.t"})), "x.t")
            .err()
            .unwrap();
        assert_eq!((no_rcpt.status, no_rcpt.code), (422, 300));
        let own = build(
            &email(json!({"From": "a@x.t", "To": "b@y.t", "Headers": [{"Name": "From", "Value": "e@vil"}]})),
            "x.t",
        )
        .err()
        .unwrap();
        assert!(own.message.contains("`From`"), "{own:?}");
        let many: Vec<String> = (0..=MAX_RECIPIENTS).map(|i| format!("r{i}@y.t")).collect();
        let crowd = build(
            &email(json!({"From": "a@x.t", "Bcc": many.join(", ")})),
            "x.t",
        )
        .err()
        .unwrap();
        assert!(crowd.message.contains("at most 50"), "{crowd:?}");
        let named = build(
            &email(json!({"From": "a@x.t", "To": "b@y.t", "Headers": [{"Name": "X\r\nFrom", "Value": "ceo@bank"}]})),
            "x.t",
        )
        .err()
        .unwrap();
        assert!(named.message.contains("not a header name"), "{named:?}");
        let trust = build(
            &email(json!({"From": "a@x.t", "To": "b@y.t", "Headers": [{"Name": "Authentication-Results", "Value": "x; dmarc=pass"}]})),
            "x.t",
        )
        .err()
        .unwrap();
        assert!(trust.message.contains("servers write"), "{trust:?}");
        let injected = build(
            &email(json!({"From": "a@x.t", "To": "b@y.t", "Headers": [{"Name": "X-A", "Value": "v\r\nBcc: e@vil"}]})),
            "x.t",
        )
        .err()
        .unwrap();
        assert!(injected.message.contains("line break"), "{injected:?}");
    }
}
