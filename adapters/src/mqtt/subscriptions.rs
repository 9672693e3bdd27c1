//! Devices' subscriptions and each tunnel's retained messages: how what
//! the app publishes reaches devices.
//!
//! Every filter lives in one tunnel's namespace (its first level is the
//! tunnel's name, never a wildcard), so a message published for a tunnel
//! is matched against that tunnel's subscriptions only. Retained messages
//! are kept per tunnel, at most [`MAX_RETAINED`] topics and
//! [`MAX_RETAINED_BYTES`] of payload; past either, the oldest topic goes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use droid_core::protocol::topic_matches;
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

    /// Subscribes a device's session to `filter` (in `tunnel`'s namespace)
    /// at `qos`; returns the retained messages it matches, to send now.
    pub fn subscribe(
        &self,
        tunnel: &str,
        session: u64,
        filter: &str,
        qos: u8,
        to: mpsc::Sender<Outgoing>,
    ) -> Vec<Outgoing> {
        let mut state = self.lock();
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
        state.subscribers.retain(|_, list| !list.is_empty());
    }

    /// Sends a message for `tunnel` to every matching subscriber (and keeps
    /// it when `retain`: an empty payload forgets the topic's). Returns how
    /// many subscribers it was handed to; a device too far behind misses it.
    pub fn publish(
        &self,
        tunnel: &str,
        topic: &str,
        payload: Bytes,
        qos: u8,
        retain: bool,
    ) -> usize {
        let mut state = self.lock();
        if retain {
            let kept = state.retained.entry(tunnel.to_string()).or_default();
            if let Some((old, _)) = kept.messages.remove(topic) {
                kept.bytes -= old.len();
                kept.order.retain(|t| t != topic);
            }
            if !payload.is_empty() {
                kept.bytes += payload.len();
                kept.messages
                    .insert(topic.to_string(), (payload.clone(), qos));
                kept.order.push_back(topic.to_string());
                while kept.order.len() > MAX_RETAINED || kept.bytes > MAX_RETAINED_BYTES {
                    let Some(oldest) = kept.order.pop_front() else {
                        break;
                    };
                    if let Some((old, _)) = kept.messages.remove(&oldest) {
                        kept.bytes -= old.len();
                    }
                }
            }
        }
        let Some(list) = state.subscribers.get(tunnel) else {
            return 0;
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
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_matching_filters_and_retained_ones_late_subscribers() {
        let subs = Subscriptions::default();
        let (a, mut a_rx) = mpsc::channel(8);
        let (b, mut b_rx) = mpsc::channel(8);
        assert!(
            subs.subscribe("api", 1, "api/sensors/+/cmd", 1, a)
                .is_empty()
        );
        assert!(subs.subscribe("api", 2, "api/#", 0, b.clone()).is_empty());
        let n = subs.publish(
            "api",
            "api/sensors/1/cmd",
            Bytes::from_static(b"on"),
            1,
            true,
        );
        assert_eq!(n, 2);
        assert_eq!(a_rx.try_recv().unwrap().qos, 1);
        assert_eq!(
            b_rx.try_recv().unwrap().qos,
            0,
            "at most the subscription's QoS"
        );
        assert_eq!(
            subs.publish("web", "web/x", Bytes::from_static(b"x"), 0, false),
            0
        );
        // A late subscriber gets the retained message.
        let late = subs.subscribe("api", 3, "api/sensors/#", 1, b);
        assert_eq!(late.len(), 1);
        assert!(late[0].retain);
        subs.forget(1);
        assert_eq!(
            subs.publish("api", "api/sensors/1/cmd", Bytes::new(), 0, true),
            2
        );
        assert!(
            subs.subscribe("api", 4, "api/#", 1, mpsc::channel(1).0)
                .is_empty(),
            "an empty retained payload forgets it"
        );
    }

    #[test]
    fn retained_messages_are_bounded_per_tunnel() {
        let subs = Subscriptions::default();
        for i in 0..MAX_RETAINED + 10 {
            subs.publish(
                "api",
                &format!("api/t/{i}"),
                Bytes::from_static(b"x"),
                0,
                true,
            );
        }
        let kept = subs.subscribe("api", 1, "api/#", 0, mpsc::channel(1).0);
        assert_eq!(kept.len(), MAX_RETAINED);
        assert_eq!(kept[0].topic, "api/t/10", "the oldest went first");
    }
}
