//! VMs on this node (issue 10): their names, states and configs, over a
//! [`Driver`] that owns the processes, kept in sled so that a node that
//! restarts still knows them. The state machine is tested here over a
//! recording fake, without QEMU or root; the `vm` commands drive it from
//! the namespace's head node with typed requests.
//!
//! States follow minimega: a launched VM is BUILDING (its process started,
//! paused); `start` makes it RUNNING, `stop` PAUSED, `kill` QUIT; a VM whose
//! process dies on its own is ERROR, with what it said kept. `flush` forgets
//! QUIT and ERROR VMs. A VM the node did not see end (the node was killed)
//! is ERROR after the restart, and its orphaned process is killed: it is
//! never shown as running when nothing steers it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use mm_store::Meta;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub(crate) mod config;
pub(crate) mod qemu;
pub(crate) mod wire;

pub(crate) use config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub(crate) enum State {
    Building,
    Running,
    Paused,
    Quit,
    Error,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Building => "BUILDING",
            State::Running => "RUNNING",
            State::Paused => "PAUSED",
            State::Quit => "QUIT",
            State::Error => "ERROR",
        }
    }

    fn ended(self) -> bool {
        matches!(self, State::Quit | State::Error)
    }
}

/// A process the driver started.
#[derive(Debug, Clone)]
pub(crate) struct Launched {
    pub(crate) pid: u32,
    /// `kvm` or `tcg`.
    pub(crate) accel: String,
    /// Its NICs, in the config's order.
    pub(crate) nics: Vec<NicState>,
}

/// A launched VM's NIC: where its tap is now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NicState {
    pub(crate) tap: String,
    pub(crate) mac: String,
    pub(crate) bridge: String,
    /// None: disconnected (`vm net disconnect`).
    pub(crate) vlan: Option<u16>,
    pub(crate) alias: Option<String>,
    pub(crate) driver: String,
    /// What it was seen with on its bridge (`vm info`); filled when asked.
    #[serde(default)]
    pub(crate) ip: String,
    #[serde(default)]
    pub(crate) ip6: String,
}

/// The edge to the processes: QEMU for real, a recording fake in tests.
pub(crate) trait Driver: Send + Sync {
    /// Starts the VM's process, paused.
    fn launch(&self, namespace: &str, id: u64, name: &str, cfg: &Config) -> Result<Launched>;
    fn resume(&self, id: u64) -> Result<()>;
    fn pause(&self, id: u64) -> Result<()>;
    fn kill(&self, id: u64) -> Result<()>;
    /// None while the process lives; what it said (its stderr) once it died
    /// on its own.
    fn died(&self, id: u64) -> Option<String>;
    /// After a restart: ends the process `pid` (0: not yet known) if it
    /// is still this VM's, left behind by a node that was killed; the pid
    /// it ended, if any.
    fn reap(&self, namespace: &str, id: u64, pid: u32) -> Option<u32>;
    /// `vm flush`: the ended VM's files (its directory) go.
    fn forget(&self, namespace: &str, id: u64);
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Vm {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) state: State,
    pub(crate) pid: u32,
    pub(crate) config: Config,
    /// Why it is ERROR.
    pub(crate) error: String,
    #[serde(default)]
    pub(crate) accel: String,
    /// When it was launched, in seconds since the epoch.
    #[serde(default)]
    pub(crate) launched: u64,
    #[serde(default)]
    pub(crate) nics: Vec<NicState>,
}

/// What a host's live VMs commit, for the scheduler.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Commit {
    pub(crate) vms: u64,
    pub(crate) vcpus: u64,
    pub(crate) mem_mib: u64,
    pub(crate) nics: u64,
    /// Each live VM's coschedule limit.
    pub(crate) coschedule: Vec<Option<usize>>,
}

/// What `vm start|stop|kill` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Op {
    Start,
    Stop,
    Kill,
}

/// What one host did for a `vm start|stop|kill`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Acted {
    /// The names and ids asked for that name a VM here.
    pub(crate) matched: Vec<String>,
    /// How many VMs changed state.
    pub(crate) changed: usize,
    /// VMs whose process would not do it.
    pub(crate) errors: Vec<String>,
}

