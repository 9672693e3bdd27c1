//! The public HTTP listener: routes each request by its Host to a tunnel.
//!
//! Each visitor connection gets one tunnel stream, opened at its first
//! request and reused for the next ones while the connection is kept alive,
//! so keep-alive visitors cost one stream, not one per request. A visitor that
//! upgrades (a websocket) keeps its stream for the upgraded bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use droid_core::protocol::{self, StreamHeader};
use droid_core::proxy::{self, Body};
use http::header::{HOST, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::Shared;
use crate::registry::{Lookup, Tunnel};

/// Serves one visitor connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let visitor = Arc::new(Visitor {
        shared: shared.clone(),
        peer,
        upstream: Mutex::new(None),
    });
    let service = service_fn(move |request| {
        let visitor = visitor.clone();
        async move { proxy::infallible(visitor.handle(request).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = result {
        debug!(%peer, error = %e, "visitor connection ended with an error");
    }
}

struct Visitor {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The tunnel stream this connection's requests go through, once opened.
    upstream: Mutex<Option<Upstream>>,
}

struct Upstream {
    tunnel: Arc<Tunnel>,
    sender: SendRequest<Incoming>,
}

/// Where a Host points.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    /// `NAME.domain`.
    Tunnel(&'a str),
    /// The domain itself.
    Apex,
    /// A host this server does not serve.
    Foreign,
}

impl Visitor {
    async fn handle(&self, mut request: Request<Incoming>) -> Response<Body> {
        let html = proxy::wants_html(request.headers());
        let Some(host) = request_host(&request) else {
            return proxy::error_page(
                StatusCode::BAD_REQUEST,
                "the request has no Host header, so it cannot be routed to a tunnel",
                html,
            );
        };
        let domain = &self.shared.config.domain;
        let name = match route(&host, domain) {
            Route::Tunnel(name) => name.to_string(),
            Route::Apex => {
                return proxy::error_page(
                    StatusCode::NOT_FOUND,
                    &format!("this is a droid tunnel server; tunnels live at NAME.{domain}"),
                    html,
                );
            }
            Route::Foreign => {
                return proxy::error_page(
                    StatusCode::BAD_REQUEST,
                    &format!("this server serves *.{domain}; {host} is not one of its names"),
                    html,
                );
            }
        };
        let tunnel = match self.shared.registry.lookup(&name) {
            Lookup::Live(tunnel) => tunnel,
            Lookup::Resuming => {
                return proxy::error_page(
                    StatusCode::BAD_GATEWAY,
                    &format!("the tunnel {name} is reconnecting; try again in a moment"),
                    html,
                );
            }
            Lookup::Absent => {
                return proxy::error_page(
                    StatusCode::NOT_FOUND,
                    &format!("no tunnel named {name} is connected to this server"),
                    html,
                );
            }
        };
        self.add_forwarded_headers(&mut request, &host);
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let response = self.forward(&tunnel, request, html).await;
        debug!(tunnel = %name, %method, %path, status = response.status().as_u16(),
            elapsed = ?started.elapsed(), "forwarded");
        response
    }

    fn add_forwarded_headers(&self, request: &mut Request<Incoming>, host: &str) {
        let headers = request.headers_mut();
        let ip = self.peer.ip().to_string();
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(earlier) if !earlier.trim().is_empty() => format!("{earlier}, {ip}"),
            _ => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        if let Ok(v) = HeaderValue::from_str(host) {
            headers.insert("x-forwarded-host", v);
        }
    }

    async fn forward(
        &self,
        tunnel: &Arc<Tunnel>,
        request: Request<Incoming>,
        html: bool,
    ) -> Response<Body> {
        let reused = self.take_upstream(tunnel);
        let mut sender = match reused {
            Some(sender) => sender,
            None => match self.open_upstream(tunnel).await {
                Ok(sender) => sender,
                Err(response) => return response,
            },
        };
        match proxy::forward(&mut sender, request).await {
            Ok(response) => {
                if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                    self.put_upstream(tunnel, sender);
                }
                response.map(Body::Left)
            }
            Err(e) => {
                info!(tunnel = %tunnel.name, error = %e, "request failed inside the tunnel");
                proxy::error_page(
                    StatusCode::BAD_GATEWAY,
                    &format!(
                        "the tunnel {} went away while forwarding the request",
                        tunnel.name
                    ),
                    html,
                )
            }
        }
    }

    fn take_upstream(&self, tunnel: &Arc<Tunnel>) -> Option<SendRequest<Incoming>> {
        let mut slot = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        let upstream = slot.take()?;
        (Arc::ptr_eq(&upstream.tunnel, tunnel) && !upstream.sender.is_closed())
            .then_some(upstream.sender)
    }

    fn put_upstream(&self, tunnel: &Arc<Tunnel>, sender: SendRequest<Incoming>) {
        let mut slot = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(Upstream {
            tunnel: tunnel.clone(),
            sender,
        });
    }

    async fn open_upstream(
        &self,
        tunnel: &Arc<Tunnel>,
    ) -> Result<SendRequest<Incoming>, Response<Body>> {
        let name = &tunnel.name;
        let gone = || {
            proxy::error_page(
                StatusCode::BAD_GATEWAY,
                &format!("the tunnel {name} disconnected"),
                false,
            )
        };
        let mut stream = match tokio::time::timeout(
            self.shared.config.stream_open_timeout,
            tunnel.opener.open(),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) => return Err(gone()),
            Err(_) => {
                return Err(proxy::error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the tunnel {name} has too many requests in flight; try again"),
                    false,
                ));
            }
        };
        let header = StreamHeader::Http {
            tunnel: name.clone(),
            remote: self.peer.to_string(),
        };
        if stream
            .write_all(&protocol::encode_line(&header))
            .await
            .is_err()
        {
            return Err(gone());
        }
        proxy::handshake(stream).await.map_err(|_| gone())
    }
}

/// The host a request is for, lowercased, without port or trailing dot.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    let raw = match request.uri().host() {
        Some(host) => host.to_string(),
        None => request.headers().get(HOST)?.to_str().ok()?.to_string(),
    };
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or_default().to_string()
    } else {
        raw.rsplit_once(':')
            .map_or(raw.as_str(), |(h, _)| h)
            .to_string()
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some(host)
}

fn route<'a>(host: &'a str, domain: &str) -> Route<'a> {
    if host == domain {
        return Route::Apex;
    }
    match host.strip_suffix(domain).and_then(|h| h.strip_suffix('.')) {
        Some(name) if !name.is_empty() && !name.contains('.') => Route::Tunnel(name),
        _ => Route::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_route_to_one_label_names_under_the_domain() {
        assert_eq!(
            route("myapp.localhost", "localhost"),
            Route::Tunnel("myapp")
        );
        assert_eq!(route("a.b.localhost", "localhost"), Route::Foreign);
        assert_eq!(route("localhost", "localhost"), Route::Apex);
        assert_eq!(route("evil-localhost", "localhost"), Route::Foreign);
        assert_eq!(route("x.example.com", "localhost"), Route::Foreign);
    }

    #[test]
    fn the_host_comes_without_port_case_or_trailing_dot() {
        let r = Request::builder()
            .header("host", "MyApp.Localhost.:8080")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("myapp.localhost"));
        let r = Request::builder()
            .uri("http://a.t.example:80/x")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("a.t.example"));
        let r = Request::builder()
            .header("host", "[::1]:80")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("::1"));
        let r = Request::builder().body(()).unwrap();
        assert_eq!(request_host(&r), None);
    }
}
