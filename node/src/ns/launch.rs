//! From a queue of VMs to processes on hosts: ask each host of the
//! namespace what it has and runs (typed requests), place the VMs with the
//! pure scheduler, then send each host its VMs, all hosts at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::schedule::{self, Host, Metric, Want};
use super::Namespace;
use crate::vm::wire::{ask_all, ask_each, Ask, Load};
use crate::vm::{Config, Vm};
use crate::{Error, Node, Result};

/// What the hosts of a namespace said before a launch.
pub(crate) struct Survey {
    pub(crate) loads: BTreeMap<String, Load>,
    /// Every VM of the namespace, on every host: name to host.
    pub(crate) existing: BTreeMap<String, String>,
}

/// Asks every host of `ns` for its load and its VMs; a host that does not
/// answer fails the survey (a launch must not guess).
pub(crate) async fn survey(node: &Arc<Node>, name: &str, ns: &Namespace) -> Result<Survey> {
    let hosts: Vec<String> = ns.hosts.iter().cloned().collect();
    if hosts.is_empty() {
        return Err(Error::Usage(format!(
            "namespace {name} has no hosts; add some with ns add-hosts"
        )));
    }
    let t = node.send_timeout();
    let (loads, infos) = futures::join!(
        ask_all::<Load>(node, hosts.clone(), Ask::Load, t),
        ask_all::<Vec<Vm>>(
            node,
            hosts,
            Ask::Info {
                namespace: name.to_string()
            },
            t
        ),
    );
    let mut s = Survey {
        loads: BTreeMap::new(),
        existing: BTreeMap::new(),
    };
    let mut silent = Vec::new();
    for (host, l) in loads {
        match l {
            Ok(l) => {
                s.loads.insert(host, l);
            }
            Err(e) => silent.push(format!("{host}: {e}")),
        }
    }
    for (host, i) in infos {
        match i {
            Ok(vms) => s
                .existing
                .extend(vms.into_iter().map(|v| (v.name, host.clone()))),
            Err(e) => silent.push(format!("{host}: {e}")),
        }
    }
    if !silent.is_empty() {
        silent.sort();
        silent.dedup();
        return Err(Error::Refused(format!(
            "not every host of {name} answered ({}); nothing launched",
            silent.join("; ")
        )));
    }
    Ok(s)
}

/// Where each of `vms` goes: the scheduler's least-loaded-first placement
/// over the surveyed hosts, every constraint kept. A VM colocated with one
/// already running goes to that one's host.
pub(crate) fn plan(
    ns: &Namespace,
    s: &Survey,
    vms: &[(String, Config)],
) -> Result<BTreeMap<String, String>> {
    let hosts: Vec<Host> = s
        .loads
        .iter()
        .map(|(name, l)| Host {
            name: name.clone(),
            cpus: l.cpus,
            mem_mib: l.mem_mib,
            cpu_commit: l.commit.vcpus,
            mem_commit_mib: l.commit.mem_mib,
            net_commit: l.commit.nics,
            vms: l.commit.coschedule.clone(),
        })
        .collect();
    let queued: std::collections::HashSet<&str> = vms.iter().map(|(n, _)| n.as_str()).collect();
    let wants: Vec<Want> = vms
        .iter()
        .map(|(name, c)| {
            let mut w = Want {
                name: name.clone(),
                vcpus: c.vcpus,
                mem_mib: c.memory_mib,
                nics: c.nics.len() as u64,
                schedule: c.schedule.clone(),
                colocate: c.colocate.clone(),
                coschedule: c.coschedule,
            };
            if let Some(t) = &c.colocate {
                if !queued.contains(t.as_str()) {
                    if let Some(h) = s.existing.get(t) {
                        w.colocate = None;
                        w.schedule = Some(h.clone());
                    }
                }
            }
            w
        })
        .collect();
    let metric = Metric::parse(&ns.load).unwrap_or_default();
    schedule::place(&hosts, &wants, metric, &ns.capacity).map_err(|e| Error::Usage(e.to_string()))
}

/// What a launch did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub(crate) launched: Vec<String>,
    /// Per host that failed: why, and the VMs it was sent.
    pub(crate) failed: Vec<(String, String, Vec<String>)>,
    pub(crate) hosts: usize,
}

/// How long a launch waits for hosts to fetch the VMs' files (each host
/// gives up sooner on a file that gets no data for a minute).
const FETCH_WAIT: Duration = Duration::from_secs(3600);