/// Which VMs a command is for: `all`, or names and ids.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Target {
    All,
    Names(Vec<String>),
}

const TREE: &str = "vms";

/// The VMs of this node, every namespace.
pub(crate) struct Vms {
    driver: Arc<dyn Driver>,
    meta: Meta,
    st: Mutex<(u64, BTreeMap<u64, Vm>)>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Vms {
    /// The VMs kept in `meta`; those the node did not see end are ERROR,
    /// their leftover processes killed.
    pub(crate) fn open(driver: Arc<dyn Driver>, meta: Meta) -> Vms {
        let mut all = BTreeMap::new();
        for (_, mut v) in meta.all::<Vm>(TREE) {
            if !v.state.ended() {
                let ended = driver.reap(&v.namespace, v.id, v.pid);
                v.error = match ended {
                    Some(pid) => {
                        // Shown in `vm info`, where a launch cut short
                        // had kept none.
                        v.pid = pid;
                        format!(
                            "the node stopped without ending it (it was {}); its process was \
                             killed at restart",
                            v.state.as_str()
                        )
                    }
                    None => format!(
                        "the node stopped without ending it (it was {}); no process of it was \
                         left at restart",
                        v.state.as_str()
                    ),
                };
                v.state = State::Error;
                let _ = meta.put(TREE, &key(v.id), &v);
            }
            all.insert(v.id, v);
        }
        let last = meta
            .get::<u64>("settings", "vm_id")
            .unwrap_or(0)
            .max(all.keys().copied().max().unwrap_or(0));
        Vms {
            driver,
            meta,
            st: Mutex::new((last, all)),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Vm>)> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save(&self, v: &Vm) {
        if let Err(e) = self.meta.put(TREE, &key(v.id), v) {
            tracing::warn!("cannot keep vm {} in the database: {e}", v.name);
        }
    }

    /// Launches `batch` (names and configs) in `namespace`, each BUILDING.
    /// Checks every name first: nothing is launched if one is bad or
    /// taken, or if a process fails to start (those of the batch already
    /// started are killed).
    #[cfg(test)]
    pub(crate) fn launch(&self, namespace: &str, batch: &[(String, Config)]) -> Result<Vec<Vm>> {
        self.launch_with(namespace, batch, &HashMap::new())
    }

    /// [`Vms::launch`], with QEMU given `local`'s path for each file path
    /// it maps (this host's copy of a file the head named); the VMs keep
    /// the paths as configured, so `vm info` and `vm config clone` show
    /// what the operator set, and a clone fetches again where it launches.
    pub(crate) fn launch_with(
        &self,
        namespace: &str,
        batch: &[(String, Config)],
        local: &HashMap<String, String>,
    ) -> Result<Vec<Vm>> {
        let mut st = self.st();
        let mut seen = std::collections::HashSet::new();
        for (n, _) in batch {
            check_name(n)?;
            if !seen.insert(n) {
                return Err(Error::Usage(format!("`{n}` is specified twice")));
            }
            if st
                .1
                .values()
                .any(|v| v.namespace == namespace && v.name == *n)
            {
                return Err(Error::Usage(format!("vm already exists with name {n}")));
            }
        }
        // Written ahead, and flushed, before any process starts: a node
        // killed the moment after (sled writes lazily) would otherwise
        // come back knowing neither the VMs nor their QEMUs, and hand
        // their ids, whose directories those QEMUs still lock, to others.
        let mut launched: Vec<Vm> = Vec::new();
        for (n, cfg) in batch {
            st.0 += 1;
            let mut config = cfg.clone();
            if config.uuid.is_none() {
                config.uuid = Some(config::new_uuid());
            }
            launched.push(Vm {
                id: st.0,
                name: n.clone(),
                namespace: namespace.to_string(),
                state: State::Building,
                pid: 0,
                config,
                error: String::new(),
                accel: String::new(),
                launched: now_secs(),
                nics: Vec::new(),
            });
        }
        // Not kept, not started: a VM whose record a crash could lose
        // might leave a QEMU nobody knows of.
        let ahead = (self.meta.put("settings", "vm_id", &st.0))
            .and_then(|_| {
                launched
                    .iter()
                    .try_for_each(|v| self.meta.put(TREE, &key(v.id), v))
            })
            .and_then(|_| self.meta.flush());
        if let Err(e) = ahead {
            for v in &launched {
                let _ = self.meta.remove(TREE, &key(v.id));
            }
            return Err(Error::Vm(format!(
                "cannot keep the VMs in the database, so none is launched: {e}"
            )));
        }
        for i in 0..launched.len() {
            let mut here = launched[i].config.clone();
            for f in here.files_mut() {
                if let Some(l) = local.get(f.as_str()) {
                    f.clone_from(l);
                }
            }
            let v = &launched[i];
            let l = match self.driver.launch(namespace, v.id, &v.name, &here) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(
                        "launching {} in {namespace}: {e}; the {} VMs of its batch are not launched",
                        v.name,
                        batch.len()
                    );
                    // All or nothing: the batch's earlier VMs go too, with
                    // their directories (their records go below, so no
                    // `vm flush` would ever take them).
                    for v in &launched[..i] {
                        let _ = self.driver.kill(v.id);
                        self.driver.forget(namespace, v.id);
                    }
                    for v in &launched {
                        let _ = self.meta.remove(TREE, &key(v.id));
                    }
                    self.keep();
                    return Err(e);
                }
            };
            let v = &mut launched[i];
            v.pid = l.pid;
            v.accel = l.accel;
            v.nics = l.nics;
            self.save(v);
        }
        // Answered once kept: the head counts these VMs as launched.
        self.keep();
        for v in &launched {
            st.1.insert(v.id, v.clone());
        }
        Ok(launched)
    }

