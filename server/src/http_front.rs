//! The public HTTP listener: routes each request by its Host to a tunnel.
//!
//! Each visitor connection gets one tunnel stream, opened at its first
//! request and reused for the next ones while the connection is kept alive,
//! so keep-alive visitors cost one stream, not one per request. A visitor that
//! upgrades (a websocket) keeps its stream for the upgraded bytes.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use droid_core::protocol::{self, StreamHeader};
use droid_core::proxy::{self, Body};
use droid_core::watch::{Watch, Watched};
use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, HeaderName, HeaderValue, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::Shared;
use crate::access::Verdict;
use crate::guard::{GuardedBody, Tripped};
use crate::metrics::OwnAnswer;
use crate::rate;
use crate::registry::{Lookup, Tunnel};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// hyper's own cap on headers per request.
const DEFAULT_MAX_HEADERS: usize = 100;

/// Serves one visitor connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    serve_io(shared, stream, peer, None).await;
}

/// Refuses a visitor connection past the caps with a 503 saying why.
pub(crate) async fn refuse(
    shared: Arc<Shared>,
    stream: TcpStream,
    why: droid_core::conn_caps::Refusal,
) {
    shared
        .metrics
        .answered(503, Some(OwnAnswer::ConnectionLimit), None);
    crate::listener::refuse_http(stream, why).await;
}

/// Serves one visitor connection, plain or (with the host its TLS
/// handshake named, `sni`) over HTTPS, until it closes.
pub(crate) async fn serve_io<IO>(
    shared: Arc<Shared>,
    stream: IO,
    peer: SocketAddr,
    sni: Option<String>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let https = sni.is_some();
    serve_visitor(shared, stream, peer, sni, https, false).await;
}

/// Serves a visitor's connection that another node of the cluster
/// forwarded (see `peer`): `visitor` is the visitor's own address.
pub(crate) async fn serve_forwarded<IO>(
    shared: Arc<Shared>,
    stream: IO,
    visitor: SocketAddr,
    https: bool,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    serve_visitor(shared, stream, visitor, None, https, true).await;
}

