//! The value types of the command's own config keys: tunnel names, IP
//! allow-lists, log levels and local targets. The ones adapters share
//! (addresses, durations, secrets...) are [`droid_adapters::plugin::values`].

use std::fmt;
use std::str::FromStr;

use droid_client::Target;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

pub use droid_adapters::plugin::values::{
    Addr, Credentials, Dur, Ip, NonEmpty, PortRange, check_credentials, expand, parsed,
};

/// A tunnel name: one DNS label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelName(pub String);

impl<'de> Deserialize<'de> for TunnelName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| {
            droid_server::names::validate(s)
                .map(|()| TunnelName(s.to_string()))
                .map_err(|why| format!("`{s}` is not a tunnel name: {why}"))
        })
    }
}

/// An IP address or CIDR block: `203.0.113.7`, `10.0.0.0/8`, `2001:db8::/32`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAllow(pub String);

impl<'de> Deserialize<'de> for IpAllow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| {
            droid_server::access::IpBlock::parse(s).map(|_| IpAllow(s.trim().to_string()))
        })
    }
}

/// A log level or `RUST_LOG`-style filter: `info`, `droid_server=debug,warn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLevel(pub String);

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| {
            tracing_subscriber::EnvFilter::try_new(s)
                .map(|_| LogLevel(s.to_string()))
                .map_err(|_| {
                    format!(
                        "`{s}` is not a log level; expected error, warn, info, debug, trace, or a filter like droid_server=debug"
                    )
                })
        })
    }
}

/// A local target: a port (`3000`), `HOST:PORT`, or an `http://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local(pub Target);

impl<'de> Deserialize<'de> for Local {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LocalVisitor;
        impl Visitor<'_> for LocalVisitor {
            type Value = Local;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (3000), HOST:PORT or an http:// URL")
            }
            fn visit_i64<E: de::Error>(self, port: i64) -> Result<Local, E> {
                let port = u16::try_from(port)
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| E::custom(format!("{port} is not a port (1 to 65535)")))?;
                Target::from_str(&port.to_string())
                    .map(Local)
                    .map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, port: u64) -> Result<Local, E> {
                self.visit_i64(i64::try_from(port).unwrap_or(-1))
            }
            fn visit_str<E: de::Error>(self, raw: &str) -> Result<Local, E> {
                let text = expand(raw).map_err(E::custom)?;
                Target::from_str(&text).map(Local).map_err(E::custom)
            }
        }
        d.deserialize_any(LocalVisitor)
    }
}
