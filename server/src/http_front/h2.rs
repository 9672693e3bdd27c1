//! HTTP/2 visitors: chosen by ALPN on the HTTPS front, or by prior
//! knowledge (a connection that opens with HTTP/2's preface) on the plain
//! one and on links from other nodes.
//!
//! Every request is routed by its own `:authority` and checked as an
//! HTTP/1 request is (`Visitor::route`, `Visitor::check`). A connection
//! serves one name: the one its TLS handshake named, or the first its
//! requests named; a request for another gets 421. Its requests cross the
//! tunnel as HTTP/2 too, on one tunnel stream per visitor connection
//! opened at its first request (`StreamHeader::H2`), so trailers,
//! streaming both ways, resets and flow control pass end to end; a
//! request for a tunnel another node holds goes there over a peer link
//! speaking HTTP/2 the same way.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use droid_core::protocol::{self, StreamHeader};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::client::conn::http2::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Mutex, OwnedSemaphorePermit, watch};
use tracing::{debug, info};

use super::{Dest, Target, Visitor, misdirected, normal_host};
use crate::http1::page::Page;
use crate::metrics::OwnAnswer;
use crate::registry::Tunnel;

/// What an HTTP/2 answer's body may be: the app's, relayed, or a page.
type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The streams one visitor connection may have open at once.
const MAX_STREAMS: u32 = 256;

/// How often an idle connection is pinged, and how long an answer may
/// take before the connection is taken for dead.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the server takes from the app's side before the visitor reads it,
/// per stream and per visitor connection (HTTP/2 flow control): what a
/// visitor that stops reading makes the server hold.
const UPSTREAM_STREAM_WINDOW: u32 = 256 * 1024;
const UPSTREAM_CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Headers that describe one hop and never cross (RFC 9113 §8.2.2), and
/// those Droid sets itself.
const NOT_FORWARDED: [&str; 9] = [
    "connection",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "host",
    "x-forwarded-proto",
    "x-forwarded-host",
];

