//! Devices' subscriptions and each tunnel's retained messages: how what
//! the app publishes reaches devices.
//!
//! Every filter lives in one tunnel's namespace (its first level is the
//! tunnel's name, never a wildcard), so a message published for a tunnel
//! is matched against that tunnel's subscriptions only. Retained messages
//! are kept per tunnel, at most [`MAX_RETAINED`] topics and
//! [`MAX_RETAINED_BYTES`] of payload; past either, the oldest topic goes.
//!
//! Both belong to the tunnel's [`Tenancy`] at the time they were made: its
//! owner and the login its devices must give. Every subscription and every
//! publish says the tenancy it is made under; when a tunnel's differs from
//! the one its state was kept under, what no longer belongs goes first: a
//! new login ends the subscriptions made with the old one, a new owner
//! also the retained messages of the previous one.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use super::settings::topic_matches;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// Retained topics kept per tunnel.
pub const MAX_RETAINED: usize = 1000;
/// Retained payload bytes kept per tunnel.
pub const MAX_RETAINED_BYTES: usize = 16 * 1024 * 1024;

/// A message on its way to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outgoing {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
}

/// Whom a tunnel's topics belong to now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenancy {
    /// The owner key of the tunnel (its name and its owner).
    pub owner: String,
    /// A hash of the login its devices must give, if it asks for one.
    pub login: Option<String>,
}

impl Tenancy {
    /// The tenancy of a tunnel of `owner` (its owner key) whose devices
    /// log in with `login` (`user:password`), if it set one.
    pub fn new(owner: &str, login: Option<&str>) -> Tenancy {
        Tenancy {
            owner: owner.to_string(),
            login: login.map(|l| {
                let digest = Sha256::digest(format!("droid-mqtt-tenancy {l}").as_bytes());
                digest[..16].iter().map(|b| format!("{b:02x}")).collect()
            }),
        }
    }
}

struct Subscriber {
    session: u64,
    filter: String,
    qos: u8,
    to: mpsc::Sender<Outgoing>,
}

#[derive(Default)]
struct Retained {
    /// Topic → payload and QoS; `order` says which came first.
    messages: HashMap<String, (Bytes, u8)>,
    order: VecDeque<String>,
    bytes: usize,
}

#[derive(Default)]
struct State {
    subscribers: HashMap<String, Vec<Subscriber>>,
    retained: HashMap<String, Retained>,
    /// The tenancy each tunnel's subscriptions and retained messages were
    /// kept under.
    tenancies: HashMap<String, Tenancy>,
}

impl State {
    /// Makes `tenancy` the one `tunnel`'s state is kept under, dropping
    /// what belonged to an earlier one.
    fn settle(&mut self, tunnel: &str, tenancy: &Tenancy) {
        match self.tenancies.get(tunnel) {
            Some(kept) if kept == tenancy => return,
            Some(kept) => {
                if kept.owner != tenancy.owner {
                    self.retained.remove(tunnel);
                }
                self.subscribers.remove(tunnel);
            }
            None => {}
        }
        self.tenancies.insert(tunnel.to_string(), tenancy.clone());
    }

    /// Forgets `tunnel`'s tenancy once nothing is kept under it.
    fn tidy(&mut self, tunnel: &str) {
        if !self.subscribers.contains_key(tunnel) && !self.retained.contains_key(tunnel) {
            self.tenancies.remove(tunnel);
        }
    }
}

/// The subscriptions and retained messages of every tunnel.
#[derive(Default)]
pub(crate) struct Subscriptions {
    state: Mutex<State>,
}

