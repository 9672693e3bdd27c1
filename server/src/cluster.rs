//! Names across several servers, in Redis (`droid server --cluster`).
//!
//! Every node keeps its own live tunnels in its registry, as a single
//! server does; Redis is where nodes agree on who owns which name. A claim
//! is one Lua script over all of a session's names, so it is atomic: each
//! name is free, or its owner's (the hash of the resume secret), or it is
//! refused whole. A name's record (`droid:name:KEY`, a hash) says its owner,
//! the node serving it and, once released, until when it is held for the
//! owner alone (resuming) and until when it is kept from strangers
//! (quarantined); it expires from Redis then.
//!
//! Each node holds a lease: its deadline in the sorted set `droid:nodes`,
//! renewed every third of the lease. A live name whose node's lease ran out
//! is treated as released at that deadline: resuming for its owner for the
//! grace period (who may reclaim it on any node), then quarantined. An owner
//! asking for a name that is live on another node whose lease still runs is
//! told to try again ("unavailable"), so no name is ever live on two nodes:
//! it moves once the other node released it or its lease ran out. Times are
//! Redis's own clock (`TIME`), so the nodes' clocks do not matter.
//!
//! Beside its record, a name keeps what the tunnel's client asked of the
//! adapters (`droid:settings:NAME`, JSON; a key of its own so the record
//! stays a small hash in Redis's compact encoding) so that any node's
//! adapters take messages for it, and the index entries its adapters find
//! it by (`ADAPTER:KEY`, each a set of names `droid:index:ADAPTER:KEY`).
//! Claims and releases publish their names on `droid:names`; every node
//! follows the channel ([`Cluster::follow`]) to forget what it remembered
//! of them ([`crate::directory`]) and to wake the deliveries it spooled for
//! an owner who is back, on whatever node. Adapters send bytes to
//! themselves on the other nodes over `droid:adapters`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use droid_core::protocol::{ErrorCode, ErrorMessage};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::NamePolicy;
use crate::directory::{Directory, Located};
use crate::peer_tls::PeerTls;
use crate::redis_link::RedisLink;
use crate::registry::Tunnel;

/// How a node joins a cluster. Its `Debug` masks the secret.
#[derive(Clone)]
pub struct ClusterConfig {
    /// Redis, `redis://[USER:PASSWORD@]HOST:PORT`, `rediss://` for TLS,
    /// or `redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER`.
    pub redis: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// How long a node's names stay live without a renewal of its lease.
    pub lease: Duration,
    /// Where the other nodes reach this one's peer port (`--peer`), if it
    /// takes requests for its tunnels from them.
    pub peer: Option<String>,
    /// What every node knows: the key of the TLS between the nodes.
    pub secret: String,
    /// For a `rediss://` Redis: the CA certificates (PEM) its certificate
    /// must chain to; `None` trusts the system's.
    pub ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &masked(&self.redis))
            .field("node_id", &self.node_id)
            .field("lease", &self.lease)
            .field("peer", &self.peer)
            .field("secret", &"MASKED")
            .finish()
    }
}

/// Why a node could not join.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the cluster registry at {redis}: {reason}")]
pub struct ClusterError {
    redis: String,
    reason: String,
}

impl ClusterError {
    /// An error about the Redis at `url`, its password never shown.
    pub(crate) fn new(url: &str, reason: String) -> ClusterError {
        ClusterError {
            redis: masked(url),
            reason,
        }
    }
}

