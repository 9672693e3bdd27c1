//! The [`Adapter`] trait and the runtime that hosts one.
//!
//! In the manner of pingora's `ServerApp`: the runtime ([`run_adapter`])
//! owns the listener, accepting (with back-off when `accept` fails), the
//! connection caps per IP and in total, a tracing span per connection, and
//! shutdown. An adapter owns only its protocol: [`Adapter::serve`] gets an
//! accepted connection and a cancellation token to watch.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The future an adapter returns for one connection.
pub type ServeFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Why the runtime refused a connection before handing it to the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The total connection cap is reached.
    TooManyConnections,
    /// The per-IP cap is reached for this peer.
    TooManyFromPeer,
}

/// A protocol turned into deliveries. One value serves every connection.
pub trait Adapter: Send + Sync + 'static {
    /// A short name for logs and spans (`"smtp"`).
    fn name(&self) -> &'static str;

    /// Serves one accepted connection until it ends. `shutdown` is cancelled
    /// when the server stops: finish the current exchange, say goodbye in
    /// the protocol's terms, return.
    fn serve(
        self: Arc<Self>,
        io: TcpStream,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> ServeFuture;

    /// Tells a connection it was refused, in the protocol's terms (SMTP
    /// says `421`). The default just closes it.
    fn refuse(self: Arc<Self>, io: TcpStream, reason: Refusal) -> ServeFuture {
        let _ = reason;
        Box::pin(async move { drop(io) })
    }
}

/// Connection caps enforced by [`run_adapter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_per_ip: usize,
}

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits {
            max_connections: 1000,
            max_per_ip: 100,
        }
    }
}

/// Counts connections per IP; a slot is released when its guard drops.
#[derive(Default)]
struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

struct IpSlot {
    table: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<IpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
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

/// Accepts connections on `listener` and serves each with `adapter` until
/// `shutdown` is cancelled; then stops accepting and waits for the open
/// connections to finish (they see the same token). The listener is bound
/// by the caller, so tests can use port 0.
pub async fn run_adapter<A: Adapter>(
    listener: TcpListener,
    adapter: Arc<A>,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let total = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = Arc::new(PerIp::default());
    let tracker = TaskTracker::new();
    let mut backoff = Duration::from_millis(5);
    let name = adapter.name();
    let local = listener.local_addr().ok();
    tracing::info!(adapter = name, ?local, "listening");
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (io, peer) = match accepted {
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
        let permit = total.clone().try_acquire_owned().ok();
        let slot = per_ip.try_take(peer.ip(), limits.max_per_ip);
        let span = tracing::info_span!("conn", adapter = name, %peer);
        match (permit, slot) {
            (Some(permit), Some(slot)) => {
                let serve = adapter.clone().serve(io, peer, shutdown.clone());
                tracker.spawn(
                    async move {
                        tracing::debug!("accepted");
                        serve.await;
                        tracing::debug!("closed");
                        drop((permit, slot));
                    }
                    .instrument(span),
                );
            }
            (permit, _) => {
                let reason = if permit.is_none() {
                    Refusal::TooManyConnections
                } else {
                    Refusal::TooManyFromPeer
                };
                let refuse = adapter.clone().refuse(io, reason);
                tracker.spawn(
                    async move {
                        tracing::warn!(?reason, "connection refused");
                        let _ = tokio::time::timeout(REFUSE_TIMEOUT, refuse).await;
                    }
                    .instrument(span),
                );
            }
        }
    }
    drop(listener);
    tracker.close();
    tracing::info!(adapter = name, open = tracker.len(), "draining");
    tracker.wait().await;
}
