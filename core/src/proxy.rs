//! HTTP forwarding that both ends of a tunnel do the same way.
//!
//! The server forwards a visitor's request into a tunnel stream; the client
//! forwards it from the stream to the local app. Both hops speak HTTP/1.1 with
//! hyper, drop hop-by-hop headers (RFC 9110 §7.6.1), carry protocol upgrades
//! (websockets) through, and answer with the same short error pages.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// The body of every response Droid sends: forwarded from the other side, or
/// a page Droid wrote itself.
pub type Body = Either<Incoming, Full<Bytes>>;

/// How long an upgraded connection (a websocket) may sit with no byte in
/// either direction before Droid closes it. Long: websockets idle a lot.
pub const UPGRADE_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

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

/// Sends `request` on `sender` as a proxy would: hop-by-hop headers removed,
/// origin-form URI, HTTP/1.1. When the request asks for an upgrade and the
/// other side agrees (101), the two upgraded connections are spliced together
/// in a task of their own. The request body is any body (the server wraps
/// a visitor's in limits).
pub async fn forward<B>(
    sender: &mut SendRequest<B>,
    mut request: Request<B>,
) -> Result<Response<Incoming>, hyper::Error>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let upgrading = is_upgrade(request.headers());
    let downstream = upgrading.then(|| hyper::upgrade::on(&mut request));
    strip_hop_by_hop(request.headers_mut(), upgrading);
    if request.uri().scheme().is_some() {
        // Absolute-form (a proxy-style request line): keep only path and query.
        let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = path.parse() {
            *request.uri_mut() = uri;
        }
    }
    *request.version_mut() = Version::HTTP_11;
    sender.ready().await?;
    let mut response = sender.send_request(request).await?;
    // The next hop answers in its own version; hyper adapts 1.1 to the
    // visitor (down to 1.0 when the visitor spoke 1.0).
    *response.version_mut() = Version::HTTP_11;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(downstream) = downstream {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(splice(downstream, upstream));
        }
    } else {
        strip_hop_by_hop(response.headers_mut(), false);
    }
    Ok(response)
}

async fn splice(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (down, up) = match tokio::try_join!(downstream, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let mut down = TokioIo::new(down);
    let mut up = TokioIo::new(up);
    match tokio::time::timeout(
        UPGRADE_IDLE_TIMEOUT,
        tokio::io::copy_bidirectional(&mut down, &mut up),
    )
    .await
    {
        Ok(Ok((a, b))) => debug!(down_to_up = a, up_to_down = b, "upgraded connection closed"),
        Ok(Err(e)) => debug!(error = %e, "upgraded connection failed"),
        Err(_) => debug!("upgraded connection idle too long"),
    }
}

/// Whether the headers ask to switch protocols (`Connection: upgrade` and an
/// `Upgrade` header).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The headers that describe one hop whatever `Connection` says (RFC 9110
/// §7.6.1), `Connection` and `Upgrade` first.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
];

/// Headers a `Connection` list may not remove: the message's host, and the
/// forwarding headers a proxy adds (a visitor naming them would hide its
/// address or its host from the app).
const NEVER_HOP_BY_HOP: [&str; 5] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Removes the headers that describe one hop, not the message: those RFC 9110
/// lists and those named in `Connection` (never `Host` or the forwarding
/// headers). An upgrade keeps `Connection: upgrade` and `Upgrade`, which the
/// next hop needs to agree to it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One look at each name finds which of them are there: most messages
    // carry none, or only `Connection: keep-alive`, and a removal hashes
    // its name whether or not it is there (removing all six every time was
    // 6% of the server's instructions per small request).
    let hop_by_hop = HOP_BY_HOP;
    let mut present = hop_by_hop.each_ref().map(|_| false);
    for name in headers.keys() {
        if let Some(i) = hop_by_hop.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if present[0] {
        // Names a `Connection` header lists, beyond those removed anyway:
        // most list only `keep-alive` or `upgrade`, and nothing is collected.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|t| {
                let kept_anyway = keep_upgrade && t.eq_ignore_ascii_case("upgrade");
                let removed_anyway = t.is_empty() || t.eq_ignore_ascii_case("keep-alive");
                let protected = NEVER_HOP_BY_HOP.iter().any(|p| t.eq_ignore_ascii_case(p));
                !(kept_anyway || removed_anyway || protected)
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for (name, present) in hop_by_hop.into_iter().zip(present) {
        let kept = keep_upgrade && (name == header::CONNECTION || name == header::UPGRADE);
        if present && !kept {
            headers.remove(name);
        }
    }
    if keep_upgrade {
        // Whatever else it listed, the next hop hears only this.
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// A short error page: HTML for browsers, one line of text for everyone else.
/// `reason` is one sentence and is what a user reads first.
pub fn error_page(status: StatusCode, reason: &str, wants_html: bool) -> Response<Body> {
    let (body, content_type) = if wants_html {
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
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("Keep-Alive, X-Hop, close"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        h.insert("close", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-end", HeaderValue::from_static("2"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-end"));
    }

    #[test]
    fn connection_cannot_name_the_host_or_the_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("X-Forwarded-For, Host, x-forwarded-host, Forwarded, X-Hop"),
        );
        for name in [
            "host",
            "x-forwarded-for",
            "x-forwarded-host",
            "forwarded",
            "x-hop",
        ] {
            h.insert(name, HeaderValue::from_static("v"));
        }
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 4, "{h:?}");
        assert!(!h.contains_key("x-hop"));
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.append("x-end", HeaderValue::from_static("1"));
        h.append("x-end", HeaderValue::from_static("2"));
        let before = h.clone();
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
        // One hop-by-hop header among them still takes the whole path.
        h.insert("te", HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn an_upgrade_keeps_what_the_next_hop_needs() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    #[test]
    fn error_pages_are_one_line_or_escaped_html() {
        let r = error_page(StatusCode::NOT_FOUND, "no tunnel named <x>", false);
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["content-type"], "text/plain; charset=utf-8");
        let r = error_page(StatusCode::BAD_GATEWAY, "a <b>", true);
        assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    }
}
