//! The transfer engine: pulls files from every node that holds them, in
//! parallel verified chunks, into a partial file that is renamed into place
//! only when complete. Network-agnostic: the node supplies a [`Net`].
//!
//! Invariants:
//! - a chunk is verified against the manifest before it is written;
//! - a have-bit is persisted only after the data it covers is fdatasync'ed;
//! - a file appears under its final name only complete and verified;
//! - nothing outside the files directory is written through a wire name
//!   (every name goes through [`crate::FilesDir::resolve`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{info, warn};

use crate::buf::{ChunkBuf, ALIGN};
use crate::files::{glob_match, has_magic, FilesDir};
use crate::local::Local;
use crate::manifest::{Manifest, MAX_RUN};

/// Files transferring at once on one node; more are queued.
pub const MAX_ACTIVE: usize = 3;
/// Chunks in `bytes` bytes, for limits that are about memory or time on the
/// wire rather than about how many chunks.
const fn chunks(bytes: u64) -> usize {
    (bytes / crate::manifest::CHUNK_SIZE) as usize
}

/// Chunks asked of one source and not yet answered, at most (8 MiB).
const PER_SOURCE: usize = chunks(8 << 20);
/// Requests in flight to a source cover about this much of its delivery,
/// beyond two round trips. B2 (7 pullers sharing each other's uplinks): 100
/// ms and at least two in flight gave 1.18; 50 ms and at least one, 1.13.
const IN_FLIGHT_TIME: Duration = Duration::from_millis(50);
/// Candidate chunks looked at per request.
const SAMPLE: usize = 64;
/// Chunk requests in flight to a complete holder while other pullers of
/// the same file can serve too.
const PER_HOLDER_SWARMING: usize = 2;
/// Chunks asked for one file and not yet answered, whatever the number of
/// sources (32 MiB). Checked before each request, so a run may pass it by a
/// few chunks.
const PER_FILE: usize = chunks(32 << 20);
/// Chunks received and waiting for their write: past this, no new
/// requests, so a slow disk holds back the network instead of memory.
const MAX_WRITING: usize = chunks(8 << 20);
/// How often the have-bitfields of other pullers are refreshed.
const HAVE_EVERY: Duration = Duration::from_millis(100);
/// Chunks written between two fdatasync + have-bit records (or a quarter
/// second, whichever comes first). Each record costs a journal commit; 64
/// MiB is 40-60 ms of a fast transfer to re-fetch after a crash.
const SYNC_EVERY: usize = chunks(64 << 20);
/// A holder forgets a file's pullers this long after the last one asked.
const LEDGER_IDLE: Duration = Duration::from_secs(60);
/// A puller that asked for a chunk this recently is still pulling: other
/// pullers can be pointed at it.
const PULLER_ACTIVE: Duration = Duration::from_secs(5);
/// A chunk sent to one puller this recently is not sent to another.
const SENT_FRESH: Duration = Duration::from_secs(10);
/// How long a puller waits for a chunk another puller was sent, before it
/// asks the holder itself.
const PROMISE: Duration = Duration::from_secs(3);
/// A source whose connection broke is asked again after this.
const LOST_WAIT: Duration = Duration::from_millis(500);
/// A puller that does not have a chunk yet is asked again after this.
const NOT_YET_WAIT: Duration = Duration::from_millis(150);
/// A source that sent this many bad chunks is dropped for this transfer.
const MAX_BAD: u32 = 3;

/// A file a node can serve: complete, or (`partial`) still being pulled,
/// with the chunks it has so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Held {
    pub name: String,
    pub manifest: Manifest,
    #[serde(default, with = "serde_bytes")]
    pub partial: Option<Vec<u8>>,
}

/// Per host: the files it can serve, or why it did not answer.
pub type HolderAnswers = Vec<(String, Result<Vec<Held>, String>)>;
/// A finished have poll: source, its bitfield.
type HaveDone = (String, Result<Vec<u8>, String>);
/// A finished chunk request: source, first chunk index, chunks asked for,
/// data (the first of them, possibly fewer than asked).
type ChunkDone = (String, usize, usize, Result<ChunkBuf, Miss>);

/// Why a source did not send a chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum Miss {
    /// A puller that does not have this chunk yet: ask again shortly.
    NotYet,
    /// A holder that already sent this chunk to that other puller, which
    /// will pass it on: the holder's uplink is what every puller shares.
    Redirect(String),
    Failed(String),
    /// The connection to the source broke: this request, and any others on
    /// it, were not answered. Not a sign the source is bad.
    Lost(String),
}

/// Marks the two misses that are not errors in a string answer; errors
/// start with a file name, which never holds a control character
/// (`FilesDir::clean` refuses them).
const MISS_MARK: char = '\u{1}';

impl Miss {
    /// As one line, for answers that can only carry a string.
    pub fn to_wire(&self) -> String {
        match self {
            Miss::NotYet => format!("{MISS_MARK}not yet"),
            Miss::Redirect(h) => format!("{MISS_MARK}redirect {h}"),
            Miss::Failed(e) | Miss::Lost(e) => e.clone(),
        }
    }

    pub fn from_wire(s: String) -> Miss {
        match s.strip_prefix(MISS_MARK) {
            Some("not yet") => Miss::NotYet,
            Some(rest) => match rest.strip_prefix("redirect ") {
                Some(h) => Miss::Redirect(h.to_string()),
                None => Miss::Failed(s),
            },
            None => Miss::Failed(s),
        }
    }
}

impl From<String> for Miss {
    fn from(e: String) -> Miss {
        Miss::Failed(e)
    }
}

/// What a complete holder remembers of one file's pullers, so that its
/// uplink sends each chunk about once: who got each chunk first, who was
/// already sent elsewhere, and when each puller last asked.
#[derive(Default)]
struct Ledger {
    root: Vec<u8>,
    first: HashMap<u32, (String, Instant)>,
    redirected: HashMap<(u32, String), Instant>,
    active: HashMap<String, Instant>,
    pruned: Option<Instant>,
}

impl Ledger {
    /// Whom to point `from` at for chunk `index`, if anyone; else records
    /// that `from` gets it.
    fn decide(&mut self, from: &str, index: u32, now: Instant) -> Option<String> {
        self.active.insert(from.to_string(), now);
        // Old entries say nothing any more (a redirect is remembered longer
        // than a puller waits on it, so a pointed-at puller still gets the
        // chunk from here in the end): keep the ledger small.
        if self.pruned.is_none_or(|t| now - t >= SENT_FRESH) {
            self.first.retain(|_, (_, sent)| now - *sent < SENT_FRESH);
            self.redirected.retain(|_, at| now - *at < SENT_FRESH);
            self.active.retain(|_, at| now - *at < PULLER_ACTIVE);
            self.active.insert(from.to_string(), now);
            self.pruned = Some(now);
        }
        match self.first.get(&index) {
            // Sent recently to a puller that is still at work: point there,
            // once per chunk and puller.
            Some((first, sent)) if first != from && now - *sent < SENT_FRESH => {
                let asking = self
                    .active
                    .get(first)
                    .is_some_and(|t| now - *t < PULLER_ACTIVE);
                let key = (index, from.to_string());
                if asking && !self.redirected.contains_key(&key) {
                    self.redirected.insert(key, now);
                    Some(first.clone())
                } else {
                    None
                }
            }
            Some((first, _)) if first == from => None,
            // Never sent, or sent a while ago (that puller may have finished
            // and deleted it since): a new round.
            _ => {
                self.first.insert(index, (from.to_string(), now));
                None
            }
        }
    }

