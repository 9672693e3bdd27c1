//! The `multipart/form-data` form of a mail, for apps written for SendGrid
//! Inbound Parse or Mailgun Routes.
//!
//! Fields (text unless noted):
//! - SendGrid names: `from`, `to`, `cc`, `subject`, `text`, `html`, `headers`
//!   (the raw header block), `envelope` (JSON `{"to":[...],"from":"..."}`),
//!   `sender_ip`, `charsets` (JSON, always UTF-8), `attachments` (a count),
//!   `attachment-info` (JSON keyed by file field name), and one file part per
//!   attachment named `attachment1`, `attachment2`, ...
//! - Mailgun names: `recipient`, `sender`, `body-plain`, `body-html`,
//!   `stripped-text`, `stripped-signature`, `message-headers` (JSON list of
//!   `[name, value]`), `attachment-count`, `Message-Id`.
//! - Droid: `mail`, the whole JSON form without attachment contents.
//!
//! File parts carry every attachment whatever its size (the inline limit
//! only applies to base64 inside JSON).

use rand::RngExt;
use serde_json::json;

use super::json::{self, Mailbox};
use super::{Body, Envelope};

fn address_list(list: &[Mailbox]) -> String {
    list.iter()
        .map(|m| match (&m.name, &m.address) {
            (Some(n), Some(a)) => format!("\"{}\" <{a}>", n.replace('"', "'")),
            (None, Some(a)) => a.clone(),
            (Some(n), None) => n.clone(),
            (None, None) => String::new(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Quotes a form-data parameter value (HTML's rules: `"` and line ends are
/// percent-encoded).
fn quote(value: &str) -> String {
    value
        .replace('"', "%22")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

struct Form {
    boundary: String,
    bytes: Vec<u8>,
}

impl Form {
    fn field(&mut self, name: &str, value: &str) {
        self.bytes.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{}\"\r\n\r\n",
                self.boundary,
                quote(name)
            )
            .as_bytes(),
        );
        self.bytes.extend_from_slice(value.as_bytes());
        self.bytes.extend_from_slice(b"\r\n");
    }

    fn file(&mut self, name: &str, filename: &str, content_type: &str, content: &[u8]) {
        self.bytes.extend_from_slice(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{}\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n",
                self.boundary,
                quote(name),
                quote(filename),
                content_type.replace(['\r', '\n'], " ")
            )
            .as_bytes(),
        );
        self.bytes.extend_from_slice(content);
        self.bytes.extend_from_slice(b"\r\n");
    }
}

/// Renders the form for `raw`.
pub fn render(raw: &[u8], envelope: &Envelope, max_attachment_inline: usize) -> Body {
    let mut mail = json::parse(raw, envelope, max_attachment_inline);
    let boundary = format!("droid-{:032x}", rand::rng().random::<u128>());
    let mut form = Form {
        boundary,
        bytes: Vec::with_capacity(raw.len() * 2 + 4096),
    };

    let header_block = {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).into_owned()
    };
    let text = mail.text.clone().unwrap_or_default();
    let html = mail.html.clone().unwrap_or_default();

    form.field("from", &address_list(&mail.from));
    form.field("to", &address_list(&mail.to));
    form.field("cc", &address_list(&mail.cc));
    form.field("subject", mail.subject.as_deref().unwrap_or(""));
    form.field("text", &text);
    form.field("html", &html);
    form.field("headers", &header_block);
    form.field(
        "envelope",
        &json!({"to": envelope.rcpt_to, "from": envelope.mail_from}).to_string(),
    );
    form.field("sender_ip", &envelope.client_ip);
    let tls = serde_json::to_string(&envelope.tls_session).unwrap_or_default();
    form.field("tls", &tls);
    if let Some(auth) = &envelope.auth {
        // SendGrid's names beside the whole verdict.
        form.field("SPF", &auth.spf.result);
        let dkim: Vec<String> = auth
            .dkim
            .iter()
            .map(|d| format!("@{} : {}", d.domain, d.result))
            .collect();
        form.field("dkim", &format!("{{{}}}", dkim.join(", ")));
        form.field("auth", &serde_json::to_string(auth).unwrap_or_default());
    }
    form.field(
        "charsets",
        &json!({"to": "UTF-8", "from": "UTF-8", "cc": "UTF-8", "subject": "UTF-8", "text": "UTF-8", "html": "UTF-8"})
            .to_string(),
    );
    form.field("recipient", &envelope.rcpt_to.join(", "));
    form.field("sender", &envelope.mail_from);
    form.field("body-plain", &text);
    form.field("body-html", &html);
    form.field("stripped-text", mail.reply_text.as_deref().unwrap_or(""));
    form.field(
        "stripped-signature",
        mail.signature.as_deref().unwrap_or(""),
    );
    let message_headers: Vec<[&str; 2]> = mail
        .headers
        .iter()
        .map(|h| [h.name.as_str(), h.value.as_str()])
        .collect();
    form.field(
        "message-headers",
        &serde_json::to_string(&message_headers).unwrap_or_default(),
    );
    form.field("Message-Id", mail.message_id.as_deref().unwrap_or(""));
    let count = mail.attachments.len().to_string();
    form.field("attachments", &count);
    form.field("attachment-count", &count);

    let mut info = serde_json::Map::new();
    for (i, a) in mail.attachments.iter().enumerate() {
        let name = format!("attachment{}", i + 1);
        let filename = a.filename.clone().unwrap_or_else(|| name.clone());
        info.insert(
            name.clone(),
            json!({"filename": filename, "name": filename, "type": a.content_type,
                   "content-id": a.content_id, "size": a.size, "inline": a.inline}),
        );
        form.file(&name, &filename, &a.content_type, &a.bytes);
    }
    form.field(
        "attachment-info",
        &serde_json::Value::Object(info).to_string(),
    );

    for a in &mut mail.attachments {
        a.content = None;
    }
    form.field("mail", &serde_json::to_string(&mail).unwrap_or_default());
    form.bytes
        .extend_from_slice(format!("--{}--\r\n", form.boundary).as_bytes());
    Body {
        content_type: format!("multipart/form-data; boundary={}", form.boundary),
        bytes: form.bytes,
    }
}
