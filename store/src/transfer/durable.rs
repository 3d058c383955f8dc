//! What makes a transfer survive a crash and never leave a wrong file: the
//! partial file (space reserved up front), chunk writes (verified first;
//! with `O_DIRECT`), the have-bit records (only after an
//! fdatasync), resuming (every recorded chunk read back and verified), and
//! the final rename (never over a file that appeared meanwhile).
//!
//! Records in sled: `transfers` (name -> manifest, written once when
//! queued) and `transfer-have` (name -> the bitfield of durable chunks).

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::bits::{bit, clear_bit, count_bits};
use super::job::Job;
use super::Engine;
use crate::buf::{ChunkBuf, ALIGN};
use crate::files::FilesDir;
use crate::fmt::human;
use crate::manifest::Manifest;
use crate::{Error, Result};

/// The permission bits a fetched file may keep: read and execute for all,
/// write for its owner.
pub(super) const MODE_MASK: u32 = 0o755;

/// How a partial file's writes are made durable. The engine calls `sync`
/// and only then records the have-bits that sync covers; a test stands a
/// recording one in, to check that no bit is recorded before its data was
/// synced (a SIGKILL keeps the page cache, so no process test can see it).
pub trait Disk: Send + Sync + 'static {
    /// fdatasync(2) of the partial file.
    fn sync(&self, file: &std::fs::File) -> std::io::Result<()>;
    /// The have-bits about to be recorded as durable for `name`.
    fn recording(&self, _name: &str, _have: &[u8]) {}
}

/// The real one.
pub struct SyncData;

impl Disk for SyncData {
    fn sync(&self, file: &std::fs::File) -> std::io::Result<()> {
        file.sync_data()
    }
}

#[derive(Serialize, Deserialize)]
pub(super) struct Persisted {
    pub(super) manifest: Manifest,
    #[serde(with = "serde_bytes")]
    pub(super) have: Vec<u8>,
}

/// How a verified write of one chunk ended.
pub(super) enum Written {
    Ok(u64),
    /// The chunk did not match its hash: nothing was written.
    Bad,
    Failed(Error),
}

/// One chunk of an answer: its index, and where it is in the answer.
pub(super) struct Piece {
    pub(super) idx: usize,
    pub(super) at: usize,
    pub(super) len: usize,
}

/// The partial file of a transfer being pulled, open for writing.
pub(super) struct Partial {
    pub(super) file: Arc<std::fs::File>,
    direct: Option<Direct>,
}

impl Engine {
    /// Every unfinished transfer recorded by an earlier run that can be
    /// resumed. Unreadable records are dropped, with their partial file.
    pub(super) fn persisted(&self) -> Vec<(String, Persisted)> {
        let meta = &self.local.meta;
        let mut out = Vec::new();
        for (name, mut p) in meta.all::<Persisted>("transfers") {
            // The have-bits are recorded apart from the (large) manifest.
            if let Some(h) = meta.get::<serde_bytes::ByteBuf>("transfer-have", &name) {
                p.have = h.into_vec();
            }
            if p.manifest.check().is_err()
                || FilesDir::clean(&name).is_err()
                || p.have.len() != p.manifest.chunk_count().div_ceil(8)
            {
                warn!("dropping unreadable transfer state for {name}");
                let _ = meta.remove("transfers", &name);
                let _ = meta.remove("transfer-have", &name);
                // Its partial file too (one from a build with another chunk
                // size, say): nothing else would ever remove it.
                if FilesDir::clean(&name).is_ok() && p.manifest.root.len() == 32 {
                    let _ = std::fs::remove_file(self.partial_path(&name, &p.manifest));
                }
                continue;
            }
            out.push((name, p));
        }
        out
    }

    /// Records a transfer as queued, with nothing here yet.
    pub(super) fn record_queued(&self, name: &str, m: &Manifest, have: &[u8]) -> Result<()> {
        let p = Persisted {
            manifest: m.clone(),
            have: have.to_vec(),
        };
        self.local.meta.put("transfers", name, &p)?;
        self.local.meta.remove("transfer-have", name)
    }

