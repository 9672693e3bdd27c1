//! The SMTP adapter: receive mail, deliver it as an HTTP POST.
//!
//! The protocol is parsed by Stalwart's sans-IO `smtp-proto` (commands with
//! their ESMTP parameters, and the DATA dot-unstuffing) and driven by a tokio
//! loop here ([`session`]), so sessions are tasks, not threads: 500 open
//! sessions cost 500 small tasks. The loop bounds everything a client
//! controls: line length (a 200 MB line without a newline is cut off after
//! [`SmtpConfig::max_line_length`] bytes), message size, recipients,
//! errors, idle time and session time.
//!
//! What happens after DATA lives in [`accept`]: recipients are grouped by
//! destination, each destination gets one [`crate::Delivery`], and the
//! reply is `250` only once every destination's app answered 2xx or the
//! message is fsynced in the spool.

pub mod accept;
pub mod auth;
pub mod dkim;
mod memory;
pub mod outbound;
pub mod plugin;
pub mod relay;
pub mod send;
mod service;
pub mod session;
mod settings;
mod tunnels;

pub use plugin::{SmtpOptions, SmtpPlugin, SmtpTable};
pub use service::{DEFAULT_SENDS_PER_MINUTE, SmtpService};
pub use settings::{MailRoute, MailSettings};
pub use tunnels::TunnelMail;

/// The adapter's name: the key of its settings in a tunnel's hello.
pub const NAME: &str = "smtp";

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::adapter::{Adapter, Conn, Refusal, ServeFuture, TlsSession};
use crate::route::MailRouter;
use crate::spool::Spool;
use crate::stats::DeliveryStats;

/// Limits and names of the SMTP adapter.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// The largest message accepted, advertised as `SIZE` (default 25 MiB).
    pub max_message_size: usize,
    /// Recipients per message; the next one gets `452`.
    pub max_recipients: usize,
    /// The longest command line, CRLF included.
    pub max_line_length: usize,
    /// How long a client may stay silent (between commands, or between two
    /// reads during DATA).
    pub idle_timeout: Duration,
    /// How long one session may last in all (stops slow-drip clients).
    pub session_timeout: Duration,
    /// Time allowed for the app to answer during DATA before the message
    /// goes to the spool.
    pub deliver_timeout: Duration,
    /// Bad commands allowed before the session is closed.
    pub max_errors: usize,
    /// The memory every message being received may take together (default
    /// 256 MiB); a message that finds it spent gets `452`, and its sender
    /// tries again later.
    pub message_memory: usize,
}

impl Default for SmtpConfig {
    fn default() -> SmtpConfig {
        SmtpConfig {
            hostname: "localhost".into(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_line_length: 4096,
            idle_timeout: Duration::from_secs(300),
            session_timeout: Duration::from_secs(1800),
            deliver_timeout: Duration::from_secs(30),
            max_errors: 10,
            message_memory: 256 * 1024 * 1024,
        }
    }
}

/// The SMTP adapter. Host it with [`crate::run_adapter`].
pub struct SmtpAdapter {
    config: SmtpConfig,
    router: Arc<dyn MailRouter>,
    spool: Option<Arc<Spool>>,
    stats: DeliveryStats,
    memory: memory::MessageMemory,
    /// The certificate STARTTLS offers, if any.
    tls: Option<TlsAcceptor>,
    /// The SPF, DKIM, DMARC and ARC checks, if the server runs them.
    auth: Option<Arc<auth::MailAuth>>,
}

impl SmtpAdapter {
    /// An adapter that routes recipients with `router` and spools what the
    /// app cannot take now in `spool` (without a spool such mail gets 451).
    pub fn new(
        config: SmtpConfig,
        router: Arc<dyn MailRouter>,
        spool: Option<Arc<Spool>>,
    ) -> SmtpAdapter {
        let stats = spool
            .as_ref()
            .map(|s| s.stats().clone())
            .unwrap_or_default();
        SmtpAdapter {
            memory: memory::MessageMemory::new(config.message_memory),
            config,
            router,
            spool,
            stats,
            tls: None,
            auth: None,
        }
    }

    /// Checks SPF, DKIM, DMARC and ARC of each mail with `checks`.
    pub fn with_auth(mut self, checks: Option<Arc<auth::MailAuth>>) -> SmtpAdapter {
        self.auth = checks;
        self
    }

    /// Offers STARTTLS with `acceptor`'s certificate.
    pub fn with_tls(mut self, acceptor: Option<TlsAcceptor>) -> SmtpAdapter {
        self.tls = acceptor;
        self
    }

    /// What this adapter's mail came to (shared with its spool's).
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &SmtpConfig {
        &self.config
    }

    /// Serves one session over any byte stream (tests use `io::duplex`).
    pub async fn serve_io<S>(self: Arc<Self>, io: S, peer: SocketAddr, shutdown: CancellationToken)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        session::Session::new(self, Box::new(io), None, peer, shutdown)
            .run()
            .await;
    }
}

impl Adapter for SmtpAdapter {
    fn name(&self) -> &'static str {
        NAME
    }

    fn serve(
        self: Arc<Self>,
        io: Conn,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> ServeFuture {
        Box::pin(self.serve_io(io, peer, shutdown))
    }

    fn serve_tls(
        self: Arc<Self>,
        io: Conn,
        peer: SocketAddr,
        tls: TlsSession,
        shutdown: CancellationToken,
    ) -> ServeFuture {
        Box::pin(session::Session::new(self, io, Some(tls), peer, shutdown).run())
    }

    fn refuse(self: Arc<Self>, mut io: Conn, reason: Refusal) -> ServeFuture {
        Box::pin(async move {
            let line = match reason {
                Refusal::TooManyConnections => {
                    "421 4.7.0 Too many connections, try again later\r\n"
                }
                Refusal::TooManyFromPeer => "421 4.7.0 Too many connections from your address\r\n",
            };
            let _ = io.write_all(line.as_bytes()).await;
            let _ = io.shutdown().await;
        })
    }
}
