//! The files this node holds: manifests cached in the metadata database,
//! built lazily on first request, and chunk reads for serving.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::files::FilesDir;
use crate::manifest::{Manifest, CHUNK_SIZE};
use crate::meta::Meta;
use crate::{Error, Result};

#[derive(Serialize, Deserialize)]
struct Cached {
    size: u64,
    mtime_ns: i64,
    ino: u64,
    manifest: Manifest,
}

impl Cached {
    /// Whether this describes the file as it is now. A manifest cached by a
    /// build with another chunk size does not: other nodes would refuse it,
    /// and its chunk indexes mean other bytes.
    fn fits(&self, stamp: Stamp) -> bool {
        (self.size, self.mtime_ns, self.ino) == stamp && self.manifest.chunk_size == CHUNK_SIZE
    }
}

pub struct Local {
    pub files: FilesDir,
    pub meta: Meta,
    /// One hashing at a time per name: a second asker waits for the first.
    hashing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Manifests by name, with the stamp they were built from: serving a
    /// chunk must not decode a large manifest from sled every time.
    mem: Mutex<HashMap<String, (Stamp, Arc<Manifest>)>>,
}

/// How a file is opened to be read: not blocking (a FIFO in the files
/// directory would wait for a writer forever; it is then seen not to be a
/// regular file, and left alone), and never as a controlling terminal.
const READ: i32 = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY;

/// Size, mtime (ns) and inode: what says a file is unchanged.
type Stamp = (u64, i64, u64);

fn stamp(m: &std::fs::Metadata) -> Stamp {
    (m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.ino())
}

impl Local {
    pub fn new(files: FilesDir, meta: Meta) -> Self {
        Self {
            files,
            meta,
            hashing: Mutex::new(HashMap::new()),
            mem: Mutex::new(HashMap::new()),
        }
    }

    /// The manifest of a complete local file if it is cached and the file is
    /// unchanged since; never hashes.
    pub fn cached(&self, name: &str) -> Option<Manifest> {
        let path = self.files.resolve(name).ok()?;
        let m = std::fs::metadata(&path).ok()?;
        let c: Cached = self.meta.get("manifests", name)?;
        c.fits(stamp(&m)).then_some(c.manifest)
    }

    /// The manifest of a local file, hashing it if it is new or changed.
    /// Blocking. `Ok(None)` when there is no such regular file.
    pub fn manifest(&self, name: &str) -> Result<Option<Manifest>> {
        FilesDir::clean(name)?;
        let lock = {
            let mut h = self.hashing.lock().unwrap_or_else(|e| e.into_inner());
            h.entry(name.to_string()).or_default().clone()
        };
        let one = lock.lock().unwrap_or_else(|e| e.into_inner());
        let result = self.manifest_locked(name);
        drop(one);
        // Names come from the wire: do not keep a lock per name forever.
        let mut h = self.hashing.lock().unwrap_or_else(|e| e.into_inner());
        if h.get(name).is_some_and(|l| Arc::strong_count(l) <= 2) {
            h.remove(name);
        }
        result
    }

    fn manifest_locked(&self, name: &str) -> Result<Option<Manifest>> {
        let file = match self.files.open_file(name, READ) {
            Ok(f) => f,
            Err(Error::NotHere { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let m = match file.metadata() {
            Ok(m) if m.is_file() => m,
            _ => return Ok(None),
        };
        if let Some(c) = self.meta.get::<Cached>("manifests", name) {
            if c.fits(stamp(&m)) {
                return Ok(Some(c.manifest));
            }
        }
        debug!("hashing {name}");
        let manifest =
            Manifest::build(&file, &m, CHUNK_SIZE).map_err(|e| Error::io("hashing", name, e))?;
        // The file may have changed while we read it; only cache a manifest
        // that matches what is on disk now.
        let after = file.metadata().map_err(|e| Error::io("", name, e))?;
        if stamp(&after) != stamp(&m) {
            return Err(Error::Changed(name.into()));
        }
        self.remember(name, &after, &manifest);
        Ok(Some(manifest))
    }

    /// Records a manifest for a file we just wrote, so it is never hashed.
    pub fn remember(&self, name: &str, m: &std::fs::Metadata, manifest: &Manifest) {
        let (size, mtime_ns, ino) = stamp(m);
        let c = Cached {
            size,
            mtime_ns,
            ino,
            manifest: manifest.clone(),
        };
        if let Err(e) = self.meta.put("manifests", name, &c) {
            debug!("cannot cache the manifest of {name}: {e}");
        }
    }

    pub fn forget(&self, name: &str) {
        let _ = self.meta.remove("manifests", name);
        self.mem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// The open file and manifest of an unchanged, already-hashed file,
    /// the manifest from memory when possible. Never hashes.
    pub(crate) fn current(&self, name: &str) -> Option<(std::fs::File, Arc<Manifest>)> {
        let file = self.files.open_file(name, READ).ok()?;
        let m = file.metadata().ok()?;
        if !m.is_file() {
            return None;
        }
        let st = stamp(&m);
        let mut mem = self.mem.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, m)) = mem.get(name) {
            if *s == st {
                return Some((file, m.clone()));
            }
        }
        drop(mem);
        let c: Cached = self.meta.get("manifests", name)?;
        if !c.fits(st) {
            return None;
        }
        let m = Arc::new(c.manifest);
        mem = self.mem.lock().unwrap_or_else(|e| e.into_inner());
        if mem.len() > 4096 {
            mem.clear();
        }
        mem.insert(name.to_string(), (st, m.clone()));
        Some((file, m))
    }

    /// Where chunk `index` of the complete local file `name`, in version
    /// `root`, can be read: the file, open, and its manifest. Never hashes:
    /// a chunk is only asked for after "who holds it" made us hash the
    /// file, and a request for anything else is not worth a hashing.
    pub fn chunk_source(
        &self,
        name: &str,
        root: &[u8],
        index: usize,
    ) -> Result<(std::fs::File, Arc<Manifest>)> {
        let (file, m) = self
            .current(name)
            .filter(|(_, m)| m.root == root)
            .ok_or_else(|| Error::NotThatVersion { name: name.into() })?;
        if index >= m.chunk_count() {
            return Err(Error::NoChunk {
                name: name.into(),
                index,
            });
        }
        Ok((file, m))
    }
}
