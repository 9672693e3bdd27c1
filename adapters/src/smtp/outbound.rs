//! Where mail an app sends goes ([`send`](super::send) builds it): to this
//! server's own tunnels like any received mail, and through the relay, or
//! caught, or refused, for the rest. One tunnel sends at most
//! [`Outbound::per_minute`] messages a minute.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use droid_core::protocol::CallAnswer;
use lettre::Address;
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;

use super::accept;
use super::dkim::Dkim;
use super::relay::Relay;
use super::send::{self, Built, Email, Refused};
use super::{SmtpAdapter, TunnelMail};
use crate::delivery::unix_now;
use crate::host::Call;
use crate::mail::Envelope;
use crate::route::{MailRouter, Route};

/// Messages one `send-batch` takes (Postmark's limit).
const MAX_BATCH: usize = 500;

/// The longest one message's exchange with the relay may take.
const RELAY_EXCHANGE: Duration = Duration::from_secs(120);

/// What becomes of mail for domains this server does not serve.
#[derive(Debug, Clone, Default)]
pub enum Elsewhere {
    /// It goes through this relay.
    Relay(Box<Relay>),
    /// It is kept on this machine (the server inside `droid http`): the
    /// app is told it was caught.
    Catch,
    /// It is refused: this server has no relay.
    #[default]
    Refuse,
}

/// How a server sends apps' mail.
#[derive(Debug)]
pub struct Outbound {
    /// Mail for other domains.
    pub elsewhere: Elsewhere,
    /// Messages one tunnel may send a minute (and at once).
    pub per_minute: u32,
    sent: Mutex<HashMap<String, Window>>,
    /// What sends came to, for the server's metrics.
    pub counts: SendCounts,
    /// The DKIM signature every message gets, if the server has a key.
    pub dkim: Option<Dkim>,
}

/// What apps' sends came to.
#[derive(Debug, Clone, Default)]
pub struct SendCounts {
    /// Messages the relay took.
    pub relayed: Counter,
    /// Messages caught by the server inside `droid http`.
    pub caught: Counter,
    /// Messages only for this server's own tunnels.
    pub local: Counter,
    /// Messages refused (by Droid or the relay).
    pub refused: Counter,
}

impl SendCounts {
    /// Each counter, named for the server's metrics.
    pub fn named(&self) -> Vec<(&'static str, &'static str, Counter)> {
        vec![
            (
                "droid_mail_sent_relayed",
                "Mails apps sent that the relay took",
                self.relayed.clone(),
            ),
            (
                "droid_mail_sent_caught",
                "Mails apps sent that were caught on this machine",
                self.caught.clone(),
            ),
            (
                "droid_mail_sent_local",
                "Mails apps sent only to this server's own tunnels",
                self.local.clone(),
            ),
            (
                "droid_mail_send_refused",
                "Mails apps sent that were refused, by Droid or the relay",
                self.refused.clone(),
            ),
        ]
    }
}

/// One tunnel's sends in the current minute.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    count: u32,
}

/// The adapter and router a running server sends local mail through.
pub struct Running {
    /// The adapter: its spool, settings and counters.
    pub adapter: Arc<SmtpAdapter>,
    /// The server's tunnels' mail domains.
    pub router: Arc<TunnelMail>,
    /// The server's domain.
    pub domain: String,
}

impl Outbound {
    /// Sends mail for other domains as `elsewhere` says, `per_minute`
    /// messages a tunnel.
    pub fn new(elsewhere: Elsewhere, per_minute: u32) -> Outbound {
        Outbound {
            elsewhere,
            per_minute,
            sent: Mutex::new(HashMap::new()),
            counts: SendCounts::default(),
            dkim: None,
        }
    }

