//! The client file: `droid start --config droid.toml [NAMES...]`.

use serde::Deserialize;
use toml::Spanned;

use super::smtp::SpoolFile;
use super::values::{Addr, Credentials, Dur, IpAllow, Local, LogLevel, NonEmpty, TunnelName};

/// A client's settings: a server and named tunnels over one connection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// The server's control address, `HOST:PORT`; absent starts a local
    /// server in the same process, as `droid http` does.
    pub server: Option<NonEmpty>,
    /// An auth token, if the server requires one.
    pub token: Option<NonEmpty>,
    /// Connect over TLS, trusting the system's roots (`--tls`).
    pub tls: Option<bool>,
    /// Connect over TLS, trusting only this PEM file's CAs (`--ca`).
    pub ca: Option<Spanned<NonEmpty>>,
    /// Connect over TLS, checking no certificate (`--insecure`; development only).
    pub insecure: Option<bool>,
    /// A server silent for this long is dead.
    pub heartbeat_timeout: Option<Dur>,
    /// The log level when `RUST_LOG` is unset.
    pub log_level: Option<LogLevel>,
    /// The tunnels, all carried by one connection.
    pub tunnels: Spanned<Vec<TunnelFile>>,
    /// The local server used when `server` is absent.
    pub embedded: Option<Spanned<EmbeddedFile>>,
    /// The embedded server's mail spool.
    pub spool: Option<Spanned<SpoolFile>>,
    /// The inspector: its page, API and metrics.
    pub inspect: Option<Spanned<InspectFile>>,
}

/// `[inspect]`: the inspector's listener and what it keeps.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InspectFile {
    /// `false` turns it off (`--no-inspect`).
    pub enabled: Option<bool>,
    /// Where it listens, or the first port tried (`--inspect`).
    pub listen: Option<Spanned<Addr>>,
    /// A login for every request (`--inspect-auth`); required off loopback.
    pub auth: Option<Credentials>,
    /// The most bytes kept of each body (`--inspect-body-cap`).
    pub body_cap: Option<usize>,
    /// The memory all captures may take (`--inspect-budget`).
    pub budget: Option<usize>,
}

/// One `[[tunnels]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunnelFile {
    /// The name: the URL's first label, and what `droid start NAME` selects.
    pub name: Spanned<TunnelName>,
    /// The local app: a port, `HOST:PORT` or an `http://` URL.
    pub local: Local,
    /// `preserve` (the app sees the public Host) or `rewrite`.
    #[serde(default)]
    pub host_header: HostHeaderFile,
    /// `http1` (the default) or `h2c`: what the app speaks (`--app-protocol`).
    #[serde(default)]
    pub app_protocol: AppProtocolFile,
    /// HTTP basic auth the server asks of every visitor (`--auth`).
    pub auth: Option<Credentials>,
    /// Visitor addresses let through, IPs or CIDR blocks (`--allow-ip`).
    #[serde(default)]
    pub allow_ip: Vec<IpAllow>,
    /// `http` (the default) or `tcp`.
    pub kind: Option<KindFile>,
    /// The public port a `tcp` tunnel asks for (`droid tcp --port`).
    pub port: Option<Spanned<u16>>,
}

/// `kind`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KindFile {
    /// Routed by name, with mail.
    Http,
    /// Raw TCP on a public port of its own.
    Tcp,
}

/// `app_protocol`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocolFile {
    /// HTTP/1.1.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge, no TLS.
    H2c,
}

/// `host_header`.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostHeaderFile {
    /// Keep the visitor's Host.
    #[default]
    Preserve,
    /// Set Host to the target's host:port.
    Rewrite,
}

/// `[embedded]`: the local server `droid start` runs when `server` is absent.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedFile {
    /// Where it serves HTTP (`--http` of `droid http`).
    pub http: Option<Addr>,
}

impl ClientFile {
    /// The names of the tunnels, in order.
    pub fn names(&self) -> Vec<String> {
        self.tunnels
            .get_ref()
            .iter()
            .map(|t| t.name.get_ref().0.clone())
            .collect()
    }
}

impl ClientFile {
    /// `ca` loads, does not meet `insecure`, and TLS has a `server` to use.
    pub fn validate_tls(
        &self,
        file: &std::path::Path,
        source: &str,
    ) -> Result<(), super::ConfigError> {
        let insecure = self.insecure == Some(true);
        if let Some(ca) = &self.ca {
            let at = |message: String| {
                Err(super::ConfigError::at(
                    file,
                    source,
                    Some(ca.span()),
                    Some("ca".into()),
                    message,
                ))
            };
            if insecure {
                return at(
                    "`ca` and `insecure = true` contradict each other: trust the CA, or nothing"
                        .into(),
                );
            }
            if let Err(e) =
                droid_client::ClientTls::from_ca_file(std::path::Path::new(&ca.get_ref().0))
            {
                return at(e.to_string());
            }
        }
        let wants_tls = self.tls == Some(true) || self.ca.is_some() || insecure;
        if wants_tls && self.server.is_none() {
            return Err(super::ConfigError::at(
                file,
                source,
                self.ca.as_ref().map(Spanned::span),
                Some(
                    if self.ca.is_some() {
                        "ca"
                    } else if insecure {
                        "insecure"
                    } else {
                        "tls"
                    }
                    .into(),
                ),
                "TLS settings need `server`: the local server droid starts without one speaks plain TCP on loopback",
            ));
        }
        Ok(())
    }

    /// The TLS keys, for [`crate::tls::client`].
    pub fn tls_settings(&self) -> crate::tls::ClientTlsFile {
        crate::tls::ClientTlsFile {
            tls: self.tls,
            ca: self
                .ca
                .as_ref()
                .map(|c| std::path::PathBuf::from(&c.get_ref().0)),
            insecure: self.insecure,
        }
    }
}
