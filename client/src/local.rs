//! Forwards one tunnel stream to the local app.
//!
//! The server opens a stream per visitor connection and speaks HTTP/1.1 on it.
//! The client serves that with hyper and sends each request to the tunnel's
//! target over a local connection of its own, opened at the first request and
//! kept while both sides keep the connection alive.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use droid_core::protocol::{self, StreamHeader};
use droid_core::proxy::{self, Body};
use droid_core::session::Stream;
use http::header::{HOST, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::{ClientEvent, Events, HostHeader, TunnelSpec};

/// Serves one stream the server opened.
pub(crate) async fn serve_stream(
    stream: Stream,
    tunnels: Arc<Vec<(String, TunnelSpec)>>,
    events: Events,
) {
    let mut reader = BufReader::new(stream);
    let header = tokio::time::timeout(
        protocol::HANDSHAKE_TIMEOUT,
        protocol::read_message::<_, StreamHeader>(&mut reader, protocol::MAX_HEADER_LINE),
    )
    .await;
    let header = match header {
        Ok(Ok(header)) => header,
        Ok(Err(e)) => {
            debug!(error = %e, "bad stream header");
            return;
        }
        Err(_) => {
            debug!("no stream header in time");
            return;
        }
    };
    let Some(spec) = header
        .tunnel()
        .and_then(|name| tunnels.iter().find(|(n, _)| n == name))
        .map(|(name, spec)| (name.clone(), spec.clone()))
    else {
        debug!(?header, "stream for an unknown tunnel or kind; closing it");
        let _ = reader.get_mut().shutdown().await;
        return;
    };
    let forwarder = Arc::new(Forwarder {
        name: spec.0,
        spec: spec.1,
        events,
        local: Mutex::new(None),
    });
    let service = service_fn(move |request| {
        let forwarder = forwarder.clone();
        async move { proxy::infallible(forwarder.handle(request).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(reader), service)
        .with_upgrades()
        .await;
    if let Err(e) = result {
        debug!(error = %e, "tunnel stream ended with an error");
    }
}

struct Forwarder {
    name: String,
    spec: TunnelSpec,
    events: Events,
    /// The connection to the local app, once opened.
    local: Mutex<Option<SendRequest<Incoming>>>,
}

impl Forwarder {
    async fn handle(&self, mut request: Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let html = proxy::wants_html(request.headers());
        if self.spec.host_header == HostHeader::Rewrite
            && let Ok(v) = HeaderValue::from_str(&self.spec.target.host_header())
        {
            request.headers_mut().insert(HOST, v);
        }
        let response = match self.sender().await {
            Ok(mut sender) => match proxy::forward(&mut sender, request).await {
                Ok(response) => {
                    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
                        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
                    }
                    response.map(Body::Left)
                }
                Err(e) => {
                    warn!(tunnel = %self.name, target = %self.spec.target, error = %e, "the local app failed the request");
                    proxy::error_page(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "the local app at {} closed the connection without an answer",
                            self.spec.target
                        ),
                        html,
                    )
                }
            },
            Err(e) => {
                let reason = format!(
                    "the tunnel is up but nothing answers at {}",
                    self.spec.target
                );
                warn!(tunnel = %self.name, error = %e, "{reason}");
                self.events.send(ClientEvent::TargetDown {
                    tunnel: self.name.clone(),
                    target: self.spec.target.to_string(),
                    error: e.to_string(),
                });
                proxy::error_page(StatusCode::BAD_GATEWAY, &reason, html)
            }
        };
        self.events.send(ClientEvent::Request {
            tunnel: self.name.clone(),
            method: method.to_string(),
            path,
            status: response.status().as_u16(),
            elapsed: started.elapsed(),
        });
        response
    }

    /// The kept connection to the local app, or a new one.
    async fn sender(&self) -> std::io::Result<SendRequest<Incoming>> {
        let kept = self.local.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(sender) = kept
            && !sender.is_closed()
        {
            return Ok(sender);
        }
        let target = &self.spec.target;
        let stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
        let _ = stream.set_nodelay(true);
        proxy::handshake(stream)
            .await
            .map_err(std::io::Error::other)
    }
}
