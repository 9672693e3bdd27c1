//! Requests the client sends to the app itself, as an HTTP client: those
//! of HTTP/2 visitors (their tunnel stream speaks HTTP/2), and every
//! request to an app that speaks HTTP/2 (`--app-protocol h2c`).
//!
//! Each tunnel has a pool of connections to its app, shared by all its
//! streams: HTTP/1.1 connections kept alive (under one key, whatever
//! authority visitors send), or a few HTTP/2 connections that carry many
//! requests each. A request keeps its authority, path, headers
//! and trailers; only hop-by-hop headers are dropped. Bodies stream both
//! ways, and a request the visitor gives up is dropped here, which resets
//! it at the app.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tracing::{debug, warn};

use dial::{AppTls, Dialer, dial};

mod dial;

use crate::target::Target;

/// A body on its way to or from the app.
pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an idle pooled HTTP/1.1 connection to the app is kept, and
/// how many are kept idle.
const IDLE: Duration = Duration::from_secs(60);
const MAX_IDLE: usize = 32;

/// The HTTP/2 connections to an app, each carrying many requests.
const H2_CONNECTIONS: usize = 4;

/// What an `https://` target's ALPN chose.
const UNKNOWN: u8 = 0;
const HTTP1: u8 = 1;
const H2: u8 = 2;

/// Headers that describe one hop, dropped before the app's hop.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// What the app speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AppProtocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2 without TLS, with prior knowledge: gRPC servers, and apps
    /// that serve HTTP/2 on a plain port.
    H2c,
}

impl FromStr for AppProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<AppProtocol, String> {
        match s {
            "http1" => Ok(AppProtocol::Http1),
            "h2c" => Ok(AppProtocol::H2c),
            other => Err(format!("{other} is not an app protocol; use http1 or h2c")),
        }
    }
}

impl fmt::Display for AppProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AppProtocol::Http1 => "http1",
            AppProtocol::H2c => "h2c",
        })
    }
}

/// The pools of connections to the apps, one per tunnel, kept across
/// sessions.
#[derive(Default)]
pub(crate) struct Apps(Mutex<HashMap<String, App>>);

impl Apps {
    /// The app of the tunnel `name`, at `target`, speaking `protocol`.
    pub(crate) fn get(&self, name: &str, target: &Target, protocol: AppProtocol) -> App {
        let Ok(mut apps) = self.0.lock() else {
            return App::new(target, protocol);
        };
        match apps.get(name) {
            Some(app) if app.target == *target && app.protocol == protocol => app.clone(),
            _ => {
                let app = App::new(target, protocol);
                apps.insert(name.to_string(), app.clone());
                app
            }
        }
    }
}

/// One tunnel's app, and the pool of connections to it.
#[derive(Clone)]
pub(crate) struct App {
    pub(crate) target: Target,
    pub(crate) protocol: AppProtocol,
    /// TLS for an `https://` target, whose ALPN decides the protocol.
    tls: Option<AppTls>,
    /// What an `https://` target's ALPN chose ([`UNKNOWN`] until a first
    /// HTTP/2 connection is tried; then [`H2`] or, for good, [`HTTP1`]).
    negotiated: Arc<AtomicU8>,
    /// HTTP/1.1 connections kept alive, all under one key (the target):
    /// what visitors send never opens a pool of its own.
    http1: Client<Dialer, Body>,
    /// HTTP/2 connections, each opened at its first use and again when it
    /// closes; requests take them in turn.
    h2: Arc<[tokio::sync::Mutex<Option<SendRequest<Body>>>]>,
    next: Arc<AtomicUsize>,
}

/// Why a request did not reach the app.
pub(crate) enum Failed {
    /// Nothing answers at the target.
    Unreachable(String),
    /// The app took the connection but did not complete a TLS handshake.
    Tls(String),
    /// The app took the connection but did not answer.
    NoAnswer(String),
}

