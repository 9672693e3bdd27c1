//! Who holds which name.
//!
//! A name is in one of three states:
//! - **live**: a connected session holds it and requests reach that session;
//! - **resuming**: its session dropped without saying goodbye; only its owner
//!   (proven by the resume secret) may take it, until the grace period ends;
//! - **quarantined**: its owner released it, or did not come back in time;
//!   the owner may still reclaim it, nobody else may take it until the
//!   quarantine ends, so old links never reach a new user.
//!
//! Released names (resuming and quarantined) are remembered in FIFO queues
//! ordered by expiry; expired entries are dropped on every change and by
//! [`Registry::prune`]. A promise about a name is never dropped to make
//! room: memory stays bounded because what each client address and token
//! may add, and how fast, is bounded instead ([`crate::name_budget`]).
//!
//! With a [`NameStore`] ([`Registry::keep_in`]), every change of a name's
//! owner, state or deadline is also written down as it happens, and read
//! back when a server starts: names that were live or resuming come back
//! quarantined for their owners (whose sessions the restart ended), and
//! quarantined ones with the time they had left.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use droid_core::protocol::{AdapterSettings, ErrorCode, ErrorMessage, TunnelKind, TunnelRequest};
use droid_core::session::Opener;
use rand::RngExt;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use crate::access::Access;
use crate::name_budget::{Budget, Claimant, NameLimits};
use crate::name_store::{Held, NameChange, NameStore, SavedName, StoreError};
use crate::names::{self, NameGenerator};
use crate::rate::{Limiter, RequestRate};
use crate::request_log::RequestLog;

/// How long names are kept for their owners, and how many are remembered.
#[derive(Debug, Clone)]
pub struct NamePolicy {
    /// How long a dropped session's names wait for it (default 10 minutes).
    pub grace: Duration,
    /// How long a released name is kept from new users (default 7 days).
    pub quarantine: Duration,
    /// How many names strangers may make the registry remember, and how
    /// fast.
    pub limits: NameLimits,
    /// Whether common service names (`www`, `mail`, `api`...) and punycode
    /// names are kept from anybody but a token that reserves them
    /// ([`crate::names::is_kept_by_default`]).
    pub keep_service_names: bool,
}

impl Default for NamePolicy {
    fn default() -> Self {
        NamePolicy {
            grace: Duration::from_secs(10 * 60),
            quarantine: Duration::from_secs(7 * 24 * 3600),
            limits: NameLimits::default(),
            keep_service_names: true,
        }
    }
}

/// A live tunnel: a name served by a session.
#[derive(Debug)]
pub struct Tunnel {
    /// The tunnel's name, the first label of its host name.
    pub name: String,
    /// The session that serves it.
    pub session: u64,
    /// Opens streams to the client.
    pub opener: Opener,
    /// Who owns it: a hash of the resume secret, safe to log and store
    /// (spooled mail belongs to it, not to the bare name).
    pub owner_id: String,
    /// What the client asked of each adapter.
    pub adapters: Arc<AdapterSettings>,
    /// The entries (`ADAPTER:KEY`) its adapters find it by, on any node.
    pub index: Vec<String>,
    /// Who may reach it: basic auth and an IP allow-list.
    pub access: Access,
    /// The counters it counts against (a token, an address).
    pub limit_keys: Vec<String>,
    /// Its request rate limit, if the server sets one: its own bucket,
    /// gone with the tunnel.
    pub rate: Option<Limiter>,
    /// The `Host` the client's app expects, put on every request in place
    /// of the visitor's; `None` keeps the visitor's.
    pub host_header: Option<http::HeaderValue>,
    /// Where the lines of its requests go: to its client, which prints them.
    pub log: RequestLog,
    /// A TCP tunnel's public port.
    pub tcp: Option<Arc<TcpPort>>,
    /// In a cluster: Redis granted it too. Until then this node does not
    /// claim it again on its own (a stranger's claim still in flight is
    /// not this node's to assert).
    pub agreed: std::sync::atomic::AtomicBool,
}

impl Tunnel {
    /// The registry keys this tunnel holds: its name, and its port's.
    pub fn keys(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.name.clone()).chain(self.tcp.as_ref().map(|p| port_key(p.port)))
    }
}

/// The registry key of a TCP port: held like a name (live, resuming,
/// quarantined, reserved), and never a valid name itself.
pub fn port_key(port: u16) -> String {
    format!("tcp:{port}")
}

/// A key as sentences say it: `the name api`, `port 20432`.
pub(crate) fn describe_key(key: &str) -> String {
    match key.strip_prefix("tcp:") {
        Some(port) => format!("port {port}"),
        None => format!("the name {key}"),
    }
}

fn is_port_key(key: &str) -> bool {
    key.starts_with("tcp:")
}

/// The port of a TCP port's key (`tcp:PORT`); `None` for a name.
pub(crate) fn key_port(key: &str) -> Option<u16> {
    key.strip_prefix("tcp:")?.parse().ok()
}

/// A TCP tunnel's public port. Its listener stays open while a record of
/// the tunnel does (live, or resuming for its owner); when the last one
/// goes, [`TcpPort::closed`] fires and the port is closed.
#[derive(Debug)]
pub struct TcpPort {
    /// The port.
    pub port: u16,
    /// Fires when the port is given up.
    pub closed: CancellationToken,
    /// The bound listener, until a session starts serving it.
    listener: Mutex<Option<std::net::TcpListener>>,
}

impl TcpPort {
    fn new(listener: std::net::TcpListener, port: u16) -> TcpPort {
        TcpPort {
            port,
            closed: CancellationToken::new(),
            listener: Mutex::new(Some(listener)),
        }
    }

    /// The listener, once: whoever takes it serves the port.
    pub fn take_listener(&self) -> Option<std::net::TcpListener> {
        self.listener.lock().ok()?.take()
    }
}

impl Drop for TcpPort {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// Which public ports TCP tunnels get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TcpPorts {
    /// Any in this range (both ends included).
    Range(u16, u16),
    /// Any free one the system gives (the embedded server's choice).
    Any,
}

