//! A mail delivery's POST read back as a mail, for the inspector to show.
//!
//! The server's SMTP adapter POSTs each mail in the tunnel's format: JSON
//! (every field), `multipart/form-data` (whose `mail` field is that JSON
//! without attachment contents, and whose files are the attachments) or
//! the raw message (with the envelope in `Droid-*` headers). Each is read
//! back here into the same view.

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

use super::exchange::Message;

/// What a mail's list item shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MailSummary {
    /// The From addresses, as text.
    pub from: String,
    /// The recipients this POST is for.
    pub to: Vec<String>,
    /// The subject.
    pub subject: String,
}

/// An attachment, with its bytes when the POST carried them.
pub(crate) struct Attachment {
    pub filename: Option<String>,
    pub content_type: String,
    pub size: u64,
    pub bytes: Option<Vec<u8>>,
}

/// The whole mail: what the mail view shows.
pub(crate) struct MailView {
    pub summary: MailSummary,
    pub date: Option<String>,
    pub text: Option<String>,
    pub html: Option<String>,
    pub attachments: Vec<Attachment>,
    /// What the server's SPF, DKIM, DMARC and ARC checks said, and its TLS.
    pub auth: Value,
    pub tls: Value,
}

impl MailView {
    /// The JSON the API gives, with a download link per attachment.
    pub fn to_json(&self, exchange: u64) -> Value {
        let attachments: Vec<Value> = self
            .attachments
            .iter()
            .enumerate()
            .map(|(i, a)| {
                json!({
                    "filename": a.filename,
                    "content_type": a.content_type,
                    "size": a.size,
                    "download": a.bytes.as_ref().map(|_| format!("/api/requests/{exchange}/attachments/{i}")),
                })
            })
            .collect();
        json!({
            "from": self.summary.from,
            "to": self.summary.to,
            "subject": self.summary.subject,
            "date": self.date,
            "text": self.text,
            "html": self.html,
            "attachments": attachments,
            "auth": self.auth,
            "tls": self.tls,
        })
    }
}

/// Reads the mail in a delivery's POST; `None` when the body is not one
/// of the three formats (or was not kept whole enough to read).
pub(crate) fn read(request: &Message) -> Option<MailView> {
    let content_type = request.header("content-type").unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => {
            let mail: Value = serde_json::from_slice(&request.body.to_vec()).ok()?;
            if mail["From"].is_string() {
                return Some(from_postmark(&mail));
            }
            Some(from_json(&mail, |a| {
                a["content"]
                    .as_str()
                    .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
            }))
        }
        "multipart/form-data" => {
            let boundary = parameter(content_type, "boundary")?;
            let parts = form_parts(&request.body.to_vec(), &boundary);
            let mail = parts.iter().find(|p| p.name == "mail")?;
            let mail: Value = serde_json::from_slice(&mail.body).ok()?;
            let files: Vec<&FormPart> = parts
                .iter()
                .filter(|p| p.name.starts_with("attachment") && p.filename.is_some())
                .collect();
            let mut index = 0;
            Some(from_json(&mail, |_| {
                let bytes = files.get(index).map(|f| f.body.clone());
                index += 1;
                bytes
            }))
        }
        "message/rfc822" => Some(from_raw(request)),
        _ => None,
    }
}

