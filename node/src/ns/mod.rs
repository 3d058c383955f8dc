//! Namespaces (issue 10): named sets of hosts that VMs are launched into,
//! with their queueing and scheduler settings, kept in sled on the node
//! that owns them. The default namespace, `mm`, holds only this node. The
//! placement policy is [`schedule`], a pure function with its own tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Instant;

use mm_store::Meta;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub(crate) mod launch;
pub(crate) mod schedule;

/// The namespace every node starts in.
pub(crate) const DEFAULT: &str = "mm";

const TREE: &str = "namespaces";

/// One namespace's settings, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Namespace {
    pub(crate) hosts: BTreeSet<String>,
    /// `vm launch TYPE N` only queues (`ns queueing true`).
    #[serde(default)]
    pub(crate) queueing: bool,
    /// `ns load`: cpucommit, memcommit or netcommit.
    #[serde(default = "default_load")]
    pub(crate) load: String,
    /// What `vm launch` launches with (`vm config`).
    #[serde(default)]
    pub(crate) config: crate::vm::Config,
    /// The next N of `vm-N`, for `vm launch TYPE COUNT`.
    #[serde(default)]
    pub(crate) counter: u64,
    /// Batches `vm launch` queued (`ns queueing true`), in order.
    #[serde(default)]
    pub(crate) queue: Vec<Batch>,
    /// The stored placement of the queue (`ns schedule dry-run`, edited by
    /// `ns schedule mv`): vm to host.
    #[serde(default)]
    pub(crate) placement: Option<BTreeMap<String, String>>,
    /// `ns capacity`: caps on what each host may be committed to.
    #[serde(default)]
    pub(crate) capacity: schedule::Capacity,
    /// Each launch from this namespace, for `ns schedule status`.
    #[serde(default)]
    pub(crate) runs: Vec<Run>,
    /// VLAN aliases and the range they come from (`vlans`).
    #[serde(default)]
    pub(crate) vlans: crate::net::vlans::Table,
    /// `ns bridge`: each bridge the namespace's hosts share, its
    /// tunnels' kind and key.
    #[serde(default)]
    pub(crate) bridges: BTreeMap<String, NsBridge>,
}

/// A bridge `ns bridge` joined across the namespace's hosts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct NsBridge {
    pub(crate) kind: crate::net::Kind,
    pub(crate) key: u32,
    /// The hosts it was made on: one that left the namespace has it
    /// removed at the next `ns bridge`.
    #[serde(default)]
    pub(crate) hosts: BTreeSet<String>,
}

/// VMs `vm launch TYPE NAMES` queued together, with the config of then.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Batch {
    pub(crate) kind: String,
    pub(crate) names: Vec<String>,
    pub(crate) config: crate::vm::Config,
}

/// One launch of queued or immediate VMs, as `ns schedule status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Run {
    /// Seconds since the epoch.
    pub(crate) start: u64,
    pub(crate) end: Option<u64>,
    pub(crate) state: String,
    pub(crate) launched: usize,
    pub(crate) failures: usize,
    pub(crate) total: usize,
    pub(crate) hosts: usize,
}

fn default_load() -> String {
    "cpucommit".into()
}

impl Namespace {
    pub(crate) fn new(hosts: BTreeSet<String>) -> Namespace {
        Namespace {
            hosts,
            queueing: false,
            load: default_load(),
            config: crate::vm::Config::default(),
            counter: 0,
            queue: Vec::new(),
            placement: None,
            capacity: schedule::Capacity::default(),
            runs: Vec::new(),
            vlans: Default::default(),
            bridges: BTreeMap::new(),
        }
    }
}

/// This node's namespaces, and which one is active.
pub(crate) struct Namespaces {
    meta: Meta,
    me: String,
    state: Mutex<(String, BTreeMap<String, Namespace>)>,
    /// Namespaces with a `vm launch` under way, and since when.
    launching: Mutex<BTreeMap<String, Instant>>,
}

/// A `vm launch` under way in a namespace; ends when dropped (even when
/// the command fails).
pub(crate) struct Launching<'a> {
    of: &'a Namespaces,
    name: String,
}

impl Drop for Launching<'_> {
    fn drop(&mut self) {
        self.of.launches().remove(&self.name);
    }
}