/// A Redis URL as it may be shown: its password, if any, as `***`.
fn masked(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((login, host)) if !login.contains('/') => {
                let user = login.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// What the script's `now` is, in milliseconds, from Redis's clock.
const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/// The channel claims and releases publish their names on.
const NAMES_CHANNEL: &str = "droid:names";

/// The channel adapters send bytes to themselves on the other nodes on.
const ADAPTERS_CHANNEL: &str = "droid:adapters";

/// After Redis fails to answer, how long lookups of names remembered live
/// do not ask it.
const AWAY_PAUSE: Duration = Duration::from_secs(1);

/// How long an adapters' shared map lives after its last change.
const MAP_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// KEYS: name records. ARGV: owner, node, grace ms, quarantine ms,
/// session, '1' when the node claims again names it serves (else '0'),
/// lease ms, then for each key its settings (JSON, or '') and its index
/// entries (`ADAPTER:KEY`, space-separated, or ''). Returns {'ok'} or
/// {index, why, ms left}.
///
/// While Redis settles (`droid:settling`, after it lost its data or failed
/// over and may have lost the last claims), a name it has no record of is
/// given to no one but a node claiming again what it serves. A Redis that
/// does not know the claiming node has lost its data: it settles from then.
const CLAIM: &str = r"
local owner, node = ARGV[1], ARGV[2]
local grace, quarantine = tonumber(ARGV[3]), tonumber(ARGV[4])
local session, reasserting, lease = ARGV[5], ARGV[6] == '1', tonumber(ARGV[7])
local settling = 0
if not reasserting then
  if not redis.call('ZSCORE', 'droid:nodes', node) then
    redis.call('SET', 'droid:settling', now + lease, 'PX', lease, 'NX')
  end
  settling = tonumber(redis.call('GET', 'droid:settling')) or 0
end
for i, key in ipairs(KEYS) do
  local r = redis.call('HMGET', key, 'owner', 'node', 'state', 'resume_until', 'until', 'moving')
  if not r[1] and now < settling then return {tostring(i), 'settling', tostring(settling - now)} end
  if r[1] then
    local state, resume_until, until_ = r[3], tonumber(r[4]) or 0, tonumber(r[5]) or 0
    if state == 'live' then
      local lease = tonumber(redis.call('ZSCORE', 'droid:nodes', r[2])) or 0
      if lease >= now then
        if r[1] ~= owner then return {tostring(i), 'live', '0'} end
        if r[2] ~= node and r[6] ~= '1' then return {tostring(i), 'elsewhere', tostring(lease - now)} end
      else
        resume_until = lease + grace
        until_ = resume_until + quarantine
      end
    end
    if r[1] ~= owner and now < until_ then
      if now < resume_until then return {tostring(i), 'resuming', tostring(resume_until - now)} end
      return {tostring(i), 'quarantined', tostring(until_ - now)}
    end
  end
end
for i, key in ipairs(KEYS) do
  local settings, index = ARGV[6 + 2 * i], ARGV[7 + 2 * i]
  -- Claimed again by the session that holds it, a draining node's mark stays.
  local was = redis.call('HMGET', key, 'node', 'session', 'moving')
  local moving = 0
  if reasserting and was[1] == node and was[2] == session then moving = was[3] or 0 end
  redis.call('HSET', key, 'owner', owner, 'node', node, 'session', session, 'state', 'live', 'resume_until', 0, 'until', 0, 'index', index, 'moving', moving)
  redis.call('PERSIST', key)
  if settings ~= '' then
    redis.call('SET', 'droid:settings:' .. string.sub(key, 12), settings)
  else
    redis.call('DEL', 'droid:settings:' .. string.sub(key, 12))
  end
  for entry in string.gmatch(index, '%S+') do
    redis.call('SADD', 'droid:index:' .. entry, string.sub(key, 12))
  end
end
redis.call('PUBLISH', 'droid:names', 'claim ' .. owner .. ' ' .. table.concat(KEYS, ' '))
return {'ok'}
";

/// KEYS: name records. ARGV: owner, node, grace ms (0: said goodbye),
/// quarantine ms, session. Released only where this very session still
/// holds them (a late retry never releases a newer session's names).
const RELEASE: &str = r"
local owner, node = ARGV[1], ARGV[2]
local grace, quarantine = tonumber(ARGV[3]), tonumber(ARGV[4])
local session = ARGV[5]
local released = {}
for _, key in ipairs(KEYS) do
  local r = redis.call('HMGET', key, 'owner', 'node', 'state', 'session')
  if r[1] == owner and r[2] == node and r[3] == 'live' and r[4] == session then
    local resume_until = now + grace
    local until_ = resume_until + quarantine
    redis.call('HSET', key, 'state', 'released', 'resume_until', resume_until, 'until', until_)
    redis.call('PEXPIREAT', key, until_)
    redis.call('PEXPIREAT', 'droid:settings:' .. string.sub(key, 12), until_)
    table.insert(released, key)
  end
end
if #released > 0 then
  redis.call('PUBLISH', 'droid:names', 'release ' .. owner .. ' ' .. table.concat(released, ' '))
end
return 1
";

/// ARGV: node, lease ms, peer address ('' for none), version, and the
/// [`Renewal`]: '0' when the node joins, '1' for a running node, '2' on a
/// master the node just found after a failover. Returns 1 when Redis did
/// not know the node (its first lease, or Redis lost its data). Redis
/// settles for a lease (see [`CLAIM`]), in the same step, on a failover
/// and when a running node is unknown to it. `droid:node:ID` says when it
/// renewed and its version, for `droid cluster status`; it goes a day
/// after the node's last renewal.
const RENEW: &str = r"
local added = redis.call('ZADD', 'droid:nodes', now + tonumber(ARGV[2]), ARGV[1])
if (added == 1 and ARGV[5] == '1') or ARGV[5] == '2' then
  local until_ = now + tonumber(ARGV[2])
  if until_ > (tonumber(redis.call('GET', 'droid:settling')) or 0) then
    redis.call('SET', 'droid:settling', until_, 'PX', ARGV[2])
  end
end
if ARGV[3] ~= '' then redis.call('HSET', 'droid:peers', ARGV[1], ARGV[3]) end
redis.call('HSET', 'droid:node:' .. ARGV[1], 'version', ARGV[4], 'renewed', now)
redis.call('PEXPIRE', 'droid:node:' .. ARGV[1], 86400000)
return added
";

/// KEYS: a name record, its settings. ARGV: grace ms, the node the asking
/// node last knew it live on ('' for none). Where the name is while it is
/// live or resuming: {'live' or 'resuming', node, its peer address or '',
/// owner, settings, ms the state lasts}; nil otherwise; {'unsure'} when
/// Redis has no record but may have lost it (it settles, or does not know
/// that node yet: it lost its data and the node has not renewed).
const LOCATE: &str = r"
local r = redis.call('HMGET', KEYS[1], 'owner', 'node', 'state', 'resume_until')
if not r[1] then
  if ARGV[2] == '' then return false end
  local settling = tonumber(redis.call('GET', 'droid:settling')) or 0
  if now < settling or not redis.call('ZSCORE', 'droid:nodes', ARGV[2]) then return {'unsure'} end
  return false
end
local state, left = 'resuming', (tonumber(r[4]) or 0) - now
if r[3] == 'live' then
  local lease = tonumber(redis.call('ZSCORE', 'droid:nodes', r[2])) or 0
  if lease >= now then state, left = 'live', lease - now
  else left = lease + tonumber(ARGV[1]) - now end
end
if left <= 0 then return false end
return {state, r[2], redis.call('HGET', 'droid:peers', r[2]) or '', r[1], redis.call('GET', KEYS[2]) or '', tostring(left)}
";

/// KEYS: name records. ARGV: owner, node, session. The names this very
/// session holds live may be claimed by their owner on another node while
/// this one still serves them (it drains).
const LET_MOVE: &str = r"
for _, key in ipairs(KEYS) do
  local r = redis.call('HMGET', key, 'owner', 'node', 'state', 'session')
  if r[1] == ARGV[1] and r[2] == ARGV[2] and r[3] == 'live' and r[4] == ARGV[3] then
    redis.call('HSET', key, 'moving', 1)
  end
end
return 1
";

/// Which renewal of a node's lease [`RENEW`] makes.
#[derive(Debug, Clone, Copy)]
enum Renewal {
    /// The node's first, as it joins.
    Join,
    /// A running node's, every third of its lease.
    Running,
    /// On the master the sentinels named after a failover.
    FailedOver,
}

/// KEYS: TCP ports' records. ARGV: this node. The keys live on another
/// node whose lease runs.
const LIVE_ELSEWHERE: &str = r"
local found = {}
for _, key in ipairs(KEYS) do
  local r = redis.call('HMGET', key, 'node', 'state')
  if r[2] == 'live' and r[1] ~= ARGV[1] and (tonumber(redis.call('ZSCORE', 'droid:nodes', r[1])) or 0) >= now then
    table.insert(found, key)
  end
end
return found
";

/// KEYS: an index entry's set of names. ARGV: the entry (`ADAPTER:KEY`).
/// 1 when a name that has it is live under a running lease; names that no
/// longer have it leave the set.
const INDEXED: &str = r"
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local r = redis.call('HMGET', 'droid:name:' .. name, 'index', 'state', 'node')
  if not string.find(' ' .. (r[1] or '') .. ' ', ' ' .. ARGV[1] .. ' ', 1, true) then
    redis.call('SREM', KEYS[1], name)
  elseif r[2] == 'live' and (tonumber(redis.call('ZSCORE', 'droid:nodes', r[3])) or 0) >= now then
    return 1
  end
end
return 0
";

/// One session's live names, as a node claims, re-asserts and releases
/// them.
#[derive(Debug, Clone)]
pub struct LiveClaim {
    /// Its names (and TCP ports' keys).
    pub keys: Vec<String>,
    /// For each key, what its tunnel asked of the adapters, as JSON; empty
    /// for a TCP tunnel's keys, which take no adapter's messages.
    pub settings: Vec<String>,
    /// For each key, its tunnel's index entries (`ADAPTER:KEY`,
    /// space-separated), or empty.
    pub index: Vec<String>,
    /// Their owner (the hash of the resume secret).
    pub owner: String,
    /// The session serving them.
    pub session: u64,
}

impl LiveClaim {
    /// The claim of one session's tunnels; `None` for no tunnel.
    pub(crate) fn of(tunnels: &[Arc<Tunnel>]) -> Option<LiveClaim> {
        let first = tunnels.first()?;
        let mut claim = LiveClaim {
            keys: Vec::new(),
            settings: Vec::new(),
            index: Vec::new(),
            owner: first.owner_id.clone(),
            session: first.session,
        };
        for tunnel in tunnels {
            let takes_messages = tunnel.tcp.is_none();
            for key in tunnel.keys() {
                let (settings, index) = if takes_messages {
                    (
                        serde_json::to_string(&*tunnel.adapters).unwrap_or_default(),
                        tunnel.index.join(" "),
                    )
                } else {
                    (String::new(), String::new())
                };
                claim.keys.push(key);
                claim.settings.push(settings);
                claim.index.push(index);
            }
        }
        Some(claim)
    }
}

/// The line before the bytes an adapter sends to itself on the other
/// nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Broadcast {
    /// The node it was sent from (which acted on it itself).
    node: String,
    /// The adapter that sent it, and the one that gets it.
    adapter: String,
}

/// What a node does with the events it follows.
pub(crate) trait Events: Send + Sync {
    /// `owner`'s tunnel `name` (or a TCP port's key) came up, on this node
    /// or another.
    fn claimed(&self, owner: &str, name: &str);
    /// `name` (or a TCP port's key) was released, on this node or another.
    fn released(&self, name: &str);
    /// `adapter` on another node sent `bytes` to itself here.
    fn received(&self, adapter: &str, bytes: Bytes);
}

/// A node's handle on the cluster registry. Cheap to share behind an `Arc`.
pub struct Cluster {
    /// Redis, or the master its sentinels name.
    link: RedisLink,
    config: ClusterConfig,
    policy: NamePolicy,
    claim: redis::Script,
    release: redis::Script,
    renew: redis::Script,
    locate: redis::Script,
    indexed: redis::Script,
    let_move: redis::Script,
    live_elsewhere: redis::Script,
    /// Releases Redis did not take, retried with each lease renewal.
    pending: Mutex<Vec<Release>>,
    /// Redis's answers to [`Cluster::locate`], kept.
    directory: Directory,
    /// How lookups were answered.
    pub(crate) lookups: Lookups,
    /// The links between the nodes, keyed by the cluster secret.
    peer_tls: PeerTls,
}

/// How [`Cluster::locate`] answered, for the metrics.
#[derive(Default)]
pub(crate) struct Lookups {
    /// From what this node kept.
    pub kept: prometheus_client::metrics::counter::Counter,
    /// By asking Redis.
    pub asked: prometheus_client::metrics::counter::Counter,
    /// From where the name was last live, while Redis did not answer or
    /// had just come back empty.
    pub remembered: prometheus_client::metrics::counter::Counter,
}

/// One session's release, as the script takes it.
#[derive(Clone)]
struct Release {
    claim: LiveClaim,
    clean: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("redis", &self.config.redis)
            .field("node_id", &self.config.node_id)
            .finish_non_exhaustive()
    }
}