impl TcpPorts {
    pub(crate) fn contains(&self, port: u16) -> bool {
        match self {
            TcpPorts::Range(low, high) => (*low..=*high).contains(&port),
            TcpPorts::Any => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            TcpPorts::Range(low, high) => format!("{low}-{high}"),
            TcpPorts::Any => "any".into(),
        }
    }
}

/// Where TCP tunnels' ports are opened.
#[derive(Debug, Clone)]
pub struct TcpRules {
    /// The ports handed out.
    pub ports: TcpPorts,
    /// The address they listen on.
    pub bind: std::net::IpAddr,
}

/// What a claim must respect besides names held by others.
#[derive(Debug, Default)]
pub struct ClaimRules {
    /// Reserved names the caller's token owns: it may take them even while
    /// they are quarantined for an earlier owner (never while live or
    /// resuming).
    pub owned: HashSet<String>,
    /// Counters of live tunnels this claim counts against, with their caps.
    pub limits: Vec<(String, usize)>,
    /// Each tunnel's access checks, in the order of the requests; missing
    /// ones are open.
    pub access: Vec<Access>,
    /// Each tunnel's index entries (`ADAPTER:KEY`), in the order of the
    /// requests.
    pub index: Vec<Vec<String>>,
    /// The request rate each granted tunnel gets a bucket for.
    pub rate: Option<RequestRate>,
    /// Whom the new names count against (an address, a token).
    pub claimant: Claimant,
    /// Where the session's request lines go.
    pub log: RequestLog,
    /// TCP tunnels' ports; `None`: TCP tunnels are refused.
    pub tcp: Option<TcpRules>,
}

/// The owner of a name: the hash of its resume secret ([`owner_id`]), so
/// that it can be written down without the secret; and whom the name is
/// counted against while it is remembered (who first claimed it).
#[derive(Clone)]
struct Owner {
    id: Arc<str>,
    origin: Claimant,
}

impl Owner {
    fn is(&self, secret: &str) -> bool {
        self.id.as_bytes().ct_eq(owner_id(secret).as_bytes()).into()
    }
}

impl Claim {
    fn owner(&self) -> &Owner {
        match self {
            Claim::Live { owner, .. }
            | Claim::Resuming { owner, .. }
            | Claim::Quarantined { owner, .. } => owner,
        }
    }
}

enum Claim {
    Live {
        owner: Owner,
        tunnel: Arc<Tunnel>,
    },
    /// `tunnel` is the dropped session's record, kept so that mail for the
    /// name can still be accepted (and spooled) for its owner.
    Resuming {
        owner: Owner,
        until: Instant,
        tunnel: Arc<Tunnel>,
    },
    Quarantined {
        owner: Owner,
        until: Instant,
    },
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    /// A session serves the name.
    Live(Arc<Tunnel>),
    /// The name's session dropped and may come back.
    Resuming,
    /// Nobody serves the name.
    Absent,
}

/// The registry in numbers, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Names served by a session.
    pub live: usize,
    /// Names kept for a dropped session's owner.
    pub resuming: usize,
    /// Released names kept from strangers.
    pub quarantined: usize,
    /// Sessions serving live names.
    pub sessions: usize,
    /// Streams open on those sessions.
    pub open_streams: usize,
}

/// What a successful claim gives the session.
#[derive(Debug)]
pub struct Grant {
    /// The owner's resume secret, to send in `welcome`.
    pub secret: String,
    /// The tunnels, in the order asked.
    pub tunnels: Vec<Arc<Tunnel>>,
}

/// The registry of names. One per server; cheap to share behind an `Arc`.
pub struct Registry {
    policy: NamePolicy,
    /// Names kept for tokens: never handed out at random.
    reserved: HashSet<String>,
    generator: NameGenerator,
    next_session: AtomicU64,
    state: Mutex<State>,
    /// Where changes are written down, if anywhere.
    store: Option<Arc<dyn NameStore>>,
}

/// The changes of one registry operation, for the store (nothing is kept
/// without one).
struct Journal {
    on: bool,
    changes: Vec<NameChange>,
}

impl Journal {
    fn keep(&mut self, key: &str, owner: &Owner, held: Held) {
        if self.on {
            self.changes.push(NameChange::Keep(SavedName {
                key: key.to_string(),
                owner: owner.id.to_string(),
                held,
            }));
        }
    }

    fn forget(&mut self, key: &str) {
        if self.on {
            self.changes.push(NameChange::Forget(key.to_string()));
        }
    }
}

/// The wall-clock time of `until`.
fn wall(until: Instant, now: Instant) -> SystemTime {
    SystemTime::now() + until.saturating_duration_since(now)
}

struct State {
    claims: HashMap<String, Claim>,
    resuming: VecDeque<(Instant, String)>,
    quarantined: VecDeque<(Instant, String)>,
    /// Live tunnels per limit key (a token, an address).
    live_by_key: HashMap<String, usize>,
    /// Names remembered per address and token, and their buckets.
    budget: Budget,
}

impl State {
    fn new(limits: NameLimits) -> State {
        State {
            claims: HashMap::new(),
            resuming: VecDeque::new(),
            quarantined: VecDeque::new(),
            live_by_key: HashMap::new(),
            budget: Budget::new(limits),
        }
    }

    /// Forgets `key` entirely: it no longer counts against whoever added it.
    fn remove(&mut self, key: &str) {
        if let Some(claim) = self.claims.remove(key) {
            self.budget.refund(&claim.owner().origin);
        }
    }

    /// The owner a claim of `key` by `id` gets: a key remembered already
    /// stays counted against whoever added it.
    fn owner_for(&self, key: &str, id: &Arc<str>, claimant: &Claimant) -> Owner {
        let origin = match self.claims.get(key) {
            Some(claim) => claim.owner().origin.clone(),
            None => claimant.clone(),
        };
        Owner {
            id: id.clone(),
            origin,
        }
    }

    /// A live tunnel stopped being live: it no longer counts.
    fn uncount(&mut self, tunnel: &Tunnel) {
        for key in &tunnel.limit_keys {
            if let Some(n) = self.live_by_key.get_mut(key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.live_by_key.remove(key);
                }
            }
        }
    }
}

impl Registry {
    /// An empty registry.
    pub fn new(policy: NamePolicy) -> Registry {
        Registry::with_reserved(policy, HashSet::new())
    }