/// Serves an HTTP/2 visitor connection until it closes.
pub(super) async fn serve<IO>(visitor: Visitor, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = &visitor.shared.config;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .max_header_list_size(u32::try_from(config.max_header_size).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    let pinned = OnceLock::new();
    if let Some(sni) = &visitor.sni {
        let _ = pinned.set(sni.clone());
    }
    let idle = config.header_read_timeout;
    let draining = visitor.shared.draining.clone();
    let (busy, mut open) = watch::channel(0);
    let conn = Arc::new(H2Conn {
        visitor,
        pinned,
        upstream: Mutex::new(None),
        busy,
    });
    let service = service_fn(move |request: Request<Incoming>| {
        let conn = conn.clone();
        async move {
            let busy = Busy::new(conn.clone());
            let slot = Arc::new(std::sync::Mutex::new(None));
            let request = request.map(|body| Lent::new(body, &slot));
            let answer = conn.exchange(request).await;
            Ok::<_, Infallible>(conn.answering(answer, busy, slot))
        }
    });
    let served = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    // A connection with no request open for the header time is closed, as
    // an idle HTTP/1 one is: it holds a connection slot for nothing.
    let ended = tokio::select! {
        ended = served.as_mut() => ended,
        () = idle_for(&mut open, idle) => {
            debug!("an HTTP/2 visitor connection was idle; going away");
            served.as_mut().graceful_shutdown();
            served.await
        }
        // Requests open finish; the visitor sends the next ones elsewhere.
        () = draining.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(e) = ended {
        debug!(error = %e, "an HTTP/2 visitor connection ended with an error");
    }
}

/// Returns once no request has been open on the connection for `limit`.
async fn idle_for(open: &mut watch::Receiver<usize>, limit: Duration) {
    loop {
        if open.wait_for(|n| *n == 0).await.is_err() {
            return;
        }
        match tokio::time::timeout(limit, open.changed()).await {
            Err(_) | Ok(Err(_)) => return,
            Ok(Ok(())) => {}
        }
    }
}

/// One request open on a connection, from its head to its answer's end.
struct Busy(Arc<H2Conn>);

impl Busy {
    fn new(conn: Arc<H2Conn>) -> Busy {
        conn.busy.send_modify(|n| *n += 1);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.send_modify(|n| *n -= 1);
    }
}

/// An answer's body on its way to the visitor: its request stays open
/// while it lasts, and a gRPC call's status is counted when its trailers
/// pass.
struct Answering {
    body: Body,
    _busy: Busy,
    _slot: Option<Slot>,
    /// The request's body if nobody took it (a refused request): kept
    /// until the answer has gone, as dropping it resets the stream.
    _held: Held,
    /// Counts the status of a gRPC call, once.
    grpc: Option<Arc<crate::Shared>>,
}

impl hyper::body::Body for Answering {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = std::task::ready!(Pin::new(&mut self.body).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(trailers) = frame.trailers_ref()
            && let Some(status) = trailers.get("grpc-status")
            && let Some(shared) = self.grpc.take()
        {
            shared.metrics.grpc_answered(status.as_bytes());
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// One visitor's HTTP/2 connection.
struct H2Conn {
    visitor: Visitor,
    /// The host this connection serves: its SNI, else its first request's.
    pinned: OnceLock<String>,
    /// Where its requests went last: a tunnel stream, or another node.
    upstream: Mutex<Option<H2Upstream>>,
    /// How many of its requests are open.
    busy: watch::Sender<usize>,
}

/// An HTTP/2 connection to the app's side, shared by the visitor
/// connection's requests.
struct H2Upstream {
    dest: Dest,
    send: SendRequest<Body>,
}

/// What a request is, kept for its line and its pages.
struct Asked {
    method: http::Method,
    path: String,
    html: bool,
    to_head: bool,
}

impl H2Conn {
    /// Answers one request: with a page, or through a tunnel (here or on
    /// another node).
    async fn exchange(&self, request: Request<Lent>) -> Response<Body> {
        let asked = Asked {
            method: request.method().clone(),
            path: request
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .to_string(),
            html: droid_core::proxy::wants_html(request.headers()),
            to_head: request.method() == http::Method::HEAD,
        };
        if request.method() == http::Method::CONNECT {
            // As the HTTP/1 front refuses authority-form targets.
            let page = Page::new(
                http::StatusCode::BAD_REQUEST,
                OwnAnswer::BadRequest,
                "CONNECT does not go through a tunnel",
                asked.html,
            );
            return self.page(page, &asked, None);
        }
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str().as_bytes())
            .or_else(|| request.headers().get(HOST).map(|h| h.as_bytes()));
        if let Some(host) = authority.and_then(normal_host) {
            let pinned = self.pinned.get_or_init(|| host.clone());
            if *pinned != host {
                return self.page(misdirected(pinned, &host, asked.html), &asked, None);
            }
        }
        let kept = self.upstream.lock().await.as_ref().map(|u| u.dest.clone());
        let routed = self
            .visitor
            .route(authority, asked.html, kept.as_ref())
            .await;
        match routed {
            Ok(Target::Tunnel(tunnel, host)) => {
                self.through_tunnel(tunnel, host, request, asked).await
            }
            Ok(Target::Node { name, addr }) => self.through_node(name, addr, request, asked).await,
            Err(page) => self.page(page, &asked, None),
        }
    }

    /// Checks a request for a tunnel this node holds, then sends it on;
    /// every outcome makes the tunnel's request line.
    async fn through_tunnel(
        &self,
        tunnel: Arc<Tunnel>,
        host: String,
        request: Request<Lent>,
        asked: Asked,
    ) -> Response<Body> {
        let started = Instant::now();
        let mut line = Line {
            tunnel: tunnel.clone(),
            method: asked.method.clone(),
            path: asked.path.clone(),
            started,
            status: 0,
        };
        let headers = request.headers();
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let authorization = headers.get(AUTHORIZATION).map(|v| v.as_bytes());
        let checked = self
            .visitor
            .check(&tunnel, authorization, declared, asked.html);
        let response = match checked {
            Err(page) => self.page(page, &asked, Some(started.elapsed())),
            Ok(()) => self.send_to_tunnel(&tunnel, &host, request, &asked).await,
        };
        line.status = response.status().as_u16();
        response
    }

    /// Sends a checked request through `tunnel`, on this connection's
    /// tunnel stream (opened at its first request).
    async fn send_to_tunnel(
        &self,
        tunnel: &Arc<Tunnel>,
        host: &str,
        request: Request<Lent>,
        asked: &Asked,
    ) -> Response<Body> {
        let started = Instant::now();
        let slot = match self.slot(tunnel, asked.html).await {
            Ok(slot) => slot,
            Err(page) => return self.page(page, asked, Some(started.elapsed())),
        };
        let dest = Dest::Tunnel(tunnel.clone());
        let send = self.upstream(dest, || self.open_tunnel(tunnel, asked.html));
        let mut send = match send.await {
            Ok(send) => send,
            Err(page) => return self.page(page, asked, Some(started.elapsed())),
        };
        let body_state = Arc::new(AtomicU8::new(BODY_OK));
        let request = self.forwarded(request, tunnel, host, &body_state);
        match send.send_request(request).await {
            Ok(answer) => {
                let mut answer = self.relayed(answer, Some(started));
                answer.extensions_mut().insert(Slot {
                    _permit: Arc::new(slot),
                });
                answer
            }
            Err(e) => {
                let name = &tunnel.name;
                let max = self.visitor.shared.config.max_body_size.unwrap_or(u64::MAX);
                let page = if body_state.load(Ordering::Relaxed) == BODY_OVER {
                    super::through::too_large(max, asked.html)
                } else if body_state.load(Ordering::Relaxed) == BODY_SLOW {
                    Page::new(
                        http::StatusCode::REQUEST_TIMEOUT,
                        OwnAnswer::BodyTimeout,
                        "the request body stopped arriving",
                        asked.html,
                    )
                } else if tunnel.opener.is_ended() {
                    info!(tunnel = %name, error = %e, "request failed inside the tunnel");
                    Page::new(
                        http::StatusCode::BAD_GATEWAY,
                        OwnAnswer::TunnelGone,
                        &format!("the tunnel {name} went away while forwarding the request"),
                        asked.html,
                    )
                } else {
                    debug!(tunnel = %name, error = %e, "the request failed on the client's side");
                    Page::new(
                        http::StatusCode::BAD_GATEWAY,
                        OwnAnswer::AppClosed,
                        &format!("the local app of the tunnel {name} did not answer the request"),
                        asked.html,
                    )
                };
                self.page(page, asked, Some(started.elapsed()))
            }
        }
    }

    /// A place for one more request under the tunnel session's stream
    /// limit (an HTTP/1 visitor's request takes a stream of its own; one
    /// of an HTTP/2 connection's many requests takes a place the same
    /// way), within the stream-open time.
    async fn slot(&self, tunnel: &Tunnel, html: bool) -> Result<OwnedSemaphorePermit, Page> {
        let name = &tunnel.name;
        let timeout = self.visitor.shared.config.stream_open_timeout;
        match tokio::time::timeout(timeout, tunnel.opener.reserve()).await {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(_)) => Err(Page::new(
                http::StatusCode::BAD_GATEWAY,
                OwnAnswer::TunnelGone,
                &format!("the tunnel {name} disconnected"),
                html,
            )),
            Err(_) => Err(Page::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                OwnAnswer::StreamLimit,
                &format!("the tunnel {name} has too many requests in flight; try again"),
                html,
            )),
        }
    }

    /// Relays a request for a tunnel another node holds to that node, as
    /// the visitor sent it: that node checks and rewrites it.
    async fn through_node(
        &self,
        name: String,
        addr: String,
        mut request: Request<Lent>,
        asked: Asked,
    ) -> Response<Body> {
        let dest = Dest::Node {
            name: name.clone(),
            addr: addr.clone(),
        };
        let send = self.upstream(dest, || async {
            let link = self.visitor.open_node(&addr).await;
            let page = || self.visitor.unreachable(&name, asked.html);
            handshake(link.ok_or_else(page)?).await.map_err(|e| {
                info!(node = %addr, error = %e, "no HTTP/2 link to another node");
                page()
            })
        });
        let sent = match send.await {
            Ok(mut send) => {
                // The peer link is HTTP/2 with the visitor's own authority
                // (from `Host` when the request had no `:authority`).
                if let Some(host) = request.headers_mut().remove(HOST)
                    && request.uri().authority().is_none()
                {
                    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
                    if let Ok(uri) = Uri::builder()
                        .scheme("http")
                        .authority(host.as_bytes())
                        .path_and_query(path)
                        .build()
                    {
                        *request.uri_mut() = uri;
                    }
                }
                let request = request.map(|b| b.map_err(BoxError::from).boxed());
                send.send_request(request).await.ok()
            }
            Err(_) => None,
        };
        let cluster = self.visitor.shared.cluster.get();
        match sent {
            Some(answer) => {
                // A node that no longer holds the tunnel (it moved) is not
                // asked again: the next request asks Redis.
                if matches!(answer.status().as_u16(), 404 | 502)
                    && let Some(cluster) = cluster
                {
                    cluster.forget(&name);
                }
                let mut answer = self.relayed(answer, None);
                answer.extensions_mut().insert(FromNode);
                answer
            }
            None => {
                if let Some(cluster) = cluster {
                    cluster.forget(&name);
                }
                *self.upstream.lock().await = None;
                let page = self.visitor.unreachable(&name, asked.html);
                self.page(page, &asked, None)
            }
        }
    }

    /// The connection's upstream for `dest`: the one kept while it is
    /// open, else a new one from `open`.
    async fn upstream<F, Fut>(&self, dest: Dest, open: F) -> Result<SendRequest<Body>, Page>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<SendRequest<Body>, Page>>,
    {
        let mut kept = self.upstream.lock().await;
        if let Some(upstream) = kept.as_ref()
            && same(&upstream.dest, &dest)
            && !upstream.send.is_closed()
        {
            return Ok(upstream.send.clone());
        }
        let send = open().await?;
        *kept = Some(H2Upstream {
            dest,
            send: send.clone(),
        });
        Ok(send)
    }

    /// A new tunnel stream speaking HTTP/2 to the client.
    async fn open_tunnel(&self, tunnel: &Tunnel, html: bool) -> Result<SendRequest<Body>, Page> {
        let mut stream = self.visitor.open_tunnel_stream(tunnel, html, true).await?;
        let header = StreamHeader::H2 {
            tunnel: tunnel.name.clone(),
            remote: self.visitor.peer.to_string(),
        };
        let name = &tunnel.name;
        let gone = |e: &dyn std::fmt::Display| {
            debug!(tunnel = %name, error = %e, "no HTTP/2 on a new tunnel stream");
            Page::new(
                http::StatusCode::BAD_GATEWAY,
                OwnAnswer::TunnelGone,
                &format!("the tunnel {name} disconnected"),
                html,
            )
        };
        stream
            .write_all(&protocol::encode_line(&header))
            .await
            .map_err(|e| gone(&e))?;
        handshake(stream).await.map_err(|e| gone(&e))
    }

    /// The request as it goes to the app: hop-by-hop headers gone, the
    /// authority the app's (`--host-header`) or the visitor's, and the
    /// forwarding headers set, as the HTTP/1 front writes them.
    /// `body_state` says when the body turns out larger than the server
    /// takes, or stops arriving.
    fn forwarded(
        &self,
        request: Request<Lent>,
        tunnel: &Tunnel,
        host: &str,
        body_state: &Arc<AtomicU8>,
    ) -> Request<Body> {
        let (mut parts, body) = request.into_parts();
        // The app sees the authority as the visitor sent it (with its port).
        let asked = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| Some(parts.headers.get(HOST)?.to_str().ok()?.to_string()));
        let headers = &mut parts.headers;
        for name in NOT_FORWARDED {
            headers.remove(name);
        }
        if headers.get("te").is_some_and(|te| te != "trailers") {
            headers.remove("te");
        }
        if tunnel.access.has_auth() {
            headers.remove(AUTHORIZATION);
        }
        let ip = &self.visitor.peer_ip;
        let forwarded_for = match headers.get("x-forwarded-for").map(|v| v.to_str()) {
            Some(Ok(earlier)) if !earlier.trim().is_empty() => format!("{}, {ip}", earlier.trim()),
            _ => ip.clone(),
        };
        let proto = if self.visitor.https { "https" } else { "http" };
        for (name, value) in [
            ("x-forwarded-for", forwarded_for.as_str()),
            ("x-forwarded-proto", proto),
            ("x-forwarded-host", host),
        ] {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(name, value);
            }
        }
        let authority = match (&tunnel.host_header, &asked) {
            (Some(app_host), _) => app_host.to_str().unwrap_or(host),
            (None, Some(asked)) => asked,
            (None, None) => host,
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        if let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path)
            .build()
        {
            parts.uri = uri;
        }
        let config = &self.visitor.shared.config;
        let body = Capped {
            body,
            left: config.max_body_size.unwrap_or(u64::MAX),
            idle: config.body_read_timeout,
            timer: Box::pin(tokio::time::sleep(config.body_read_timeout)),
            state: body_state.clone(),
        };
        Request::from_parts(parts, body.boxed())
    }

    /// The answer of the app (or of another node), relayed and counted;
    /// `started`: when a request through a tunnel here began.
    fn relayed(&self, answer: Response<Incoming>, started: Option<Instant>) -> Response<Body> {
        let through = started.map(|at| at.elapsed());
        let metrics = &self.visitor.shared.metrics;
        metrics.answered(answer.status().as_u16(), None, through);
        answer.map(boxed)
    }

    /// The answer as it goes to the visitor, keeping `busy` until its end.
    /// A gRPC call's status is counted (at once for a trailers-only
    /// answer) unless another node relayed it, which counts it itself.
    fn answering(&self, mut answer: Response<Body>, busy: Busy, held: Held) -> Response<Body> {
        let slot = answer.extensions_mut().remove::<Slot>();
        let shared = &self.visitor.shared;
        let grpc = answer
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/grpc"));
        let mut counted = None;
        if grpc && answer.extensions().get::<FromNode>().is_none() {
            match answer.headers().get("grpc-status") {
                Some(status) => shared.metrics.grpc_answered(status.as_bytes()),
                None => counted = Some(shared.clone()),
            }
        }
        answer.map(|body| {
            Answering {
                body,
                _busy: busy,
                _slot: slot,
                _held: held,
                grpc: counted,
            }
            .boxed()
        })
    }

    /// A page the server answers itself, counted.
    fn page(&self, page: Page, asked: &Asked, through: Option<Duration>) -> Response<Body> {
        let metrics = &self.visitor.shared.metrics;
        metrics.answered(page.status.as_u16(), Some(page.why), through);
        page.response(asked.to_head)
            .map(|b| Full::new(b).map_err(|never| match never {}).boxed())
    }
}

