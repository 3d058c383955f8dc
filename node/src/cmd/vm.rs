//! `vm ...` and `clear vm config`: VMs across the active namespace's hosts
//! (issue 10). The head node keeps the config, the queue and the stored
//! placement of its namespace; the hosts keep their VMs. Every request to
//! a host is typed (`vm::wire::Ask`), never a command line. A `vm` command
//! that arrives from the mesh acts on this node's VMs alone, as in
//! minimega, so a head's fan-out never fans out again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures::FutureExt;

use super::grammar::Call;
use super::{hosts, Ctx, Out, Source, Spec};
use crate::ns::{launch, Batch, Namespace, Run};
use crate::proto::Response;
use crate::stats;
use crate::vm::config::{self, FIELDS};
use crate::vm::wire::{ask_all, Ask};
use crate::vm::{Acted, Config, Op, Target, Vm};
use crate::{Error, Result};

pub(super) static SPECS: &[Spec] = &[
    Spec {
        id: "vm launch",
        patterns: &["vm launch", "vm launch <kvm,container> <vms>"],
        short: "launch VMs on the namespace's hosts, or queue them",
        long: "VMS is a count (vm launch kvm 3 makes vm-0, vm-1, vm-2 in a new namespace; \
               the count goes on from there with each launch, passing over names taken) or names and ranges (foo, a,b, vm[1-100], vm[01-10]). Names are \
               unique in the namespace across its hosts; `all`, a bare integer and a name \
               given twice are errors. The VMs take the current vm config. The scheduler puts \
               each on the least-loaded host of the namespace (ns load), keeping vm config \
               schedule, colocate and coschedule and any ns capacity cap; the hosts start \
               them BUILDING (QEMU started, paused; vm start runs them). With ns queueing true \
               the VMs are only queued, and `vm launch` with no argument schedules and \
               launches the queue, with the placement ns schedule dry-run stored if there is \
               one. A constraint that cannot be kept fails before anything launches and \
               leaves the queue as it was. Cannot be run via mesh send or ns run: the \
               scheduler sends each host its VMs itself.",
        run: |cx, c| vm_launch(cx, c).boxed(),
    },
    Spec {
        id: "vm info",
        patterns: &["vm info"],
        short: "list the VMs of the namespace, on every host",
        long: "Columns: id (per host), name, state (BUILDING, RUNNING, PAUSED, QUIT, ERROR), \
               uptime (since launch), type, vcpus, memory (MiB), disk, vlan (per NIC: LAN (101), or \
               disconnected), bridge, tap, mac, ip and ip6 (what each NIC was seen using in ARP and \
               neighbour discovery on its bridge), pid, tags, accel \
               (kvm, or tcg where /dev/kvm does not work), error (why a VM is ERROR: what its \
               QEMU said, or a restart of its node), and the host column. A host that does \
               not answer gets an error line; the others still answer.",
        run: |cx, _| vm_info(cx).boxed(),
    },
    Spec {
        id: "vm start",
        patterns: &["vm start <vm>"],
        short: "run BUILDING or PAUSED VMs",
        long: "VM is a name, an id, a list or range of names (vm[1-5]), or `all`.",
        run: |cx, c| vm_act(cx, c, Op::Start).boxed(),
    },
    Spec {
        id: "vm stop",
        patterns: &["vm stop <vm>"],
        short: "pause RUNNING VMs",
        long: "VM takes the same forms as for `vm start`.",
        run: |cx, c| vm_act(cx, c, Op::Stop).boxed(),
    },
    Spec {
        id: "vm kill",
        patterns: &["vm kill <vm>"],
        short: "end VMs: their processes are killed, their state is QUIT",
        long: "VM takes the same forms as for `vm start`. `vm flush` then forgets them.",
        run: |cx, c| vm_act(cx, c, Op::Kill).boxed(),
    },
    Spec {
        id: "vm flush",
        patterns: &["vm flush"],
        short: "forget the QUIT and ERROR VMs of the namespace",
        long: "",
        run: |cx, _| vm_flush(cx).boxed(),
    },
    Spec {
        id: "vm config",
        patterns: &[
            "vm config",
            "vm config clone <vm>",
            "vm config <tags,> [key] [value]",
            "vm config <append,net,qemu-append,disks> [value]...",
            "vm config <vcpus,memory,cdrom,kernel,initrd> [value]",
            "vm config <schedule,colocate,coschedule,uuid,snapshot,filesystem> [value]",
            "vm config <cpu,machine> [value]",
        ],
        short: "show or set what the next VMs launch with",
        long: "With no field, shows every field; with a field and no value, that field; with \
               a value, sets it. vcpus (default 1), memory (MiB, default 2048), disks (images, a \
               diskspec each, PATH[,INTERFACE][,CACHE]: interface ide by default or virtio, \
               ahci, scsi, ...; written to a snapshot unless snapshot is false), cdrom, kernel, initrd and \
               filesystem (for container VMs) take a file, which must exist on this node when \
               it is set (one in its files directory, a file: word's say, is fetched by each \
               host that launches the VM; one elsewhere the hosts must see at the same path); \
               append takes the \
               kernel's command line; net takes NICs, a netspec each ([bridge,]VLAN[,MAC][,driver][,qinq]: \
               VLAN an alias such as LAN or an id; bridge mega_bridge and driver e1000 by \
               default; a random MAC of a real vendor when none is given), and replaces the \
               list; \
               schedule HOST pins VMs to a host, colocate VM places them on another VM's host \
               (not both); coschedule N allows at most N other VMs beside each (0: alone, -1: \
               no limit); tags KEY VALUE; uuid (default: a new one per VM); cpu (QEMU's CPU model, \
               such as host or Haswell,+vmx) and machine (pc, q35; both QEMU's default when \
               unset); qemu-append, words added last to QEMU's command line (from another \
               node, a host takes them only with --allow-shell). `vm config clone \
               VM` copies a launched VM's config (but its uuid). Each namespace has its own.",
        run: |cx, c| vm_config(cx, c).boxed(),
    },
    Spec {
        id: "clear vm config",
        patterns: &["clear vm config [field]"],
        short: "reset the vm config, or one field of it",
        long: "",
        run: |cx, c| clear_config(cx, c).boxed(),
    },
];

