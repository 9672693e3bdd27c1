//! How many names a stranger may make the server remember, and how fast.
//!
//! A name, once used, is remembered for its owner (resuming, then
//! quarantined for days) so that it is never handed to somebody else while
//! old links may still point at it. Those promises are never dropped to
//! make room: instead, what one client address (an IPv4 address, an IPv6
//! /64) or one token may add is bounded. Each name counts against the
//! keys of whoever first claimed it until the registry forgets it; new
//! names come out of a bucket per key that refills over time; and the
//! registry as a whole remembers at most [`NameLimits::max_names`]. A claim
//! past any bound is refused with a sentence saying when to try again, and
//! names already held are never touched. An owner taking its own names
//! back adds nothing, so it is never refused by these bounds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use droid_core::protocol::{ErrorCode, ErrorMessage};

/// The bounds on what strangers may make the registry remember. Names
/// and TCP ports count alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameLimits {
    /// The most names remembered at once, live or released.
    pub max_names: usize,
    /// The most names one client address may have remembered at once.
    pub per_address: Option<usize>,
    /// The most names one token may have remembered at once.
    pub per_token: Option<usize>,
    /// New names one address, or one token, may claim per minute (and at
    /// once after a quiet spell).
    pub new_per_minute: Option<u32>,
}

impl Default for NameLimits {
    fn default() -> Self {
        NameLimits {
            max_names: 200_000,
            per_address: Some(1_000),
            per_token: Some(10_000),
            new_per_minute: Some(60),
        }
    }
}

impl NameLimits {
    /// No bound but the total: for a server only this machine reaches
    /// (the embedded one), or a test.
    pub fn unbounded() -> NameLimits {
        NameLimits {
            max_names: usize::MAX,
            per_address: None,
            per_token: None,
            new_per_minute: None,
        }
    }
}

/// Who claims: the keys the names it adds count against. Cheap to clone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claimant(Arc<[Key]>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    /// As sentences say it: `address 192.0.2.7`, `token #2`.
    name: String,
    cap: Option<usize>,
}

impl Claimant {
    /// A client at `ip`, with the token at `token` (its position in the
    /// configuration) if it sent one.
    pub fn new(limits: &NameLimits, ip: IpAddr, token: Option<usize>) -> Claimant {
        let mut keys = vec![Key {
            name: address_key(ip),
            cap: limits.per_address,
        }];
        if let Some(i) = token {
            keys.push(Key {
                name: format!("token #{}", i + 1),
                cap: limits.per_token,
            });
        }
        Claimant(keys.into())
    }
}

/// An IPv4 address, or the /64 of an IPv6 one (what one host gets).
fn address_key(ip: IpAddr) -> String {
    match droid_core::conn_caps::address_of(ip) {
        IpAddr::V4(v4) => format!("address {v4}"),
        IpAddr::V6(prefix) => format!("addresses {prefix}/64"),
    }
}

/// A key's bucket of new names, in thousandths of a name (whole numbers
/// keep "full again in 10 s" exact). It may go below empty: a claim larger
/// than the bucket waits for a full one and then takes all it needs.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    level: i64,
    at: Instant,
}

/// Thousandths of a name.
const MILLI: i64 = 1000;

/// What each key holds now, and its bucket.
#[derive(Debug)]
pub(crate) struct Budget {
    limits: NameLimits,
    held: HashMap<String, usize>,
    buckets: HashMap<String, Bucket>,
}

impl Budget {
    pub(crate) fn new(limits: NameLimits) -> Budget {
        Budget {
            limits,
            held: HashMap::new(),
            buckets: HashMap::new(),
        }
    }

    /// Whether `who` may add `new` names to a registry that remembers
    /// `remembered` now; takes nothing.
    pub(crate) fn check(
        &self,
        who: &Claimant,
        new: usize,
        remembered: usize,
        now: Instant,
    ) -> Result<(), ErrorMessage> {
        if new == 0 {
            return Ok(());
        }
        if remembered.saturating_add(new) > self.limits.max_names {
            return Err(refusal(format!(
                "this server remembers as many names as it may ({}); try again later",
                self.limits.max_names
            )));
        }
        for key in who.0.iter() {
            let held = self.held.get(&key.name).copied().unwrap_or(0);
            if let Some(cap) = key.cap
                && held + new > cap
            {
                return Err(refusal(format!(
                    "too many names from {}: it has {held} remembered on this server, the most is {cap} \
                     (a name is kept for its owner for a while after use); reuse your names, or try again later",
                    key.name
                )));
            }
            if let Some(wait) = self.wait(&key.name, new, now) {
                return Err(refusal(format!(
                    "too many new names from {}; try again in {} s",
                    key.name,
                    crate::rate::retry_after_secs(wait)
                )));
            }
        }
        Ok(())
    }

    /// How long until `key`'s bucket holds `new` names (or is full, for
    /// more than it can hold); `None` if it does now.
    fn wait(&self, key: &str, new: usize, now: Instant) -> Option<Duration> {
        let per_minute = i64::from(self.limits.new_per_minute?);
        let level = self.level(key, per_minute, now);
        let needed = names(new).min(per_minute * MILLI);
        // A thousandth of a name refills in 60 / per_minute ms.
        let millis = (needed - level) * 60 / per_minute;
        (level < needed).then(|| Duration::from_millis(u64::try_from(millis).unwrap_or(0)))
    }

