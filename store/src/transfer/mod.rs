//! The transfer engine: pulls files from every node that holds them, in
//! parallel verified chunks, into a partial file that is renamed into place
//! only when complete. Network-agnostic: the node supplies a [`Net`].
//!
//! Invariants:
//! - a chunk is verified against the manifest before it is written;
//! - a have-bit is persisted only after the data it covers is fdatasync'ed;
//! - a file appears under its final name only complete and verified;
//! - nothing outside the files directory is written through a wire name
//!   (every name is opened beneath it: [`crate::FilesDir::open_file`],
//!   `open_partial`, `place`);
//! - a file gets its name only once its partial file, checked through the
//!   open descriptor, holds every chunk (full size, no holes).
//!
//! This file is the engine's public face (get, wait, cancel, status,
//! resume). The rest, by concern: [`find`] (who holds what, versions and
//! conflicts), [`pull`] (one transfer's loop), [`pick`] (the pure choice of
//! the next request), [`source`] (what a puller knows of each source), [`peers`] (which
//! sources it tracks),
//! [`ledger`] (a holder's record of its pullers), [`serve`] (answering
//! other nodes), [`durable`] (the partial file, syncs, have-bit records,
//! the final rename), [`job`] (one transfer and its status).

mod bits;
mod durable;
mod find;
mod job;
mod ledger;
mod pace;
mod peers;
mod pick;
mod pull;
mod recent;
mod serve;
#[doc(hidden)]
pub mod sim;
mod sites;
mod source;
#[cfg(test)]
mod tests;
mod tuning;
mod uplink;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

use crate::buf::ChunkBuf;
use crate::files::{glob_match, has_magic, FilesDir};
use crate::fmt::human;
use crate::local::Local;
use crate::manifest::Manifest;
use crate::{Error, Result};
use bits::{bit, count_bits};
pub use durable::{Disk, SyncData};
use job::{Job, JobState};
pub use job::{SourceRow, Status};
use ledger::Ledger;
pub use peers::PeerLimits;
use source::SourceStat;
pub use tuning::Tuning;
pub use uplink::SendSlot;

/// Files transferring at once on one node; more are queued.
pub const MAX_ACTIVE: usize = 3;
/// Finished transfers `file status all` still shows.
const RECENT: usize = 32;
/// Chunks in `bytes` bytes, for limits that are about memory or time on the
/// wire rather than about how many chunks.
pub(super) const fn chunks(bytes: u64) -> usize {
    (bytes / crate::manifest::CHUNK_SIZE) as usize
}
/// Chunks asked of one source and not yet answered, at most (8 MiB).
const PER_SOURCE: usize = chunks(8 << 20);
/// Requests in flight to a source cover about this much of its delivery,
/// beyond two round trips. B2 (7 pullers sharing each other's uplinks): 100
/// ms and at least two in flight gave 1.18; 50 ms and at least one, 1.13.
const IN_FLIGHT_TIME: Duration = Duration::from_millis(50);
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
/// Chunks written between two fdatasync + have-bit records (or
/// [`Tuning::persist_every`], whichever comes first). Each record costs a
/// journal commit; 64 MiB is 40-60 ms of a fast transfer to re-fetch after
/// a crash.
const SYNC_EVERY: usize = chunks(64 << 20);

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
pub type HolderAnswers = Vec<(String, Result<Vec<Held>>)>;

/// What a node has of one version of a file: the answer to a puller's
/// refresh. A `get` needs the manifests once; a refresh every few seconds
/// needs only this (a tenth of a kilobyte per GiB, not 128 KiB).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Progress {
    /// The whole file.
    Whole,
    /// A transfer in progress, with the chunks it has so far.
    Partial(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Not this version.
    Not,
}

/// Per host: what it has of the file, or why it did not answer.
pub type ProgressAnswers = Vec<(String, Result<Progress>)>;

