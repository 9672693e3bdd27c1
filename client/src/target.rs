//! The local target a tunnel forwards to: a port, `HOST:PORT`, or a URL.

use std::fmt;
use std::str::FromStr;

/// Where a tunnel's requests go on the developer's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// A host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The TCP port.
    pub port: u16,
    /// Whether the app speaks TLS there (an `https://` target).
    pub tls: bool,
}

impl Target {
    /// The app at `host:port`, in plain TCP.
    pub fn new(host: impl Into<String>, port: u16) -> Target {
        Target {
            host: host.into(),
            port,
            tls: false,
        }
    }

    /// The `Host` header value that names this target (port omitted when
    /// it is the scheme's: 80, or 443 for TLS).
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.tls { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tls {
            f.write_str("https://")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for Target {
    type Err = String;

    /// `3000` is `127.0.0.1:3000`; `HOST:PORT`, `http://HOST[:PORT][/]` and
    /// `https://HOST[:PORT][/]` (an app that speaks TLS) name another host.
    fn from_str(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if let Ok(port) = s.parse::<u16>() {
            return check(Target::new("127.0.0.1", port));
        }
        let (rest, default_port, tls) = if let Some(rest) = s.strip_prefix("http://") {
            (rest, Some(80), false)
        } else if let Some(rest) = s.strip_prefix("https://") {
            (rest, Some(443), true)
        } else if s.contains("://") {
            return Err(format!(
                "{s}: only http:// and https:// URLs can be targets"
            ));
        } else {
            (s, None, false)
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (host, port) = split_host_port(authority)
            .ok_or_else(|| format!("{s}: expected a port, HOST:PORT or http://HOST[:PORT]"))?;
        let port = match (port, default_port) {
            (Some(p), _) => p
                .parse::<u16>()
                .map_err(|_| format!("{s}: {p} is not a port number"))?,
            (None, Some(d)) => d,
            (None, None) => return Err(format!("{s}: give a port, e.g. {authority}:3000")),
        };
        check(Target {
            host: host.to_string(),
            port,
            tls,
        })
    }
}

fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':');
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port))),
        None => Some((authority, None)),
    }
}

fn check(target: Target) -> Result<Target, String> {
    if target.host.is_empty() {
        return Err("the target has no host".into());
    }
    if target.port == 0 {
        return Err("the target's port must not be 0".into());
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn targets_parse_from_ports_host_ports_and_urls() {
        assert_eq!(t("3000").to_string(), "127.0.0.1:3000");
        assert_eq!(t("192.168.1.5:3000").to_string(), "192.168.1.5:3000");
        assert_eq!(t("http://127.0.0.1:5173").to_string(), "127.0.0.1:5173");
        assert_eq!(t("http://localhost/").to_string(), "localhost:80");
        assert_eq!(t("http://[::1]:8000/app").to_string(), "[::1]:8000");
        assert_eq!(t("[::1]:8000").host, "::1");
        assert_eq!(t("http://localhost").host_header(), "localhost");
        assert_eq!(t("localhost:5173").host_header(), "localhost:5173");
        let tls = t("https://localhost:5001/");
        assert!(tls.tls);
        assert_eq!(tls.to_string(), "https://localhost:5001");
        assert_eq!(t("https://app.test").host_header(), "app.test");
        assert_eq!(t("https://app.test").port, 443);
    }

    #[test]
    fn bad_targets_say_why() {
        for (bad, why) in [
            ("ftp://x", "only http:// and https://"),
            ("localhost", "give a port"),
            ("x:99999", "not a port number"),
            ("0", "must not be 0"),
        ] {
            let e = bad.parse::<Target>().unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