/// Where a request's body waits until whoever forwards it takes it.
type Held = Arc<std::sync::Mutex<Option<Incoming>>>;

/// A visitor's request body, lent to whoever forwards it: it stays in its
/// [`Held`] slot, which the answer keeps, until it is first polled, and
/// goes back there when the borrower drops it. So a request refused
/// before its body was read, or cut short, keeps its stream until its
/// answer has gone (a body dropped first resets the stream, and the
/// visitor never sees the answer).
struct Lent {
    slot: Held,
    body: Option<Incoming>,
}

impl Lent {
    fn new(body: Incoming, slot: &Held) -> Lent {
        if let Ok(mut held) = slot.lock() {
            *held = Some(body);
        }
        Lent {
            slot: slot.clone(),
            body: None,
        }
    }

    fn body(&mut self) -> Option<&mut Incoming> {
        if self.body.is_none() {
            self.body = self.slot.lock().ok().and_then(|mut held| held.take());
        }
        self.body.as_mut()
    }
}

impl Drop for Lent {
    /// Given back: a body cut short (over the limit) is kept, like one
    /// never taken, until the answer that says so has gone.
    fn drop(&mut self) {
        if let Some(body) = self.body.take()
            && let Ok(mut held) = self.slot.lock()
        {
            *held = Some(body);
        }
    }
}