    /// How many chunks of the run `index..index + count` to send `from`
    /// (at least the first), or whom to point it at for the first. A run
    /// goes whole only to a lone puller: while others pull too, single
    /// chunks reach each of them sooner, to be passed on.
    fn decide_run(
        &mut self,
        from: &str,
        index: u32,
        count: u32,
        now: Instant,
    ) -> Result<u32, String> {
        if let Some(to) = self.decide(from, index, now) {
            return Err(to);
        }
        let alone = self
            .active
            .iter()
            .all(|(p, t)| p == from || now - *t >= PULLER_ACTIVE);
        if !alone {
            return Ok(1);
        }
        let mut sent = 1;
        while sent < count {
            let i = index + sent;
            match self.first.get(&i) {
                Some((p, t)) if p != from && now - *t < SENT_FRESH => break,
                _ => {
                    self.first.insert(i, (from.to_string(), now));
                }
            }
            sent += 1;
        }
        Ok(sent)
    }
}
/// What the scheduler is told by earlier answers.
#[derive(Default)]
struct Hints {
    /// Chunk -> the puller a holder sent it to instead, and when.
    promised: HashMap<usize, (String, Instant)>,
    /// Chunk -> not to be asked for again before then (a puller did not
    /// have it yet).
    not_before: HashMap<usize, Instant>,
}

/// How a verified write of one chunk ended.
enum Written {
    Ok(u64),
    /// The chunk did not match its hash: nothing was written.
    Bad,
    Failed(String),
}
/// One chunk of an answer: its index, and where it is in the answer.
struct Piece {
    idx: usize,
    at: usize,
    len: usize,
}

/// A finished write: source, and each chunk's index and outcome.
type WriteDone = (String, Vec<(usize, Written)>);

/// Reports the outcome of writing some chunks to the loop, in one message,
/// or a failure if the write never got to report (it panicked): a chunk
/// left in `writing` would never be asked for again.
struct Report(Option<(String, Vec<usize>, mpsc::UnboundedSender<WriteDone>)>);

impl Report {
    fn send(mut self, ws: Vec<Written>) {
        if let Some((host, idxs, tx)) = self.0.take() {
            let _ = tx.send((host, idxs.into_iter().zip(ws).collect()));
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some((host, idxs, tx)) = self.0.take() {
            let failed = |i| (i, Written::Failed(format!("writing chunk {i} failed")));
            let _ = tx.send((host, idxs.into_iter().map(failed).collect()));
        }
    }
}
/// Name -> whole-file hash (hex) -> that version's manifest and holders.
type Versions = BTreeMap<String, BTreeMap<String, (Manifest, Vec<(String, Held)>)>>;

/// How the engine reaches other nodes.
pub trait Net: Send + Sync + 'static {
    /// Asks every other node which files match `pattern`; silent nodes are
    /// simply missing or errors, never a failure of the whole question.
    fn holders(&self, pattern: String) -> BoxFuture<'static, HolderAnswers>;
    /// The round trip time to `host`, if known (no data moving).
    fn rtt(&self, host: &str) -> Option<Duration>;
    /// The have-bitfield of a node that is itself pulling the file.
    fn have(
        &self,
        host: String,
        name: String,
        root: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>, String>>;
    /// Chunks `index..index + count`, one after another; a source may
    /// send fewer (at least the first).
    fn chunk(
        &self,
        host: String,
        name: String,
        root: Vec<u8>,
        index: u32,
        count: u32,
    ) -> BoxFuture<'static, Result<ChunkBuf, Miss>>;
}

/// Which version to take when holders disagree.
#[derive(Debug, Default, Clone)]
pub struct Select {
    pub from: Option<String>,
    pub hash: Option<String>,
}

fn bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn set_bit(bits: &mut [u8], i: usize) {
    bits[i / 8] |= 1 << (i % 8);
}

fn count_bits(bits: &[u8], n: usize) -> usize {
    (0..n).filter(|i| bit(bits, *i)).count()
}

#[derive(Serialize, Deserialize)]
struct Persisted {
    manifest: Manifest,
    #[serde(with = "serde_bytes")]
    have: Vec<u8>,
}

#[derive(Debug, Clone, Default)]
struct SourceStat {
    complete: bool,
    have: Vec<u8>,
    inflight: usize,
    served: u64,
    bad: u32,
    fails: u32,
    benched_until: Option<Instant>,
    /// What this source delivers to us, in bytes per second, smoothed:
    /// measured between answers while it had requests in hand.
    rate: f64,
    /// Since when the source has been working for us without a break, and
    /// the bytes it delivered since.
    busy_since: Option<Instant>,
    busy_bytes: u64,
    dropped: bool,
}

impl SourceStat {
    /// `host:chunks`, then `(bad N)`, and `(dropped)` or `(failing N)`
    /// (requests failed in a row; it is asked again after a pause, and
    /// dropped after 5) where they apply: for `file status` and the log.
    fn label(&self, host: &str) -> String {
        let mut t = format!("{host}:{}", self.served);
        if self.bad > 0 {
            t.push_str(&format!("(bad {})", self.bad));
        }
        if self.dropped {
            t.push_str("(dropped)");
        } else if self.fails > 0 {
            t.push_str(&format!("(failing {})", self.fails));
        }
        t
    }

    /// Books an answer (`bytes` of chunk, 0 for a miss) for the rate. Rates
    /// come from at least two chunks or 20 ms of work: answers that were
    /// pipelined arrive back to back, and one of them alone says nothing.
    fn measure(&mut self, bytes: u64) {
        let now = Instant::now();
        self.busy_bytes += bytes;
        if let Some(since) = self.busy_since {
            let took = now - since;
            if self.busy_bytes >= 2 * crate::manifest::CHUNK_SIZE
                || (self.busy_bytes > 0 && took >= Duration::from_millis(20))
            {
                let r = self.busy_bytes as f64 / took.as_secs_f64().max(1e-6);
                self.rate = if self.rate == 0.0 {
                    r
                } else {
                    0.7 * self.rate + 0.3 * r
                };
                self.busy_since = Some(now);
                self.busy_bytes = 0;
            }
        }
        if self.inflight == 0 {
            self.busy_since = None;
            self.busy_bytes = 0;
        }
    }

    /// Requests to keep in flight: what the source delivers in two round
    /// trips plus [`IN_FLIGHT_TIME`], at least one; two until it is
    /// measured, or when its round trip is unknown. Deep queues at a shared
    /// source (a puller's uplink serves every other puller) only delay each
    /// chunk and make every puller's choices stale. The cap grows while
    /// requests come back faster than that window: two round trips keep a
    /// distant source growing even when a chunk takes longer to send than
    /// the 50 ms.
    fn cap(&self, swarming: bool, rtt: Option<Duration>) -> usize {
        let window = IN_FLIGHT_TIME + 2 * rtt.unwrap_or_default();
        let by_rate = if self.rate > 0.0 {
            (self.rate * window.as_secs_f64() / crate::manifest::CHUNK_SIZE as f64).ceil() as usize
        } else {
            2
        };
        let most = if self.complete && swarming {
            PER_HOLDER_SWARMING
        } else {
            PER_SOURCE
        };
        let least = if rtt.is_some() { 1 } else { 2 };
        by_rate.clamp(least.min(most), most)
    }
}

struct JobState {
    have: Vec<u8>,
    queued: bool,
    phase: String,
    bytes: u64,
    rate: f64,
    sources: BTreeMap<String, SourceStat>,
    /// Chunks found here, verified, when the transfer resumed after a
    /// restart: counted by no source.
    resumed: usize,
    /// Once done: how long pulling and finishing took, for the log.
    took: String,
}

pub struct Job {
    pub name: String,
    pub manifest: Manifest,
    tmp: PathBuf,
    st: Mutex<JobState>,
    cancelled: AtomicBool,
    cancel_note: tokio::sync::Notify,
    /// Held while recording have-bits; true once the transfer has ended
    /// and its records are gone (a late record must not bring them back).
    persist_lock: tokio::sync::Mutex<bool>,
    /// One writer at a time: concurrent writes to one file only contend
    /// for the inode lock in the kernel, spinning on both cores.
    write_lock: Mutex<()>,
    done: watch::Sender<Option<Result<(), String>>>,
}

impl Job {
    fn state(&self) -> std::sync::MutexGuard<'_, JobState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sources_summary(&self) -> String {
        let st = self.state();
        let mut v: Vec<String> = st
            .sources
            .iter()
            .filter(|(_, s)| s.served > 0 || s.bad > 0)
            .map(|(h, s)| s.label(h))
            .collect();
        if st.resumed > 0 {
            v.push(format!("(and {} here before a restart)", st.resumed));
        }
        v.join(" ")
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel_note.notify_one();
    }
}