async fn serve_visitor<IO>(
    shared: Arc<Shared>,
    stream: IO,
    peer: SocketAddr,
    sni: Option<String>,
    https: bool,
    forwarded: bool,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let visitor = Arc::new(Visitor {
        shared: shared.clone(),
        peer,
        peer_ip: ip_header(peer.ip()),
        sni,
        https,
        forwarded,
        upstream: Mutex::new(None),
        node: Mutex::new(None),
    });
    let service = service_fn(move |request| {
        let visitor = visitor.clone();
        async move { proxy::infallible(visitor.counted(request).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_read_timeout)
        .max_header_size(shared.config.max_header_size);
    if shared.config.max_headers != DEFAULT_MAX_HEADERS {
        // hyper parses into an inline array of 100 unless told otherwise;
        // any explicit cap costs an array filled per request.
        builder.max_headers(shared.config.max_headers);
    }
    let stream = Watched::new(stream, VisitorBytes(shared.clone()));
    let result = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = result {
        if e.is_parse_too_large() {
            // hyper answered 431 itself; the service never saw the request.
            shared
                .metrics
                .answered(431, Some(OwnAnswer::HeadersTooLarge), None);
        }
        debug!(%peer, error = %e, "visitor connection ended with an error");
    }
}

/// Counts a visitor's bytes each way.
struct VisitorBytes(Arc<Shared>);

impl Watch for VisitorBytes {
    fn read(&mut self, bytes: &[u8]) {
        self.0.metrics.bytes_in.inc_by(bytes.len() as u64);
    }

    fn written(&mut self, bytes: &[u8]) {
        self.0.metrics.bytes_out.inc_by(bytes.len() as u64);
    }
}

/// A page the server answers itself, marked with why for the metrics.
fn own(mut page: Response<Body>, why: OwnAnswer) -> Response<Body> {
    page.extensions_mut().insert(why);
    page
}

/// How long a request took to its answer's head through a tunnel.
#[derive(Debug, Clone, Copy)]
struct Through(Duration);

struct Visitor {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The peer's address as a header value, made once per connection.
    peer_ip: HeaderValue,
    /// On HTTPS, the host the TLS handshake named (lowercase): every
    /// request on the connection must be for it.
    sni: Option<String>,
    /// Whether the visitor came over HTTPS (here, or to the node that
    /// forwarded it).
    https: bool,
    /// Whether another node forwarded this connection: it is not sent on.
    forwarded: bool,
    /// The tunnel stream this connection's requests go through, once opened.
    upstream: Mutex<Option<Upstream>>,
    /// The connection to another node this connection's requests for a
    /// tunnel it holds go through, once opened.
    node: Mutex<Option<NodeLink>>,
}

/// Where a tunnel this node does not serve is.
enum Elsewhere {
    /// Live on the node at this peer address.
    Node(String),
    /// Its client is reconnecting, to whichever node.
    Resuming,
    /// Nowhere, or nowhere this node may send the request.
    Nowhere,
    /// Redis does not answer.
    Unknown,
}

/// A visitor connection's link to the node that holds a tunnel.
struct NodeLink {
    /// The tunnel it was opened for: later requests for it on the same
    /// visitor connection go the same way without asking Redis again.
    name: String,
    /// The node's peer address.
    addr: String,
    sender: SendRequest<Incoming>,
}

struct Upstream {
    tunnel: Arc<Tunnel>,
    sender: SendRequest<GuardedBody>,
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
    /// Answers a request and counts the answer.
    async fn counted(&self, request: Request<Incoming>) -> Response<Body> {
        let response = self.handle(request).await;
        let own = response.extensions().get::<OwnAnswer>().copied();
        let through = response.extensions().get::<Through>().map(|t| t.0);
        self.shared
            .metrics
            .answered(response.status().as_u16(), own, through);
        response
    }

    async fn handle(&self, mut request: Request<Incoming>) -> Response<Body> {
        let html = proxy::wants_html(request.headers());
        if request.headers().get_all(HOST).iter().nth(1).is_some() {
            // RFC 9112 §3.2: which Host wins is the ambiguity an attacker wants.
            return own(
                proxy::error_page(
                    StatusCode::BAD_REQUEST,
                    "the request has more than one Host header",
                    html,
                ),
                OwnAnswer::BadRequest,
            );
        }
        use_target_authority(&mut request);
        let Some(host) = request_host(&request) else {
            return own(
                proxy::error_page(
                    StatusCode::BAD_REQUEST,
                    "the request has no Host header, so it cannot be routed to a tunnel",
                    html,
                ),
                OwnAnswer::BadRequest,
            );
        };
        if let Some(sni) = &self.sni
            && *sni != host
        {
            // RFC 9110 §15.5.20: the certificate and the tunnel were chosen
            // for the SNI name; another host needs a connection of its own.
            return own(
                proxy::error_page(
                    StatusCode::MISDIRECTED_REQUEST,
                    &format!(
                        "this connection was opened for {sni}; send requests for {host} on a connection of their own"
                    ),
                    html,
                ),
                OwnAnswer::Misdirected,
            );
        }
        let domain = &self.shared.config.domain;
        let name = match route(&host, domain) {
            Route::Tunnel(name) => name,
            Route::Apex => {
                return own(
                    proxy::error_page(
                        StatusCode::NOT_FOUND,
                        &format!("this is a droid tunnel server; tunnels live at NAME.{domain}"),
                        html,
                    ),
                    OwnAnswer::NoTunnel,
                );
            }
            Route::Foreign => {
                return own(
                    proxy::error_page(
                        StatusCode::BAD_REQUEST,
                        &format!("this server serves *.{domain}; {host} is not one of its names"),
                        html,
                    ),
                    OwnAnswer::BadHost,
                );
            }
        };
        let tunnel = match self.shared.registry.lookup(name) {
            Lookup::Live(tunnel) if tunnel.tcp.is_some() => {
                return own(
                    proxy::error_page(
                        StatusCode::NOT_FOUND,
                        &format!("{name} is a TCP tunnel; it takes no HTTP requests"),
                        html,
                    ),
                    OwnAnswer::NoTunnel,
                );
            }
            Lookup::Live(tunnel) => tunnel,
            // Its owner may have come back on another node; or another
            // node may hold it.
            lookup => {
                let resuming_here = matches!(lookup, Lookup::Resuming);
                let (status, message, why) = match self.node_of(name).await {
                    Elsewhere::Node(node) => {
                        return self.forward_to_node(node, name, request, html).await;
                    }
                    Elsewhere::Nowhere if !resuming_here => (
                        StatusCode::NOT_FOUND,
                        format!("no tunnel named {name} is connected to this server"),
                        OwnAnswer::NoTunnel,
                    ),
                    Elsewhere::Unknown if !resuming_here => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "the registry of tunnels is unavailable, so {name} cannot be found now; try again"
                        ),
                        OwnAnswer::RegistryAway,
                    ),
                    _ => (
                        StatusCode::BAD_GATEWAY,
                        format!("the tunnel {name} is reconnecting; try again in a moment"),
                        OwnAnswer::Reconnecting,
                    ),
                };
                return own(proxy::error_page(status, &message, html), why);
            }
        };
        let started = Instant::now();
        let method = request.method().clone();
        // A copy: a share of the request's bytes would keep hyper's whole
        // read buffer alive until the answer comes.
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut response = self.serve_tunnel(&tunnel, request, host, html).await;
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        response.extensions_mut().insert(Through(elapsed));
        let name = &tunnel.name;
        debug!(tunnel = %name, %method, %path, status, ?elapsed, "forwarded");
        tunnel
            .log
            .record(name, method.as_str(), &path, status, elapsed);
        response
    }

    /// The answer for a request routed to `tunnel`: refused by its checks,
    /// or forwarded through it.
    async fn serve_tunnel(
        &self,
        tunnel: &Arc<Tunnel>,
        mut request: Request<Incoming>,
        host: String,
        html: bool,
    ) -> Response<Body> {
        let name = &tunnel.name;
        let authorization = request
            .headers()
            .get(AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        match tunnel.access.check(self.peer.ip(), authorization) {
            Verdict::Pass => {
                if tunnel.access.has_auth() {
                    // Droid's credentials, not the app's: they stop here.
                    request.headers_mut().remove(AUTHORIZATION);
                }
            }
            Verdict::Forbidden => {
                return own(
                    proxy::error_page(
                        StatusCode::FORBIDDEN,
                        &format!(
                            "the tunnel {name} does not accept visitors from {}",
                            self.peer.ip()
                        ),
                        html,
                    ),
                    OwnAnswer::Forbidden,
                );
            }
            Verdict::Unauthorized => {
                let mut page = proxy::error_page(
                    StatusCode::UNAUTHORIZED,
                    &format!("the tunnel {name} asks for a user name and password"),
                    html,
                );
                if let Ok(v) =
                    HeaderValue::from_str(&format!("Basic realm=\"{name}\", charset=\"UTF-8\""))
                {
                    page.headers_mut().insert(WWW_AUTHENTICATE, v);
                }
                return own(page, OwnAnswer::Unauthorized);
            }
        }
        if let Some(max) = self.shared.config.max_body_size
            && declared_length(&request).is_some_and(|n| n > max)
        {
            return too_large(max, html);
        }
        // Last of the checks: a request refused for another reason does
        // not use up the tunnel's rate.
        if let Some(rate) = &tunnel.rate
            && let Err(wait) = rate.check()
        {
            return too_many(name, wait, html);
        }
        // The visitor's hop-by-hop headers go first, so that a `Connection`
        // naming them cannot remove what Droid adds below.
        let upgrading = proxy::is_upgrade(request.headers());
        proxy::strip_hop_by_hop(request.headers_mut(), upgrading);
        self.add_forwarded_headers(&mut request, host);
        if let Some(app_host) = &tunnel.host_header {
            request.headers_mut().insert(HOST, app_host.clone());
        }
        self.forward(tunnel, request, html).await
    }

    fn add_forwarded_headers(&self, request: &mut Request<Incoming>, host: String) {
        let headers = request.headers_mut();
        let forwarded_for = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(earlier) if !earlier.trim().is_empty() => {
                HeaderValue::from_str(&format!("{earlier}, {}", self.peer.ip())).ok()
            }
            _ => Some(self.peer_ip.clone()),
        };
        if let Some(v) = forwarded_for {
            headers.insert(X_FORWARDED_FOR, v);
        }
        let proto = if self.https { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        // The host's own bytes become the value, not a copy of them.
        if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(host)) {
            headers.insert(X_FORWARDED_HOST, v);
        }
    }

    async fn forward(
        &self,
        tunnel: &Arc<Tunnel>,
        request: Request<Incoming>,
        html: bool,
    ) -> Response<Body> {
        let config = &self.shared.config;
        let tripped = Tripped::default();
        let request = request.map(|body| {
            GuardedBody::new(
                body,
                config.max_body_size,
                config.body_read_timeout,
                tripped.clone(),
            )
        });
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
            Err(_) if tripped.too_large() => too_large(config.max_body_size.unwrap_or(0), html),
            Err(_) if tripped.too_slow() => {
                let mut page = proxy::error_page(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body stopped arriving",
                    html,
                );
                page.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                own(page, OwnAnswer::BodyTimeout)
            }
            Err(e) if e.is_user() => {
                // The visitor's own request broke on the way (its body: a
                // bad chunk size, say): the visitor's fault, not the tunnel's.
                debug!(tunnel = %tunnel.name, error = %e, "malformed request body");
                let mut page = proxy::error_page(
                    StatusCode::BAD_REQUEST,
                    "the request body is malformed",
                    html,
                );
                page.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
                own(page, OwnAnswer::BadRequest)
            }
            Err(e) if !tunnel.opener.is_ended() => {
                // The client closes the stream when the app closes its
                // connection: the app hung up without answering.
                debug!(tunnel = %tunnel.name, error = %e, "the app closed the connection");
                own(
                    proxy::error_page(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "the local app of the tunnel {} closed the connection without an answer",
                            tunnel.name
                        ),
                        html,
                    ),
                    OwnAnswer::AppClosed,
                )
            }
            Err(e) => {
                info!(tunnel = %tunnel.name, error = %e, "request failed inside the tunnel");
                own(
                    proxy::error_page(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "the tunnel {} went away while forwarding the request",
                            tunnel.name
                        ),
                        html,
                    ),
                    OwnAnswer::TunnelGone,
                )
            }
        }
    }

    /// Where the cluster says `name` is, for a request this node cannot
    /// serve: the node this connection's last request for it went to, else
    /// Redis's answer (as kept). Nowhere for a connection another node
    /// forwarded, and outside a cluster.
    async fn node_of(&self, name: &str) -> Elsewhere {
        let Some(cluster) = self.shared.cluster.get().filter(|_| !self.forwarded) else {
            return Elsewhere::Nowhere;
        };
        {
            let slot = self.node.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(link) = slot.as_ref()
                && link.name == name
                && !link.sender.is_closed()
            {
                return Elsewhere::Node(link.addr.clone());
            }
        }
        match cluster.locate(name).await {
            Err(_) => Elsewhere::Unknown,
            Ok(None) => Elsewhere::Nowhere,
            Ok(Some(found)) => match cluster.peer_serving(&found) {
                Some(peer) => Elsewhere::Node(peer.to_string()),
                None if !found.live => Elsewhere::Resuming,
                None => Elsewhere::Nowhere,
            },
        }
    }

    /// Sends a request for `name` to the node that holds its tunnel, at
    /// its peer address `node`, and streams the answer back.
    async fn forward_to_node(
        &self,
        node: String,
        name: &str,
        request: Request<Incoming>,
        html: bool,
    ) -> Response<Body> {
        // The node it pointed to failed: ask Redis again next time.
        let unreachable = || {
            if let Some(cluster) = self.shared.cluster.get() {
                cluster.forget(name);
            }
            own(
                proxy::error_page(
                    StatusCode::BAD_GATEWAY,
                    &format!("the server holding the tunnel {name} did not answer; try again"),
                    html,
                ),
                OwnAnswer::TunnelGone,
            )
        };
        let kept = {
            let mut slot = self.node.lock().unwrap_or_else(|p| p.into_inner());
            slot.take()
                .filter(|link| link.addr == node && !link.sender.is_closed())
        };
        let mut sender = match kept {
            Some(link) => link.sender,
            None => match self.open_node(&node).await {
                Some(sender) => sender,
                None => return unreachable(),
            },
        };
        match proxy::forward(&mut sender, request).await {
            Ok(response) => {
                // A link whose node no longer holds the tunnel (it moved)
                // is not kept: the next request asks Redis again.
                let moved = response.status() == StatusCode::NOT_FOUND
                    || response.status() == StatusCode::BAD_GATEWAY;
                if moved && let Some(cluster) = self.shared.cluster.get() {
                    cluster.forget(name);
                }
                if response.status() != StatusCode::SWITCHING_PROTOCOLS && !moved {
                    *self.node.lock().unwrap_or_else(|p| p.into_inner()) = Some(NodeLink {
                        name: name.to_string(),
                        addr: node,
                        sender,
                    });
                }
                response.map(Body::Left)
            }
            Err(e) => {
                info!(tunnel = %name, %node, error = %e, "a request forwarded to another node failed");
                unreachable()
            }
        }
    }

    /// A connection to another node's peer port, for this visitor.
    async fn open_node(&self, node: &str) -> Option<SendRequest<Incoming>> {
        let cluster = self.shared.cluster.get()?;
        let mode = if self.https {
            crate::peer::Mode::Https
        } else {
            crate::peer::Mode::Http
        };
        let timeout = self.shared.config.stream_open_timeout;
        let opened = crate::peer::open(cluster, node, Some(self.peer), mode, timeout).await;
        match opened {
            Ok(stream) => proxy::handshake(stream).await.ok(),
            Err(e) => {
                info!(%node, error = %e, "could not open a link to another node");
                None
            }
        }
    }

    fn take_upstream(&self, tunnel: &Arc<Tunnel>) -> Option<SendRequest<GuardedBody>> {
        let mut slot = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        let upstream = slot.take()?;
        (Arc::ptr_eq(&upstream.tunnel, tunnel) && !upstream.sender.is_closed())
            .then_some(upstream.sender)
    }

    fn put_upstream(&self, tunnel: &Arc<Tunnel>, sender: SendRequest<GuardedBody>) {
        let mut slot = self.upstream.lock().unwrap_or_else(|p| p.into_inner());
        *slot = Some(Upstream {
            tunnel: tunnel.clone(),
            sender,
        });
    }

    async fn open_upstream(
        &self,
        tunnel: &Arc<Tunnel>,
    ) -> Result<SendRequest<GuardedBody>, Response<Body>> {
        let name = &tunnel.name;
        let gone = || {
            own(
                proxy::error_page(
                    StatusCode::BAD_GATEWAY,
                    &format!("the tunnel {name} disconnected"),
                    false,
                ),
                OwnAnswer::TunnelGone,
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
                return Err(own(
                    proxy::error_page(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("the tunnel {name} has too many requests in flight; try again"),
                        false,
                    ),
                    OwnAnswer::StreamLimit,
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

/// An address as a header value (an address prints as digits, dots, colons
/// and hex, always a valid value).
fn ip_header(ip: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&ip.to_string()).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The body length a request declares, if it declares one.
fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A 413 that closes the connection: the rest of the body is not read.
fn too_large(max: u64, html: bool) -> Response<Body> {
    let mut page = proxy::error_page(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is larger than this server accepts ({max} bytes)"),
        html,
    );
    page.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    own(page, OwnAnswer::TooLarge)
}

/// A 429 with `Retry-After`: the tunnel's request rate is used up.
fn too_many(name: &str, wait: Duration, html: bool) -> Response<Body> {
    debug!(tunnel = %name, ?wait, "request rate limit reached");
    let mut page = proxy::error_page(
        StatusCode::TOO_MANY_REQUESTS,
        &format!("the tunnel {name} gets more requests than this server allows; slow down"),
        html,
    );
    page.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(rate::retry_after_secs(wait)));
    own(page, OwnAnswer::RateLimited)
}

/// An absolute-form target (`GET http://NAME.domain/x`) names the host the
/// request is for, and RFC 9112 §3.2.2 says it replaces `Host`: the app
/// must see the host the request was routed by, not another one the
/// visitor wrote beside it.
fn use_target_authority<B>(request: &mut Request<B>) {
    let Some(host) = request.uri().host() else {
        return;
    };
    let authority = match request.uri().port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&authority) {
        request.headers_mut().insert(HOST, value);
    }
}

/// The host a request is for, lowercased, without port or trailing dot.
fn request_host<B>(request: &Request<B>) -> Option<String> {
    let raw = match request.uri().host() {
        Some(host) => host,
        None => request.headers().get(HOST)?.to_str().ok()?,
    };
    let host = if let Some(rest) = raw.strip_prefix('[') {
        // [v6]:port
        rest.split(']').next().unwrap_or_default()
    } else {
        raw.rsplit_once(':').map_or(raw, |(h, _)| h)
    };
    let host = host.trim_end_matches('.');
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

fn route<'a>(host: &'a str, domain: &str) -> Route<'a> {
    if host == domain {
        return Route::Apex;
    }
    match host.strip_suffix(domain).and_then(|h| h.strip_suffix('.')) {
        // Anything but a valid name (spaces, `_`, `@`, 64 characters...) is
        // a host this server does not serve: 400, not a 404 lookup.
        Some(name) if crate::names::validate(name).is_ok() => Route::Tunnel(name),
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