/// Redis did not answer.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the registry is unavailable")]
pub(crate) struct RegistryAway;

/// The answer when Redis does not answer.
fn unavailable() -> ErrorMessage {
    ErrorMessage {
        code: ErrorCode::Unavailable,
        message: "the registry is unavailable; try again".into(),
    }
}

fn key(name: &str) -> String {
    format!("droid:name:{name}")
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{NOW}\n{body}"))
}

impl Cluster {
    /// Connects to Redis and takes this node's first lease.
    pub async fn join(config: ClusterConfig, policy: NamePolicy) -> Result<Cluster, ClusterError> {
        let redis = config.redis.clone();
        let failed = |reason: String| ClusterError::new(&redis, reason);
        let peer_tls = PeerTls::from_secret(&config.secret).map_err(|e| failed(e.to_string()))?;
        let link = RedisLink::connect(&redis, config.ca.clone())
            .await
            .map_err(failed)?;
        let cluster = Cluster {
            link,
            config,
            policy,
            claim: script(CLAIM),
            release: script(RELEASE),
            renew: script(RENEW),
            locate: script(LOCATE),
            indexed: script(INDEXED),
            let_move: script(LET_MOVE),
            live_elsewhere: script(LIVE_ELSEWHERE),
            pending: Mutex::new(Vec::new()),
            directory: Directory::default(),
            lookups: Lookups::default(),
            peer_tls,
        };
        // A node back within its old lease may find itself known: its old
        // names are then released by the lease's end, as for a dead node.
        cluster
            .renew_on(cluster.link.conn(), Renewal::Join)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let redis = masked(&cluster.config.redis);
        info!(node = %cluster.config.node_id, %redis, "joined the cluster");
        Ok(cluster)
    }

