//! Tunnel streams the client serves as HTTP itself, sending each request
//! to the app with its own HTTP client (`crate::app`): an HTTP/2 visitor's
//! stream, and any stream for an app that speaks HTTP/2 (`h2c`).

use std::sync::Arc;

use droid_core::proxy;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

use crate::app::{self, App, AppProtocol, Body, Failed};
use crate::inspect::{Inspector, Tapped};
use crate::local::LINGER;
use crate::probe::Probes;
use crate::target::Target;
use crate::{ClientEvent, Events};

/// The HTTP/2 streams one tunnel stream may carry at once; the server
/// lets a visitor connection have 256.
const MAX_STREAMS: u32 = 512;

/// The largest header list taken from the server, which checked the
/// visitor's against its own limit (64 KiB by default) and added its
/// forwarding headers.
const MAX_HEADER_LIST: u32 = 1024 * 1024;

/// What answering a stream's requests needs.
#[derive(Clone)]
pub(crate) struct Served {
    pub(crate) tunnel: String,
    /// The visitor's address, as the stream's header says.
    pub(crate) remote: String,
    /// Whether the inspector captures each request here (an HTTP/2
    /// stream's; an HTTP/1 stream's bytes are tapped as they cross).
    pub(crate) capture: bool,
    pub(crate) app: App,
    pub(crate) events: Events,
    pub(crate) probes: Probes,
    pub(crate) inspector: Option<Inspector>,
}

/// Serves a stream whose requests come in HTTP/2 (`h2`) or HTTP/1.1 until
/// the server closes it.
pub(crate) async fn serve<IO>(io: IO, h2: bool, served: Served)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let served = Arc::new(served);
    let service = service_fn(move |request| {
        let served = served.clone();
        async move { Ok::<_, std::convert::Infallible>(served.answer(request).await) }
    });
    let io = TokioIo::new(io);
    let ended = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_concurrent_streams(MAX_STREAMS)
            .max_header_list_size(MAX_HEADER_LIST)
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(io, service)
            .with_upgrades()
            .await
    };
    if let Err(e) = ended {
        debug!(error = %e, "a stream served as HTTP ended with an error");
    }
}

impl Served {
    /// The app's answer to one request, captured for the inspector when
    /// it is on and this stream's bytes are not tapped.
    async fn answer(&self, request: Request<Incoming>) -> Response<Body> {
        let (parts, body) = request.into_parts();
        let Some(capture) = self
            .inspector
            .as_ref()
            .filter(|_| self.capture)
            .map(|i| i.capture(&self.tunnel, &self.remote, &parts))
        else {
            let request = Request::from_parts(parts, app::boxed(body));
            return self.answer_uncaptured(request).await;
        };
        let body = app::boxed(Tapped::new(body, capture.clone(), true));
        let answer = self
            .answer_uncaptured(Request::from_parts(parts, body))
            .await;
        let (parts, body) = answer.into_parts();
        capture.answered(&parts);
        Response::from_parts(parts, app::boxed(Tapped::new(body, capture, false)))
    }

    /// The app's answer to one request, or the page that says why there
    /// is none.
    async fn answer_uncaptured(&self, request: Request<Body>) -> Response<Body> {
        let name = &self.tunnel;
        // (An https app's own ALPN decides; it answers gRPC itself.)
        let app_http1 = self.app.protocol == AppProtocol::Http1 && !self.app.target.tls;
        if app_http1 && app::is_grpc(request.headers()) {
            debug!(tunnel = %name, "a gRPC call for an HTTP/1.1 app; answered UNAVAILABLE");
            return app::grpc_needs_h2c(name);
        }
        let html = proxy::wants_html(request.headers());
        let http1 = request.version() != http::Version::HTTP_2;
        let mut request = request;
        let upgrade = (http1 && request.headers().contains_key(http::header::UPGRADE))
            .then(|| hyper::upgrade::on(&mut request));
        match self.app.send(request).await {
            Ok(mut answer) if answer.status() == StatusCode::SWITCHING_PROTOCOLS => {
                if let Some(visitor) = upgrade {
                    splice(visitor, hyper::upgrade::on(&mut answer));
                }
                answer
            }
            Ok(answer) if http1 => app::trailers_declared(answer),
            Ok(answer) => answer,
            Err(failed) => self.failed(failed, html),
        }
    }

    /// The page for a request that did not reach the app, said where the
    /// user looks too.
    fn failed(&self, failed: Failed, html: bool) -> Response<Body> {
        let (name, target) = (&self.tunnel, &self.app.target);
        let reason = match failed {
            Failed::Unreachable(error) => {
                let reason = format!("the tunnel is up but nothing answers at {target}");
                debug!(tunnel = %name, %error, "{reason}");
                if let Some(inspector) = &self.inspector {
                    inspector.target_unreachable();
                }
                self.probes.target_down(name, target);
                self.events.send(ClientEvent::TargetDown {
                    tunnel: name.clone(),
                    target: target.to_string(),
                    error,
                });
                reason
            }
            Failed::Tls(error) => {
                let plain = Target::new(target.host.clone(), target.port);
                let reason = format!(
                    "the app at {target} did not complete a TLS handshake ({error}); if it serves plain HTTP, use http://{plain}"
                );
                warn!(tunnel = %name, "{reason}");
                reason
            }
            Failed::NoAnswer(error) => {
                debug!(tunnel = %name, %error, "the app did not answer");
                format!("the app at {target} closed the connection without an answer")
            }
        };
        app::page(StatusCode::BAD_GATEWAY, &reason, html)
    }
}

/// Joins the visitor's side and the app's of an upgraded connection (a
/// websocket) once both have switched, copying bytes both ways until both
/// are done, or until [`LINGER`] after the visitor's side ended.
fn splice(visitor: hyper::upgrade::OnUpgrade, app: hyper::upgrade::OnUpgrade) {
    tokio::spawn(async move {
        let (Ok(visitor), Ok(app)) = tokio::join!(visitor, app) else {
            debug!("an upgrade did not complete");
            return;
        };
        let (mut from_visitor, mut to_visitor) = tokio::io::split(TokioIo::new(visitor));
        let (mut from_app, mut to_app) = tokio::io::split(TokioIo::new(app));
        let up = async {
            let _ = tokio::io::copy(&mut from_visitor, &mut to_app).await;
            let _ = to_app.shutdown().await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut from_app, &mut to_visitor).await;
            let _ = to_visitor.shutdown().await;
        };
        tokio::pin!(up, down);
        tokio::select! {
            () = &mut up => {
                if tokio::time::timeout(LINGER, down).await.is_err() {
                    debug!("the app kept an upgraded connection open after the visitor left");
                }
            }
            () = &mut down => up.await,
        }
    });
}
