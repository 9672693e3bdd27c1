//! The parts of a file that adapters read themselves: `[adapters.NAME]`
//! (server), `[embedded.NAME]` and the key `NAME` of each `[[tunnels]]`
//! (client), for every registered adapter `NAME`.
//!
//! They are taken out before the rest of the file is read, so its own
//! tables stay `deny_unknown_fields`; then each adapter reads its part
//! with a deserializer whose errors point into the file.

use std::path::Path;

use droid_adapters::SetupError;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::ConfigError;

/// A step to a part: a table's key or an array's index.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// A key.
    Key(&'a str),
    /// An index.
    Index(usize),
}

/// Takes every adapter's part out of `doc`.
pub fn strip(doc: &mut DeTable<'_>, adapters: &[&str]) {
    for table in ["adapters", "embedded"] {
        if let Some(DeValue::Table(t)) = doc.get_mut(table).map(Spanned::get_mut) {
            for name in adapters {
                t.remove(*name);
            }
        }
    }
    if let Some(DeValue::Array(tunnels)) = doc.get_mut("tunnels").map(Spanned::get_mut) {
        for tunnel in tunnels.iter_mut() {
            if let DeValue::Table(t) = tunnel.get_mut() {
                for name in adapters {
                    t.remove(*name);
                }
            }
        }
    }
}

/// `[adapters.NAME]` of a server file.
pub fn server(adapter: &str) -> [Step<'_>; 2] {
    [Step::Key("adapters"), Step::Key(adapter)]
}

/// `[embedded.NAME]` of a client file.
pub fn embedded(adapter: &str) -> [Step<'_>; 2] {
    [Step::Key("embedded"), Step::Key(adapter)]
}

/// The key `NAME` of the client file's tunnel `i`.
pub fn tunnel(i: usize, adapter: &str) -> [Step<'_>; 3] {
    [Step::Key("tunnels"), Step::Index(i), Step::Key(adapter)]
}

/// How `steps` are written in a message: `tunnels[0].NAME`.
pub fn describe(steps: &[Step<'_>]) -> String {
    let mut out = String::new();
    for step in steps {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Gives the part at `steps` of `source` (read from `file`) to `read`, if
/// the file has it; an error of `read`'s is placed in the file.
pub fn read<R>(
    file: &Path,
    source: &str,
    steps: &[Step<'_>],
    read: impl FnOnce(ValueDeserializer<'_>) -> Result<R, SetupError>,
) -> Result<Option<R>, ConfigError> {
    let doc = DeTable::parse(source).map_err(|e| ConfigError::from_toml(file, source, None, &e))?;
    let Some(value) = find(doc.get_ref(), steps) else {
        return Ok(None);
    };
    match read(ValueDeserializer::from(value)) {
        Ok(part) => Ok(Some(part)),
        Err(SetupError::File(e)) => Err(ConfigError::from_toml(
            file,
            source,
            Some(describe(steps)),
            &e,
        )),
        Err(SetupError::Flag(message)) => {
            let span = DeTable::parse(source)
                .ok()
                .and_then(|doc| find(doc.get_ref(), steps).map(|v| v.span()));
            Err(ConfigError::at(
                file,
                source,
                span,
                Some(describe(steps)),
                message,
            ))
        }
    }
}

fn find<'i>(doc: &DeTable<'i>, steps: &[Step<'_>]) -> Option<Spanned<DeValue<'i>>> {
    let (Step::Key(first), rest) = steps.split_first()? else {
        return None;
    };
    let mut value = doc.get(*first)?;
    for step in rest {
        value = match (step, value.get_ref()) {
            (Step::Key(k), DeValue::Table(t)) => t.get(*k)?,
            (Step::Index(i), DeValue::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(value.clone())
}
