//! The server `droid http` starts in its own process when no --server is
//! given: `*.localhost` URLs and mail addresses on this machine, no setup.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use droid_adapters::{Place, Setup};
use droid_server::{Server, ServerConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::mail::SpoolSetup;

/// A running embedded server.
pub struct Embedded {
    /// Where it serves HTTP.
    pub http: SocketAddr,
    /// Where its control port listens (loopback, ephemeral).
    pub control: SocketAddr,
    /// What its adapters said when they started, a line each.
    pub lines: Vec<String>,
    tasks: Vec<JoinHandle<()>>,
}

impl Embedded {
    /// Waits for the server to stop after its shutdown token fired.
    pub async fn stopped(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Starts a server for `*.localhost` on `http` (or the next free port) with
/// the `adapters`, which keep what the app cannot take now in one spool.
pub async fn start(
    http: SocketAddr,
    adapters: Vec<Box<dyn Setup>>,
    spool: &SpoolSetup,
    shutdown: CancellationToken,
) -> Result<Embedded> {
    let http_listener = droid_adapters::plugin::bind_next_free(http, "HTTP", "http").await?;
    let control_listener = TcpListener::bind((http.ip(), 0))
        .await
        .context("cannot open the embedded server's control port")?;
    let http = http_listener.local_addr()?;
    let control = control_listener.local_addr()?;
    let mut config = ServerConfig::new("localhost");
    config.public_port = Some(http.port()).filter(|&p| p != 80);
    // TCP tunnels get any free port on the same loopback address.
    config.tcp_ports = Some(droid_server::TcpPorts::Any);
    config.tcp_bind = http.ip();
    config.tcp_host = Some(http.ip().to_string());
    let server = Server::new(config);
    let spool = if adapters.is_empty() {
        None
    } else {
        spool.open()?
    };
    let place = Place {
        domain: server.config().domain.clone(),
        spool: spool.clone(),
    };
    let mut lines = Vec::new();
    for started in crate::adapters::start(adapters, place).await? {
        lines.extend(started.lines);
        server.add_adapter(started.adapter);
    }
    let tasks = vec![
        tokio::spawn(server.serve_adapters(spool, shutdown.clone())),
        tokio::spawn(async move {
            server.run(http_listener, control_listener, shutdown).await;
        }),
    ];
    Ok(Embedded {
        http,
        control,
        lines,
        tasks,
    })
}
