//! The server file: `droid server --config server.toml`.

use serde::Deserialize;
use toml::Spanned;

use super::smtp::SpoolFile;
use super::values::{Addr, Dur, Ip, LogLevel, NonEmpty, PortRange, TunnelName};

/// `[[tokens]]`.
pub type Tokens = Vec<Spanned<TokenFile>>;

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
    /// Where `GET /metrics` is served, for Prometheus (`--metrics`).
    pub metrics: Option<Addr>,
    /// A directory where names are written down, to outlive a restart
    /// (`--state`).
    pub state: Option<NonEmpty>,
    /// The public ports TCP tunnels get, `"LOW-HIGH"` (`--tcp-ports`).
    pub tcp_ports: Option<PortRange>,
    /// The address TCP tunnels' ports listen on (`--tcp-bind`).
    pub tcp_bind: Option<Ip>,
    /// The public HTTPS listener (`--https`); needs `tls_cert` and `tls_key`.
    pub https: Option<Spanned<Addr>>,
    /// The PEM certificate chain of the control port (then TLS only) and
    /// of HTTPS (`--tls-cert`).
    pub tls_cert: Option<Spanned<NonEmpty>>,
    /// Its PEM private key (`--tls-key`).
    pub tls_key: Option<Spanned<NonEmpty>>,
    /// The port public URLs carry.
    pub public_port: Option<u16>,
    /// How often clients are told to ping.
    pub heartbeat_interval: Option<Dur>,
    /// A client silent for this long is dead.
    pub heartbeat_timeout: Option<Dur>,
    /// The log level when `RUST_LOG` is unset.
    pub log_level: Option<LogLevel>,
    /// Threads that serve tunnels (`--threads`); default: one per core.
    pub threads: Option<Spanned<usize>>,
    /// How long names are kept for their owners.
    pub names: Option<NamesFile>,
    /// Limits.
    pub limits: Option<LimitsFile>,
    /// Whether clients must send one of `tokens` (`--require-token`);
    /// default: true when tokens are listed.
    pub require_token: Option<bool>,
    /// Auth tokens, the names each reserves, and each one's tunnel cap.
    #[serde(default)]
    pub tokens: Tokens,
    /// What is left of `[adapters]` once every registered adapter took
    /// its own table: only names no adapter has.
    pub adapters: Option<std::collections::BTreeMap<Spanned<String>, toml::Value>>,
    /// Where mail waits, and its retries.
    pub spool: Option<Spanned<SpoolFile>>,
    /// One node of several sharing a registry in Redis.
    pub cluster: Option<ClusterFile>,
}

/// `[cluster]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// Redis, `redis://HOST:PORT` (`--cluster`).
    pub redis: NonEmpty,
    /// This node's id, unique in the cluster (`--node-id`).
    pub node_id: NonEmpty,
    /// How long a node's names stay live without renewing its lease
    /// (`--cluster-lease`, default 10s).
    pub lease: Option<Dur>,
    /// Where this node takes the other nodes' requests (`--peer`).
    pub peer: Option<Addr>,
    /// The address the other nodes reach `peer` at (`--peer-advertise`).
    pub peer_advertise: Option<NonEmpty>,
    /// The key of the TLS between the nodes (`--cluster-secret`).
    pub secret: Option<NonEmpty>,
    /// The CA certificates (PEM) a `rediss://` Redis's must chain to
    /// (`--cluster-ca`).
    pub ca: Option<NonEmpty>,
}

