//! The adapters this `droid` is built with, beyond mail and MQTT: each
//! brings its own flags, file keys and printed line ([`Plugin`]), and
//! nothing here names one but the list.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use clap::ArgMatches;
use droid_adapters::{Plugin, ServerAdapter, SetupError, Started};
use droid_client::AdapterParts;

use crate::config::parts;

/// Every registered adapter, in the order their lines are printed.
pub fn plugins() -> Vec<Arc<dyn Plugin>> {
    vec![Arc::new(droid_adapters::syslog::SyslogPlugin)]
}

/// Their names.
pub fn names() -> Vec<&'static str> {
    plugins().iter().map(|p| p.name()).collect()
}

/// The command line with every adapter's flags on `droid server` and
/// `droid http`.
pub fn command(mut command: clap::Command) -> clap::Command {
    for plugin in plugins() {
        command = command
            .mut_subcommand("server", |c| c.args(plugin.server_flags()))
            .mut_subcommand("http", |c| c.args(plugin.tunnel_flags()));
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
/// only checked) over its file.
pub fn server(flags: Option<&ArgMatches>, file: Option<Source<'_>>) -> Result<Vec<Started>> {
    let mut started = Vec::new();
    for plugin in plugins() {
        let name = plugin.name();
        let from_file = match file {
            Some(f) => parts::read(f.path, f.text, &parts::server(name), |table| {
                plugin.server(flags, Some(table))
            })?,
            None => None,
        };
        let adapter = match from_file {
            Some(adapter) => adapter,
            None => plugin.server(flags, None).map_err(flag_error)?,
        };
        started.extend(adapter);
    }
    Ok(started)
}

/// The adapters the server inside `droid http` and `droid start` runs,
/// from a client file's `[embedded.NAME]`.
pub fn embedded(file: Option<Source<'_>>) -> Result<Vec<Arc<dyn ServerAdapter>>> {
    let mut adapters = Vec::new();
    for plugin in plugins() {
        let from_file = match file {
            Some(f) => parts::read(f.path, f.text, &parts::embedded(plugin.name()), |table| {
                plugin.embedded(Some(table))
            })?,
            None => None,
        };
        let adapter = match from_file {
            Some(adapter) => adapter,
            None => plugin.embedded(None).map_err(flag_error)?,
        };
        adapters.extend(adapter);
    }
    Ok(adapters)
}

/// What `droid http`'s tunnel asks of the adapters, from its flags.
pub fn tunnel_from_flags(flags: &ArgMatches) -> Result<AdapterParts> {
    let mut asked = AdapterParts::new();
    for plugin in plugins() {
        if let Some(part) = plugin.tunnel_from_flags(flags).map_err(flag_error)? {
            asked.insert(plugin.name().to_string(), part);
        }
    }
    Ok(asked)
}

/// What the client file's tunnel `i` asks of the adapters.
pub fn tunnel_from_file(file: Source<'_>, i: usize) -> Result<AdapterParts> {
    let mut asked = AdapterParts::new();
    for plugin in plugins() {
        let name = plugin.name();
        let part = parts::read(file.path, file.text, &parts::tunnel(i, name), |value| {
            plugin.tunnel_from_file(value)
        })?;
        if let Some(part) = part.flatten() {
            asked.insert(name.to_string(), part);
        }
    }
    Ok(asked)
}

/// The lines printed for a granted tunnel that `asked` of the adapters.
pub fn describe(asked: &AdapterParts, granted: &AdapterParts) -> Vec<String> {
    plugins()
        .iter()
        .filter_map(|p| {
            let wish = asked.get(p.name())?;
            Some(p.describe(wish, granted.get(p.name())))
        })
        .collect()
}
