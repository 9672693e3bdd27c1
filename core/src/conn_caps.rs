//! Caps on connections open at once: in total, and from one client address.
//!
//! Every listener of Droid (the control port, the HTTP and HTTPS fronts,
//! each adapter's) admits a connection through [`ConnCaps::admit`]. An
//! address is an IPv4 address or an IPv6 /64 (what one host gets: per
//! single IPv6 address a stranger would have 2^64 shares). A connection
//! past a cap gets a short refusal in its protocol, which a listener may
//! only send while few refusals are in flight: a flood past the caps is
//! closed at once rather than answered, so refusing it costs nothing that
//! grows with it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Refusals being answered at once, per listener's caps.
const REFUSALS_AT_ONCE: usize = 64;

/// Connection caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once, in total.
    pub max_connections: usize,
    /// Connections open at once from one address.
    pub max_per_ip: usize,
}

impl Default for ConnLimits {
    fn default() -> ConnLimits {
        ConnLimits {
            max_connections: 1000,
            max_per_ip: 100,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The listener holds as many connections as it may.
    TooManyConnections,
    /// The client's address holds as many as it may.
    TooManyFromPeer,
}

impl Refusal {
    /// The refusal as one sentence.
    pub fn sentence(self) -> &'static str {
        match self {
            Refusal::TooManyConnections => "the server has too many connections; try again later",
            Refusal::TooManyFromPeer => {
                "too many connections from your address; close some or try again later"
            }
        }
    }
}

/// What [`ConnCaps::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Serve it; the slot is given back when dropped.
    Admitted(ConnSlot),
    /// Tell the client why, briefly, then close; the slot bounds how many
    /// refusals are answered at once.
    Refuse(Refusal, ConnSlot),
    /// Close it at once: too many refusals are in flight.
    Close(Refusal),
}

/// The caps of one listener (or of several that share them).
#[derive(Debug)]
pub struct ConnCaps {
    limits: ConnLimits,
    total: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A place among the open connections (or the refusals). Dropping it
/// gives the place back.
#[derive(Debug)]
pub struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    ip: Option<(Arc<ConnCaps>, IpAddr)>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some((caps, ip)) = &self.ip {
            let mut counts = caps.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = counts.get_mut(ip) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(ip);
                }
            }
        }
    }
}

impl ConnCaps {
    /// Caps of `limits` (each at least 1).
    pub fn new(limits: ConnLimits) -> Arc<ConnCaps> {
        Arc::new(ConnCaps {
            limits,
            total: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            refusing: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// The caps.
    pub fn limits(&self) -> ConnLimits {
        self.limits
    }

    /// Connections admitted and still open.
    pub fn open(&self) -> usize {
        self.limits.max_connections.max(1) - self.total.available_permits()
    }

    /// Admits a connection from `peer`, or says how to refuse it.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Admission {
        let ip = address_of(peer);
        let refusal = match self.total.clone().try_acquire_owned() {
            Err(_) => Refusal::TooManyConnections,
            Ok(permit) => {
                let mut counts = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
                let count = counts.entry(ip).or_insert(0);
                if *count < self.limits.max_per_ip.max(1) {
                    *count += 1;
                    return Admission::Admitted(ConnSlot {
                        _permit: permit,
                        ip: Some((self.clone(), ip)),
                    });
                }
                Refusal::TooManyFromPeer
            }
        };
        match self.refusing.clone().try_acquire_owned() {
            Ok(permit) => Admission::Refuse(
                refusal,
                ConnSlot {
                    _permit: permit,
                    ip: None,
                },
            ),
            Err(_) => Admission::Close(refusal),
        }
    }
}

/// The address a client's connections count against: an IPv4 address
/// (also when written as IPv6), or an IPv6 /64.
pub fn address_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_per_address_and_in_total_and_slots_come_back() {
        let caps = ConnCaps::new(ConnLimits {
            max_connections: 3,
            max_per_ip: 2,
        });
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let a2: IpAddr = "2001:db8::2".parse().unwrap();
        let b: IpAddr = "192.0.2.1".parse().unwrap();
        let first = caps.admit(a);
        assert!(matches!(first, Admission::Admitted(_)));
        let second = caps.admit(a2);
        assert!(matches!(second, Admission::Admitted(_)));
        // a and a2 share their /64: a third from it is refused...
        let third = caps.admit(a);
        assert!(
            matches!(third, Admission::Refuse(Refusal::TooManyFromPeer, _)),
            "{third:?}"
        );
        // ...while another address gets the last place in total.
        let other = caps.admit(b);
        assert!(matches!(other, Admission::Admitted(_)));
        assert!(matches!(
            caps.admit(b),
            Admission::Refuse(Refusal::TooManyConnections, _)
        ));
        drop(first);
        assert!(matches!(caps.admit(a), Admission::Admitted(_)));
    }

    #[test]
    fn the_total_cap_and_the_refusals_are_bounded() {
        let caps = ConnCaps::new(ConnLimits {
            max_connections: 1,
            max_per_ip: 10,
        });
        let b: IpAddr = "192.0.2.1".parse().unwrap();
        let _held = caps.admit(b);
        let refusals: Vec<Admission> = (0..REFUSALS_AT_ONCE).map(|_| caps.admit(b)).collect();
        assert!(
            refusals
                .iter()
                .all(|r| matches!(r, Admission::Refuse(Refusal::TooManyConnections, _)))
        );
        assert!(matches!(
            caps.admit(b),
            Admission::Close(Refusal::TooManyConnections)
        ));
        drop(refusals);
        assert!(matches!(caps.admit(b), Admission::Refuse(..)));
    }

    #[test]
    fn addresses_count_by_host() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_of(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(address_of(v6), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
    }
}