/// Per name in this node's files directory: it and each backing file it
/// names, with their hashes, or why they cannot be had.
type Chains = BTreeMap<String, std::result::Result<Vec<(String, String)>, String>>;

/// What the hosts must fetch for the file `paths` their VMs name: each
/// path in this node's files directory -> its name there (matched on the
/// real path, so a base reached through a symlink matches, and a file that
/// is a symlink out of the directory is left to QEMU as it is); and the
/// [`Chains`] of those names. Hashes are kept, as for any file served, so
/// a host's question of who holds it has its answer at once. Blocking.
fn to_fetch(local: &mm_store::Local, paths: &[String]) -> (BTreeMap<String, String>, Chains) {
    let root = local.files.root();
    let gone = |n: &str| format!("{n} is not in the head's files directory any more");
    let mut named = BTreeMap::new();
    let mut chains = Chains::new();
    for p in paths {
        let Ok(real) = std::fs::canonicalize(p) else {
            // Gone since `vm config`: say so, rather than send hosts a
            // path of this node's that QEMU cannot open there.
            let rel = std::path::Path::new(p).strip_prefix(root).ok();
            if let Some(rel) = rel.and_then(|r| r.to_str()) {
                named.insert(p.clone(), rel.to_string());
                chains.insert(rel.to_string(), Err(gone(rel)));
            }
            continue;
        };
        let name = real
            .strip_prefix(root)
            .ok()
            .and_then(|r| r.to_str())
            .filter(|r| !r.is_empty() && !mm_store::files::has_magic(r));
        if let Some(name) = name {
            named.insert(p.clone(), name.to_string());
        }
    }
    let hash = |n: &str| match local.manifest(n) {
        Ok(Some(m)) => Ok((n.to_string(), m.root_hex())),
        Ok(None) => Err(gone(n)),
        Err(e) => Err(format!("{n}: {e}")),
    };
    for name in named.values() {
        if chains.contains_key(name) {
            continue;
        }
        let chain = crate::resolve::backing_here(root, name)
            .map_err(|e| format!("{name}: {e}"))
            .and_then(|backing| {
                std::iter::once(name.clone())
                    .chain(backing)
                    .map(|n| hash(&n))
                    .collect()
            });
        chains.insert(name.clone(), chain);
    }
    (named, chains)
}

/// Per host, each file path its VMs name -> the name its copy has here.
type HostPaths = BTreeMap<String, Vec<(String, String)>>;

/// Per other host whose batch names files here: the (path as configured,
/// name) pairs to give its QEMU the host's copies, and the `Fetch` of
/// their chains (name, hash). A host whose files cannot be had gets an
/// error row in `out` instead.
fn plan_fetches(
    me: &str,
    per_host: &BTreeMap<String, Vec<(String, Config)>>,
    named: &BTreeMap<String, String>,
    chains: &Chains,
    out: &mut Outcome,
) -> (HostPaths, Vec<(String, Ask)>) {
    let mut paths = BTreeMap::new();
    let mut fetches = Vec::new();
    for (host, batch) in per_host.iter().filter(|(h, _)| *h != me) {
        let mine: BTreeMap<&String, &String> = batch
            .iter()
            .flat_map(|(_, c)| c.files())
            .filter_map(|p| named.get_key_value(p))
            .collect();
        if mine.is_empty() {
            continue;
        }
        let mut want: Vec<(String, String)> = Vec::new();
        let mut bad: Vec<String> = Vec::new();
        for name in mine.values() {
            match &chains[*name] {
                Ok(chain) => {
                    for (n, h) in chain {
                        if !want.iter().any(|(w, _)| w == n) {
                            want.push((n.clone(), h.clone()));
                        }
                    }
                }
                Err(e) => bad.push(e.clone()),
            }
        }
        if !bad.is_empty() {
            let names = batch.iter().map(|(n, _)| n.clone()).collect();
            out.failed.push((host.clone(), bad.join("; "), names));
            continue;
        }
        let pairs = mine.into_iter().map(|(p, n)| (p.clone(), n.clone()));
        paths.insert(host.clone(), pairs.collect());
        fetches.push((host.clone(), Ask::Fetch { files: want }));
    }
    (paths, fetches)
}

