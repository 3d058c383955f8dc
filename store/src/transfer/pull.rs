//! One transfer's loop. [`Pull`] holds its state; each event has its own
//! handler: a chunk answer, a finished write, a source's have-bits, a fresh
//! holder list. Between events the loop asks [`pick::next`] what to
//! request, until the file is complete.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::warn;

use super::bits::{bit, clear_bit, count_bits, set_bit};
use super::durable::{Partial, Piece, Written};
use super::job::{Counts, Job};
use super::peers;
use super::pick::{self, Hints};
use super::Asker;
use super::{pace, sites};
use super::{Engine, Miss, Progress, ProgressAnswers, Reply, SYNC_EVERY};
use crate::buf::ChunkBuf;
use crate::{Error, Result};

/// A finished have poll: source, its bitfield.
type HaveDone = (String, Result<Vec<u8>>);
/// A finished chunk request: source, first chunk index, chunks asked for,
/// the answer (data: the first of them, possibly fewer than asked).
type ChunkDone = (String, usize, usize, Reply);
/// A finished write: source, and each chunk's index and outcome.
type WriteDone = (String, Vec<(usize, Written)>);
/// A finished have-bit record: the bits it recorded.
type Persisted = Result<Vec<u8>>;

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
            let failed = |i| {
                let e = Error::Failed(format!("writing chunk {i} failed"));
                (i, Written::Failed(e))
            };
            let _ = tx.send((host, idxs.into_iter().map(failed).collect()));
        }
    }
}

/// What a refresh found: who has what, and which nodes say they are at
/// another site than this one.
type Refreshed = (ProgressAnswers, HashSet<String>);

/// Channels from the tasks a pull starts back to its loop.
struct Inbox {
    chunk_tx: mpsc::UnboundedSender<ChunkDone>,
    chunks: mpsc::UnboundedReceiver<ChunkDone>,
    written_tx: mpsc::UnboundedSender<WriteDone>,
    written: mpsc::UnboundedReceiver<WriteDone>,
    have_tx: mpsc::UnboundedSender<HaveDone>,
    haves: mpsc::UnboundedReceiver<HaveDone>,
    refresh_tx: mpsc::UnboundedSender<Refreshed>,
    refreshes: mpsc::UnboundedReceiver<Refreshed>,
    persisted_tx: mpsc::UnboundedSender<Persisted>,
    persisted: mpsc::UnboundedReceiver<Persisted>,
}

impl Inbox {
    fn new() -> Inbox {
        let (chunk_tx, chunks) = mpsc::unbounded_channel();
        let (written_tx, written) = mpsc::unbounded_channel();
        let (have_tx, haves) = mpsc::unbounded_channel();
        let (refresh_tx, refreshes) = mpsc::unbounded_channel();
        let (persisted_tx, persisted) = mpsc::unbounded_channel();
        Inbox {
            persisted_tx,
            persisted,
            chunk_tx,
            chunks,
            written_tx,
            written,
            have_tx,
            haves,
            refresh_tx,
            refreshes,
        }
    }
}

pub(super) struct Pull {
    engine: Arc<Engine>,
    job: Arc<Job>,
    partial: Arc<Partial>,
    /// The transfer slot; given up while no source is usable.
    slot: Option<OwnedSemaphorePermit>,
    /// Chunk -> the sources it is asked of now.
    inflight: HashMap<usize, HashSet<String>>,
    /// Received and being verified and written.
    writing: HashSet<usize>,
    hints: Hints,
    /// Whether a have-bit record is being made (one at a time).
    persisting: bool,
    /// Chunks a completed record covers.
    synced: Vec<u8>,
    /// Chunks written since the last record.
    unsynced: usize,
    last_persist: Instant,
    last_have: Instant,
    /// None until the first holder list is asked for.
    last_refresh: Option<Instant>,
    refreshing: bool,
    /// How long after the last refresh the next is due, while sources are
    /// usable.
    pace: pace::RefreshPace,
    /// Sources whose have-bits are being asked for.
    polling: HashSet<String>,
    retry_wait: Duration,
    /// Bytes written since when, for the rate `file status` shows.
    rate_window: (Instant, u64),
    /// Whether a whole window of [`Pull::rate_window`] is over.
    rated: bool,
    inbox: Inbox,
    /// This transfer's own order of the other pullers ([`peers::rank`]).
    seed: u64,
    /// Kept here, not under the job's lock, and handed to it at the end.
    counts: Counts,
    /// The sources' round trips, and when they were read: they change only
    /// when a connection opens, and reading them on every turn of the loop
    /// cost a 15-puller swarm 2% of its CPU.
    rtts: (HashMap<String, Duration>, Option<Instant>),
    /// Where the next list of unreached pullers starts (`peers::gone_for`).
    gone_turn: u64,
    /// The nodes that say they are at another site than this one
    /// ([`Net::far`](super::Net::far)), as of the last refresh.
    far: HashSet<String>,
}

