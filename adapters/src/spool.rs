//! The durable spool: messages the app could not take yet, kept on disk and
//! retried until they are delivered or given up.
//!
//! Layout under the spool directory:
//! - `queue/ID.eml` (the raw message) and `queue/ID.json` (its [`Meta`]:
//!   owner, destination, options, envelope, attempts, next attempt). The
//!   `.json` is the commit mark: it is written after the `.eml`.
//! - `dead/ID.eml`, `dead/ID.json` and `dead/ID.reason.txt`: dead letters.
//! - `tmp/`: files being written; emptied on open.
//!
//! Every file is written to `tmp/`, fsynced, renamed into place, and the
//! directory fsynced, so once [`Spool::store`] returns the message survives a
//! crash. That is when the SMTP adapter may answer `250`.
//!
//! [`Spool::run`] retries with exponential back-off ([`RetryPolicy`]), at
//! once after [`Spool::wake`] (call it when an owner's tunnel reconnects),
//! and for everything after [`Spool::open`] (a restart is a good moment to
//! try). The delivery id stays the same on every attempt. An app's 4xx
//! (other than 408/429) or an owner that does not come back within
//! [`RetryPolicy::max_age`] sends the message to `dead/`, with the reason.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::delivery::{Attempt, Content, Delivery};
use crate::route::Owners;
use crate::stats::DeliveryStats;

/// How retries are spaced and when they stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failed attempt; it doubles after each one.
    pub first_delay: Duration,
    /// The longest wait between two attempts.
    pub max_delay: Duration,
    /// How long after receipt a message is given up (dead-lettered).
    pub max_age: Duration,
}

impl Default for RetryPolicy {
    /// 1 minute, doubling up to 1 hour between attempts, for 3 days.
    fn default() -> RetryPolicy {
        RetryPolicy {
            first_delay: Duration::from_secs(60),
            max_delay: Duration::from_secs(3600),
            max_age: Duration::from_secs(3 * 24 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The wait after `attempts` failed attempts (1 for the first).
    pub fn delay(&self, attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(30));
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Spool limits and behaviour.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Total size of queued messages; beyond it [`Spool::store`] says Full.
    pub max_bytes: u64,
    /// Number of queued messages; beyond it [`Spool::store`] says Full.
    pub max_messages: usize,
    /// The share of one owner (one tunnel's name and its owner): its
    /// messages and bytes queued at most. Past it that owner's mail gets
    /// 451, and every other owner's is kept as before: one abandoned name
    /// flooded with mail cannot fill the spool for the others.
    pub max_messages_per_owner: usize,
    /// See [`SpoolConfig::max_messages_per_owner`].
    pub max_bytes_per_owner: u64,
    /// Retry spacing.
    pub retry: RetryPolicy,
    /// Time allowed for one delivery attempt.
    pub deliver_timeout: Duration,
    /// Attempts in flight at once.
    pub concurrency: usize,
}

impl Default for SpoolConfig {
    fn default() -> SpoolConfig {
        SpoolConfig {
            max_bytes: 1 << 30,
            max_messages: 10_000,
            max_messages_per_owner: 1_000,
            max_bytes_per_owner: 100 << 20,
            retry: RetryPolicy::default(),
            deliver_timeout: Duration::from_secs(30),
            concurrency: 8,
        }
    }
}

/// Why the spool could not take or keep a message.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The spool is at its size or count limit: answer 451.
    #[error("spool full ({messages} messages, {bytes} bytes)")]
    Full {
        /// Messages queued.
        messages: usize,
        /// Bytes queued.
        bytes: u64,
    },
    /// The owner's share of the spool is used up: answer 451 (the other
    /// owners' mail is still kept).
    #[error(
        "this address's share of the spool is used up ({messages} messages, {bytes} bytes waiting for its app)"
    )]
    OwnerFull {
        /// The owner's messages queued.
        messages: usize,
        /// The owner's bytes queued.
        bytes: u64,
    },
    /// A file operation failed.
    #[error("spool {op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// What the spool records beside each message (`ID.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    /// Format version of this record.
    pub version: u32,
    /// The delivery id, also the file name.
    pub id: String,
    /// The owner key the message belongs to.
    pub owner: String,
    /// The readable destination.
    pub destination: String,
    /// What the POST is made of (older records: a mail's `options` and
    /// `envelope`, which is still how a mail is kept).
    #[serde(flatten)]
    pub content: Content,
    /// Attempts made so far (the one during the SMTP session included).
    pub attempts: u32,
    /// Unix milliseconds when the message was spooled.
    pub created_at_ms: u64,
    /// Unix milliseconds of the next attempt.
    pub next_attempt_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Size of the raw message.
    pub size: u64,
}

