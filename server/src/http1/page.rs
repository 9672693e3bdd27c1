//! The pages the server answers itself, written as HTTP/1 bytes.

use droid_core::proxy;
use http::StatusCode;

use crate::metrics::OwnAnswer;

/// A page the server answers itself, and why (for the metrics).
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) why: OwnAnswer,
    body: String,
    content_type: &'static str,
    extra: Vec<(&'static str, String)>,
    /// The connection closes after it.
    pub(crate) close: bool,
}

impl Page {
    /// A page saying `reason` in one sentence: HTML for browsers (`html`),
    /// one line of text for everyone else.
    pub(crate) fn new(status: StatusCode, why: OwnAnswer, reason: &str, html: bool) -> Page {
        let (body, content_type) = proxy::error_body(status, reason, html);
        Page {
            status,
            why,
            body,
            content_type,
            extra: Vec::new(),
            close: false,
        }
    }

    /// The page with one more header.
    pub(crate) fn with(mut self, name: &'static str, value: String) -> Page {
        self.extra.push((name, value));
        self
    }

    /// The page, after which the connection closes.
    pub(crate) fn closing(mut self) -> Page {
        self.close = true;
        self
    }

    /// The page as bytes, in the visitor's version; its head alone for a
    /// HEAD request (`to_head`).
    pub(crate) fn bytes(&self, http10: bool, to_head: bool) -> Vec<u8> {
        use std::fmt::Write;
        let mut head = String::with_capacity(160 + self.body.len());
        let _ = write!(
            head,
            "HTTP/1.{} {} {}\r\ncontent-type: {}\r\ncache-control: no-store\r\ncontent-length: {}\r\n",
            u8::from(!http10),
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or("Error"),
            self.content_type,
            self.body.len(),
        );
        for (name, value) in &self.extra {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if self.close {
            head.push_str("connection: close\r\n");
        } else if http10 {
            head.push_str("connection: keep-alive\r\n");
        }
        head.push_str("\r\n");
        if !to_head {
            head.push_str(&self.body);
        }
        head.into_bytes()
    }

    /// The page as an HTTP/2 answer, which has no connection headers; its
    /// head alone for a HEAD request (`to_head`).
    pub(crate) fn response(&self, to_head: bool) -> http::Response<bytes::Bytes> {
        let body = if to_head {
            bytes::Bytes::new()
        } else {
            bytes::Bytes::from(self.body.clone())
        };
        let mut response = http::Response::new(body);
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        let fields = [
            ("content-type", self.content_type.to_string()),
            ("cache-control", "no-store".to_string()),
            ("content-length", self.body.len().to_string()),
        ];
        for (name, value) in fields.into_iter().chain(self.extra.iter().cloned()) {
            if let Ok(value) = http::HeaderValue::try_from(value) {
                headers.append(name, value);
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_says_its_length_and_carries_no_body_to_head() {
        let page = Page::new(
            StatusCode::NOT_FOUND,
            OwnAnswer::NoTunnel,
            "no tunnel",
            false,
        );
        let full = String::from_utf8(page.bytes(false, false)).unwrap();
        assert!(full.starts_with("HTTP/1.1 404 Not Found\r\n"), "{full}");
        assert!(full.contains("content-length: 10\r\n"), "{full}");
        assert!(full.ends_with("\r\n\r\nno tunnel\n"), "{full}");
        let head = String::from_utf8(page.closing().bytes(true, true)).unwrap();
        assert!(head.starts_with("HTTP/1.0 404"), "{head}");
        assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");
    }
}