    /// An empty registry that never gives the `reserved` names at random.
    pub fn with_reserved(policy: NamePolicy, reserved: HashSet<String>) -> Registry {
        Registry {
            state: Mutex::new(State::new(policy.limits.clone())),
            policy,
            reserved,
            generator: NameGenerator::default(),
            next_session: AtomicU64::new(1),
            store: None,
        }
    }

    /// Writes every change down in `store` from now on, after reading back
    /// what it holds: names that were live or resuming are quarantined for
    /// their owners (a restart ended their sessions), quarantined ones keep
    /// the time they had left. Returns how many names it read back.
    pub fn keep_in(&mut self, store: Arc<dyn NameStore>) -> Result<usize, StoreError> {
        let saved = store.load()?;
        let now = Instant::now();
        let wall_now = SystemTime::now();
        let mut journal = Journal {
            on: true,
            changes: Vec::new(),
        };
        let mut restored = 0;
        {
            let state = self
                .state
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for name in saved {
                // Counted in the total only: who added it is not written down.
                let owner = Owner {
                    id: Arc::from(name.owner.as_str()),
                    origin: Claimant::default(),
                };
                let until = match name.held {
                    Held::Live => now + self.policy.quarantine,
                    Held::Until(t) => match t.duration_since(wall_now) {
                        Ok(left) if !left.is_zero() => now + left,
                        _ => {
                            journal.forget(&name.key);
                            continue;
                        }
                    },
                };
                if matches!(name.held, Held::Live) {
                    journal.keep(&name.key, &owner, Held::Until(wall(until, now)));
                }
                state.quarantined.push_back((until, name.key.clone()));
                state
                    .claims
                    .insert(name.key, Claim::Quarantined { owner, until });
                restored += 1;
            }
            // The queue is ordered by deadline.
            state.quarantined.make_contiguous().sort();
        }
        store.save(&journal.changes)?;
        self.store = Some(store);
        Ok(restored)
    }

    fn journal(&self) -> Journal {
        Journal {
            on: self.store.is_some(),
            changes: Vec::new(),
        }
    }

    /// Writes `journal` down; the registry goes on in memory if that fails
    /// (a restart would then forget these changes), and says so.
    fn commit(&self, journal: Journal) {
        if let Some(store) = &self.store
            && !journal.changes.is_empty()
            && let Err(e) = store.save(&journal.changes)
        {
            error!(error = %e, changes = journal.changes.len(), "names could not be written down; a restart would forget these changes");
        }
    }

    /// A fresh id for a new session.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than losing the server: keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Finds who serves `name`.
    pub fn lookup(&self, name: &str) -> Lookup {
        match self.lock().claims.get(name) {
            Some(Claim::Live { tunnel, .. }) => Lookup::Live(tunnel.clone()),
            Some(Claim::Resuming { until, .. }) if *until > Instant::now() => Lookup::Resuming,
            _ => Lookup::Absent,
        }
    }

    /// Whether `name` is live or resuming: mail for it may be accepted.
    pub fn is_held(&self, name: &str) -> bool {
        self.holder(name).is_some()
    }

    /// The tunnel record of a live or resuming name: who owns it and how it
    /// wants its mail (its opener is dead while resuming).
    pub fn holder(&self, name: &str) -> Option<Arc<Tunnel>> {
        match self.lock().claims.get(name) {
            Some(Claim::Live { tunnel, .. }) => Some(tunnel.clone()),
            Some(Claim::Resuming { until, tunnel, .. }) if *until > Instant::now() => {
                Some(tunnel.clone())
            }
            _ => None,
        }
    }

    /// Whether any live tunnel satisfies `test`.
    pub fn any_live(&self, test: impl Fn(&Tunnel) -> bool) -> bool {
        self.lock().claims.iter().any(|(k, c)| match c {
            Claim::Live { tunnel, .. } => !is_port_key(k) && test(tunnel),
            _ => false,
        })
    }

    /// Each session's live keys (names and TCP ports') and their owner,
    /// for the sessions the cluster granted.
    pub fn live_sessions(&self) -> Vec<crate::cluster::LiveClaim> {
        let mut by_session: HashMap<u64, Vec<Arc<Tunnel>>> = HashMap::new();
        for (key, claim) in &self.lock().claims {
            if let Claim::Live { tunnel, .. } = claim
                && *key == tunnel.name
                && tunnel.agreed.load(std::sync::atomic::Ordering::Acquire)
            {
                by_session
                    .entry(tunnel.session)
                    .or_default()
                    .push(tunnel.clone());
            }
        }
        by_session
            .values()
            .filter_map(|tunnels| crate::cluster::LiveClaim::of(tunnels))
            .collect()
    }

    /// The number of live tunnels.
    pub fn live_count(&self) -> usize {
        self.lock()
            .claims
            .iter()
            .filter(|(k, c)| !is_port_key(k) && matches!(c, Claim::Live { .. }))
            .count()
    }

    /// How many names are in each state, the sessions serving live ones
    /// and the streams open on them (each session allows `max_streams`).
    pub fn census(&self, max_streams: usize) -> Census {
        let now = Instant::now();
        let state = self.lock();
        let mut census = Census::default();
        let mut sessions = HashSet::new();
        for (key, claim) in &state.claims {
            if is_port_key(key) {
                continue;
            }
            match claim {
                Claim::Live { tunnel, .. } => {
                    census.live += 1;
                    if sessions.insert(tunnel.session) {
                        census.open_streams +=
                            max_streams.saturating_sub(tunnel.opener.available_streams());
                    }
                }
                Claim::Resuming { until, .. } if *until > now => census.resuming += 1,
                Claim::Quarantined { until, .. } if *until > now => census.quarantined += 1,
                _ => {}
            }
        }
        census.sessions = sessions.len();
        census
    }

    /// The number of released names remembered (resuming and quarantined).
    pub fn released_count(&self) -> usize {
        self.lock()
            .claims
            .iter()
            .filter(|(k, c)| !is_port_key(k) && !matches!(c, Claim::Live { .. }))
            .count()
    }