impl hyper::body::Body for Lent {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.body() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => self
                .slot
                .lock()
                .map_or(true, |held| held.as_ref().is_none_or(|b| b.is_end_stream())),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => self
                .slot
                .lock()
                .ok()
                .and_then(|held| held.as_ref().map(|b| b.size_hint()))
                .unwrap_or_default(),
        }
    }
}

/// A request body's state, as [`Capped`] found it.
const BODY_OK: u8 = 0;
/// More than the server takes.
const BODY_OVER: u8 = 1;
/// Nothing for the body's idle time.
const BODY_SLOW: u8 = 2;

/// A request body that ends in an error past `left` bytes, or when
/// nothing of it arrives for `idle`, saying which in `state`: the stream
/// to the app is reset, and the visitor gets 413 or 408.
struct Capped {
    body: Lent,
    left: u64,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    state: Arc<AtomicU8>,
}

impl hyper::body::Body for Capped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                std::task::ready!(self.timer.as_mut().poll(cx));
                self.state.store(BODY_SLOW, Ordering::Relaxed);
                return Poll::Ready(Some(Err("the request body stopped arriving".into())));
            }
        };
        let deadline = tokio::time::Instant::now() + self.idle;
        self.timer.as_mut().reset(deadline);
        let Some(Ok(frame)) = frame else {
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        };
        let len = frame.data_ref().map_or(0, |d| d.len() as u64);
        match self.left.checked_sub(len) {
            Some(left) => {
                self.left = left;
                Poll::Ready(Some(Ok(frame)))
            }
            None => {
                self.state.store(BODY_OVER, Ordering::Relaxed);
                Poll::Ready(Some(Err(
                    "the request body is over the server's limit".into()
                )))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A tunnel's request line, recorded once: with the status the visitor
/// got, or 0 when the visitor gave up before an answer (the exchange was
/// dropped).
struct Line {
    tunnel: Arc<Tunnel>,
    method: http::Method,
    path: String,
    started: Instant,
    status: u16,
}

impl Drop for Line {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        let (name, method, status) = (&self.tunnel.name, self.method.as_str(), self.status);
        debug!(tunnel = %name, %method, path = %self.path, status, ?elapsed, "forwarded (HTTP/2)");
        self.tunnel
            .log
            .record(name, method, &self.path, status, elapsed);
    }
}

/// A request's place under its tunnel session's stream limit, kept with
/// its answer until the answer ends.
#[derive(Clone)]
struct Slot {
    _permit: Arc<OwnedSemaphorePermit>,
}

/// Marks an answer another node relayed (and counted).
#[derive(Clone, Copy)]
struct FromNode;

/// Whether two upstreams go to the same place.
fn same(a: &Dest, b: &Dest) -> bool {
    match (a, b) {
        (Dest::Tunnel(a), Dest::Tunnel(b)) => Arc::ptr_eq(a, b),
        (Dest::Node { addr: a, .. }, Dest::Node { addr: b, .. }) => a == b,
        _ => false,
    }
}

/// An HTTP/2 client connection (prior knowledge) over `io`, its task spawned.
async fn handshake<IO>(io: IO) -> Result<SendRequest<Body>, hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(KEEP_ALIVE))
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .initial_stream_window_size(UPSTREAM_STREAM_WINDOW)
        .initial_connection_window_size(UPSTREAM_CONNECTION_WINDOW)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "an HTTP/2 upstream connection ended with an error");
        }
    });
    Ok(send)
}

fn boxed(body: Incoming) -> Body {
    body.map_err(BoxError::from).boxed()
}

/// A connection with bytes already read from it put back in front.
pub(super) struct Rewound<IO> {
    first: Bytes,
    io: IO,
}

impl<IO> Rewound<IO> {
    pub(super) fn new(first: Bytes, io: IO) -> Rewound<IO> {
        Rewound { first, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewound<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.first.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.first.len().min(buf.remaining());
        buf.put_slice(&self.first[..n]);
        self.first.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewound<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
