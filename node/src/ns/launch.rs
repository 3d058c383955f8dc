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

/// How long a launch waits for hosts that fetch the VMs' files first.
const FETCH_WAIT: Duration = Duration::from_secs(3600);

/// Sends each host its VMs of `placement`, all hosts at once; a host's
/// batch launches whole or not at all.
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
    let mut timeout = node.send_timeout().max(Duration::from_secs(60 + 2 * most));
    // Hosts fetch the VMs' files that are in this node's files directory
    // first (`vm::wire::localize`), which takes as long as the images are
    // big: a host that dies still fails at once.
    let files = node.files.local.files.root().to_path_buf();
    let in_files = |p: &Option<String>| {
        p.as_deref()
            .is_some_and(|p| std::path::Path::new(p).starts_with(&files))
    };
    if vms.iter().any(|(_, c)| {
        [&c.disk, &c.cdrom, &c.kernel, &c.initrd]
            .into_iter()
            .any(in_files)
    }) {
        timeout = timeout.max(FETCH_WAIT);
    }
    let sent: BTreeMap<String, Vec<String>> = per_host
        .iter()
        .map(|(h, b)| (h.clone(), b.iter().map(|(n, _)| n.clone()).collect()))
        .collect();
    let asks = per_host
        .into_iter()
        .map(|(h, b)| {
            (
                h,
                Ask::Launch {
                    namespace: namespace.to_string(),
                    vms: b,
                    files: Some(files.display().to_string()),
                },
            )
        })
        .collect();
    let mut out = Outcome {
        hosts: sent.len(),
        ..Outcome::default()
    };
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
