//! The value types of config files, for the command and the adapters'
//! own parts of them. Each checks itself while the file is read, so a bad
//! value is reported with its line and column: strings with `${VAR}`
//! expanded, addresses, durations, paths, secrets and credentials.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::mail::Format;

/// Replaces each `${NAME}` with the environment variable NAME; `$${` is a
/// literal `${`. An unset variable is an error that names it.
pub fn expand(raw: &str) -> Result<String, String> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("`${{` without a closing `}}` in \"{raw}\""))?;
            let name = &body[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{name}}}` is not a variable name (letters, digits and _)"
                ));
            }
            match std::env::var(name) {
                Ok(value) => out.push_str(&value),
                Err(std::env::VarError::NotPresent) => {
                    return Err(format!("environment variable {name} is not set"));
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(format!("environment variable {name} is not valid UTF-8"));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads a string, expands it and parses it with `parse`.
pub fn parsed<'de, D, T>(d: D, parse: impl FnOnce(&str) -> Result<T, String>) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    let raw = String::deserialize(d)?;
    let text = expand(&raw).map_err(de::Error::custom)?;
    parse(&text).map_err(de::Error::custom)
}

/// A non-empty string value, `${VAR}` expanded (a token, a secret, a URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonEmpty(pub String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| {
            if s.is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(NonEmpty(s.to_string()))
            }
        })
    }
}

/// A signing secret, `whsec_` and base64 (Standard Webhooks), `${VAR}`
/// expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningSecret(pub String);

impl<'de> Deserialize<'de> for SigningSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| {
            droid_core::sign::Secret::parse(s)
                .map(|_| SigningSecret(s.to_string()))
                .map_err(|e| e.to_string())
        })
    }
}

/// A socket address, `IP:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr(pub SocketAddr);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| {
            s.parse().map(Addr).map_err(|_| {
                format!(
                    "`{s}` is not an address; expected IP:PORT, like 0.0.0.0:80 or 127.0.0.1:2525"
                )
            })
        })
    }
}

/// An IP address, `0.0.0.0` or `::`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ip(pub std::net::IpAddr);

impl<'de> Deserialize<'de> for Ip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| {
            s.parse()
                .map(Ip)
                .map_err(|_| format!("`{s}` is not an IP address, like 0.0.0.0 or ::"))
        })
    }
}

/// A range of ports, `"20000-20999"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub (u16, u16));

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| super::port_range(s).map(PortRange))
    }
}

/// A duration: `30s`, `10m`, `7d`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| {
            humantime::parse_duration(s)
                .map(Dur)
                .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. 30s, 10m or 7d"))
        })
    }
}

/// A URL path: starts with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlPath(pub String);

impl<'de> Deserialize<'de> for UrlPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| url_path(s).map(UrlPath))
    }
}

/// A URL path, for a flag's `value_parser` too: it starts with `/`.
pub fn url_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}` must start with /, e.g. /{s}"))
    }
}

/// `user:password`, for a flag's `value_parser`.
pub fn credentials(s: &str) -> Result<String, String> {
    check_credentials(s)?;
    Ok(s.to_string())
}

/// Basic auth credentials, `user:password`. Its `Debug` masks them.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials(pub String);

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(MASKED)")
    }
}

impl<'de> Deserialize<'de> for Credentials {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| {
            check_credentials(s)?;
            Ok(Credentials(s.to_string()))
        })
    }
}

/// `user:password` with a non-empty user.
pub fn check_credentials(s: &str) -> Result<(), String> {
    match s.split_once(':') {
        Some((user, _)) if !user.is_empty() => Ok(()),
        _ => Err("expected user:password, with a non-empty user".to_string()),
    }
}

/// The body format of mail POSTs: `json`, `multipart` or `raw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailFormat(pub Format);

impl<'de> Deserialize<'de> for MailFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, |s| {
            Format::from_str(s).map(MailFormat).map_err(|_| {
                format!("unknown value `{s}`, expected one of `json`, `multipart`, `raw`")
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_and_unset_ones_are_named() {
        assert_eq!(expand("plain").unwrap(), "plain");
        assert_eq!(
            expand("$HOME stays, $${x} is literal").unwrap(),
            "$HOME stays, ${x} is literal"
        );
        assert_eq!(
            expand("${DROID_SURELY_UNSET_VAR_42}").unwrap_err(),
            "environment variable DROID_SURELY_UNSET_VAR_42 is not set"
        );
        let path = std::env::var("PATH").unwrap();
        assert_eq!(expand("a${PATH}b").unwrap(), format!("a{path}b"));
        assert!(expand("${unclosed").is_err());
        assert!(expand("${bad-name}").is_err());
    }
}
