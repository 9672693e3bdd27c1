//! What a tunnel asks of syslog, what the server tells it, and how a
//! server runs syslog.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use droid_core::protocol::AdapterSettings;
use serde::{Deserialize, Serialize};

use super::NAME;
use crate::adapter::ConnLimits;

/// The path messages are POSTed to unless the tunnel says otherwise.
pub const DEFAULT_PATH: &str = "/syslog";

/// A tunnel's syslog settings, under `syslog` in its hello.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyslogSettings {
    /// The path messages are POSTed to (`/syslog`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The port wanted (default: the one it had, else any free one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl SyslogSettings {
    /// The settings of a tunnel that asked for syslog.
    pub fn of(settings: &AdapterSettings) -> Option<SyslogSettings> {
        let value = settings.of(NAME)?;
        Some(serde_json::from_value(value.clone()).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "syslog settings not understood; using the defaults");
            SyslogSettings::default()
        }))
    }

    /// Where messages go.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_PATH)
    }
}

/// What the server tells a tunnel that got a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyslogGrant {
    /// The host senders send to.
    pub host: String,
    /// The port, the same for UDP and TCP.
    pub port: u16,
    /// Whether the TCP side takes TLS too (RFC 5425): the server has a
    /// certificate.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

/// How a server runs syslog.
#[derive(Debug, Clone)]
pub struct SyslogConfig {
    /// The ports tunnels get, LOW-HIGH; `None`: any free port.
    pub ports: Option<(u16, u16)>,
    /// The address the ports are opened on.
    pub bind: IpAddr,
    /// The host the grant tells senders to use (default: the server's
    /// domain).
    pub host: Option<String>,
    /// The largest message; a longer one is cut and flagged, a TCP frame
    /// declaring more closes its connection.
    pub max_message: usize,
    /// TCP connections per port, in total and from one address.
    pub limits: ConnLimits,
    /// Ports open at once for the clients of one address (an IPv6 /64);
    /// 0: no limit.
    pub max_ports_per_ip: usize,
    /// How long the app has to answer before a message is spooled.
    pub deliver_timeout: Duration,
    /// UDP messages a port keeps waiting for the app; past it they are
    /// dropped and counted (a UDP sender cannot be asked to wait).
    pub queue: usize,
    /// UDP messages of one port delivered at once.
    pub concurrency: usize,
}

impl Default for SyslogConfig {
    fn default() -> SyslogConfig {
        SyslogConfig {
            ports: None,
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            host: None,
            max_message: 64 * 1024,
            limits: ConnLimits {
                max_connections: 100,
                max_per_ip: 20,
            },
            deliver_timeout: Duration::from_secs(30),
            max_ports_per_ip: 0,
            queue: 50_000,
            concurrency: 16,
        }
    }
}
