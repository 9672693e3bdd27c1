//! The public HTTP listener: routes each request by its Host to a tunnel.
//!
//! Each request's head is parsed once (`crate::http1::request`), routed,
//! checked and written again for the app; its body is relayed with its
//! framing followed, and the app's answer comes back as the bytes the app
//! wrote, read only for its status and where it ends (`crate::http1`).
//! Each visitor connection gets one tunnel stream, opened at its first
//! request and reused for the next ones while both sides keep the
//! connection, so keep-alive visitors cost one stream, not one per
//! request. A visitor that upgrades (a websocket) keeps its stream for the
//! upgraded bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use bytes::Buf;
use droid_core::protocol::{self, StreamHeader};
use droid_core::watch::{Watch, Watched};
use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::Shared;
use crate::access::Verdict;
use crate::http1::page::Page;
use crate::http1::relay::{self, AnswerError, Answered, Body, BodyError, Reader};
use crate::http1::request::{Forwarding, Framing, Refused, RequestHead};
use crate::metrics::OwnAnswer;
use crate::rate;
use crate::registry::{Lookup, Tunnel};

/// Serves one visitor connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    serve_visitor(shared, stream, peer, None, false, false, false).await;
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

/// Serves one visitor connection over HTTPS (with the host its TLS
/// handshake named, `sni`; `h2`: it chose HTTP/2 by ALPN) until it closes.
pub(crate) async fn serve_io<IO>(
    shared: Arc<Shared>,
    stream: IO,
    peer: SocketAddr,
    sni: String,
    h2: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_visitor(shared, stream, peer, Some(sni), true, false, h2).await;
}

/// Serves a visitor's connection that another node of the cluster
/// forwarded (see `peer`): `visitor` is the visitor's own address.
pub(crate) async fn serve_forwarded<IO>(
    shared: Arc<Shared>,
    stream: IO,
    visitor: SocketAddr,
    https: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_visitor(shared, stream, visitor, None, https, true, false).await;
}

/// Serves a visitor's connection in HTTP/1, or in HTTP/2 when ALPN chose
/// it (`h2`) or the connection opens with HTTP/2's preface.
async fn serve_visitor<IO>(
    shared: Arc<Shared>,
    stream: IO,
    peer: SocketAddr,
    sni: Option<String>,
    https: bool,
    forwarded: bool,
    h2: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let stream = Watched::new(stream, VisitorBytes(shared.clone()));
    let (read, write) = tokio::io::split(stream);
    let mut conn = Conn {
        visitor: Visitor {
            shared,
            peer,
            peer_ip: peer.ip().to_string(),
            sni,
            https,
            forwarded,
        },
        from: Reader::new(read),
        to: write,
        upstream: None,
        first_deadline: None,
    };
    let opening = if h2 {
        Opening::Http2
    } else {
        conn.opening().await
    };
    match opening {
        Opening::Http1 => conn.run().await,
        Opening::Http2 => {
            let Conn {
                visitor, from, to, ..
            } = conn;
            let io = h2::Rewound::new(from.buf.freeze(), from.io.unsplit(to));
            h2::serve(visitor, io).await;
        }
        Opening::Gone => {}
    }
}

/// How a visitor's connection opens.
enum Opening {
    Http1,
    /// With HTTP/2's preface: prior knowledge (RFC 9113 §3.3).
    Http2,
    /// Closed, or silent for the header time.
    Gone,
}

/// The client preface of HTTP/2 (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

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

/// Who is asking, and how they came.
struct Visitor {
    shared: Arc<Shared>,
    peer: SocketAddr,
    /// The peer's address as it goes in `X-Forwarded-For`, made once.
    peer_ip: String,
    /// On HTTPS, the host the TLS handshake named (lowercase): every
    /// request on the connection must be for it.
    sni: Option<String>,
    /// Whether the visitor came over HTTPS (here, or to the node that
    /// forwarded it).
    https: bool,
    /// Whether another node forwarded this connection: it is not sent on.
    forwarded: bool,
}