    /// `send` (one message) or `send-batch` (a list): each answered in
    /// Postmark's shape.
    pub async fn call(&self, running: &Running, call: Call) -> CallAnswer {
        match call.action.as_str() {
            "send" => match serde_json::from_slice::<Email>(&call.body) {
                Ok(email) => match self.send(running, &call, &email).await {
                    Ok(body) => CallAnswer { status: 200, body },
                    Err(refused) => CallAnswer {
                        status: refused.status,
                        body: refused.body(),
                    },
                },
                Err(e) => refused(Refused::invalid(format!(
                    "the body is not a Postmark message (From, To, Subject, TextBody...): {e}"
                ))),
            },
            "send-batch" => match serde_json::from_slice::<Vec<Email>>(&call.body) {
                Ok(emails) if emails.len() > MAX_BATCH => refused(Refused::invalid(format!(
                    "a batch of {} messages; it takes at most {MAX_BATCH}",
                    emails.len()
                ))),
                Ok(emails) => {
                    let mut answers = Vec::with_capacity(emails.len());
                    for email in &emails {
                        answers.push(match self.send(running, &call, email).await {
                            Ok(body) => body,
                            Err(refused) => refused.body(),
                        });
                    }
                    CallAnswer {
                        status: 200,
                        body: Value::Array(answers),
                    }
                }
                Err(e) => refused(Refused::invalid(format!(
                    "the body is not a list of Postmark messages: {e}"
                ))),
            },
            other => CallAnswer::error(
                404,
                format!("mail takes no call {other:?}; it takes send and send-batch"),
            ),
        }
    }

    /// Sends `email` and counts what came of it.
    async fn send(&self, running: &Running, call: &Call, email: &Email) -> Result<Value, Refused> {
        let sent = self.send_counted(running, call, email).await;
        if sent.is_err() {
            self.counts.refused.inc();
        }
        sent
    }

    async fn send_counted(
        &self,
        running: &Running,
        call: &Call,
        email: &Email,
    ) -> Result<Value, Refused> {
        let from: Address = email
            .from
            .parse::<lettre::message::Mailbox>()
            .map(|m| m.email)
            .map_err(|e| Refused::invalid(format!("`From` is not an address: {e}")))?;
        let Some(tunnel) = send::sender_tunnel(&from, &call.tunnels, &running.domain) else {
            let yours: Vec<String> = call
                .tunnels
                .iter()
                .map(|t| format!("anything@{}.{}", t.name, running.domain))
                .collect();
            return Err(Refused {
                status: 403,
                code: 400,
                message: format!(
                    "`From` must be at your tunnel's own mail domain ({}); {from} is not",
                    yours.join(", ")
                ),
            });
        };
        self.admit(&tunnel.name)?;
        let mut built = send::build(email, from.domain())?;
        if let Some(dkim) = &self.dkim {
            let signed = dkim.sign(&built.raw).map_err(|e| Refused {
                status: 500,
                code: 701,
                message: e,
            })?;
            built.raw = signed.into();
        }
        let (local, elsewhere) = self.split(running, &built.recipients).await?;
        if !elsewhere.is_empty() && matches!(self.elsewhere, Elsewhere::Refuse) {
            return Err(Refused {
                status: 422,
                code: 405,
                message: format!(
                    "this server has no mail relay (droid server --mail-relay smtp://USER:PASS@HOST:587), so it sends no mail to other domains; mail to its own tunnels (anything@NAME.{}) is delivered",
                    running.domain
                ),
            });
        }
        // This server's own tunnels first: when one cannot take it now,
        // nothing has left yet, and the app's retry sends it once.
        if !local.is_empty() {
            deliver_here(running, &built, local).await?;
        }
        let said = match (&self.elsewhere, elsewhere.is_empty()) {
            (Elsewhere::Refuse, _) | (_, true) => {
                self.counts.local.inc();
                "OK".to_string()
            }
            (Elsewhere::Relay(relay), false) => {
                let sent = tokio::time::timeout(
                    RELAY_EXCHANGE,
                    relay.send(&built.from, &elsewhere, &built.raw),
                )
                .await
                .map_err(|_| Refused {
                    status: 503,
                    code: 701,
                    message: format!(
                        "the relay {} took over {} s; try again later",
                        relay.name,
                        RELAY_EXCHANGE.as_secs()
                    ),
                })?;
                let reply = sent?;
                tracing::info!(tunnel = %tunnel.name, relay = %relay.name, %reply, "mail sent");
                self.counts.relayed.inc();
                "OK".to_string()
            }
            (Elsewhere::Catch, false) => {
                self.counts.caught.inc();
                "OK: caught, not sent: the server inside droid http sends nothing off this machine (droid http --mail-relay URL sends it)".to_string()
            }
        };
        Ok(send::sent(&built, &said))
    }

