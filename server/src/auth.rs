//! Who may open tunnels: tokens, the names each token reserves, and how
//! many tunnels a token, an address or a session may hold.
//!
//! Tokens are compared in constant time and never logged: logs name a token
//! by its position in the configuration (`token #2`).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use subtle::ConstantTimeEq;

/// One token a server accepts.
#[derive(Clone, Default)]
pub struct TokenRule {
    /// The secret clients send in `hello.token`.
    pub token: String,
    /// Names only this token may claim.
    pub names: Vec<String>,
    /// TCP ports only this token may claim.
    pub ports: Vec<u16>,
    /// The most live tunnels this token may hold at once; `None`: the
    /// server's `max_tunnels_per_token`.
    pub max_tunnels: Option<usize>,
}

impl std::fmt::Debug for TokenRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRule")
            .field("token", &"MASKED")
            .field("names", &self.names)
            .field("ports", &self.ports)
            .field("max_tunnels", &self.max_tunnels)
            .finish()
    }
}

/// The server's tokens and tunnel limits.
#[derive(Debug, Clone)]
pub struct AuthPolicy {
    /// The tokens accepted.
    pub tokens: Vec<TokenRule>,
    /// Whether a client must send one of them. Without it anyone may open
    /// tunnels with random or unreserved names (the no-sign-up default).
    pub require_token: bool,
    /// Tunnels one session (one client connection) may ask for.
    pub max_tunnels_per_session: usize,
    /// Live tunnels one token may hold, unless its rule says otherwise.
    pub max_tunnels_per_token: Option<usize>,
    /// Live tunnels the clients of one IP address may hold.
    pub max_tunnels_per_ip: Option<usize>,
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            tokens: Vec::new(),
            require_token: false,
            max_tunnels_per_session: 64,
            max_tunnels_per_token: None,
            max_tunnels_per_ip: None,
        }
    }
}

/// Who a hello proved to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    /// No token.
    Anonymous,
    /// The token at this index of [`AuthPolicy::tokens`].
    Token(usize),
}

/// Why a hello's token was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TokenRefusal {
    /// A token is required and none came.
    Missing,
    /// A token came that this server does not know.
    Unknown,
}

/// The policy, with reserved names indexed.
#[derive(Debug)]
pub(crate) struct Auth {
    pub(crate) policy: AuthPolicy,
    /// Reserved name → the index of the token that owns it.
    reserved: HashMap<String, usize>,
}

impl Auth {
    pub(crate) fn new(policy: AuthPolicy) -> Auth {
        let mut reserved = HashMap::new();
        for (i, rule) in policy.tokens.iter().enumerate() {
            let ports = rule.ports.iter().map(|&p| crate::registry::port_key(p));
            for name in rule.names.iter().cloned().chain(ports) {
                // The first token listed wins a name listed twice.
                reserved.entry(name).or_insert(i);
            }
        }
        Auth { policy, reserved }
    }

    /// Finds the token sent, comparing against every configured token in
    /// constant time (the time taken does not depend on where it matches).
    pub(crate) fn identify(&self, token: Option<&str>) -> Result<Caller, TokenRefusal> {
        let Some(sent) = token else {
            return if self.policy.require_token {
                Err(TokenRefusal::Missing)
            } else {
                Ok(Caller::Anonymous)
            };
        };
        let mut found = None;
        for (i, rule) in self.policy.tokens.iter().enumerate() {
            let equal: bool = rule.token.as_bytes().ct_eq(sent.as_bytes()).into();
            if equal && found.is_none() {
                found = Some(i);
            }
        }
        found.map(Caller::Token).ok_or(TokenRefusal::Unknown)
    }

    /// The index of the token that reserved `name`, if one did.
    pub(crate) fn owner_of(&self, name: &str) -> Option<usize> {
        self.reserved.get(name).copied()
    }

    /// Every reserved name, for the random-name generator to avoid.
    pub(crate) fn reserved_names(&self) -> HashSet<String> {
        self.reserved.keys().cloned().collect()
    }

    /// The names `caller` owns among `names`.
    pub(crate) fn owned_by(&self, caller: Caller, names: &[&str]) -> HashSet<String> {
        match caller {
            Caller::Anonymous => HashSet::new(),
            Caller::Token(i) => names
                .iter()
                .filter(|n| self.owner_of(n) == Some(i))
                .map(|n| n.to_string())
                .collect(),
        }
    }

    /// The counters a caller's tunnels count against, with their caps.
    pub(crate) fn limit_keys(&self, caller: Caller, ip: IpAddr) -> Vec<(String, usize)> {
        let mut keys = Vec::new();
        if let Caller::Token(i) = caller {
            let cap = self
                .policy
                .tokens
                .get(i)
                .and_then(|r| r.max_tunnels)
                .or(self.policy.max_tunnels_per_token);
            if let Some(cap) = cap {
                keys.push((format!("token #{}", i + 1), cap));
            }
        }
        if let Some(cap) = self.policy.max_tunnels_per_ip {
            keys.push((format!("address {ip}"), cap));
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(require: bool) -> Auth {
        Auth::new(AuthPolicy {
            tokens: vec![
                TokenRule {
                    token: "alpha".into(),
                    names: vec!["api".into()],
                    ports: vec![5432],
                    max_tunnels: Some(2),
                },
                TokenRule {
                    token: "beta".into(),
                    ..TokenRule::default()
                },
            ],
            require_token: require,
            max_tunnels_per_token: Some(5),
            max_tunnels_per_ip: Some(9),
            ..AuthPolicy::default()
        })
    }

    #[test]
    fn tokens_are_identified_and_unknown_ones_refused() {
        let a = auth(true);
        assert_eq!(a.identify(Some("alpha")), Ok(Caller::Token(0)));
        assert_eq!(a.identify(Some("beta")), Ok(Caller::Token(1)));
        assert_eq!(a.identify(Some("alph")), Err(TokenRefusal::Unknown));
        assert_eq!(a.identify(None), Err(TokenRefusal::Missing));
        assert_eq!(auth(false).identify(None), Ok(Caller::Anonymous));
        assert_eq!(auth(false).identify(Some("x")), Err(TokenRefusal::Unknown));
        assert!(!format!("{:?}", a.policy).contains("alpha"));
    }

    #[test]
    fn reserved_names_and_limits_follow_the_token() {
        let a = auth(false);
        assert_eq!(a.owner_of("api"), Some(0));
        assert_eq!(a.owner_of(&crate::registry::port_key(5432)), Some(0));
        assert_eq!(a.owned_by(Caller::Token(0), &["api", "x"]).len(), 1);
        assert!(a.owned_by(Caller::Token(1), &["api"]).is_empty());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            a.limit_keys(Caller::Token(0), ip),
            vec![
                ("token #1".to_string(), 2),
                ("address 127.0.0.1".to_string(), 9)
            ]
        );
        assert_eq!(a.limit_keys(Caller::Token(1), ip)[0].1, 5);
        assert_eq!(a.limit_keys(Caller::Anonymous, ip).len(), 1);
    }
}
