//! VMs on this node (issue 10, in progress): their names, states and
//! configs, over a [`Driver`] that owns the processes. The QEMU driver and
//! the `vm` commands build on this; the state machine is tested here over
//! a recording fake, without QEMU or root.
//!
//! States follow minimega: a launched VM is BUILDING (its process started,
//! paused); `start` makes it RUNNING, `stop` PAUSED, `kill` QUIT; a VM whose
//! process dies on its own is ERROR, with what it said kept. `flush` forgets
//! QUIT and ERROR VMs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::{Error, Result};

pub(crate) mod qemu;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// What a VM is launched with (`vm config`); minimega's defaults.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Config {
    pub(crate) vcpus: u64,
    pub(crate) memory_mib: u64,
    pub(crate) disk: Option<String>,
    pub(crate) tags: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            vcpus: 1,
            memory_mib: 2048,
            disk: None,
            tags: BTreeMap::new(),
        }
    }
}

/// The edge to the processes: QEMU for real, a recording fake in tests.
pub(crate) trait Driver: Send + Sync {
    /// Starts the VM's process, paused; returns its pid.
    fn launch(&self, namespace: &str, id: u64, name: &str, cfg: &Config) -> Result<u32>;
    fn resume(&self, id: u64) -> Result<()>;
    fn pause(&self, id: u64) -> Result<()>;
    fn kill(&self, id: u64) -> Result<()>;
    /// None while the process lives; what it said (its stderr) once it died
    /// on its own.
    fn died(&self, id: u64) -> Option<String>;
}

#[derive(Debug, Clone)]
pub(crate) struct Vm {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) namespace: String,
    pub(crate) state: State,
    pub(crate) pid: u32,
    pub(crate) config: Config,
    /// Why it is ERROR.
    pub(crate) error: String,
}

/// The VMs of this node, every namespace.
pub(crate) struct Vms {
    driver: Arc<dyn Driver>,
    st: Mutex<(u64, BTreeMap<u64, Vm>)>,
}

/// Which VMs a command is for: `all`, or names and ids.
pub(crate) enum Target<'a> {
    All,
    Names(&'a [String]),
}

impl Vms {
    pub(crate) fn new(driver: Arc<dyn Driver>) -> Vms {
        Vms {
            driver,
            st: Mutex::new((0, BTreeMap::new())),
        }
    }