/// Why a source did not send a chunk. Crosses the wire as it is, so a
/// puller acts on the kind, never on text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Miss {
    /// A puller that does not have this chunk yet: ask again shortly.
    NotYet,
    /// A holder that already sent this chunk to that other puller, which
    /// will pass it on: the holder's uplink is what every puller shares.
    Redirect(String),
    /// The source does not hold this version (any more): it is no source.
    Gone(String),
    Failed(String),
    /// The connection to the source broke: this request, and any others on
    /// it, were not answered. Not a sign the source is bad.
    Lost(String),
}

impl From<Error> for Miss {
    fn from(e: Error) -> Miss {
        match e {
            Error::NotThatVersion { .. } => Miss::Gone(e.to_string()),
            e => Miss::Failed(e.to_string()),
        }
    }
}

/// What a puller that serves a file says of its progress, with each
/// answer: the chunks it got since the requester last heard, as entries
/// `from..` of its log of chunks in the order they landed. Other pullers
/// learn what it has from the answers they get anyway, instead of polling
/// its bitfield (15 pullers polling each other every 100 ms were 2,100
/// requests a second over the mesh).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct News {
    pub from: u32,
    pub chunks: Vec<u32>,
}

/// Log entries one answer carries at most (4 KiB); the rest come with the
/// next.
pub const MAX_NEWS: usize = 1024;

/// A source's answer to a chunk request: the chunks, or why not, and its
/// news (from a puller, when asked for).
pub struct Reply {
    pub chunks: Result<ChunkBuf, Miss>,
    pub news: Option<News>,
}

impl From<Result<ChunkBuf, Miss>> for Reply {
    fn from(chunks: Result<ChunkBuf, Miss>) -> Reply {
        Reply { chunks, news: None }
    }
}

/// How the engine reaches other nodes.
pub trait Net: Send + Sync + 'static {
    /// Asks every other node which files match `pattern`; silent nodes are
    /// simply missing or errors, never a failure of the whole question.
    fn holders(&self, pattern: String) -> BoxFuture<'static, HolderAnswers>;
    /// Asks every other node what it has of this version of a file (a
    /// puller's refresh); the same silences as [`Net::holders`].
    fn progress(&self, name: String, root: Vec<u8>) -> BoxFuture<'static, ProgressAnswers>;
    /// The round trip time to `host`, if known (no data moving).
    fn rtt(&self, host: &str) -> Option<Duration>;
    /// The nodes that say they are at another site than this one (`mm
    /// serve --site`); none when this node says none. A node that says
    /// none is taken to be at this node's site.
    fn far(&self) -> BoxFuture<'static, std::collections::HashSet<String>>;
    /// The have-bitfield of a node that is itself pulling the file.
    fn have(
        &self,
        host: String,
        name: String,
        root: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>>>;
    /// Chunks `index..index + count`, one after another; a source may
    /// send fewer (at least the first).
    fn chunk(
        &self,
        host: String,
        name: String,
        root: Vec<u8>,
        index: u32,
        count: u32,
        asker: Asker,
    ) -> BoxFuture<'static, Reply>;
}

/// What a chunk request tells its source about the puller asking.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Asker {
    /// How much of the source's news the asker has heard: with it, the
    /// answer carries the source's news from that entry of its log on, if
    /// the source is a puller ([`Engine::news`]).
    pub seen: Option<u32>,
    /// How far along the asker is, in 65536ths of the file: a source whose
    /// answers wait for a send slot serves the furthest behind first
    /// ([`Engine::send_slot`]). None from a node that does not say.
    pub progress: Option<u16>,
    /// Pullers the asker could not reach (a request failed, or the
    /// connection broke, since their last chunk), told to a complete
    /// holder: it stops pointing askers at them (`peers::gone_for`).
    /// At most [`MAX_GONE`].
    pub gone: Vec<String>,
}

/// Pullers one request tells of at most.
pub const MAX_GONE: usize = 4;

