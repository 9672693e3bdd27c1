//! The server `droid http` starts in its own process when no --server is
//! given: `*.localhost` URLs on this machine, no setup at all.

use std::io;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use droid_server::{Server, ServerConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How many ports after the asked one are tried when it is taken.
const PORT_TRIES: u16 = 20;

/// A running embedded server.
pub struct Embedded {
    /// Where it serves HTTP.
    pub http: SocketAddr,
    /// Where its control port listens (loopback, ephemeral).
    pub control: SocketAddr,
    task: JoinHandle<()>,
}

impl Embedded {
    /// Waits for the server to stop after its shutdown token fired.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Starts a server for `*.localhost` on `http` (or the next free port).
pub async fn start(http: SocketAddr, shutdown: CancellationToken) -> Result<Embedded> {
    let http_listener = bind_next_free(http).await?;
    let control_listener = TcpListener::bind((http.ip(), 0))
        .await
        .context("cannot open the embedded server's control port")?;
    let http = http_listener.local_addr()?;
    let control = control_listener.local_addr()?;
    let mut config = ServerConfig::new("localhost");
    config.public_port = Some(http.port()).filter(|&p| p != 80);
    let server = Server::new(config);
    let task =
        tokio::spawn(async move { server.run(http_listener, control_listener, shutdown).await });
    Ok(Embedded {
        http,
        control,
        task,
    })
}

async fn bind_next_free(first: SocketAddr) -> Result<TcpListener> {
    let mut addr = first;
    let tries = if first.port() == 0 { 1 } else { PORT_TRIES };
    for _ in 0..tries {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                addr.set_port(addr.port().saturating_add(1));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen for HTTP on {addr}")),
        }
    }
    anyhow::bail!(
        "ports {} to {} are all taken; pass --http 127.0.0.1:PORT",
        first.port(),
        first.port().saturating_add(tries - 1)
    )
}