/// How often the loop reads the sources' round trips again.
const RTTS_EVERY: Duration = Duration::from_millis(500);

/// A transfer's rate is first shown this long after its start, over what
/// came so far; then over each second.
const FIRST_RATE: f64 = 0.2;

/// What woke the loop.
enum Event {
    Chunk(ChunkDone),
    Written(WriteDone),
    Have(HaveDone),
    Refresh(Refreshed),
    Persisted(Persisted),
    Tick,
}

impl Pull {
    pub(super) fn new(
        engine: Arc<Engine>,
        job: Arc<Job>,
        partial: Partial,
        slot: OwnedSemaphorePermit,
        far: HashSet<String>,
    ) -> Pull {
        let now = Instant::now();
        let retry_wait = engine.tuning.retry_first;
        let pace = pace::RefreshPace::new(engine.tuning.refresh_every);
        let here = job.state().have.clone();
        let seed = rand::random();
        {
            // The holders `file get` found, through the same choice as
            // every refresh: its first requests go to the peers it keeps.
            let mut st = job.state();
            let offered = st
                .sources
                .iter()
                .filter(|(_, s)| !s.dropped)
                .map(|(h, s)| {
                    let host = h.clone();
                    let complete = s.complete;
                    (peers::Offer { host, complete }, s.have.clone())
                })
                .collect();
            let known = rtts(&engine, st.sources.keys());
            st.refresh_peers(
                seed,
                &Hints::default(),
                offered,
                &engine.tuning,
                &known,
                &far,
            );
        }
        let partial = Arc::new(partial);
        let _ = job.open.set(partial.clone());
        Pull {
            engine,
            job,
            partial,
            slot: Some(slot),
            inflight: HashMap::new(),
            writing: HashSet::new(),
            hints: Hints::default(),
            persisting: false,
            // What is here at the start was recorded (and read back and
            // verified when resumed).
            synced: here,
            unsynced: 0,
            last_persist: now,
            last_have: now,
            // Ask the mesh at once: new holders may have appeared since
            // the get (and a resumed transfer knows no source at all).
            last_refresh: None,
            refreshing: false,
            pace,
            polling: HashSet::new(),
            retry_wait,
            rate_window: (now, 0),
            rated: false,
            inbox: Inbox::new(),
            seed,
            counts: Counts::default(),
            rtts: (HashMap::new(), None),
            gone_turn: 0,
            far,
        }
    }

    /// Pulls until every chunk is here and recorded, and the partial file
    /// holds them all; hands back the transfer slot, which the file keeps
    /// until it is in place.
    pub(super) async fn run(mut self) -> Result<Option<OwnedSemaphorePermit>> {
        let n = self.job.manifest.chunk_count();
        loop {
            if self.job.is_cancelled() {
                return Err(Error::Cancelled);
            }
            if count_bits(&self.job.state().have, n) == n {
                // The last record at once, not at the next quarter second.
                if !self.persisting {
                    if count_bits(&self.synced, n) < n {
                        self.start_persist();
                    } else if !self.refetch_holes() {
                        break;
                    }
                }
            }
            self.start_refresh();
            self.poll_partial_sources();
            let now = Instant::now();
            let promise = self.engine.tuning.promise;
            self.hints.promised.retain(|_, (_, t)| now - *t < promise);
            super::source::release(&mut self.job.state().sources, now);
            self.hints.not_before.retain(|_, t| *t > now);
            self.schedule();
            self.counts.turns += 1;
            match self.next_event().await {
                Event::Chunk(done) => self.on_chunk(done),
                Event::Written((host, done)) => self.on_written(host, done).await?,
                Event::Have((host, bits)) => self.on_have(host, bits),
                Event::Refresh(answers) => self.on_refresh(answers).await?,
                Event::Persisted(r) => self.on_persisted(r)?,
                Event::Tick => self.persist_if_due(),
            }
        }
        self.job.state().counts = self.counts;
        Ok(self.slot.take())
    }

