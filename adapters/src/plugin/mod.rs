//! An adapter as the `droid` command knows it: the flags it adds, the
//! config-file keys it reads, the adapter it gives a server, what it asks
//! for a tunnel, and the line `droid http` prints for it.
//!
//! The command registers each adapter's [`Plugin`] in one list and knows
//! nothing else of it: `droid server --help` shows the flags of every
//! adapter, `[adapters.NAME]` in a server file and the key `NAME` of a
//! client file's tunnel go to the adapter named, and the adapter reads
//! them itself (so its errors point at the file's line).

pub mod values;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Arg, ArgMatches};
use serde_json::Value;
use tokio::net::TcpListener;
use toml::de::ValueDeserializer;

use crate::adapter::bind_listener;
use crate::host::ServerAdapter;
use crate::route::Answer;
use crate::spool::Spool;

/// What went wrong setting an adapter up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A flag, or a combination of them; the sentence names them.
    #[error("{0}")]
    Flag(String),
    /// The adapter's part of a config file: the path of the key within
    /// the part (`routes[0].path`, or empty), and the error, which has its
    /// place in the file.
    #[error("{1}")]
    File(String, toml::de::Error),
    /// A key of the adapter's part of a config file, by name, and why.
    #[error("{1}")]
    Key(&'static str, String),
    /// A listener that could not be opened.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Listen {
        /// The protocol (`MQTT`).
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// What the server an adapter starts in gives it.
#[derive(Clone)]
pub struct Place {
    /// The server's domain: tunnels live at `NAME.domain`.
    pub domain: String,
    /// The spool every adapter shares, if the server keeps one.
    pub spool: Option<Arc<Spool>>,
}

/// An adapter read from flags and files, its listeners not open yet
/// (`droid config check` reads, and never opens them).
pub trait Setup: Send {
    /// Opens its listeners for a server at `place`.
    fn start(self: Box<Self>, place: Place) -> Answer<'static, Result<Started, SetupError>>;
}

/// An adapter ready to run, and what is printed of it when its server
/// starts (`droid server: ...`, or `droid: ...` for the server inside
/// `droid http`).
pub struct Started {
    /// The adapter.
    pub adapter: Arc<dyn ServerAdapter>,
    /// What is said of it, a line each.
    pub lines: Vec<String>,
}

/// What a tunnel asks of an adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    /// Its settings, JSON only the adapter reads (carried in the hello).
    pub settings: Value,
    /// The secret this tunnel's deliveries are signed with, when the
    /// adapter's part of a file names one.
    pub secret: Option<String>,
}

impl Part {
    /// Settings, no secret.
    pub fn of(settings: &impl serde::Serialize) -> Part {
        Part {
            settings: serde_json::to_value(settings).unwrap_or_default(),
            secret: None,
        }
    }
}

/// An adapter, for the `droid` command.
pub trait Plugin: Send + Sync {
    /// Its name: the key of its settings in hellos, grants and files.
    fn name(&self) -> &'static str;

    /// The key of a client file's tunnel that holds what it asks of this
    /// adapter (the name, unless the protocol has a plainer word: mail).
    fn tunnel_key(&self) -> &'static str {
        self.name()
    }

    /// The flags it adds to `droid server`.
    fn server_flags(&self) -> Vec<Arg> {
        Vec::new()
    }

    /// The flags it adds to `droid http`: what the tunnel asks, and how
    /// the server inside `droid http` runs it.
    fn http_flags(&self) -> Vec<Arg> {
        Vec::new()
    }

    /// The adapter `droid server` runs, from its flags (absent when a file
    /// is only checked) over the file's `[adapters.NAME]`; `None` when
    /// neither asks for it. `has_cert`: the server has a certificate.
    fn server(
        &self,
        flags: Option<&ArgMatches>,
        file: Option<ValueDeserializer<'_>>,
        has_cert: bool,
    ) -> Result<Option<Box<dyn Setup>>, SetupError>;

    /// The adapter the server inside `droid http` (its flags) and `droid
    /// start` (a client file's `[embedded.NAME]`) runs; `None`: none.
    fn embedded(
        &self,
        flags: Option<&ArgMatches>,
        file: Option<ValueDeserializer<'_>>,
    ) -> Result<Option<Box<dyn Setup>>, SetupError> {
        let _ = (flags, file);
        Ok(None)
    }

    /// What the tunnel of `droid http` asks of it, from the flags; `None`:
    /// nothing.
    fn tunnel_from_flags(&self, flags: &ArgMatches) -> Result<Option<Part>, SetupError> {
        let _ = flags;
        Ok(None)
    }

    /// What an HTTP tunnel of a client file asks of it with the key
    /// [`Plugin::tunnel_key`] (`None`: the key is absent); `None`:
    /// nothing.
    fn tunnel_from_file(
        &self,
        value: Option<ValueDeserializer<'_>>,
    ) -> Result<Option<Part>, SetupError>;

    /// The line `droid http` prints for a tunnel that `asked` and was
    /// `granted` (`None`: the server said nothing of it); `None`: no line.
    fn describe(&self, asked: &Value, granted: Option<&Value>) -> Option<String>;
}

/// Reads an adapter's part of a config file as `T`; an error says which
/// key of the part, and where.
pub fn read_table<T: serde::de::DeserializeOwned>(
    value: ValueDeserializer<'_>,
) -> Result<T, SetupError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        SetupError::File(
            if path == "." { String::new() } else { path },
            e.into_inner(),
        )
    })
}

/// How many ports after the asked one [`bind_next_free`] tries.
const PORT_TRIES: u16 = 20;

/// Binds `first`, or the next free port after it (port 0 binds once), for
/// the server inside `droid http`; the error names `what` and the
/// `--flag` that chooses another port.
pub async fn bind_next_free(
    first: SocketAddr,
    what: &'static str,
    flag: &str,
) -> Result<TcpListener, SetupError> {
    let mut addr = first;
    let tries = if first.port() == 0 { 1 } else { PORT_TRIES };
    for _ in 0..tries {
        match bind_listener(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                addr.set_port(addr.port().saturating_add(1));
            }
            Err(source) => return Err(SetupError::Listen { what, addr, source }),
        }
    }
    Err(SetupError::Flag(format!(
        "{what} ports {} to {} are all taken; pass --{flag} 127.0.0.1:PORT",
        first.port(),
        first.port().saturating_add(tries - 1),
    )))
}

/// Binds `addr` for a public server.
pub async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, SetupError> {
    bind_listener(addr)
        .await
        .map_err(|source| SetupError::Listen { what, addr, source })
}

/// `LOW-HIGH`, a range of ports.
pub fn port_range(s: &str) -> Result<(u16, u16), String> {
    let (low, high) = s.split_once('-').ok_or_else(|| {
        format!("`{s}` is not a range of ports; write LOW-HIGH, e.g. 20000-20999")
    })?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("`{p}` is not a port (1-65535)"))
    };
    let (low, high) = (port(low)?, port(high)?);
    if low > high {
        return Err(format!(
            "{low}-{high} is empty: the first port must not be above the last"
        ));
    }
    Ok((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(port_range("20000-20999"), Ok((20000, 20999)));
        assert_eq!(port_range("5-5"), Ok((5, 5)));
        assert!(port_range("9-1").unwrap_err().contains("empty"));
        assert!(port_range("0-10").unwrap_err().contains("not a port"));
        assert!(port_range("80").unwrap_err().contains("LOW-HIGH"));
    }
}