    fn st(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Vm>)> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Launches `names` in `namespace`, each BUILDING. Checks every name
    /// first: nothing is launched if one is bad or taken, or if a process
    /// fails to start (those of the batch already started are killed).
    pub(crate) fn launch(&self, namespace: &str, names: &[String], cfg: &Config) -> Result<()> {
        let mut st = self.st();
        let mut seen = std::collections::HashSet::new();
        for n in names {
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
        let mut launched = Vec::new();
        for n in names {
            st.0 += 1;
            let id = st.0;
            let pid = match self.driver.launch(namespace, id, n, cfg) {
                Ok(pid) => pid,
                Err(e) => {
                    // All or nothing: the batch's earlier VMs go too.
                    for id in launched {
                        let _ = self.driver.kill(id);
                        st.1.remove(&id);
                    }
                    return Err(e);
                }
            };
            launched.push(id);
            st.1.insert(
                id,
                Vm {
                    id,
                    name: n.clone(),
                    namespace: namespace.to_string(),
                    state: State::Building,
                    pid,
                    config: cfg.clone(),
                    error: String::new(),
                },
            );
        }
        Ok(())
    }

    /// The VMs of `namespace`, by id, with any that died marked ERROR.
    pub(crate) fn info(&self, namespace: &str) -> Vec<Vm> {
        let mut st = self.st();
        for v in st.1.values_mut() {
            if !v.state.ended() {
                if let Some(why) = self.driver.died(v.id) {
                    v.state = State::Error;
                    v.error = why;
                }
            }
        }
        st.1.values()
            .filter(|v| v.namespace == namespace)
            .cloned()
            .collect()
    }

    fn targets(&self, namespace: &str, t: &Target<'_>) -> Result<Vec<u64>> {
        let vms = self.info(namespace);
        match t {
            Target::All => Ok(vms.iter().map(|v| v.id).collect()),
            Target::Names(names) => names
                .iter()
                .map(|n| {
                    vms.iter()
                        .find(|v| v.name == *n || v.id.to_string() == *n)
                        .map(|v| v.id)
                        .ok_or_else(|| Error::NotFound(format!("no such vm: {n}")))
                })
                .collect(),
        }
    }

    /// BUILDING or PAUSED to RUNNING; others are left as they are.
    pub(crate) fn start(&self, namespace: &str, t: &Target<'_>) -> Result<usize> {
        self.change(
            namespace,
            t,
            &[State::Building, State::Paused],
            State::Running,
            |d, id| d.resume(id),
        )
    }

    /// RUNNING to PAUSED.
    pub(crate) fn stop(&self, namespace: &str, t: &Target<'_>) -> Result<usize> {
        self.change(namespace, t, &[State::Running], State::Paused, |d, id| {
            d.pause(id)
        })
    }

    /// Any state but QUIT and ERROR to QUIT.
    pub(crate) fn kill(&self, namespace: &str, t: &Target<'_>) -> Result<usize> {
        self.change(
            namespace,
            t,
            &[State::Building, State::Running, State::Paused],
            State::Quit,
            |d, id| d.kill(id),
        )
    }

    fn change(
        &self,
        namespace: &str,
        t: &Target<'_>,
        from: &[State],
        to: State,
        act: impl Fn(&dyn Driver, u64) -> Result<()>,
    ) -> Result<usize> {
        let ids = self.targets(namespace, t)?;
        let mut st = self.st();
        let mut n = 0;
        for id in ids {
            let Some(v) = st.1.get_mut(&id) else { continue };
            if from.contains(&v.state) {
                act(self.driver.as_ref(), id)?;
                v.state = to;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Forgets the QUIT and ERROR VMs of `namespace`; how many.
    pub(crate) fn flush(&self, namespace: &str) -> usize {
        self.info(namespace);
        let mut st = self.st();
        let before = st.1.len();
        st.1.retain(|_, v| v.namespace != namespace || !v.state.ended());
        before - st.1.len()
    }

    /// On the node's way down: every VM's process goes with it.
    pub(crate) fn kill_all(&self) {
        let mut st = self.st();
        for v in st.1.values_mut().filter(|v| !v.state.ended()) {
            let _ = self.driver.kill(v.id);
            v.state = State::Quit;
        }
    }
}

/// minimega's VM names: letters, digits, `-`, `_`, `.`; not `all`, not an
/// integer (that would read as an id).
fn check_name(n: &str) -> Result<()> {
    if n == "all" {
        return Err(Error::Usage("`all` is a reserved word".into()));
    }
    if n.parse::<u64>().is_ok() {
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
}

#[cfg(test)]
impl Driver for Fake {
    fn launch(&self, namespace: &str, id: u64, name: &str, cfg: &Config) -> Result<u32> {
        if self.fail.lock().unwrap().iter().any(|f| f == name) {
            return Err(Error::Refused(format!("{name}: no process")));
        }
        self.calls.lock().unwrap().push(format!(
            "launch {namespace}/{id} {name} vcpus={} mem={}",
            cfg.vcpus, cfg.memory_mib
        ));
        Ok(1000 + id as u32)
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn states(vms: &Vms, ns: &str) -> Vec<(String, &'static str)> {
        vms.info(ns)
            .into_iter()
            .map(|v| (v.name, v.state.as_str()))
            .collect()
    }

    #[test]
    fn the_state_machine_follows_minimega() {
        let fake = Arc::new(Fake::default());
        let vms = Vms::new(fake.clone());
        vms.launch("foo", &names(&["a", "b", "c"]), &Config::default())
            .unwrap();
        assert!(states(&vms, "foo").iter().all(|(_, s)| *s == "BUILDING"));
        let a = &vms.info("foo")[0];
        assert_eq!(
            (a.pid, a.config.vcpus, a.config.memory_mib),
            (1001, 1, 2048)
        );
        assert_eq!(
            vms.start("foo", &Target::Names(&names(&["a", "2"])))
                .unwrap(),
            2
        );
        assert_eq!(
            states(&vms, "foo"),
            [
                ("a".into(), "RUNNING"),
                ("b".into(), "RUNNING"),
                ("c".into(), "BUILDING")
            ]
        );
        // Stop only touches running ones; start again resumes a paused one.
        assert_eq!(vms.stop("foo", &Target::All).unwrap(), 2);
        assert_eq!(vms.start("foo", &Target::Names(&names(&["b"]))).unwrap(), 1);
        assert_eq!(vms.kill("foo", &Target::Names(&names(&["c"]))).unwrap(), 1);
        assert_eq!(
            states(&vms, "foo"),
            [
                ("a".into(), "PAUSED"),
                ("b".into(), "RUNNING"),
                ("c".into(), "QUIT")
            ]
        );
        // A process that dies on its own is ERROR, and says why.
        fake.dead.lock().unwrap().insert(2, "qemu: oops".into());
        let b = vms.info("foo").into_iter().find(|v| v.name == "b").unwrap();
        assert_eq!((b.state, b.error.as_str()), (State::Error, "qemu: oops"));
        // Killing the ended ones does nothing; flush forgets them.
        assert_eq!(vms.kill("foo", &Target::All).unwrap(), 1);
        vms.launch("foo", &names(&["d"]), &Config::default())
            .unwrap();
        assert_eq!(vms.flush("foo"), 3);
        assert_eq!(states(&vms, "foo"), [("d".into(), "BUILDING")]);
        let calls = fake.calls.lock().unwrap().clone();
        assert_eq!(
            calls,
            [
                "launch foo/1 a vcpus=1 mem=2048",
                "launch foo/2 b vcpus=1 mem=2048",
                "launch foo/3 c vcpus=1 mem=2048",
                "resume 1",
                "resume 2",
                "pause 1",
                "pause 2",
                "resume 2",
                "kill 3",
                "kill 1",
                "launch foo/4 d vcpus=1 mem=2048",
            ]
        );
    }

    #[test]
    fn bad_names_launch_nothing() {
        let fake = Arc::new(Fake::default());
        let vms = Vms::new(fake.clone());
        vms.launch("foo", &names(&["web"]), &Config::default())
            .unwrap();
        for (bad, why) in [
            (vec!["x", "all"], "`all` is a reserved word"),
            (vec!["x", "12"], "invalid vm name, `12` is an integer"),
            (vec!["x", "x"], "`x` is specified twice"),
            (vec!["x", "web"], "vm already exists with name web"),
            (vec!["x", "a/b"], "invalid vm name `a/b`"),
        ] {
            let e = vms
                .launch("foo", &names(&bad), &Config::default())
                .unwrap_err();
            assert!(e.to_string().contains(why), "{bad:?}: {e}");
        }
        assert_eq!(vms.info("foo").len(), 1, "a bad batch launched something");
        // A process that fails to start takes its batch with it.
        fake.fail.lock().unwrap().push("y".into());
        let e = vms
            .launch("foo", &names(&["x", "y"]), &Config::default())
            .unwrap_err();
        assert!(e.to_string().contains("y: no process"), "{e}");
        assert_eq!(vms.info("foo").len(), 1, "half a batch stayed");
        let calls = fake.calls.lock().unwrap().clone();
        let x = calls
            .iter()
            .find_map(|c| {
                c.strip_prefix("launch foo/")?
                    .strip_suffix(" x vcpus=1 mem=2048")
            })
            .expect("x was launched");
        assert!(
            calls.contains(&format!("kill {x}")),
            "x was not killed: {calls:?}"
        );
        // Names are per namespace.
        vms.launch("bar", &names(&["web"]), &Config::default())
            .unwrap();
        assert!(vms.start("foo", &Target::Names(&names(&["nope"]))).is_err());
        // A node going down takes its VMs with it.
        vms.kill_all();
        assert!(vms
            .info("foo")
            .iter()
            .chain(vms.info("bar").iter())
            .all(|v| v.state == State::Quit));
    }
}