    /// One more message for `tunnel` this minute, or 429.
    fn admit(&self, tunnel: &str) -> Result<(), Refused> {
        let now = Instant::now();
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        if sent.len() > 4096 {
            sent.retain(|_, w| now.duration_since(w.started) < Duration::from_secs(60));
        }
        let window = sent.entry(tunnel.to_string()).or_insert(Window {
            started: now,
            count: 0,
        });
        if now.duration_since(window.started) >= Duration::from_secs(60) {
            *window = Window {
                started: now,
                count: 0,
            };
        }
        if window.count >= self.per_minute {
            let wait = 60u64.saturating_sub(now.duration_since(window.started).as_secs());
            return Err(Refused {
                status: 429,
                code: 429,
                message: format!(
                    "the tunnel {tunnel} sent {} messages this minute, as many as this server allows (--mail-send-rate); try again in {wait} s",
                    self.per_minute
                ),
            });
        }
        window.count += 1;
        Ok(())
    }

    /// The recipients at this server's tunnels, routed, and the others.
    async fn split(
        &self,
        running: &Running,
        recipients: &[Address],
    ) -> Result<(Vec<(String, Route)>, Vec<Address>), Refused> {
        let (mut local, mut elsewhere) = (Vec::new(), Vec::new());
        let suffix = format!(".{}", running.domain.to_ascii_lowercase());
        for address in recipients {
            if !address.domain().to_ascii_lowercase().ends_with(&suffix) {
                elsewhere.push(address.clone());
                continue;
            }
            match running.router.resolve(address.as_ref()).await {
                Ok(Some(route)) => local.push((address.to_string(), route)),
                Ok(None) => {
                    return Err(Refused::invalid(format!(
                        "no tunnel of this server takes mail for {address}"
                    )));
                }
                Err(e) => {
                    return Err(Refused {
                        status: 503,
                        code: 701,
                        message: format!(
                            "mail for {address} cannot be routed now ({e}); try again"
                        ),
                    });
                }
            }
        }
        Ok((local, elsewhere))
    }
}

fn refused(refused: Refused) -> CallAnswer {
    CallAnswer {
        status: refused.status,
        body: refused.body(),
    }
}

/// Delivers `built` to `local` recipients like any received mail: to their
/// apps, or to the spool.
async fn deliver_here(
    running: &Running,
    built: &Built,
    local: Vec<(String, Route)>,
) -> Result<(), Refused> {
    let envelope = Envelope {
        mail_from: built.from.to_string(),
        rcpt_to: Vec::new(),
        client_ip: "127.0.0.1".into(),
        helo: "droid".into(),
        tls: false,
        tls_session: None,
        auth: None,
        received_at: unix_now(),
    };
    let adapter = &running.adapter;
    let reply = accept::accept(
        built.raw.clone(),
        envelope,
        local,
        adapter.spool.as_ref(),
        adapter.config.deliver_timeout,
        &adapter.stats,
    )
    .await;
    match reply.chars().next() {
        Some('2') => Ok(()),
        Some('5') => Err(Refused {
            status: 422,
            code: 406,
            message: format!("the app refused the message: {reply}"),
        }),
        _ => Err(Refused {
            status: 503,
            code: 701,
            message: format!("the message could not be delivered now: {reply}"),
        }),
    }
}
