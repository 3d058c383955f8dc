//! Small node-local metadata in sled. sled is beta quality, so it is used
//! only here, only for small values, and treated as rebuildable: a database
//! that will not open is moved aside and started afresh.
//!
//! Trees and keys:
//! - `settings`: `degree` (u64), `timeout_ms` (u64): runtime settings that
//!   survive a restart; `namespace` (the active one), `vm_id` (the last VM
//!   id this node gave).
//! - `namespaces`: name -> a namespace's hosts, settings, vm config, queue,
//!   stored schedule and launch history (on the node that owns it).
//! - `vms`: zero-padded id -> a VM of this host: its name, namespace,
//!   state, pid and config (so a restart knows what it ran).
//! - `manifests`: file name -> the file's manifest and the size, mtime and
//!   inode it was built from (so an unchanged file is never hashed twice).
//! - `transfers`: file name -> a transfer in progress: its manifest (and
//!   an empty bitfield), written once when it is queued.
//! - `transfer-have`: file name -> the bitfield of chunks already durable in
//!   that transfer's partial file, rewritten as it progresses.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};
use tracing::warn;

use crate::{Error, Result};

/// Why sled would not open: only a corrupt database is moved aside, never
/// one that is merely locked or unreadable.
enum OpenError {
    Corrupt(String),
    Io(String),
}

#[derive(Clone)]
pub struct Meta {
    db: sled::Db,
    path: PathBuf,
}

impl Meta {
    /// Opens (or creates) the database at `path`. A corrupt one is renamed to
    /// `<path>.corrupt-<unix time>` and replaced by an empty one.
    pub fn open(path: &Path) -> Result<Self> {
        let cannot = |e: String| Error::Meta(format!("cannot open {}: {e}", path.display()));
        match Self::try_open(path) {
            Ok(m) => Ok(m),
            // An I/O error (permissions, a lock held by another process) is
            // not corruption: never move a live database aside for it.
            Err(OpenError::Io(e)) => Err(cannot(e)),
            Err(OpenError::Corrupt(e)) if path.exists() => {
                let secs = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = path.with_extension(format!("corrupt-{secs}"));
                warn!(
                    "metadata database {} cannot be opened ({e}); moving it to {} and starting \
                     a new one",
                    path.display(),
                    aside.display()
                );
                std::fs::rename(path, &aside)
                    .map_err(|re| Error::io("cannot move aside", path, re))?;
                Self::try_open(path).map_err(|(OpenError::Io(e) | OpenError::Corrupt(e))| cannot(e))
            }
            Err(OpenError::Corrupt(e)) => Err(cannot(e)),
        }
    }

    fn try_open(path: &Path) -> Result<Self, OpenError> {
        // sled panics on some corrupt inputs rather than returning an error.
        let p = path.to_owned();
        let db = std::panic::catch_unwind(move || sled::Config::new().path(p).open())
            .map_err(|_| OpenError::Corrupt("sled panicked while opening".to_string()))?
            .map_err(|e| match e {
                sled::Error::Io(_) => OpenError::Io(e.to_string()),
                _ => OpenError::Corrupt(e.to_string()),
            })?;
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get<T: DeserializeOwned>(&self, tree: &str, key: &str) -> Option<T> {
        let t = self.db.open_tree(tree).ok()?;
        let v = t.get(key).ok()??;
        match cbor4ii::serde::from_slice(&v) {
            Ok(x) => Some(x),
            Err(e) => {
                warn!("ignoring unreadable metadata {tree}/{key}: {e}");
                None
            }
        }
    }

    pub fn put<T: Serialize>(&self, tree: &str, key: &str, value: &T) -> Result<()> {
        let bytes = cbor4ii::serde::to_vec(Vec::new(), value).map_err(|e| meta(tree, key, e))?;
        let t = self.db.open_tree(tree).map_err(|e| meta(tree, key, e))?;
        t.insert(key, bytes).map_err(|e| meta(tree, key, e))?;
        Ok(())
    }

    pub fn remove(&self, tree: &str, key: &str) -> Result<()> {
        let t = self.db.open_tree(tree).map_err(|e| meta(tree, key, e))?;
        t.remove(key).map_err(|e| meta(tree, key, e))?;
        Ok(())
    }

    /// Every readable entry of a tree (unreadable ones are skipped).
    pub fn all<T: DeserializeOwned>(&self, tree: &str) -> Vec<(String, T)> {
        let Ok(t) = self.db.open_tree(tree) else {
            return Vec::new();
        };
        t.iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(k, v)| {
                let key = String::from_utf8(k.to_vec()).ok()?;
                let val = cbor4ii::serde::from_slice(&v).ok()?;
                Some((key, val))
            })
            .collect()
    }

    pub fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| Error::Meta(format!("flushing: {e}")))
    }
}

fn meta(tree: &str, key: &str, e: impl std::fmt::Display) -> Error {
    Error::Meta(format!("{tree}/{key}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled's flusher thread can hold the database's lock for a moment
    /// after the last handle is dropped (a new process, as after a node
    /// restart, never meets it): open again until it lets go.
    fn reopen(p: &Path) -> Meta {
        let start = std::time::Instant::now();
        loop {
            match Meta::open(p) {
                Ok(m) => return m,
                Err(e) if start.elapsed() > std::time::Duration::from_secs(5) => panic!("{e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    #[test]
    fn values_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta");
        {
            let m = Meta::open(&p).unwrap();
            m.put("settings", "degree", &5u64).unwrap();
            m.flush().unwrap();
        }
        let m = reopen(&p);
        assert_eq!(m.get::<u64>("settings", "degree"), Some(5));
        assert_eq!(m.get::<u64>("settings", "missing"), None);
    }

    #[test]
    fn corrupt_database_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta");
        {
            let m = Meta::open(&p).unwrap();
            m.put("settings", "degree", &5u64).unwrap();
            m.flush().unwrap();
        }
        // Overwrite sled's config file with garbage.
        std::fs::write(p.join("conf"), b"\xff\xfe garbage").unwrap();
        let m = reopen(&p);
        assert_eq!(m.get::<u64>("settings", "degree"), None);
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().contains("corrupt-"));
        assert!(aside, "the corrupt database was not kept aside");
    }
}
