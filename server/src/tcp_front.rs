//! A TCP tunnel's public port: each connection becomes a stream to the
//! tunnel's client, which connects to the local target, and bytes pass
//! both ways unchanged, each side's FIN carried to the other.
//!
//! The port is served while the tunnel is held (live, or resuming for its
//! owner); while resuming, connections are refused at once. When the name
//! is released for good the listener closes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use droid_core::protocol::{self, StreamHeader};
use tokio::io::AsyncWriteExt;
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
    tokio::spawn(async move {
        info!(port = number, "TCP port open");
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = closed.cancelled() => break,
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

async fn connection(shared: Arc<Shared>, port: u16, socket: TcpStream, peer: std::net::SocketAddr) {
    let tunnel = match shared.registry.lookup(&port_key(port)) {
        Lookup::Live(tunnel) => tunnel,
        _ => {
            debug!(port, %peer, "TCP port of a tunnel that is not connected");
            return refuse(socket);
        }
    };
    if tunnel.access.check(peer.ip(), None) == Verdict::Forbidden {
        debug!(tunnel = %tunnel.name, %peer, "address not allowed");
        return refuse(socket);
    }
    if let Some(rate) = &tunnel.rate
        && rate.check().is_err()
    {
        debug!(tunnel = %tunnel.name, %peer, "connection rate reached");
        return refuse(socket);
    }
    let _ = socket.set_nodelay(true);
    let started = Instant::now();
    let metrics = &shared.metrics;
    metrics.tcp_opened();
    let (to_app, from_app) = match forward(&shared, &tunnel, socket, peer).await {
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
async fn forward(
    shared: &Shared,
    tunnel: &Arc<Tunnel>,
    mut socket: TcpStream,
    peer: std::net::SocketAddr,
) -> std::io::Result<(u64, u64)> {
    let opened =
        tokio::time::timeout(shared.config.stream_open_timeout, tunnel.opener.open()).await;
    let mut stream = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(std::io::Error::other(e.to_string())),
        Err(_) => {
            refuse(socket);
            return Err(std::io::Error::other("no free stream in time"));
        }
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