/// Sends each host its VMs of `placement`, all hosts at once; a host's
/// batch launches whole or not at all. First, as minimega's hosts do, each
/// other host fetches the files the VMs name in this node's files
/// directory: this node's version of each, by its hash. A host that
/// cannot is an error row, and launches nothing.
pub(crate) async fn launch(
    node: &Arc<Node>,
    namespace: &str,
    placement: &BTreeMap<String, String>,
    vms: &[(String, Config)],
) -> Outcome {
    let mut per_host: BTreeMap<String, Vec<(String, Config)>> = BTreeMap::new();
    for (name, c) in vms {
        if let Some(h) = placement.get(name) {
            per_host
                .entry(h.clone())
                .or_default()
                .push((name.clone(), c.clone()));
        }
    }
    // Starting a QEMU takes a moment each; a host that dies drops its
    // connection and fails at once, so this is for one that hangs.
    let most = per_host.values().map(Vec::len).max().unwrap_or(0) as u64;
    let timeout = node.send_timeout().max(Duration::from_secs(60 + 2 * most));
    let mut out = Outcome {
        hosts: per_host.len(),
        ..Outcome::default()
    };
    // Every launch comes this way, a stored placement's too (no survey).
    let others: Vec<String> = per_host
        .keys()
        .filter(|h| **h != node.name)
        .cloned()
        .collect();
    for (host, r) in ask_all::<Load>(node, others, Ask::Load, node.send_timeout()).await {
        if r.is_ok_and(|l| l.format < crate::vm::wire::CONFIG_FORMAT) {
            let names = per_host[&host].iter().map(|(n, _)| n.clone()).collect();
            out.failed.push((
                host.clone(),
                "it runs an older mm, which would launch without the vm config fields it does \
                 not know (disks among them); upgrade it"
                    .into(),
                names,
            ));
            per_host.remove(&host);
        }
    }
    // Off the async threads: real paths (a share may hang), and hashes.
    let others: std::collections::BTreeSet<String> = per_host
        .iter()
        .filter(|(h, _)| **h != node.name)
        .flat_map(|(_, b)| b.iter().flat_map(|(_, c)| c.files()).cloned())
        .collect();
    let others: Vec<String> = others.into_iter().collect();
    let local = node.files.local.clone();
    let (named, chains) = match tokio::task::spawn_blocking(move || to_fetch(&local, &others)).await
    {
        Ok(r) => r,
        Err(e) => {
            // Not knowing what they need, no other host launches.
            for (h, b) in per_host.iter().filter(|(h, _)| **h != node.name) {
                let names = b.iter().map(|(n, _)| n.clone()).collect();
                out.failed
                    .push((h.clone(), format!("finding the VMs' files: {e}"), names));
            }
            per_host.retain(|h, _| *h == node.name);
            (BTreeMap::new(), BTreeMap::new())
        }
    };
    let (mut paths, fetches) = plan_fetches(&node.name, &per_host, &named, &chains, &mut out);
    // `vm launch` answers only at the end; the log says why it waits.
    for (host, ask) in &fetches {
        if let Ask::Fetch { files } = ask {
            let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
            tracing::info!("vm launch: {host} fetches {}", names.join(", "));
        }
    }
    for (host, r) in ask_each::<()>(node, fetches, timeout.max(FETCH_WAIT)).await {
        if let Err(e) = r {
            let names = per_host[&host].iter().map(|(n, _)| n.clone()).collect();
            // A host that answered names its files; one that went away
            // (the connection lost) does not.
            let e = e.to_string();
            let files: Vec<&str> = paths[&host].iter().map(|(_, n)| n.as_str()).collect();
            let why = if files.iter().any(|f| e.contains(f)) {
                format!("fetching the VMs' files: {e}")
            } else {
                format!("fetching {}: {e}", files.join(", "))
            };
            out.failed.push((host.clone(), why, names));
        }
    }
    per_host.retain(|h, _| !out.failed.iter().any(|(f, _, _)| f == h));
    let sent: BTreeMap<String, Vec<String>> = per_host
        .iter()
        .map(|(h, b)| (h.clone(), b.iter().map(|(n, _)| n.clone()).collect()))
        .collect();
    let asks = per_host
        .into_iter()
        .map(|(h, b)| {
            let files = paths.remove(&h).unwrap_or_default();
            (
                h,
                Ask::Launch {
                    namespace: namespace.to_string(),
                    vms: b,
                    files,
                },
            )
        })
        .collect();
    for (host, r) in ask_each::<Vec<Vm>>(node, asks, timeout).await {
        match r {
            Ok(vms) => out.launched.extend(vms.into_iter().map(|v| v.name)),
            Err(e) => out
                .failed
                .push((host.clone(), e.to_string(), sent[&host].clone())),
        }
    }
    out
}
