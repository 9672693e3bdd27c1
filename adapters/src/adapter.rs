//! The [`Adapter`] trait and the runtime that hosts one.
//!
//! In the manner of pingora's `ServerApp`: the runtime ([`run_adapter`])
//! owns the listeners, accepting (with back-off when `accept` fails), TLS
//! on the listeners that have it, the connection caps per IP and in total
//! (shared by all of an adapter's listeners), a tracing span per
//! connection, and shutdown. An adapter owns only its protocol:
//! [`Adapter::serve`] gets a connection ready for it, plain or TLS alike,
//! and a cancellation token to watch.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use droid_core::conn_caps::{Admission, ConnCaps};
pub use droid_core::conn_caps::{ConnLimits, Refusal};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The future an adapter returns for one connection.
pub type ServeFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A byte stream an adapter speaks its protocol on.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// An accepted connection, TLS already done where the listener has it.
pub type Conn = Box<dyn Io>;

/// A protocol turned into deliveries. One value serves every connection.
pub trait Adapter: Send + Sync + 'static {
    /// A short name for logs and spans (`"smtp"`).
    fn name(&self) -> &'static str;

    /// Serves one accepted connection until it ends. `shutdown` is cancelled
    /// when the server stops: finish the current exchange, say goodbye in
    /// the protocol's terms, return.
    fn serve(
        self: Arc<Self>,
        io: Conn,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> ServeFuture;

    /// Serves a connection that came over TLS (`tls` says how), on a
    /// [`Listener::tls`] or [`Listener::tls_or_plain`]. By default, as any
    /// other.
    fn serve_tls(
        self: Arc<Self>,
        io: Conn,
        peer: SocketAddr,
        tls: TlsSession,
        shutdown: CancellationToken,
    ) -> ServeFuture {
        let _ = tls;
        self.serve(io, peer, shutdown)
    }

    /// Tells a connection it was refused, in the protocol's terms (SMTP
    /// says `421`). The default just closes it.
    fn refuse(self: Arc<Self>, io: Conn, reason: Refusal) -> ServeFuture {
        let _ = reason;
        Box::pin(async move { drop(io) })
    }
}

/// What a TLS connection agreed on, as apps are told it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsSession {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: String,
    /// The cipher suite, IANA's name: `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

impl TlsSession {
    /// What `conn` agreed on, once its handshake is done.
    pub fn of(conn: &tokio_rustls::rustls::ServerConnection) -> TlsSession {
        use tokio_rustls::rustls::ProtocolVersion;
        let version = match conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("unknown")
            .to_string();
        TlsSession { version, cipher }
    }
}

/// The listen backlog [`bind_listener`] uses.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listener with a backlog of [`LISTEN_BACKLOG`].
///
/// `TcpListener::bind` uses a backlog of 128. SMTP is server-speaks-first:
/// when a burst of connections overflows the accept queue, the kernel may
/// drop a handshake's last ACK (with SYN cookies) and the client then waits
/// for a greeting that never comes. Measured here: with 500 connections at
/// once, 4 never got their `220` with the default backlog; none with 1024.
pub async fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// How long a refused connection may take to be told so.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a TLS client may take over its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound socket an adapter accepts on, with TLS or without.
pub struct Listener {
    tcp: TcpListener,
    tls: Security,
}

/// What a listener's connections speak first.
#[derive(Clone)]
enum Security {
    /// The protocol itself.
    Plain,
    /// A TLS handshake, always.
    Tls(TlsAcceptor),
    /// Either: a TLS handshake when the client starts with one.
    Either(TlsAcceptor),
}

impl Listener {
    /// Connections here speak TLS first (MQTT on 8883, SMTP on 465).
    pub fn tls(tcp: TcpListener, acceptor: TlsAcceptor) -> Listener {
        Listener {
            tcp,
            tls: Security::Tls(acceptor),
        }
    }

