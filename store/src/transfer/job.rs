//! One transfer: its file, what is here so far, its sources, and how it is
//! shown in `file status`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::bits::count_bits;
use super::source::SourceStat;
use crate::fmt::human;
use crate::manifest::Manifest;
use crate::Result;

pub(super) struct JobState {
    pub(super) have: Vec<u8>,
    pub(super) queued: bool,
    pub(super) phase: String,
    pub(super) bytes: u64,
    pub(super) rate: f64,
    pub(super) sources: BTreeMap<String, SourceStat>,
    /// Sources no longer tracked (see [`super::peers`]): kept for what
    /// they served and for a ban on bad data, which outlives a refresh.
    pub(super) retired: BTreeMap<String, SourceStat>,
    /// The chunks that landed here, in order, for other pullers' news.
    pub(super) log: Vec<u32>,
    /// Chunks found here, verified, when the transfer resumed after a
    /// restart: counted by no source.
    pub(super) resumed: usize,
    /// Once done: how long pulling and finishing took, for the log.
    pub(super) took: String,
    /// When a chunk was last written (or the transfer started): the rate
    /// is measured per chunk, so without this a transfer whose sources all
    /// hung would go on showing its last rate and a short eta.
    pub(super) last_data: Instant,
    /// What the loop did, for the completion log line: the cost of a
    /// transfer besides its bytes.
    pub(super) counts: Counts,
}

/// Requests a transfer made and how often its loop woke.
#[derive(Default, Clone, Copy)]
pub(super) struct Counts {
    pub(super) asks: u64,
    pub(super) polls: u64,
    pub(super) refreshes: u64,
    pub(super) turns: u64,
}

impl JobState {
    /// `host`'s record, tracked or retired ([`super::peers::stat`]).
    pub(super) fn stat(&mut self, host: &str) -> &mut SourceStat {
        super::peers::stat(&mut self.sources, &mut self.retired, host)
    }

    /// A holder pointed us at `to` for chunk `idx`
    /// ([`super::peers::redirected`]).
    pub(super) fn redirected(
        &mut self,
        hints: &mut super::pick::Hints,
        from: &str,
        to: String,
        idx: usize,
        t: &super::Tuning,
    ) {
        let now = std::time::Instant::now();
        let (sources, retired) = (&mut self.sources, &mut self.retired);
        super::peers::redirected(sources, retired, hints, from, to, idx, now, t.peers, t.hold);
    }

    /// `from` asked this node for chunks or have-bits of this version of
    /// `name`: it pulls it too, and becomes a source when new and while
    /// there is room ([`super::peers::asked_by`]). Called under the lock
    /// the request's answer takes anyway.
    pub(super) fn asked_by(&mut self, from: &str, name: &str, t: &super::Tuning) {
        if super::peers::asked_by(&mut self.sources, &self.retired, from, t.peers) {
            tracing::debug!("{name}: {from} asked for it: pulling from it too");
        }
    }

    /// Applies a refresh's `offered` hosts to the peer set
    /// ([`super::peers::refresh`]), with the node's limits.
    pub(super) fn refresh_peers(
        &mut self,
        seed: u64,
        hints: &super::pick::Hints,
        offered: Vec<(super::peers::Offer, Vec<u8>)>,
        t: &super::Tuning,
        rtts: &std::collections::HashMap<String, std::time::Duration>,
        far: &std::collections::HashSet<String>,
    ) {
        let (sources, retired) = (&mut self.sources, &mut self.retired);
        let (limits, bad) = (t.peers, t.max_bad);
        let sites = super::sites::Sites {
            far,
            now: Instant::now(),
        };
        super::peers::refresh(
            seed, sources, retired, hints, offered, limits, bad, rtts, sites,
        );
    }

    /// Every source ever tracked, in name order.
    pub(super) fn all_sources(&self) -> impl Iterator<Item = (&String, &SourceStat)> {
        let mut v: Vec<_> = self.sources.iter().chain(self.retired.iter()).collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.into_iter()
    }
}

/// No chunk for this long, and a pulling transfer shows as stalled, with no
/// rate and no eta; a source that has had requests unanswered this long is
/// marked `(stalled)`.
pub(super) const STALLED: Duration = Duration::from_secs(5);

pub(super) struct Job {
    pub(super) name: String,
    pub(super) manifest: Manifest,
    /// The partial file.
    pub(super) tmp: PathBuf,
    st: Mutex<JobState>,
    cancelled: AtomicBool,
    pub(super) cancel_note: tokio::sync::Notify,
    /// Held while recording have-bits; true once the transfer has ended
    /// and its records are gone (a late record must not bring them back).
    pub(super) persist_lock: tokio::sync::Mutex<bool>,
    /// One writer at a time: concurrent writes to one file only contend
    /// for the inode lock in the kernel, spinning on both cores.
    pub(super) write_lock: Mutex<()>,
    /// Chunks written lately, to serve other pullers from memory.
    pub(super) recent: Mutex<super::recent::Recent>,
    /// The partial file as the pull opened it, once it has: other pullers'
    /// chunks are read through it, which costs no open per answer and
    /// still reads the file once `finish` has moved it to its name.
    pub(super) open: std::sync::OnceLock<Arc<super::durable::Partial>>,
    pub(super) done: watch::Sender<Option<Result<()>>>,
}

