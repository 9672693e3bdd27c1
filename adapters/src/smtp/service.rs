//! The SMTP adapter as a server runs it: its listeners, the grant's mail
//! domain, its counters, and the mail apps send (`send`, `send-batch`).

use std::sync::{Arc, Mutex, OnceLock};

use serde_json::json;
use tokio::net::TcpListener;

use super::auth::MailAuth;
use super::dkim::Dkim;
use super::outbound::{Elsewhere, Outbound, Running};
use super::{NAME, SmtpAdapter, SmtpConfig, TunnelMail};
use crate::adapter::{ConnLimits, Listener, run_adapter};
use crate::host::{Call, Grantee, Host, ServerAdapter};
use crate::route::Answer;
use crate::stats::DeliveryStats;
use droid_core::protocol::CallAnswer;

/// Messages one tunnel may send a minute, unless the server says otherwise.
pub const DEFAULT_SENDS_PER_MINUTE: u32 = 60;

/// Mail for `*@NAME.domain`, on the listeners it is given.
pub struct SmtpService {
    config: SmtpConfig,
    limits: ConnLimits,
    listeners: Mutex<Vec<Listener>>,
    /// Implicit-TLS listeners, given the server's certificate at run.
    tls: Mutex<Vec<TcpListener>>,
    stats: OnceLock<DeliveryStats>,
    announce: Option<String>,
    outbound: Outbound,
    running: OnceLock<Running>,
    checks: Option<Arc<MailAuth>>,
}

impl SmtpService {
    /// Accepts mail on `listeners` (plain or TLS), within `limits`.
    pub fn new(config: SmtpConfig, listeners: Vec<Listener>, limits: ConnLimits) -> SmtpService {
        SmtpService {
            config,
            limits,
            listeners: Mutex::new(listeners),
            tls: Mutex::new(Vec::new()),
            stats: OnceLock::new(),
            announce: None,
            outbound: Outbound::new(Elsewhere::Refuse, DEFAULT_SENDS_PER_MINUTE),
            running: OnceLock::new(),
            checks: None,
        }
    }

    /// Checks SPF, DKIM, DMARC and ARC of each mail received.
    pub fn checking(mut self, checks: Option<Arc<MailAuth>>) -> SmtpService {
        self.checks = checks;
        self
    }

    /// Sends apps' mail for other domains as `elsewhere` says, at most
    /// `per_minute` messages a tunnel.
    pub fn sending(mut self, elsewhere: Elsewhere, per_minute: u32) -> SmtpService {
        self.outbound = Outbound::new(elsewhere, per_minute);
        self
    }

    /// Signs the mail apps send with `dkim`.
    pub fn signing(mut self, dkim: Option<Dkim>) -> SmtpService {
        self.outbound.dkim = dkim;
        self
    }

    /// Accepts mail over implicit TLS on `listeners` too (usually port
    /// 465), with the server's certificate.
    pub fn with_implicit_tls(self, listeners: Vec<TcpListener>) -> SmtpService {
        *self.tls.lock().unwrap_or_else(|p| p.into_inner()) = listeners;
        self
    }

    /// Tells each tunnel's client where mail is accepted (`address` in the
    /// grant): the server inside `droid http` does, a public server's
    /// address is its clients' to know.
    pub fn announcing(mut self, address: impl Into<String>) -> SmtpService {
        self.announce = Some(address.into());
        self
    }
}

impl ServerAdapter for SmtpService {
    fn name(&self) -> &'static str {
        NAME
    }

    fn reserved_names(&self) -> &'static [&'static str] {
        &[NAME]
    }

    fn run(self: Arc<Self>, host: Host) -> Answer<'static, ()> {
        let router = Arc::new(TunnelMail::new(host.tunnels.clone(), &host.domain));
        // With the server's certificate, mail may come over TLS: STARTTLS
        // on every listener, and the implicit-TLS ones (--smtps).
        let adapter = SmtpAdapter::new(self.config.clone(), router.clone(), host.spool)
            .with_tls(host.tls.clone())
            .with_auth(self.checks.clone());
        let adapter = Arc::new(adapter);
        let _ = self.running.set(Running {
            adapter: adapter.clone(),
            router: router.clone(),
            domain: host.domain.clone(),
        });
        let _ = self.stats.set(adapter.stats().clone());
        let mut listeners =
            std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|p| p.into_inner()));
        let tls = std::mem::take(&mut *self.tls.lock().unwrap_or_else(|p| p.into_inner()));
        match &host.tls {
            Some(acceptor) => {
                listeners.extend(tls.into_iter().map(|l| Listener::tls(l, acceptor.clone())));
            }
            None if !tls.is_empty() => {
                tracing::error!(
                    "mail over TLS needs the server's certificate; its listener is closed"
                );
            }
            None => {}
        }
        Box::pin(run_adapter(listeners, adapter, self.limits, host.shutdown))
    }

    fn grant(&self, tunnel: &Grantee<'_>) -> Option<serde_json::Value> {
        let domain = format!("{}.{}", tunnel.name, tunnel.domain);
        tunnel.settings.of(NAME).map(|_| match &self.announce {
            Some(address) => json!({ "domain": domain, "address": address }),
            None => json!({ "domain": domain }),
        })
    }

    fn call(&self, call: Call) -> Answer<'_, CallAnswer> {
        Box::pin(async move {
            match self.running.get() {
                Some(running) => self.outbound.call(running, call).await,
                None => CallAnswer::error(503, "mail is starting; try again"),
            }
        })
    }

    fn counters(
        &self,
    ) -> Vec<(
        &'static str,
        &'static str,
        prometheus_client::metrics::counter::Counter,
    )> {
        self.outbound.counts.named()
    }

    fn stats(&self) -> Option<(&'static str, &'static str, DeliveryStats)> {
        self.stats
            .get()
            .map(|stats| ("droid_mail", "Mails", stats.clone()))
    }
}