/// Anything a request can be relayed over: a tunnel stream, or a link to
/// another node.
trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

/// Where a connection's requests for one tunnel go, kept between them.
struct Upstream {
    dest: Dest,
    from: Reader<ReadHalf<Box<dyn Link>>>,
    to: WriteHalf<Box<dyn Link>>,
}

impl Upstream {
    fn new(dest: Dest, link: Box<dyn Link>) -> Upstream {
        let (read, write) = tokio::io::split(link);
        Upstream {
            dest,
            from: Reader::new(read),
            to: write,
        }
    }
}

/// What an upstream was opened for.
#[derive(Clone)]
enum Dest {
    /// A tunnel this node holds.
    Tunnel(Arc<Tunnel>),
    /// The node at `addr`, which holds the tunnel `name`.
    Node { name: String, addr: String },
}

/// Where a request goes.
enum Target {
    /// A tunnel this node holds, for `host` (as routed).
    Tunnel(Arc<Tunnel>, String),
    /// Another node, at `addr`, which holds the tunnel `name`.
    Node { name: String, addr: String },
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

/// How long a draining server waits for a new connection's first request.
const FIRST_REQUEST_WHILE_DRAINING: Duration = Duration::from_secs(1);

/// What a connection does after an exchange.
enum Next {
    Continue,
    Close,
    /// Splice the visitor to this upstream: the app switched protocols.
    Upgraded(Upstream),
}

/// How relaying one request went.
enum Relayed {
    /// The answer reached the visitor whole; `body_done`: all of the
    /// request body reached the app.
    Answered { answer: Answered, body_done: bool },
    /// Stopped before any answer began: this page says why.
    Refused(Page),
    /// The upstream failed before a byte of an answer reached the visitor.
    Failed(AnswerError),
    /// Broke after the answer began (with this status; 0 for none yet),
    /// or the visitor left.
    Broken(u16),
}

struct Conn<R, W> {
    visitor: Visitor,
    from: Reader<R>,
    to: W,
    upstream: Option<Upstream>,
    /// When the first request's head must have come: the header time
    /// counts from the connection's start, its opening read included.
    first_deadline: Option<tokio::time::Instant>,
}

impl<R, W> Conn<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    async fn run(mut self) {
        while let Some(head) = self.read_head().await {
            match self.exchange(head).await {
                Next::Continue => {}
                Next::Close => break,
                Next::Upgraded(upstream) => {
                    relay::splice(self.from, self.to, upstream.from, upstream.to).await;
                    return;
                }
            }
        }
        let _ = self.to.shutdown().await;
    }

