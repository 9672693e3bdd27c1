//! The server `droid http` starts in its own process when no --server is
//! given: `*.localhost` URLs and mail addresses on this machine, no setup.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use droid_adapters::bind_listener;
use droid_server::{Server, ServerConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::mail::SmtpSetup;

/// How many ports after the asked one are tried when it is taken.
const PORT_TRIES: u16 = 20;

/// A running embedded server.
pub struct Embedded {
    /// Where it serves HTTP.
    pub http: SocketAddr,
    /// Where its control port listens (loopback, ephemeral).
    pub control: SocketAddr,
    /// Where it accepts mail, and where undeliverable mail waits.
    pub smtp: Option<(SocketAddr, String)>,
    /// Where it accepts MQTT.
    pub mqtt: Option<SocketAddr>,
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

/// Starts a server for `*.localhost` on `http` (or the next free port),
/// SMTP on `smtp` and MQTT on `mqtt` (each or the next free port) unless
/// `None`, and the other `adapters`. All keep what the app cannot take
/// now in one spool.
pub async fn start(
    http: SocketAddr,
    smtp: Option<(SocketAddr, &SmtpSetup)>,
    mqtt: Option<SocketAddr>,
    adapters: Vec<Arc<dyn droid_adapters::ServerAdapter>>,
    shutdown: CancellationToken,
) -> Result<Embedded> {
    let http_listener = bind_next_free(http, "HTTP", "http").await?;
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
    let mut tasks = Vec::new();
    let spool = match (smtp, mqtt.is_some() || !adapters.is_empty()) {
        (Some((_, setup)), _) => setup.spool.open()?,
        (None, true) => crate::mail::SmtpArgs::default()
            .resolve(None, None)
            .spool
            .open()?,
        (None, false) => None,
    };
    for adapter in adapters {
        server.add_adapter(adapter);
    }
    let mqtt = match mqtt {
        Some(addr) => {
            let listener = bind_next_free(addr, "MQTT", "mqtt").await?;
            let bound = listener.local_addr()?;
            server.add_adapter(Arc::new(droid_adapters::MqttService::new(
                droid_adapters::MqttConfig::default(),
                vec![listener],
                Vec::new(),
                droid_adapters::ConnLimits::default(),
            )));
            Some(bound)
        }
        None => None,
    };
    let smtp = match smtp {
        Some((addr, setup)) => {
            let listener = bind_next_free(addr, "SMTP", "smtp").await?;
            let bound = listener.local_addr()?;
            let described = crate::mail::describe_spool(spool.as_ref());
            server.add_adapter(Arc::new(droid_adapters::SmtpService::new(
                setup.config.clone(),
                vec![listener.into()],
                setup.limits,
            )));
            Some((bound, described))
        }
        None => None,
    };
    tasks.push(tokio::spawn(server.serve_adapters(spool, shutdown.clone())));
    tasks.push(tokio::spawn(async move {
        server.run(http_listener, control_listener, shutdown).await;
    }));
    Ok(Embedded {
        http,
        control,
        smtp,
        mqtt,
        tasks,
    })
}

/// Binds `first`, or the next free port after it (port 0 binds once); the
/// error names `what` and the `--flag` that chooses another port.
pub async fn bind_next_free(first: SocketAddr, what: &str, flag: &str) -> Result<TcpListener> {
    let mut addr = first;
    let tries = if first.port() == 0 { 1 } else { PORT_TRIES };
    for _ in 0..tries {
        match bind_listener(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                addr.set_port(addr.port().saturating_add(1));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen for {what} on {addr}")),
        }
    }
    anyhow::bail!(
        "{what} ports {} to {} are all taken; pass --{flag} 127.0.0.1:PORT",
        first.port(),
        first.port().saturating_add(tries - 1),
    )
}
