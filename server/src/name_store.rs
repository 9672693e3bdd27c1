//! Names that outlive the process.
//!
//! The registry lives in memory; with a [`NameStore`] it also writes down,
//! as each change happens, who owns each name it holds (a hash of the
//! resume secret, never the secret) and until when it is kept. A server
//! started on the same store reads them back: every name its owners may
//! still come back for is kept from strangers, and its owner gets it back
//! with its resume secret, as if the server had never stopped.
//!
//! [`RedbNames`] keeps them in one redb file (`droid server --state DIR`).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// A name (or a TCP port's key) as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedName {
    /// The registry's key: a name, or a TCP port's key.
    pub key: String,
    /// Its owner: the hash of the resume secret ([`crate::registry::owner_id`]).
    pub owner: String,
    /// How it was held when saved.
    pub held: Held,
}

/// How a saved name was held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// A session served it.
    Live,
    /// Kept for its owner until then (it was resuming or quarantined).
    Until(SystemTime),
}

/// One change to write down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameChange {
    /// The name is held as this now.
    Keep(SavedName),
    /// The name is free: forget it.
    Forget(String),
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's directory or file could not be made or opened.
    #[error("cannot open the name store {path}: {reason}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A read or a write failed.
    #[error("the name store failed: {0}")]
    Io(String),
}

/// Where the registry writes down the names it holds.
pub trait NameStore: Send + Sync + std::fmt::Debug {
    /// Every name kept, as last saved.
    fn load(&self) -> Result<Vec<SavedName>, StoreError>;

    /// Writes `changes` at once, durably (on disk when this returns).
    fn save(&self, changes: &[NameChange]) -> Result<(), StoreError>;
}

const NAMES: TableDefinition<&str, &[u8]> = TableDefinition::new("names");

/// A record's value in the table.
#[derive(Serialize, Deserialize)]
struct Record {
    owner: String,
    /// Milliseconds since the Unix epoch; absent while live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until_ms: Option<u64>,
}

/// Names in one redb file, `names.redb` in the state directory.
pub struct RedbNames {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbNames")
            .field("path", &self.path)
            .finish()
    }
}

impl RedbNames {
    /// Opens (or makes) `dir/names.redb`. Another process holding it is an
    /// error: two servers must not share one state directory.
    pub fn open(dir: &Path) -> Result<RedbNames, StoreError> {
        let path = dir.join("names.redb");
        let open_error = |reason: String| StoreError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_error(e.to_string()))?;
        let db = Database::create(&path).map_err(|e| open_error(e.to_string()))?;
        // Make the table, so the first read finds it.
        let write = db.begin_write().map_err(|e| open_error(e.to_string()))?;
        write
            .open_table(NAMES)
            .map_err(|e| open_error(e.to_string()))?;
        write.commit().map_err(|e| open_error(e.to_string()))?;
        Ok(RedbNames { db, path })
    }

    /// The file it keeps the names in.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl NameStore for RedbNames {
    fn load(&self) -> Result<Vec<SavedName>, StoreError> {
        let read = self.db.begin_read().map_err(io)?;
        let table = read.open_table(NAMES).map_err(io)?;
        let mut names = Vec::new();
        for entry in table.iter().map_err(io)? {
            let (key, value) = entry.map_err(io)?;
            // A record this version cannot read is skipped, not fatal: the
            // rest still keep their promise.
            let Ok(record) = serde_json::from_slice::<Record>(value.value()) else {
                tracing::warn!(key = key.value(), "unreadable name record skipped");
                continue;
            };
            names.push(SavedName {
                key: key.value().to_string(),
                owner: record.owner,
                held: match record.until_ms {
                    None => Held::Live,
                    Some(ms) => Held::Until(UNIX_EPOCH + Duration::from_millis(ms)),
                },
            });
        }
        Ok(names)
    }

    fn save(&self, changes: &[NameChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let write = self.db.begin_write().map_err(io)?;
        {
            let mut table = write.open_table(NAMES).map_err(io)?;
            for change in changes {
                match change {
                    NameChange::Keep(saved) => {
                        let record = Record {
                            owner: saved.owner.clone(),
                            until_ms: match saved.held {
                                Held::Live => None,
                                Held::Until(t) => Some(to_ms(t)),
                            },
                        };
                        let value = serde_json::to_vec(&record).map_err(io)?;
                        table
                            .insert(saved.key.as_str(), value.as_slice())
                            .map_err(io)?;
                    }
                    NameChange::Forget(key) => {
                        table.remove(key.as_str()).map_err(io)?;
                    }
                }
            }
        }
        write.commit().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_back_as_saved_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let until = UNIX_EPOCH + Duration::from_millis(1_900_000_000_000);
        let kept = |key: &str, held| SavedName {
            key: key.into(),
            owner: format!("owner-of-{key}"),
            held,
        };
        {
            let store = RedbNames::open(dir.path()).unwrap();
            store
                .save(&[
                    NameChange::Keep(kept("api", Held::Live)),
                    NameChange::Keep(kept("old", Held::Until(until))),
                    NameChange::Keep(kept("gone", Held::Live)),
                ])
                .unwrap();
            store.save(&[NameChange::Forget("gone".into())]).unwrap();
        }
        let store = RedbNames::open(dir.path()).unwrap();
        let mut names = store.load().unwrap();
        names.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(
            names,
            vec![kept("api", Held::Live), kept("old", Held::Until(until))]
        );
    }
}
