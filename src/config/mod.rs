//! Config files: one TOML file for a server, one for a client, one for a
//! standalone SMTP adapter. Each key is the command-line option of the same
//! name with `_` for `-`, grouped in tables by concern; the command line
//! overrides the file.
//!
//! - [`values`]: the value types, each checked as it is read (addresses,
//!   durations, targets, `${VAR}` expansion).
//! - [`error`]: [`ConfigError`]: the file, line, column and key of the
//!   first problem, with a "did you mean" hint.
//! - [`server`], [`client`], [`smtp`]: the three files.
//!
//! Reading a file is [`load`]: TOML with every table `deny_unknown_fields`,
//! then the checks serde cannot make (duplicate tunnel names, keys in the
//! wrong kind of file).

pub mod client;
pub mod error;
pub mod parts;
pub mod server;
pub mod smtp;
pub mod values;

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;

pub use client::ClientFile;
pub use error::ConfigError;
pub use server::ServerFile;
pub use smtp::StandaloneFile;

/// The three kinds of file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// `droid server --config`.
    Server,
    /// `droid start --config`.
    Client,
    /// `droid smtp --config`: mail POSTed to a URL, no tunnel.
    Smtp,
}

/// The commented examples `droid config example` prints; the same files are
/// in `examples/configs/` and the tests check them.
pub fn example(kind: Kind) -> &'static str {
    match kind {
        Kind::Server => include_str!("../../examples/configs/server.toml"),
        Kind::Client => include_str!("../../examples/configs/droid.toml"),
        Kind::Smtp => include_str!("../../examples/configs/smtp.toml"),
    }
}

/// Checks serde cannot make, with the source for positions.
pub trait Validate {
    /// The first problem, if any.
    fn validate(&self, file: &Path, source: &str) -> Result<(), ConfigError>;

    /// Whether the adapters read their parts of this kind of file
    /// themselves ([`parts`]).
    const ADAPTERS_READ_PARTS: bool = true;
}

/// Reads and checks a config file.
pub fn load<T: DeserializeOwned + Validate>(file: &Path) -> Result<T, ConfigError> {
    load_with_text(file).map(|(value, _)| value)
}

/// Reads and checks a config file, and keeps its text for the adapters'
/// parts ([`parts`]).
pub fn load_with_text<T: DeserializeOwned + Validate>(
    file: &Path,
) -> Result<(T, String), ConfigError> {
    let source = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::whole(file, format!("cannot read the config file: {e}")))?;
    let value = parse(file, &source)?;
    Ok((value, source))
}

/// Parses and checks `source`, read from `file`. The adapters' parts
/// ([`parts`]) are left for the adapters to read.
pub fn parse<T: DeserializeOwned + Validate>(file: &Path, source: &str) -> Result<T, ConfigError> {
    let mut document = toml::de::DeTable::parse(source)
        .map_err(|e| ConfigError::from_toml(file, source, None, &e))?;
    unset_variables(file, source, document.get_ref())?;
    if T::ADAPTERS_READ_PARTS {
        let (names, keys) = (crate::adapters::names(), crate::adapters::tunnel_keys());
        parts::strip(document.get_mut(), &names, &keys);
    }
    let document = toml::de::Deserializer::from(document);
    let value: T = serde_path_to_error::deserialize(document).map_err(|e| {
        let path = e.path().to_string();
        ConfigError::from_toml(file, source, Some(path), e.inner())
    })?;
    value.validate(file, source)?;
    Ok(value)
}

/// Every `${VAR}` of the file whose variable is not set, in one error: a
/// file that needs three variables says so in one run, not three.
fn unset_variables(
    file: &Path,
    source: &str,
    doc: &toml::de::DeTable<'_>,
) -> Result<(), ConfigError> {
    type Found = Vec<(String, String, usize)>;
    fn walk(path: String, value: &toml::Spanned<toml::de::DeValue<'_>>, out: &mut Found) {
        match value.get_ref() {
            toml::de::DeValue::String(text) => {
                if let Err(why) = values::expand(text) {
                    out.push((path, why, value.span().start));
                }
            }
            toml::de::DeValue::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(format!("{path}[{i}]"), v, out);
                }
            }
            toml::de::DeValue::Table(table) => {
                for (k, v) in table.iter() {
                    let key = k.get_ref();
                    let path = if path.is_empty() {
                        key.to_string()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(path, v, out);
                }
            }
            _ => {}
        }
    }
    let mut unset = Found::new();
    for (k, v) in doc.iter() {
        walk(k.get_ref().to_string(), v, &mut unset);
    }
    let Some(((key, why, at), rest)) = unset.split_first() else {
        return Ok(());
    };
    let line = |at: usize| source[..at.min(source.len())].lines().count().max(1);
    let mut message = why.clone();
    for (key, why, at) in rest {
        message.push_str(&format!("; and line {}, `{key}`: {why}", line(*at)));
    }
    Err(ConfigError::at(
        file,
        source,
        Some(*at..*at + 1),
        Some(key.clone()),
        message,
    ))
}

