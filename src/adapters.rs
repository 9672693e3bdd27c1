//! The adapters this `droid` is built with: each brings its own flags,
//! file keys and printed lines ([`Plugin`]), and nothing here names one
//! but the list.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use clap::ArgMatches;
use droid_adapters::{Part, Place, Plugin, Setup, SetupError, Started};
use droid_client::AdapterParts;

use crate::config::parts;

/// Every registered adapter, in the order their lines are printed.
pub fn plugins() -> Vec<Arc<dyn Plugin>> {
    vec![
        Arc::new(droid_adapters::smtp::SmtpPlugin),
        Arc::new(droid_adapters::mqtt::MqttPlugin),
        Arc::new(droid_adapters::syslog::SyslogPlugin),
    ]
}

/// Their names.
pub fn names() -> Vec<&'static str> {
    plugins().iter().map(|p| p.name()).collect()
}

/// The keys of a client file's tunnel they read.
pub fn tunnel_keys() -> Vec<&'static str> {
    plugins().iter().map(|p| p.tunnel_key()).collect()
}

/// The command line with every adapter's flags on `droid server` and
/// `droid http`.
pub fn command(mut command: clap::Command) -> clap::Command {
    for plugin in plugins() {
        command = command
            .mut_subcommand("server", |c| c.args(plugin.server_flags()))
            .mut_subcommand("http", |c| c.args(plugin.http_flags()));
    }
    command
}

/// A config file as read, for the adapters' parts of it.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    /// Where it was read from.
    pub path: &'a Path,
    /// Its text.
    pub text: &'a str,
}

fn flag_error(e: SetupError) -> anyhow::Error {
    anyhow!("{e}")
}

/// The adapters `droid server` runs, from its flags (`None` when a file is
/// only checked) over its file; `has_cert`: the server has a certificate.
pub fn server(
    flags: Option<&ArgMatches>,
    file: Option<Source<'_>>,
    has_cert: bool,
) -> Result<Vec<(&'static str, Box<dyn Setup>)>> {
    let mut setups = Vec::new();
    for plugin in plugins() {
        let steps = parts::server(plugin.name());
        let setup = parts::with_part(file, &steps, |part| plugin.server(flags, part, has_cert))?;
        setups.extend(setup.map(|s| (plugin.name(), s)));
    }
    Ok(setups)
}

/// The adapters the server inside `droid http` (its `flags`) and `droid
/// start` (a client file's `[embedded.NAME]`) runs.
pub fn embedded(
    flags: Option<&ArgMatches>,
    file: Option<Source<'_>>,
) -> Result<Vec<Box<dyn Setup>>> {
    let mut setups = Vec::new();
    for plugin in plugins() {
        let steps = parts::embedded(plugin.name());
        setups.extend(parts::with_part(file, &steps, |part| {
            plugin.embedded(flags, part)
        })?);
    }
    Ok(setups)
}

/// Opens the listeners of `setups`, in order.
pub async fn start(setups: Vec<Box<dyn Setup>>, place: Place) -> Result<Vec<Started>> {
    let mut started = Vec::new();
    for setup in setups {
        started.push(setup.start(place.clone()).await.map_err(flag_error)?);
    }
    Ok(started)
}

/// What a tunnel asks of the adapters, and the secret its deliveries are
/// signed with when a file's part names one.
pub struct Asked {
    /// Each adapter's part, by name.
    pub parts: AdapterParts,
    /// The first secret a part named.
    pub secret: Option<String>,
}

impl Asked {
    fn from_parts(found: impl IntoIterator<Item = (&'static str, Option<Part>)>) -> Asked {
        let mut asked = Asked {
            parts: AdapterParts::new(),
            secret: None,
        };
        for (name, part) in found {
            if let Some(part) = part {
                asked.secret = asked.secret.or(part.secret);
                asked.parts.insert(name.to_string(), part.settings);
            }
        }
        asked
    }
}

/// What `droid http`'s tunnel asks of the adapters, from its flags.
pub fn tunnel_from_flags(flags: &ArgMatches) -> Result<Asked> {
    let mut found = Vec::new();
    for plugin in plugins() {
        found.push((
            plugin.name(),
            plugin.tunnel_from_flags(flags).map_err(flag_error)?,
        ));
    }
    Ok(Asked::from_parts(found))
}

/// What the client file's HTTP tunnel `i` asks of the adapters.
pub fn tunnel_from_file(file: Source<'_>, i: usize) -> Result<Asked> {
    let mut found = Vec::new();
    for plugin in plugins() {
        let steps = parts::tunnel(i, plugin.tunnel_key());
        let part = parts::with_part(Some(file), &steps, |value| plugin.tunnel_from_file(value))?;
        found.push((plugin.name(), part));
    }
    Ok(Asked::from_parts(found))
}

/// The lines printed for a granted tunnel that `asked` of the adapters.
pub fn describe(asked: &AdapterParts, granted: &AdapterParts) -> Vec<String> {
    plugins()
        .iter()
        .filter_map(|p| {
            let wish = asked.get(p.name())?;
            p.describe(wish, granted.get(p.name()))
        })
        .collect()
}