/// A mail the app sent, in Postmark's shape (`POST /email`).
fn from_postmark(email: &Value) -> MailView {
    let text = |key: &str| email[key].as_str().map(str::to_string);
    let to: Vec<String> = ["To", "Cc", "Bcc"]
        .iter()
        .filter_map(|k| email[*k].as_str())
        .flat_map(|list| list.split(',').map(|a| a.trim().to_string()))
        .filter(|a| !a.is_empty())
        .collect();
    let attachments = email["Attachments"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| {
                    let bytes = a["Content"]
                        .as_str()
                        .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok());
                    Attachment {
                        filename: a["Name"].as_str().map(str::to_string),
                        content_type: a["ContentType"]
                            .as_str()
                            .unwrap_or("application/octet-stream")
                            .to_string(),
                        size: bytes.as_ref().map_or(0, |b| b.len() as u64),
                        bytes,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    MailView {
        auth: Value::Null,
        tls: Value::Null,
        summary: MailSummary {
            from: text("From").unwrap_or_default(),
            to,
            subject: text("Subject").unwrap_or_default(),
        },
        date: None,
        text: text("TextBody"),
        html: text("HtmlBody"),
        attachments,
    }
}

fn from_json(mail: &Value, mut content: impl FnMut(&Value) -> Option<Vec<u8>>) -> MailView {
    let addresses = |list: &Value| -> Vec<String> {
        list.as_array()
            .map(|l| {
                l.iter()
                    .map(|m| match (m["name"].as_str(), m["address"].as_str()) {
                        (Some(n), Some(a)) => format!("{n} <{a}>"),
                        (None, Some(a)) => a.to_string(),
                        (Some(n), None) => n.to_string(),
                        (None, None) => String::new(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let to = mail["envelope"]["rcpt_to"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_else(|| addresses(&mail["to"]));
    let attachments = mail["attachments"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|a| Attachment {
                    filename: a["filename"].as_str().map(str::to_string),
                    content_type: a["content_type"]
                        .as_str()
                        .unwrap_or("application/octet-stream")
                        .to_string(),
                    size: a["size"].as_u64().unwrap_or_default(),
                    bytes: content(a),
                })
                .collect()
        })
        .unwrap_or_default();
    MailView {
        auth: mail["auth"].clone(),
        tls: mail["tls"].clone(),
        summary: MailSummary {
            from: addresses(&mail["from"]).join(", "),
            to,
            subject: mail["subject"].as_str().unwrap_or_default().to_string(),
        },
        date: mail["date"].as_str().map(str::to_string),
        text: mail["text"].as_str().map(str::to_string),
        html: mail["html"].as_str().map(str::to_string),
        attachments,
    }
}

/// The raw form: the envelope from the `Droid-*` headers, the subject from
/// the message's own header, the whole message as its text.
fn from_raw(request: &Message) -> MailView {
    let text = String::from_utf8_lossy(&request.body.to_vec()).into_owned();
    let header_block = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ");
    let field = |name: &str| {
        header_block.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    MailView {
        auth: Value::Null,
        tls: Value::Null,
        summary: MailSummary {
            from: request
                .header("droid-mail-from")
                .map(str::to_string)
                .or_else(|| field("from"))
                .unwrap_or_default(),
            to: request
                .header("droid-rcpt-to")
                .map(|t| t.split(',').map(|r| r.trim().to_string()).collect())
                .unwrap_or_default(),
            subject: field("subject").unwrap_or_default(),
        },
        date: field("date"),
        text: Some(text),
        html: None,
        attachments: Vec::new(),
    }
}

/// A `key=value` parameter of a header value, unquoted.
fn parameter(value: &str, key: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(key)
            .then(|| v.trim().trim_matches('"').to_string())
    })
}

/// One part of a `multipart/form-data` body.
pub(crate) struct FormPart {
    pub name: String,
    pub filename: Option<String>,
    pub body: Vec<u8>,
}

/// Splits a `multipart/form-data` body into its parts; parts it cannot read
/// are left out.
pub(crate) fn form_parts(body: &[u8], boundary: &str) -> Vec<FormPart> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut parts = Vec::new();
    let mut starts = Vec::new();
    let mut i = 0;
    while let Some(at) = find(&body[i..], delimiter) {
        starts.push(i + at);
        i += at + delimiter.len();
    }
    for pair in starts.windows(2) {
        let part = &body[pair[0] + delimiter.len()..pair[1]];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let Some(split) = find(part, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&part[..split]);
        let Some(disposition) = head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("content-disposition")
                .then_some(v)
        }) else {
            continue;
        };
        let Some(name) = parameter(disposition, "name") else {
            continue;
        };
        parts.push(FormPart {
            name,
            filename: parameter(disposition, "filename"),
            body: part[split + 4..].to_vec(),
        });
    }
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn post(content_type: &str, body: &[u8], extra: &[(&str, &str)]) -> Message {
        let mut fields = vec![("Content-Type".to_string(), content_type.as_bytes().to_vec())];
        for (n, v) in extra {
            fields.push((n.to_string(), v.as_bytes().to_vec()));
        }
        let mut m = Message::with_fields("POST".into(), "/".into(), 0, &fields);
        m.body.push(body, body.len());
        m
    }

    #[test]
    fn a_json_mail_reads_back_with_its_attachment() {
        let body = serde_json::to_vec(&json!({
            "envelope": {"mail_from": "ann@example.com", "rcpt_to": ["hi@t.localhost"]},
            "subject": "Grüße",
            "from": [{"name": "Ann", "address": "ann@example.com"}],
            "to": [{"name": null, "address": "hi@t.localhost"}],
            "text": "hello", "html": "<p>hello</p>",
            "attachments": [{"filename": "a.bin", "content_type": "application/octet-stream",
                             "size": 2, "content": "/wA="}]
        }))
        .unwrap();
        let view = read(&post("application/json", &body, &[])).unwrap();
        assert_eq!(view.summary.from, "Ann <ann@example.com>");
        assert_eq!(view.summary.to, ["hi@t.localhost"]);
        assert_eq!(view.summary.subject, "Grüße");
        assert_eq!(view.html.as_deref(), Some("<p>hello</p>"));
        assert_eq!(view.attachments[0].bytes.as_deref(), Some(&[0xff, 0][..]));
    }

    #[test]
    fn a_multipart_mail_reads_its_mail_field_and_files() {
        let mail = r#"{"subject":"s","from":[{"name":null,"address":"a@x"}],"envelope":{"rcpt_to":["b@t"]},"attachments":[{"filename":"f.txt","content_type":"text/plain","size":3}]}"#;
        let body = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"mail\"\r\n\r\n{mail}\r\n\
             --XyZ\r\nContent-Disposition: form-data; name=\"attachment1\"; filename=\"f.txt\"\r\nContent-Type: text/plain\r\n\r\nabc\r\n--XyZ--\r\n"
        );
        let view = read(&post(
            "multipart/form-data; boundary=XyZ",
            body.as_bytes(),
            &[],
        ))
        .unwrap();
        assert_eq!(view.summary.subject, "s");
        assert_eq!(view.summary.to, ["b@t"]);
        assert_eq!(view.attachments[0].bytes.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn a_raw_mail_reads_its_envelope_headers() {
        let m = post(
            "message/rfc822",
            b"From: a@x\r\nSubject: long\r\n subject\r\n\r\nbody",
            &[("Droid-Rcpt-To", "b@t, c@t")],
        );
        let view = read(&m).unwrap();
        assert_eq!(view.summary.subject, "long subject");
        assert_eq!(view.summary.to, ["b@t", "c@t"]);
        assert_eq!(view.summary.from, "a@x");
    }
}