struct Entry {
    meta: Meta,
    in_flight: bool,
    /// A wake-up came while an attempt was in flight: retry at once after it.
    woken: bool,
}

#[derive(Default)]
struct State {
    entries: HashMap<String, Entry>,
    bytes: u64,
    /// Messages and bytes queued per owner.
    owners: HashMap<String, (usize, u64)>,
}

impl State {
    /// Queues `meta`'s entry and counts it.
    fn add(&mut self, meta: Meta, in_flight: bool) {
        self.bytes += meta.size;
        let owner = self.owners.entry(meta.owner.clone()).or_default();
        owner.0 += 1;
        owner.1 += meta.size;
        self.entries.insert(
            meta.id.clone(),
            Entry {
                meta,
                in_flight,
                woken: false,
            },
        );
    }

    /// Removes the entry `id`, if queued, and uncounts it.
    fn remove(&mut self, id: &str) {
        let Some(entry) = self.entries.remove(id) else {
            return;
        };
        let size = entry.meta.size;
        self.bytes = self.bytes.saturating_sub(size);
        if let Some(owner) = self.owners.get_mut(&entry.meta.owner) {
            owner.0 = owner.0.saturating_sub(1);
            owner.1 = owner.1.saturating_sub(size);
            if owner.0 == 0 {
                self.owners.remove(&entry.meta.owner);
            }
        }
    }
}