    /// A free port for a TCP tunnel, opened: a random one in the range
    /// that no name holds (live, resuming or quarantined) and no other
    /// program listens on.
    fn free_port(
        &self,
        state: &State,
        tcp: &TcpRules,
        taken: &HashSet<u16>,
    ) -> Result<TcpPort, ErrorMessage> {
        let (low, high) = match tcp.ports {
            TcpPorts::Any => return open_port(tcp, 0),
            TcpPorts::Range(low, high) => (low, high),
        };
        let span = u32::from(high - low) + 1;
        let start = rand::rng().random_range(0..span);
        let mut tries = 0;
        for i in 0..span {
            let port = low + u16::try_from((start + i) % span).unwrap_or(0);
            let key = port_key(port);
            if taken.contains(&port)
                || state.claims.contains_key(&key)
                || self.reserved.contains(&key)
            {
                continue;
            }
            if let Ok(open) = open_port(tcp, port) {
                return Ok(open);
            }
            tries += 1;
            if tries >= 64 {
                break;
            }
        }
        Err(error(
            ErrorCode::Unavailable,
            format!(
                "no free port is left in this server's TCP ports ({low}-{high}); try again later"
            ),
        ))
    }

    /// Gives a session the names it asks for, all or none. `resume` proves
    /// ownership of names held for an earlier session; a session that asks
    /// for a name its owner still holds live takes it over (the old session
    /// is closed): that is a client reconnecting before the server noticed the
    /// old connection died.
    pub fn claim(
        &self,
        requests: &[TunnelRequest],
        resume: Option<&str>,
        session: u64,
        opener: &Opener,
    ) -> Result<Grant, ErrorMessage> {
        self.claim_with(requests, resume, session, opener, ClaimRules::default())
    }

    /// [`Registry::claim`], with a token's rights and limits and each
    /// tunnel's access checks.
    pub fn claim_with(
        &self,
        requests: &[TunnelRequest],
        resume: Option<&str>,
        session: u64,
        opener: &Opener,
        rules: ClaimRules,
    ) -> Result<Grant, ErrorMessage> {
        let secret = match resume {
            Some(s) if is_secret(s) => s.to_string(),
            Some(_) => {
                return Err(error(
                    ErrorCode::BadRequest,
                    "the resume secret is malformed",
                ));
            }
            None => new_secret(),
        };
        let now = Instant::now();
        let mut state = self.lock();
        let mut journal = self.journal();
        self.expire(&mut state, now, &mut journal);
        self.commit(journal);
        let mut journal = self.journal();

        let mut chosen: Vec<(String, AdapterSettings)> = Vec::with_capacity(requests.len());
        let mut wanted = HashSet::new();
        let mut takeovers = Vec::new();
        // The ports of TCP tunnels, checked before anything is taken.
        let mut wanted_ports = HashSet::new();
        for request in requests {
            match request.kind.unwrap_or_default() {
                TunnelKind::Http => continue,
                TunnelKind::Tcp => {}
                TunnelKind::Unknown => {
                    return Err(error(
                        ErrorCode::BadRequest,
                        "a tunnel of a kind this server does not know was asked for",
                    ));
                }
            }
            let Some(tcp) = &rules.tcp else {
                return Err(error(
                    ErrorCode::BadRequest,
                    "this server offers no TCP tunnels (it runs without --tcp-ports)",
                ));
            };
            let Some(port) = request.port else { continue };
            if !tcp.ports.contains(port) {
                return Err(error(
                    ErrorCode::BadRequest,
                    format!(
                        "port {port} is outside this server's TCP ports ({}); ask for one in it, or for none to get any",
                        tcp.ports.describe()
                    ),
                ));
            }
            if !wanted_ports.insert(port) {
                return Err(error(
                    ErrorCode::BadRequest,
                    format!("port {port} is asked for twice"),
                ));
            }
            let key = port_key(port);
            if self.reserved.contains(&key) && !rules.owned.contains(&key) {
                return Err(error(
                    ErrorCode::BadName,
                    format!("port {port} is reserved on this server; only its token may claim it"),
                ));
            }
            let what = format!("port {port}");
            let claim = check_claim(
                &state,
                &key,
                &secret,
                &rules.owned,
                now,
                &what,
                "ask for another port, or for none",
            )?;
            takeovers.extend(claim);
        }
        for request in requests {
            let Some(name) = &request.name else { continue };
            names::validate(name).map_err(|m| error(ErrorCode::BadName, m))?;
            if !wanted.insert(name.as_str()) {
                return Err(error(
                    ErrorCode::BadRequest,
                    format!("the name {name} is asked for twice"),
                ));
            }
            let what = format!("the name {name}");
            let claim = check_claim(
                &state,
                name,
                &secret,
                &rules.owned,
                now,
                &what,
                "choose another name",
            )?;
            takeovers.extend(claim);
        }
        for (key, cap) in &rules.limits {
            let live = state.live_by_key.get(key).copied().unwrap_or(0);
            let replaced = takeovers
                .iter()
                .filter(|t| t.limit_keys.contains(key))
                .count();
            let open = live.saturating_sub(replaced);
            if open + requests.len() > *cap {
                return Err(error(
                    ErrorCode::Unavailable,
                    format!(
                        "{key} may hold at most {cap} tunnels at once and holds {open}; \
                         close one or try again later"
                    ),
                ));
            }
        }
        let new = new_keys(&state, requests, rules.tcp.is_some());
        state
            .budget
            .check(&rules.claimant, new, state.claims.len(), now)?;
        for request in requests {
            let adapters = request.adapter_settings();
            match &request.name {
                Some(name) => chosen.push((name.clone(), adapters)),
                None => {
                    let name = (0..64)
                        .map(|_| self.generator.generate())
                        .find(|n| {
                            !state.claims.contains_key(n)
                                && !wanted.contains(n.as_str())
                                && !self.reserved.contains(n)
                        })
                        .ok_or_else(|| {
                            error(
                                ErrorCode::Unavailable,
                                "no free random name was found; try again",
                            )
                        })?;
                    chosen.push((name, adapters));
                }
            }
        }

        // Open each TCP tunnel's port: the one its owner held (still open),
        // the one asked for, or a free one in the range. Nothing is taken
        // until all are open.
        let mut ports: Vec<Option<Arc<TcpPort>>> = Vec::with_capacity(requests.len());
        for request in requests {
            let Some(tcp) = rules
                .tcp
                .as_ref()
                .filter(|_| request.kind == Some(TunnelKind::Tcp))
            else {
                ports.push(None);
                continue;
            };
            let port = match request.port {
                Some(port) => match state.claims.get(&port_key(port)) {
                    Some(Claim::Live { tunnel, .. } | Claim::Resuming { tunnel, .. })
                        if tunnel.tcp.is_some() =>
                    {
                        tunnel.tcp.clone()
                    }
                    _ => Some(Arc::new(open_port(tcp, port)?)),
                },
                None => Some(Arc::new(self.free_port(&state, tcp, &wanted_ports)?)),
            };
            if let Some(port) = &port {
                wanted_ports.insert(port.port);
            }
            ports.push(port);
        }

        state.budget.charge(&rules.claimant, new, now);
        let owner_id = owner_id(&secret);
        let id: Arc<str> = Arc::from(owner_id.as_str());
        let keys: Vec<String> = rules.limits.iter().map(|(k, _)| k.clone()).collect();
        let mut access = rules.access.into_iter();
        let mut index = rules.index.into_iter();
        let mut host_headers = requests.iter().map(|r| {
            r.host_header
                .as_deref()
                .and_then(|h| http::HeaderValue::from_str(h).ok())
        });
        let mut ports = ports.into_iter();
        let tunnels: Vec<Arc<Tunnel>> = chosen
            .into_iter()
            .map(|(name, adapters)| {
                let tunnel = Arc::new(Tunnel {
                    tcp: ports.next().flatten(),
                    name: name.clone(),
                    session,
                    opener: opener.clone(),
                    owner_id: owner_id.clone(),
                    adapters: Arc::new(adapters),
                    index: index.next().unwrap_or_default(),
                    access: access.next().unwrap_or_default(),
                    limit_keys: keys.clone(),
                    rate: rules.rate.map(Limiter::new),
                    host_header: host_headers.next().flatten(),
                    log: rules.log.clone(),
                    agreed: std::sync::atomic::AtomicBool::new(false),
                });
                for key in &keys {
                    *state.live_by_key.entry(key.clone()).or_insert(0) += 1;
                }
                let owner = state.owner_for(&name, &id, &rules.claimant);
                journal.keep(&name, &owner, Held::Live);
                let before = state.claims.insert(
                    name,
                    Claim::Live {
                        owner,
                        tunnel: tunnel.clone(),
                    },
                );
                if let Some(Claim::Live { tunnel: old, .. }) = before {
                    state.uncount(&old);
                }
                if let Some(port) = &tunnel.tcp {
                    let key = port_key(port.port);
                    let owner = state.owner_for(&key, &id, &rules.claimant);
                    journal.keep(&key, &owner, Held::Live);
                    state.claims.insert(
                        key,
                        Claim::Live {
                            owner,
                            tunnel: tunnel.clone(),
                        },
                    );
                }
                tunnel
            })
            .collect();
        self.commit(journal);
        drop(state);
        let mut closed = HashSet::new();
        takeovers.retain(|t: &Arc<Tunnel>| closed.insert(t.session));
        for old in takeovers {
            info!(name = %old.name, old_session = old.session, session, "owner reconnected; closing its old session");
            old.opener.close();
        }
        Ok(Grant { secret, tunnels })
    }