    fn keep(&self) {
        if let Err(e) = self.meta.flush() {
            tracing::warn!("cannot keep the vms in the database: {e}");
        }
    }

    /// The VMs of `namespace`, by id, with any that died marked ERROR.
    pub(crate) fn info(&self, namespace: &str) -> Vec<Vm> {
        let mut st = self.st();
        let mut died = Vec::new();
        for v in st.1.values_mut() {
            if !v.state.ended() {
                if let Some(why) = self.driver.died(v.id) {
                    v.state = State::Error;
                    v.error = why;
                    died.push(v.clone());
                }
            }
        }
        for v in &died {
            self.save(v);
        }
        st.1.values()
            .filter(|v| v.namespace == namespace)
            .cloned()
            .collect()
    }

    /// What the live VMs of every namespace commit.
    pub(crate) fn commit(&self) -> Commit {
        let mut c = Commit::default();
        for ns in self.namespaces() {
            for v in self.info(&ns).iter().filter(|v| !v.state.ended()) {
                // A head's configs are not checked here again: any u64.
                c.vms += 1;
                c.vcpus = c.vcpus.saturating_add(v.config.vcpus);
                c.mem_mib = c.mem_mib.saturating_add(v.config.memory_mib);
                c.nics += v.config.nics.len() as u64;
                c.coschedule.push(v.config.coschedule);
            }
        }
        c
    }

    /// How many VMs (of any state) each namespace has here.
    pub(crate) fn counts(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for v in self.st().1.values() {
            *out.entry(v.namespace.clone()).or_default() += 1;
        }
        out
    }

    fn namespaces(&self) -> std::collections::BTreeSet<String> {
        self.st().1.values().map(|v| v.namespace.clone()).collect()
    }

