//! What both ends of a tunnel share of HTTP
//!
//! A client connection for hyper over any byte stream (the server's
//! deliveries to tunnels use it), and the short error pages both ends of a
//! tunnel answer with.

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// The body of every response Droid sends: forwarded from the other side, or
/// a page Droid wrote itself.
pub type Body = Either<Incoming, Full<Bytes>>;

/// The most an upstream connection buffers of an answer: hyper grows its
/// read buffer up to 400 KiB by default, per connection, which a tunnel
/// stream (already buffered by yamux) does not need.
const UPSTREAM_READ_BUFFER: usize = 64 * 1024;

/// Starts an HTTP/1.1 client connection over `io` and spawns its driver.
pub async fn handshake<IO, B>(io: IO) -> Result<SendRequest<B>, hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(UPSTREAM_READ_BUFFER)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A short error page: HTML for browsers, one line of text for everyone else.
/// `reason` is one sentence and is what a user reads first.
pub fn error_page(status: StatusCode, reason: &str, wants_html: bool) -> Response<Body> {
    let (body, content_type) = error_body(status, reason, wants_html);
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The body and content type of [`error_page`], for a writer of its own.
pub fn error_body(status: StatusCode, reason: &str, wants_html: bool) -> (String, &'static str) {
    if wants_html {
        let title = status.canonical_reason().unwrap_or("Error");
        let reason = escape_html(reason);
        (
            format!(
                "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{code} {title}</title></head>\n\
                 <body><h1>{code} {title}</h1>\n<p>{reason}</p>\n<hr><p>droid</p></body></html>\n",
                code = status.as_u16()
            ),
            "text/html; charset=utf-8",
        )
    } else {
        (format!("{reason}\n"), "text/plain; charset=utf-8")
    }
}

/// Whether a request's `Accept` header prefers an HTML page.
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Adapts a handler that cannot fail to hyper's service shape.
pub fn infallible<T>(value: T) -> Result<T, Infallible> {
    Ok(value)
}

/// gRPC's status codes by number (gRPC's `statuscodes.md`).
const GRPC_STATUSES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The name of a `grpc-status` value (`"14"` is `UNAVAILABLE`); anything
/// that is not a known code is `UNKNOWN`, as gRPC reads it.
pub fn grpc_status_name(value: &[u8]) -> &'static str {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .and_then(|n| GRPC_STATUSES.get(n).copied())
        .unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_pages_are_one_line_or_escaped_html() {
        let r = error_page(StatusCode::NOT_FOUND, "no tunnel named <x>", false);
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        let r = error_page(StatusCode::BAD_GATEWAY, "a <b>", true);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    }

    #[test]
    fn grpc_statuses_have_their_names() {
        assert_eq!(super::grpc_status_name(b"0"), "OK");
        assert_eq!(super::grpc_status_name(b"14"), "UNAVAILABLE");
        assert_eq!(super::grpc_status_name(b"99"), "UNKNOWN");
        assert_eq!(super::grpc_status_name(b"x"), "UNKNOWN");
    }
}