/// `[names]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamesFile {
    /// How long a dropped client's names are kept for it alone (`--grace`).
    pub grace: Option<Dur>,
    /// How long a released name is kept from new users (`--quarantine`).
    pub quarantine: Option<Dur>,
    /// The most names remembered at once, live or released (`--max-names`).
    pub max_names: Option<usize>,
    /// The most names one address may have remembered; 0: no limit.
    pub max_names_per_ip: Option<usize>,
    /// The most names one token may have remembered; 0: no limit.
    pub max_names_per_token: Option<usize>,
    /// New names per address, and per token, per minute; 0: no limit.
    pub new_names_per_minute: Option<u32>,
    /// `false` lets anybody claim common service names and punycode names
    /// (`--free-service-names`).
    pub keep_service_names: Option<bool>,
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
    /// How long a visitor may pause while sending a request body.
    pub body_read_timeout: Option<Dur>,
    /// How long a draining server waits for what is in flight
    /// (`--drain-timeout`).
    pub drain_timeout: Option<Dur>,
    /// Bytes of a request line and headers; more gets a 431.
    pub max_header_size: Option<Spanned<usize>>,
    /// Header fields per request; more gets a 431.
    pub max_headers: Option<Spanned<usize>>,
    /// Bytes of a request body; more gets a 413 (mail size is
    /// `adapters.smtp.max_message_size`).
    pub max_body_size: Option<u64>,
    /// Tunnels one client connection may ask for.
    pub max_tunnels_per_session: Option<Spanned<usize>>,
    /// Live tunnels per token, unless its `[[tokens]]` entry says otherwise.
    pub max_tunnels_per_token: Option<usize>,
    /// Live tunnels the clients of one IP address may hold.
    pub max_tunnels_per_ip: Option<usize>,
    /// Client sessions open at once.
    pub max_sessions: Option<Spanned<usize>>,
    /// Client sessions open at once from one address.
    pub max_sessions_per_ip: Option<Spanned<usize>>,
    /// Visitor connections open at once (HTTP and HTTPS).
    pub max_visitor_connections: Option<Spanned<usize>>,
    /// Visitor connections open at once from one address.
    pub max_visitor_connections_per_ip: Option<Spanned<usize>>,
    /// Requests per second each tunnel takes; more get a 429.
    pub requests_per_second: Option<Spanned<u32>>,
    /// Requests a tunnel takes at once after a quiet spell (default: the rate).
    pub burst: Option<Spanned<u32>>,
}

/// One `[[tokens]]` entry. Its `Debug` masks the token.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    /// The token clients send.
    pub token: NonEmpty,
    /// The names only it may claim.
    #[serde(default)]
    pub names: Vec<TunnelName>,
    /// The TCP ports only it may claim.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// The most live tunnels it may hold at once.
    pub max_tunnels: Option<usize>,
}

impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenFile")
            .field("token", &"MASKED")
            .field("names", &self.names)
            .field("ports", &self.ports)
            .field("max_tunnels", &self.max_tunnels)
            .finish()
    }
}

impl ServerFile {
    /// `tls_cert` and `tls_key` come together, load, and `https` has them.
    pub fn validate_tls(
        &self,
        file: &std::path::Path,
        source: &str,
    ) -> Result<(), super::ConfigError> {
        let at = |span, key: &str, message: String| {
            Err(super::ConfigError::at(
                file,
                source,
                Some(span),
                Some(key.to_string()),
                message,
            ))
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), None) => {
                return at(
                    cert.span(),
                    "tls_cert",
                    "`tls_cert` needs `tls_key`, the certificate's private key".into(),
                );
            }
            (None, Some(key)) => {
                return at(
                    key.span(),
                    "tls_key",
                    "`tls_key` needs `tls_cert`, the certificate chain it belongs to".into(),
                );
            }
            (Some(cert), Some(key)) => {
                let paths = (
                    std::path::Path::new(&cert.get_ref().0),
                    std::path::Path::new(&key.get_ref().0),
                );
                if let Err(e) = droid_server::ServerTls::from_pem_files(paths.0, paths.1) {
                    return at(cert.span(), "tls_cert", e.to_string());
                }
            }
            (None, None) => {
                if let Some(https) = &self.https {
                    return at(
                        https.span(),
                        "https",
                        "HTTPS needs a certificate: add `tls_cert` and `tls_key` (for *.DOMAIN)"
                            .into(),
                    );
                }
            }
        }
        Ok(())
    }
}
