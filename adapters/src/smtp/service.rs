//! The SMTP adapter as a server runs it: its listener, the grant's mail
//! domain, and its counters.

use std::sync::{Arc, Mutex, OnceLock};

use serde_json::json;

use super::{NAME, SmtpAdapter, SmtpConfig, TunnelMail};
use crate::adapter::{ConnLimits, Listener, run_adapter};
use crate::host::{Grantee, Host, ServerAdapter};
use crate::route::Answer;
use crate::stats::DeliveryStats;

/// Mail for `*@NAME.domain`, on the listeners it is given.
pub struct SmtpService {
    config: SmtpConfig,
    limits: ConnLimits,
    listeners: Mutex<Vec<Listener>>,
    stats: OnceLock<DeliveryStats>,
    announce: Option<String>,
}

impl SmtpService {
    /// Accepts mail on `listeners` (plain or TLS), within `limits`.
    pub fn new(config: SmtpConfig, listeners: Vec<Listener>, limits: ConnLimits) -> SmtpService {
        SmtpService {
            config,
            limits,
            listeners: Mutex::new(listeners),
            stats: OnceLock::new(),
            announce: None,
        }
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
        let adapter = Arc::new(SmtpAdapter::new(self.config.clone(), router, host.spool));
        let _ = self.stats.set(adapter.stats().clone());
        let listeners =
            std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|p| p.into_inner()));
        Box::pin(run_adapter(listeners, adapter, self.limits, host.shutdown))
    }

    fn grant(&self, tunnel: &Grantee<'_>) -> Option<serde_json::Value> {
        let domain = format!("{}.{}", tunnel.name, tunnel.domain);
        tunnel.settings.of(NAME).map(|_| match &self.announce {
            Some(address) => json!({ "domain": domain, "address": address }),
            None => json!({ "domain": domain }),
        })
    }

    fn stats(&self) -> Option<(&'static str, &'static str, DeliveryStats)> {
        self.stats
            .get()
            .map(|stats| ("droid_mail", "Mails", stats.clone()))
    }
}
