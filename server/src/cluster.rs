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

use std::sync::Mutex;
use std::time::Duration;

use droid_core::protocol::{ErrorCode, ErrorMessage};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::NamePolicy;

/// How a node joins a cluster. Its `Debug` masks the secret.
#[derive(Clone)]
pub struct ClusterConfig {
    /// Redis, `redis://HOST:PORT`.
    pub redis: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// How long a node's names stay live without a renewal of its lease.
    pub lease: Duration,
    /// Where the other nodes reach this one's peer port (`--peer`), if it
    /// takes requests for its tunnels from them.
    pub peer: Option<String>,
    /// What nodes prove to each other on the peer port.
    pub secret: String,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &self.redis)
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

/// What the script's `now` is, in milliseconds, from Redis's clock.
const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

/// KEYS: name records. ARGV: owner, node, grace ms, quarantine ms,
/// session. Returns {'ok'} or {index, why, ms left}.
const CLAIM: &str = r"
local owner, node = ARGV[1], ARGV[2]
local grace, quarantine = tonumber(ARGV[3]), tonumber(ARGV[4])
local session = ARGV[5]
for i, key in ipairs(KEYS) do
  local r = redis.call('HMGET', key, 'owner', 'node', 'state', 'resume_until', 'until')
  if r[1] then
    local state, resume_until, until_ = r[3], tonumber(r[4]) or 0, tonumber(r[5]) or 0
    if state == 'live' then
      local lease = tonumber(redis.call('ZSCORE', 'droid:nodes', r[2])) or 0
      if lease >= now then
        if r[1] ~= owner then return {tostring(i), 'live', '0'} end
        if r[2] ~= node then return {tostring(i), 'elsewhere', tostring(lease - now)} end
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
for _, key in ipairs(KEYS) do
  redis.call('HSET', key, 'owner', owner, 'node', node, 'session', session, 'state', 'live', 'resume_until', 0, 'until', 0)
  redis.call('PERSIST', key)
end
return {'ok'}
";

/// KEYS: name records. ARGV: owner, node, grace ms (0: said goodbye),
/// quarantine ms, session. Released only where this very session still
/// holds them (a late retry never releases a newer session's names).
const RELEASE: &str = r"
local owner, node = ARGV[1], ARGV[2]
local grace, quarantine = tonumber(ARGV[3]), tonumber(ARGV[4])
local session = ARGV[5]
for _, key in ipairs(KEYS) do
  local r = redis.call('HMGET', key, 'owner', 'node', 'state', 'session')
  if r[1] == owner and r[2] == node and r[3] == 'live' and r[4] == session then
    local resume_until = now + grace
    local until_ = resume_until + quarantine
    redis.call('HSET', key, 'state', 'released', 'resume_until', resume_until, 'until', until_)
    redis.call('PEXPIREAT', key, until_)
  end
end
return 1
";

/// ARGV: node, lease ms, peer address ('' for none). Returns 1 when
/// Redis did not know the node (its first lease, or Redis lost its data).
const RENEW: &str = r"
local added = redis.call('ZADD', 'droid:nodes', now + tonumber(ARGV[2]), ARGV[1])
if ARGV[3] ~= '' then redis.call('HSET', 'droid:peers', ARGV[1], ARGV[3]) end
return added
";

/// One session's live names, as a node re-asserts them.
#[derive(Debug, Clone)]
pub struct LiveClaim {
    /// Its names (and TCP ports' keys).
    pub keys: Vec<String>,
    /// Their owner (the hash of the resume secret).
    pub owner: String,
    /// The session serving them.
    pub session: u64,
}

/// KEYS: a name record. ARGV: this node. The peer address of the other
/// node that serves the name live under a running lease, or nil.
const PEER_OF: &str = r"
local r = redis.call('HMGET', KEYS[1], 'node', 'state')
if r[2] ~= 'live' or r[1] == ARGV[1] then return false end
local lease = tonumber(redis.call('ZSCORE', 'droid:nodes', r[1])) or 0
if lease < now then return false end
return redis.call('HGET', 'droid:peers', r[1])
";

/// A node's handle on the cluster registry. Cheap to share behind an `Arc`.
pub struct Cluster {
    conn: ConnectionManager,
    config: ClusterConfig,
    policy: NamePolicy,
    claim: redis::Script,
    release: redis::Script,
    renew: redis::Script,
    peer_of: redis::Script,
    /// Releases Redis did not take, retried with each lease renewal.
    pending: Mutex<Vec<Release>>,
}