    /// Renews the lease through `conn`; true when Redis did not know this
    /// node.
    async fn renew_on(
        &self,
        mut conn: redis::aio::ConnectionManager,
        renewal: Renewal,
    ) -> redis::RedisResult<bool> {
        let renewal = match renewal {
            Renewal::Join => "0",
            Renewal::Running => "1",
            Renewal::FailedOver => "2",
        };
        self.renew
            .arg(&self.config.node_id)
            .arg(ms(self.config.lease))
            .arg(self.config.peer.as_deref().unwrap_or(""))
            .arg(env!("CARGO_PKG_VERSION"))
            .arg(renewal)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|added| added == 1)
    }

    /// Renews this node's lease every third of it until `shutdown`. When
    /// Redis no longer knows the node (it restarted without its data), the
    /// node claims again every name `live` says it serves.
    pub async fn keep_lease(&self, live: impl Fn() -> Vec<LiveClaim>, shutdown: CancellationToken) {
        let every = (self.config.lease / 3).max(Duration::from_millis(50));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            match self.renew_on(self.link.conn(), Renewal::Running).await {
                Ok(forgotten) => {
                    if forgotten {
                        let names: usize = live().iter().map(|c| c.keys.len()).sum();
                        warn!(
                            names,
                            "Redis no longer knew this node (restarted without its data?); claiming its names again"
                        );
                        self.reassert(&live).await;
                    }
                    self.retry_releases().await;
                }
                Err(e) => {
                    warn!(error = %e, "could not renew this node's lease; its tunnels go on while Redis is away");
                }
            }
        }
    }

    /// Claims again the names this node serves, into a Redis that lost
    /// them (all, or the last ones, in a failover) and settles meanwhile.
    async fn reassert(&self, live: &impl Fn() -> Vec<LiveClaim>) {
        let claims = live();
        for claim in &claims {
            if let Err(e) = self.claim_as(claim, true).await {
                warn!(keys = ?claim.keys, reason = %e.message, "a name this node serves could not be claimed again");
            }
        }
        // A session that ended meanwhile released its names before they
        // were claimed again: they are released again, else they would
        // stay live here for good.
        let still: Vec<u64> = live().iter().map(|c| c.session).collect();
        for claim in claims {
            if !still.contains(&claim.session) {
                self.release(claim, false).await;
            }
        }
    }

    /// With Sentinel, until `shutdown`: asks the sentinels once a second
    /// which server is the master, and when they name another one (a
    /// failover), holds new names back there for a lease, moves every
    /// command there and claims again every name `live` says this node
    /// serves (replication is asynchronous: the last claims may be lost).
    pub async fn follow_failovers(
        &self,
        live: impl Fn() -> Vec<LiveClaim>,
        shutdown: CancellationToken,
    ) {
        if !self.link.follows_sentinels() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = shutdown.cancelled() => return,
            }
            let Some(master) = self.link.new_master().await else {
                continue;
            };
            let at = master.at.clone();
            // The lease, and strangers waiting, before any claim reaches
            // the new master.
            let renewed = self.renew_on(master.conn(), Renewal::FailedOver).await;
            if let Err(e) = renewed {
                debug!(%at, error = %e, "the new master did not take this node's lease yet");
                continue;
            }
            self.link.install(master);
            self.reassert(&live).await;
            warn!(%at, "Redis failed over: following the new master; this node's names claimed again");
        }
    }

    async fn retry_releases(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for release in pending {
            self.release_or_keep(release).await;
        }
    }

    /// The peer address of the node that serves `found` live, if that is
    /// another node than this one (and it has a peer port).
    pub(crate) fn peer_serving<'a>(&self, found: &'a Located) -> Option<&'a str> {
        let elsewhere = found.live && found.node != self.config.node_id;
        found.peer.as_deref().filter(|_| elsewhere)
    }

    /// Where `name` is while it is live or resuming on any node (this one
    /// included, as Redis sees it); `Ok(None)` otherwise; an error while
    /// Redis does not answer. Answers are kept as [`crate::directory`]
    /// says.
    pub(crate) async fn locate(&self, name: &str) -> Result<Option<Located>, RegistryAway> {
        if let Some(answer) = self.directory.get(name) {
            self.lookups.kept.inc();
            return Ok(answer);
        }
        // Redis just failed: a name remembered live goes where it was
        // without waiting for Redis to fail again (one lookup a second
        // finds out whether it is back).
        if self.directory.failed_within(AWAY_PAUSE)
            && let Some(last) = self.directory.last_live(name, true, self.config.lease)
        {
            self.lookups.remembered.inc();
            return Ok(Some(last));
        }
        self.lookups.asked.inc();
        let epoch = self.directory.epoch();
        let mut conn = self.link.conn();
        let remembered = self.directory.last_live(name, true, self.config.lease);
        let answer = self
            .locate
            .key(key(name))
            .key(format!("droid:settings:{name}"))
            .arg(ms(self.policy.grace))
            .arg(remembered.as_ref().map_or("", |r| r.node.as_str()))
            .invoke_async::<Option<Vec<String>>>(&mut conn)
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                debug!(error = %e, %name, "no answer from the cluster registry");
                self.directory.failed();
                // Where it was live last: that node serves it only while
                // it still holds it.
                let last = self.directory.last_live(name, true, self.config.lease);
                if last.is_some() {
                    self.lookups.remembered.inc();
                }
                return last.map(Some).ok_or(RegistryAway);
            }
        };
        if let (Some([unsure]), Some(last)) = (answer.as_deref(), remembered)
            && unsure == "unsure"
        {
            // Redis lost its data: the name's node claims it again (within
            // a lease of its next renewal); until then it is where it was.
            self.lookups.remembered.inc();
            return Ok(Some(last));
        }
        let (located, lasts) = match answer.as_deref() {
            Some([state, node, peer, owner, settings, left]) => {
                let located = Located {
                    node: node.clone(),
                    peer: (!peer.is_empty()).then(|| peer.clone()),
                    owner: owner.clone(),
                    live: state == "live",
                    settings: serde_json::from_str(settings).ok().map(Arc::new),
                };
                (
                    Some(located),
                    Duration::from_millis(left.parse().unwrap_or(0)),
                )
            }
            _ => (None, crate::directory::MAX_AGE),
        };
        self.directory.keep(name, located.clone(), lasts, epoch);
        self.directory
            .learned(name, located.as_ref(), self.config.lease);
        if located.is_none()
            && let Some(last) = self.directory.last_live(name, false, self.config.lease)
        {
            // Redis came back empty: the name's node claims it again
            // within a lease; until then it is where it was.
            self.lookups.remembered.inc();
            return Ok(Some(last));
        }
        Ok(located)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// Forgets what this node kept of `name`: the node it pointed to no
    /// longer serves it.
    pub(crate) fn forget(&self, name: &str) {
        self.directory.changed([name]);
    }

    /// Whether a tunnel live on some node has the index entry `entry`
    /// (`ADAPTER:KEY`).
    pub(crate) async fn indexed(&self, entry: &str) -> Result<bool, RegistryAway> {
        let mut conn = self.link.conn();
        let found = self
            .indexed
            .key(format!("droid:index:{entry}"))
            .arg(entry)
            .invoke_async::<i64>(&mut conn)
            .await;
        found.map(|found| found == 1).map_err(|e| {
            debug!(error = %e, "no answer from the cluster registry");
            RegistryAway
        })
    }

    /// Sends `bytes` to `adapter` on the other nodes.
    pub(crate) async fn broadcast(&self, adapter: &str, bytes: &[u8]) {
        let head = Broadcast {
            node: self.config.node_id.clone(),
            adapter: adapter.to_string(),
        };
        let mut message = serde_json::to_vec(&head).unwrap_or_default();
        message.push(b'\n');
        message.extend_from_slice(bytes);
        let mut conn = self.link.conn();
        if let Err(e) = redis::cmd("PUBLISH")
            .arg(ADAPTERS_CHANNEL)
            .arg(message)
            .query_async::<i64>(&mut conn)
            .await
        {
            warn!(error = %e, %adapter, "could not send an adapter's bytes to the other nodes");
        }
    }

    /// Sets (or with `None` removes) `field` of the adapters' shared map
    /// `map` (`droid:map:MAP`, a hash), best effort.
    pub(crate) async fn map_set(&self, map: &str, field: &str, value: Option<&[u8]>) {
        let mut conn = self.link.conn();
        let key = format!("droid:map:{map}");
        let mut pipe = redis::pipe();
        match value {
            Some(value) => pipe.cmd("HSET").arg(&key).arg(field).arg(value).ignore(),
            None => pipe.cmd("HDEL").arg(&key).arg(field).ignore(),
        };
        // A map nobody writes to for a month goes (a name's owner may have
        // changed, and the new one has a map of its own).
        pipe.cmd("EXPIRE")
            .arg(&key)
            .arg(MAP_LIFETIME.as_secs())
            .ignore();
        let done = pipe.query_async::<()>(&mut conn).await;
        if let Err(e) = done {
            warn!(error = %e, %map, "could not keep an adapter's state in Redis");
        }
    }

    /// Every field of the shared map `map`; `None` while Redis is away.
    pub(crate) async fn map_all(&self, map: &str) -> Option<Vec<(String, Vec<u8>)>> {
        let mut conn = self.link.conn();
        let key = format!("droid:map:{map}");
        match redis::cmd("HGETALL")
            .arg(&key)
            .query_async::<Vec<(String, Vec<u8>)>>(&mut conn)
            .await
        {
            Ok(fields) => Some(fields),
            Err(e) => {
                warn!(error = %e, %map, "could not read an adapter's state from Redis");
                None
            }
        }
    }

    /// Follows the cluster's channels until `shutdown`: names claimed and
    /// released (forgotten from [`crate::directory`]; `events` hears of
    /// claims) and apps' publishes on other nodes. Subscribes again when
    /// the subscription is lost, once a second, or at once on a new master.
    pub(crate) async fn follow(&self, events: &dyn Events, shutdown: CancellationToken) {
        let mut installed = self.link.installed();
        loop {
            installed.borrow_and_update();
            let subscribed = tokio::select! {
                s = self.subscribe() => s,
                () = shutdown.cancelled() => return,
            };
            match subscribed {
                Ok(pubsub) => {
                    self.directory.following(true);
                    debug!("following the cluster's events");
                    let mut messages = pubsub.into_on_message();
                    loop {
                        let message = tokio::select! {
                            m = messages.next() => m,
                            _ = installed.changed() => None,
                            () = shutdown.cancelled() => return,
                        };
                        let Some(message) = message else { break };
                        self.event(
                            message.get_channel_name(),
                            message.get_payload_bytes(),
                            events,
                        );
                    }
                    self.directory.following(false);
                    warn!(
                        "lost the cluster's events; names are asked of Redis until they are back"
                    );
                }
                Err(e) => debug!(error = %e, "cannot follow the cluster's events yet"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let client = self.link.client();
        let connect = client.get_async_pubsub();
        let mut pubsub = tokio::time::timeout(Duration::from_secs(2), connect)
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
            })??;
        pubsub.subscribe(&[NAMES_CHANNEL, ADAPTERS_CHANNEL]).await?;
        Ok(pubsub)
    }

    fn event(&self, channel: &str, payload: &[u8], events: &dyn Events) {
        if channel == ADAPTERS_CHANNEL {
            let Some(split) = payload.iter().position(|&b| b == b'\n') else {
                return;
            };
            match serde_json::from_slice::<Broadcast>(&payload[..split]) {
                Ok(head) if head.node != self.config.node_id => {
                    events.received(&head.adapter, Bytes::copy_from_slice(&payload[split + 1..]));
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "a malformed message on the adapters' channel"),
            }
            return;
        }
        let text = String::from_utf8_lossy(payload);
        let mut words = text.split(' ');
        let (Some(kind), Some(owner)) = (words.next(), words.next()) else {
            return;
        };
        let names: Vec<&str> = words
            .filter_map(|k| k.strip_prefix("droid:name:"))
            .collect();
        self.directory.changed(names.iter().copied());
        for name in names {
            match kind {
                "claim" => events.claimed(owner, name),
                "release" => events.released(name),
                _ => {}
            }
        }
    }

    /// The TLS of the links between the nodes.
    pub(crate) fn peer_tls(&self) -> &PeerTls {
        &self.peer_tls
    }

    /// Claims a session's names on this node, all or none.
    pub async fn claim(&self, claim: &LiveClaim) -> Result<(), ErrorMessage> {
        self.claim_as(claim, false).await
    }

    /// [`Cluster::claim`]; `reasserting` for names this node serves live,
    /// claimed again into a Redis that lost them.
    async fn claim_as(&self, claim: &LiveClaim, reasserting: bool) -> Result<(), ErrorMessage> {
        let keys = &claim.keys;
        let mut invocation = self.claim.prepare_invoke();
        for k in keys {
            invocation.key(key(k));
        }
        invocation
            .arg(&claim.owner)
            .arg(&self.config.node_id)
            .arg(ms(self.policy.grace))
            .arg(ms(self.policy.quarantine))
            .arg(claim.session)
            .arg(if reasserting { "1" } else { "0" })
            .arg(ms(self.config.lease));
        for (settings, index) in claim.settings.iter().zip(&claim.index) {
            invocation.arg(settings).arg(index);
        }
        let mut conn = self.link.conn();
        let answer: Vec<String> = invocation.invoke_async(&mut conn).await.map_err(|e| {
            warn!(error = %e, "the cluster registry did not answer a claim");
            unavailable()
        })?;
        if answer.first().map(String::as_str) == Some("ok") {
            return Ok(());
        }
        let index: usize = answer.first().and_then(|i| i.parse().ok()).unwrap_or(1);
        let name = keys
            .get(index.saturating_sub(1))
            .map_or("?", String::as_str);
        let left = answer
            .get(2)
            .and_then(|m| m.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or_default();
        let what = crate::registry::describe_key(name);
        let taken = |message: String| ErrorMessage {
            code: ErrorCode::NameTaken,
            message,
        };
        debug!(%name, why = ?answer.get(1), "the cluster refused a claim");
        Err(match answer.get(1).map(String::as_str) {
            Some("live") => taken(format!("{what} is in use by another client")),
            Some("resuming") => taken(format!(
                "{what} belongs to a client that is reconnecting; it is held for it for {} more",
                crate::registry::human(left)
            )),
            Some("settling") => ErrorMessage {
                code: ErrorCode::Unavailable,
                message: format!(
                    "this service's registry is taking back the names in use after a fault; new names wait {}",
                    crate::registry::human(left)
                ),
            },
            Some("elsewhere") => ErrorMessage {
                code: ErrorCode::Unavailable,
                message: format!(
                    "{what} is still served by another server of this service; try again in {}",
                    crate::registry::human(left)
                ),
            },
            _ => taken(format!(
                "{what} was in use recently and is kept for its previous owner"
            )),
        })
    }

    /// The TCP ports live on other nodes; `None` while Redis is away.
    pub(crate) async fn ports_elsewhere(&self) -> Option<Vec<u16>> {
        let mut conn = self.link.conn();
        let mut ports = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("droid:name:tcp:*")
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .ok()?;
            if !keys.is_empty() {
                let mut invocation = self.live_elsewhere.prepare_invoke();
                for k in &keys {
                    invocation.key(k);
                }
                invocation.arg(&self.config.node_id);
                let live: Vec<String> = invocation.invoke_async(&mut conn).await.ok()?;
                ports.extend(
                    live.iter()
                        .filter_map(|k| k.strip_prefix("droid:name:tcp:")?.parse::<u16>().ok()),
                );
            }
            if next == 0 {
                return Some(ports);
            }
            cursor = next;
        }
    }

    /// The lease's length.
    pub(crate) fn lease(&self) -> Duration {
        self.config.lease
    }

    /// Lets a session's names be claimed by their owner on another node
    /// while this one still serves them: this node drains and has told the
    /// client to move. Best effort: while Redis is away the client's claim
    /// elsewhere waits as it would anyway.
    pub(crate) async fn let_move(&self, claim: &LiveClaim) {
        let mut invocation = self.let_move.prepare_invoke();
        for k in &claim.keys {
            invocation.key(key(k));
        }
        invocation
            .arg(&claim.owner)
            .arg(&self.config.node_id)
            .arg(claim.session);
        let mut conn = self.link.conn();
        if let Err(e) = invocation.invoke_async::<i64>(&mut conn).await {
            warn!(error = %e, "could not let a client's names move; they move when this node's session ends");
        }
    }

    /// Releases the names a session held live here: held for its owner
    /// alone for the grace period first, unless it said goodbye. While
    /// Redis is away, the release waits and is retried.
    pub async fn release(&self, claim: LiveClaim, clean: bool) {
        self.release_or_keep(Release { claim, clean }).await;
    }

    async fn release_or_keep(&self, release: Release) {
        let mut invocation = self.release.prepare_invoke();
        for k in &release.claim.keys {
            invocation.key(key(k));
        }
        let grace = if release.clean {
            Duration::ZERO
        } else {
            self.policy.grace
        };
        invocation
            .arg(&release.claim.owner)
            .arg(&self.config.node_id)
            .arg(ms(grace))
            .arg(ms(self.policy.quarantine))
            .arg(release.claim.session);
        let mut conn = self.link.conn();
        if let Err(e) = invocation.invoke_async::<i64>(&mut conn).await {
            warn!(error = %e, "could not release names in the cluster registry; retrying with the next lease renewal");
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn passwords_are_masked_in_every_kind_of_url() {
        assert_eq!(masked("redis://u:pw@h:6379"), "redis://u:***@h:6379");
        assert_eq!(
            masked("redis+sentinel://u:pw@h1:26379,h2:26379/m"),
            "redis+sentinel://u:***@h1:26379,h2:26379/m"
        );
        assert_eq!(masked("redis://h:6379"), "redis://h:6379");
    }
}