/// An adapter's error about `file`, placed in it when it can be.
fn as_config_error(file: &Path, e: anyhow::Error) -> ConfigError {
    e.downcast::<ConfigError>()
        .unwrap_or_else(|e| ConfigError::whole(file, format!("{e:#}")))
}

/// Which kind of file `source` is, from its top-level keys.
pub fn detect(file: &Path, source: &str) -> Result<Kind, ConfigError> {
    let table: toml::Table = match source.parse() {
        Ok(table) => table,
        // a syntax error: report it as any kind would
        Err(_) => return Ok(Kind::Client),
    };
    let has = |keys: &[&str]| keys.iter().any(|k| table.contains_key(*k));
    if has(&[
        "domain",
        "http",
        "control",
        "public_port",
        "heartbeat_interval",
        "names",
        "limits",
        "tokens",
        "https",
        "tls_cert",
        "tls_key",
    ]) {
        Ok(Kind::Server)
    } else if has(&[
        "server", "token", "tunnels", "embedded", "tls", "ca", "insecure", "inspect",
    ]) {
        Ok(Kind::Client)
    } else if has(&["adapters"]) {
        Ok(Kind::Smtp)
    } else {
        Err(ConfigError::whole(
            file,
            "cannot tell whether this is a server, client or smtp file; pass --kind server|client|smtp",
        ))
    }
}

/// `droid config check`: reads the file as `kind` (or the kind its keys
/// say) and describes what it would start.
pub fn check(file: &Path, kind: Option<Kind>) -> Result<String, ConfigError> {
    let source = std::fs::read_to_string(file)
        .map_err(|e| ConfigError::whole(file, format!("cannot read the config file: {e}")))?;
    let kind = match kind {
        Some(kind) => kind,
        None => detect(file, &source)?,
    };
    let name = file.display();
    Ok(match kind {
        Kind::Server => {
            let f: ServerFile = parse(file, &source)?;
            let whole = crate::adapters::Source {
                path: file,
                text: &source,
            };
            let running: Vec<&str> =
                crate::adapters::server(None, Some(whole), f.tls_cert.is_some())
                    .map_err(|e| as_config_error(file, e))?
                    .iter()
                    .map(|(name, _)| *name)
                    .collect();
            let adapters = match running.as_slice() {
                [] => "no adapters".to_string(),
                some => format!("adapters: {}", some.join(", ")),
            };
            format!("{name}: ok: a server for *.{}, {adapters}", f.domain.0)
        }
        Kind::Client => {
            let f: ClientFile = parse(file, &source)?;
            let server = f
                .server
                .as_ref()
                .map_or("a local embedded server".to_string(), |s| s.0.clone());
            let source_of = crate::adapters::Source {
                path: file,
                text: &source,
            };
            let mut tunnels: Vec<String> = Vec::new();
            for (i, t) in f.tunnels.get_ref().iter().enumerate() {
                let mut adapters: Vec<&str> = Vec::new();
                if !matches!(t.kind, Some(client::KindFile::Tcp)) {
                    let asked = crate::adapters::tunnel_from_file(source_of, i)
                        .map_err(|e| as_config_error(file, e))?;
                    adapters = crate::adapters::plugins()
                        .iter()
                        .filter(|p| asked.parts.contains_key(p.name()))
                        .map(|p| p.tunnel_key())
                        .collect();
                }
                let with = match adapters.as_slice() {
                    [] => "tcp".to_string(),
                    some => some.join(", "),
                };
                tunnels.push(format!("{} -> {} ({with})", t.name.get_ref().0, t.local.0));
            }
            format!(
                "{name}: ok: a client of {server}, tunnels {}",
                tunnels.join(", ")
            )
        }
        Kind::Smtp => {
            let f: StandaloneFile = parse(file, &source)?;
            let post = f
                .adapters
                .smtp
                .get_ref()
                .post
                .as_ref()
                .map(|p| p.0.clone())
                .unwrap_or_default();
            format!("{name}: ok: a standalone smtp adapter posting to {post}")
        }
    })
}

