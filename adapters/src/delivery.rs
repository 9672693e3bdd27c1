//! One message for one destination, and what the app said to it.
//!
//! A [`Delivery`] is what an adapter tries while its peer waits and what
//! the spool keeps for retries, whatever the adapter: the message's bytes,
//! what the POST is made of ([`Content`]: a mail, rendered for each attempt
//! in its destination's format, or a POST its adapter built once), and a
//! delivery id (a ULID) that stays the same on every attempt. Each attempt
//! is signed with a new timestamp.
//!
//! The app's answer is classified once, here ([`classify`]): 2xx accepts;
//! 4xx other than 408 and 429 rejects (the sender gets a 550 with the app's
//! reason, or the spool dead-letters it); everything else (5xx, 408, 429,
//! timeout, offline, broken exchange) is worth a retry.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use droid_core::deliver::{Deliver, DeliverError, DeliverErrorKind};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};

use serde::{Deserialize, Serialize};

use crate::mail::{self, Envelope, Format};
use crate::route::MailOptions;
use crate::sign;

/// One message on its way to one destination.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The delivery id (a ULID), the same on every retry.
    pub id: String,
    /// The owner key of the destination (see [`crate::route::Route::owner`]).
    pub owner: String,
    /// The readable destination name.
    pub destination: String,
    /// What the POST is made of.
    pub content: Content,
    /// The message as received (a mail), or the POST's body (a post).
    pub raw: Bytes,
}

/// What a delivery's POST is made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// A mail: its body rendered in the destination's format each attempt.
    Mail {
        /// How the request is built.
        options: MailOptions,
        /// The envelope, with only this destination's recipients.
        envelope: Envelope,
    },
    /// A POST its adapter built once: `raw` is the body.
    Post {
        /// How the request is built.
        post: PostOptions,
    },
}

/// How a POST built by an adapter is sent.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostOptions {
    /// The adapter that built it, for `Droid-Adapter` (`mqtt`).
    pub adapter: String,
    /// The request path.
    pub path: String,
    /// The body's `Content-Type`.
    pub content_type: String,
    /// The key of the `webhook-signature` HMAC.
    #[serde(with = "crate::route::hex_bytes")]
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for PostOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostOptions")
            .field("adapter", &self.adapter)
            .field("path", &self.path)
            .field("content_type", &self.content_type)
            .field("secret", &"MASKED")
            .finish()
    }
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The app answered 2xx.
    Accepted,
    /// The app refused the message (4xx other than 408/429).
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The first line of the app's answer, sanitised.
        reason: String,
    },
    /// Worth trying again later.
    Retry {
        /// Why, for logs.
        reason: String,
    },
}

/// Now, in unix seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new delivery id.
pub fn new_id() -> String {
    ulid::Ulid::generate().to_string()
}

/// The first non-empty line of an app's answer, as printable ASCII, at
/// most 200 characters: safe to put in an SMTP reply.
pub fn app_reason(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let clean: String = line
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                c
            } else {
                '?'
            }
        })
        .take(200)
        .collect();
    clean.trim().to_string()
}

/// Classifies the app's answer.
pub fn classify(status: http::StatusCode, body: &[u8]) -> Attempt {
    let code = status.as_u16();
    if status.is_success() {
        Attempt::Accepted
    } else if status.is_client_error() && code != 408 && code != 429 {
        let mut reason = app_reason(body);
        if reason.is_empty() {
            reason = format!("rejected by the app ({code})");
        }
        Attempt::Rejected {
            status: code,
            reason,
        }
    } else {
        Attempt::Retry {
            reason: format!("app answered {code} {}", app_reason(body))
                .trim()
                .to_string(),
        }
    }
}

