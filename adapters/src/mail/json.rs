//! The JSON form of a mail: every field parsed, all text in UTF-8.
//!
//! See [`Mail`] for the fields. Example (abridged):
//! ```json
//! {"envelope":{"mail_from":"ann@example.com","rcpt_to":["inbox+42@otter.localhost"],
//!   "client_ip":"127.0.0.1","helo":"mx.example.com","tls":false,"received_at":1767225600},
//!  "message_id":"abc@example.com","date":"2030-01-01T10:00:00+00:00","subject":"Hi",
//!  "from":[{"name":"Ann","address":"ann@example.com"}],"to":[...],"cc":[],"reply_to":[],
//!  "bcc":[],"recipients":[{"address":"inbox+42@otter.localhost","local":"inbox",
//!  "plus":"42","domain":"otter.localhost"}],"in_reply_to":[],"references":[],
//!  "headers":[{"name":"Subject","value":"Hi"}],"text":"Hello\r\n","html":null,
//!  "reply_text":"Hello","signature":null,"attachments":[],"raw_size":312}
//! ```

use base64::Engine;
use mail_parser::{Address, HeaderValue, Message, MessageParser, MimeHeaders, PartType};
use serde::{Serialize, Serializer};

use super::{Envelope, decode, reply};

/// A parsed mail, as the JSON body of a delivery.
#[derive(Debug, Clone, Serialize)]
pub struct Mail {
    /// The SMTP envelope of this delivery (its TLS is in `tls`).
    #[serde(serialize_with = "envelope_alone")]
    pub envelope: Envelope,
    /// What the TLS of the SMTP session agreed on; `null` for mail that
    /// came in plain text.
    pub tls: Option<crate::adapter::TlsSession>,
    /// What SPF, DKIM, DMARC and ARC said of it; `null` where the server
    /// does not check.
    pub auth: Option<Box<crate::smtp::auth::AuthResults>>,
    /// The `Message-ID`, without angle brackets.
    pub message_id: Option<String>,
    /// The `Date` header in RFC 3339.
    pub date: Option<String>,
    /// The decoded subject.
    pub subject: Option<String>,
    /// `From` addresses.
    pub from: Vec<Mailbox>,
    /// `To` addresses.
    pub to: Vec<Mailbox>,
    /// `Cc` addresses.
    pub cc: Vec<Mailbox>,
    /// `Reply-To` addresses.
    pub reply_to: Vec<Mailbox>,
    /// Envelope recipients that are neither in `To` nor in `Cc`.
    pub bcc: Vec<Mailbox>,
    /// Envelope recipients split into local part, plus tag and domain.
    pub recipients: Vec<Recipient>,
    /// `In-Reply-To` message ids.
    pub in_reply_to: Vec<String>,
    /// `References` message ids.
    pub references: Vec<String>,
    /// Every header of the message, in order, with decoded values.
    pub headers: Vec<HeaderField>,
    /// The text body, when the message has a real text/plain part.
    pub text: Option<String>,
    /// The HTML body, when the message has a real text/html part.
    pub html: Option<String>,
    /// The visible reply: the text (or the HTML as text) without quoted
    /// history and signature.
    pub reply_text: Option<String>,
    /// The signature, when one was recognised.
    pub signature: Option<String>,
    /// Attachments, inline parts and attached messages.
    pub attachments: Vec<Attachment>,
    /// The size of the raw message in bytes.
    pub raw_size: usize,
    /// Set when the message could not be parsed as a mail at all; the other
    /// fields are then mostly empty and `text` holds the raw bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parse_error: Option<String>,
}

fn envelope_alone<S: Serializer>(envelope: &Envelope, s: S) -> Result<S::Ok, S::Error> {
    Envelope {
        tls_session: None,
        auth: None,
        ..envelope.clone()
    }
    .serialize(s)
}

/// A name and an address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mailbox {
    /// The display name, decoded.
    pub name: Option<String>,
    /// The address, when there is one.
    pub address: Option<String>,
}

/// An envelope recipient split into its parts: `local+plus@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recipient {
    /// The whole address.
    pub address: String,
    /// The local part without the plus tag.
    pub local: String,
    /// The part after the first `+` of the local part (`user+hash@`).
    pub plus: Option<String>,
    /// The domain.
    pub domain: String,
}

