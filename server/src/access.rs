//! Who may reach a tunnel: HTTP basic auth and an IP allow-list, both asked
//! for by the tunnel's owner in `hello` and checked here, at the server,
//! before a byte of the request enters the tunnel.
//!
//! The password is never kept: only a SHA-256 of a random per-tunnel salt
//! and `user:password`, compared in constant time.

use std::net::IpAddr;

use base64::Engine;
use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The checks a tunnel's visitors must pass.
#[derive(Debug, Clone, Default)]
pub struct Access {
    auth: Option<BasicAuth>,
    allow: Vec<IpBlock>,
}

/// What a check decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request through.
    Pass,
    /// The visitor's address is not allowed: 403.
    Forbidden,
    /// Credentials are missing or wrong: 401 with `WWW-Authenticate`.
    Unauthorized,
}

impl Access {
    /// Reads the tunnel's `auth` (`user:password`) and `allow_ip` entries.
    /// The error is a sentence for the client.
    pub fn new(auth: Option<&str>, allow_ip: &[String]) -> Result<Access, String> {
        let auth = match auth {
            None => None,
            Some(pair) => {
                if !pair.contains(':') || pair.starts_with(':') {
                    return Err(
                        "basic auth must be user:password, with a non-empty user".to_string()
                    );
                }
                Some(BasicAuth::new(pair))
            }
        };
        let allow = allow_ip
            .iter()
            .map(|s| IpBlock::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Access { auth, allow })
    }

    /// Whether any check is configured.
    pub fn is_open(&self) -> bool {
        self.auth.is_none() && self.allow.is_empty()
    }

    /// Whether basic auth is asked for.
    pub fn has_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Checks a visitor from `ip` sending `authorization` (the header's value).
    /// The address is checked first: a visitor from a refused address learns
    /// nothing about the password.
    pub fn check(&self, ip: IpAddr, authorization: Option<&[u8]>) -> Verdict {
        if !self.allow.is_empty() && !self.allow.iter().any(|b| b.contains(ip)) {
            return Verdict::Forbidden;
        }
        match &self.auth {
            None => Verdict::Pass,
            Some(auth) if authorization.is_some_and(|v| auth.accepts(v)) => Verdict::Pass,
            Some(_) => Verdict::Unauthorized,
        }
    }
}

/// A salted hash of `user:password`.
#[derive(Clone)]
struct BasicAuth {
    salt: [u8; 16],
    hash: [u8; 32],
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BasicAuth(MASKED)")
    }
}

impl BasicAuth {
    fn new(pair: &str) -> BasicAuth {
        let salt: [u8; 16] = rand::rng().random();
        BasicAuth {
            salt,
            hash: salted(&salt, pair.as_bytes()),
        }
    }

    /// Whether an `Authorization` header value carries the right pair.
    fn accepts(&self, header: &[u8]) -> bool {
        let Some(encoded) = strip_scheme(header) else {
            return false;
        };
        let Ok(pair) = base64::engine::general_purpose::STANDARD.decode(encoded) else {
            return false;
        };
        salted(&self.salt, &pair).ct_eq(&self.hash).into()
    }
}

/// `Basic <base64>`, the scheme case-insensitive.
fn strip_scheme(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(6)?;
    scheme
        .eq_ignore_ascii_case(b"basic ")
        .then(|| rest.trim_ascii())
}

fn salted(salt: &[u8], pair: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"droid basic auth ");
    h.update(salt);
    h.update(pair);
    h.finalize().into()
}

/// An IP or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    network: IpAddr,
    prefix: u8,
}

impl IpBlock {
    /// `203.0.113.7`, `203.0.113.0/24`, `::1`, `2001:db8::/32`.
    pub fn parse(s: &str) -> Result<IpBlock, String> {
        let bad = || format!("`{s}` is not an IP address or a CIDR block like 203.0.113.0/24");
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, prefix)) => (ip, Some(prefix)),
            None => (s.trim(), None),
        };
        let network: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
        };
        Ok(IpBlock { network, prefix })
    }

    /// Whether `ip` is in the block. An IPv4 visitor seen as an IPv4-mapped
    /// IPv6 address (a dual-stack listener) matches IPv4 blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(net.to_bits()),
                u128::from(ip.to_bits()),
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(net.to_bits(), ip.to_bits(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Whether the first `prefix` of `width` bits of `a` and `b` are equal.
fn prefix_eq(a: u128, b: u128, width: u32, prefix: u8) -> bool {
    let shift = width - u32::from(prefix);
    if shift >= 128 {
        return true;
    }
    (a >> shift) == (b >> shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_contain_their_addresses_only() {
        let b = IpBlock::parse("10.1.0.0/16").unwrap();
        assert!(b.contains(ip("10.1.200.3")));
        assert!(!b.contains(ip("10.2.0.1")));
        assert!(b.contains(ip("::ffff:10.1.0.9")));
        assert!(IpBlock::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(
            IpBlock::parse("127.0.0.1")
                .unwrap()
                .contains(ip("127.0.0.1"))
        );
        assert!(
            !IpBlock::parse("127.0.0.1")
                .unwrap()
                .contains(ip("127.0.0.2"))
        );
        let v6 = IpBlock::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::5")));
        assert!(!v6.contains(ip("10.1.0.1")));
        assert!(IpBlock::parse("::/0").unwrap().contains(ip("::1")));
        for bad in [
            "10.0.0.0/33",
            "example.com",
            "10.0.0/8",
            "::/129",
            "1.2.3.4/",
        ] {
            assert!(IpBlock::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn basic_auth_accepts_the_pair_only() {
        let a = Access::new(Some("ann:s3cret:x"), &[]).unwrap();
        let header = |pair: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        };
        let local = ip("127.0.0.1");
        assert_eq!(
            a.check(local, Some(header("ann:s3cret:x").as_bytes())),
            Verdict::Pass
        );
        assert_eq!(
            a.check(local, Some(b"basic YW5uOnMzY3JldDp4")),
            Verdict::Pass
        );
        assert_eq!(
            a.check(local, Some(header("ann:s3cret").as_bytes())),
            Verdict::Unauthorized
        );
        assert_eq!(a.check(local, Some(b"Bearer x")), Verdict::Unauthorized);
        assert_eq!(a.check(local, Some(b"Basic !!!")), Verdict::Unauthorized);
        assert_eq!(a.check(local, None), Verdict::Unauthorized);
        assert!(!format!("{a:?}").contains("s3cret"));
        assert!(Access::new(Some("nopassword"), &[]).is_err());
        assert!(Access::new(Some(":pw"), &[]).is_err());
    }

    #[test]
    fn the_address_is_checked_before_the_password() {
        let a = Access::new(Some("u:p"), &["192.0.2.0/24".into()]).unwrap();
        assert_eq!(a.check(ip("198.51.100.1"), None), Verdict::Forbidden);
        assert_eq!(a.check(ip("192.0.2.1"), None), Verdict::Unauthorized);
    }
}