    /// Connections here speak TLS or not, as each client starts: one whose
    /// first byte opens a TLS handshake record (22) gets TLS, any other is
    /// served plain. For protocols whose clients speak first and never
    /// with that byte (a `<` or a digit, say), so one port serves both.
    pub fn tls_or_plain(tcp: TcpListener, acceptor: TlsAcceptor) -> Listener {
        Listener {
            tcp,
            tls: Security::Either(acceptor),
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(tcp: TcpListener) -> Listener {
        Listener {
            tcp,
            tls: Security::Plain,
        }
    }
}

/// Accepts connections on every listener and serves each with `adapter`
/// until `shutdown` is cancelled; then stops accepting and waits for the
/// open connections to finish (they see the same token). Listeners are
/// bound by the caller, so tests can use port 0.
pub async fn run_adapter<A: Adapter>(
    listeners: impl IntoIterator<Item = Listener>,
    adapter: Arc<A>,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    // Every listener of one adapter shares its caps.
    let caps = ConnCaps::new(limits);
    let tracker = TaskTracker::new();
    let loops = listeners.into_iter().map(|listener| {
        accept_loop(
            listener,
            adapter.clone(),
            caps.clone(),
            &tracker,
            shutdown.clone(),
        )
    });
    futures::future::join_all(loops).await;
    tracker.close();
    tracing::info!(adapter = adapter.name(), open = tracker.len(), "draining");
    tracker.wait().await;
}

async fn accept_loop<A: Adapter>(
    listener: Listener,
    adapter: Arc<A>,
    caps: Arc<ConnCaps>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(5);
    let name = adapter.name();
    let local = listener.tcp.local_addr().ok();
    let tls = !matches!(listener.tls, Security::Plain);
    tracing::info!(adapter = name, ?local, tls, "listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.tcp.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(5);
                pair
            }
            Err(error) => {
                // EMFILE and friends: wait for connections to close.
                tracing::warn!(adapter = name, %error, ?backoff, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let span = tracing::info_span!("conn", adapter = name, %peer, tls);
        let (adapter, tls, shutdown) = (adapter.clone(), listener.tls.clone(), shutdown.clone());
        match caps.admit(peer.ip()) {
            Admission::Admitted(slot) => {
                tracker.spawn(
                    async move {
                        tracing::debug!("accepted");
                        match handshake(tcp, &tls).await {
                            Some((io, None)) => adapter.serve(io, peer, shutdown).await,
                            Some((io, Some(session))) => {
                                adapter.serve_tls(io, peer, session, shutdown).await;
                            }
                            None => {}
                        }
                        tracing::debug!("closed");
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
            Admission::Refuse(reason, slot) => {
                tracker.spawn(
                    async move {
                        tracing::warn!(?reason, "connection refused");
                        let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
                            if let Some((io, _)) = handshake(tcp, &tls).await {
                                adapter.refuse(io, reason).await;
                            }
                        })
                        .await;
                        drop(slot);
                    }
                    .instrument(span),
                );
            }
            Admission::Close(reason) => {
                tracing::debug!(parent: &span, ?reason, "connection closed: too many refusals at once");
                drop(tcp);
            }
        }
    }
}

/// The first byte of a TLS record that opens a handshake.
const TLS_HANDSHAKE_RECORD: u8 = 22;

/// The connection ready for the adapter, and its TLS session if it has
/// one: as it is, or after the TLS handshake (`None`, logged, when that
/// fails or takes too long).
async fn handshake(tcp: TcpStream, security: &Security) -> Option<(Conn, Option<TlsSession>)> {
    let acceptor = match security {
        Security::Plain => return Some((Box::new(tcp), None)),
        Security::Tls(acceptor) => acceptor,
        Security::Either(acceptor) => {
            // A client silent this long is served plain: its protocol
            // decides what to do with the silence.
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await;
            if !matches!(peeked, Ok(Ok(1))) || first[0] != TLS_HANDSHAKE_RECORD {
                return Some((Box::new(tcp), None));
            }
            acceptor
        }
    };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => {
            let session = TlsSession::of(tls.get_ref().1);
            Some((Box::new(tls), Some(session)))
        }
        Ok(Err(error)) => {
            tracing::info!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(timeout = ?TLS_HANDSHAKE_TIMEOUT, "TLS handshake took too long");
            None
        }
    }
}
