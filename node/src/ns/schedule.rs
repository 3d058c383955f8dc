//! Least-loaded-first placement of queued VMs onto a namespace's hosts: a
//! pure function over host loads and VM wants, so every rule is tested
//! without a mesh or a VM (issue 10).
//!
//! Order of placement: VMs pinned to a host (`vm config schedule`), then
//! VMs that limit their neighbours (`coschedule`, the tightest first), then
//! the rest in queue order; a VM colocated with another (`colocate`) goes
//! wherever that one went. Each VM goes to the host with the lowest load,
//! and the load is updated before the next one; ties go to the host name
//! that sorts first (minimega breaks them by arrival order, which differs
//! from run to run).

use std::collections::{BTreeMap, BinaryHeap, HashMap};

/// What decides "least loaded" (`ns load`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Metric {
    /// Committed vCPUs over CPUs.
    #[default]
    Cpu,
    /// Committed memory over total memory.
    Mem,
    /// Committed NICs.
    Net,
}

impl Metric {
    pub(crate) fn parse(s: &str) -> Option<Metric> {
        match s {
            "cpucommit" => Some(Metric::Cpu),
            "memcommit" => Some(Metric::Mem),
            "netcommit" => Some(Metric::Net),
            _ => None,
        }
    }
}

/// Optional caps on what a host may be committed to, as ratios of what it
/// has (`ns capacity cpu 2` allows twice as many vCPUs as CPUs). None: no
/// cap, as in minimega.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Capacity {
    pub(crate) cpu: Option<f64>,
    pub(crate) mem: Option<f64>,
}

/// A host as the scheduler sees it: what it has, and what its VMs (running
/// ones, and those placed so far) commit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Host {
    pub(crate) name: String,
    pub(crate) cpus: u64,
    pub(crate) mem_mib: u64,
    pub(crate) cpu_commit: u64,
    pub(crate) mem_commit_mib: u64,
    pub(crate) net_commit: u64,
    /// VMs on it already, with the coschedule limit of each (None: none).
    pub(crate) vms: Vec<Option<usize>>,
}

/// One queued VM.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Want {
    pub(crate) name: String,
    pub(crate) vcpus: u64,
    pub(crate) mem_mib: u64,
    pub(crate) nics: u64,
    pub(crate) schedule: Option<String>,
    pub(crate) colocate: Option<String>,
    /// At most this many other VMs on its host; 0: alone.
    pub(crate) coschedule: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PlaceError {
    #[error("{0}: schedule and colocate cannot both be set")]
    ScheduleAndColocate(String),
    #[error("nonexistent colocate VMs: [{}]", .0.join(" "))]
    NoSuchColocate(Vec<String>),
    #[error("{vm}: colocated with {target}, which is colocated with it in turn")]
    ColocateCycle { vm: String, target: String },
    #[error("{vm}: scheduled on {host}, which is not a host of this namespace")]
    NoSuchHost { vm: String, host: String },
    #[error("{vm}: cannot go on {host}: {why}")]
    DoesNotFit {
        vm: String,
        host: String,
        why: String,
    },
    #[error("{vm}: no host can take it: {why}")]
    NoRoom { vm: String, why: String },
}

/// A host while placing: what it has and commits, and its VMs' count and
/// tightest coschedule limit, kept up to date (a scan of its VMs for every
/// candidate VM would be quadratic).
struct Slot {
    h: Host,
    count: usize,
    min_co: Option<usize>,
}

impl Slot {
    fn new(h: Host) -> Slot {
        Slot {
            count: h.vms.len(),
            min_co: h.vms.iter().flatten().min().copied(),
            h,
        }
    }

    fn load(&self, m: Metric) -> f64 {
        let h = &self.h;
        match m {
            Metric::Cpu => h.cpu_commit as f64 / h.cpus.max(1) as f64,
            Metric::Mem => h.mem_commit_mib as f64 / h.mem_mib.max(1) as f64,
            Metric::Net => h.net_commit as f64,
        }
    }