/// One header field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderField {
    /// The name as written in the message.
    pub name: String,
    /// The value, unfolded, with encoded words and charsets decoded.
    pub value: String,
}

/// One attachment.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    /// The file name, decoded.
    pub filename: Option<String>,
    /// `type/subtype`.
    pub content_type: String,
    /// The decoded size in bytes.
    pub size: usize,
    /// The `Content-ID`, without angle brackets.
    pub content_id: Option<String>,
    /// Whether the part is inline (for example an image the HTML refers to).
    pub inline: bool,
    /// The content in base64, unless it is above the inline limit.
    pub content: Option<String>,
    /// Why `content` is missing, when it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_omitted: Option<String>,
    /// The decoded bytes, for the multipart form (not serialised).
    #[serde(skip)]
    pub bytes: Vec<u8>,
}

/// Splits an envelope recipient into local part, plus tag and domain.
pub fn recipient(address: &str) -> Recipient {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let (local_base, plus) = match local.split_once('+') {
        Some((base, tag)) => (base, Some(tag.to_string())),
        None => (local, None),
    };
    Recipient {
        address: address.to_string(),
        local: local_base.to_string(),
        plus,
        domain: domain.to_string(),
    }
}

fn mailboxes(address: Option<&Address<'_>>) -> Vec<Mailbox> {
    address
        .map(|a| {
            a.iter()
                .map(|addr| Mailbox {
                    name: addr.name().map(str::to_string),
                    address: addr.address().map(str::to_string),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn id_list(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(list) => list.iter().map(|t| t.to_string()).collect(),
        _ => Vec::new(),
    }
}

/// The header value between `start` and `end`, unfolded and decoded.
fn decoded_header(raw: &[u8], start: u32, end: u32) -> String {
    let (Ok(start), Ok(end)) = (usize::try_from(start), usize::try_from(end)) else {
        return String::new();
    };
    let Some(bytes) = raw.get(start..end) else {
        return String::new();
    };
    match mail_parser::parsers::MessageStream::new(bytes).parse_unstructured() {
        HeaderValue::Text(text) => text.trim().to_string(),
        _ => String::from_utf8_lossy(bytes).trim().to_string(),
    }
}

fn attachment(
    message: &Message<'_>,
    part: &mail_parser::MessagePart<'_>,
    max_inline: usize,
) -> Attachment {
    let bytes = decode::part_bytes(message, part).into_owned();
    let content_type = match (part.content_type(), &part.body) {
        (Some(ct), _) => match &ct.c_subtype {
            Some(sub) => format!("{}/{}", ct.c_type, sub).to_ascii_lowercase(),
            None => ct.c_type.to_ascii_lowercase(),
        },
        (None, PartType::Message(_)) => "message/rfc822".into(),
        (None, PartType::Text(_)) => "text/plain".into(),
        (None, PartType::Html(_)) => "text/html".into(),
        (None, _) => "application/octet-stream".into(),
    };
    let filename = part
        .attachment_name()
        .map(str::to_string)
        .or_else(|| match &part.body {
            PartType::Message(nested) => nested.subject().map(|s| format!("{s}.eml")),
            _ => None,
        });
    let content_id = part
        .content_id()
        .map(|id| id.trim_matches(['<', '>', ' ']).to_string());
    let disposition = part
        .content_disposition()
        .map(|d| d.c_type.to_ascii_lowercase());
    let inline = match disposition.as_deref() {
        Some("inline") => true,
        Some(_) => false,
        None => content_id.is_some() || matches!(part.body, PartType::InlineBinary(_)),
    };
    let size = bytes.len();
    let (content, content_omitted) = if size <= max_inline {
        (
            Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
            None,
        )
    } else {
        (
            None,
            Some(format!(
                "content of {size} bytes is above the inline limit of {max_inline} bytes"
            )),
        )
    };
    Attachment {
        filename,
        content_type,
        size,
        content_id,
        inline,
        content,
        content_omitted,
        bytes,
    }
}

/// Parses `raw` into a [`Mail`]. Never panics and never fails: a message
/// mail-parser rejects (no header at all, for one) gives a `Mail` with
/// `parse_error` set and the raw bytes as `text`.
pub fn parse(raw: &[u8], envelope: &Envelope, max_attachment_inline: usize) -> Mail {
    let recipients: Vec<Recipient> = envelope.rcpt_to.iter().map(|r| recipient(r)).collect();
    let Some(message) = MessageParser::default().parse(raw) else {
        let text = String::from_utf8_lossy(raw).into_owned();
        let reply = reply::extract(&text);
        return Mail {
            envelope: envelope.clone(),
            tls: envelope.tls_session.clone(),
            auth: envelope.auth.clone(),
            message_id: None,
            date: None,
            subject: None,
            from: Vec::new(),
            to: Vec::new(),
            cc: Vec::new(),
            reply_to: Vec::new(),
            bcc: envelope
                .rcpt_to
                .iter()
                .map(|r| Mailbox {
                    name: None,
                    address: Some(r.clone()),
                })
                .collect(),
            recipients,
            in_reply_to: Vec::new(),
            references: Vec::new(),
            headers: Vec::new(),
            text: Some(text),
            html: None,
            reply_text: Some(reply.text),
            signature: reply.signature,
            attachments: Vec::new(),
            raw_size: raw.len(),
            parse_error: Some("not an RFC 5322 message: no header found".into()),
        };
    };

    let from = mailboxes(message.from());
    let to = mailboxes(message.to());
    let cc = mailboxes(message.cc());
    let reply_to = mailboxes(message.reply_to());
    let visible: Vec<String> = to
        .iter()
        .chain(cc.iter())
        .filter_map(|m| m.address.as_deref().map(str::to_lowercase))
        .collect();
    let bcc = envelope
        .rcpt_to
        .iter()
        .filter(|r| !visible.contains(&r.to_lowercase()))
        .map(|r| Mailbox {
            name: None,
            address: Some(r.clone()),
        })
        .collect();

    let headers = message
        .headers()
        .iter()
        .map(|h| HeaderField {
            name: h.name().to_string(),
            value: decoded_header(message.raw_message(), h.offset_start, h.offset_end),
        })
        .collect();

    // mail-parser lists a text part among the html bodies (and the reverse)
    // and synthesizes the missing one: keep only parts of the real type.
    let collect_parts = |ids: &[u32], html: bool| -> Option<String> {
        let texts: Vec<String> = ids
            .iter()
            .filter_map(|id| message.parts.get(usize::try_from(*id).ok()?))
            .filter(|p| {
                matches!(
                    (&p.body, html),
                    (PartType::Text(_), false) | (PartType::Html(_), true)
                )
            })
            .map(|p| decode::part_text(&message, p))
            .collect();
        (!texts.is_empty()).then(|| texts.join("\n"))
    };
    let text = collect_parts(&message.text_body, false);
    let html = collect_parts(&message.html_body, true);
    let reply = match (&text, &html) {
        (Some(text), _) => Some(reply::extract(text)),
        (None, Some(html)) => Some(reply::extract(&mail_parser::decoders::html::html_to_text(
            html,
        ))),
        (None, None) => None,
    };
    let (reply_text, signature) = match reply {
        Some(r) => (Some(r.text), r.signature),
        None => (None, None),
    };

    let attachments = message
        .attachments()
        .map(|p| attachment(&message, p, max_attachment_inline))
        .collect();

    Mail {
        envelope: envelope.clone(),
        tls: envelope.tls_session.clone(),
        auth: envelope.auth.clone(),
        message_id: message.message_id().map(str::to_string),
        date: message.date().map(|d| d.to_rfc3339()),
        subject: message.subject().map(str::to_string),
        from,
        to,
        cc,
        reply_to,
        bcc,
        recipients,
        in_reply_to: id_list(message.in_reply_to()),
        references: id_list(message.references()),
        headers,
        text,
        html,
        reply_text,
        signature,
        attachments,
        raw_size: raw.len(),
        parse_error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(rcpts: &[&str]) -> Envelope {
        Envelope {
            mail_from: "ann@example.com".into(),
            rcpt_to: rcpts.iter().map(|s| s.to_string()).collect(),
            client_ip: "127.0.0.1".into(),
            helo: "client".into(),
            tls: false,
            tls_session: None,
            auth: None,
            received_at: 0,
        }
    }

    #[test]
    fn fields() {
        let raw = "From: =?utf-8?q?Ann_=C3=89?= <ann@example.com>\r\nTo: bob@example.com, \"Carl\" <carl@example.com>\r\nCc: dan@example.com\r\nReply-To: r@example.com\r\nSubject: =?utf-8?b?SGVsbG8g8J+Ygg==?=\r\nMessage-ID: <id1@example.com>\r\nIn-Reply-To: <id0@example.com>\r\nReferences: <a@x> <id0@example.com>\r\nDate: Tue, 1 Jan 2030 10:00:00 +0000\r\nX-Custom: =?iso-8859-1?q?caf=E9?=\r\n  folded\r\n\r\nHi Bob\r\n\r\nOn Mon, Bob wrote:\r\n> old\r\n";
        let mail = parse(
            raw.as_bytes(),
            &envelope(&["bob@example.com", "eve+tag1@example.com"]),
            1024,
        );
        assert_eq!(mail.subject.as_deref(), Some("Hello 😂"));
        assert_eq!(mail.from[0].name.as_deref(), Some("Ann É"));
        assert_eq!(mail.to.len(), 2);
        assert_eq!(mail.cc[0].address.as_deref(), Some("dan@example.com"));
        assert_eq!(
            mail.bcc,
            vec![Mailbox {
                name: None,
                address: Some("eve+tag1@example.com".into())
            }]
        );
        assert_eq!(mail.recipients[1].plus.as_deref(), Some("tag1"));
        assert_eq!(mail.recipients[1].local, "eve");
        assert_eq!(mail.message_id.as_deref(), Some("id1@example.com"));
        assert_eq!(mail.in_reply_to, vec!["id0@example.com"]);
        assert_eq!(mail.references, vec!["a@x", "id0@example.com"]);
        assert_eq!(mail.date.as_deref(), Some("2030-01-01T10:00:00Z"));
        let custom = mail.headers.iter().find(|h| h.name == "X-Custom").unwrap();
        assert_eq!(custom.value, "café folded");
        assert_eq!(mail.headers.len(), 10);
        assert!(mail.html.is_none());
        assert_eq!(mail.reply_text.as_deref(), Some("Hi Bob"));
    }

    #[test]
    fn html_only_and_no_header() {
        let raw = "Subject: x\r\nContent-Type: text/html\r\n\r\n<p>Hello <b>there</b></p>\r\n";
        let mail = parse(raw.as_bytes(), &envelope(&["a@b"]), 10);
        assert!(mail.text.is_none());
        assert!(mail.html.as_deref().unwrap().contains("<b>there</b>"));
        assert!(mail.reply_text.as_deref().unwrap().contains("Hello there"));
        let mail = parse(b"just text\r\n", &envelope(&["a@b"]), 10);
        assert!(mail.parse_error.is_some());
        assert_eq!(mail.text.as_deref(), Some("just text\r\n"));
    }

    #[test]
    fn attachment_limit() {
        let raw = "Subject: a\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\nContent-ID: <img1>\r\nContent-Disposition: inline; filename=a.png\r\n\r\nAAEC/w\r\n--XX\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"=?utf-8?q?r=C3=A9sum=C3=A9.pdf?=\"\r\n\r\nAAECAwQFBgcICQ==\r\n--XX--\r\n";
        let mail = parse(raw.as_bytes(), &envelope(&["a@b"]), 4);
        assert_eq!(mail.text.as_deref(), Some("hello"));
        let a = &mail.attachments[0];
        assert_eq!(
            (a.filename.as_deref(), a.content_type.as_str(), a.size),
            (Some("a.png"), "image/png", 4)
        );
        assert_eq!(a.content.as_deref(), Some("AAEC/w=="));
        assert!(a.inline);
        assert_eq!(a.content_id.as_deref(), Some("img1"));
        let b = &mail.attachments[1];
        assert_eq!(b.filename.as_deref(), Some("résumé.pdf"));
        assert_eq!(b.size, 10);
        assert!(b.content.is_none() && b.content_omitted.is_some());
        assert!(!b.inline);
    }
}
