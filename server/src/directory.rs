//! Where the cluster's names are, as one node remembers Redis's answers.
//!
//! A visitor's request, or an adapter's message, for a name this node
//! does not serve asks Redis where the name is ([`Located`], or nowhere).
//! The answer is kept here so the next one does not pay the round trip:
//!
//! - Every claim and release publishes its names on a Redis channel; each
//!   node follows it and forgets those names at once.
//! - An answer is kept no longer than its state lasts without an event: a
//!   live name until its node's lease runs out as Redis last saw it (a
//!   node that dies publishes nothing), a resuming one until its grace
//!   ends, and any answer, "nowhere" included, no longer than [`MAX_AGE`].
//! - Nothing is kept while the channel is not followed (Redis away, or
//!   the subscription not yet up): events could be missed then. Following
//!   again starts from an empty memory.
//! - An answer read before an event arrived is not kept (an epoch counts
//!   the events), so a late reply never brings back a name just changed.
//! - At most [`MAX_ENTRIES`] answers: past that, expired ones go, and if
//!   none has, all do.
//!
//! Apart from those answers, the node remembers the last node Redis said
//! each name was live on ([`Directory::last_live`]) for when Redis does
//! not answer, or comes back empty and its nodes have not claimed their
//! names again yet (within a lease of its last failure). That is safe to
//! act on: the node a request is sent to serves it only while it holds
//! the tunnel itself. Only events (a claim or release elsewhere), a
//! healthy Redis's answer, or that node's refusal change it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use droid_core::protocol::AdapterSettings;
use tokio::time::Instant;

/// The longest an answer is kept.
pub(crate) const MAX_AGE: Duration = Duration::from_secs(10);

/// The most answers kept.
const MAX_ENTRIES: usize = 100_000;

/// Where a name is, by Redis.
#[derive(Debug, Clone)]
pub(crate) struct Located {
    /// The node that serves it, or served it last.
    pub node: String,
    /// That node's peer address, if it has one.
    pub peer: Option<String>,
    /// Its owner (the hash of the resume secret).
    pub owner: String,
    /// Live there now, or resuming (its owner may come back on any node).
    pub live: bool,
    /// What its client asked of the adapters; `None` for a TCP tunnel's.
    pub settings: Option<Arc<AdapterSettings>>,
}

/// The answers kept.
#[derive(Default)]
pub(crate) struct Directory {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By name: the answer (`None`: nowhere) and until when it holds.
    answers: HashMap<String, (Option<Located>, Instant)>,
    /// Whether the events' channel is followed: answers are kept only then.
    following: bool,
    /// Counts events; an answer read in an older epoch is not kept.
    epoch: u64,
    /// The last node each name was live on, as Redis said.
    last_live: HashMap<String, Located>,
    /// When Redis last did not answer.
    failed_at: Option<Instant>,
}

impl State {
    fn recently_failed(&self, window: Duration) -> bool {
        self.failed_at.is_some_and(|at| at.elapsed() < window)
    }
}

impl Directory {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept answer for `name`, if one holds now: `Some(None)` means
    /// "nowhere".
    pub(crate) fn get(&self, name: &str) -> Option<Option<Located>> {
        let state = self.lock();
        let (answer, until) = state.answers.get(name)?;
        (*until > Instant::now()).then(|| answer.clone())
    }

    /// The epoch to hand back to [`Directory::keep`] with an answer read
    /// after this call.
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Keeps Redis's `answer` for `name`, read in `epoch`, for `lasts`
    /// (capped at [`MAX_AGE`]), unless an event came since.
    pub(crate) fn keep(&self, name: &str, answer: Option<Located>, lasts: Duration, epoch: u64) {
        let mut state = self.lock();
        if !state.following || state.epoch != epoch {
            return;
        }
        let now = Instant::now();
        if state.answers.len() >= MAX_ENTRIES {
            state.answers.retain(|_, (_, until)| *until > now);
            if state.answers.len() >= MAX_ENTRIES {
                state.answers.clear();
            }
        }
        let until = now + lasts.min(MAX_AGE);
        state.answers.insert(name.to_string(), (answer, until));
    }