    /// Does `op` to the VMs `t` names in `namespace` that are here; names
    /// not here are left for other hosts (see [`Acted::matched`]). Only
    /// VMs in a state `op` applies to change: start takes BUILDING and
    /// PAUSED to RUNNING, stop RUNNING to PAUSED, kill any live state to
    /// QUIT.
    pub(crate) fn act(&self, namespace: &str, op: Op, t: &Target) -> Acted {
        let vms = self.info(namespace);
        let mut out = Acted::default();
        let ids: Vec<u64> = match t {
            Target::All => vms.iter().map(|v| v.id).collect(),
            Target::Names(names) => {
                let mut ids = Vec::new();
                for n in names {
                    if let Some(v) = vms.iter().find(|v| v.name == *n || v.id.to_string() == *n) {
                        out.matched.push(n.clone());
                        ids.push(v.id);
                    }
                }
                ids
            }
        };
        let (from, to): (&[State], State) = match op {
            Op::Start => (&[State::Building, State::Paused], State::Running),
            Op::Stop => (&[State::Running], State::Paused),
            Op::Kill => (
                &[State::Building, State::Running, State::Paused],
                State::Quit,
            ),
        };
        for id in ids {
            // The registry is not held while QEMU is asked (a kill may take
            // seconds): `vm info` and the stats go on meanwhile.
            let name = match self.st().1.get(&id) {
                Some(v) if from.contains(&v.state) => v.name.clone(),
                _ => continue,
            };
            let done = match op {
                Op::Start => self.driver.resume(id),
                Op::Stop => self.driver.pause(id),
                Op::Kill => self.driver.kill(id),
            };
            if let Err(e) = done {
                out.errors.push(format!("{name}: {e}"));
                continue;
            }
            let changed = {
                let mut st = self.st();
                st.1.get_mut(&id)
                    // Unless it changed meanwhile (died, or another command).
                    .filter(|v| from.contains(&v.state))
                    .map(|v| {
                        v.state = to;
                        v.clone()
                    })
            };
            if let Some(v) = changed {
                out.changed += 1;
                self.save(&v);
            }
        }
        out
    }

    /// [`Vms::act`] where every name must be here.
    #[cfg(test)]
    fn strict(&self, namespace: &str, op: Op, t: &Target) -> Result<usize> {
        let a = self.act(namespace, op, t);
        if let Target::Names(n) = t {
            if let Some(missing) = n.iter().find(|n| !a.matched.contains(n)) {
                return Err(Error::NotFound(format!("no such vm: {missing}")));
            }
        }
        match a.errors.first() {
            Some(e) => Err(Error::Vm(e.clone())),
            None => Ok(a.changed),
        }
    }

    /// Forgets the QUIT and ERROR VMs of `namespace`; how many.
    pub(crate) fn flush(&self, namespace: &str) -> usize {
        self.info(namespace);
        let mut st = self.st();
        let gone: Vec<u64> =
            st.1.values()
                .filter(|v| v.namespace == namespace && v.state.ended())
                .map(|v| v.id)
                .collect();
        for id in &gone {
            st.1.remove(id);
            let _ = self.meta.remove(TREE, &key(*id));
            self.driver.forget(namespace, *id);
        }
        gone.len()
    }

    /// Kills and forgets every VM of `namespace` (`clear namespace`).
    pub(crate) fn clear(&self, namespace: &str) -> usize {
        self.act(namespace, Op::Kill, &Target::All);
        self.flush(namespace)
    }

    /// `vm net connect|disconnect`: moves NIC `pos` of `vm` (a name or an
    /// id) to `to` (bridge, vlan, alias) or off its bridge; false if the VM
    /// is not here.
    pub(crate) fn connect(
        &self,
        net: &crate::net::Net,
        namespace: &str,
        vm: &str,
        pos: usize,
        to: Option<(Option<String>, u16, Option<String>)>,
    ) -> Result<bool> {
        let Some(v) = self
            .info(namespace)
            .into_iter()
            .find(|v| v.name == vm || v.id.to_string() == vm)
        else {
            return Ok(false);
        };
        if v.state.ended() {
            return Err(Error::Usage(format!(
                "{vm} is {}: its NICs are gone",
                v.state.as_str()
            )));
        }
        let Some(nic) = v.nics.get(pos) else {
            return Err(Error::Usage(format!(
                "{vm} has {} NICs: no NIC {pos} (they count from 0)",
                v.nics.len()
            )));
        };
        let to = to.map(|(b, v, a)| (b.unwrap_or_else(|| nic.bridge.clone()), v, a));
        let target = to.as_ref().map(|(b, v, a)| (b.as_str(), *v, a.clone()));
        net.move_tap(&nic.tap, target)?;
        let mut st = self.st();
        if let Some(v) = st.1.get_mut(&v.id) {
            let n = &mut v.nics[pos];
            match to {
                Some((b, vlan, alias)) => {
                    n.bridge = b;
                    n.vlan = Some(vlan);
                    n.alias = alias;
                }
                None => n.vlan = None,
            }
            let v = v.clone();
            drop(st);
            self.save(&v);
        }
        Ok(true)
    }