impl Namespaces {
    /// Loads the namespaces kept in `meta`; `mm` always exists.
    pub(crate) fn open(meta: Meta, me: &str) -> Namespaces {
        let mut all: BTreeMap<String, Namespace> = meta.all(TREE).into_iter().collect();
        all.entry(DEFAULT.into())
            .or_insert_with(|| Namespace::new(BTreeSet::from([me.to_string()])));
        let active = meta
            .get::<String>("settings", "namespace")
            .filter(|a| all.contains_key(a))
            .unwrap_or_else(|| DEFAULT.into());
        Namespaces {
            meta,
            me: me.to_string(),
            state: Mutex::new((active, all)),
            launching: Mutex::default(),
        }
    }

    fn launches(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Instant>> {
        self.launching.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a `vm launch` in `name`, refused while another is under
    /// way: both would read the same queue and the same free names, and
    /// launch the same VMs twice (an operator who gives up on a launch
    /// waiting for its hosts' fetches and runs it again does this; the
    /// first goes on, as the command does not end with its `mm`).
    pub(crate) fn begin_launch(&self, name: &str) -> Result<Launching<'_>> {
        let mut l = self.launches();
        if let Some(since) = l.get(name) {
            return Err(Error::Refused(format!(
                "a vm launch in {name} is under way (for {}s); run this again when it \
                 ends",
                since.elapsed().as_secs()
            )));
        }
        l.insert(name.to_string(), Instant::now());
        Ok(Launching {
            of: self,
            name: name.to_string(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (String, BTreeMap<String, Namespace>)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn active(&self) -> String {
        self.state().0.clone()
    }

    pub(crate) fn get(&self, name: &str) -> Option<Namespace> {
        self.state().1.get(name).cloned()
    }

    pub(crate) fn list(&self) -> Vec<(String, Namespace)> {
        self.state()
            .1
            .iter()
            .map(|(n, ns)| (n.clone(), ns.clone()))
            .collect()
    }

    /// Creates `name` with `hosts` if it is new (minimega: every node the
    /// mesh reaches but this one, the caller's choice); true if it was.
    pub(crate) fn create(&self, name: &str, hosts: BTreeSet<String>) -> Result<bool> {
        check_name(name)?;
        let mut st = self.state();
        if st.1.contains_key(name) {
            return Ok(false);
        }
        let ns = Namespace::new(hosts);
        self.meta.put(TREE, name, &ns)?;
        st.1.insert(name.to_string(), ns);
        Ok(true)
    }

    pub(crate) fn set_active(&self, name: &str) -> Result<()> {
        let mut st = self.state();
        if !st.1.contains_key(name) {
            return Err(no_such(name));
        }
        self.meta.put("settings", "namespace", &name.to_string())?;
        st.0 = name.to_string();
        Ok(())
    }

    /// Changes `name`'s settings with `f`, and stores them, or nothing if
    /// `f` fails.
    pub(crate) fn update<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Namespace) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.state();
        let ns = st.1.get_mut(name).ok_or_else(|| no_such(name))?;
        let mut changed = ns.clone();
        let out = f(&mut changed)?;
        self.meta.put(TREE, name, &changed)?;
        *ns = changed;
        Ok(out)
    }

    /// Runs `f` over every namespace's VLAN table (aliases are unique
    /// across them), `name`'s first among equals: it must exist. Stores
    /// the tables `f` changed, or nothing if it fails.
    pub(crate) fn vlans_mut<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut BTreeMap<String, crate::net::vlans::Table>) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.state();
        if !st.1.contains_key(name) {
            return Err(no_such(name));
        }
        let before: BTreeMap<String, crate::net::vlans::Table> =
            st.1.iter()
                .map(|(n, ns)| (n.clone(), ns.vlans.clone()))
                .collect();
        let mut tables = before.clone();
        let out = f(&mut tables)?;
        for (n, t) in tables {
            if before.get(&n) == Some(&t) {
                continue;
            }
            // Only namespaces of this node have tables (`ns//ALIAS` of
            // another one that does not exist is refused here).
            let Some(ns) = st.1.get(&n) else {
                return Err(no_such(&n));
            };
            let mut changed = ns.clone();
            changed.vlans = t;
            self.meta.put(TREE, &n, &changed)?;
            st.1.insert(n, changed);
        }
        Ok(out)
    }

    /// The VLAN id `word` names in `name` (see `net::vlans::lookup`).
    pub(crate) fn lookup_vlan(&self, name: &str, word: &str) -> Result<(u16, Option<String>)> {
        self.vlans_mut(name, |t| crate::net::vlans::lookup(t, name, word))
    }

    /// Removes `name` and returns to `mm` if it was active. `mm` itself
    /// is reset to its defaults instead (as minimega recreates its own).
    pub(crate) fn clear(&self, name: &str) -> Result<()> {
        let mut st = self.state();
        if !st.1.contains_key(name) {
            return Err(no_such(name));
        }
        if name == DEFAULT {
            let ns = Namespace::new(BTreeSet::from([self.me.clone()]));
            self.meta.put(TREE, name, &ns)?;
            st.1.insert(name.into(), ns);
        } else {
            self.meta.remove(TREE, name)?;
            st.1.remove(name);
        }
        if st.0 == name {
            self.meta
                .put("settings", "namespace", &DEFAULT.to_string())?;
            st.0 = DEFAULT.into();
        }
        Ok(())
    }
}

fn no_such(name: &str) -> Error {
    Error::NotFound(format!("no such namespace: {name}"))
}

/// What the base directory holds beside the VMs' `<namespace>/`
/// directories: a namespace of one of these names would write into it.
const RESERVED: &[&str] = &["all", "files", "node.key", "lock", "mm.sock", "meta.db"];

/// Namespace names: what a VM's directory and a host list can carry.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && !RESERVED.contains(&name)
        && !name.ends_with(".log")
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid namespace name '{name}': 1 to 64 letters, digits, '-', '_' and '.', not \
             starting with '.', and not one of {} or a name ending .log",
            RESERVED.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(h: &[&str]) -> BTreeSet<String> {
        h.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn namespaces_persist_and_mm_always_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.db");
        {
            let ns = Namespaces::open(Meta::open(&path).unwrap(), "head");
            assert_eq!(ns.active(), "mm");
            assert_eq!(ns.get("mm").unwrap().hosts, hosts(&["head"]));
            assert!(ns.create("foo", hosts(&["n1", "n2"])).unwrap());
            assert!(!ns.create("foo", hosts(&["x"])).unwrap(), "created twice");
            ns.set_active("foo").unwrap();
            ns.update("foo", |n| {
                n.queueing = true;
                Ok(())
            })
            .unwrap();
            // A failed update changes nothing.
            let e = ns.update("foo", |n| {
                n.hosts.clear();
                Err::<(), _>(Error::Usage("no".into()))
            });
            assert!(e.is_err());
            assert!(ns.create("bad/name", hosts(&[])).is_err());
            assert!(ns.set_active("nope").is_err());
        }
        let ns = Namespaces::open(Meta::open(&path).unwrap(), "head");
        assert_eq!(ns.active(), "foo");
        let foo = ns.get("foo").unwrap();
        assert_eq!(foo.hosts, hosts(&["n1", "n2"]));
        assert!(foo.queueing);
        // Clearing the active one returns to mm; clearing mm resets it.
        ns.clear("foo").unwrap();
        assert_eq!(ns.active(), "mm");
        assert!(ns.get("foo").is_none());
        ns.update("mm", |n| {
            n.hosts.insert("other".into());
            Ok(())
        })
        .unwrap();
        ns.clear("mm").unwrap();
        assert_eq!(ns.get("mm").unwrap().hosts, hosts(&["head"]));
        assert!(ns.clear("foo").is_err());
    }

    #[test]
    fn one_launch_at_a_time_per_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespaces::open(Meta::open(&dir.path().join("m")).unwrap(), "head");
        let first = ns.begin_launch("foo").unwrap();
        let e = ns.begin_launch("foo").err().unwrap().to_string();
        assert!(e.contains("a vm launch in foo is under way"), "{e}");
        // Another namespace is another queue.
        let other = ns.begin_launch("bar").unwrap();
        drop(first);
        let again = ns.begin_launch("foo").unwrap();
        drop((other, again));
        assert!(ns.launches().is_empty());
    }
}
