//! An in-memory mesh for the transfer engine: engines in one process, each
//! reaching the others through a [`MemNet`], with faults to inject (a
//! corrupt holder, a dead one, a stalled one, a slow uplink). The engine's
//! behaviour is tested on it without root, sockets or real seconds.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use crate::transfer::{Asker, HolderAnswers, Miss, Net, ProgressAnswers, Reply};
use crate::{ChunkBuf, Engine, Error, Result};

/// Deterministic, incompressible bytes for test files: the same `seed`
/// gives the same content.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What is wrong with a node, as the others see it.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Every chunk it sends has a byte flipped (it still says it holds
    /// the file in the version asked for).
    pub corrupt: bool,
    /// Its chunk requests fail (it answers, with an error).
    pub failing: bool,
    /// It never answers anything again (a stopped process).
    pub stalled: bool,
    /// It answers who holds what, but its chunks never come (a stopped
    /// process seen by a get that started before it stopped).
    pub hangs: bool,
    /// Each chunk it sends takes this long on its uplink, one at a time.
    pub per_chunk: Duration,
}

struct Member {
    engine: Weak<Engine>,
    faults: Faults,
    /// Chunks this node sent, to each node.
    sent: HashMap<String, u64>,
    /// One send at a time: the node's uplink.
    uplink: Arc<tokio::sync::Mutex<()>>,
    /// The site it says it is at.
    site: Option<String>,
}

/// The mesh: every member by name.
#[derive(Default)]
pub struct Hub {
    members: Mutex<HashMap<String, Member>>,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<String, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This node's view of the mesh, to build its engine with.
    pub fn net(self: &Arc<Self>, name: &str) -> Arc<MemNet> {
        Arc::new(MemNet {
            me: name.to_string(),
            hub: self.clone(),
        })
    }

    /// Puts `engine` in the mesh as `name` (replacing an earlier one: a
    /// restart).
    pub fn join(&self, name: &str, engine: &Arc<Engine>) {
        self.members().insert(
            name.to_string(),
            Member {
                engine: Arc::downgrade(engine),
                faults: Faults::default(),
                sent: HashMap::new(),
                uplink: Arc::new(tokio::sync::Mutex::new(())),
                site: None,
            },
        );
    }

    pub fn leave(&self, name: &str) {
        self.members().remove(name);
    }

    /// `name` says it is at `site` (`mm serve --site`).
    pub fn set_site(&self, name: &str, site: &str) {
        if let Some(m) = self.members().get_mut(name) {
            m.site = Some(site.to_string());
        }
    }

    pub fn set_faults(&self, name: &str, faults: Faults) {
        if let Some(m) = self.members().get_mut(name) {
            m.faults = faults;
        }
    }

    /// Chunks `name` sent, in all.
    pub fn sent(&self, name: &str) -> u64 {
        self.members()
            .get(name)
            .map_or(0, |m| m.sent.values().sum())
    }

    /// Chunks `from` sent to `to`.
    pub fn sent_to(&self, from: &str, to: &str) -> u64 {
        self.members()
            .get(from)
            .and_then(|m| m.sent.get(to).copied())
            .unwrap_or(0)
    }

    /// The engine and faults of a member other than `me`.
    fn peer(
        &self,
        me: &str,
        name: &str,
    ) -> Option<(Arc<Engine>, Faults, Arc<tokio::sync::Mutex<()>>)> {
        if name == me {
            return None;
        }
        let m = self.members();
        let p = m.get(name)?;
        Some((p.engine.upgrade()?, p.faults.clone(), p.uplink.clone()))
    }
}

/// One node's way to the others.
pub struct MemNet {
    me: String,
    hub: Arc<Hub>,
}

/// A stopped node: nothing comes back.
async fn never<T>() -> T {
    futures::future::pending().await
}

