//! An adapter as the `droid` command knows it: the flags it adds, the
//! config-file keys it reads, the adapter it gives a server, what it asks
//! for a tunnel, and the line `droid http` prints for it.
//!
//! The command registers each adapter's [`Plugin`] in one list and knows
//! nothing else of it: `droid server --help` shows the flags of every
//! adapter, `[adapters.NAME]` in a server file and the key `NAME` of a
//! client file's tunnel go to the adapter named, and the adapter reads
//! them itself (so its errors point at the file's line).

use std::sync::Arc;

use clap::{Arg, ArgMatches};
use serde_json::Value;
use toml::de::ValueDeserializer;

use crate::host::ServerAdapter;

/// What went wrong setting an adapter up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A flag, or a combination of them; the sentence names them.
    #[error("{0}")]
    Flag(String),
    /// The adapter's part of a config file (the error has its place).
    #[error(transparent)]
    File(#[from] toml::de::Error),
}

/// An adapter set up for a server, and the line the server prints for it.
pub struct Started {
    /// The adapter.
    pub adapter: Arc<dyn ServerAdapter>,
    /// What `droid server` says of it when it starts.
    pub line: String,
}

/// An adapter, for the `droid` command.
pub trait Plugin: Send + Sync {
    /// Its name: the key of its settings in hellos, grants and files.
    fn name(&self) -> &'static str;

    /// The flags it adds to `droid server`, each starting `--NAME-`.
    fn server_flags(&self) -> Vec<Arg> {
        Vec::new()
    }

    /// The flags it adds to `droid http`, each starting `--NAME`.
    fn tunnel_flags(&self) -> Vec<Arg> {
        Vec::new()
    }

    /// The adapter `droid server` runs, from its flags (absent when a file
    /// is only checked) over the file's `[adapters.NAME]`; `None` when
    /// neither asks for it.
    fn server(
        &self,
        flags: Option<&ArgMatches>,
        file: Option<ValueDeserializer<'_>>,
    ) -> Result<Option<Started>, SetupError>;

    /// The adapter the server inside `droid http` and `droid start` runs
    /// (no `--server`), from a client file's `[embedded.NAME]`; `None`:
    /// none.
    fn embedded(
        &self,
        file: Option<ValueDeserializer<'_>>,
    ) -> Result<Option<Arc<dyn ServerAdapter>>, SetupError> {
        let _ = file;
        Ok(None)
    }

    /// What a tunnel of `droid http` asks of it, from the flags; `None`:
    /// nothing.
    fn tunnel_from_flags(&self, flags: &ArgMatches) -> Result<Option<Value>, SetupError> {
        let _ = flags;
        Ok(None)
    }

    /// What a client file's tunnel asks of it with the key `NAME`; `None`:
    /// nothing (`NAME = false`).
    fn tunnel_from_file(&self, value: ValueDeserializer<'_>) -> Result<Option<Value>, SetupError>;

    /// The line `droid http` prints for a tunnel that `asked` and was
    /// `granted` (`None`: the server said nothing of it).
    fn describe(&self, asked: &Value, granted: Option<&Value>) -> String;
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
