//! The parts of a file that adapters read themselves: `[adapters.NAME]`
//! (server), `[embedded.NAME]` and the key `NAME` of each `[[tunnels]]`
//! (client; `mail` for smtp), for every registered adapter `NAME`.
//!
//! They are taken out before the rest of the file is read, so its own
//! tables stay `deny_unknown_fields`; then each adapter reads its part
//! with a deserializer whose errors point into the file.

use droid_adapters::SetupError;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::ConfigError;
use crate::adapters::Source;

/// A step to a part: a table's key or an array's index.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// A key.
    Key(&'a str),
    /// An index.
    Index(usize),
}

/// Takes every adapter's part out of `doc`: `adapters` are their names,
/// `tunnel_keys` the keys of a tunnel they read.
pub fn strip(doc: &mut DeTable<'_>, adapters: &[&str], tunnel_keys: &[&str]) {
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
                for key in tunnel_keys {
                    t.remove(*key);
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

/// Gives the part at `steps` of `file` to `read` (`None`: no file, or
/// the file has no such part); an error of `read`'s about the file is
/// placed in it, at the key it names.
pub fn with_part<R>(
    file: Option<Source<'_>>,
    steps: &[Step<'_>],
    read: impl FnOnce(Option<ValueDeserializer<'_>>) -> Result<R, SetupError>,
) -> anyhow::Result<R> {
    let Some(file) = file else {
        return read(None).map_err(|e| anyhow::anyhow!("{e}"));
    };
    let (path, source) = (file.path, file.text);
    let doc = DeTable::parse(source).map_err(|e| ConfigError::from_toml(path, source, None, &e))?;
    let part = find(doc.get_ref(), steps);
    let span = part.as_ref().map(Spanned::span);
    let error = match read(part.map(ValueDeserializer::from)) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let here = describe(steps);
    Err(match error {
        SetupError::File(key, e) => {
            let at = if key.is_empty() {
                here
            } else {
                format!("{here}.{key}")
            };
            ConfigError::from_toml(path, source, Some(at), &e).into()
        }
        SetupError::Key(key, message) => {
            let mut to_key = steps.to_vec();
            to_key.push(Step::Key(key));
            let span = find(doc.get_ref(), &to_key).map(|v| v.span()).or(span);
            ConfigError::at(path, source, span, Some(format!("{here}.{key}")), message).into()
        }
        other => anyhow::anyhow!("{other}"),
    })
}

/// Whether `source` has a part at `steps`.
pub fn present(source: &str, steps: &[Step<'_>]) -> bool {
    DeTable::parse(source).is_ok_and(|doc| find(doc.get_ref(), steps).is_some())
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