/// The end of a transfer, to wait on.
pub type Done = watch::Receiver<Option<Result<(), String>>>;

/// What `get` did with each file: queued it now, or found it already coming.
pub struct Pending {
    pub name: String,
    pub queued: bool,
    pub done: Done,
}

/// Whether `name` is what `pattern` (cleaned) asks for: itself, something
/// under it as a directory, or a glob match.
pub fn selects(pattern: &str, name: &str) -> bool {
    if has_magic(pattern) {
        glob_match(pattern, name)
    } else {
        name == pattern || name.starts_with(&format!("{pattern}/"))
    }
}

/// One row of `file status`.
#[derive(Debug, Clone)]
pub struct Status {
    pub name: String,
    pub tempdir: String,
    pub completed: String,
    pub queued: bool,
    pub bytes: String,
    pub rate: String,
    pub sources: String,
    pub eta: String,
    pub phase: String,
}

pub struct Engine {
    local: Arc<Local>,
    net: Arc<dyn Net>,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    slots: Arc<Semaphore>,
    /// Per file served whole: see [`Ledger`].
    ledgers: Mutex<HashMap<String, Ledger>>,
}

fn human(n: f64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < U.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", U[i])
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the struct we pass; c is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some(s.f_bavail as u64 * s.f_frsize as u64)
}

impl Engine {
    pub fn new(local: Arc<Local>, net: Arc<dyn Net>) -> Arc<Engine> {
        Arc::new(Engine {
            local,
            net,
            jobs: Mutex::new(HashMap::new()),
            slots: Arc::new(Semaphore::new(MAX_ACTIVE)),
            ledgers: Mutex::new(HashMap::new()),
        })
    }

    fn files(&self) -> &FilesDir {
        &self.local.files
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Restarts the transfers a previous run left unfinished.
    pub fn resume(self: &Arc<Self>) {
        for (name, mut p) in self.local.meta.all::<Persisted>("transfers") {
            // The have-bits are recorded apart from the (large) manifest.
            if let Some(h) = self
                .local
                .meta
                .get::<serde_bytes::ByteBuf>("transfer-have", &name)
            {
                p.have = h.into_vec();
            }
            if p.manifest.check().is_err()
                || FilesDir::clean(&name).is_err()
                || p.have.len() != p.manifest.chunk_count().div_ceil(8)
            {
                warn!("dropping unreadable transfer state for {name}");
                let _ = self.local.meta.remove("transfers", &name);
                let _ = self.local.meta.remove("transfer-have", &name);
                // Its partial file too (one from a build with another chunk
                // size, say): nothing else would ever remove it.
                if FilesDir::clean(&name).is_ok() && p.manifest.root.len() == 32 {
                    let _ = std::fs::remove_file(self.partial_path(&name, &p.manifest));
                }
                continue;
            }
            let n = count_bits(&p.have, p.manifest.chunk_count());
            info!(
                "resuming {name}: {n}/{} chunks already here",
                p.manifest.chunk_count()
            );
            if let Err(e) = self.start_job(name.clone(), p.manifest, p.have, BTreeMap::new()) {
                warn!("cannot resume {name}: {e}");
            }
        }
    }

    /// Finds `pattern` across the mesh and queues what is missing here.
    /// Returns the names queued. Fails, writing nothing, on a conflict.
    pub async fn get(
        self: &Arc<Self>,
        pattern: &str,
        sel: &Select,
    ) -> Result<Vec<Pending>, String> {
        let pattern = FilesDir::clean(pattern)?;
        if pattern.is_empty() {
            return Err("file get needs a file name, glob or directory".into());
        }
        let answers = self.net.holders(pattern.clone()).await;
        let asked = answers.len();
        // name -> root hex -> (manifest, holders)
        let mut found: Versions = BTreeMap::new();
        let mut silent = Vec::new();
        for (host, res) in answers {
            match res {
                Ok(list) => {
                    for mut h in list {
                        // Use the name as we would write it, and only what
                        // was asked for.
                        match FilesDir::clean(&h.name) {
                            Ok(n) if selects(&pattern, &n) && h.manifest.check().is_ok() => {
                                h.name = n
                            }
                            _ => {
                                warn!(
                                    "{host} offered a bad or unasked-for file {:?}: ignored",
                                    h.name
                                );
                                continue;
                            }
                        }
                        let v = found.entry(h.name.clone()).or_default();
                        let e = v
                            .entry(h.manifest.root_hex())
                            .or_insert_with(|| (h.manifest.clone(), Vec::new()));
                        e.1.push((host.clone(), h));
                    }
                }
                Err(e) => silent.push(format!("{host} ({e})")),
            }
        }
        if !silent.is_empty() {
            info!(
                "file get {pattern}: no usable answer from {}",
                silent.join(", ")
            );
        }
        // Apply the caller's choice of version.
        for versions in found.values_mut() {
            if let Some(h) = &sel.hash {
                versions.retain(|root, _| root.starts_with(&h.to_lowercase()));
            }
            if let Some(f) = &sel.from {
                versions.retain(|_, (_, holders)| {
                    holders
                        .iter()
                        .any(|(host, held)| host == f && held.partial.is_none())
                });
            }
        }
        found.retain(|_, v| !v.is_empty());
        if found.is_empty() && sel.from.is_none() && sel.hash.is_none() {
            let local = self.local.clone();
            let p = pattern.clone();
            let here = tokio::task::spawn_blocking(move || local.files.expand(&p))
                .await
                .map_err(|e| e.to_string())??;
            if !here.is_empty() {
                return Ok(Vec::new()); // only here: nothing to fetch
            }
        }
        if found.is_empty() {
            let mut e = format!("{pattern}: no node holds it (asked {asked} other nodes)");
            if sel.from.is_some() || sel.hash.is_some() {
                e.push_str(" (in the version asked for)");
            }
            if !silent.is_empty() {
                e.push_str(&format!("; no usable answer from {}", silent.join(", ")));
            }
            return Err(e);
        }
        let conflicts: Vec<String> = found
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(name, v)| {
                let mut s = format!("{name}: {} different versions:", v.len());
                for (root, (m, holders)) in v {
                    let mut hosts: Vec<&str> = holders.iter().map(|(h, _)| h.as_str()).collect();
                    hosts.sort();
                    let mtime =
                        SystemTime::UNIX_EPOCH + Duration::from_nanos(m.mtime_ns.max(0) as u64);
                    s.push_str(&format!(
                        "\n  hash {root} size {} mtime {} on {}",
                        m.size,
                        fmt_time(mtime),
                        hosts.join(",")
                    ));
                }
                s
            })
            .collect();
        if !conflicts.is_empty() {
            return Err(format!(
                "conflict, nothing fetched; choose one with `file get NAME hash H` or `file get NAME from HOST`:\n{}",
                conflicts.join("\n")
            ));
        }

        // Decide per file, and check it all fits, before queuing anything.
        let mut plan = Vec::new();
        let mut coming = Vec::new();
        let mut need = 0u64;
        for (name, mut versions) in found {
            let (_, (m, holders)) = versions.pop_first().expect("one version");
            let local = {
                let l = self.local.clone();
                let n = name.clone();
                tokio::task::spawn_blocking(move || l.manifest(&n))
                    .await
                    .map_err(|e| e.to_string())??
            };
            if let Some(lm) = local {
                if lm.root == m.root {
                    continue; // already here
                }
                return Err(format!(
                    "{name} exists here with different content (hash {}); delete it first \
                     or fetch it under another name",
                    lm.root_hex()
                ));
            }
            if let Some(j) = self.jobs().get(&name) {
                if j.is_cancelled() {
                    return Err(format!(
                        "{name}: a cancelled transfer is still ending; try again in a moment"
                    ));
                }
                if j.manifest.root == m.root {
                    coming.push(Pending {
                        name: name.clone(),
                        queued: false,
                        done: j.done.subscribe(),
                    });
                    continue;
                }
                return Err(format!(
                    "{name} is already being fetched in another version"
                ));
            }
            need += m.size;
            let sources = holders
                .into_iter()
                .map(|(host, held)| {
                    let complete = held.partial.is_none();
                    let have = held.partial.unwrap_or_default();
                    (
                        host,
                        SourceStat {
                            complete,
                            have,
                            ..SourceStat::default()
                        },
                    )
                })
                .collect();
            plan.push((name, m, sources));
        }
        if let Some(free) = free_bytes(&self.files().partial_dir()) {
            if need > free {
                return Err(format!(
                    "not enough disk space in {}: need {}, {} free",
                    self.files().root().display(),
                    human(need as f64),
                    human(free as f64)
                ));
            }
        }
        let mut queued = coming;
        for (name, m, sources) in plan {
            let have = vec![0u8; m.chunk_count().div_ceil(8)];
            let p = Persisted {
                manifest: m.clone(),
                have: have.clone(),
            };
            self.local.meta.put("transfers", &name, &p)?;
            self.local.meta.remove("transfer-have", &name)?;
            let done = self.start_job(name.clone(), m, have, sources)?;
            queued.push(Pending {
                name,
                queued: true,
                done,
            });
        }
        // A queued transfer must survive a crash of this node.
        let meta = self.local.meta.clone();
        tokio::task::spawn_blocking(move || meta.flush())
            .await
            .map_err(|e| e.to_string())??;
        Ok(queued)
    }