    /// Once a transfer has ended in any way: nothing is left to resume,
    /// and no late record may bring it back.
    pub(super) async fn forget_transfer(&self, job: &Job) {
        *job.persist_lock.lock().await = true;
        let _ = self.local.meta.remove("transfers", &job.name);
        let _ = self.local.meta.remove("transfer-have", &job.name);
        let _ = std::fs::remove_file(&job.tmp);
    }

    /// Opens (or creates) the partial file with its whole size reserved.
    pub(super) async fn open_partial(&self, job: &Job) -> Result<Partial> {
        let files = self.files().clone();
        let tmp = job.tmp.clone();
        let part = partial_name(&job.tmp);
        let size = job.manifest.size;
        tokio::task::spawn_blocking(move || {
            let f = files.open_partial(&part, libc::O_RDWR, true)?;
            // Reserve the whole file now: a full disk fails here, clearly,
            // not halfway with a truncated file.
            use std::os::fd::AsRawFd;
            // SAFETY: posix_fallocate on a file descriptor we own.
            let rc = if size == 0 {
                0
            } else {
                unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, size as libc::off_t) }
            };
            if rc != 0 {
                return Err(Error::io(
                    format!("cannot reserve {} for", human(size as f64)),
                    &tmp,
                    std::io::Error::from_raw_os_error(rc),
                ));
            }
            // Read too: other pullers' chunks are read through it.
            let direct = open_direct(&files, &part, &f, libc::O_RDWR).map(|file| Direct {
                file,
                on: AtomicBool::new(true),
            });
            Ok(Partial {
                file: Arc::new(f),
                direct,
            })
        })
        .await?
    }

    /// Appends `len` bytes of a transfer's partial file from `off` to
    /// `buf` (to serve it), past the page cache where it can (the file is
    /// written that way: see [`super::recent`]): through the descriptors
    /// the pull opened, once it has, else by name.
    pub(super) fn read_partial(
        &self,
        job: &Job,
        off: u64,
        len: usize,
        buf: &mut ChunkBuf,
    ) -> Result<()> {
        let aligned = off.is_multiple_of(ALIGN as u64)
            && len.is_multiple_of(ALIGN)
            && (buf.spare().as_ptr() as usize).is_multiple_of(ALIGN);
        let open = job.open.get();
        let part = partial_name(&job.tmp);
        let by_name = |flags| self.files().open_partial(&part, flags, false);
        // Past the page cache first, where the read allows it.
        let direct_by_name;
        let direct = match open {
            Some(p) => p.direct.as_ref().map(|d| &d.file),
            None if aligned => {
                direct_by_name = by_name(libc::O_RDONLY | libc::O_DIRECT).ok();
                direct_by_name.as_ref()
            }
            None => None,
        };
        if let Some(f) = direct.filter(|_| aligned) {
            match buf.read_at(f, off, len) {
                Ok(()) => return Ok(()),
                // Alignment rules of its own: the ordinary way.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(Error::io("reading", &job.tmp, e)),
            }
        }
        let plain_by_name;
        let plain = match open {
            Some(p) => &*p.file,
            None => {
                plain_by_name = by_name(libc::O_RDONLY)?;
                &plain_by_name
            }
        };
        buf.read_at(plain, off, len)
            .map_err(|e| Error::io("reading", &job.tmp, e))
    }

    /// After a restart, trusts no chunk without reading it back: a partial
    /// file that was lost, truncated or not yet on disk costs a re-fetch,
    /// never a corrupt file.
    pub(super) async fn verify_resumed(
        &self,
        job: &Arc<Job>,
        file: &Arc<std::fs::File>,
    ) -> Result<()> {
        let marked: Vec<usize> = {
            let st = job.state();
            (0..job.manifest.chunk_count())
                .filter(|i| bit(&st.have, *i))
                .collect()
        };
        if marked.is_empty() {
            return Ok(());
        }
        job.state().phase = "verifying partial data".into();
        let m = job.manifest.clone();
        let f = file.clone();
        let bad: Vec<usize> = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; m.chunk_size as usize];
            marked
                .into_iter()
                .filter(|&i| {
                    let (off, len) = m.chunk_range(i);
                    let b = &mut buf[..len as usize];
                    f.read_exact_at(b, off).is_err() || !m.verify_chunk(i, b)
                })
                .collect()
        })
        .await?;
        let mut st = job.state();
        for i in &bad {
            clear_bit(&mut st.have, *i);
            st.bytes = st.bytes.saturating_sub(job.manifest.chunk_range(*i).1);
        }
        st.resumed = count_bits(&st.have, job.manifest.chunk_count());
        if !bad.is_empty() {
            warn!(
                "{}: {} chunks recorded as here did not verify; fetching them again",
                job.name,
                bad.len()
            );
        }
        st.phase = "pulling".into();
        st.last_data = std::time::Instant::now();
        Ok(())
    }

    /// fdatasync the partial file, then record the have-bits it covers.
    /// Bits are set only after their chunk's write returned, so the sync
    /// covers every bit in the copy taken first.
    /// Returns the bits it recorded.
    pub(super) async fn persist(
        self: Arc<Self>,
        job: Arc<Job>,
        file: Arc<std::fs::File>,
    ) -> Result<Vec<u8>> {
        // Records land in order, and never after the transfer's cleanup.
        let ended = job.persist_lock.lock().await;
        if *ended {
            return Ok(Vec::new());
        }
        // The bits as they are before the sync: each one's write has
        // returned, so the sync covers it.
        let have = job.state().have.clone();
        let (f, disk) = (file.clone(), self.disk.clone());
        tokio::task::spawn_blocking(move || disk.sync(&f))
            .await?
            .map_err(|e| Error::io("syncing", &job.tmp, e))?;
        self.disk.recording(&job.name, &have);
        // Only the bitfield: the manifest was recorded when the transfer was
        // queued, and re-writing it (12.5 MB for 100 GiB) every time would cost.
        self.local.meta.put(
            "transfer-have",
            &job.name,
            &serde_bytes::ByteBuf::from(have.clone()),
        )?;
        // sled buffers writes; the record must be on disk before we count
        // on it after a crash.
        let meta = self.local.meta.clone();
        tokio::task::spawn_blocking(move || meta.flush()).await??;
        Ok(have)
    }

    /// Syncs the complete file, gives it the holder's permission bits and
    /// mtime, and renames it into place.
    pub(super) async fn finish(&self, job: &Arc<Job>, file: &Arc<std::fs::File>) -> Result<()> {
        job.state().phase = "finishing".into();
        let m = job.manifest.clone();
        let f = file.clone();
        let tmp = job.tmp.clone();
        let local = self.local.clone();
        let name = job.name.clone();
        let job = job.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            f.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
            // Permission bits only, and none that let others write: a mode
            // from another node is not worth trusting (the hash does not
            // cover it), and a setuid bit or a world-writable file least.
            f.set_permissions(std::fs::Permissions::from_mode(m.mode & MODE_MASK))
                .map_err(|e| Error::io("setting the mode of", &tmp, e))?;
            let mtime = SystemTime::UNIX_EPOCH + Duration::from_nanos(m.mtime_ns.max(0) as u64);
            let _ = f.set_modified(mtime);
            if job.is_cancelled() {
                return Err(Error::Cancelled);
            }
            local.files.place(&partial_name(&tmp), &name)?;
            // The file moved; its descriptor is the same file.
            let meta = f.metadata().map_err(|e| Error::io("", &name, e))?;
            local.remember(&name, &meta, &m);
            Ok(())
        })
        .await?
    }
}