    async fn next_event(&mut self) -> Event {
        let inbox = &mut self.inbox;
        tokio::select! {
            Some(d) = inbox.chunks.recv() => Event::Chunk(d),
            Some(d) = inbox.written.recv() => Event::Written(d),
            Some(d) = inbox.haves.recv() => Event::Have(d),
            Some(d) = inbox.refreshes.recv() => Event::Refresh(d),
            Some(d) = inbox.persisted.recv() => Event::Persisted(d),
            _ = self.job.cancel_note.notified() => Event::Tick,
            _ = tokio::time::sleep(Duration::from_millis(100)) => Event::Tick,
        }
    }

    /// Asks the mesh who holds the file, in the background (a silent node
    /// never stalls the transfer): every few seconds while sources are
    /// usable, with a growing wait while none is.
    fn start_refresh(&mut self) {
        let every = {
            let st = self.job.state();
            if st.sources.values().any(|s| !s.dropped) {
                self.pace
                    .wait(&st.sources, self.engine.tuning.refresh_every)
            } else {
                self.retry_wait
            }
        };
        if self.refreshing || self.last_refresh.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.refreshing = true;
        self.counts.refreshes += 1;
        let net = &self.engine.net;
        let fut = net.progress(self.job.name.clone(), self.job.manifest.root.clone());
        let far = net.far();
        let tx = self.inbox.refresh_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send((fut.await, far.await));
        });
    }

    /// Other pullers' progress, often: the sooner we see what they have,
    /// the more we take from them instead of the holder. Only of those we
    /// have not heard from lately: a puller we ask for chunks sends its
    /// news with every answer.
    fn poll_partial_sources(&mut self) {
        let every = self.engine.tuning.have_every;
        if self.last_have.elapsed() < every {
            return;
        }
        let now = Instant::now();
        self.last_have = now;
        let st = self.job.state();
        let keep = sites::keeps_to_site(&st.sources, &self.far, now);
        let partial: Vec<String> = st
            .sources
            .iter()
            .filter(|(h, s)| {
                let quiet = s.inflight == 0 && s.heard.is_none_or(|t| now - t >= every);
                let wanted = !keep || !self.far.contains(*h);
                !s.complete && !s.dropped && quiet && wanted && !self.polling.contains(*h)
            })
            .map(|(h, _)| h.clone())
            .collect();
        drop(st);
        self.counts.polls += partial.len() as u64;
        for host in partial {
            self.polling.insert(host.clone());
            let fut = self.engine.net.have(
                host.clone(),
                self.job.name.clone(),
                self.job.manifest.root.clone(),
            );
            let tx = self.inbox.have_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send((host, fut.await));
            });
        }
    }

    /// Starts the requests [`pick::next`] chooses, until it chooses none.
    fn schedule(&mut self) {
        let job = self.job.clone();
        let mut st = job.state();
        let now = Instant::now();
        if self.rtts.1.is_none_or(|t| now - t >= RTTS_EVERY) {
            self.rtts = (rtts(&self.engine, st.sources.keys()), Some(now));
        }
        let rtts = &self.rtts.0;
        let mut rng = rand::thread_rng();
        loop {
            let view = pick::View {
                chunks: job.manifest.chunk_count(),
                have: &st.have,
                writing: &self.writing,
                inflight: &self.inflight,
                sources: &st.sources,
                hints: &self.hints,
                rtts,
                far: &self.far,
                now,
            };
            let Some(ask) = pick::next(&view, &mut rng) else {
                return;
            };
            let (host, lo, count) = (ask.host, ask.first, ask.count);
            if ask.endgame {
                tracing::debug!("{}: endgame, chunk {lo} again from {host}", job.name);
            }
            tracing::trace!(
                "{}: asking {host} for chunks {lo}..{}",
                job.name,
                lo + count
            );
            for i in lo..lo + count {
                self.inflight.entry(i).or_default().insert(host.clone());
            }
            let gone = peers::gone_for(&st.sources, &host, &mut self.gone_turn);
            // News from another site's puller would be dropped while we
            // keep to our own: not asked for, not sent over the thin link.
            let news = !sites::leaves_alone(&st.sources, &self.far, &host, now);
            let s = st
                .sources
                .get_mut(&host)
                .expect("a source the picker chose");
            if s.inflight == 0 {
                s.busy_since = Some(Instant::now());
                s.waiting_since = Some(Instant::now());
            }
            s.inflight += count;
            let asker = Asker {
                seen: (!s.complete && news).then_some(s.seen),
                progress: Some(Asker::progress_of(st.bytes, job.manifest.size)),
                gone,
            };
            self.counts.asks += 1;
            let fut = self.engine.net.chunk(
                host.clone(),
                job.name.clone(),
                job.manifest.root.clone(),
                lo as u32,
                count as u32,
                asker,
            );
            let tx = self.inbox.chunk_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send((host, lo, count, fut.await));
            });
        }
    }

    /// An answer to a chunk request: the chunks, to verify and write, or
    /// a miss, which says when and whom to ask again.
    fn on_chunk(&mut self, (host, idx, count, reply): ChunkDone) {
        let res = reply.chunks;
        tracing::trace!(
            "{}: chunks {idx}..{} from {host}: {}",
            self.job.name,
            idx + count,
            match &res {
                Ok(d) => format!("{} bytes", d.len()),
                Err(m) => format!("{m:?}"),
            }
        );
        for i in idx..idx + count {
            if let Some(set) = self.inflight.get_mut(&i) {
                set.remove(&host);
                if set.is_empty() {
                    self.inflight.remove(&i);
                }
            }
        }
        let t = &self.engine.tuning;
        let data = {
            let mut st = self.job.state();
            let st = &mut *st;
            let far = sites::leaves_alone(&st.sources, &self.far, &host, Instant::now());
            if let Some(s) = peers::record(&mut st.sources, &mut st.retired, &host) {
                s.inflight = s.inflight.saturating_sub(count);
                s.waiting_since = (s.inflight > 0).then(Instant::now);
                s.measure(res.as_ref().map_or(0, |d| d.len() as u64));
                if let Some(news) = reply.news.as_ref().filter(|_| !far) {
                    s.hear(news, self.job.manifest.chunk_count(), Instant::now());
                }
            }
            match res {
                Ok(data) => Some(data),
                // Neither is the source's fault.
                Err(Miss::NotYet) => {
                    // Whatever we heard, it does not have it (it may have
                    // lost it since).
                    if let Some(s) = st.sources.get_mut(&host) {
                        if !s.complete && idx / 8 < s.have.len() {
                            clear_bit(&mut s.have, idx);
                        }
                    }
                    self.hints
                        .not_before
                        .insert(idx, Instant::now() + t.not_yet_wait);
                    None
                }
                Err(Miss::Redirect(to)) => {
                    // Possibly a puller we have not heard of yet, or do not
                    // track.
                    if sites::follows(&st.sources, &self.far, &to, Instant::now()) {
                        st.redirected(&mut self.hints, &host, to, idx, &self.engine.tuning);
                    }
                    None
                }
                // The connection broke under this request (and maybe
                // others): try again soon, on a new one.
                Err(Miss::Lost(e)) => {
                    let s = st.stat(&host);
                    s.lost += 1;
                    s.benched_until = Some(Instant::now() + t.lost_wait);
                    tracing::debug!("{}: chunk {idx} from {host}: {e}", self.job.name);
                    None
                }
                Err(miss @ (Miss::Failed(_) | Miss::Gone(_))) => {
                    let s = st.stat(&host);
                    s.fails += 1;
                    s.benched_until = Some(Instant::now() + t.fail_wait * (1u32 << s.fails.min(6)));
                    let e = match miss {
                        Miss::Gone(e) => {
                            s.dropped = true;
                            e
                        }
                        Miss::Failed(e) => e,
                        _ => unreachable!(),
                    };
                    if s.fails >= t.max_fails {
                        s.dropped = true;
                    }
                    warn!("{}: chunk {idx} from {host} failed: {e}", self.job.name);
                    None
                }
            }
        };
        if let Some(data) = data {
            self.take(host, idx, count, data);
        }
    }

    /// Hands the useful chunks of an answer to a blocking thread that
    /// verifies and writes them, while the loop goes on asking: hashing
    /// and the copy into the page cache are a good part of a fast
    /// transfer's time.
    fn take(&mut self, host: String, idx: usize, count: usize, data: ChunkBuf) {
        // The answer is the run's first chunks, one after another (a
        // source may send fewer than asked). A short last piece is taken as
        // it is, and fails verification.
        let mut take = Vec::new();
        {
            let st = self.job.state();
            let mut at = 0usize;
            for i in idx..idx + count {
                // Past the answer's end: not sent. (An empty answer still
                // yields its first chunk, to fail verification.)
                if at >= data.len() && i > idx {
                    break;
                }
                let len = (self.job.manifest.chunk_range(i).1 as usize).min(data.len() - at);
                // The other copy of an endgame request may have won.
                if !super::bits::bit(&st.have, i) && !self.writing.contains(&i) {
                    take.push(Piece { idx: i, at, len });
                }
                at += len;
            }
        }
        if take.is_empty() {
            return;
        }
        self.writing.extend(take.iter().map(|t| t.idx));
        let (job, partial) = (self.job.clone(), self.partial.clone());
        let idxs = take.iter().map(|t| t.idx).collect();
        let report = Report(Some((host, idxs, self.inbox.written_tx.clone())));
        let data = Arc::new(data);
        tokio::task::spawn_blocking(move || report.send(partial.write(&job, &take, &data)));
    }

    /// Chunks verified and written (or found bad): the have-bits, the
    /// sources' records, and a durable record of the bits when one is due.
    async fn on_written(&mut self, host: String, done: Vec<(usize, Written)>) -> Result<()> {
        for (idx, w) in done {
            self.writing.remove(&idx);
            if self.written(host.clone(), idx, w)? {
                self.unsynced += 1;
            }
        }
        self.persist_if_due();
        Ok(())
    }

    /// A restart re-fetches only chunks not yet recorded: keep that window
    /// small (a few chunks, a quarter second), also when no chunk comes
    /// after them (the sources hung). One record at a time, off the loop.
    fn persist_if_due(&mut self) {
        let due = self.unsynced >= SYNC_EVERY
            || (self.unsynced > 0
                && self.last_persist.elapsed() >= self.engine.tuning.persist_every);
        if due && !self.persisting {
            self.start_persist();
        }
    }

    /// Syncs the file and records the have-bits it covers, off the loop.
    fn start_persist(&mut self) {
        let record = self
            .engine
            .clone()
            .persist(self.job.clone(), self.partial.file.clone());
        let tx = self.inbox.persisted_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(record.await);
        });
        self.persisting = true;
        self.unsynced = 0;
        self.last_persist = Instant::now();
    }

    /// A have-bit record is made: its chunks are on disk.
    fn on_persisted(&mut self, r: Persisted) -> Result<()> {
        self.persisting = false;
        let bits = r?;
        // Not those found missing from the file since the record began.
        let st = self.job.state();
        for (s, (b, h)) in self.synced.iter_mut().zip(bits.iter().zip(&st.have)) {
            *s |= b & h;
        }
        Ok(())
    }

    /// Marks the chunks in holes of the partial file as missing again;
    /// whether there were any.
    fn refetch_holes(&mut self) -> bool {
        let m = &self.job.manifest;
        let holes = super::durable::missing(&self.partial.file, m.size);
        if holes.is_empty() {
            return false;
        }
        let cs = m.chunk_size;
        let mut st = self.job.state();
        let mut lost = 0;
        for (from, to) in holes {
            for i in (from / cs) as usize..to.div_ceil(cs) as usize {
                self.job.recent().forget(i);
                if bit(&st.have, i) {
                    lost += 1;
                    clear_bit(&mut st.have, i);
                    st.bytes = st.bytes.saturating_sub(m.chunk_range(i).1);
                }
                clear_bit(&mut self.synced, i);
            }
        }
        warn!(
            "{}: the partial file lost data under the transfer (it was cut short: {lost} \
             chunks); fetching them again",
            self.job.name
        );
        true
    }

    /// Books one finished write: the have-bit, the source's record.
    /// Returns whether a chunk was added (and so awaits a durable record).
    fn written(&mut self, host: String, idx: usize, w: Written) -> Result<bool> {
        let job = &self.job;
        let mut st = job.state();
        let len = match w {
            Written::Failed(e) => return Err(e),
            Written::Bad => {
                let s = st.stat(&host);
                s.bad += 1;
                warn!(
                    "{}: chunk {idx} from {host} failed verification ({} bad from it); \
                     fetching it elsewhere",
                    job.name, s.bad
                );
                // Chunks still in flight from it fail too: say it once.
                if s.bad >= self.engine.tuning.max_bad && !s.dropped {
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
        st.log.push(idx as u32);
        st.bytes += len;
        st.last_data = Instant::now();
        let s = st.stat(&host);
        s.served += 1;
        s.fails = 0;
        s.lost = 0;
        self.rate_window.1 += len;
        let el = self.rate_window.0.elapsed().as_secs_f64();
        if el >= 1.0 {
            st.rate = self.rate_window.1 as f64 / el;
            self.rate_window = (Instant::now(), 0);
            self.rated = true;
        } else if !self.rated && el >= FIRST_RATE {
            // No window is over yet: a transfer shorter than one would
            // show no rate and no eta for its whole life.
            st.rate = self.rate_window.1 as f64 / el;
        }
        Ok(true)
    }

    /// A puller's have-bits, as it answered (ignored unless they fit).
    fn on_have(&mut self, host: String, bits: Result<Vec<u8>>) {
        self.polling.remove(&host);
        let want = self.job.manifest.chunk_count().div_ceil(8);
        let mut st = self.job.state();
        if sites::leaves_alone(&st.sources, &self.far, &host, Instant::now()) {
            return;
        }
        if let Some(s) = st.sources.get_mut(&host) {
            if !s.complete && bits.as_ref().is_ok_and(|b| b.len() == want) {
                s.have = bits.unwrap_or_default();
                s.heard = Some(Instant::now());
            }
        }
    }

    /// A fresh answer to "who holds it". With no usable source the
    /// transfer waits, retrying less and less often, and gives up its slot
    /// meanwhile: files that can move should not queue behind one that
    /// cannot.
    async fn on_refresh(&mut self, (answers, far): Refreshed) -> Result<()> {
        self.far = far;
        self.refreshing = false;
        self.last_refresh = Some(Instant::now());
        self.apply_refresh(answers);
        let usable = self.job.state().sources.values().any(|s| !s.dropped);
        let t = &self.engine.tuning;
        if usable {
            if self.slot.is_none() {
                self.job.state().queued = true;
                self.slot = Some(self.engine.acquire_slot(&self.job).await?);
                self.job.state().queued = false;
            }
            self.retry_wait = t.retry_first;
            {
                let mut st = self.job.state();
                // Quiet time counts from when it could pull again, not
                // from each refresh that finds the same (hung) holders.
                if st.phase != "pulling" {
                    st.phase = "pulling".into();
                    st.last_data = Instant::now();
                }
            }
        } else {
            self.slot = None;
            self.retry_wait = (self.retry_wait * 2).min(t.retry_max);
            self.job.state().phase = format!(
                "waiting for holders (retry in {}s)",
                self.retry_wait.as_secs()
            );
        }
        Ok(())
    }

    /// Drops the sources that answered without the file, then tracks the
    /// holders and other pullers [`peers::choose`] keeps (with their
    /// progress, re-admitting those that came back) and retires the rest.
    /// A host that did not answer keeps its state: it may be busy, and is
    /// benched if its chunk requests fail. (Nodes gone from the mesh
    /// altogether are not in `answers`.)
    fn apply_refresh(&mut self, answers: ProgressAnswers) {
        let job = &self.job;
        let mut st = job.state();
        let mut offered = Vec::new();
        let bytes = job.manifest.chunk_count().div_ceil(8);
        for (host, res) in answers {
            let Ok(progress) = res else { continue };
            match progress {
                Progress::Whole => {
                    let o = peers::Offer {
                        host,
                        complete: true,
                    };
                    offered.push((o, Vec::new()));
                }
                // A bitfield of another length is not of this file: as
                // good as no answer.
                Progress::Partial(have) if have.len() != bytes => {}
                Progress::Partial(have) => {
                    let o = peers::Offer {
                        host,
                        complete: false,
                    };
                    offered.push((o, have));
                }
                Progress::Not => {
                    if let Some(s) = st.sources.get_mut(&host) {
                        s.dropped = true;
                    }
                }
            }
        }
        // Round trips to every host there is one for, offered or not: a
        // far host dropped once is not taken back for a near one.
        let hosts = offered.iter().map(|(o, _)| &o.host);
        let rtts = rtts(
            &self.engine,
            hosts.chain(st.sources.keys()).chain(st.retired.keys()),
        );
        let t = &self.engine.tuning;
        let found = pace::offer_digest(&offered);
        st.refresh_peers(self.seed, &self.hints, offered, t, &rtts, &self.far);
        // A pointer taken before it was known to be a complete holder at
        // another site: the chunk would wait out the promise.
        let now = Instant::now();
        self.hints
            .promised
            .retain(|_, (to, _)| sites::follows(&st.sources, &self.far, to, now));
        self.pace
            .refreshed(found, &st.sources, t.refresh_every, t.refresh_most);
    }
}

impl Engine {
    /// One transfer, from its slot to its final name.
    pub(super) async fn run(self: &Arc<Self>, job: &Arc<Job>) -> Result<()> {
        let slot = self.acquire_slot(job).await?;
        if job.is_cancelled() {
            return Err(Error::Cancelled);
        }
        {
            let mut st = job.state();
            st.queued = false;
            st.phase = "pulling".into();
            st.last_data = Instant::now();
        }
        let started = Instant::now();
        let partial = self.open_partial(job).await?;
        self.verify_resumed(job, &partial.file).await?;
        // The mean rate is of what comes now, over the time it takes: not
        // the chunks read back and verified, nor the time that took.
        let (before, fetching) = (job.state().bytes, Instant::now());
        let file = partial.file.clone();
        // Before the first request: the sources `get` found include those
        // at other sites.
        let far = self.net.far().await;
        let _slot = Pull::new(self.clone(), job.clone(), partial, slot, far)
            .run()
            .await?;
        let (pulled, fetched) = (started.elapsed(), fetching.elapsed());
        self.finish(job, &file).await?;
        let mut st = job.state();
        // What `file status all` shows of it from now on: the mean over
        // the pull, not its last second.
        st.rate = st.bytes.saturating_sub(before) as f64 / fetched.as_secs_f64().max(1e-3);
        let c = st.counts;
        st.took = format!(
            ", pulled in {:.2} s, synced and moved in {:.2} s; {} chunk requests, {} have polls, {} refreshes, {} loop turns",
            pulled.as_secs_f64(),
            (started.elapsed() - pulled).as_secs_f64(),
            c.asks,
            c.polls,
            c.refreshes,
            c.turns
        );
        Ok(())
    }

    /// One of the [`super::MAX_ACTIVE`] transfer slots, or an error once
    /// cancelled.
    pub(super) async fn acquire_slot(&self, job: &Arc<Job>) -> Result<OwnedSemaphorePermit> {
        tokio::select! {
            p = self.slots.clone().acquire_owned() => {
                p.map_err(|e| Error::Failed(format!("transfer slots: {e}")))
            }
            _ = job.cancel_note.notified() => Err(Error::Cancelled),
        }
    }
}

/// The round trips known for `hosts`.
fn rtts<'a>(engine: &Engine, hosts: impl Iterator<Item = &'a String>) -> HashMap<String, Duration> {
    hosts
        .filter_map(|h| Some((h.clone(), engine.net.rtt(h)?)))
        .collect()
}