    /// Where the transfer of `name` in `manifest`'s version is kept until
    /// it is complete: named by both the name and the content, so two names
    /// with the same content never share one.
    fn partial_path(&self, name: &str, manifest: &Manifest) -> PathBuf {
        let tag = crate::manifest::hex(&blake3::hash(name.as_bytes()).as_bytes()[..8]);
        self.files()
            .partial_dir()
            .join(format!("{tag}-{}.part", &manifest.root_hex()[..32]))
    }

    /// Starts a transfer task, unless one for that name exists already.
    fn start_job(
        self: &Arc<Self>,
        name: String,
        manifest: Manifest,
        have: Vec<u8>,
        sources: BTreeMap<String, SourceStat>,
    ) -> Result<Done, String> {
        let tmp = self.partial_path(&name, &manifest);
        let (done, rx) = watch::channel(None);
        let bytes = (0..manifest.chunk_count())
            .filter(|i| bit(&have, *i))
            .map(|i| manifest.chunk_range(i).1)
            .sum();
        let job = Arc::new(Job {
            name: name.clone(),
            manifest,
            tmp,
            st: Mutex::new(JobState {
                have,
                queued: true,
                phase: "queued".into(),
                bytes,
                rate: 0.0,
                sources,
                resumed: 0,
                took: String::new(),
            }),
            cancelled: AtomicBool::new(false),
            cancel_note: tokio::sync::Notify::new(),
            persist_lock: tokio::sync::Mutex::new(false),
            write_lock: Mutex::new(()),
            done,
        });
        {
            let mut jobs = self.jobs();
            if jobs.contains_key(&name) {
                return Err(format!("{name} is already being fetched"));
            }
            jobs.insert(name, job.clone());
        }
        let me = self.clone();
        tokio::spawn(async move {
            // Whatever happens in `run` (even a panic), the entry goes and
            // waiters get an answer.
            let result = tokio::spawn({
                let me = me.clone();
                let job = job.clone();
                async move { me.run(&job).await }
            })
            .await
            .unwrap_or_else(|e| Err(format!("transfer task failed: {e}")));
            let name = job.name.clone();
            match &result {
                Ok(()) => info!(
                    "{name}: complete, {} in chunks from {}{}",
                    human(job.manifest.size as f64),
                    job.sources_summary(),
                    job.state().took
                ),
                Err(e) => warn!("{name}: {e}"),
            }
            // Done, failed or cancelled: nothing is left to resume. A failed
            // get is reported to its waiters and in the log; asking again
            // starts afresh.
            *job.persist_lock.lock().await = true;
            let _ = me.local.meta.remove("transfers", &name);
            let _ = me.local.meta.remove("transfer-have", &name);
            let _ = std::fs::remove_file(&job.tmp);
            {
                let mut jobs = me.jobs();
                if jobs.get(&name).is_some_and(|j| Arc::ptr_eq(j, &job)) {
                    jobs.remove(&name);
                }
            }
            let _ = job.done.send(Some(result));
        });
        Ok(rx)
    }

    /// Waits until every transfer has ended; the first error wins.
    pub async fn wait(&self, pending: Vec<Pending>) -> Result<(), String> {
        let mut first_err = None;
        for mut p in pending {
            let r = loop {
                if let Some(r) = p.done.borrow().clone() {
                    break r;
                }
                if p.done.changed().await.is_err() {
                    break p.done.borrow().clone().unwrap_or_else(|| {
                        Err(format!("{}: transfer ended without a result", p.name))
                    });
                }
            };
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Cancels transfers whose name matches `pattern` (a name, glob or
    /// directory) and waits (briefly) for them to end; returns their names.
    pub async fn cancel(&self, pattern: &str) -> Vec<String> {
        let Ok(clean) = FilesDir::clean(pattern) else {
            return Vec::new();
        };
        let hit: Vec<(String, Done)> = {
            let jobs = self.jobs();
            jobs.iter()
                .filter(|(name, _)| selects(&clean, name))
                .map(|(name, j)| {
                    j.cancel();
                    (name.clone(), j.done.subscribe())
                })
                .collect()
        };
        let mut out = Vec::new();
        for (name, mut rx) in hit {
            let _ =
                tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|v| v.is_some())).await;
            out.push(name);
        }
        out
    }

    pub fn status(&self) -> Vec<Status> {
        let jobs = self.jobs();
        let mut rows: Vec<Status> = jobs
            .values()
            .map(|j| {
                let st = j.state();
                let n = j.manifest.chunk_count();
                let done = count_bits(&st.have, n);
                let left = j.manifest.size.saturating_sub(st.bytes);
                let eta = if st.rate > 1.0 && !st.queued {
                    format!("{}s", (left as f64 / st.rate).ceil() as u64)
                } else {
                    "-".into()
                };
                let sources: Vec<String> = st.sources.iter().map(|(h, s)| s.label(h)).collect();
                Status {
                    name: j.name.clone(),
                    tempdir: j.tmp.to_string_lossy().into_owned(),
                    completed: format!("{done}/{n}"),
                    queued: st.queued,
                    bytes: format!(
                        "{}/{}",
                        human(st.bytes as f64),
                        human(j.manifest.size as f64)
                    ),
                    rate: format!("{}/s", human(st.rate)),
                    sources: sources.join(" "),
                    eta,
                    phase: st.phase.clone(),
                }
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }

    /// What this node can serve for `pattern`: complete files (hashed on
    /// first request) and files it is itself pulling. Blocking.
    pub fn held(&self, pattern: &str) -> Result<Vec<Held>, String> {
        let clean = FilesDir::clean(pattern)?;
        if clean.is_empty() {
            // Would hash the whole directory for one question.
            return Err("name a file, glob or directory".into());
        }
        let mut out = Vec::new();
        for name in self.files().expand(&clean)? {
            // One unreadable or changing file must not hide the others.
            match self.local.manifest(&name) {
                Ok(Some(m)) => out.push(Held {
                    name,
                    manifest: m,
                    partial: None,
                }),
                Ok(None) => {}
                Err(e) => warn!("not offering {name}: {e}"),
            }
        }
        for (name, j) in self.jobs().iter() {
            if selects(&clean, name) && !j.is_cancelled() && !out.iter().any(|h| &h.name == name) {
                out.push(Held {
                    name: name.clone(),
                    manifest: j.manifest.clone(),
                    partial: Some(j.state().have.clone()),
                });
            }
        }
        Ok(out)
    }

    /// Chunks `index..index + count` (at most [`MAX_RUN`]) for node
    /// `from`, appended to `buf`: from a complete file, or from a transfer
    /// in progress, as many of them as are verified here in a row (at
    /// least the first). A complete holder sends each chunk to one puller
    /// and points the others at it (once per chunk and puller, and only at
    /// a puller that is still asking), and sends a whole run only to a lone
    /// puller. Blocking.
    pub fn read_chunk(
        &self,
        from: &str,
        name: &str,
        root: &[u8],
        index: usize,
        count: usize,
        buf: &mut ChunkBuf,
    ) -> Result<(), Miss> {
        let count = count.clamp(1, MAX_RUN);
        let job = self.jobs().get(name).cloned();
        if let Some(j) = job.filter(|j| j.manifest.root == root) {
            let n = j.manifest.chunk_count();
            if index >= n {
                return Err(Miss::Failed(format!("{name}: no chunk {index}")));
            }
            let k = {
                let st = j.state();
                (index..(index + count).min(n))
                    .take_while(|&i| bit(&st.have, i))
                    .count()
            };
            if k == 0 {
                return Err(Miss::NotYet);
            }
            let (off, len) = j.manifest.run_range(index, k);
            return crate::local::read_range(&j.tmp, off, len, buf)
                .map_err(|e| Miss::Failed(format!("{name}: {e}")));
        }
        // Only a request this node can answer from its file enters the
        // ledger.
        let (path, m) = self.local.chunk_source(name, root, index)?;
        let count = count.min(m.chunk_count() - index);
        let k = match self.portion(from, name, root, index as u32, count as u32) {
            Ok(k) => k as usize,
            Err(first) => {
                tracing::trace!("{name}: chunk {index}: {from} pointed at {first}");
                return Err(Miss::Redirect(first));
            }
        };
        tracing::trace!("{name}: chunks {index}..{} to {from}", index + k);
        let (off, len) = m.run_range(index, k);
        crate::local::read_range(&path, off, len, buf)
            .map_err(|e| Miss::Failed(format!("{name}: {e}")))
    }

    /// How many chunks of a run to send `from`, or whom to point it at.
    fn portion(
        &self,
        from: &str,
        name: &str,
        root: &[u8],
        index: u32,
        count: u32,
    ) -> Result<u32, String> {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        ledgers.retain(|_, l| l.active.values().any(|t| now - *t < LEDGER_IDLE));
        let l = ledgers.entry(name.to_string()).or_default();
        if l.root != root {
            *l = Ledger {
                root: root.to_vec(),
                ..Ledger::default()
            };
        }
        l.decide_run(from, index, count, now)
    }

    async fn run(self: &Arc<Self>, job: &Arc<Job>) -> Result<(), String> {
        let mut slot = Some(self.acquire_slot(job).await?);
        if job.is_cancelled() {
            return Err("cancelled".into());
        }
        {
            let mut st = job.state();
            st.queued = false;
            st.phase = "pulling".into();
        }
        let started = Instant::now();
        let m = &job.manifest;
        let n = m.chunk_count();
        let tmp = job.tmp.clone();
        let size = m.size;
        let (file, direct) = tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&tmp)
                .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
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
                return Err(format!(
                    "cannot reserve {} for {}: {}",
                    human(size as f64),
                    tmp.display(),
                    std::io::Error::from_raw_os_error(rc)
                ));
            }
            let direct = Direct::open(&tmp, &f).map(Arc::new);
            Ok::<_, String>((Arc::new(f), direct))
        })
        .await
        .map_err(|e| e.to_string())??;
        self.verify_resumed(job, &file).await?;