    /// Why `w` may not join this host, if it may not.
    fn refuses(&self, w: &Want, cap: &Capacity) -> Option<String> {
        let (h, others) = (&self.h, self.count);
        if let Some(n) = w.coschedule {
            if others > n {
                return Some(format!(
                    "it allows {n} other VMs beside it, and the host has {others}"
                ));
            }
        }
        if let Some(n) = self.min_co {
            // A VM there allows `n` others; with `w`, it would have `others`.
            if others > n {
                return Some(format!("a VM there allows only {n} other VMs beside it"));
            }
        }
        if let Some(r) = cap.cpu {
            // Commitments are what hosts say: any u64.
            let after = h.cpu_commit.saturating_add(w.vcpus);
            if after as f64 > r * h.cpus as f64 {
                return Some(format!(
                    "{after} vCPUs would pass its cap of {r} x {} CPUs",
                    h.cpus
                ));
            }
        }
        if let Some(r) = cap.mem {
            let after = h.mem_commit_mib.saturating_add(w.mem_mib);
            if after as f64 > r * h.mem_mib as f64 {
                return Some(format!(
                    "{after} MiB would pass its cap of {r} x {} MiB",
                    h.mem_mib
                ));
            }
        }
        None
    }

    fn take(&mut self, w: &Want) {
        self.h.cpu_commit = self.h.cpu_commit.saturating_add(w.vcpus);
        self.h.mem_commit_mib = self.h.mem_commit_mib.saturating_add(w.mem_mib);
        self.h.net_commit = self.h.net_commit.saturating_add(w.nics);
        self.count += 1;
        self.min_co = match (self.min_co, w.coschedule) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// A host's place in the queue of candidates: lowest load first, then the
/// name that sorts first (hosts are indexed in name order).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key(f64, usize);

impl Eq for Key {}

impl Ord for Key {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap pops its greatest.
        o.0.total_cmp(&self.0).then(o.1.cmp(&self.1))
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Places every VM of `queue` on one of `hosts`, or fails naming the VM
/// (and the host) that cannot be placed; nothing is placed then. Returns
/// `vm -> host`, and the hosts with their loads after.
pub(crate) fn place(
    hosts: &[Host],
    queue: &[Want],
    metric: Metric,
    cap: &Capacity,
) -> Result<BTreeMap<String, String>, PlaceError> {
    let by_name: HashMap<&str, &Want> = queue.iter().map(|w| (w.name.as_str(), w)).collect();
    for w in queue {
        if w.schedule.is_some() && w.colocate.is_some() {
            return Err(PlaceError::ScheduleAndColocate(w.name.clone()));
        }
    }
    let mut missing: Vec<String> = queue
        .iter()
        .filter_map(|w| w.colocate.clone())
        .filter(|t| !by_name.contains_key(t.as_str()))
        .collect();
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        return Err(PlaceError::NoSuchColocate(missing));
    }
    let mut sorted: Vec<Host> = hosts.to_vec();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let index: HashMap<String, usize> = sorted
        .iter()
        .enumerate()
        .map(|(i, h)| (h.name.clone(), i))
        .collect();
    let mut hosts: Vec<Slot> = sorted.into_iter().map(Slot::new).collect();
    // Every host, by load; an entry whose load is no longer the host's is
    // stale and skipped (each change pushes a fresh one).
    let mut heap: BinaryHeap<Key> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| Key(h.load(metric), i))
        .collect();

    // The VM each one ends up beside: follow colocate to its root.
    let root = |w: &Want| -> Result<String, PlaceError> {
        let mut cur = w;
        let mut steps = 0;
        while let Some(t) = &cur.colocate {
            steps += 1;
            if steps > queue.len() {
                return Err(PlaceError::ColocateCycle {
                    vm: w.name.clone(),
                    target: t.clone(),
                });
            }
            cur = by_name[t.as_str()];
        }
        Ok(cur.name.clone())
    };
    let mut order: Vec<&Want> = queue.iter().filter(|w| w.colocate.is_none()).collect();
    // Stable: queue order within each class.
    order.sort_by_key(|w| match (&w.schedule, w.coschedule) {
        (Some(_), _) => (0, 0),
        (None, Some(n)) => (1, n),
        (None, None) => (2, 0),
    });
    let mut out = BTreeMap::new();
    for w in order {
        let i = match &w.schedule {
            Some(h) => {
                let i = *index.get(h).ok_or_else(|| PlaceError::NoSuchHost {
                    vm: w.name.clone(),
                    host: h.clone(),
                })?;
                if let Some(why) = hosts[i].refuses(w, cap) {
                    return Err(PlaceError::DoesNotFit {
                        vm: w.name.clone(),
                        host: h.clone(),
                        why,
                    });
                }
                i
            }
            None => least_loaded(&hosts, &mut heap, w, metric, cap)?,
        };
        hosts[i].take(w);
        heap.push(Key(hosts[i].load(metric), i));
        out.insert(w.name.clone(), hosts[i].h.name.clone());
    }
    // Colocated VMs, in queue order, once their roots are placed.
    for w in queue.iter().filter(|w| w.colocate.is_some()) {
        let r = root(w)?;
        let host = out[&r].clone();
        let i = index[&host];
        if let Some(why) = hosts[i].refuses(w, cap) {
            return Err(PlaceError::DoesNotFit {
                vm: w.name.clone(),
                host,
                why,
            });
        }
        hosts[i].take(w);
        out.insert(w.name.clone(), host);
    }
    Ok(out)
}

fn least_loaded(
    hosts: &[Slot],
    heap: &mut BinaryHeap<Key>,
    w: &Want,
    m: Metric,
    cap: &Capacity,
) -> Result<usize, PlaceError> {
    let mut passed = Vec::new();
    let mut why = String::from("the namespace has no hosts");
    let mut chosen = None;
    while let Some(k) = heap.pop() {
        if k.0.to_bits() != hosts[k.1].load(m).to_bits() {
            continue; // stale
        }
        match hosts[k.1].refuses(w, cap) {
            Some(no) => {
                why = format!("{}: {no}", hosts[k.1].h.name);
                passed.push(k);
            }
            None => {
                chosen = Some(k.1);
                break;
            }
        }
    }
    heap.extend(passed);
    chosen.ok_or_else(|| PlaceError::NoRoom {
        vm: w.name.clone(),
        why: if hosts.len() > 1 {
            format!("every host refuses it (last, {why})")
        } else {
            why
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, cpus: u64) -> Host {
        Host {
            name: name.into(),
            cpus,
            mem_mib: 4096,
            cpu_commit: 0,
            mem_commit_mib: 0,
            net_commit: 0,
            vms: vec![],
        }
    }

    fn vm(name: &str) -> Want {
        Want {
            name: name.into(),
            vcpus: 1,
            mem_mib: 512,
            nics: 1,
            ..Want::default()
        }
    }

    fn vms(n: usize) -> Vec<Want> {
        (0..n).map(|i| vm(&format!("vm-{i}"))).collect()
    }

    fn count(p: &BTreeMap<String, String>, h: &str) -> usize {
        p.values().filter(|v| *v == h).count()
    }

    /// A host's load is what it says: a commitment at the top of u64
    /// is refused by a cap, or placed on, but never overflows.
    #[test]
    fn commitments_near_the_top_of_u64_do_not_overflow() {
        let mut full = host("a", 4);
        (full.cpu_commit, full.mem_commit_mib, full.net_commit) = (u64::MAX, u64::MAX, u64::MAX);
        let hosts = [full];
        let cap = Capacity {
            cpu: Some(1.0),
            mem: Some(1.0),
        };
        assert!(place(&hosts, &vms(2), Metric::Cpu, &cap).is_err());
        for m in [Metric::Cpu, Metric::Mem, Metric::Net] {
            let p = place(&hosts, &vms(2), m, &Capacity::default()).unwrap();
            assert_eq!(count(&p, "a"), 2);
        }
    }

    #[test]
    fn least_loaded_first_spreads_evenly_and_breaks_ties_by_name() {
        let hosts = [host("c", 4), host("a", 4), host("b", 4)];
        let p = place(&hosts, &vms(6), Metric::Cpu, &Capacity::default()).unwrap();
        for h in ["a", "b", "c"] {
            assert_eq!(count(&p, h), 2, "{p:?}");
        }
        // The first VM goes to the first name, not the first listed.
        assert_eq!(p["vm-0"], "a");
        assert_eq!(p["vm-1"], "b");
        assert_eq!(p["vm-2"], "c");
    }

    #[test]
    fn each_metric_reads_its_own_load() {
        assert_eq!(Metric::parse("cpucommit"), Some(Metric::Cpu));
        assert_eq!(Metric::parse("memcommit"), Some(Metric::Mem));
        assert_eq!(Metric::parse("netcommit"), Some(Metric::Net));
        assert_eq!(Metric::parse("cpu"), None);
        let mut a = host("a", 8);
        let mut b = host("b", 2);
        // By CPU, a (0/8 after 1 becomes 1/8) takes far more than b.
        let p = place(
            &[a.clone(), b.clone()],
            &vms(5),
            Metric::Cpu,
            &Capacity::default(),
        )
        .unwrap();
        assert_eq!(count(&p, "a"), 4, "{p:?}");
        // By memory: a has little left, b much.
        a.mem_commit_mib = 3000;
        b.mem_commit_mib = 0;
        let p = place(
            &[a.clone(), b.clone()],
            &vms(2),
            Metric::Mem,
            &Capacity::default(),
        )
        .unwrap();
        assert_eq!(count(&p, "b"), 2, "{p:?}");
        // By NICs: b has 3 already.
        b.net_commit = 3;
        let p = place(&[a, b], &vms(3), Metric::Net, &Capacity::default()).unwrap();
        assert_eq!(count(&p, "a"), 3, "{p:?}");
    }

    #[test]
    fn schedule_pins_and_colocate_follows() {
        let hosts = [host("a", 4), host("b", 4)];
        let mut q = vms(4);
        q[0].schedule = Some("b".into());
        q[1].colocate = Some("vm-0".into());
        q[3].colocate = Some("vm-1".into());
        let p = place(&hosts, &q, Metric::Cpu, &Capacity::default()).unwrap();
        assert_eq!(p["vm-0"], "b");
        assert_eq!(p["vm-1"], "b");
        assert_eq!(p["vm-3"], "b", "a chain of colocates ends at its root");
        assert_eq!(p["vm-2"], "a");
    }

    #[test]
    fn constraint_errors_name_what_is_wrong() {
        let hosts = [host("a", 4), host("b", 4)];
        let mut q = vms(2);
        q[0].schedule = Some("b".into());
        q[0].colocate = Some("vm-1".into());
        assert_eq!(
            place(&hosts, &q, Metric::Cpu, &Capacity::default())
                .unwrap_err()
                .to_string(),
            "vm-0: schedule and colocate cannot both be set"
        );
        let mut q = vms(2);
        q[1].colocate = Some("foo".into());
        assert_eq!(
            place(&hosts, &q, Metric::Cpu, &Capacity::default())
                .unwrap_err()
                .to_string(),
            "nonexistent colocate VMs: [foo]"
        );
        let mut q = vms(1);
        q[0].schedule = Some("zz".into());
        assert_eq!(
            place(&hosts, &q, Metric::Cpu, &Capacity::default()).unwrap_err(),
            PlaceError::NoSuchHost {
                vm: "vm-0".into(),
                host: "zz".into()
            }
        );
        let mut q = vms(2);
        q[0].colocate = Some("vm-1".into());
        q[1].colocate = Some("vm-0".into());
        assert!(matches!(
            place(&hosts, &q, Metric::Cpu, &Capacity::default()),
            Err(PlaceError::ColocateCycle { .. })
        ));
    }

    #[test]
    fn coschedule_limits_neighbours_both_ways() {
        let hosts = [host("a", 4), host("b", 4)];
        // vm-0 wants to be alone: it gets a host, and nobody joins it.
        let mut q = vms(4);
        q[0].coschedule = Some(0);
        let p = place(&hosts, &q, Metric::Cpu, &Capacity::default()).unwrap();
        let alone = &p["vm-0"];
        assert_eq!(count(&p, alone), 1, "{p:?}");
        // Two that each want to be alone, on one host: impossible.
        let mut q = vms(2);
        q[0].coschedule = Some(0);
        q[1].coschedule = Some(0);
        let err = place(&[host("a", 4)], &q, Metric::Cpu, &Capacity::default()).unwrap_err();
        assert!(
            matches!(&err, PlaceError::NoRoom { vm, .. } if vm == "vm-1"),
            "{err}"
        );
        // A colocate onto a VM that wants to be alone names both ends.
        let mut q = vms(2);
        q[0].coschedule = Some(0);
        q[1].colocate = Some("vm-0".into());
        let err = place(&hosts, &q, Metric::Cpu, &Capacity::default()).unwrap_err();
        assert!(
            matches!(&err, PlaceError::DoesNotFit { vm, .. } if vm == "vm-1"),
            "{err}"
        );
    }

    #[test]
    fn capacity_caps_fail_a_batch_that_does_not_fit() {
        let hosts = [host("a", 2), host("b", 2)];
        let cap = Capacity {
            cpu: Some(1.0),
            mem: None,
        };
        assert!(place(&hosts, &vms(4), Metric::Cpu, &cap).is_ok());
        let err = place(&hosts, &vms(5), Metric::Cpu, &cap).unwrap_err();
        assert!(
            matches!(&err, PlaceError::NoRoom { vm, .. } if vm == "vm-4"),
            "{err}"
        );
        let cap = Capacity {
            cpu: None,
            mem: Some(0.25),
        };
        // 4096 MiB x 0.25 = 1024 MiB: two 512 MiB VMs per host.
        assert!(place(&hosts, &vms(4), Metric::Cpu, &cap).is_ok());
        assert!(place(&hosts, &vms(5), Metric::Cpu, &cap).is_err());
    }

    /// Random namespaces and queues: whatever is placed respects every
    /// constraint, and whatever fails names a VM of the queue.
    #[test]
    fn every_placement_respects_every_constraint() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        for _ in 0..2000 {
            let hosts: Vec<Host> = (0..rng.gen_range(1..6))
                .map(|i| host(&format!("h{i}"), rng.gen_range(1..9)))
                .collect();
            let n = rng.gen_range(1..20);
            let mut q = vms(n);
            for (i, w) in q.iter_mut().enumerate() {
                match rng.gen_range(0..10) {
                    0 => w.schedule = Some(format!("h{}", rng.gen_range(0..6))),
                    1 if i > 0 => w.colocate = Some(format!("vm-{}", rng.gen_range(0..i))),
                    2 => w.coschedule = Some(rng.gen_range(0..4)),
                    _ => {}
                }
                w.vcpus = rng.gen_range(1..4);
            }
            let cap = Capacity {
                cpu: rng.gen_bool(0.3).then(|| rng.gen_range(1..4) as f64),
                mem: None,
            };
            match place(&hosts, &q, Metric::Cpu, &cap) {
                Ok(p) => {
                    assert_eq!(p.len(), n);
                    for w in &q {
                        let h = &p[&w.name];
                        if let Some(s) = &w.schedule {
                            assert_eq!(h, s);
                        }
                        if let Some(c) = &w.colocate {
                            assert_eq!(h, &p[c]);
                        }
                        if let Some(k) = w.coschedule {
                            assert!(count(&p, h) - 1 <= k, "{w:?} on {h}: {p:?}");
                        }
                    }
                    if let Some(r) = cap.cpu {
                        for host in &hosts {
                            let used: u64 = q
                                .iter()
                                .filter(|w| p[&w.name] == host.name)
                                .map(|w| w.vcpus)
                                .sum();
                            assert!(used as f64 <= r * host.cpus as f64);
                        }
                    }
                }
                Err(e) => {
                    let s = e.to_string();
                    assert!(q.iter().any(|w| s.contains(&w.name)), "{s}");
                }
            }
        }
    }
}