    /// Whether the connection opens with HTTP/2's preface, read within the
    /// header time (only as far as it matches).
    async fn opening(&mut self) -> Opening {
        let deadline = tokio::time::Instant::now() + self.visitor.shared.config.header_read_timeout;
        self.first_deadline = Some(deadline);
        loop {
            let n = self.from.buf.len().min(H2_PREFACE.len());
            if self.from.buf[..n] != H2_PREFACE[..n] {
                return Opening::Http1;
            }
            if n == H2_PREFACE.len() {
                return Opening::Http2;
            }
            match tokio::time::timeout_at(deadline, self.from.fill()).await {
                Ok(Ok(0) | Err(_)) | Err(_) => return Opening::Gone,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next request's head, within the header time; `None` when the
    /// connection is done (closed, timed out, or refused with a page).
    async fn read_head(&mut self) -> Option<RequestHead> {
        let config = &self.visitor.shared.config;
        // A connection's first request is awaited even while draining.
        let first = self.first_deadline.is_some();
        let deadline = self
            .first_deadline
            .take()
            .unwrap_or_else(|| tokio::time::Instant::now() + config.header_read_timeout);
        let (max_size, max_headers) = (config.max_header_size, config.max_headers);
        loop {
            let page = match RequestHead::parse(&mut self.from.buf, max_size, max_headers) {
                Ok(Some(head)) => return Some(head),
                Ok(None) => None,
                Err(e @ Refused::TooLarge) => Some(Page::new(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    OwnAnswer::HeadersTooLarge,
                    &e.to_string(),
                    false,
                )),
                Err(Refused::Malformed(why)) => Some(Page::new(
                    StatusCode::BAD_REQUEST,
                    OwnAnswer::BadRequest,
                    why,
                    false,
                )),
            };
            if let Some(page) = page {
                self.answer(page.closing(), None, None).await;
                return None;
            }
            // Between requests, a draining server closes the connection; a
            // new one gets a moment for its first request (it may be on
            // its way), not the whole header time.
            let draining = self.visitor.shared.draining.clone();
            let closing = async {
                draining.cancelled().await;
                if first {
                    tokio::time::sleep(FIRST_REQUEST_WHILE_DRAINING).await;
                }
            };
            let idle = self.from.buf.is_empty();
            let filled = tokio::select! {
                filled = tokio::time::timeout_at(deadline, self.from.fill()) => filled,
                () = closing, if idle => return None,
            };
            match filled {
                Ok(Ok(0) | Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) if self.from.buf.is_empty() => return None,
                Err(_) => {
                    let page = Page::new(
                        StatusCode::REQUEST_TIMEOUT,
                        OwnAnswer::BodyTimeout,
                        "the request's headers took too long to arrive",
                        false,
                    );
                    self.answer(page.closing(), None, None).await;
                    return None;
                }
            }
        }
    }

    /// Sends a page the server answers itself, in the version of the
    /// request it answers (`None` before one was read), and counts it
    /// (`through`: how long it took, for a request routed to a tunnel).
    async fn answer(
        &mut self,
        page: Page,
        head: Option<&RequestHead>,
        through: Option<Duration>,
    ) -> Next {
        let metrics = &self.visitor.shared.metrics;
        metrics.answered(page.status.as_u16(), Some(page.why), through);
        let http10 = head.is_some_and(|h| h.http10);
        // An answer to HEAD is its head alone (RFC 9110 §9.3.2).
        let to_head = head.is_some_and(|h| h.method == Method::HEAD);
        let sent = self.to.write_all(&page.bytes(http10, to_head)).await;
        if sent.is_err() || self.to.flush().await.is_err() || page.close {
            return Next::Close;
        }
        Next::Continue
    }

    /// Answers with a page, closing the connection when the request's body
    /// (unread) or the visitor says so.
    async fn refuse(&mut self, page: Page, head: &RequestHead, through: Option<Duration>) -> Next {
        let page = if head.close || head.upgrade || head.framing != Framing::None {
            page.closing()
        } else {
            page
        };
        self.answer(page, Some(head), through).await
    }

    /// Answers one request: with a page, or through a tunnel (here or on
    /// another node).
    async fn exchange(&mut self, head: RequestHead) -> Next {
        match self.route(&head).await {
            Ok(Target::Tunnel(tunnel, host)) => self.through_tunnel(tunnel, head, host).await,
            Ok(Target::Node { name, addr }) => self.through_node(head, name, addr).await,
            Err(page) => self.refuse(page, &head, None).await,
        }
    }

    /// Where a request goes, or the page that says why it goes nowhere.
    async fn route(&mut self, head: &RequestHead) -> Result<Target, Page> {
        // A node that closed this connection's link (it stopped, or
        // drains) is asked about no more: Redis says where the name is.
        if self
            .upstream
            .as_mut()
            .is_some_and(|u| !u.from.idle_and_open())
        {
            self.upstream = None;
        }
        let kept = self.upstream.as_ref().map(|u| &u.dest);
        self.visitor.route(head.authority(), head.html, kept).await
    }
}

impl Visitor {
    /// Where a request for `authority` goes, or the page that says why it
    /// goes nowhere (`html`: the visitor reads HTML). `kept`: where this
    /// connection's last request went.
    async fn route(
        &self,
        authority: Option<&[u8]>,
        html: bool,
        kept: Option<&Dest>,
    ) -> Result<Target, Page> {
        let page = |status, why, reason: &str| Page::new(status, why, reason, html);
        let Some(host) = authority.and_then(normal_host) else {
            return Err(page(
                StatusCode::BAD_REQUEST,
                OwnAnswer::BadRequest,
                "the request has no Host header, so it cannot be routed to a tunnel",
            ));
        };
        if let Some(sni) = &self.sni
            && *sni != host
        {
            // RFC 9110 §15.5.20: the certificate and the tunnel were chosen
            // for the SNI name; another host needs a connection of its own.
            return Err(misdirected(sni, &host, html));
        }
        let shared = self.shared.clone();
        let domain = &shared.config.domain;
        let name = match route(&host, domain) {
            Route::Tunnel(name) => name,
            Route::Apex => {
                return Err(page(
                    StatusCode::NOT_FOUND,
                    OwnAnswer::NoTunnel,
                    &format!("this is a droid tunnel server; tunnels live at NAME.{domain}"),
                ));
            }
            Route::Foreign => {
                return Err(page(
                    StatusCode::BAD_REQUEST,
                    OwnAnswer::BadHost,
                    &format!("this server serves *.{domain}; {host} is not one of its names"),
                ));
            }
        };
        let resuming_here = match shared.registry.lookup(name) {
            Lookup::Live(tunnel) if tunnel.tcp.is_some() => {
                return Err(page(
                    StatusCode::NOT_FOUND,
                    OwnAnswer::NoTunnel,
                    &format!("{name} is a TCP tunnel; it takes no HTTP requests"),
                ));
            }
            Lookup::Live(tunnel) => return Ok(Target::Tunnel(tunnel, host)),
            lookup => matches!(lookup, Lookup::Resuming),
        };
        // Its owner may have come back on another node; or another node
        // may hold it.
        let (status, message, why) = match self.node_of(name, kept).await {
            Elsewhere::Node(addr) => {
                let name = name.to_string();
                return Ok(Target::Node { name, addr });
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
        Err(page(status, why, &message))
    }

    /// Where the cluster says `name` is, for a request this node cannot
    /// serve: the node this connection's last request for it went to
    /// (`kept`), else Redis's answer (as kept). Nowhere for a connection
    /// another node forwarded, and outside a cluster.
    async fn node_of(&self, name: &str, kept: Option<&Dest>) -> Elsewhere {
        if let Some(Dest::Node { name: kept, addr }) = kept
            && kept == name
        {
            return Elsewhere::Node(addr.clone());
        }
        self.locate(name).await
    }
}

impl Visitor {
    /// Where Redis says `name` is.
    async fn locate(&self, name: &str) -> Elsewhere {
        let Some(cluster) = self.shared.cluster.get().filter(|_| !self.forwarded) else {
            return Elsewhere::Nowhere;
        };
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
}

mod h2;
mod through;

/// The 421 for a request on a connection opened for another host.
fn misdirected(opened_for: &str, host: &str, html: bool) -> Page {
    Page::new(
        StatusCode::MISDIRECTED_REQUEST,
        OwnAnswer::Misdirected,
        &format!(
            "this connection was opened for {opened_for}; send requests for {host} on a connection of their own"
        ),
        html,
    )
}

/// The host a request is for, lowercased, without port or trailing dot;
/// `None` when it is empty or not printable ASCII.
fn normal_host(authority: &[u8]) -> Option<String> {
    let raw = std::str::from_utf8(authority)
        .ok()
        .filter(|a| a.bytes().all(|b| b.is_ascii_graphic()))?;
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
        let host = |a: &str| normal_host(a.as_bytes());
        assert_eq!(
            host("MyApp.Localhost.:8080").as_deref(),
            Some("myapp.localhost")
        );
        assert_eq!(host("a.t.example").as_deref(), Some("a.t.example"));
        assert_eq!(host("[::1]:80").as_deref(), Some("::1"));
        assert_eq!(host(""), None);
        assert_eq!(host("caf\u{e9}.t.example"), None);
    }
}
