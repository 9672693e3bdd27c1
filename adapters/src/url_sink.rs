//! [`UrlSink`]: a [`Deliver`] that POSTs to a plain `http://` URL.
//!
//! The standalone mode (`droid smtp --post http://localhost:3000/inbound`)
//! delivers through it, and tests use it against a real hyper origin.
//! Connections are kept alive between deliveries in a [`Pool`] (a burst of
//! mail reuses a few connections instead of opening one per mail) and
//! closed after a second idle, before the app would close them itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use droid_core::deliver::{Deliver, DeliverError, DeliverErrorKind, DeliverFuture};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::pool::{self, Pool, SendError, Sender};

/// The response body is read up to this many bytes; the rest is dropped.
pub const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// The most idle connections kept to the URL.
pub const MAX_IDLE: usize = 32;

/// Why a URL cannot be a sink.
#[derive(Debug, thiserror::Error)]
pub enum UrlSinkError {
    /// The URL does not parse or has no host.
    #[error("invalid URL {url:?}: {reason}")]
    Invalid {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// POSTs each request to one `http://host:port`, using the request's own
/// path (set it from [`UrlSink::path`] in [`crate::MailOptions::path`]).
/// Clones share their idle connections.
#[derive(Clone)]
pub struct UrlSink {
    url: String,
    authority: String,
    connect_to: String,
    path: String,
    timeout: Duration,
    pool: Arc<Pool>,
}

impl std::fmt::Debug for UrlSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UrlSink")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("idle", &self.pool.idle())
            .finish()
    }
}

impl UrlSink {
    /// A sink for `url` (`http://host[:port][/path]`) with a 30 s timeout.
    pub fn new(url: &str) -> Result<UrlSink, UrlSinkError> {
        let invalid = |reason: &str| UrlSinkError::Invalid {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(invalid(&format!(
                    "scheme {other} is not supported, use http://"
                )));
            }
            None => return Err(invalid("missing http:// scheme")),
        }
        let authority = uri.authority().ok_or_else(|| invalid("missing host"))?;
        let connect_to = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        Ok(UrlSink {
            url: url.to_string(),
            authority: authority.to_string(),
            connect_to,
            path: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.to_string()),
            timeout: Duration::from_secs(30),
            pool: Pool::new(MAX_IDLE, pool::IDLE_TIMEOUT),
        })
    }

    /// Sets the time allowed for one whole exchange (connect, send, answer).
    pub fn with_timeout(mut self, timeout: Duration) -> UrlSink {
        self.timeout = timeout;
        self
    }

    /// The path (and query) of the URL, e.g. `/inbound`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The URL as given.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A new connection to the URL's host.
    async fn connect(&self) -> Result<Sender, DeliverError> {
        let tcp = TcpStream::connect(&self.connect_to).await.map_err(|e| {
            DeliverError::new(
                DeliverErrorKind::Unreachable,
                format!("cannot connect to {}: {e}", self.connect_to),
            )
        })?;
        let _ = tcp.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| self.transport(e))?;
        // The connection lives as long as its sender: in use, or idle in
        // the pool. A request dropped half-way (a timeout) closes it.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "connection to the URL ended with an error");
            }
        });
        Ok(sender)
    }

    fn transport(&self, e: hyper::Error) -> DeliverError {
        DeliverError::new(DeliverErrorKind::Transport, format!("{}: {e}", self.url))
    }

    async fn exchange(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, DeliverError> {
        let (mut parts, body) = request.into_parts();
        if let Ok(host) = http::HeaderValue::from_str(&self.authority) {
            parts.headers.insert(http::header::HOST, host);
        }
        let request = http::Request::from_parts(parts, Full::new(body));
        let (response, sender) = match self.pool.send(request, || self.connect()).await {
            Ok(sent) => sent,
            Err(SendError::Connect(e)) => return Err(e),
            Err(SendError::Http(e)) => return Err(self.transport(e)),
        };
        let (parts, mut body) = response.into_parts();
        let mut collected = Vec::new();
        // Past the cap the rest is dropped, and the connection with it.
        while collected.len() < MAX_RESPONSE_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = MAX_RESPONSE_BODY - collected.len();
                        collected.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                Some(Err(e)) => return Err(self.transport(e)),
                None => {
                    self.pool.put(sender);
                    break;
                }
            }
        }
        Ok(http::Response::from_parts(parts, Bytes::from(collected)))
    }
}

impl Deliver for UrlSink {
    fn deliver(&self, request: http::Request<Bytes>) -> DeliverFuture<'_> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.exchange(request)).await {
                Ok(result) => result,
                Err(_) => Err(DeliverError::new(
                    DeliverErrorKind::Timeout,
                    format!("{} did not answer within {:?}", self.url, self.timeout),
                )),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let s = UrlSink::new("http://localhost:3000/inbound?x=1").unwrap();
        assert_eq!(s.path(), "/inbound?x=1");
        assert_eq!(s.connect_to, "localhost:3000");
        assert_eq!(
            UrlSink::new("http://example.com").unwrap().connect_to,
            "example.com:80"
        );
        assert!(UrlSink::new("https://example.com").is_err());
        assert!(UrlSink::new("localhost:3000").is_err());
        assert!(UrlSink::new("http://").is_err());
    }

    #[tokio::test]
    async fn unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let sink = UrlSink::new(&format!("http://{addr}/")).unwrap();
        let err = sink
            .deliver(http::Request::new(Bytes::new()))
            .await
            .unwrap_err();
        assert_eq!(err.kind, DeliverErrorKind::Unreachable);
    }
}
