//! An email turned into an HTTP request body.
//!
//! The input is always the raw message as received (bytes, CRLF line ends,
//! dot-unstuffed) plus its SMTP [`Envelope`]. The output is one of three
//! bodies, chosen per destination with [`Format`]:
//! - [`json`]: every field parsed (the default);
//! - [`multipart`]: the same fields as `multipart/form-data`, with field names
//!   close to SendGrid Inbound Parse and Mailgun Routes;
//! - raw: the message itself as `message/rfc822`, the envelope in headers
//!   ([`raw_envelope_headers`]).
//!
//! Parsing uses mail-parser 0.11 for structure, headers and charsets, and
//! [`decode`] to work around its transfer-decoding weaknesses.

pub mod decode;
pub mod json;
pub mod multipart;
pub mod reply;

use serde::{Deserialize, Serialize};

/// The SMTP envelope of a message, as the adapter saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse path (`MAIL FROM`); empty for the null sender (bounces).
    pub mail_from: String,
    /// The recipients (`RCPT TO`) of this delivery: only those that belong
    /// to the destination it goes to.
    pub rcpt_to: Vec<String>,
    /// The IP address of the SMTP client.
    pub client_ip: String,
    /// The name the client gave in `HELO`/`EHLO`.
    pub helo: String,
    /// Whether the session was protected by TLS.
    pub tls: bool,
    /// What its TLS agreed on, when it had TLS (the JSON's top-level
    /// `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_session: Option<crate::adapter::TlsSession>,
    /// What SPF, DKIM, DMARC and ARC said of it, when the server checks
    /// (the JSON's top-level `auth`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Box<crate::smtp::auth::AuthResults>>,
    /// Unix seconds when the message was received.
    pub received_at: u64,
}

/// The body format of a mail delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `application/json`, every field parsed.
    #[default]
    Json,
    /// `multipart/form-data`, fields and one file part per attachment.
    Multipart,
    /// `message/rfc822`, the message as received; envelope in headers.
    Raw,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Format::Json),
            "multipart" | "form" | "form-data" => Ok(Format::Multipart),
            "raw" | "rfc822" => Ok(Format::Raw),
            other => Err(format!(
                "unknown mail format {other:?} (json, multipart or raw)"
            )),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Format::Json => "json",
            Format::Multipart => "multipart",
            Format::Raw => "raw",
        })
    }
}

/// A rendered request body and its content type.
#[derive(Debug, Clone)]
pub struct Body {
    /// The `Content-Type` header value.
    pub content_type: String,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Renders `raw` in `format`. Never fails: a message mail-parser cannot make
/// sense of still yields a body (with null fields and a `parse_error`).
pub fn render(
    format: Format,
    raw: &[u8],
    envelope: &Envelope,
    max_attachment_inline: usize,
) -> Body {
    match format {
        Format::Json => {
            let mail = json::parse(raw, envelope, max_attachment_inline);
            // A text mail's JSON is about twice its size (the text and the
            // reply): room for that at once saves growing the buffer.
            let mut bytes = Vec::with_capacity((raw.len() * 2 + 1024).min(1 << 20));
            if serde_json::to_writer(&mut bytes, &mail).is_err() {
                bytes.clear();
            }
            Body {
                content_type: "application/json".into(),
                bytes,
            }
        }
        Format::Multipart => multipart::render(raw, envelope, max_attachment_inline),
        Format::Raw => {
            // RFC 8601: the receiving server's verdict, on top.
            let mut bytes = Vec::with_capacity(raw.len() + 512);
            if let Some(auth) = &envelope.auth {
                bytes.extend_from_slice(b"Authentication-Results: ");
                bytes.extend_from_slice(auth.authentication_results.as_bytes());
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(raw);
            Body {
                content_type: "message/rfc822".into(),
                bytes,
            }
        }
    }
}

/// The headers that carry the envelope beside a raw (`message/rfc822`) body
/// (`droid-tls-cipher`, `TLSv1.3 TLS13_AES_256_GCM_SHA384`, only for mail
/// that came over TLS). Values are sanitised to visible ASCII; recipients
/// are comma-separated.
pub fn raw_envelope_headers(envelope: &Envelope) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("droid-mail-from", header_safe(&envelope.mail_from)),
        ("droid-rcpt-to", header_safe(&envelope.rcpt_to.join(", "))),
        ("droid-client-ip", header_safe(&envelope.client_ip)),
        ("droid-helo", header_safe(&envelope.helo)),
        ("droid-tls", envelope.tls.to_string()),
    ];
    if let Some(tls) = &envelope.tls_session {
        let value = header_safe(&format!("{} {}", tls.version, tls.cipher));
        headers.push(("droid-tls-cipher", value));
    }
    headers
}

/// Makes `text` safe as an HTTP header value: control characters become
/// spaces and non-ASCII characters are percent-encoded (UTF-8 addresses).
pub fn header_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_control() {
            out.push(' ');
        } else if c.is_ascii() {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::auth::{AuthResults, DkimVerdict, DmarcVerdict, SpfVerdict};

    fn checked() -> Envelope {
        Envelope {
            mail_from: "ann@example.com".into(),
            rcpt_to: vec!["inbox@otter.localhost".into()],
            client_ip: "192.0.2.7".into(),
            helo: "mx.example.com".into(),
            tls: false,
            tls_session: None,
            auth: Some(Box::new(AuthResults {
                spf: SpfVerdict {
                    result: "pass".into(),
                    domain: "example.com".into(),
                },
                dkim: vec![DkimVerdict {
                    result: "fail".into(),
                    domain: "example.com".into(),
                    selector: "s1".into(),
                }],
                dmarc: DmarcVerdict {
                    result: "pass".into(),
                    policy: Some("reject".into()),
                },
                arc: "none".into(),
                authentication_results: "mx; spf=pass; dkim=fail; dmarc=pass".into(),
            })),
            received_at: 0,
        }
    }

    #[test]
    fn every_format_carries_the_checks() {
        let raw = b"From: ann@example.com\r\nSubject: hi\r\n\r\nbody\r\n";
        let envelope = checked();
        let body = render(Format::Raw, raw, &envelope, usize::MAX);
        let text = String::from_utf8(body.bytes).unwrap();
        assert!(
            text.starts_with(
                "Authentication-Results: mx; spf=pass; dkim=fail; dmarc=pass\r\nFrom: "
            ),
            "{text}"
        );
        let body = render(Format::Multipart, raw, &envelope, usize::MAX);
        let text = String::from_utf8_lossy(&body.bytes);
        for (field, value) in [("SPF", "pass"), ("dkim", "{@example.com : fail}")] {
            let part = format!("name=\"{field}\"\r\n\r\n{value}\r\n");
            assert!(text.contains(&part), "{field}: {text}");
        }
        assert!(text.contains("name=\"auth\""), "{text}");
        let body = render(Format::Json, raw, &envelope, usize::MAX);
        let json: serde_json::Value = serde_json::from_slice(&body.bytes).unwrap();
        assert_eq!(json["auth"]["dkim"][0]["selector"], "s1");
        assert!(json["envelope"].get("auth").is_none(), "once, at the top");
    }
}