        let (tx, mut rx) = mpsc::unbounded_channel::<ChunkDone>();
        let (written_tx, mut written_rx) = mpsc::unbounded_channel::<WriteDone>();
        let mut writing: HashSet<usize> = HashSet::new();
        let mut hints = Hints::default();
        let mut persisting: Option<tokio::task::JoinHandle<Result<(), String>>> = None;
        let mut inflight: HashMap<usize, HashSet<String>> = HashMap::new();
        let (have_tx, mut have_rx) = mpsc::unbounded_channel::<HaveDone>();
        let mut last_have = Instant::now();
        let mut last_refresh = Instant::now() - Duration::from_secs(60);
        let mut retry_wait = Duration::from_secs(1);
        let mut last_persist = Instant::now();
        let mut unsynced = 0usize;
        let mut rate_window = (Instant::now(), 0u64);
        let (refresh_tx, mut refresh_rx) = mpsc::unbounded_channel::<HolderAnswers>();
        let mut refreshing = false;
        let mut polling: HashSet<String> = HashSet::new();
        loop {
            if job.is_cancelled() {
                return Err("cancelled".into());
            }
            let complete = count_bits(&job.state().have, n) == n;
            if complete {
                break;
            }
            // Refresh sources: new holders, other pullers and their progress.
            let usable = {
                let st = job.state();
                st.sources.values().any(|s| !s.dropped)
            };
            let refresh_every = if usable {
                Duration::from_secs(2)
            } else {
                retry_wait
            };
            // Asking the mesh can take a while (a silent node): never wait
            // for it here.
            if !refreshing && last_refresh.elapsed() >= refresh_every {
                refreshing = true;
                let fut = self.net.holders(job.name.clone());
                let tx = refresh_tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(fut.await);
                });
            }
            // Other pullers' progress, often: the sooner we see what they
            // have, the more we take from them instead of the holder.
            if last_have.elapsed() >= HAVE_EVERY {
                last_have = Instant::now();
                self.poll_partial_sources(job, &have_tx, &mut polling);
            }
            let now = Instant::now();
            hints.promised.retain(|_, (_, t)| now - *t < PROMISE);
            hints.not_before.retain(|_, t| *t > now);
            self.schedule(job, &mut inflight, &writing, &hints, &tx);

            let next = tokio::select! {
                r = rx.recv() => r,
                Some((host, done)) = written_rx.recv() => {
                    for (idx, w) in done {
                        writing.remove(&idx);
                        if self.written(job, host.clone(), idx, w, &mut rate_window)? {
                            unsynced += 1;
                        }
                    }
                    // A restart re-fetches only chunks not yet recorded:
                    // keep that window small (a few chunks, a quarter
                    // second). One record at a time, off the loop.
                    let due = unsynced >= SYNC_EVERY
                        || (unsynced > 0 && last_persist.elapsed() >= Duration::from_millis(250));
                    if due && persisting.as_ref().is_none_or(|h| h.is_finished()) {
                        if let Some(h) = persisting.take() {
                            h.await.map_err(|e| e.to_string())??;
                        }
                        persisting = Some(tokio::spawn(self.clone().persist(job.clone(), file.clone())));
                        unsynced = 0;
                        last_persist = Instant::now();
                    }
                    continue;
                }
                Some((host, bits)) = have_rx.recv() => {
                    polling.remove(&host);
                    let want = job.manifest.chunk_count().div_ceil(8);
                    if let Some(s) = job.state().sources.get_mut(&host) {
                        if !s.complete && bits.as_ref().is_ok_and(|b| b.len() == want) {
                            s.have = bits.unwrap_or_default();
                        }
                    }
                    continue;
                }
                Some(answers) = refresh_rx.recv() => {
                    refreshing = false;
                    last_refresh = Instant::now();
                    self.apply_refresh(job, answers);
                    let usable = job.state().sources.values().any(|s| !s.dropped);
                    if usable {
                        if slot.is_none() {
                            job.state().queued = true;
                            slot = Some(self.acquire_slot(job).await?);
                            job.state().queued = false;
                        }
                        retry_wait = Duration::from_secs(1);
                        job.state().phase = "pulling".into();
                    } else {
                        // Waiting costs no transfer slot: files that can
                        // move should not queue behind one that cannot.
                        slot = None;
                        retry_wait = (retry_wait * 2).min(Duration::from_secs(60));
                        job.state().phase =
                            format!("waiting for holders (retry in {}s)", retry_wait.as_secs());
                    }
                    continue;
                }
                _ = job.cancel_note.notified() => continue,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            };
            let Some((host, idx, count, res)) = next else {
                continue;
            };
            for i in idx..idx + count {
                if let Some(set) = inflight.get_mut(&i) {
                    set.remove(&host);
                    if set.is_empty() {
                        inflight.remove(&i);
                    }
                }
            }
            let data = {
                let mut st = job.state();
                if let Some(s) = st.sources.get_mut(&host) {
                    s.inflight = s.inflight.saturating_sub(count);
                    s.measure(res.as_ref().map_or(0, |d| d.len() as u64));
                }
                match res {
                    Ok(data) => Some(data),
                    // Neither is the source's fault.
                    Err(Miss::NotYet) => {
                        hints.not_before.insert(idx, Instant::now() + NOT_YET_WAIT);
                        None
                    }
                    Err(Miss::Redirect(to)) => {
                        // Possibly a puller we have not heard of yet: its
                        // bitfield is polled from now on.
                        let s = st.sources.entry(to.clone()).or_default();
                        if !s.dropped {
                            hints.promised.insert(idx, (to, Instant::now()));
                        }
                        None
                    }
                    // The connection broke under this request (and maybe
                    // others): try again soon, on a new one.
                    Err(Miss::Lost(e)) => {
                        let s = st.sources.entry(host.clone()).or_default();
                        s.benched_until = Some(Instant::now() + LOST_WAIT);
                        tracing::debug!("{}: chunk {idx} from {host}: {e}", job.name);
                        None
                    }
                    Err(Miss::Failed(e)) => {
                        let s = st.sources.entry(host.clone()).or_default();
                        s.fails += 1;
                        let wait = Duration::from_millis(500 * (1u64 << s.fails.min(6)));
                        s.benched_until = Some(Instant::now() + wait);
                        if s.fails >= 5 || e.contains("not here in that version") {
                            s.dropped = true;
                        }
                        warn!("{}: chunk {idx} from {host} failed: {e}", job.name);
                        None
                    }
                }
            };
            let Some(data) = data else { continue };
            // The answer is the run's first chunks, one after another (a
            // source may send fewer than asked). A short last piece is
            // taken as it is, and fails verification.
            let mut take = Vec::new();
            {
                let st = job.state();
                let mut at = 0usize;
                for i in idx..idx + count {
                    // Past the answer's end: not sent. (An empty answer
                    // still yields its first chunk, to fail verification.)
                    if at >= data.len() && i > idx {
                        break;
                    }
                    let len = (job.manifest.chunk_range(i).1 as usize).min(data.len() - at);
                    // The other copy of an endgame request may have won.
                    if !bit(&st.have, i) && !writing.contains(&i) {
                        take.push(Piece { idx: i, at, len });
                    }
                    at += len;
                }
            }
            if take.is_empty() {
                continue;
            }
            // Verify and write on a blocking thread while the loop goes on
            // asking: hashing and the copy into the page cache are a good
            // part of a fast transfer's time.
            writing.extend(take.iter().map(|t| t.idx));
            let (j, f) = (job.clone(), file.clone());
            let d = direct.clone();
            let idxs = take.iter().map(|t| t.idx).collect();
            let report = Report(Some((host, idxs, written_tx.clone())));
            tokio::task::spawn_blocking(move || {
                let good: Vec<bool> = take
                    .iter()
                    .map(|t| j.manifest.verify_chunk(t.idx, &data[t.at..t.at + t.len]))
                    .collect();
                let _one = j.write_lock.lock().unwrap_or_else(|e| e.into_inner());
                let mut out = Vec::with_capacity(take.len());
                let mut k = 0;
                while k < take.len() {
                    if !good[k] {
                        out.push(Written::Bad);
                        k += 1;
                        continue;
                    }
                    // Good chunks in a row go down in one write.
                    let mut end = k + 1;
                    while end < take.len() && good[end] && take[end].idx == take[end - 1].idx + 1 {
                        end += 1;
                    }
                    let bytes = &data[take[k].at..take[end - 1].at + take[end - 1].len];
                    let (off, _) = j.manifest.chunk_range(take[k].idx);
                    // Whole runs bypass the page cache; single chunks, the
                    // ones a swarm trades, do not: other pullers read them
                    // back soon, and a write that waits on a busy disk
                    // would hold the transfer up (seven pullers on one
                    // disk stalled together for 0.7 s in B2).
                    let direct = d.as_ref().filter(|_| end - k >= MAX_RUN);
                    let wrote = match direct.map_or(Ok(false), |d| d.write(&j.name, bytes, off)) {
                        Ok(true) => Ok(()),
                        Ok(false) => f.write_all_at(bytes, off),
                        Err(e) => Err(e),
                    };
                    for t in &take[k..end] {
                        out.push(match &wrote {
                            Ok(()) => Written::Ok(t.len as u64),
                            Err(e) => Written::Failed(format!("writing {}: {e}", j.tmp.display())),
                        });
                    }
                    k = end;
                }
                report.send(out);
            });
        }
        // Every chunk is written; the last record, if any, must be done
        // before the file moves.
        if let Some(h) = persisting.take() {
            h.await.map_err(|e| e.to_string())??;
        }
        let pulled = started.elapsed();
        self.finish(job, &file).await?;
        job.state().took = format!(
            ", pulled in {:.2} s, synced and moved in {:.2} s",
            pulled.as_secs_f64(),
            (started.elapsed() - pulled).as_secs_f64()
        );
        Ok(())
    }

    /// One of the MAX_ACTIVE transfer slots, or an error once cancelled.
    async fn acquire_slot(
        &self,
        job: &Arc<Job>,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, String> {
        tokio::select! {
            p = self.slots.clone().acquire_owned() => p.map_err(|e| e.to_string()),
            _ = job.cancel_note.notified() => Err("cancelled".into()),
        }
    }

    /// fdatasync the partial file, then record the have-bits it covers.
    /// Bits are set only after their chunk's write returned, so the sync
    /// covers every bit in the copy taken first.
    async fn persist(
        self: Arc<Self>,
        job: Arc<Job>,
        file: Arc<std::fs::File>,
    ) -> Result<(), String> {
        // Records land in order, and never after the transfer's cleanup.
        let ended = job.persist_lock.lock().await;
        if *ended {
            return Ok(());
        }
        let have = job.state().have.clone();
        let f = file.clone();
        tokio::task::spawn_blocking(move || f.sync_data())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("syncing {}: {e}", job.tmp.display()))?;
        // Only the bitfield: the manifest was recorded when the transfer was
        // queued, and re-writing it (12.5 MB for 100 GiB) every time would cost.
        self.local.meta.put(
            "transfer-have",
            &job.name,
            &serde_bytes::ByteBuf::from(have),
        )?;
        // sled buffers writes; the record must be on disk before we count
        // on it after a crash.
        let meta = self.local.meta.clone();
        tokio::task::spawn_blocking(move || meta.flush())
            .await
            .map_err(|e| e.to_string())?
    }

    async fn finish(&self, job: &Arc<Job>, file: &Arc<std::fs::File>) -> Result<(), String> {
        job.state().phase = "finishing".into();
        let m = job.manifest.clone();
        let f = file.clone();
        let tmp = job.tmp.clone();
        let dest = self.files().resolve(&job.name)?;
        let local = self.local.clone();
        let name = job.name.clone();
        let job = job.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            f.sync_all()
                .map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
            // Permission bits only: a setuid bit from another node is not
            // worth trusting (the mode is not covered by the hash).
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(m.mode & 0o777))
                .map_err(|e| format!("setting the mode of {}: {e}", tmp.display()))?;
            let mtime = SystemTime::UNIX_EPOCH + Duration::from_nanos(m.mtime_ns.max(0) as u64);
            let _ = f.set_modified(mtime);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("creating {}: {e}", parent.display()))?;
            }
            if job.is_cancelled() {
                return Err("cancelled".into());
            }
            rename_noreplace(&tmp, &dest).map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    format!("{name} appeared here while it was being fetched; not overwritten")
                } else {
                    format!("moving {name} into place: {e}")
                }
            })?;
            if let Some(dir) = dest.parent() {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            let meta = std::fs::metadata(&dest).map_err(|e| e.to_string())?;
            local.remember(&name, &meta, &m);
            Ok(())
        })
        .await
        .map_err(|e| e.to_string())?
    }

    fn poll_partial_sources(
        &self,
        job: &Arc<Job>,
        tx: &mpsc::UnboundedSender<HaveDone>,
        polling: &mut HashSet<String>,
    ) {
        let partial: Vec<String> = job
            .state()
            .sources
            .iter()
            .filter(|(h, s)| !s.complete && !s.dropped && !polling.contains(*h))
            .map(|(h, _)| h.clone())
            .collect();
        for host in partial {
            polling.insert(host.clone());
            let fut = self
                .net
                .have(host.clone(), job.name.clone(), job.manifest.root.clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send((host, fut.await));
            });
        }
    }

    /// After a restart, trusts no chunk without reading it back: a partial
    /// file that was lost, truncated or not yet on disk costs a re-fetch,
    /// never a corrupt file.
    async fn verify_resumed(
        &self,
        job: &Arc<Job>,
        file: &Arc<std::fs::File>,
    ) -> Result<(), String> {
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
        .await
        .map_err(|e| e.to_string())?;
        let mut st = job.state();
        for i in &bad {
            st.have[i / 8] &= !(1 << (i % 8));
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
        Ok(())
    }

    /// The have-bitfield of a transfer in progress here, for other pullers.
    pub fn have_bits(&self, name: &str, root: &[u8]) -> Result<Vec<u8>, String> {
        let job = self.jobs().get(name).cloned();
        match job.filter(|j| j.manifest.root == root) {
            Some(j) => Ok(j.state().have.clone()),
            None => Err(format!("{name}: not being fetched here")),
        }
    }

    /// Applies a fresh answer to "who holds it": adds new holders and other
    /// pullers (with their progress), re-admits sources that came back, and
    /// drops those that answered without the file. A host that did not
    /// answer keeps its state: it may be busy, and is benched if its chunk
    /// requests fail.
    fn apply_refresh(&self, job: &Arc<Job>, answers: HolderAnswers) {
        let mut st = job.state();
        for (host, res) in answers {
            let Ok(list) = res else { continue };
            let held = list
                .into_iter()
                .find(|h| h.name == job.name && h.manifest.root == job.manifest.root);
            match held {
                Some(h) => {
                    let s = st.sources.entry(host.clone()).or_default();
                    s.complete = h.partial.is_none();
                    s.have = h.partial.unwrap_or_default();
                    if s.dropped && s.bad < MAX_BAD {
                        s.dropped = false;
                        s.fails = 0;
                        s.benched_until = None;
                    }
                }
                None => {
                    if let Some(s) = st.sources.get_mut(&host) {
                        s.dropped = true;
                    }
                }
            }
        }
        // Nodes gone from the mesh altogether are not in `answers`.
    }

    /// Books a finished write: the have-bit, the source's record. Returns
    /// whether a chunk was added (and so awaits a durable record).
    fn written(
        &self,
        job: &Arc<Job>,
        host: String,
        idx: usize,
        w: Written,
        rate_window: &mut (Instant, u64),
    ) -> Result<bool, String> {
        let mut st = job.state();
        let len = match w {
            Written::Failed(e) => return Err(e),
            Written::Bad => {
                let s = st.sources.entry(host.clone()).or_default();
                s.bad += 1;
                warn!(
                    "{}: chunk {idx} from {host} failed verification ({} bad from it); \
                     fetching it elsewhere",
                    job.name, s.bad
                );
                // Chunks still in flight from it fail too: say it once.
                if s.bad >= MAX_BAD && !s.dropped {
                    s.dropped = true;
                    warn!(
                        "{}: dropping {host} as a source: it keeps sending bad data",
                        job.name
                    );
                }
                return Ok(false);
            }
            Written::Ok(len) => len,
        };
        tracing::trace!("{}: chunk {idx} from {host} written", job.name);
        set_bit(&mut st.have, idx);
        st.bytes += len;
        let s = st.sources.entry(host).or_default();
        s.served += 1;
        s.fails = 0;
        rate_window.1 += len;
        let el = rate_window.0.elapsed().as_secs_f64();
        if el >= 1.0 {
            st.rate = rate_window.1 as f64 / el;
            *rate_window = (Instant::now(), 0);
        }
        Ok(true)
    }

    /// Starts chunk requests: rarest chunk first (random among equals), to
    /// the least busy, fastest source that has it. When every missing chunk
    /// is already requested, the last ones are requested a second time
    /// from another source (endgame).
    fn schedule(
        &self,
        job: &Arc<Job>,
        inflight: &mut HashMap<usize, HashSet<String>>,
        writing: &HashSet<usize>,
        hints: &Hints,
        tx: &mpsc::UnboundedSender<ChunkDone>,
    ) {
        let n = job.manifest.chunk_count();
        let mut st = job.state();
        let now = Instant::now();
        let mut rng = rand::thread_rng();
        loop {
            // Chunks waiting to be written count too: they hold memory.
            let total: usize = inflight.values().map(|s| s.len()).sum::<usize>() + writing.len();
            if total >= PER_FILE || writing.len() >= MAX_WRITING {
                return;
            }
            // While other pullers can serve, ask less of the original
            // holders: their uplink is what every puller shares.
            let swarming = st.sources.values().any(|s| !s.complete && !s.dropped);
            let ready: Vec<String> = st
                .sources
                .iter()
                .filter(|(h, s)| {
                    // Room for a whole run from a complete holder, where the
                    // cap allows one: one chunk asked whenever one came back
                    // would split every later request into single chunks.
                    let cap = s.cap(swarming, self.net.rtt(h));
                    let need = if s.complete && !swarming {
                        cap.min(MAX_RUN)
                    } else {
                        1
                    };
                    !s.dropped
                        && s.inflight + need <= cap
                        && s.benched_until.is_none_or(|t| t <= now)
                })
                .map(|(h, _)| h.clone())
                .collect();
            if ready.is_empty() {
                return;
            }
            // A chunk another puller was sent for us is its to give, for a
            // while: not the holder's again.
            // (Unless that puller has been dropped: it finished and deleted
            // the file, say. Then the holder serves it after all.)
            let gone: HashSet<&String> = st
                .sources
                .iter()
                .filter(|(_, s)| s.dropped)
                .map(|(h, _)| h)
                .collect();
            // (The loop has dropped promises and waits that are over.)
            let has = |h: &str, s: &SourceStat, i: usize| match hints.promised.get(&i) {
                Some((to, _)) if !gone.contains(to) => to == h || (!s.complete && bit(&s.have, i)),
                _ => s.complete || bit(&s.have, i),
            };
            // A sample of the missing chunks a ready source can give, from a
            // random starting point: the cost per request stays flat however
            // large the file (rarest first is then among the sample).
            let start = rng.gen_range(0..n.max(1));
            let (mut fresh, mut dup) = (Vec::new(), Vec::new());
            let mut any_fresh = false;
            for k in 0..n {
                let i = (start + k) % n;
                if bit(&st.have, i) || writing.contains(&i) || hints.not_before.contains_key(&i) {
                    continue;
                }
                let asked = inflight.get(&i);
                any_fresh |= asked.is_none();
                let ready_holder = ready
                    .iter()
                    .any(|h| has(h, &st.sources[h], i) && !asked.is_some_and(|s| s.contains(h)));
                if !ready_holder {
                    continue;
                }
                match asked {
                    None => {
                        fresh.push(i);
                        if fresh.len() >= SAMPLE {
                            break;
                        }
                    }
                    Some(set) if set.len() < 2 => dup.push(i),
                    Some(_) => {}
                }
            }
            // Endgame only once every missing chunk has been asked for.
            let (pool, endgame) = match (fresh.is_empty(), any_fresh) {
                (false, _) => (fresh, false),
                (true, false) => (dup, true),
                (true, true) => return,
            };
            // Rarest first, over all live sources (the sample holds only
            // chunks some ready source can give).
            let mut best: Vec<(usize, usize)> = pool
                .iter()
                .map(|&i| {
                    let rarity = st
                        .sources
                        .iter()
                        .filter(|(h, s)| !s.dropped && has(h, s, i))
                        .count();
                    (rarity, i)
                })
                .collect();
            if best.is_empty() {
                return;
            }
            best.shuffle(&mut rng);
            best.sort_by_key(|(r, _)| *r);
            let idx = best[0].1;
            let host = ready
                .iter()
                .filter(|h| {
                    has(h, &st.sources[*h], idx)
                        && !inflight.get(&idx).is_some_and(|s| s.contains(*h))
                })
                .min_by(|a, b| {
                    let (sa, sb) = (&st.sources[*a], &st.sources[*b]);
                    // Partial holders first (spares the original holder's
                    // uplink), then the least busy, then the fastest.
                    (sa.complete, sa.inflight)
                        .cmp(&(sb.complete, sb.inflight))
                        .then(
                            sb.rate
                                .partial_cmp(&sa.rate)
                                .unwrap_or(std::cmp::Ordering::Equal),
                        )
                })
                .cloned()
                .expect("a ready holder");
            if endgame && inflight.get(&idx).is_some_and(|s| !s.is_empty()) {
                tracing::debug!("{}: endgame, chunk {idx} again from {host}", job.name);
            }
            // From a complete holder, with it its neighbours in the same run
            // of `MAX_RUN` that nobody was asked for yet, within the
            // holder's room: one request, one record, one write. Not while
            // other pullers can serve (the holder would send one chunk of
            // the run, and the rest would wait for nothing): pullers trade
            // single chunks, which a swarm spreads faster, and each
            // puller's uplink is shared by all the others.
            let (mut lo, mut hi) = (idx, idx + 1);
            if !endgame && !swarming && st.sources[&host].complete {
                let s = &st.sources[&host];
                let room = s
                    .cap(swarming, self.net.rtt(&host))
                    .saturating_sub(s.inflight)
                    .max(1);
                let wanted = |i: usize| {
                    !bit(&st.have, i)
                        && !writing.contains(&i)
                        && !hints.not_before.contains_key(&i)
                        && !inflight.contains_key(&i)
                        && has(&host, s, i)
                };
                let first = idx - idx % MAX_RUN;
                let end = (first + MAX_RUN).min(n);
                while hi < end && hi - lo < room && wanted(hi) {
                    hi += 1;
                }
                while lo > first && hi - lo < room && wanted(lo - 1) {
                    lo -= 1;
                }
            }
            let count = hi - lo;
            tracing::trace!("{}: asking {host} for chunks {lo}..{hi}", job.name);
            for i in lo..hi {
                inflight.entry(i).or_default().insert(host.clone());
            }
            let s = st.sources.get_mut(&host).expect("ready source");
            if s.inflight == 0 {
                s.busy_since = Some(Instant::now());
            }
            s.inflight += count;
            let fut = self.net.chunk(
                host.clone(),
                job.name.clone(),
                job.manifest.root.clone(),
                lo as u32,
                count as u32,
            );
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send((host, lo, count, fut.await));
            });
        }
    }
}