/// The durable spool. Share it as `Arc<Spool>`; run [`Spool::run`] once.
pub struct Spool {
    dir: PathBuf,
    config: SpoolConfig,
    state: Mutex<State>,
    notify: Notify,
    stats: DeliveryStats,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + use<> {
    let path = path.to_path_buf();
    move |source| SpoolError::Io { op, path, source }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync dir", dir))
}

/// Writes `bytes` to `tmp/`, fsyncs, renames to `target` (no dir fsync).
fn write_atomic(tmp_dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tmp_dir.join(format!("{name}.{}", ulid::Ulid::generate()));
    let result = (|| {
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, target).map_err(io_err("rename", target))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` and picks up every
    /// message queued there, due at once. Half-written files from a crash
    /// are removed (their senders never got a `250`).
    pub fn open(dir: impl Into<PathBuf>, config: SpoolConfig) -> Result<Arc<Spool>, SpoolError> {
        let dir = dir.into();
        let spool = Spool {
            dir,
            config,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            stats: DeliveryStats::default(),
        };
        for sub in [spool.queue_dir(), spool.dead_dir(), spool.tmp_dir()] {
            fs::create_dir_all(&sub).map_err(io_err("create dir", &sub))?;
        }
        // The records hold mail and the tunnels' signing secrets: only the
        // owner may enter the spool.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&spool.dir, fs::Permissions::from_mode(0o700))
                .map_err(io_err("restrict", &spool.dir))?;
        }
        let tmp = spool.tmp_dir();
        for entry in fs::read_dir(&tmp)
            .map_err(io_err("read dir", &tmp))?
            .flatten()
        {
            let _ = fs::remove_file(entry.path());
        }
        let queue = spool.queue_dir();
        let now = now_ms();
        let mut state = State::default();
        let mut names: Vec<PathBuf> = fs::read_dir(&queue)
            .map_err(io_err("read dir", &queue))?
            .flatten()
            .map(|e| e.path())
            .collect();
        names.sort();
        for path in &names {
            let Some(id) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => {
                    let eml = queue.join(format!("{id}.eml"));
                    let meta = fs::read(path)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<Meta>(&b).ok());
                    match meta {
                        Some(mut meta) if eml.exists() && valid_id(&meta.id) && meta.id == id => {
                            meta.next_attempt_ms = now;
                            state.add(meta, false);
                        }
                        _ => {
                            tracing::error!(path = %path.display(), "unreadable spool record, moved to dead/");
                            let _ = fs::rename(path, spool.dead_dir().join(format!("{id}.json")));
                            if eml.exists() {
                                let _ =
                                    fs::rename(&eml, spool.dead_dir().join(format!("{id}.eml")));
                            }
                        }
                    }
                }
                Some("eml") if !queue.join(format!("{id}.json")).exists() => {
                    if spool.dead_dir().join(format!("{id}.json")).exists() {
                        // A crash in the middle of dead-lettering: finish it.
                        let _ = fs::rename(path, spool.dead_dir().join(format!("{id}.eml")));
                    } else {
                        // Written but never committed: its sender got no 250.
                        let _ = fs::remove_file(path);
                    }
                }
                _ => {}
            }
        }
        if !state.entries.is_empty() {
            tracing::info!(
                messages = state.entries.len(),
                bytes = state.bytes,
                "spool picked up queued messages"
            );
        }
        *spool.lock() = state;
        Ok(Arc::new(spool))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn queue_dir(&self) -> PathBuf {
        self.dir.join("queue")
    }

    /// Where dead letters go.
    pub fn dead_dir(&self) -> PathBuf {
        self.dir.join("dead")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes of the messages queued now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// When the oldest message queued now was received.
    pub fn oldest(&self) -> Option<SystemTime> {
        self.lock()
            .entries
            .values()
            .map(|e| e.meta.created_at_ms)
            .min()
            .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
    }

    /// What this spool's deliveries came to; an adapter with this spool
    /// counts into the same counters.
    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &SpoolConfig {
        &self.config
    }

    /// Writes `delivery` durably (fsynced) and schedules its retries.
    /// `last_error` says why the first attempt failed. When this returns
    /// `Ok`, the SMTP adapter may answer `250`.
    pub async fn store(
        self: &Arc<Self>,
        delivery: &Delivery,
        last_error: &str,
    ) -> Result<(), SpoolError> {
        let now = now_ms();
        let size = delivery.raw.len() as u64;
        let meta = Meta {
            version: 1,
            id: delivery.id.clone(),
            owner: delivery.owner.clone(),
            destination: delivery.destination.clone(),
            content: delivery.content.clone(),
            attempts: 1,
            created_at_ms: now,
            next_attempt_ms: now.saturating_add(ms(self.config.retry.delay(1))),
            last_error: Some(last_error.to_string()),
            size,
        };
        {
            let mut state = self.lock();
            let (messages, bytes) = state.owners.get(&meta.owner).copied().unwrap_or((0, 0));
            if messages >= self.config.max_messages_per_owner
                || bytes.saturating_add(size) > self.config.max_bytes_per_owner
            {
                return Err(SpoolError::OwnerFull { messages, bytes });
            }
            if state.entries.len() >= self.config.max_messages
                || state.bytes.saturating_add(size) > self.config.max_bytes
                || state.entries.contains_key(&meta.id)
                || !valid_id(&meta.id)
            {
                return Err(SpoolError::Full {
                    messages: state.entries.len(),
                    bytes: state.bytes,
                });
            }
            state.add(meta.clone(), true);
        }
        let spool = self.clone();
        let raw = delivery.raw.clone();
        let record = meta.clone();
        let written = tokio::task::spawn_blocking(move || spool.write_entry(&record, &raw)).await;
        let written = match written {
            Ok(result) => result,
            Err(join) => Err(SpoolError::Io {
                op: "write",
                path: self.queue_dir(),
                source: std::io::Error::other(join.to_string()),
            }),
        };
        let mut state = self.lock();
        match written {
            Ok(()) => {
                if let Some(entry) = state.entries.get_mut(&meta.id) {
                    entry.in_flight = false;
                }
                drop(state);
                tracing::info!(id = %meta.id, owner = %meta.owner, destination = %meta.destination, error = last_error, "spooled for retry");
                self.notify.notify_one();
                Ok(())
            }
            Err(error) => {
                state.remove(&meta.id);
                Err(error)
            }
        }
    }

    fn write_entry(&self, meta: &Meta, raw: &[u8]) -> Result<(), SpoolError> {
        let queue = self.queue_dir();
        let tmp = self.tmp_dir();
        let json = serde_json::to_vec_pretty(meta).unwrap_or_default();
        let eml = queue.join(format!("{}.eml", meta.id));
        write_atomic(&tmp, &eml, raw)?;
        if let Err(e) = write_atomic(&tmp, &queue.join(format!("{}.json", meta.id)), &json) {
            let _ = fs::remove_file(&eml);
            return Err(e);
        }
        sync_dir(&queue)
    }

    /// Makes every message of `owner` due now (its tunnel is back).
    pub fn wake(&self, owner: &str) {
        let now = now_ms();
        let mut woke = 0;
        for entry in self
            .lock()
            .entries
            .values_mut()
            .filter(|e| e.meta.owner == owner)
        {
            if entry.in_flight {
                entry.woken = true;
            } else {
                entry.meta.next_attempt_ms = now;
            }
            woke += 1;
        }
        if woke > 0 {
            tracing::debug!(owner, messages = woke, "spool woken");
            self.notify.notify_one();
        }
    }

    /// Makes every queued message due now.
    pub fn wake_all(&self) {
        let now = now_ms();
        for entry in self.lock().entries.values_mut() {
            if entry.in_flight {
                entry.woken = true;
            } else {
                entry.meta.next_attempt_ms = now;
            }
        }
        self.notify.notify_one();
    }

    /// Retries queued messages until `shutdown` is cancelled, asking
    /// `router` for the owner's sink at each attempt. Attempts in flight at
    /// shutdown are abandoned: their messages stay queued (at least once).
    pub async fn run(self: Arc<Self>, router: Arc<dyn Owners>, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        let concurrency = self.config.concurrency.max(1);
        loop {
            let now = now_ms();
            let mut wait = Duration::from_secs(3600);
            if tasks.len() < concurrency {
                let due: Vec<Meta> = {
                    let mut state = self.lock();
                    let mut due: Vec<&mut Entry> = state
                        .entries
                        .values_mut()
                        .filter(|e| !e.in_flight && e.meta.next_attempt_ms <= now)
                        .collect();
                    due.sort_by_key(|e| e.meta.next_attempt_ms);
                    due.into_iter()
                        .take(concurrency - tasks.len())
                        .map(|e| {
                            e.in_flight = true;
                            e.woken = false;
                            e.meta.clone()
                        })
                        .collect()
                };
                for meta in due {
                    tasks.spawn(self.clone().attempt(meta, router.clone()));
                }
                if tasks.len() < concurrency {
                    let next = self
                        .lock()
                        .entries
                        .values()
                        .filter(|e| !e.in_flight)
                        .map(|e| e.meta.next_attempt_ms)
                        .min();
                    if let Some(next) = next {
                        wait = Duration::from_millis(next.saturating_sub(now_ms()));
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        tasks.abort_all();
    }

    async fn attempt(self: Arc<Self>, mut meta: Meta, router: Arc<dyn Owners>) {
        let eml = self.queue_dir().join(format!("{}.eml", meta.id));
        let raw = match tokio::fs::read(&eml).await {
            Ok(raw) => Bytes::from(raw),
            Err(error) => {
                tracing::error!(id = %meta.id, %error, "spooled message vanished");
                self.lock().remove(&meta.id);
                return;
            }
        };
        let delivery = Delivery {
            id: meta.id.clone(),
            owner: meta.owner.clone(),
            destination: meta.destination.clone(),
            content: meta.content.clone(),
            raw,
        };
        let outcome = match router.sink(&meta.owner).await {
            Some(sink) => delivery.attempt(&*sink, self.config.deliver_timeout).await,
            None => Attempt::Retry {
                reason: "owner offline".into(),
            },
        };
        let spool = self.clone();
        match outcome {
            Attempt::Accepted => {
                self.stats.delivered.inc();
                tracing::info!(id = %meta.id, destination = %meta.destination, attempts = meta.attempts + 1, "spooled message delivered");
                let id = meta.id.clone();
                let _ = tokio::task::spawn_blocking(move || spool.remove_files(&id)).await;
                self.forget(&meta);
            }
            Attempt::Rejected { status, reason } => {
                let why = format!("the app rejected the message with HTTP {status}: {reason}");
                let record = meta.clone();
                let _ = tokio::task::spawn_blocking(move || spool.dead_letter(&record, &why)).await;
                self.forget(&meta);
            }
            Attempt::Retry { reason } => {
                meta.attempts += 1;
                let now = now_ms();
                let next = now.saturating_add(ms(self.config.retry.delay(meta.attempts)));
                meta.last_error = Some(reason.clone());
                if next.saturating_sub(meta.created_at_ms) > ms(self.config.retry.max_age) {
                    let why = format!(
                        "gave up after {} attempts over {:?}; last error: {reason}",
                        meta.attempts,
                        Duration::from_millis(now.saturating_sub(meta.created_at_ms))
                    );
                    let record = meta.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || spool.dead_letter(&record, &why)).await;
                    self.forget(&meta);
                    return;
                }
                meta.next_attempt_ms = next;
                tracing::debug!(id = %meta.id, attempts = meta.attempts, %reason, "delivery retry failed");
                let record = meta.clone();
                let persisted = tokio::task::spawn_blocking(move || {
                    let path = spool.queue_dir().join(format!("{}.json", record.id));
                    write_atomic(
                        &spool.tmp_dir(),
                        &path,
                        &serde_json::to_vec_pretty(&record).unwrap_or_default(),
                    )
                })
                .await;
                if let Ok(Err(error)) = persisted {
                    tracing::warn!(id = %meta.id, %error, "could not record the attempt");
                }
                let mut state = self.lock();
                if let Some(entry) = state.entries.get_mut(&meta.id) {
                    if entry.woken {
                        meta.next_attempt_ms = now;
                    }
                    entry.meta = meta;
                    entry.in_flight = false;
                    entry.woken = false;
                }
                drop(state);
                self.notify.notify_one();
            }
        }
    }

    fn forget(&self, meta: &Meta) {
        self.lock().remove(&meta.id);
    }

    fn remove_files(&self, id: &str) {
        let queue = self.queue_dir();
        let _ = fs::remove_file(queue.join(format!("{id}.json")));
        let _ = fs::remove_file(queue.join(format!("{id}.eml")));
        let _ = sync_dir(&queue);
    }

    /// Moves a message to `dead/` with its reason. Order matters for crash
    /// safety: reason, then record, then message (see [`Spool::open`]).
    fn dead_letter(&self, meta: &Meta, reason: &str) {
        self.stats.dead_lettered.inc();
        let queue = self.queue_dir();
        let dead = self.dead_dir();
        let id = &meta.id;
        tracing::warn!(%id, owner = %meta.owner, destination = %meta.destination, reason, "message dead-lettered");
        let record = serde_json::to_vec_pretty(meta).unwrap_or_default();
        let steps = write_atomic(
            &self.tmp_dir(),
            &dead.join(format!("{id}.reason.txt")),
            format!("{reason}\n").as_bytes(),
        )
        .and_then(|()| write_atomic(&self.tmp_dir(), &dead.join(format!("{id}.json")), &record))
        .and_then(|()| {
            let _ = fs::remove_file(queue.join(format!("{id}.json")));
            fs::rename(
                queue.join(format!("{id}.eml")),
                dead.join(format!("{id}.eml")),
            )
            .map_err(io_err("rename", &dead))
        })
        .and_then(|()| sync_dir(&dead))
        .and_then(|()| sync_dir(&queue));
        if let Err(error) = steps {
            tracing::error!(%id, %error, "dead-lettering failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(1), Duration::from_secs(60));
        assert_eq!(p.delay(2), Duration::from_secs(120));
        assert_eq!(p.delay(7), Duration::from_secs(3600));
        assert_eq!(p.delay(1000), Duration::from_secs(3600));
    }
}