/// The namespace a command runs in. From the mesh (`ns run` of another
/// head) it need not exist here: the command acts on this node's VMs of
/// that name alone.
pub(super) fn current(cx: &Ctx) -> Result<(String, Namespace)> {
    let name = cx.namespace();
    match cx.node.ns.get(&name) {
        Some(ns) => Ok((name, ns)),
        None if cx.alone() => {
            let me = BTreeSet::from([cx.node.name.clone()]);
            Ok((name, Namespace::new(me)))
        }
        None => Err(Error::NotFound(format!("no such namespace: {name}"))),
    }
}

/// The hosts a `vm` command reaches: the namespace's, or only this node
/// when the command came from the mesh.
pub(super) fn reach(cx: &Ctx, ns: &Namespace) -> Vec<String> {
    if cx.alone() {
        vec![cx.node.name.clone()]
    } else {
        ns.hosts.iter().cloned().collect()
    }
}

const INFO: &[&str] = &[
    "id", "name", "state", "uptime", "type", "vcpus", "memory", "disks", "vlan", "bridge", "tap",
    "mac", "ip", "ip6", "pid", "tags", "accel", "error",
];

/// A list column as minimega shows one: `[a b]`.
fn brackets<'a>(v: impl Iterator<Item = &'a str>) -> String {
    format!("[{}]", v.collect::<Vec<_>>().join(" "))
}