impl Net for MemNet {
    fn holders(&self, pattern: String) -> BoxFuture<'static, HolderAnswers> {
        let (me, hub) = (self.me.clone(), self.hub.clone());
        async move {
            let names: Vec<String> = hub.members().keys().cloned().collect();
            let mut out = Vec::new();
            for name in names {
                let Some((engine, faults, _)) = hub.peer(&me, &name) else {
                    continue;
                };
                // The real mesh answers for a silent node when its time is
                // up; so does this one, at once.
                if faults.stalled {
                    out.push((name, Err(Error::Net("timed out".into()))));
                    continue;
                }
                let p = pattern.clone();
                let held = tokio::task::spawn_blocking(move || engine.held(&p))
                    .await
                    .unwrap_or_else(|e| Err(e.into()));
                out.push((name, held));
            }
            out
        }
        .boxed()
    }

    fn progress(&self, name: String, root: Vec<u8>) -> BoxFuture<'static, ProgressAnswers> {
        let (me, hub) = (self.me.clone(), self.hub.clone());
        async move {
            let names: Vec<String> = hub.members().keys().cloned().collect();
            let mut out = Vec::new();
            for host in names {
                let Some((engine, faults, _)) = hub.peer(&me, &host) else {
                    continue;
                };
                if faults.stalled {
                    out.push((host, Err(Error::Net("timed out".into()))));
                    continue;
                }
                let (n, r) = (name.clone(), root.clone());
                let p = tokio::task::spawn_blocking(move || engine.progress(&n, &r))
                    .await
                    .unwrap_or_else(|e| Err(e.into()));
                out.push((host, p));
            }
            out
        }
        .boxed()
    }

    fn rtt(&self, _host: &str) -> Option<Duration> {
        None
    }

    fn far(&self) -> BoxFuture<'static, HashSet<String>> {
        let m = self.hub.members();
        let far = match m.get(&self.me).and_then(|me| me.site.as_ref()) {
            Some(mine) => m
                .iter()
                .filter(|(_, o)| o.site.as_ref().is_some_and(|s| s != mine))
                .map(|(n, _)| n.clone())
                .collect(),
            None => HashSet::new(),
        };
        futures::future::ready(far).boxed()
    }

    fn have(
        &self,
        host: String,
        name: String,
        root: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<u8>>> {
        let (me, hub) = (self.me.clone(), self.hub.clone());
        async move {
            let Some((engine, faults, _)) = hub.peer(&me, &host) else {
                return Err(Error::Net(format!("no such host: {host}")));
            };
            if faults.stalled {
                return never().await;
            }
            engine.have_bits(&me, &name, &root)
        }
        .boxed()
    }

    fn chunk(
        &self,
        host: String,
        name: String,
        root: Vec<u8>,
        index: u32,
        count: u32,
        asker: Asker,
    ) -> BoxFuture<'static, Reply> {
        let (me, hub) = (self.me.clone(), self.hub.clone());
        let read = self.read(
            host.clone(),
            name.clone(),
            root.clone(),
            index,
            count,
            asker.gone.clone(),
        );
        async move {
            let chunks = read.await;
            // The news as of the answer, as the data channel sends it.
            let news = asker.seen.and_then(|seen| {
                let (engine, ..) = hub.peer(&me, &host)?;
                engine.news(&name, &root, seen)
            });
            Reply { chunks, news }
        }
        .boxed()
    }
}

impl MemNet {
    fn read(
        &self,
        host: String,
        name: String,
        root: Vec<u8>,
        index: u32,
        count: u32,
        gone: Vec<String>,
    ) -> BoxFuture<'static, Result<ChunkBuf, Miss>> {
        let (me, hub) = (self.me.clone(), self.hub.clone());
        async move {
            let Some((engine, faults, uplink)) = hub.peer(&me, &host) else {
                return Err(Miss::Lost(format!("no such host: {host}")));
            };
            if faults.stalled || faults.hangs {
                return never().await;
            }
            if faults.failing {
                return Err(Miss::Failed(format!("{name}: injected failure")));
            }
            let from = me.clone();
            let mut buf = tokio::task::spawn_blocking(move || {
                engine.told_gone(&from, &name, &root, &gone);
                engine.read_chunks(&from, &name, &root, index as usize, count as usize)
            })
            .await
            .map_err(|e| Miss::Failed(e.to_string()))??;
            let chunks = buf
                .len()
                .div_ceil(crate::manifest::CHUNK_SIZE as usize)
                .max(1);
            if !faults.per_chunk.is_zero() {
                let _line = uplink.lock().await;
                tokio::time::sleep(faults.per_chunk * chunks as u32).await;
            }
            if faults.corrupt {
                // A byte of every chunk in the answer.
                let cs = crate::manifest::CHUNK_SIZE as usize;
                for at in (0..buf.len()).step_by(cs) {
                    let i = at + (buf.len() - at).min(cs) / 2;
                    buf[i] ^= 0xff;
                }
            }
            if let Some(m) = hub.members().get_mut(&host) {
                *m.sent.entry(me).or_default() += chunks as u64;
            }
            Ok(buf)
        }
        .boxed()
    }
}