impl Subscriptions {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes a device's session to `filter` (in `tunnel`'s namespace,
    /// under `tenancy`) at `qos`; returns the retained messages it
    /// matches, to send now.
    pub fn subscribe(
        &self,
        tunnel: &str,
        tenancy: &Tenancy,
        session: u64,
        filter: &str,
        qos: u8,
        to: mpsc::Sender<Outgoing>,
    ) -> Vec<Outgoing> {
        let mut state = self.lock();
        state.settle(tunnel, tenancy);
        let list = state.subscribers.entry(tunnel.to_string()).or_default();
        list.retain(|s| !(s.session == session && s.filter == filter));
        list.push(Subscriber {
            session,
            filter: filter.to_string(),
            qos,
            to,
        });
        state
            .retained
            .get(tunnel)
            .map(|r| {
                r.order
                    .iter()
                    .filter(|topic| topic_matches(filter, topic))
                    .filter_map(|topic| {
                        let (payload, q) = r.messages.get(topic)?;
                        Some(Outgoing {
                            topic: topic.clone(),
                            payload: payload.clone(),
                            qos: (*q).min(qos),
                            retain: true,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ends one subscription of a session.
    pub fn unsubscribe(&self, session: u64, filter: &str) {
        for list in self.lock().subscribers.values_mut() {
            list.retain(|s| !(s.session == session && s.filter == filter));
        }
    }

    /// Ends every subscription of a session that ended.
    pub fn forget(&self, session: u64) {
        let mut state = self.lock();
        for list in state.subscribers.values_mut() {
            list.retain(|s| s.session != session);
        }
        let empty: Vec<String> = state
            .subscribers
            .iter()
            .filter(|(_, list)| list.is_empty())
            .map(|(tunnel, _)| tunnel.clone())
            .collect();
        for tunnel in empty {
            state.subscribers.remove(&tunnel);
            state.tidy(&tunnel);
        }
    }

    /// Sends a message for `tunnel` (under `tenancy`) to every matching
    /// subscriber (and keeps it when `retain`: an empty payload forgets the
    /// topic's). Returns how many subscribers it was handed to (a device
    /// too far behind misses it), and the retained topics the bounds made
    /// room by forgetting.
    pub fn publish(
        &self,
        tunnel: &str,
        tenancy: &Tenancy,
        topic: &str,
        payload: Bytes,
        qos: u8,
        retain: bool,
    ) -> Published {
        let mut state = self.lock();
        state.settle(tunnel, tenancy);
        let mut forgotten = Vec::new();
        if retain {
            let kept = state.retained.entry(tunnel.to_string()).or_default();
            forgotten = kept.keep(topic, payload.clone(), qos);
        }
        let Some(list) = state.subscribers.get(tunnel) else {
            return Published {
                delivered: 0,
                forgotten,
            };
        };
        let mut sent = 0;
        for subscriber in list.iter().filter(|s| topic_matches(&s.filter, topic)) {
            let message = Outgoing {
                topic: topic.to_string(),
                payload: payload.clone(),
                qos: qos.min(subscriber.qos),
                retain: false,
            };
            if subscriber.to.try_send(message).is_ok() {
                sent += 1;
            }
        }
        Published {
            delivered: sent,
            forgotten,
        }
    }

    /// Adds retained messages of `tunnel` (under `tenancy`) that another
    /// node kept (topic, payload, QoS), where none is kept here for their
    /// topic, within the bounds.
    pub fn seed(&self, tunnel: &str, tenancy: &Tenancy, messages: Vec<(String, Bytes, u8)>) {
        let mut state = self.lock();
        state.settle(tunnel, tenancy);
        let kept = state.retained.entry(tunnel.to_string()).or_default();
        for (topic, payload, qos) in messages {
            if !kept.messages.contains_key(&topic) {
                kept.keep(&topic, payload, qos);
            }
        }
        state.tidy(tunnel);
    }
}

/// What a publish did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// The subscribers it was handed to.
    pub delivered: usize,
    /// Retained topics forgotten to keep within the bounds.
    pub forgotten: Vec<String>,
}

impl Retained {
    /// Keeps `payload` as `topic`'s retained message (an empty one forgets
    /// it), the oldest topics going past the bounds; returns those.
    fn keep(&mut self, topic: &str, payload: Bytes, qos: u8) -> Vec<String> {
        if let Some((old, _)) = self.messages.remove(topic) {
            self.bytes -= old.len();
            self.order.retain(|t| t != topic);
        }
        let mut forgotten = Vec::new();
        if payload.is_empty() {
            return forgotten;
        }
        self.bytes += payload.len();
        self.messages.insert(topic.to_string(), (payload, qos));
        self.order.push_back(topic.to_string());
        while self.order.len() > MAX_RETAINED || self.bytes > MAX_RETAINED_BYTES {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((old, _)) = self.messages.remove(&oldest) {
                self.bytes -= old.len();
            }
            forgotten.push(oldest);
        }
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_matching_filters_and_retained_ones_late_subscribers() {
        let subs = Subscriptions::default();
        let t = Tenancy::default();
        let (a, mut a_rx) = mpsc::channel(8);
        let (b, mut b_rx) = mpsc::channel(8);
        assert!(
            subs.subscribe("api", &t, 1, "api/sensors/+/cmd", 1, a)
                .is_empty()
        );
        assert!(
            subs.subscribe("api", &t, 2, "api/#", 0, b.clone())
                .is_empty()
        );
        let n = subs.publish(
            "api",
            &t,
            "api/sensors/1/cmd",
            Bytes::from_static(b"on"),
            1,
            true,
        );
        assert_eq!(n.delivered, 2);
        assert_eq!(a_rx.try_recv().unwrap().qos, 1);
        assert_eq!(
            b_rx.try_recv().unwrap().qos,
            0,
            "at most the subscription's QoS"
        );
        assert_eq!(
            subs.publish("web", &t, "web/x", Bytes::from_static(b"x"), 0, false)
                .delivered,
            0
        );
        // A late subscriber gets the retained message.
        let late = subs.subscribe("api", &t, 3, "api/sensors/#", 1, b);
        assert_eq!(late.len(), 1);
        assert!(late[0].retain);
        subs.forget(1);
        assert_eq!(
            subs.publish("api", &t, "api/sensors/1/cmd", Bytes::new(), 0, true)
                .delivered,
            2
        );
        assert!(
            subs.subscribe("api", &t, 4, "api/#", 1, mpsc::channel(1).0)
                .is_empty(),
            "an empty retained payload forgets it"
        );
    }

    #[test]
    fn retained_messages_are_bounded_per_tunnel() {
        let subs = Subscriptions::default();
        let t = Tenancy::default();
        let mut forgotten = Vec::new();
        for i in 0..MAX_RETAINED + 10 {
            let published = subs.publish(
                "api",
                &t,
                &format!("api/t/{i}"),
                Bytes::from_static(b"x"),
                0,
                true,
            );
            forgotten.extend(published.forgotten);
        }
        let kept = subs.subscribe("api", &t, 1, "api/#", 0, mpsc::channel(1).0);
        assert_eq!(kept.len(), MAX_RETAINED);
        assert_eq!(kept[0].topic, "api/t/10", "the oldest went first");
        let expected: Vec<String> = (0..10).map(|i| format!("api/t/{i}")).collect();
        assert_eq!(forgotten, expected, "and each publish says which");
        // What another node kept joins within the same bounds, never over
        // a newer message of the same topic.
        subs.seed(
            "api",
            &t,
            vec![
                ("api/t/0".into(), Bytes::from_static(b"old"), 0),
                ("api/t/500".into(), Bytes::from_static(b"stale"), 0),
            ],
        );
        let kept = subs.subscribe("api", &t, 2, "api/t/+", 0, mpsc::channel(1).0);
        assert_eq!(kept.len(), MAX_RETAINED);
        let t500 = kept.iter().find(|m| m.topic == "api/t/500").unwrap();
        assert_eq!(t500.payload, Bytes::from_static(b"x"));
    }

    #[test]
    fn a_new_login_ends_old_subscriptions_and_a_new_owner_also_the_retained() {
        let subs = Subscriptions::default();
        let first = Tenancy::new("owner-a/api", None);
        let (old, mut old_rx) = mpsc::channel(8);
        subs.subscribe("api", &first, 1, "api/#", 1, old);
        subs.publish(
            "api",
            &first,
            "api/firmware_url",
            Bytes::from_static(b"https://a"),
            1,
            true,
        );
        assert!(old_rx.try_recv().is_ok());
        // The owner sets a login: the subscription made without it ends...
        let locked = Tenancy::new("owner-a/api", Some("dev:pw"));
        assert_eq!(
            subs.publish(
                "api",
                &locked,
                "api/cmd",
                Bytes::from_static(b"x"),
                1,
                false
            )
            .delivered,
            0
        );
        assert!(old_rx.try_recv().is_err());
        // ...and its retained message is still its own.
        let (dev, _dev_rx) = mpsc::channel(8);
        assert_eq!(subs.subscribe("api", &locked, 2, "api/#", 1, dev).len(), 1);
        // A new owner of the name gets none of the previous one's.
        let stranger = Tenancy::new("owner-b/api", None);
        let (theirs, _rx) = mpsc::channel(8);
        assert!(
            subs.subscribe("api", &stranger, 3, "api/#", 1, theirs)
                .is_empty()
        );
        assert_eq!(
            subs.publish(
                "api",
                &stranger,
                "api/x",
                Bytes::from_static(b"x"),
                0,
                false
            )
            .delivered,
            1
        );
    }
}