impl App {
    pub(crate) fn new(target: &Target, protocol: AppProtocol) -> App {
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE)
            .pool_max_idle_per_host(MAX_IDLE);
        let tls = target.tls.then(AppTls::new).and_then(|made| {
            made.map_err(|e| warn!(error = %e, "no TLS for an https target"))
                .ok()
        });
        App {
            target: target.clone(),
            protocol,
            negotiated: Arc::new(AtomicU8::new(UNKNOWN)),
            http1: builder.build(Dialer {
                target: target.clone(),
                tls: tls.as_ref().map(|t| t.http1.clone()),
            }),
            tls,
            h2: (0..H2_CONNECTIONS)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: Arc::default(),
        }
    }

    /// Sends `request` to the app and returns its answer, whose body
    /// streams on. An `https://` app gets HTTP/2 while its ALPN chooses
    /// it, else HTTP/1.1; an HTTP/1.1 upgrade (a websocket) always goes in
    /// HTTP/1.1.
    pub(crate) async fn send(&self, request: Request<Body>) -> Result<Response<Body>, Failed> {
        let upgrade = request.version() != Version::HTTP_2
            && request.headers().contains_key(http::header::UPGRADE);
        let h2 = match (self.target.tls, self.protocol) {
            (true, _) => self.negotiated.load(Ordering::Relaxed) != HTTP1,
            (false, protocol) => protocol == AppProtocol::H2c,
        };
        if h2 && !upgrade {
            if let Some(mut send) = self.h2_connection().await? {
                let request = self.for_app(request, AppProtocol::H2c);
                let answer = send.send_request(request).await;
                let answer = answer.map_err(|e| Failed::NoAnswer(source_of(&e)))?;
                return Ok(answer.map(|b| b.map_err(BoxError::from).boxed()));
            }
            // The https app chose HTTP/1.1.
            self.negotiated.store(HTTP1, Ordering::Relaxed);
        }
        let request = self.for_app(request, AppProtocol::Http1);
        let answer =
            self.http1
                .request(request)
                .await
                .map_err(|e| match dial::tls_failure(&e) {
                    Some(why) => Failed::Tls(why),
                    None if e.is_connect() => Failed::Unreachable(source_of(&e)),
                    None => Failed::NoAnswer(source_of(&e)),
                })?;
        Ok(answer.map(|b| b.map_err(BoxError::from).boxed()))
    }

    /// The next HTTP/2 connection of the pool, opened if it is not open;
    /// `None` when the app, asked in TLS, chose HTTP/1.1.
    async fn h2_connection(&self) -> Result<Option<SendRequest<Body>>, Failed> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.h2.len();
        let mut slot = self.h2[i].lock().await;
        if let Some(send) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(Some(send.clone()));
        }
        let target = &self.target;
        let stream = dial(target, self.tls.as_ref().map(|t| &t.any))
            .await
            .map_err(|e| match dial::tls_failure(&e) {
                Some(why) => Failed::Tls(why),
                None => Failed::Unreachable(e.to_string()),
            })?;
        if target.tls {
            if !dial::chose_h2(&stream) {
                return Ok(None);
            }
            self.negotiated.store(H2, Ordering::Relaxed);
        }
        let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failed::NoAnswer(source_of(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "an HTTP/2 connection to the app ended with an error");
            }
        });
        debug!(%target, "a new HTTP/2 connection to the app");
        *slot = Some(send.clone());
        Ok(Some(send))
    }

    /// The request as the app gets it: in the app's version, with the
    /// visitor's authority (as the server set it) as its `Host` (HTTP/1.1)
    /// or `:authority` (HTTP/2), and no hop-by-hop headers.
    fn for_app(&self, request: Request<Body>, protocol: AppProtocol) -> Request<Body> {
        let (mut parts, body) = request.into_parts();
        let authority = parts
            .uri
            .authority()
            .cloned()
            .or_else(|| {
                let host = parts.headers.get(HOST)?.to_str().ok()?;
                Authority::from_str(host).ok()
            })
            .or_else(|| Authority::from_str(&self.target.host_header()).ok());
        // An HTTP/1.1 upgrade (a websocket) keeps what asks for it.
        let upgrade = protocol == AppProtocol::Http1
            && parts.version != Version::HTTP_2
            && parts.headers.contains_key(http::header::UPGRADE);
        let headers = &mut parts.headers;
        for name in HOP_BY_HOP {
            if !(upgrade && matches!(name, "connection" | "upgrade")) {
                headers.remove(name);
            }
        }
        if headers.get("te").is_some_and(|te| te != "trailers") {
            headers.remove("te");
        }
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let scheme = if self.target.tls { "https" } else { "http" };
        let mut uri = Uri::builder().scheme(scheme).path_and_query(path);
        match protocol {
            AppProtocol::Http1 => {
                // The pool's key is the target; the app reads `Host`.
                let target = Target::new(self.target.host.clone(), self.target.port);
                uri = uri.authority(target.to_string());
                if let Some(host) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
                    headers.insert(HOST, host);
                }
                parts.version = Version::HTTP_11;
            }
            AppProtocol::H2c => {
                if let Some(authority) = authority {
                    uri = uri.authority(authority);
                }
                parts.version = Version::HTTP_2;
            }
        }
        if let Ok(uri) = uri.build() {
            parts.uri = uri;
        }
        Request::from_parts(parts, body)
    }
}

/// Whether a request is a gRPC call (not gRPC-Web, which is HTTP/1-able).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
        })
}

/// The gRPC answer to a call the app cannot take because it speaks
/// HTTP/1.1: status 14 (UNAVAILABLE), trailers only (gRPC over HTTP/2).
pub(crate) fn grpc_needs_h2c(name: &str) -> Response<Body> {
    let message = format!(
        "the tunnel {name} forwards to an HTTP/1.1 app, and gRPC needs HTTP/2: run droid http with --app-protocol h2c"
    );
    let mut answer = Response::new(empty());
    let headers = answer.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("14"));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert("grpc-message", message);
    }
    answer
}

/// An answer going out in HTTP/1.1, with gRPC's trailers declared in a
/// `Trailer` header: HTTP/1.1 carries only the trailers an answer declares
/// (HTTP/2 needs no declaration).
pub(crate) fn trailers_declared(mut answer: Response<Body>) -> Response<Body> {
    let grpc = answer
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
    if grpc && !answer.headers().contains_key(http::header::TRAILER) {
        answer.headers_mut().insert(
            http::header::TRAILER,
            HeaderValue::from_static("grpc-status, grpc-message, grpc-status-details-bin"),
        );
    }
    answer
}

/// A body from hyper, boxed as the app's side takes it.
pub(crate) fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// A short page the client answers itself.
pub(crate) fn page(status: StatusCode, reason: &str, html: bool) -> Response<Body> {
    let (body, content_type) = droid_core::proxy::error_body(status, reason, html);
    let mut answer = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    answer
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never: Infallible| match never {})
        .boxed()
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The innermost cause of an error, in words.
fn source_of(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_protocols_parse_and_say_what_is_allowed() {
        assert_eq!("h2c".parse::<AppProtocol>(), Ok(AppProtocol::H2c));
        assert_eq!("http1".parse::<AppProtocol>(), Ok(AppProtocol::Http1));
        let e = "h2".parse::<AppProtocol>().unwrap_err();
        assert!(e.contains("use http1 or h2c"), "{e}");
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("a b%c\u{e9}"), "a b%25c%C3%A9");
    }
}
