//! A TCP tunnel's public port: each connection becomes a stream to the
//! tunnel's client, which connects to the local target, and bytes pass
//! both ways unchanged, each side's FIN carried to the other.
//!
//! The port is served while the tunnel is held (live, or resuming for its
//! owner); while resuming, connections are refused at once. When the name
//! is released for good, or the server drains, the listener closes. In a
//! cluster, other nodes' connections to it come over the peer link
//! ([`serve_forwarded`]) and are served the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use droid_core::protocol::{self, StreamHeader};
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::Shared;
use crate::access::Verdict;
use crate::registry::{Lookup, TcpPort, Tunnel, port_key};

/// Starts serving `port`, unless a session already does.
pub(crate) fn serve_port(shared: Arc<Shared>, port: &TcpPort) {
    let Some(listener) = port.take_listener() else {
        return;
    };
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            warn!(port = port.port, error = %e, "cannot serve a TCP tunnel's port");
            return;
        }
    };
    let (number, closed) = (port.port, port.closed.clone());
    let draining = shared.draining.clone();
    tokio::spawn(async move {
        info!(port = number, "TCP port open");
        loop {
            // A draining server takes no new visitor here either.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = closed.cancelled() => break,
                () = draining.cancelled() => break,
            };
            match accepted {
                Ok((socket, peer)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move { connection(shared, number, socket, peer).await });
                }
                Err(e) => {
                    debug!(port = number, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        info!(port = number, "TCP port closed");
    });
}

/// Refuses a connection with a reset, so the visitor knows at once.
fn refuse(socket: TcpStream) {
    let _ = socket.set_zero_linger();
}

async fn connection(shared: Arc<Shared>, port: u16, socket: TcpStream, peer: SocketAddr) {
    let Some(tunnel) = admit(&shared, port, peer) else {
        return refuse(socket);
    };
    let _ = socket.set_nodelay(true);
    relay(&shared, &tunnel, socket, peer).await;
}

/// Serves a visitor's connection to `port` that another node of the
/// cluster took (`crate::tcp_mirror`), as if it came here; closes it when
/// this node does not hold the tunnel or the tunnel refuses the visitor.
pub(crate) async fn serve_forwarded<IO>(shared: Arc<Shared>, port: u16, io: IO, visitor: SocketAddr)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(tunnel) = admit(&shared, port, visitor) {
        relay(&shared, &tunnel, io, visitor).await;
    }
}

/// The tunnel on `port`, when this node holds it live and it takes a
/// connection from `peer` now (its allow-list and its rate).
fn admit(shared: &Shared, port: u16, peer: SocketAddr) -> Option<Arc<Tunnel>> {
    let tunnel = match shared.registry.lookup(&port_key(port)) {
        Lookup::Live(tunnel) => tunnel,
        _ => {
            debug!(port, %peer, "TCP port of a tunnel that is not connected");
            return None;
        }
    };
    if tunnel.access.check(peer.ip(), None) == Verdict::Forbidden {
        debug!(tunnel = %tunnel.name, %peer, "address not allowed");
        return None;
    }
    if let Some(rate) = &tunnel.rate
        && rate.check().is_err()
    {
        debug!(tunnel = %tunnel.name, %peer, "connection rate reached");
        return None;
    }
    Some(tunnel)
}

/// Carries one visitor connection through the tunnel, counted.
async fn relay<IO>(shared: &Shared, tunnel: &Arc<Tunnel>, io: IO, peer: SocketAddr)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let metrics = &shared.metrics;
    metrics.tcp_opened();
    let (to_app, from_app) = match forward(shared, tunnel, io, peer).await {
        Ok(counts) => counts,
        Err(e) => {
            debug!(tunnel = %tunnel.name, %peer, error = %e, "TCP connection ended with an error");
            (0, 0)
        }
    };
    metrics.tcp_closed(to_app, from_app, started.elapsed());
}

/// Opens a stream for the connection and copies both ways until both
/// sides are done. Returns the bytes each way.
async fn forward<IO>(
    shared: &Shared,
    tunnel: &Arc<Tunnel>,
    mut socket: IO,
    peer: SocketAddr,
) -> std::io::Result<(u64, u64)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let opened =
        tokio::time::timeout(shared.config.stream_open_timeout, tunnel.opener.open()).await;
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(std::io::Error::other(e.to_string())),
        Err(_) => return Err(std::io::Error::other("no free stream in time")),
    };
    let header = StreamHeader::Tcp {
        tunnel: tunnel.name.clone(),
        remote: peer.to_string(),
    };
    stream.write_all(&protocol::encode_line(&header)).await?;
    tokio::io::copy_bidirectional_with_sizes(&mut socket, &mut stream, COPY_BUFFER, COPY_BUFFER)
        .await
}

/// Each direction's copy buffer: tokio's default of 8 KiB makes a bulk
/// transfer four times the reads, writes and frames.
pub(crate) const COPY_BUFFER: usize = 32 * 1024;