    /// Ends a session's hold on its tunnels. A clean release (the client said
    /// goodbye) quarantines the names at once; otherwise they wait for their
    /// owner for the grace period first. Names another session has since
    /// taken over are left alone.
    pub fn release(&self, tunnels: &[Arc<Tunnel>], clean: bool) {
        let now = Instant::now();
        let mut state = self.lock();
        let mut journal = self.journal();
        for tunnel in tunnels {
            let mut released = false;
            for key in tunnel.keys() {
                let owner = match state.claims.get(&key) {
                    Some(Claim::Live { owner, tunnel: t }) if t.session == tunnel.session => {
                        owner.clone()
                    }
                    _ => continue,
                };
                released = true;
                if clean {
                    let until = now + self.policy.quarantine;
                    journal.keep(&key, &owner, Held::Until(wall(until, now)));
                    state
                        .claims
                        .insert(key.clone(), Claim::Quarantined { owner, until });
                    state.quarantined.push_back((until, key));
                } else {
                    let until = now + self.policy.grace;
                    journal.keep(&key, &owner, Held::Until(wall(until, now)));
                    state.claims.insert(
                        key.clone(),
                        Claim::Resuming {
                            owner,
                            until,
                            tunnel: tunnel.clone(),
                        },
                    );
                    state.resuming.push_back((until, key));
                }
            }
            if released {
                state.uncount(tunnel);
                debug!(name = %tunnel.name, clean, "name released");
            }
        }
        self.expire(&mut state, now, &mut journal);
        self.commit(journal);
    }

    /// Undoes a claim that must not stand (another server of the cluster
    /// refused it): the session's names are forgotten, not released, since
    /// they were never this owner's to keep.
    pub fn forget(&self, tunnels: &[Arc<Tunnel>]) {
        let mut state = self.lock();
        let mut journal = self.journal();
        for tunnel in tunnels {
            let mut forgot = false;
            for key in tunnel.keys() {
                if matches!(state.claims.get(&key), Some(Claim::Live { tunnel: t, .. }) if t.session == tunnel.session)
                {
                    state.remove(&key);
                    journal.forget(&key);
                    forgot = true;
                }
            }
            if forgot {
                state.uncount(tunnel);
            }
        }
        self.commit(journal);
    }

    /// Forgets `name` if it is only remembered here as released (resuming
    /// or quarantined): another node of the cluster serves it now, and the
    /// cluster's record is the one that keeps it for its owner.
    pub fn moved_away(&self, name: &str) {
        let mut state = self.lock();
        if matches!(
            state.claims.get(name),
            Some(Claim::Resuming { .. } | Claim::Quarantined { .. })
        ) {
            let mut journal = self.journal();
            state.remove(name);
            journal.forget(name);
            self.commit(journal);
        }
    }

    /// Forgets expired names. Called on every change; call it now and then
    /// too, so memory is given back on an idle server.
    pub fn prune(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        let mut journal = self.journal();
        self.expire(&mut state, now, &mut journal);
        state.budget.prune(now);
        self.commit(journal);
    }

