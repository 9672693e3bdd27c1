//! The SMTP adapter's and the spool's sections, shared by the three files,
//! and the standalone SMTP-to-URL file (`droid smtp --config smtp.toml`).

use serde::Deserialize;
use toml::Spanned;

use super::values::{Addr, Dur, LogLevel, MailFormat, NonEmpty, SigningSecret};

/// `[adapters.smtp]` (server, standalone) or `[embedded.smtp]` (client).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpFile {
    /// `false` turns mail off (`--no-smtp` of `droid http`).
    pub enabled: Option<bool>,
    /// Where mail is accepted (`--smtp`, or `--listen` standalone).
    pub listen: Option<Addr>,
    /// The name in the greeting (`--hostname`).
    pub hostname: Option<NonEmpty>,
    /// The largest message, in bytes (`--max-message-size`).
    pub max_message_size: Option<usize>,
    /// Recipients per message (`--max-recipients`).
    pub max_recipients: Option<usize>,
    /// The memory every message being received may take together, in
    /// bytes (`--message-memory`); past it a message gets 452.
    pub message_memory: Option<usize>,
    /// SMTP connections open at once, in total.
    pub max_connections: Option<usize>,
    /// SMTP connections open at once from one IP address.
    pub max_connections_per_ip: Option<usize>,
    /// How long a client may stay silent.
    pub idle_timeout: Option<Dur>,
    /// How long one SMTP session may last in all.
    pub session_timeout: Option<Dur>,
    /// How long the app has to answer before the message is spooled.
    pub deliver_timeout: Option<Dur>,
    /// Standalone only: the URL each mail is POSTed to (`--post`).
    pub post: Option<Spanned<NonEmpty>>,
    /// Standalone only: accept mail for `*@domain` only (`--domain`).
    pub domain: Option<Spanned<NonEmpty>>,
    /// Standalone only: the POST's body (`--format`).
    pub format: Option<Spanned<MailFormat>>,
    /// Standalone only: the signing key (`--secret`).
    pub secret: Option<Spanned<SigningSecret>>,
}

impl SmtpFile {
    /// The first standalone-only key set, with its span, for files where
    /// mail goes through tunnels instead.
    pub fn standalone_key(&self) -> Option<(&'static str, std::ops::Range<usize>)> {
        if let Some(v) = &self.post {
            return Some(("post", v.span()));
        }
        if let Some(v) = &self.domain {
            return Some(("domain", v.span()));
        }
        if let Some(v) = &self.format {
            return Some(("format", v.span()));
        }
        self.secret.as_ref().map(|v| ("secret", v.span()))
    }
}

/// `[spool]`: where mail the app cannot take now waits, and its retries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolFile {
    /// `false` answers 451 instead of spooling (`--no-spool`).
    pub enabled: Option<bool>,
    /// The directory (`--spool`).
    pub dir: Option<NonEmpty>,
    /// How long retries go on before a message is dead-lettered (`--retry-for`).
    pub retry_for: Option<Dur>,
    /// The wait after the first failed attempt; it doubles after each one.
    pub first_retry: Option<Dur>,
    /// The longest wait between two attempts.
    pub max_retry_delay: Option<Dur>,
    /// Total bytes queued; beyond it new mail gets 451.
    pub max_bytes: Option<u64>,
    /// Messages queued; beyond it new mail gets 451.
    pub max_messages: Option<usize>,
    /// Messages queued for one tunnel's owner; beyond it its mail gets 451.
    pub max_messages_per_owner: Option<usize>,
    /// Bytes queued for one tunnel's owner; beyond it its mail gets 451.
    pub max_bytes_per_owner: Option<u64>,
}

/// A standalone SMTP-to-URL deployment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandaloneFile {
    /// The log level when `RUST_LOG` is unset.
    pub log_level: Option<LogLevel>,
    /// The adapters; only `smtp` exists.
    pub adapters: StandaloneAdapters,
    /// The spool.
    pub spool: Option<SpoolFile>,
}

/// `[adapters]` of a standalone file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandaloneAdapters {
    /// The SMTP adapter; `post` is required here.
    pub smtp: Spanned<SmtpFile>,
}
