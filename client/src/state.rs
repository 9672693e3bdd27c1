//! The resume secret and names, kept in the user's state directory.
//!
//! A client that crashes or is killed, and is started again by the same user
//! with the same command, reads its secret back and reclaims its names at
//! once. The record is locked while a client uses it, so a second copy of the
//! same command running beside the first starts afresh instead of taking the
//! first one's names.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

/// What is remembered between runs of one command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    /// The resume secret from the last welcome.
    pub secret: Option<String>,
    /// The names granted, one per tunnel, in order.
    pub names: Vec<String>,
    /// The secret that signs mail deliveries, unless one is configured.
    #[serde(default)]
    pub mail_secret: Option<String>,
    /// The TCP port granted to each tunnel, in order (`None` for HTTP ones).
    #[serde(default)]
    pub ports: Vec<Option<u16>>,
}

/// A locked record in the state directory.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    _lock: File,
}

/// The directory Droid keeps state in: `$DROID_STATE_DIR`, else
/// `$XDG_STATE_HOME/droid`, else `~/.local/state/droid`.
pub fn default_state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DROID_STATE_DIR") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME") {
        return Some(PathBuf::from(dir).join("droid"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/state/droid"))
}

impl StateFile {
    /// Opens and locks the record for `key` in `dir`. `Ok(None)` when another
    /// running client holds it.
    pub fn open(dir: &Path, key: &str) -> io::Result<Option<(StateFile, Remembered)>> {
        fs::create_dir_all(dir)?;
        let stem = file_stem(key);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{stem}.lock")))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        let path = dir.join(format!("{stem}.json"));
        let remembered = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                warn!(path = %path.display(), error = %e, "ignoring an unreadable state file");
                Remembered::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Remembered::default(),
            Err(e) => return Err(e),
        };
        Ok(Some((StateFile { path, _lock: lock }, remembered)))
    }

    /// Writes the record atomically, readable by its owner only.
    pub fn save(&self, remembered: &Remembered) -> io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let mut options = OpenOptions::new();
        options.create(true).truncate(true).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(remembered).map_err(io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        debug!(path = %self.path.display(), "saved resume state");
        Ok(())
    }
}

/// A file name from any key: safe characters kept, the rest replaced.
fn file_stem(key: &str) -> String {
    let mut stem: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    stem.truncate(150);
    stem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_a_restart_and_is_locked_while_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let (file, r) = StateFile::open(dir.path(), "server:7835 http://x/")
            .unwrap()
            .unwrap();
        assert_eq!(r, Remembered::default());
        let saved = Remembered {
            secret: Some("ab".repeat(32)),
            names: vec!["quiet-otter-42".into()],
            mail_secret: Some("cd".repeat(16)),
            ports: vec![Some(20001)],
        };
        file.save(&saved).unwrap();
        // a second client with the same command starts afresh
        assert!(
            StateFile::open(dir.path(), "server:7835 http://x/")
                .unwrap()
                .is_none()
        );
        drop(file);
        let (_file, r) = StateFile::open(dir.path(), "server:7835 http://x/")
            .unwrap()
            .unwrap();
        assert_eq!(r, saved);
    }
}
