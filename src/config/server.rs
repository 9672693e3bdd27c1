//! The server file: `droid server --config server.toml`.

use serde::Deserialize;
use toml::Spanned;

use super::smtp::{SmtpFile, SpoolFile};
use super::values::{Addr, Dur, LogLevel, NonEmpty, TunnelName, Unsupported};

/// A public server's settings; each key is the command-line option of the
/// same name (`--heartbeat-timeout` is `heartbeat_timeout`), grouped by concern.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Tunnels are served at NAME.domain.
    pub domain: NonEmpty,
    /// The public HTTP listener.
    pub http: Option<Addr>,
    /// The listener clients connect to.
    pub control: Option<Addr>,
    /// The port public URLs carry.
    pub public_port: Option<u16>,
    /// How often clients are told to ping.
    pub heartbeat_interval: Option<Dur>,
    /// A client silent for this long is dead.
    pub heartbeat_timeout: Option<Dur>,
    /// The log level when `RUST_LOG` is unset.
    pub log_level: Option<LogLevel>,
    /// How long names are kept for their owners.
    pub names: Option<NamesFile>,
    /// Limits.
    pub limits: Option<LimitsFile>,
    /// Auth tokens and the names each may reserve: not enforced yet.
    #[allow(dead_code, reason = "checked, then refused: reading one fails")]
    #[serde(default)]
    pub tokens: Option<Unsupported<Vec<TokenFile>>>,
    /// The adapters to run.
    pub adapters: Option<ServerAdapters>,
    /// Where mail waits, and its retries.
    pub spool: Option<Spanned<SpoolFile>>,
}

/// `[names]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamesFile {
    /// How long a dropped client's names are kept for it alone (`--grace`).
    pub grace: Option<Dur>,
    /// How long a released name is kept from new users (`--quarantine`).
    pub quarantine: Option<Dur>,
    /// The most released names remembered at once.
    pub max_released: Option<usize>,
}

/// `[limits]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Streams (requests, deliveries) open at once per client session.
    pub max_streams_per_tunnel: Option<Spanned<usize>>,
    /// How long a request waits for a free stream before a 503.
    pub stream_open_timeout: Option<Dur>,
    /// How long a visitor may take to send a request's headers.
    pub header_read_timeout: Option<Dur>,
    /// Not enforced yet.
    #[allow(dead_code, reason = "checked, then refused: reading one fails")]
    #[serde(default)]
    pub max_tunnels_per_token: Option<Unsupported<usize>>,
    /// Not enforced yet (mail size is `adapters.smtp.max_message_size`).
    #[allow(dead_code, reason = "checked, then refused: reading one fails")]
    #[serde(default)]
    pub max_body_size: Option<Unsupported<u64>>,
    /// Not enforced yet.
    #[allow(dead_code, reason = "checked, then refused: reading one fails")]
    #[serde(default)]
    pub requests_per_second: Option<Unsupported<u32>>,
}

/// One `[[tokens]]` entry, checked before it is refused.
#[allow(dead_code, reason = "checked, then refused: nothing reads it yet")]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// The token clients send.
    pub token: NonEmpty,
    /// The names it may reserve.
    #[serde(default)]
    pub names: Vec<TunnelName>,
}

/// `[adapters]` of a server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerAdapters {
    /// Mail for `*@NAME.domain`, delivered through NAME's tunnel.
    pub smtp: Option<SmtpFile>,
}