/// One session's release, as the script takes it.
#[derive(Clone)]
struct Release {
    keys: Vec<String>,
    owner: String,
    session: u64,
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
        let failed = |reason: String| ClusterError {
            redis: redis.clone(),
            reason,
        };
        let client =
            redis::Client::open(config.redis.as_str()).map_err(|e| failed(e.to_string()))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = client
            .get_connection_manager_with_config(manager)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let cluster = Cluster {
            conn,
            config,
            policy,
            claim: script(CLAIM),
            release: script(RELEASE),
            renew: script(RENEW),
            peer_of: script(PEER_OF),
            pending: Mutex::new(Vec::new()),
        };
        // A node back within its old lease may find itself known: its old
        // names are then released by the lease's end, as for a dead node.
        cluster
            .renew_once()
            .await
            .map_err(|e| failed(e.to_string()))?;
        info!(node = %cluster.config.node_id, redis = %cluster.config.redis, "joined the cluster");
        Ok(cluster)
    }

    /// Renews the lease; true when Redis did not know this node.
    async fn renew_once(&self) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        self.renew
            .arg(&self.config.node_id)
            .arg(ms(self.config.lease))
            .arg(self.config.peer.as_deref().unwrap_or(""))
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
            match self.renew_once().await {
                Ok(forgotten) => {
                    if forgotten {
                        self.reassert(live()).await;
                    }
                    self.retry_releases().await;
                }
                Err(e) => {
                    warn!(error = %e, "could not renew this node's lease; its tunnels go on while Redis is away");
                }
            }
        }
    }

    /// Claims again the names this node serves, into a Redis that lost them.
    async fn reassert(&self, live: Vec<LiveClaim>) {
        let names: usize = live.iter().map(|c| c.keys.len()).sum();
        warn!(
            names,
            "Redis no longer knew this node (restarted without its data?); claiming its names again"
        );
        for claim in live {
            if let Err(e) = self.claim(&claim.keys, &claim.owner, claim.session).await {
                warn!(keys = ?claim.keys, reason = %e.message, "a name this node serves could not be claimed again");
            }
        }
    }

    async fn retry_releases(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        for release in pending {
            self.release_or_keep(release).await;
        }
    }

    /// The peer address of the other node that serves `name` now, if one
    /// does (`None` too while Redis is away).
    pub async fn peer_of(&self, name: &str) -> Option<String> {
        let mut conn = self.conn.clone();
        match self
            .peer_of
            .key(key(name))
            .arg(&self.config.node_id)
            .invoke_async::<Option<String>>(&mut conn)
            .await
        {
            Ok(peer) => peer,
            Err(e) => {
                debug!(error = %e, %name, "no answer from the cluster registry");
                None
            }
        }
    }

    /// What nodes prove to each other on the peer port.
    pub(crate) fn secret(&self) -> &str {
        &self.config.secret
    }

    /// Claims `keys` for `owner`'s `session` on this node, all or none.
    pub async fn claim(
        &self,
        keys: &[String],
        owner: &str,
        session: u64,
    ) -> Result<(), ErrorMessage> {
        let mut invocation = self.claim.prepare_invoke();
        for k in keys {
            invocation.key(key(k));
        }
        invocation
            .arg(owner)
            .arg(&self.config.node_id)
            .arg(ms(self.policy.grace))
            .arg(ms(self.policy.quarantine))
            .arg(session);
        let mut conn = self.conn.clone();
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

    /// Releases `keys` that `owner`'s `session` held live here: held for it
    /// alone for the grace period first, unless it said goodbye. While
    /// Redis is away, the release waits and is retried.
    pub async fn release(&self, keys: Vec<String>, owner: &str, session: u64, clean: bool) {
        let release = Release {
            keys,
            owner: owner.to_string(),
            session,
            clean,
        };
        self.release_or_keep(release).await;
    }

    async fn release_or_keep(&self, release: Release) {
        let mut invocation = self.release.prepare_invoke();
        for k in &release.keys {
            invocation.key(key(k));
        }
        let grace = if release.clean {
            Duration::ZERO
        } else {
            self.policy.grace
        };
        invocation
            .arg(&release.owner)
            .arg(&self.config.node_id)
            .arg(ms(grace))
            .arg(ms(self.policy.quarantine))
            .arg(release.session);
        let mut conn = self.conn.clone();
        if let Err(e) = invocation.invoke_async::<i64>(&mut conn).await {
            warn!(error = %e, "could not release names in the cluster registry; retrying with the next lease renewal");
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(release);
        }
    }
}