    /// An event changed `names`: their answers go, and where they were.
    pub(crate) fn changed<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let mut state = self.lock();
        state.epoch += 1;
        for name in names {
            state.answers.remove(name);
            state.last_live.remove(name);
        }
    }

    /// Redis answered `answer` for `name`: where it is live is remembered;
    /// "not live" forgets it, except "nowhere" within `window` of Redis's
    /// last failure (a Redis that came back empty, before the names'
    /// nodes claimed them again).
    pub(crate) fn learned(&self, name: &str, answer: Option<&Located>, window: Duration) {
        let mut state = self.lock();
        match answer {
            Some(found) if found.live => {
                if state.last_live.len() < MAX_ENTRIES || state.last_live.contains_key(name) {
                    state.last_live.insert(name.to_string(), found.clone());
                }
            }
            None if state.recently_failed(window) => {}
            _ => {
                state.last_live.remove(name);
            }
        }
    }

    /// Redis did not answer.
    pub(crate) fn failed(&self) {
        self.lock().failed_at = Some(Instant::now());
    }

    /// Where `name` was last live, for when Redis cannot say: always while
    /// it does not answer (`away`), and for `window` after its last failure
    /// when it says "nowhere".
    pub(crate) fn last_live(&self, name: &str, away: bool, window: Duration) -> Option<Located> {
        let state = self.lock();
        let found = state.last_live.get(name)?;
        (away || state.recently_failed(window)).then(|| found.clone())
    }

    /// Whether Redis failed to answer within the last `window`.
    pub(crate) fn failed_within(&self, window: Duration) -> bool {
        self.lock().recently_failed(window)
    }

    /// The channel is followed from now on, or no longer: either way every
    /// answer goes.
    pub(crate) fn following(&self, following: bool) {
        let mut state = self.lock();
        state.epoch += 1;
        state.following = following;
        state.answers.clear();
    }

    /// How many answers are kept (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().answers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(node: &str) -> Option<Located> {
        Some(Located {
            node: node.into(),
            peer: Some("127.0.0.1:1".into()),
            owner: "o".into(),
            live: true,
            settings: None,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn answers_are_kept_only_while_following_and_go_with_events_and_time() {
        let directory = Directory::default();
        let long = Duration::from_secs(60);
        // Not following: nothing is kept.
        directory.keep("shop", located("a"), long, directory.epoch());
        assert!(directory.get("shop").is_none());

        directory.following(true);
        directory.keep("shop", located("a"), long, directory.epoch());
        directory.keep("gone", None, long, directory.epoch());
        assert_eq!(directory.get("shop").unwrap().unwrap().node, "a");
        assert!(directory.get("gone").unwrap().is_none());

        // An event about a name drops it, and an answer read before the
        // event is not kept.
        let before = directory.epoch();
        directory.changed(["shop"]);
        assert!(directory.get("shop").is_none());
        directory.keep("shop", located("a"), long, before);
        assert!(directory.get("shop").is_none());
        assert!(directory.get("gone").is_some());

        // Time: no answer outlives its state, nor MAX_AGE.
        directory.keep(
            "brief",
            located("b"),
            Duration::from_secs(1),
            directory.epoch(),
        );
        tokio::time::advance(Duration::from_millis(1_100)).await;
        assert!(directory.get("brief").is_none());
        assert!(directory.get("gone").is_some());
        tokio::time::advance(MAX_AGE).await;
        assert!(directory.get("gone").is_none());

        // The channel lost: everything goes, and nothing is kept after.
        directory.keep("shop", located("a"), long, directory.epoch());
        directory.following(false);
        assert_eq!(directory.len(), 0);
        directory.keep("shop", located("a"), long, directory.epoch());
        assert_eq!(directory.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn where_a_name_was_live_outlasts_redis_but_not_an_event() {
        let directory = Directory::default();
        let lease = Duration::from_secs(30);
        directory.learned("shop", located("a").as_ref(), lease);
        // Redis away: the last place serves.
        assert_eq!(directory.last_live("shop", true, lease).unwrap().node, "a");
        assert!(directory.last_live("other", true, lease).is_none());
        // Redis answering, and never failed: "nowhere" is believed.
        assert!(directory.last_live("shop", false, lease).is_none());
        directory.learned("shop", None, lease);
        assert!(directory.last_live("shop", true, lease).is_none());

        // Redis back empty: "nowhere" does not forget, for a lease.
        directory.learned("shop", located("a").as_ref(), lease);
        directory.failed();
        directory.learned("shop", None, lease);
        assert_eq!(directory.last_live("shop", false, lease).unwrap().node, "a");
        tokio::time::advance(lease).await;
        assert!(directory.last_live("shop", false, lease).is_none());
        directory.learned("shop", None, lease);
        assert!(directory.last_live("shop", true, lease).is_none());

        // A claim or release elsewhere is an event: forgotten at once.
        directory.learned("shop", located("a").as_ref(), lease);
        directory.changed(["shop"]);
        assert!(directory.last_live("shop", true, lease).is_none());
    }
}