/// rename(2) that fails instead of replacing an existing file.
fn rename_noreplace(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &std::path::Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (a, b) = (c(from)?, c(to)?);
    // SAFETY: both paths are NUL-terminated C strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

pub fn fmt_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// A second descriptor on the partial file that bypasses the page cache,
/// for whole runs: the transfer makes every chunk durable soon
/// anyway, and the page cache would cost a copy now and writeback later.
struct Direct {
    file: std::fs::File,
    on: AtomicBool,
}

impl Direct {
    /// None where the file system has no `O_DIRECT` (tmpfs on older
    /// kernels), or if `path` is no longer the file `same_as` has open.
    fn open(path: &Path, same_as: &std::fs::File) -> Option<Direct> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let file = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok()?;
        let (a, b) = (file.metadata().ok()?, same_as.metadata().ok()?);
        (a.dev() == b.dev() && a.ino() == b.ino()).then_some(Direct {
            file,
            on: AtomicBool::new(true),
        })
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_sizes_read_well() {
        assert_eq!(fmt_time(SystemTime::UNIX_EPOCH), "1970-01-01 00:00:00");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(fmt_time(t), "2026-11-18 11:06:40");
        assert_eq!(human(512.0), "512 B");
        assert_eq!(human(1536.0 * 1024.0), "1.5 MiB");
    }

    #[test]
    fn a_holder_sends_each_chunk_once_while_pullers_are_at_work() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        assert_eq!(l.decide("a", 7, t0), None, "the first asker gets it");
        assert_eq!(l.decide("a", 7, t0), None, "and again, if it asks again");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            l.decide("b", 7, t1),
            Some("a".into()),
            "the next is pointed at a"
        );
        assert_eq!(l.decide("b", 7, t1), None, "but only once per chunk");
        assert_eq!(l.decide("c", 7, t1), Some("a".into()));
        // A puller that stopped asking is nobody to point at.
        let later = t0 + PULLER_ACTIVE + Duration::from_secs(1);
        assert_eq!(l.decide("d", 8, later), None);
        assert_eq!(l.decide("e", 7, later), None, "a is not active any more");
        // A chunk sent long ago starts a new round.
        let t2 = t0 + SENT_FRESH + Duration::from_secs(1);
        l.decide("a", 9, t2);
        assert_eq!(l.decide("f", 7, t2), None);
        assert_eq!(l.decide("g", 7, t2), Some("f".into()));
    }

    #[test]
    fn a_holder_sends_whole_runs_only_to_a_lone_puller() {
        let t0 = Instant::now();
        let mut l = Ledger::default();
        assert_eq!(l.decide_run("a", 8, 4, t0), Ok(4), "alone: the whole run");
        assert_eq!(l.decide_run("a", 12, 4, t0), Ok(4));
        // A second puller: single chunks to both from now on, and chunks
        // a already has are pointed at a.
        assert_eq!(l.decide_run("b", 16, 4, t0), Ok(1));
        assert_eq!(l.decide_run("a", 20, 4, t0), Ok(1));
        assert_eq!(l.decide_run("b", 9, 4, t0), Err("a".into()));
        // Once b has gone quiet, a is alone again; a run stops short of a
        // chunk sent to b (still fresh).
        let t1 = t0 + PULLER_ACTIVE + Duration::from_secs(1);
        assert_eq!(l.decide_run("a", 13, 4, t1), Ok(3), "16 went to b");
    }

    #[test]
    fn requests_in_flight_cover_the_round_trip_but_no_queue() {
        let chunk = crate::manifest::CHUNK_SIZE as f64;
        // A distant source on a fast link: each request takes the round
        // trip plus its transfer, so what we measure is cap x chunk / that.
        // The cap must grow to the link, not settle at one per round trip.
        let (rtt, link) = (Duration::from_millis(50), 1e9);
        let mut s = SourceStat::default();
        let mut cap = s.cap(false, Some(rtt));
        for _ in 0..20 {
            let latency = rtt.as_secs_f64() + chunk / link;
            s.rate = (cap as f64 * chunk / latency).min(link);
            cap = s.cap(false, Some(rtt));
        }
        assert_eq!(cap, PER_SOURCE, "stuck at {cap} in flight");
        // A puller's uplink shared by six others, next door: about 4 MB/s
        // each. One in flight keeps it busy; more only queue there.
        let s = SourceStat {
            rate: 4e6,
            ..SourceStat::default()
        };
        assert_eq!(s.cap(false, Some(Duration::from_micros(200))), 1);
        // Unmeasured: two, to measure.
        assert_eq!(SourceStat::default().cap(false, None), 2);
    }

    #[test]
    fn misses_survive_the_wire() {
        for m in [
            Miss::NotYet,
            Miss::Redirect("h3".into()),
            Miss::Failed("big: no chunk 9".into()),
        ] {
            assert_eq!(Miss::from_wire(m.to_wire()), m);
        }
        // A file named like a miss is still an error about that file.
        let e = "redirect x: not here in that version".to_string();
        assert_eq!(Miss::from_wire(e.clone()), Miss::Failed(e));
    }

    #[test]
    fn bitfields() {
        let mut b = vec![0u8; 2];
        set_bit(&mut b, 0);
        set_bit(&mut b, 9);
        assert!(bit(&b, 0) && bit(&b, 9) && !bit(&b, 1));
        assert_eq!(count_bits(&b, 16), 2);
        assert!(!bit(&b, 100));
    }
}