impl Asker {
    /// `done` of `of` as [`Asker::progress`] counts it.
    pub fn progress_of(done: u64, of: u64) -> u16 {
        if of == 0 {
            return u16::MAX;
        }
        (done.min(of) as u128 * u16::MAX as u128 / of as u128) as u16
    }
}

/// Which version to take when holders disagree.
#[derive(Debug, Default, Clone)]
pub struct Select {
    pub from: Option<String>,
    pub hash: Option<String>,
}

/// The end of a transfer, to wait on.
pub type Done = watch::Receiver<Option<Result<()>>>;

/// What `get` did with each file: queued it now, or found it already coming.
pub struct Pending {
    pub name: String,
    pub queued: bool,
    pub done: Done,
}

/// Whether `name` is what `pattern` (cleaned) asks for: itself, something
/// under it as a directory, or a glob match, or something under a directory
/// a glob matches (a holder offers those: `*` takes `sub/x.txt` too).
pub fn selects(pattern: &str, name: &str) -> bool {
    if has_magic(pattern) {
        let depth = pattern.split('/').count();
        let parts: Vec<&str> = name.split('/').collect();
        parts.len() >= depth && glob_match(pattern, &parts[..depth].join("/"))
    } else {
        name == pattern || name.starts_with(&format!("{pattern}/"))
    }
}

#[cfg(test)]
#[test]
fn a_glob_selects_what_is_under_the_directories_it_matches() {
    assert!(selects("*", "a.iso"));
    assert!(selects("*", "sub/x.txt"));
    assert!(selects("img/*.qcow2", "img/a.qcow2"));
    assert!(!selects("img/*.qcow2", "img/a.iso"));
    assert!(selects("i*", "img/sub/a"));
    assert!(!selects("img/*", "img"));
    assert!(selects("img", "img/a") && !selects("img", "imgx"));
}

pub struct Engine {
    local: Arc<Local>,
    net: Arc<dyn Net>,
    tuning: Tuning,
    disk: Arc<dyn Disk>,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    /// Transfers that ended, newest last, for `file status all`.
    recent: Mutex<Vec<Status>>,
    slots: Arc<Semaphore>,
    /// Per file served whole: see [`Ledger`].
    ledgers: Mutex<HashMap<String, Ledger>>,
    /// What this node has sent of each file, since it started.
    sent: Mutex<BTreeMap<String, Sent>>,
    uplink: Arc<uplink::Uplink>,
    /// The same, for answers from a transfer in progress here.
    peer_uplink: Arc<uplink::Uplink>,
}

/// What a node has sent of one file to other nodes, for `file served`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sent {
    pub chunks: u64,
    pub bytes: u64,
    /// The nodes it went to.
    pub to: std::collections::BTreeSet<String>,
}

impl Engine {
    pub fn new(local: Arc<Local>, net: Arc<dyn Net>) -> Arc<Engine> {
        Engine::with_tuning(local, net, Tuning::default())
    }

    pub fn with_tuning(local: Arc<Local>, net: Arc<dyn Net>, tuning: Tuning) -> Arc<Engine> {
        Engine::with(local, net, tuning, Arc::new(SyncData))
    }