    fn expire(&self, state: &mut State, now: Instant, journal: &mut Journal) {
        // Resuming names whose grace ended go to quarantine.
        while let Some((until, _)) = state.resuming.front() {
            if *until > now {
                break;
            }
            let Some((until, name)) = state.resuming.pop_front() else {
                break;
            };
            if let Some(Claim::Resuming {
                owner, until: u, ..
            }) = state.claims.get(&name)
                && *u == until
            {
                let owner = owner.clone();
                let q = until + self.policy.quarantine;
                journal.keep(&name, &owner, Held::Until(wall(q, now)));
                state
                    .claims
                    .insert(name.clone(), Claim::Quarantined { owner, until: q });
                state.quarantined.push_back((q, name));
            }
        }
        // Quarantined names whose time ended are forgotten.
        while let Some((until, _)) = state.quarantined.front() {
            if *until > now {
                break;
            }
            let Some((until, name)) = state.quarantined.pop_front() else {
                break;
            };
            if forget_if(state, &name, until) {
                journal.forget(&name);
            }
        }
    }
}

/// Removes `name` if it is still released with the deadline `until` (queue
/// entries go stale when a name is reclaimed or moves on).
fn forget_if(state: &mut State, name: &str, until: Instant) -> bool {
    let stale = match state.claims.get(name) {
        Some(Claim::Resuming { until: u, .. } | Claim::Quarantined { until: u, .. }) => *u == until,
        _ => false,
    };
    if stale {
        state.remove(name);
    }
    stale
}

/// How many keys (names, and TCP tunnels' ports) a claim of `requests`
/// adds to what the registry remembers: random ones, and those it does
/// not remember yet.
fn new_keys(state: &State, requests: &[TunnelRequest], tcp: bool) -> usize {
    let is_new = |key: Option<String>| key.is_none_or(|k| !state.claims.contains_key(&k));
    requests
        .iter()
        .map(|r| {
            let name = usize::from(is_new(r.name.clone()));
            let port = tcp && r.kind == Some(TunnelKind::Tcp);
            name + usize::from(port && is_new(r.port.map(port_key)))
        })
        .sum()
}

/// Whether the holder of `secret` may claim `key` (a name or a port's
/// key): `Ok(Some(tunnel))` when it holds it live already (a takeover),
/// `Ok(None)` when it is free, its own, or reserved for its token (`owned`),
/// and `name_taken` with a sentence otherwise. `what` names the key in that
/// sentence (`the name api`, `port 20432`); `instead` says what to do.
fn check_claim(
    state: &State,
    key: &str,
    secret: &str,
    owned: &HashSet<String>,
    now: Instant,
    what: &str,
    instead: &str,
) -> Result<Option<Arc<Tunnel>>, ErrorMessage> {
    let taken = |message: String| Err(error(ErrorCode::NameTaken, message));
    match state.claims.get(key) {
        None => Ok(None),
        Some(Claim::Live { owner, tunnel }) if owner.is(secret) => Ok(Some(tunnel.clone())),
        Some(Claim::Resuming { owner, .. } | Claim::Quarantined { owner, .. })
            if owner.is(secret) =>
        {
            Ok(None)
        }
        // A reserved key waits for its token, not for whoever last held it.
        Some(Claim::Quarantined { .. }) if owned.contains(key) => Ok(None),
        Some(Claim::Live { .. }) => taken(format!("{what} is in use by another client")),
        Some(Claim::Resuming { until, .. }) => taken(format!(
            "{what} belongs to a client that is reconnecting; it is held for it for {} more",
            human(until.saturating_duration_since(now))
        )),
        Some(Claim::Quarantined { .. }) => taken(format!(
            "{what} was in use recently and is kept for its previous owner; {instead}"
        )),
    }
}