impl Validate for ServerFile {
    fn validate(&self, file: &Path, source: &str) -> Result<(), ConfigError> {
        self.validate_tls(file, source)?;
        if let Some(unknown) = self.adapters.iter().flat_map(|a| a.keys()).next() {
            let names = crate::adapters::names();
            let known: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let hint = error::hint(unknown.get_ref(), &known)
                .map(|h| format!("; {h}"))
                .unwrap_or_default();
            return Err(ConfigError::at(
                file,
                source,
                Some(unknown.span()),
                Some(format!("adapters.{}", unknown.get_ref())),
                format!(
                    "no adapter is named `{}`{hint} (this droid has {})",
                    unknown.get_ref(),
                    names.join(", ")
                ),
            ));
        }
        let runs_adapters = crate::adapters::names()
            .into_iter()
            .any(|name| parts::present(source, &parts::server(name)));
        if let (false, Some(spool)) = (runs_adapters, &self.spool) {
            return Err(ConfigError::at(
                file,
                source,
                Some(spool.span()),
                Some("spool".into()),
                "[spool] holds the messages of the adapters, but this server runs none ([adapters.smtp], [adapters.mqtt], ...); add one or remove [spool]",
            ));
        }
        if let Some(threads) = &self.threads
            && *threads.get_ref() == 0
        {
            return Err(ConfigError::at(
                file,
                source,
                Some(threads.span()),
                Some("threads".into()),
                "must be at least 1",
            ));
        }
        if let Some(l) = &self.limits {
            for (key, value) in [
                ("max_streams_per_tunnel", &l.max_streams_per_tunnel),
                ("max_header_size", &l.max_header_size),
                ("max_headers", &l.max_headers),
                ("max_tunnels_per_session", &l.max_tunnels_per_session),
            ] {
                if let Some(max) = value
                    && *max.get_ref() == 0
                {
                    return Err(ConfigError::at(
                        file,
                        source,
                        Some(max.span()),
                        Some(format!("limits.{key}")),
                        "must be at least 1",
                    ));
                }
            }
            for (key, value) in [
                ("requests_per_second", &l.requests_per_second),
                ("burst", &l.burst),
            ] {
                if let Some(n) = value
                    && *n.get_ref() == 0
                {
                    return Err(ConfigError::at(
                        file,
                        source,
                        Some(n.span()),
                        Some(format!("limits.{key}")),
                        "must be at least 1 (leave it out for no limit)",
                    ));
                }
            }
            if let (None, Some(burst)) = (&l.requests_per_second, &l.burst) {
                return Err(ConfigError::at(
                    file,
                    source,
                    Some(burst.span()),
                    Some("limits.burst".into()),
                    "needs `requests_per_second` too: a burst shapes a request rate",
                ));
            }
        }
        let mut tokens: HashMap<&str, usize> = HashMap::new();
        let mut reserved: HashMap<&str, usize> = HashMap::new();
        for (i, entry) in self.tokens.iter().enumerate() {
            let t = entry.get_ref();
            let at = |message: String| {
                Err(ConfigError::at(
                    file,
                    source,
                    Some(entry.span()),
                    Some(format!("tokens[{i}]")),
                    message,
                ))
            };
            if let Some(first) = tokens.insert(t.token.0.as_str(), i) {
                return at(format!(
                    "the same token is listed twice (tokens[{first}] and tokens[{i}])"
                ));
            }
            for name in &t.names {
                if let Some(first) = reserved.insert(name.0.as_str(), i)
                    && first != i
                {
                    return at(format!(
                        "the name `{}` is reserved by two tokens (tokens[{first}] and tokens[{i}])",
                        name.0
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Validate for ClientFile {
    fn validate(&self, file: &Path, source: &str) -> Result<(), ConfigError> {
        self.validate_tls(file, source)?;
        let tunnels = self.tunnels.get_ref();
        if tunnels.is_empty() {
            return Err(ConfigError::at(
                file,
                source,
                Some(self.tunnels.span()),
                Some("tunnels".into()),
                "no tunnels: add at least one [[tunnels]] table with a name and a local target",
            ));
        }
        for (i, t) in tunnels.iter().enumerate() {
            let tcp = matches!(t.kind, Some(client::KindFile::Tcp));
            let adapter_key = crate::adapters::tunnel_keys()
                .into_iter()
                .find(|key| parts::present(source, &parts::tunnel(i, key)));
            let misplaced = if tcp {
                adapter_key
                    .or(t.auth.as_ref().map(|_| "auth"))
                    .or(matches!(t.host_header, client::HostHeaderFile::Rewrite)
                        .then_some("host_header"))
                    .or(matches!(t.app_protocol, client::AppProtocolFile::H2c)
                        .then_some("app_protocol"))
            } else {
                t.port.as_ref().map(|_| "port")
            };
            let name = &t.name.get_ref().0;
            let conflict = https_conflict(t, tcp).or_else(|| {
                let key = misplaced?;
                let why = if tcp {
                    format!(
                        "`{key}` is for HTTP tunnels, and the tunnel `{name}` is `kind = \"tcp\"` (raw bytes): remove it"
                    )
                } else {
                    format!(
                        "`port` is for TCP tunnels: add `kind = \"tcp\"` to the tunnel `{name}`, or remove it"
                    )
                };
                Some((key, why))
            });
            if let Some((key, why)) = conflict {
                return Err(ConfigError::at(
                    file,
                    source,
                    Some(t.name.span()),
                    Some(format!("tunnels[{i}].{key}")),
                    why,
                ));
            }
        }
        let whole = crate::adapters::Source {
            path: file,
            text: source,
        };
        crate::adapters::embedded(None, Some(whole)).map_err(|e| as_config_error(file, e))?;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, t) in tunnels.iter().enumerate() {
            let name = t.name.get_ref().0.as_str();
            if let Some(&first) = seen.get(name) {
                let first_line =
                    ConfigError::at(file, source, Some(tunnels[first].name.span()), None, "")
                        .line()
                        .unwrap_or(0);
                return Err(ConfigError::at(
                    file,
                    source,
                    Some(t.name.span()),
                    Some(format!("tunnels[{i}].name")),
                    format!(
                        "two tunnels are named `{name}` (the first on line {first_line}); names must be unique"
                    ),
                ));
            }
            seen.insert(name, i);
        }
        if let Some(inspect) = &self.inspect {
            let i = inspect.get_ref();
            if let Some(listen) = &i.listen
                && i.auth.is_none()
                && !listen.get_ref().0.ip().is_loopback()
            {
                return Err(ConfigError::at(
                    file,
                    source,
                    Some(listen.span()),
                    Some("inspect.listen".into()),
                    crate::inspect::needs_auth(listen.get_ref().0),
                ));
            }
        }
        let unused = match (&self.embedded, &self.spool) {
            (Some(e), _) => Some(("embedded", e.span())),
            (None, Some(s)) => Some(("spool", s.span())),
            (None, None) => None,
        };
        if let (Some(_), Some((what, span))) = (&self.server, unused) {
            return Err(ConfigError::at(
                file,
                source,
                Some(span),
                Some(what.to_string()),
                format!(
                    "[{what}] configures the local server droid starts when `server` is absent; with `server` set it would do nothing, so remove one of them"
                ),
            ));
        }
        Ok(())
    }
}

impl Validate for StandaloneFile {
    const ADAPTERS_READ_PARTS: bool = false;

    fn validate(&self, file: &Path, source: &str) -> Result<(), ConfigError> {
        let smtp = &self.adapters.smtp;
        if smtp.get_ref().post.is_none() {
            return Err(ConfigError::at(
                file,
                source,
                Some(smtp.span()),
                Some("adapters.smtp".into()),
                "missing required key `post` in `[adapters.smtp]`: the URL each mail is POSTed to",
            ));
        }
        if smtp.get_ref().listen_tls.is_some() {
            return Err(ConfigError::at(
                file,
                source,
                Some(smtp.span()),
                Some("adapters.smtp.listen_tls".into()),
                "a standalone smtp adapter has no certificate, so no TLS listener; remove `listen_tls`",
            ));
        }
        if smtp.get_ref().enabled == Some(false) {
            return Err(ConfigError::at(
                file,
                source,
                Some(smtp.span()),
                Some("adapters.smtp.enabled".into()),
                "`enabled = false` leaves a standalone smtp file nothing to run",
            ));
        }
        Ok(())
    }
}

/// What an `https://` local target cannot go with (the key), and why.
fn https_conflict(t: &client::TunnelFile, tcp: bool) -> Option<(&'static str, String)> {
    if !t.local.0.tls {
        return None;
    }
    if tcp {
        let why = "a `kind = \"tcp\"` tunnel passes bytes as they are: give `local` as a port or \"HOST:PORT\", not an https:// URL";
        return Some(("local", why.into()));
    }
    matches!(t.app_protocol, client::AppProtocolFile::H2c).then(|| {
        let why = "an https:// target speaks HTTP/2 or HTTP/1.1 as its ALPN chooses: remove `app_protocol`";
        ("app_protocol", why.to_string())
    })
}