    /// An engine with its timing and its way of making writes durable
    /// chosen (tests shorten the one and record the other).
    pub fn with(
        local: Arc<Local>,
        net: Arc<dyn Net>,
        tuning: Tuning,
        disk: Arc<dyn Disk>,
    ) -> Arc<Engine> {
        Arc::new(Engine {
            local,
            net,
            disk,
            jobs: Mutex::new(HashMap::new()),
            recent: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(MAX_ACTIVE)),
            ledgers: Mutex::new(HashMap::new()),
            sent: Mutex::new(BTreeMap::new()),
            uplink: uplink::Uplink::new(tuning.send_slots, tuning.slot_hold),
            peer_uplink: uplink::Uplink::new(tuning.peer_send_slots, tuning.slot_hold),
            tuning,
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
        for (name, p) in self.persisted() {
            if self.placed(&name, &p.manifest) {
                info!("{name}: here whole already (its transfer ended as the node stopped)");
                let _ = self.local.meta.remove("transfers", &name);
                let _ = self.local.meta.remove("transfer-have", &name);
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
    pub async fn get(self: &Arc<Self>, pattern: &str, sel: &Select) -> Result<Vec<Pending>> {
        let pattern = FilesDir::clean(pattern)?;
        if pattern.is_empty() {
            return Err(Error::BadName(
                "file get needs a file name, glob or directory".into(),
            ));
        }
        let answers = self.net.holders(pattern.clone()).await;
        let asked = answers.len();
        let (mut found, silent) = find::versions(&pattern, answers);
        if !silent.is_empty() {
            info!(
                "file get {pattern}: no usable answer from {}",
                silent.join(", ")
            );
        }
        let holders = find::whole_holders(&found);
        find::choose(&mut found, sel);
        if found.is_empty() && sel.from.is_none() && sel.hash.is_none() {
            let local = self.local.clone();
            let p = pattern.clone();
            let here = tokio::task::spawn_blocking(move || local.files.expand(&p)).await??;
            if !here.is_empty() {
                return Ok(Vec::new()); // only here: nothing to fetch
            }
        }
        if found.is_empty() {
            return Err(find::no_holder(&pattern, asked, sel, &silent, &holders));
        }
        if find::conflicts(&found).is_some() {
            // A name whose copy here is one of its versions is here
            // already: nothing to fetch, and nothing to choose.
            let mut here = Vec::new();
            for (name, versions) in &found {
                if versions.len() < 2 {
                    continue;
                }
                let l = self.local.clone();
                let n = name.clone();
                let local = tokio::task::spawn_blocking(move || l.manifest(&n)).await??;
                if local.is_some_and(|lm| versions.contains_key(&lm.root_hex())) {
                    here.push(name.clone());
                }
            }
            for n in here {
                found.remove(&n);
            }
            if found.is_empty() {
                return Ok(Vec::new());
            }
        }
        if let Some(c) = find::conflicts(&found) {
            return Err(Error::Conflict(c));
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
                tokio::task::spawn_blocking(move || l.manifest(&n)).await??
            };
            if let Some(lm) = local {
                if lm.root == m.root {
                    continue; // already here
                }
                return Err(Error::Exists(format!(
                    "{name} exists here with different content (hash {}); to fetch the \
                     mesh's version, `file delete {name}` first, or move it out of the files \
                     directory",
                    lm.root_hex()
                )));
            }
            if let Some(j) = self.jobs().get(&name) {
                if j.is_cancelled() {
                    return Err(Error::Busy(format!(
                        "{name}: a cancelled transfer is still ending; try again in a moment"
                    )));
                }
                if j.manifest.root == m.root {
                    coming.push(Pending {
                        name: name.clone(),
                        queued: false,
                        done: j.done.subscribe(),
                    });
                    continue;
                }
                return Err(Error::Busy(format!(
                    "{name} is already being fetched in another version"
                )));
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
        if let Some(free) = durable::free_bytes(&self.files().partial_dir()) {
            if need > free {
                return Err(Error::NoSpace {
                    dir: self.files().root().to_path_buf(),
                    need: human(need as f64),
                    free: human(free as f64),
                });
            }
        }
        let mut queued = coming;
        for (name, m, sources) in plan {
            let have = vec![0u8; m.chunk_count().div_ceil(8)];
            self.record_queued(&name, &m, &have)?;
            let done = self.start_job(name.clone(), m, have, sources)?;
            queued.push(Pending {
                name,
                queued: true,
                done,
            });
        }
        // A queued transfer must survive a crash of this node.
        let meta = self.local.meta.clone();
        tokio::task::spawn_blocking(move || meta.flush()).await??;
        Ok(queued)
    }

    /// Where the transfer of `name` in `manifest`'s version is kept until
    /// it is complete: named by both the name and the content, so two names
    /// with the same content never share one.
    /// Whether a transfer of `m` recorded as unfinished was moved into
    /// place under `name` after all: a node stopped between the move and
    /// the record's end (sled writes lazily) would otherwise find no
    /// partial file, fetch the whole file again, warn that nothing it had
    /// verifies, and then refuse to overwrite the copy already there. A
    /// file of the right size with no partial file left is hashed if its
    /// manifest is not cached (the cache is written lazily too). Blocking.
    fn placed(&self, name: &str, m: &Manifest) -> bool {
        if let Some(c) = self.local.cached(name) {
            return c.root == m.root;
        }
        let Ok(path) = self.files().resolve(name) else {
            return false;
        };
        let right_size = std::fs::metadata(&path).is_ok_and(|f| f.is_file() && f.len() == m.size);
        if !right_size || self.partial_path(name, m).exists() {
            return false;
        }
        self.local
            .manifest(name)
            .ok()
            .flatten()
            .is_some_and(|h| h.root == m.root)
    }

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
    ) -> Result<Done> {
        let tmp = self.partial_path(&name, &manifest);
        let bytes = (0..manifest.chunk_count())
            .filter(|i| bit(&have, *i))
            .map(|i| manifest.chunk_range(i).1)
            .sum();
        let state = JobState {
            have,
            queued: true,
            phase: "queued".into(),
            bytes,
            rate: 0.0,
            sources,
            retired: BTreeMap::new(),
            log: Vec::new(),
            resumed: 0,
            took: String::new(),
            last_data: std::time::Instant::now(),
            counts: Default::default(),
        };
        let (job, rx) = Job::new(name.clone(), manifest, tmp, state);
        let job = Arc::new(job);
        {
            let mut jobs = self.jobs();
            if jobs.contains_key(&name) {
                return Err(Error::Busy(format!("{name} is already being fetched")));
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
            .unwrap_or_else(|e| Err(Error::Failed(format!("transfer task failed: {e}"))));
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
            me.forget_transfer(&job).await;
            {
                let mut jobs = me.jobs();
                if jobs.get(&name).is_some_and(|j| Arc::ptr_eq(j, &job)) {
                    jobs.remove(&name);
                }
            }
            me.remember_ended(&job, &result);
            let _ = job.done.send(Some(result));
        });
        Ok(rx)
    }

    /// Keeps the last rows of ended transfers for `file status all`.
    fn remember_ended(&self, job: &Job, result: &Result<()>) {
        let mut row = job.status();
        row.phase = match result {
            Ok(()) => "done".into(),
            Err(Error::Cancelled) => "cancelled".into(),
            Err(e) => format!("failed: {e}"),
        };
        if result.is_err() {
            row.rate = 0.0;
        }
        row.eta_secs = None;
        row.ended = Some(std::time::SystemTime::now());
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.push(row);
        if recent.len() > RECENT {
            recent.remove(0);
        }
    }

    /// Waits until every transfer has ended; the first error wins.
    pub async fn wait(&self, pending: Vec<Pending>) -> Result<()> {
        let mut first_err = None;
        for mut p in pending {
            let r = loop {
                if let Some(r) = p.done.borrow().clone() {
                    break r;
                }
                if p.done.changed().await.is_err() {
                    break p.done.borrow().clone().unwrap_or_else(|| {
                        Err(Error::Failed(format!(
                            "{}: transfer ended without a result",
                            p.name
                        )))
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

    /// The transfers in progress, by name; with `ended`, also the last
    /// ones that ended, oldest first, after them.
    pub fn status(&self, ended: bool) -> Vec<Status> {
        let mut rows: Vec<Status> = self.jobs().values().map(|j| j.status()).collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        if ended {
            rows.extend(
                self.recent
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned(),
            );
        }
        rows
    }
}