/// Opens a TCP tunnel's listener on `port` (0: any).
/// A listener on `ip:port`, non-blocking, that takes a port whose last
/// connections are still in TIME_WAIT (`SO_REUSEADDR`, as servers' own
/// listeners do): a port another node's tunnel used here is free at once.
pub(crate) fn bind_port(ip: std::net::IpAddr, port: u16) -> std::io::Result<std::net::TcpListener> {
    let addr = std::net::SocketAddr::new(ip, port);
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn open_port(tcp: &TcpRules, port: u16) -> Result<TcpPort, ErrorMessage> {
    let listener = bind_port(tcp.bind, port).map_err(|e| {
        error(
            ErrorCode::Unavailable,
            format!("port {port} cannot be opened on the server: {e}"),
        )
    })?;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(port);
    Ok(TcpPort::new(listener, port))
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorMessage {
    ErrorMessage {
        code,
        message: message.into(),
    }
}

/// The public id of the holder of `secret`: the first 128 bits of its
/// SHA-256, in hex. It identifies an owner in logs and in the mail spool
/// without revealing the secret.
pub fn owner_id(secret: &str) -> String {
    let digest = Sha256::digest(format!("droid owner {secret}").as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A new resume secret: 256 random bits as 64 hex digits.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_secret(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 120 {
        format!("{} minutes", secs.div_ceil(60))
    } else {
        format!("{secs} seconds")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use droid_core::session::{Session, Side};

    fn opener() -> Opener {
        let (a, _b) = tokio::io::duplex(64);
        Session::start(a, Side::Server, 4).opener
    }

    fn want(names: &[Option<&str>]) -> Vec<TunnelRequest> {
        names
            .iter()
            .map(|n| TunnelRequest {
                name: n.map(str::to_string),
                ..TunnelRequest::default()
            })
            .collect()
    }

    fn policy(grace_ms: u64, quarantine_ms: u64, max_names: usize) -> NamePolicy {
        NamePolicy {
            grace: Duration::from_millis(grace_ms),
            quarantine: Duration::from_millis(quarantine_ms),
            limits: NameLimits {
                max_names,
                ..NameLimits::unbounded()
            },
            keep_service_names: true,
        }
    }

    #[tokio::test]
    async fn a_name_that_moved_away_is_forgotten_here_unless_it_is_live() {
        let r = Registry::new(NamePolicy::default());
        let a = r
            .claim(&want(&[Some("myapp")]), None, 1, &opener())
            .unwrap();
        r.moved_away("myapp");
        assert!(matches!(r.lookup("myapp"), Lookup::Live(_)));
        r.release(&a.tunnels, false);
        assert!(matches!(r.lookup("myapp"), Lookup::Resuming));
        r.moved_away("myapp");
        assert!(matches!(r.lookup("myapp"), Lookup::Absent));
        // Nothing here keeps it from another client now; the cluster does.
        r.claim(&want(&[Some("myapp")]), None, 2, &opener())
            .unwrap();
    }

    #[tokio::test]
    async fn a_live_name_is_never_given_to_another_client() {
        let r = Registry::new(NamePolicy::default());
        let a = r
            .claim(&want(&[Some("myapp")]), None, 1, &opener())
            .unwrap();
        let e = r
            .claim(&want(&[Some("myapp")]), None, 2, &opener())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NameTaken);
        assert!(
            e.message.contains("in use by another client"),
            "{}",
            e.message
        );
        // a wrong secret does not help either
        let wrong = "0".repeat(64);
        let e = r
            .claim(&want(&[Some("myapp")]), Some(&wrong), 3, &opener())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NameTaken);
        assert!(matches!(r.lookup("myapp"), Lookup::Live(t) if t.session == 1));
        assert_eq!(a.tunnels[0].name, "myapp");
    }

    #[tokio::test]
    async fn a_dropped_session_keeps_its_names_for_its_owner_only() {
        let r = Registry::new(NamePolicy::default());
        let g = r
            .claim(&want(&[None, Some("api")]), None, 1, &opener())
            .unwrap();
        let random = g.tunnels[0].name.clone();
        r.release(&g.tunnels, false);
        assert!(matches!(r.lookup("api"), Lookup::Resuming));
        assert!(r.is_held("api"));
        let e = r
            .claim(&want(&[Some(&random)]), None, 2, &opener())
            .unwrap_err();
        assert!(e.message.contains("reconnecting"), "{}", e.message);
        let back = r
            .claim(
                &want(&[Some(&random), Some("api")]),
                Some(&g.secret),
                3,
                &opener(),
            )
            .unwrap();
        assert_eq!(back.secret, g.secret);
        assert!(matches!(r.lookup("api"), Lookup::Live(t) if t.session == 3));
    }

    #[tokio::test]
    async fn the_owner_takes_over_its_live_names_and_the_old_release_is_ignored() {
        let r = Registry::new(NamePolicy::default());
        let old_opener = opener();
        let g = r
            .claim(&want(&[Some("web")]), None, 1, &old_opener)
            .unwrap();
        let g2 = r
            .claim(&want(&[Some("web")]), Some(&g.secret), 2, &opener())
            .unwrap();
        // the old session's late release must not touch the new session's name
        r.release(&g.tunnels, false);
        assert!(matches!(r.lookup("web"), Lookup::Live(t) if t.session == 2));
        r.release(&g2.tunnels, true);
        assert!(matches!(r.lookup("web"), Lookup::Absent));
    }

    #[tokio::test]
    async fn a_released_name_is_quarantined_then_forgotten() {
        let r = Registry::new(policy(10, 50, 100));
        let g = r.claim(&want(&[Some("gone")]), None, 1, &opener()).unwrap();
        r.release(&g.tunnels, true);
        let e = r
            .claim(&want(&[Some("gone")]), None, 2, &opener())
            .unwrap_err();
        assert!(
            e.message.contains("kept for its previous owner"),
            "{}",
            e.message
        );
        // its owner may reclaim it at any time
        let g = r
            .claim(&want(&[Some("gone")]), Some(&g.secret), 3, &opener())
            .unwrap();
        r.release(&g.tunnels, false);
        // grace (10 ms) then quarantine (50 ms) pass; the name is free again
        tokio::time::sleep(Duration::from_millis(80)).await;
        r.prune();
        assert_eq!(r.released_count(), 0);
        r.claim(&want(&[Some("gone")]), None, 4, &opener()).unwrap();
    }

    #[tokio::test]
    async fn a_flood_of_names_is_refused_and_never_takes_a_name_from_its_owner() {
        let r = Registry::new(policy(60_000, 60_000, 100));
        // The victim dropped without a goodbye: its name waits for it.
        let victim = r.claim(&want(&[Some("bank")]), None, 0, &opener()).unwrap();
        r.release(&victim.tunnels, false);
        let mut refused = 0;
        for i in 1..1000 {
            match r.claim(&want(&[Some(&format!("n{i}"))]), None, i, &opener()) {
                Ok(g) => r.release(&g.tunnels, i % 2 == 0),
                Err(e) => {
                    assert_eq!(e.code, ErrorCode::Unavailable);
                    assert!(
                        e.message.contains("as many names as it may (100)"),
                        "{}",
                        e.message
                    );
                    refused += 1;
                }
            }
        }
        assert_eq!(r.released_count(), 100, "memory stays bounded");
        assert_eq!(refused, 1000 - 100);
        let e = r
            .claim(&want(&[Some("bank")]), None, 5000, &opener())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NameTaken, "{}", e.message);
        // Its owner comes back at the cap, releases it cleanly: still kept.
        let back = r
            .claim(
                &want(&[Some("bank")]),
                Some(&victim.secret),
                5001,
                &opener(),
            )
            .unwrap();
        r.release(&back.tunnels, true);
        let e = r
            .claim(&want(&[Some("bank")]), None, 5002, &opener())
            .unwrap_err();
        assert!(
            e.message.contains("kept for its previous owner"),
            "{}",
            e.message
        );
        // Expired names make room again.
        r.prune();
        assert_eq!(r.released_count(), 100);
    }

    #[tokio::test]
    async fn each_address_adds_at_most_its_share_and_owners_coming_back_add_nothing() {
        let limits = NameLimits {
            max_names: 1000,
            per_address: Some(5),
            per_token: None,
            new_per_minute: None,
        };
        let r = Registry::new(NamePolicy {
            limits: limits.clone(),
            ..NamePolicy::default()
        });
        let from = |ip: &str| ClaimRules {
            claimant: Claimant::new(&limits, ip.parse().unwrap(), None),
            ..ClaimRules::default()
        };
        let g = r
            .claim_with(
                &want(&[None, None, None, None, None]),
                None,
                1,
                &opener(),
                from("192.0.2.1"),
            )
            .unwrap();
        r.release(&g.tunnels, true);
        let e = r
            .claim_with(&want(&[None]), None, 2, &opener(), from("192.0.2.1"))
            .unwrap_err();
        assert!(
            e.message.contains("too many names from address 192.0.2.1"),
            "{}",
            e.message
        );
        // Another address is unaffected; the owner takes its names back
        // from anywhere.
        r.claim_with(&want(&[None]), None, 3, &opener(), from("192.0.2.2"))
            .unwrap();
        let names: Vec<Option<&str>> = g.tunnels.iter().map(|t| Some(t.name.as_str())).collect();
        r.claim_with(
            &want(&names),
            Some(&g.secret),
            4,
            &opener(),
            from("192.0.2.1"),
        )
        .unwrap();
    }

    #[tokio::test]
    async fn limit_counters_follow_live_tunnels_through_takeover_and_release() {
        let r = Registry::new(NamePolicy::default());
        let rules = || ClaimRules {
            limits: vec![("address 1.2.3.4".into(), 2)],
            ..ClaimRules::default()
        };
        let g = r
            .claim_with(&want(&[Some("a"), None]), None, 1, &opener(), rules())
            .unwrap();
        let e = r
            .claim_with(&want(&[None]), None, 2, &opener(), rules())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(e.message.contains("at most 2"), "{}", e.message);
        // the owner reconnecting takes over its own two: not counted twice
        let names: Vec<Option<&str>> = g.tunnels.iter().map(|t| Some(t.name.as_str())).collect();
        let g2 = r
            .claim_with(&want(&names), Some(&g.secret), 3, &opener(), rules())
            .unwrap();
        r.release(&g.tunnels, false); // the old session's late release: ignored
        assert!(
            r.claim_with(&want(&[None]), None, 4, &opener(), rules())
                .is_err()
        );
        r.release(&g2.tunnels, false);
        r.claim_with(&want(&[None, None]), None, 5, &opener(), rules())
            .unwrap();
    }

    #[tokio::test]
    async fn a_reserved_name_skips_quarantine_for_its_token_only() {
        let reserved: HashSet<String> = ["api".to_string()].into();
        let r = Registry::with_reserved(NamePolicy::default(), reserved.clone());
        let g = r
            .claim_with(
                &want(&[Some("api")]),
                None,
                1,
                &opener(),
                ClaimRules {
                    owned: reserved.clone(),
                    ..ClaimRules::default()
                },
            )
            .unwrap();
        r.release(&g.tunnels, true);
        assert!(r.claim(&want(&[Some("api")]), None, 2, &opener()).is_err());
        r.claim_with(
            &want(&[Some("api")]),
            None,
            3,
            &opener(),
            ClaimRules {
                owned: reserved,
                ..ClaimRules::default()
            },
        )
        .unwrap();
    }

    #[tokio::test]
    async fn bad_requests_are_refused_whole() {
        let r = Registry::new(NamePolicy::default());
        let e = r
            .claim(&want(&[Some("Bad.Name")]), None, 1, &opener())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadName);
        let e = r
            .claim(&want(&[Some("a"), Some("a")]), None, 1, &opener())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        r.claim(&want(&[Some("taken")]), None, 1, &opener())
            .unwrap();
        let e = r
            .claim(&want(&[Some("free"), Some("taken")]), None, 2, &opener())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::NameTaken);
        assert!(
            matches!(r.lookup("free"), Lookup::Absent),
            "a refused claim took nothing"
        );
        let e = r
            .claim(&want(&[None]), Some("short"), 3, &opener())
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    /// A store in memory, to read back what a registry wrote down.
    #[derive(Debug, Default)]
    struct Notebook(Mutex<HashMap<String, SavedName>>);

    impl NameStore for Notebook {
        fn load(&self) -> Result<Vec<SavedName>, StoreError> {
            Ok(self.0.lock().unwrap().values().cloned().collect())
        }

        fn save(&self, changes: &[NameChange]) -> Result<(), StoreError> {
            let mut names = self.0.lock().unwrap();
            for change in changes {
                match change {
                    NameChange::Keep(saved) => {
                        names.insert(saved.key.clone(), saved.clone());
                    }
                    NameChange::Forget(key) => {
                        names.remove(key);
                    }
                }
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn names_written_down_come_back_for_their_owners_only() {
        let book = Arc::new(Notebook::default());
        let mut first = Registry::new(policy(60_000, 60_000, 100));
        first.keep_in(book.clone()).unwrap();
        let grant = first
            .claim(&want(&[Some("api"), Some("web")]), None, 1, &opener())
            .unwrap();
        // api dropped without a goodbye, web said goodbye.
        first.release(&grant.tunnels[..1], false);
        first.release(&grant.tunnels[1..], true);
        let saved = book.0.lock().unwrap().clone();
        assert!(saved.values().all(|n| matches!(n.held, Held::Until(_))));
        assert!(
            saved.values().all(|n| n.owner == owner_id(&grant.secret)),
            "the owner is written as the secret's hash, never the secret"
        );
        // A name whose time ran out while the server was down is forgotten.
        let long_ago = SystemTime::now() - Duration::from_secs(1);
        book.save(&[NameChange::Keep(SavedName {
            key: "old".into(),
            owner: "someone".into(),
            held: Held::Until(long_ago),
        })])
        .unwrap();

        let mut second = Registry::new(policy(60_000, 60_000, 100));
        assert_eq!(second.keep_in(book.clone()).unwrap(), 2);
        assert!(!book.0.lock().unwrap().contains_key("old"));
        for name in ["api", "web"] {
            let e = second
                .claim(&want(&[Some(name)]), None, 2, &opener())
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::NameTaken, "{name}");
        }
        let again = second
            .claim(
                &want(&[Some("api"), Some("web")]),
                Some(&grant.secret),
                3,
                &opener(),
            )
            .unwrap();
        assert_eq!(again.tunnels.len(), 2);
        assert_eq!(book.0.lock().unwrap()["api"].held, Held::Live);
    }
}