/// The partial file's name in the partial directory.
fn partial_name(tmp: &Path) -> String {
    tmp.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What of the first `size` bytes the partial file, through its open
/// descriptor, does not hold: past its end, and its holes (ranges no write
/// filled). The space was reserved up front and every chunk was written,
/// so a complete partial file has neither, unless it was cut short under
/// the transfer (a remote `mesh dot` once did it, and 675 MiB of zeros
/// passed as a verified 1 GiB file). A file system without SEEK_HOLE shows
/// no holes. (Reading every byte back from disk instead would catch an
/// overwrite too, but it cost B1 half its speed; see docs/design.md.)
pub(super) fn missing(file: &std::fs::File, size: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = Vec::new();
    if len < size {
        out.push((len, size));
    }
    let size = size.min(len);
    let mut at = 0i64;
    while (at as u64) < size {
        // SAFETY: lseek on a descriptor we own.
        let hole = unsafe { libc::lseek(fd, at, libc::SEEK_HOLE) };
        if hole < 0 || hole as u64 >= size {
            break;
        }
        // SAFETY: as above.
        let data = unsafe { libc::lseek(fd, hole, libc::SEEK_DATA) };
        let end = if data < 0 {
            size
        } else {
            (data as u64).min(size)
        };
        out.push((hole as u64, end));
        at = end as i64;
    }
    out
}

impl Partial {
    /// Verifies each piece of `data` against the manifest and writes the
    /// good ones, good pieces in a row in one write. Blocking; one writer
    /// per file at a time.
    pub(super) fn write(&self, job: &Job, take: &[Piece], data: &Arc<ChunkBuf>) -> Vec<Written> {
        let good: Vec<bool> = take
            .iter()
            .map(|t| job.manifest.verify_chunk(t.idx, &data[t.at..t.at + t.len]))
            .collect();
        let _one = job.write_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(take.len());
        let mut k = 0;
        while k < take.len() {
            if !good[k] {
                out.push(Written::Bad);
                k += 1;
                continue;
            }
            let mut end = k + 1;
            while end < take.len() && good[end] && take[end].idx == take[end - 1].idx + 1 {
                end += 1;
            }
            let bytes = &data[take[k].at..take[end - 1].at + take[end - 1].len];
            let (off, _) = job.manifest.chunk_range(take[k].idx);
            // Every chunk bypasses the page cache: its bytes go to the disk
            // without a copy, and other pullers are served the latest ones
            // from memory ([`super::recent`]). Through the page cache, a
            // swarm of 15 spent a third of its CPU copying into fresh page
            // cache memory.
            let direct = self.direct.as_ref();
            let wrote = match direct.map_or(Ok(false), |d| d.write(&job.name, bytes, off)) {
                Ok(true) => Ok(()),
                Ok(false) => self.file.write_all_at(bytes, off),
                Err(e) => Err(e),
            };
            if wrote.is_ok() {
                let mut recent = job.recent();
                for t in &take[k..end] {
                    recent.keep(t.idx, data, t.at, t.len);
                }
            }
            for t in &take[k..end] {
                out.push(match &wrote {
                    Ok(()) => Written::Ok(t.len as u64),
                    Err(e) => Written::Failed(Error::io(
                        "writing",
                        &job.tmp,
                        std::io::Error::new(e.kind(), e.to_string()),
                    )),
                });
            }
            k = end;
        }
        out
    }
}

/// Bytes free for an unprivileged writer in the file system of `dir`.
pub(super) fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct we pass; c is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

/// The partial file opened `O_DIRECT` with `mode`; None where the file
/// system has no `O_DIRECT` (tmpfs on older kernels), or if `part` is no
/// longer the file `same_as` has open.
fn open_direct(
    files: &crate::FilesDir,
    part: &str,
    same_as: &std::fs::File,
    mode: i32,
) -> Option<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    let file = files
        .open_partial(part, mode | libc::O_DIRECT, false)
        .ok()?;
    let (a, b) = (file.metadata().ok()?, same_as.metadata().ok()?);
    (a.dev() == b.dev() && a.ino() == b.ino()).then_some(file)
}

/// A second descriptor on the partial file that bypasses the page cache,
/// for whole runs: the transfer makes every chunk durable soon
/// anyway, and the page cache would cost a copy now and writeback later.
struct Direct {
    file: std::fs::File,
    on: AtomicBool,
}

impl Direct {
    /// Writes `data` at `off` this way if it can: Ok(false) means the
    /// caller must write it the ordinary way.
    fn write(&self, name: &str, data: &[u8], off: u64) -> std::io::Result<bool> {
        if !self.on.load(Ordering::Relaxed)
            || !(data.as_ptr() as usize).is_multiple_of(ALIGN)
            || !data.len().is_multiple_of(ALIGN)
            || !off.is_multiple_of(ALIGN as u64)
        {
            return Ok(false);
        }
        match self.file.write_all_at(data, off) {
            Ok(()) => Ok(true),
            // Taken at open, refused at write (alignment rules of its
            // own): the page cache from now on. Any other error is real.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.on.store(false, Ordering::Relaxed);
                tracing::debug!("{name}: O_DIRECT refused ({e}); writing through the page cache");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}