/// One source's part in a transfer, for `file status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRow {
    pub host: String,
    /// Chunks it gave that were verified and written.
    pub served: u64,
    /// Chunks it gave that failed verification.
    pub bad: u32,
    /// Requests that failed in a row.
    pub failing: u32,
    pub dropped: bool,
    /// It has had requests unanswered for [`STALLED`] or more.
    pub stalled: bool,
}

impl SourceRow {
    /// `host:chunks`, then ` (bad N)`, and ` (dropped)`, ` (failing N)` or
    /// ` (stalled)`.
    pub fn label(&self) -> String {
        let mut t = format!("{}:{}", self.host, self.served);
        if self.bad > 0 {
            t.push_str(&format!(" (bad {})", self.bad));
        }
        if self.dropped {
            t.push_str(" (dropped)");
        } else if self.failing > 0 {
            t.push_str(&format!(" (failing {})", self.failing));
        } else if self.stalled {
            t.push_str(" (stalled)");
        }
        t
    }
}

/// One row of `file status`.
#[derive(Debug, Clone)]
pub struct Status {
    pub name: String,
    pub tempdir: String,
    /// Chunks here, and in the file.
    pub chunks_done: usize,
    pub chunks: usize,
    pub queued: bool,
    pub bytes_done: u64,
    pub size: u64,
    /// Bytes per second over the last second or so (over the transfer so
    /// far, in its first second); for a finished transfer, over the pull.
    pub rate: f64,
    pub sources: Vec<SourceRow>,
    /// Chunks that were here, verified, when the transfer resumed.
    pub resumed: usize,
    /// Seconds left at the current rate, if it is moving.
    pub eta_secs: Option<u64>,
    /// `queued`, `pulling`, `finishing`, `waiting for holders (...)`; for a
    /// finished transfer, `done`, `cancelled` or `failed: why`.
    pub phase: String,
    /// When it ended; none while it goes on.
    pub ended: Option<std::time::SystemTime>,
}

impl Status {
    pub fn completed(&self) -> String {
        format!("{}/{}", self.chunks_done, self.chunks)
    }

    pub fn bytes(&self) -> String {
        format!(
            "{}/{}",
            human(self.bytes_done as f64),
            human(self.size as f64)
        )
    }

    pub fn rate(&self) -> String {
        format!("{}/s", human(self.rate))
    }

    pub fn eta(&self) -> String {
        self.eta_secs
            .map_or_else(|| "-".to_string(), |s| format!("{s}s"))
    }

    /// Every source, labelled as in the log.
    pub fn sources_label(&self) -> String {
        let v: Vec<String> = self.sources.iter().map(SourceRow::label).collect();
        v.join(", ")
    }
}

impl Job {
    pub(super) fn new(
        name: String,
        manifest: Manifest,
        tmp: PathBuf,
        st: JobState,
    ) -> (Job, watch::Receiver<Option<Result<()>>>) {
        let (done, rx) = watch::channel(None);
        let job = Job {
            name,
            manifest,
            tmp,
            st: Mutex::new(st),
            cancelled: AtomicBool::new(false),
            cancel_note: tokio::sync::Notify::new(),
            persist_lock: tokio::sync::Mutex::new(false),
            write_lock: Mutex::new(()),
            recent: Mutex::new(Default::default()),
            open: std::sync::OnceLock::new(),
            done,
        };
        (job, rx)
    }

    pub(super) fn state(&self) -> MutexGuard<'_, JobState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sources that gave anything, as the completion line shows them.
    pub(super) fn sources_summary(&self) -> String {
        let st = self.state();
        let mut v: Vec<String> = st
            .all_sources()
            .filter(|(_, s)| s.served > 0 || s.bad > 0)
            .map(|(h, s)| s.label(h))
            .collect();
        if st.resumed > 0 {
            v.push(format!("(and {} here before a restart)", st.resumed));
        }
        v.join(", ")
    }

    pub(super) fn recent(&self) -> MutexGuard<'_, super::recent::Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    pub(super) fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
        self.cancel_note.notify_one();
    }

    pub(super) fn status(&self) -> Status {
        let st = self.state();
        let n = self.manifest.chunk_count();
        let left = self.manifest.size.saturating_sub(st.bytes);
        let quiet = st.last_data.elapsed();
        let stalled = st.phase == "pulling" && quiet >= STALLED;
        // Waiting for holders or a slot, or reading back what was here:
        // the last rate pulled at says nothing of now.
        let moving = matches!(st.phase.as_str(), "pulling" | "finishing") && !st.queued;
        let rate = if stalled || !moving { 0.0 } else { st.rate };
        let eta_secs = (rate > 1.0 && !st.queued).then(|| (left as f64 / rate).ceil() as u64);
        let phase = if stalled {
            format!("stalled (no data for {}s)", quiet.as_secs())
        } else {
            st.phase.clone()
        };
        Status {
            name: self.name.clone(),
            tempdir: self.tmp.to_string_lossy().into_owned(),
            chunks_done: count_bits(&st.have, n),
            chunks: n,
            queued: st.queued,
            bytes_done: st.bytes,
            size: self.manifest.size,
            rate,
            sources: st.all_sources().map(|(h, s)| s.row(h)).collect(),
            resumed: st.resumed,
            eta_secs,
            phase,
            ended: None,
        }
    }
}