    fn level(&self, key: &str, per_minute: i64, now: Instant) -> i64 {
        let full = per_minute * MILLI;
        match self.buckets.get(key) {
            None => full,
            Some(b) => {
                let elapsed = now.saturating_duration_since(b.at).as_millis();
                let elapsed = i64::try_from(elapsed).unwrap_or(i64::MAX);
                b.level
                    .saturating_add(elapsed.saturating_mul(per_minute) / 60)
                    .min(full)
            }
        }
    }

    /// Counts `new` names against `who` (after a [`Budget::check`]).
    pub(crate) fn charge(&mut self, who: &Claimant, new: usize, now: Instant) {
        if new == 0 {
            return;
        }
        for key in who.0.iter() {
            *self.held.entry(key.name.clone()).or_insert(0) += new;
            if let Some(per_minute) = self.limits.new_per_minute {
                let level = self.level(&key.name, i64::from(per_minute), now) - names(new);
                self.buckets
                    .insert(key.name.clone(), Bucket { level, at: now });
            }
        }
    }

    /// One name counted against `who` is forgotten.
    pub(crate) fn refund(&mut self, who: &Claimant) {
        for key in who.0.iter() {
            if let Some(n) = self.held.get_mut(&key.name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.held.remove(&key.name);
                }
            }
        }
    }

    /// Forgets buckets that refilled: they say nothing a new one would not.
    pub(crate) fn prune(&mut self, now: Instant) {
        let Some(per_minute) = self.limits.new_per_minute else {
            return;
        };
        let per_minute = i64::from(per_minute);
        let full: Vec<String> = self
            .buckets
            .keys()
            .filter(|k| self.level(k, per_minute, now) >= per_minute * MILLI)
            .cloned()
            .collect();
        for key in full {
            self.buckets.remove(&key);
        }
    }

    /// Names counted against each key now (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn held(&self, key: &str) -> usize {
        self.held.get(key).copied().unwrap_or(0)
    }
}

/// `n` names in thousandths.
fn names(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX / MILLI) * MILLI
}

fn refusal(message: String) -> ErrorMessage {
    ErrorMessage {
        code: ErrorCode::Unavailable,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> NameLimits {
        NameLimits {
            max_names: 100,
            per_address: Some(10),
            per_token: Some(20),
            new_per_minute: Some(6),
        }
    }

    #[test]
    fn new_names_come_out_of_a_bucket_that_refills() {
        let mut b = Budget::new(limits());
        let who = Claimant::new(&limits(), "192.0.2.7".parse().unwrap(), None);
        let t0 = Instant::now();
        b.check(&who, 6, 0, t0).unwrap();
        b.charge(&who, 6, t0);
        let e = b.check(&who, 1, 6, t0).unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(
            e.message.contains("address 192.0.2.7; try again in 10 s"),
            "{}",
            e.message
        );
        // One name a ten seconds.
        b.check(&who, 1, 6, t0 + Duration::from_secs(10)).unwrap();
        // Another address is not affected.
        let other = Claimant::new(&limits(), "192.0.2.8".parse().unwrap(), None);
        b.check(&other, 6, 6, t0).unwrap();
    }

    #[test]
    fn names_held_per_key_and_in_total_are_bounded_and_refunded() {
        let mut b = Budget::new(limits());
        let who = Claimant::new(&limits(), "2001:db8:1:2::7".parse().unwrap(), Some(0));
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(3600);
        b.charge(&who, 10, t0);
        assert_eq!(b.held("addresses 2001:db8:1:2::/64"), 10);
        assert_eq!(b.held("token #1"), 10);
        // The same /64, another host in it: the same key.
        let neighbour = Claimant::new(&limits(), "2001:db8:1:2::9".parse().unwrap(), None);
        let e = b.check(&neighbour, 1, 10, later).unwrap_err();
        assert!(
            e.message
                .contains("too many names from addresses 2001:db8:1:2::/64"),
            "{}",
            e.message
        );
        b.refund(&who);
        b.check(&neighbour, 1, 9, later).unwrap();
        // The total.
        let far = Claimant::new(&limits(), "198.51.100.1".parse().unwrap(), None);
        assert!(
            b.check(&far, 2, 99, later)
                .unwrap_err()
                .message
                .contains("as many names")
        );
        // Nothing new: always fine.
        b.check(&far, 0, 1000, later).unwrap();
    }

    #[test]
    fn a_claim_larger_than_the_bucket_waits_for_a_full_one() {
        let limits = NameLimits {
            per_address: None,
            ..limits()
        };
        let mut b = Budget::new(limits.clone());
        let who = Claimant::new(&limits, "192.0.2.7".parse().unwrap(), None);
        let t0 = Instant::now();
        b.check(&who, 8, 0, t0).unwrap();
        b.charge(&who, 8, t0);
        // Two below empty: 80 s until it is full again.
        assert!(b.check(&who, 8, 8, t0 + Duration::from_secs(70)).is_err());
        b.check(&who, 8, 8, t0 + Duration::from_secs(80)).unwrap();
        b.prune(t0 + Duration::from_secs(80));
        assert!(b.buckets.is_empty());
    }
}