impl Delivery {
    /// Builds the signed request for an attempt made at `timestamp`.
    pub fn request(&self, timestamp: u64) -> http::Request<Bytes> {
        let (body, content_type, path, secret, adapter) = match &self.content {
            Content::Mail { options, envelope } => {
                let body = mail::render(
                    options.format,
                    &self.raw,
                    envelope,
                    options.max_attachment_inline,
                );
                let content_type = body.content_type;
                (
                    Bytes::from(body.bytes),
                    content_type,
                    &options.path,
                    &options.secret,
                    "smtp",
                )
            }
            Content::Post { post } => (
                self.raw.clone(),
                post.content_type.clone(),
                &post.path,
                &post.secret,
                post.adapter.as_str(),
            ),
        };
        let ts = timestamp.to_string();
        let signature = sign::sign(secret, &self.id, &ts, &body);
        let mut request = http::Request::new(body);
        *request.method_mut() = http::Method::POST;
        let path = if path.starts_with('/') {
            path.clone()
        } else {
            format!("/{path}")
        };
        *request.uri_mut() =
            http::Uri::try_from(path).unwrap_or_else(|_| http::Uri::from_static("/"));
        let mut headers = vec![
            (CONTENT_TYPE, content_type),
            (CONTENT_LENGTH, request.body().len().to_string()),
            (
                USER_AGENT,
                format!("droid-{adapter}/{}", env!("CARGO_PKG_VERSION")),
            ),
            (HeaderName::from_static(sign::ID_HEADER), self.id.clone()),
            (HeaderName::from_static(sign::TIMESTAMP_HEADER), ts),
            (HeaderName::from_static(sign::SIGNATURE_HEADER), signature),
            (
                HeaderName::from_static("droid-adapter"),
                adapter.to_string(),
            ),
        ];
        if let Content::Mail { options, envelope } = &self.content
            && options.format == Format::Raw
        {
            for (name, value) in mail::raw_envelope_headers(envelope) {
                headers.push((HeaderName::from_static(name), value));
            }
        }
        for (name, value) in headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                request.headers_mut().insert(name, value);
            }
        }
        request
    }

    /// Makes one attempt through `sink`, bounded by `timeout`.
    pub async fn attempt(&self, sink: &dyn Deliver, timeout: Duration) -> Attempt {
        let request = self.request(unix_now());
        let result = match tokio::time::timeout(timeout, sink.deliver(request)).await {
            Ok(result) => result,
            Err(_) => Err(DeliverError::new(
                DeliverErrorKind::Timeout,
                format!("no answer within {timeout:?}"),
            )),
        };
        match result {
            Ok(response) => classify(response.status(), response.body()),
            Err(error) => Attempt::Retry {
                reason: error.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        use http::StatusCode as S;
        assert_eq!(classify(S::OK, b""), Attempt::Accepted);
        assert_eq!(classify(S::NO_CONTENT, b""), Attempt::Accepted);
        assert_eq!(
            classify(
                S::UNPROCESSABLE_ENTITY,
                b"\n  unknown user \x01 here\r\nmore"
            ),
            Attempt::Rejected {
                status: 422,
                reason: "unknown user ? here".into()
            }
        );
        assert!(matches!(
            classify(S::NOT_FOUND, b""),
            Attempt::Rejected { status: 404, .. }
        ));
        assert!(matches!(
            classify(S::TOO_MANY_REQUESTS, b""),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(S::REQUEST_TIMEOUT, b""),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(S::BAD_GATEWAY, b""),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            classify(S::MOVED_PERMANENTLY, b""),
            Attempt::Retry { .. }
        ));
    }

    #[test]
    fn request_is_signed() {
        let d = Delivery {
            id: new_id(),
            owner: "o".into(),
            destination: "d".into(),
            content: Content::Mail {
                options: MailOptions {
                    secret: b"s3cret".to_vec(),
                    path: "inbound".into(),
                    ..Default::default()
                },
                envelope: Envelope {
                    mail_from: String::new(),
                    rcpt_to: vec!["a@b".into()],
                    client_ip: "::1".into(),
                    helo: "h".into(),
                    tls: false,
                    tls_session: None,
                    auth: None,
                    received_at: 1,
                },
            },
            raw: Bytes::from_static(b"Subject: hi\r\n\r\nbody\r\n"),
        };
        let r = d.request(1_700_000_000);
        assert_eq!(r.uri().path(), "/inbound");
        let h = |n: &str| r.headers().get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(h("webhook-timestamp"), "1700000000");
        assert_eq!(h("webhook-id"), d.id);
        assert!(sign::verify(
            b"s3cret",
            &d.id,
            "1700000000",
            r.body(),
            &h("webhook-signature")
        ));
        assert!(r.headers().get("droid-signature").is_none());
        let json: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
        assert_eq!(json["subject"], "hi");
        assert_eq!(json["envelope"]["mail_from"], "");
    }
}
