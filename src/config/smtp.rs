//! The spool's section, shared by the three files, and the standalone
//! SMTP-to-URL file (`droid smtp --config smtp.toml`), whose
//! `[adapters.smtp]` is the mail adapter's own table.

use serde::Deserialize;
use toml::Spanned;

use super::values::{Dur, LogLevel, NonEmpty};

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
    pub smtp: Spanned<droid_adapters::SmtpTable>,
}