    /// On the node's way down: every VM's process goes with it.
    pub(crate) fn kill_all(&self) {
        let mut st = self.st();
        let mut changed = Vec::new();
        for v in st.1.values_mut().filter(|v| !v.state.ended()) {
            let _ = self.driver.kill(v.id);
            v.state = State::Quit;
            changed.push(v.clone());
        }
        drop(st);
        for v in &changed {
            self.save(v);
        }
        let _ = self.meta.flush();
    }
}

/// Sled keys that sort as the ids do.
fn key(id: u64) -> String {
    format!("{id:020}")
}

/// `12`, `-1`, `+5`: what minimega's `strconv.Atoi` takes (of any size).
pub(crate) fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix(['-', '+']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// minimega's VM names: letters, digits, `-`, `_`, `.`; not `all`, not an
/// integer (that would read as an id).
pub(crate) fn check_name(n: &str) -> Result<()> {
    if n == "all" {
        return Err(Error::Usage("`all` is a reserved word".into()));
    }
    if is_integer(n) {
        return Err(Error::Usage(format!(
            "invalid vm name, `{n}` is an integer"
        )));
    }
    if n.is_empty()
        || n.len() > 64
        || !n
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Error::Usage(format!(
            "invalid vm name `{n}`: 1 to 64 letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(())
}

/// A driver that records what it was asked and runs nothing; a test can
/// make a VM's process die.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Fake {
    pub(crate) calls: Mutex<Vec<String>>,
    pub(crate) dead: Mutex<BTreeMap<u64, String>>,
    /// Names whose launch fails.
    pub(crate) fail: Mutex<Vec<String>>,
    /// A name whose launch kills the node (a panic, in a test), the
    /// process started but not yet answered.
    pub(crate) crash: Mutex<Option<String>>,
}

#[cfg(test)]
impl Driver for Fake {
    fn launch(&self, namespace: &str, id: u64, name: &str, cfg: &Config) -> Result<Launched> {
        if self.fail.lock().unwrap().iter().any(|f| f == name) {
            return Err(Error::Vm(format!("{name}: no process")));
        }
        let mut call = format!(
            "launch {namespace}/{id} {name} vcpus={} mem={}",
            cfg.vcpus, cfg.memory_mib
        );
        for d in &cfg.disks {
            call.push_str(&format!(" disk={}", d.show()));
        }
        self.calls.lock().unwrap().push(call);
        if self.crash.lock().unwrap().as_deref() == Some(name) {
            panic!("the node is killed as {name} starts");
        }
        Ok(Launched {
            pid: 1000 + id as u32,
            accel: "tcg".into(),
            nics: Vec::new(),
        })
    }
    fn resume(&self, id: u64) -> Result<()> {
        self.calls.lock().unwrap().push(format!("resume {id}"));
        Ok(())
    }
    fn pause(&self, id: u64) -> Result<()> {
        self.calls.lock().unwrap().push(format!("pause {id}"));
        Ok(())
    }
    fn kill(&self, id: u64) -> Result<()> {
        self.calls.lock().unwrap().push(format!("kill {id}"));
        Ok(())
    }
    fn died(&self, id: u64) -> Option<String> {
        self.dead.lock().unwrap().get(&id).cloned()
    }
    fn reap(&self, namespace: &str, id: u64, pid: u32) -> Option<u32> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("reap {namespace}/{id} {pid}"));
        // The fake's processes are all still there, even one whose pid
        // a launch cut short had not kept.
        Some(if pid == 0 { 2000 + id as u32 } else { pid })
    }
    fn forget(&self, namespace: &str, id: u64) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("forget {namespace}/{id}"));
    }
}

/// A database in a temporary directory, for tests.
#[cfg(test)]
pub(crate) fn temp_meta() -> (tempfile::TempDir, Meta) {
    let dir = tempfile::tempdir().unwrap();
    let meta = Meta::open(&dir.path().join("meta.db")).unwrap();
    (dir, meta)
}

#[cfg(test)]
mod tests;