fn info_row(v: &Vm, now: u64) -> Vec<String> {
    let c = &v.config;
    vec![
        v.id.to_string(),
        v.name.clone(),
        v.state.as_str().to_string(),
        stats::duration(now.saturating_sub(v.launched)),
        "kvm".into(),
        c.vcpus.to_string(),
        c.memory_mib.to_string(),
        c.show("disks"),
        format!(
            "[{}]",
            v.nics
                .iter()
                .map(|n| crate::net::netspec::Nic::show_vlan(n.alias.as_deref(), n.vlan))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        brackets(v.nics.iter().map(|n| n.bridge.as_str())),
        brackets(v.nics.iter().map(|n| n.tap.as_str())),
        brackets(v.nics.iter().map(|n| n.mac.as_str())),
        brackets(v.nics.iter().map(|n| n.ip.as_str())),
        brackets(v.nics.iter().map(|n| n.ip6.as_str())),
        v.pid.to_string(),
        config::show_tags(&c.tags),
        v.accel.clone(),
        v.error.clone(),
    ]
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Every VM of the namespace by host, or each host's error.
async fn survey_vms(cx: &Ctx, ns_name: &str, hosts: Vec<String>) -> Vec<(String, Result<Vec<Vm>>)> {
    ask_all::<Vec<Vm>>(
        &cx.node,
        hosts,
        Ask::Info {
            namespace: ns_name.to_string(),
        },
        cx.node.send_timeout(),
    )
    .await
}

async fn vm_info(cx: &Ctx) -> Out {
    let (name, ns) = current(cx)?;
    let now = now_secs();
    let mut out = Vec::new();
    for (host, r) in survey_vms(cx, &name, reach(cx, &ns)).await {
        out.push(match r {
            Ok(vms) => Response::table(&host, INFO, vms.iter().map(|v| info_row(v, now)).collect()),
            Err(e) => Response::error(&host, e),
        });
    }
    Ok(out)
}

async fn vm_act(cx: &Ctx, c: &Call, op: Op) -> Out {
    let (name, ns) = current(cx)?;
    let spec = c.arg("vm").unwrap_or_default();
    let target = if spec == "all" {
        Target::All
    } else {
        Target::Names(hosts::expand(spec)?)
    };
    let answers = ask_all::<Acted>(
        &cx.node,
        reach(cx, &ns),
        Ask::Act {
            namespace: name,
            op,
            target: target.clone(),
        },
        cx.node.send_timeout(),
    )
    .await;
    let mut out = Vec::new();
    let mut matched = BTreeSet::new();
    let mut silent = false;
    for (host, r) in answers {
        match r {
            Ok(a) => {
                matched.extend(a.matched);
                out.extend(a.errors.iter().map(|e| Response::error(&host, e)));
            }
            Err(e) => {
                silent = true;
                out.push(Response::error(&host, e));
            }
        }
    }
    if let Target::Names(names) = &target {
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !matched.contains(*n))
            .cloned()
            .collect();
        // A host that did not answer may hold them: its error says enough.
        if !missing.is_empty() && !silent {
            out.push(Response::error(
                cx.me(),
                format!("no such vm: {}", hosts::compress(&missing)),
            ));
        }
    }
    if out.is_empty() {
        return cx.ok();
    }
    Ok(out)
}

async fn vm_flush(cx: &Ctx) -> Out {
    let (name, ns) = current(cx)?;
    let answers = ask_all::<usize>(
        &cx.node,
        reach(cx, &ns),
        Ask::Flush { namespace: name },
        cx.node.send_timeout(),
    )
    .await;
    let out: Vec<Response> = answers
        .into_iter()
        .filter_map(|(host, r)| r.err().map(|e| Response::error(&host, e)))
        .collect();
    if out.is_empty() {
        return cx.ok();
    }
    Ok(out)
}

fn cwd(cx: &Ctx) -> Option<&Path> {
    match &cx.src {
        Source::Local { cwd } => cwd.as_deref(),
        Source::Mesh { .. } => None,
    }
}

async fn vm_config(cx: &Ctx, c: &Call) -> Out {
    let (name, ns) = current(cx)?;
    if let Some(vm) = c.arg("vm") {
        return clone(cx, &name, &ns, vm).await;
    }
    let Some(field) = FIELDS.iter().copied().find(|f| c.has(f)) else {
        let rows = FIELDS
            .iter()
            .map(|f| vec![f.to_string(), ns.config.show(f)])
            .collect();
        return cx.one(Response::table(cx.me(), &["field", "value"], rows));
    };
    if field == "tags" {
        return tags(cx, &name, &ns, c);
    }
    // QEMU's arguments can run programs and write files: from the mesh,
    // only by this operator's leave, as `shell`.
    if field == "qemu-append"
        && cx.is_remote()
        && !cx.node.allow_shell
        && c.lists.contains_key("value")
    {
        return Err(Error::Refused(
            "cannot set vm config qemu-append via meshage unless this node was started with \
             --allow-shell: it gives QEMU any argument"
                .into(),
        ));
    }
    let values: Vec<String> = match field {
        "append" | "net" | "qemu-append" | "disks" => {
            c.lists.get("value").cloned().unwrap_or_default()
        }
        _ => c
            .arg("value")
            .map(|v| vec![v.to_string()])
            .unwrap_or_default(),
    };
    if values.is_empty() {
        return cx.one(Response::text(cx.me(), ns.config.show(field)));
    }
    if field == "net" {
        // Each call replaces the whole list, as in minimega.
        let nics = super::net::nics(cx, &values).await?;
        cx.node.ns.update(&name, |n| {
            n.config.nics = nics;
            Ok(())
        })?;
        return cx.ok();
    }
    if field == "schedule" {
        // Refused now, not at launch: the hosts are known.
        if let [host] = &values[..] {
            if !ns.hosts.contains(host.as_str()) {
                return Err(Error::NotFound(format!(
                    "{host} is not a host of namespace {name} (ns add-hosts first); nothing changed"
                )));
            }
        }
    }
    let dir = cwd(cx).map(Path::to_path_buf);
    cx.node
        .ns
        .update(&name, |n| n.config.set(field, &values, dir.as_deref()))?;
    cx.ok()
}

fn tags(cx: &Ctx, name: &str, ns: &Namespace, c: &Call) -> Out {
    match (c.arg("key"), c.arg("value")) {
        (None, _) => cx.one(Response::text(cx.me(), ns.config.show("tags"))),
        (Some(k), None) => cx.one(Response::text(
            cx.me(),
            ns.config.tags.get(k).cloned().unwrap_or_default(),
        )),
        (Some(k), Some(v)) => {
            let kv = [k.to_string(), v.to_string()];
            cx.node
                .ns
                .update(name, |n| n.config.set("tags", &kv, None))?;
            cx.ok()
        }
    }
}

async fn clone(cx: &Ctx, name: &str, ns: &Namespace, vm: &str) -> Out {
    let mut found = None;
    let mut errors = Vec::new();
    for (host, r) in survey_vms(cx, name, reach(cx, ns)).await {
        match r {
            Ok(vms) => {
                if let Some(v) = vms.into_iter().find(|v| v.name == vm) {
                    found = Some((host, v));
                }
            }
            Err(e) => errors.push(format!("{host}: {e}")),
        }
    }
    let Some((host, v)) = found else {
        let mut why = format!("no such vm: {vm}");
        if !errors.is_empty() {
            why.push_str(&format!(
                " (not every host answered: {})",
                errors.join("; ")
            ));
        }
        return Err(Error::NotFound(why));
    };
    // Another node's VM may carry QEMU arguments its operator (or anyone
    // who reached it) gave: taken here only as `vm config qemu-append`
    // from the mesh is.
    if host != cx.node.name && !v.config.qemu_append.is_empty() && !cx.node.allow_shell {
        return Err(Error::Refused(format!(
            "{vm} runs on {host}, with vm config qemu-append; this node takes QEMU arguments \
             from another node only when started with --allow-shell; nothing changed"
        )));
    }
    let mut config = v.config;
    // Two VMs with one UUID would confuse every tool that reads it.
    config.uuid = None;
    cx.node.ns.update(name, |n| {
        n.config = config;
        Ok(())
    })?;
    cx.ok()
}

async fn clear_config(cx: &Ctx, c: &Call) -> Out {
    let (name, _) = current(cx)?;
    // A field by its name or a prefix only it has, as the grammar takes
    // words.
    let field = match c.arg("field") {
        None => None,
        Some(f) => {
            let exact = FIELDS.iter().find(|x| **x == f);
            let mut by_prefix = FIELDS.iter().filter(|x| x.starts_with(f));
            match (exact, by_prefix.next(), by_prefix.next()) {
                (Some(x), _, _) | (None, Some(x), None) => Some(*x),
                _ => {
                    return Err(Error::Usage(format!(
                        "no vm config field {f}; the fields: {}",
                        FIELDS.join(", ")
                    )))
                }
            }
        }
    };
    cx.node.ns.update(&name, |n| {
        match field {
            Some(f) => n.config.reset(f),
            None => n.config = Config::default(),
        }
        Ok(())
    })?;
    cx.ok()
}

/// Most VMs one `vm launch` may name (the scheduler's scale target).
const MAX_LAUNCH: u64 = 100_000;

/// The names `vm launch TYPE VMS` makes: a count from the namespace's
/// counter (passing over `vm-N` names `taken` already, so a VM someone
/// named so never blocks the counter), or the names and ranges given; and
/// the counter after.
fn names_of(spec: &str, counter: u64, taken: impl Fn(&str) -> bool) -> Result<(Vec<String>, u64)> {
    // `-1` or `+5` is a count gone wrong, not a name (minimega takes
    // any integer as a count).
    if crate::vm::is_integer(spec) {
        // A sign, or more than u64 holds: no count (u64 parses `+5`).
        let unsigned = spec.bytes().all(|b| b.is_ascii_digit());
        let n = if unsigned {
            spec.parse::<u64>().unwrap_or(0)
        } else {
            0
        };
        if n == 0 || n > MAX_LAUNCH {
            return Err(Error::Usage(format!(
                "vm launch: a count from 1 to {MAX_LAUNCH}, not {spec}"
            )));
        }
        let mut names = Vec::with_capacity(n as usize);
        let mut i = counter;
        while names.len() < n as usize {
            let name = format!("vm-{i}");
            i += 1;
            if !taken(&name) {
                names.push(name);
            }
        }
        return Ok((names, i));
    }
    let names = hosts::expand_all(spec)?;
    let mut seen = BTreeSet::new();
    for n in &names {
        crate::vm::check_name(n)?;
        if !seen.insert(n) {
            return Err(Error::Usage(format!("`{n}` is specified twice")));
        }
    }
    Ok((names, counter))
}

async fn vm_launch(cx: &Ctx, c: &Call) -> Out {
    if cx.alone() {
        return Err(Error::Refused(format!(
            "cannot run `vm launch` via {}: the head's scheduler sends each host its VMs",
            cx.via()
        )));
    }
    let _launching = cx.node.ns.begin_launch(&cx.namespace())?;
    // Read under the guard: the queue and counter as no launch leaves them.
    let (name, ns) = current(cx)?;
    let Some(spec) = c.arg("vms") else {
        if ns.queue.is_empty() {
            return Err(Error::usage(
                "nothing is queued; vm launch kvm COUNT|NAMES launches or queues VMs",
            ));
        }
        return launch_queue(cx, &name, ns).await;
    };
    if c.has("container") {
        return Err(Error::Usage(
            "container VMs are not supported by this build; launch kvm VMs".into(),
        ));
    }
    let s = launch::survey(&cx.node, &name, &ns).await?;
    let queued: BTreeSet<&String> = ns.queue.iter().flat_map(|b| &b.names).collect();
    let taken = |n: &str| s.existing.contains_key(n) || queued.iter().any(|q| q.as_str() == n);
    let (names, counter) = names_of(spec, ns.counter, taken)?;
    if let Some(n) = names
        .iter()
        .find(|n| s.existing.contains_key(*n) || queued.contains(n))
    {
        return Err(Error::Usage(format!("vm already exists with name {n}")));
    }
    let cfg = ns.config.clone();
    if let Some(t) = &cfg.colocate {
        let known = names.contains(t) || s.existing.contains_key(t) || queued.contains(t);
        if !known {
            return Err(Error::Usage(format!("nonexistent colocate VMs: [{t}]")));
        }
    }
    if ns.queueing {
        cx.node.ns.update(&name, |n| {
            n.queue.push(Batch {
                kind: "kvm".into(),
                names,
                config: cfg,
            });
            n.counter = counter;
            // A new batch is not in the stored placement: place anew.
            n.placement = None;
            Ok(())
        })?;
        return cx.ok();
    }
    let vms: Vec<(String, Config)> = names.into_iter().map(|n| (n, cfg.clone())).collect();
    let placement = launch::plan(&ns, &s, &vms)?;
    cx.node.ns.update(&name, |n| {
        n.counter = counter;
        Ok(())
    })?;
    run(cx, &name, &placement, &vms, false).await
}

/// The queue, as (name, config) in queue order.
fn queued(ns: &Namespace) -> Vec<(String, Config)> {
    ns.queue
        .iter()
        .flat_map(|b| b.names.iter().map(|n| (n.clone(), b.config.clone())))
        .collect()
}

/// Schedules and launches the whole queue, with the stored placement if
/// there is one (`ns schedule dry-run`, `ns schedule mv`).
pub(super) async fn launch_queue(cx: &Ctx, name: &str, ns: Namespace) -> Out {
    let vms = queued(&ns);
    let placement = match &ns.placement {
        Some(p) => {
            if let Some((vm, h)) = p.iter().find(|(_, h)| !ns.hosts.contains(*h)) {
                return Err(Error::Usage(format!(
                    "the stored schedule puts {vm} on {h}, which is no longer a host of {name}; \
                     ns schedule dry-run again"
                )));
            }
            p.clone()
        }
        None => {
            let s = launch::survey(&cx.node, name, &ns).await?;
            launch::plan(&ns, &s, &vms)?
        }
    };
    run(cx, name, &placement, &vms, true).await
}

/// Where the queue would go, stored for `ns schedule mv` and the launch.
pub(super) async fn dry_run(
    cx: &Ctx,
    name: &str,
    ns: &Namespace,
) -> Result<BTreeMap<String, String>> {
    let s = launch::survey(&cx.node, name, ns).await?;
    let p = launch::plan(ns, &s, &queued(ns))?;
    cx.node.ns.update(name, |n| {
        n.placement = Some(p.clone());
        Ok(())
    })?;
    Ok(p)
}

/// Runs at most this many launches' records are kept for `ns schedule
/// status`.
const RUNS_KEPT: usize = 100;

async fn run(
    cx: &Ctx,
    name: &str,
    placement: &BTreeMap<String, String>,
    vms: &[(String, Config)],
    from_queue: bool,
) -> Out {
    let start = now_secs();
    let o = launch::launch(&cx.node, name, placement, vms).await;
    let launched: BTreeSet<&String> = o.launched.iter().collect();
    let failures = vms.len() - launched.len();
    cx.node.ns.update(name, |n| {
        n.runs.push(Run {
            start,
            end: Some(now_secs()),
            state: if failures == 0 { "completed" } else { "failed" }.into(),
            launched: launched.len(),
            failures,
            total: vms.len(),
            hosts: o.hosts,
        });
        let extra = n.runs.len().saturating_sub(RUNS_KEPT);
        n.runs.drain(..extra);
        if from_queue {
            // What failed stays queued, for another `vm launch`.
            for b in &mut n.queue {
                b.names.retain(|v| !launched.contains(v));
            }
            n.queue.retain(|b| !b.names.is_empty());
            n.placement = None;
        }
        Ok(())
    })?;
    if o.failed.is_empty() {
        return cx.ok();
    }
    Ok(o.failed
        .into_iter()
        .map(|(host, why, names)| {
            let what = if from_queue {
                "still queued"
            } else {
                "not launched"
            };
            Response::error(
                &host,
                format!("{why} ({what}: {})", hosts::compress(&names)),
            )
        })
        .collect())
}

/// `ns queue`: the queued batches.
pub(super) fn queue_table(cx: &Ctx, ns: &Namespace) -> Response {
    let d = Config::default();
    let rows = ns
        .queue
        .iter()
        .map(|b| {
            let changed: Vec<String> = FIELDS
                .iter()
                .filter(|f| b.config.show(f) != d.show(f))
                .map(|f| format!("{f}={}", b.config.show(f)))
                .collect();
            vec![
                b.names.len().to_string(),
                hosts::compress(&b.names),
                b.kind.clone(),
                changed.join(" "),
            ]
        })
        .collect();
    Response::table(cx.me(), &["count", "names", "type", "config"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_names_count_from_the_counter_or_are_given() {
        let free = |_: &str| false;
        let (n, next) = names_of("3", 5, free).unwrap();
        assert_eq!(
            (n, next),
            (vec!["vm-5".into(), "vm-6".into(), "vm-7".into()], 8)
        );
        // A vm-N someone took by name is passed over.
        let (n, next) = names_of("2", 5, |n| n == "vm-6").unwrap();
        assert_eq!((n, next), (vec!["vm-5".into(), "vm-7".into()], 8));
        let (n, next) = names_of("vm[01-03],web", 5, free).unwrap();
        assert_eq!(n, ["vm01", "vm02", "vm03", "web"]);
        assert_eq!(next, 5);
        for (bad, why) in [
            ("a,b,a", "`a` is specified twice"),
            ("x,all", "`all` is a reserved word"),
            ("0", "a count from 1"),
            ("-1", "a count from 1"),
            ("+5", "a count from 1"),
            (
                "99999999999999999999999999999999999999999",
                "a count from 1",
            ),
            ("a[1-", "malformed"),
        ] {
            let e = names_of(bad, 0, free).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
