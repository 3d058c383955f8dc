//! Answering other nodes: what this node can serve, chunks from complete
//! files and from transfers in progress, and a puller's have-bits.

use std::time::Instant;

use tracing::warn;

use super::bits::bit;
use super::ledger::{Ledger, Portion};
use super::{selects, Engine, Held, Miss, News, Progress, SendSlot, Sent, MAX_NEWS};
use crate::buf::ChunkBuf;
use crate::files::FilesDir;
use crate::manifest::MAX_RUN;
use crate::{Error, Result};

impl Engine {
    /// What this node can serve for `pattern`: complete files (hashed on
    /// first request) and files it is itself pulling. Blocking.
    pub fn held(&self, pattern: &str) -> Result<Vec<Held>> {
        let clean = FilesDir::clean(pattern)?;
        if clean.is_empty() {
            // Would hash the whole directory for one question.
            return Err(Error::BadName("name a file, glob or directory".into()));
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
        let before = buf.len();
        self.read_run(from, name, root, index, count, buf)?;
        let bytes = (buf.len() - before) as u64;
        let chunks = bytes.div_ceil(crate::manifest::CHUNK_SIZE).max(1);
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let s = sent.entry(name.to_string()).or_default();
        s.chunks += chunks;
        s.bytes += bytes;
        if !s.to.contains(from) {
            s.to.insert(from.to_string());
        }
        Ok(())
    }

    /// What this node has sent of each file since it started, by name.
    pub fn sent(&self) -> Vec<(String, Sent)> {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.iter().map(|(n, s)| (n.clone(), s.clone())).collect()
    }

    fn read_run(
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
                return Err(Error::NoChunk {
                    name: name.into(),
                    index,
                }
                .into());
            }
            let k = {
                let mut st = j.state();
                st.asked_by(from, name, &self.tuning);
                (index..(index + count).min(n))
                    .take_while(|&i| bit(&st.have, i))
                    .count()
            };
            if k == 0 {
                return Err(Miss::NotYet);
            }
            {
                let mut recent = j.recent();
                recent.on = true;
                if recent.copy(index, k, buf) > 0 {
                    return Ok(());
                }
            }
            let (off, len) = j.manifest.run_range(index, k);
            // Through the pull's own descriptor: the transfer may have
            // just ended, its file moved to its name and the job not yet
            // gone (by name, such a read failed, and the asker counted it
            // against a live source).
            return self
                .read_partial(&j, off, len as usize, buf)
                .map_err(Into::into);
        }
        // Only a request this node can answer from its file enters the
        // ledger.
        let (file, m) = self.local.chunk_source(name, root, index)?;
        let count = count.min(m.chunk_count() - index);
        let k = match self.portion(from, name, root, index as u32, count as u32) {
            Portion::Send(k) => k as usize,
            Portion::Redirect(first) => {
                tracing::trace!("{name}: chunk {index}: {from} pointed at {first}");
                return Err(Miss::Redirect(first));
            }
        };
        tracing::trace!("{name}: chunks {index}..{} to {from}", index + k);
        let (off, len) = m.run_range(index, k);
        buf.read_at(&file, off, len as usize)
            .map_err(|e| Error::io("reading", name, e).into())
    }

    /// [`Engine::read_chunk`] into a buffer of its own, with room for a
    /// whole run.
    pub fn read_chunks(
        &self,
        from: &str,
        name: &str,
        root: &[u8],
        index: usize,
        count: usize,
    ) -> Result<ChunkBuf, Miss> {
        let mut buf = ChunkBuf::with_capacity(crate::manifest::CHUNK_SIZE as usize * MAX_RUN);
        self.read_chunk(from, name, root, index, count, &mut buf)?;
        Ok(buf)
    }

    /// How many chunks of a run to send `from`, or whom to point it at.
    fn portion(&self, from: &str, name: &str, root: &[u8], index: u32, count: u32) -> Portion {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let idle = self.tuning.ledger_idle;
        ledgers.retain(|_, l| l.active.values().any(|t| now - *t < idle));
        let l = ledgers.entry(name.to_string()).or_default();
        if l.root != root {
            *l = Ledger::new(root);
        }
        let portion = l.decide_run(&self.tuning, from, index, count, now);
        log_forgotten(l, name);
        portion
    }

    /// `from`, asking for `name` (version `root`), could not reach the
    /// pullers `gone` ([`super::Asker::gone`]): if this node serves that
    /// file whole, it stops pointing askers at them.
    pub fn told_gone(&self, from: &str, name: &str, root: &[u8], gone: &[String]) {
        if gone.is_empty() {
            return;
        }
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = ledgers.get_mut(name).filter(|l| l.root == root) {
            l.told_gone(&self.tuning, from, gone, Instant::now());
            log_forgotten(l, name);
        }
    }

    /// The news of a transfer in progress here for a puller that has heard
    /// `seen` entries of its log: the next ones, up to [`MAX_NEWS`]. From
    /// the start again if it heard more than there are (this is another
    /// transfer of the file than the one it heard from). None if the file
    /// is not being pulled here in that version.
    pub fn news(&self, name: &str, root: &[u8], seen: u32) -> Option<News> {
        let job = self.jobs().get(name).cloned()?;
        if job.manifest.root != root {
            return None;
        }
        let st = job.state();
        let from = if seen as usize > st.log.len() {
            0
        } else {
            seen as usize
        };
        let end = (from + MAX_NEWS).min(st.log.len());
        Some(News {
            from: from as u32,
            chunks: st.log[from..end].to_vec(),
        })
    }

    /// The engine's timing.
    pub fn tuning(&self) -> &super::Tuning {
        &self.tuning
    }

    /// A place on the uplink for an answer of `name` (version `root`),
    /// taken before it is sent and held until the kernel has sent most of
    /// it (see `uplink.rs`): from the complete holder's slots, or, for an
    /// answer from a transfer in progress here, from the fewer slots a
    /// puller gives the other pullers (`Tuning::peer_send_slots`).
    /// While a puller's answers wait for one of its slots, those to the
    /// asker furthest behind ([`super::Asker::progress`]; not saying
    /// counts as done) go first: every puller of a swarm is then done at
    /// about the same time, and none waits alone for what it lacked in the
    /// middle. Blocking, for up to `Tuning::slot_patience`.
    pub fn send_slot(&self, name: &str, root: &[u8], progress: Option<u16>) -> SendSlot {
        let pulling = self
            .jobs()
            .get(name)
            .is_some_and(|j| j.manifest.root == root);
        // A holder's answers go in the order they came: the pullers
        // furthest behind may be those behind a thin link to another site,
        // where an answer crawls (the simulator, two sites of 500 joined by
        // twice a host's link, holders serving them first: the last done
        // at 3.96 of size / cap instead of 3.87, half of them at 1.77
        // instead of 1.63); and the 15-puller bench was no slower for it
        // (1.20-1.26 against 1.23-1.27).
        if pulling {
            self.peer_uplink
                .take(self.tuning.slot_patience, progress.unwrap_or(u16::MAX))
        } else {
            self.uplink.take(self.tuning.slot_patience, 0)
        }
    }

    /// What this node has of one version of `name`, as [`Engine::held`]
    /// would offer it, without the manifest. Blocking (a file not hashed
    /// yet is hashed).
    pub fn progress(&self, name: &str, root: &[u8]) -> Result<Progress> {
        FilesDir::clean(name)?;
        match self.local.manifest(name) {
            Ok(Some(m)) if m.root == root => return Ok(Progress::Whole),
            Ok(_) => {}
            Err(e) => warn!("not offering {name}: {e}"),
        }
        let job = self.jobs().get(name).cloned();
        Ok(match job {
            Some(j) if j.manifest.root == root && !j.is_cancelled() => {
                Progress::Partial(j.state().have.clone())
            }
            _ => Progress::Not,
        })
    }

    /// The have-bitfield of a transfer in progress here, for other pullers;
    /// every bit once the file is here whole. A puller that tracks this
    /// node as one of its pullers goes on polling it after it finished,
    /// until a refresh says it is complete: meanwhile the chunks it got
    /// last are the ones the poller most likely lacks, and this node's
    /// uplink is free to send them. `from`, the poller, pulls the file too
    /// ([`super::peers::asked_by`]).
    pub fn have_bits(&self, from: &str, name: &str, root: &[u8]) -> Result<Vec<u8>> {
        let job = self.jobs().get(name).cloned();
        if let Some(j) = job.filter(|j| j.manifest.root == root) {
            let mut st = j.state();
            st.asked_by(from, name, &self.tuning);
            return Ok(st.have.clone());
        }
        match self.local.current(name).filter(|(_, m)| m.root == root) {
            Some((_, m)) => Ok(super::bits::all_bits(m.chunk_count())),
            None => Err(Error::NotFetching { name: name.into() }),
        }
    }
}

/// Logs the pullers `l` just forgot because others could not reach them.
fn log_forgotten(l: &mut Ledger, name: &str) {
    for g in l.take_forgotten() {
        tracing::debug!(
            "{name}: {g} cannot be reached by other pullers: not pointed at until it asks again"
        );
    }
}
