//! `namespace ...`, `clear namespace`, `ns ...`: namespaces, as minimega
//! has them (issue 10; VMs and the scheduler's commands follow).

use std::collections::BTreeSet;

use futures::FutureExt;

use super::grammar::{self, Call};
use super::mesh::{run_remote, settle};
use super::{hosts, specs, Ctx, Out, Spec};
use crate::proto::Response;
use crate::vm::wire::{ask_all, Ask};
use crate::{Error, Result};

pub(super) static SPECS: &[Spec] = &[
    Spec {
        id: "namespace",
        patterns: &[
            "namespace",
            "namespace <name>",
            "namespace <name> (command)",
        ],
        short: "list namespaces, make one active, or run a command in one",
        long: "With no argument, lists the namespaces: namespace, vms, vlans (its VLAN range), active. With NAME, \
               makes it the active namespace, creating it if it is new: a new namespace holds \
               every node the mesh reaches except this one (the head node drives and runs no \
               VMs), or this node alone if there is no other. With a COMMAND after NAME, runs \
               that one command in NAME and leaves the active namespace as it was. The \
               default namespace, mm, holds only this node.",
        run: |cx, c| namespace(cx, c).boxed(),
    },
    Spec {
        id: "clear namespace",
        patterns: &["clear namespace [name]"],
        short: "remove a namespace",
        long: "Removes NAME (the active namespace if none is given), its VMs, its host taps and \
               the bridges ns bridge made on its hosts, and returns to mm if it was active. Clearing mm resets it to this node alone.",
        run: |cx, c| clear(cx, c).boxed(),
    },
    Spec {
        id: "ns hosts",
        patterns: &["ns hosts"],
        short: "show the hosts of the active namespace",
        long: "As a compressed list, such as n[1-3] or n[1,3].",
        run: |cx, _| ns_hosts(cx).boxed(),
    },
    Spec {
        id: "ns add-hosts",
        patterns: &["ns add-hosts <hosts>"],
        short: "add hosts to the active namespace",
        long: "HOSTS is a name, a list, a range (n[1-3]), `all` (every node the mesh reaches, \
               this one included) or `localhost` (this node). A host the mesh does not reach is \
               an error, and then nothing is added.",
        run: |cx, c| add_hosts(cx, c).boxed(),
    },
    Spec {
        id: "ns del-hosts",
        patterns: &["ns del-hosts <hosts>"],
        short: "remove hosts from the active namespace",
        long: "HOSTS takes the same forms as for `ns add-hosts`. A host that is not in the \
               namespace is an error, and then nothing is removed.",
        run: |cx, c| del_hosts(cx, c).boxed(),
    },
    Spec {
        id: "ns queueing",
        patterns: &["ns queueing [true,false]"],
        short: "show or set whether vm launch only queues",
        long: "With queueing true, `vm launch TYPE N` queues VMs, and `vm launch` with no \
               argument schedules and launches the queue. Default false.",
        run: |cx, c| queueing(cx, c).boxed(),
    },
    Spec {
        id: "ns load",
        patterns: &["ns load [cpucommit,memcommit,netcommit]"],
        short: "show or set the load the scheduler balances",
        long: "cpucommit (committed vCPUs over CPUs, the default), memcommit (committed \
               memory over total memory) or netcommit (committed NICs). Each VM goes to the \
               least loaded host; ties go to the host name that sorts first.",
        run: |cx, c| load(cx, c).boxed(),
    },
    Spec {
        id: "ns queue",
        patterns: &["ns queue"],
        short: "show the VMs queued by vm launch",
        long: "One row per vm launch that queued: count, names, type, and the vm config \
               fields it differs from the defaults in.",
        run: |cx, _| ns_queue(cx).boxed(),
    },
    Spec {
        id: "ns flush",
        patterns: &["ns flush"],
        short: "empty the queue (and its stored schedule)",
        long: "",
        run: |cx, _| ns_flush(cx).boxed(),
    },
    Spec {
        id: "ns schedule",
        patterns: &[
            "ns schedule",
            "ns schedule <dry-run,dump,status>",
            "ns schedule mv <vms> <host>",
        ],
        short: "place the queue, edit or show the placement, launch it",
        long: "dry-run places the queue as vm launch would, stores the placement and shows \
               it (vm, dst); mv VMS HOST moves queued VMs (names and ranges) to another host of \
               the namespace in the stored placement (it overrides the scheduler: \
               constraints are not checked again); dump shows the stored placement; status \
               shows each launch: start, end, state, launched, failures, total, hosts. With \
               no argument, launches the queue, with the stored placement if there is one. \
               Queueing more VMs drops the stored placement.",
        run: |cx, c| ns_schedule(cx, c).boxed(),
    },
    Spec {
        id: "ns capacity",
        patterns: &["ns capacity", "ns capacity <cpu,mem> [ratio]"],
        short: "show or set caps on what the scheduler commits a host to",
        long: "cpu RATIO allows at most RATIO vCPUs per CPU of a host, mem RATIO at most \
               RATIO times its memory, counting the VMs it runs and those being placed; \
               `none` removes a cap (the default: no caps, as in minimega). A launch that \
               does not fit under the caps fails before anything launches, naming the VM.",
        run: |cx, c| ns_capacity(cx, c).boxed(),
    },
    Spec {
        id: "ns run",
        patterns: &["ns run (command)"],
        short: "run a command on every host of the active namespace",
        long: "Each host runs it in this namespace (`ns run vm info`: each host's VMs of \
               it). The answers come back as one table with a host column; a host that does not \
               answer gets an error row. `ns run`, `mesh send`, `read` and `vm launch` cannot \
               be run this way, and `ns run` cannot be sent with `mesh send`.",
        run: |cx, c| ns_run(cx, c).boxed(),
    },
];

async fn namespace(cx: &Ctx, c: &Call) -> Out {
    let node = &cx.node;
    let Some(name) = c.arg("name") else {
        return list(cx).await;
    };
    // From the mesh, one command in a namespace this node does not keep
    // runs on its VMs of that name (as `ns run`'s do) and creates nothing:
    // `mesh send all namespace foo vm info` left a `foo` on every node.
    let just_run = cx.alone() && !c.sub.is_empty();
    if node.ns.get(name).is_none() && !just_run {
        let others: BTreeSet<String> = settle(node).await?.others().into_iter().collect();
        let hosts = if others.is_empty() {
            BTreeSet::from([node.name.clone()])
        } else {
            others
        };
        node.ns.create(name, hosts)?;
    }
    if c.sub.is_empty() {
        node.ns.set_active(name)?;
        return cx.ok();
    }
    let (spec, call) = super::parse_resolved(node, &c.sub, !cx.is_remote()).await?;
    if spec.id == "namespace" {
        return Err(Error::usage(
            "namespace NAME COMMAND: the command cannot be another namespace command",
        ));
    }
    let inner = super::Ctx {
        node: node.clone(),
        src: cx.src.clone(),
        ns: Some(name.to_string()),
        alone: cx.alone,
    };
    (spec.run)(&inner, &call).await
}

/// `namespace`: each namespace with its VMs counted on its hosts (one
/// question per host for all namespaces); a host that does not answer
/// gets an error row, and its VMs are not counted.
async fn list(cx: &Ctx) -> Out {
    let node = &cx.node;
    let all = node.ns.list();
    let hosts: BTreeSet<String> = all.iter().flat_map(|(_, ns)| ns.hosts.clone()).collect();
    let answers = ask_all::<std::collections::BTreeMap<String, usize>>(
        node,
        hosts,
        Ask::Counts,
        node.send_timeout(),
    )
    .await;
    let mut out = Vec::new();
    let mut counts = std::collections::BTreeMap::new();
    for (h, r) in answers {
        match r {
            Ok(c) => {
                counts.insert(h, c);
            }
            Err(e) => out.push(Response::error(&h, format!("its VMs are not counted: {e}"))),
        }
    }
    let active = node.ns.active();
    let rows = all
        .into_iter()
        .map(|(n, ns)| {
            let vms: usize = ns.hosts.iter().filter_map(|h| counts.get(h)?.get(&n)).sum();
            vec![
                n.clone(),
                vms.to_string(),
                ns.vlans.show_range(),
                (n == active).to_string(),
            ]
        })
        .collect();
    out.insert(
        0,
        Response::table(cx.me(), &["namespace", "vms", "vlans", "active"], rows),
    );
    Ok(out)
}

async fn clear(cx: &Ctx, c: &Call) -> Out {
    let name = c.arg("name").map_or_else(|| cx.namespace(), str::to_owned);
    let ns = cx
        .node
        .ns
        .get(&name)
        .ok_or_else(|| Error::NotFound(format!("no such namespace: {name}")))?;
    // Its VMs go first, on every host; one that does not answer is named,
    // and the namespace goes all the same.
    let answers = ask_all::<usize>(
        &cx.node,
        ns.hosts.iter().cloned(),
        Ask::Clear {
            namespace: name.clone(),
        },
        cx.node.send_timeout(),
    )
    .await;
    // Then its bridges (`ns bridge`), on every host.
    let hosts: Vec<String> = ns.hosts.iter().cloned().collect();
    let mut gone = Vec::new();
    for (br, b) in &ns.bridges {
        let on: Vec<String> = ns.hosts.union(&b.hosts).cloned().collect();
        gone.extend(super::net::del_bridge(cx, &on, br, &name, Some(b.key)).await);
    }
    gone.extend(super::net::clear_taps(cx, &hosts, &name).await);
    cx.node.ns.clear(&name)?;
    let mut errors: Vec<Response> = answers
        .into_iter()
        .filter_map(|(h, r)| {
            r.err()
                .map(|e| Response::error(&h, format!("its VMs of {name} were not killed: {e}")))
        })
        .collect();
    errors.extend(gone);
    if errors.is_empty() {
        return cx.ok();
    }
    Ok(errors)
}

async fn ns_queue(cx: &Ctx) -> Out {
    let (_, ns) = current(cx)?;
    cx.one(super::vm::queue_table(cx, &ns))
}

async fn ns_flush(cx: &Ctx) -> Out {
    let (name, _) = current(cx)?;
    cx.node.ns.update(&name, |n| {
        n.queue.clear();
        n.placement = None;
        Ok(())
    })?;
    cx.ok()
}

fn placement_table(cx: &Ctx, p: &std::collections::BTreeMap<String, String>) -> Response {
    let mut rows: Vec<Vec<String>> = p.iter().map(|(v, h)| vec![v.clone(), h.clone()]).collect();
    rows.sort_by(|a, b| natural(&a[0]).cmp(&natural(&b[0])));
    Response::table(cx.me(), &["vm", "dst"], rows)
}

/// Sorts `vm-10` after `vm-9`.
fn natural(s: &str) -> (String, u64, String) {
    let digits = s.len() - s.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let (head, tail) = s.split_at(s.len() - digits);
    (head.to_string(), tail.parse().unwrap_or(0), s.to_string())
}

fn when(secs: u64) -> String {
    // UTC, to the second: the same on every node.
    let (d, t) = (secs / 86400, secs % 86400);
    let (y, m, dd) = civil(d as i64);
    format!(
        "{y:04}-{m:02}-{dd:02} {:02}:{:02}:{:02}",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Days since 1970-01-01 to a date (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

async fn ns_schedule(cx: &Ctx, c: &Call) -> Out {
    let (name, ns) = current(cx)?;
    if c.has("status") {
        let rows = ns
            .runs
            .iter()
            .map(|r| {
                vec![
                    when(r.start),
                    r.end.map(when).unwrap_or_default(),
                    r.state.clone(),
                    r.launched.to_string(),
                    r.failures.to_string(),
                    r.total.to_string(),
                    r.hosts.to_string(),
                ]
            })
            .collect();
        return cx.one(Response::table(
            cx.me(),
            &[
                "start", "end", "state", "launched", "failures", "total", "hosts",
            ],
            rows,
        ));
    }
    if c.has("dump") {
        let p = ns.placement.clone().unwrap_or_default();
        return cx.one(placement_table(cx, &p));
    }
    if c.has("dry-run") {
        if ns.queue.is_empty() {
            return Err(Error::usage("nothing is queued to schedule"));
        }
        let p = super::vm::dry_run(cx, &name, &ns).await?;
        return cx.one(placement_table(cx, &p));
    }
    if let Some(spec) = c.arg("vms") {
        let host = c.arg("host").unwrap_or_default();
        let Some(mut p) = ns.placement.clone() else {
            return Err(Error::usage(
                "no stored schedule to change: run ns schedule dry-run first",
            ));
        };
        if !ns.hosts.contains(host) {
            return Err(Error::NotFound(format!(
                "{host} is not a host of namespace {name}; nothing changed"
            )));
        }
        let vms = hosts::expand(spec)?;
        let unknown: Vec<String> = vms
            .iter()
            .filter(|v| !p.contains_key(*v))
            .cloned()
            .collect();
        if !unknown.is_empty() {
            return Err(Error::NotFound(format!(
                "not in the stored schedule: {}; nothing changed",
                hosts::compress(&unknown)
            )));
        }
        for v in vms {
            p.insert(v, host.to_string());
        }
        cx.node.ns.update(&name, |n| {
            n.placement = Some(p);
            Ok(())
        })?;
        return cx.ok();
    }
    if cx.alone() {
        return Err(Error::Refused(format!(
            "cannot run `ns schedule` via {}: it launches VMs",
            cx.via()
        )));
    }
    let _launching = cx.node.ns.begin_launch(&name)?;
    let (name, ns) = current(cx)?;
    if ns.queue.is_empty() {
        return Err(Error::usage("nothing is queued to launch"));
    }
    super::vm::launch_queue(cx, &name, ns).await
}

async fn ns_capacity(cx: &Ctx, c: &Call) -> Out {
    let (name, ns) = current(cx)?;
    let show = |v: Option<f64>| v.map_or("none".to_string(), |r| r.to_string());
    let which = if c.has("cpu") {
        "cpu"
    } else if c.has("mem") {
        "mem"
    } else {
        return cx.one(Response::table(
            cx.me(),
            &["cpu", "mem"],
            vec![vec![show(ns.capacity.cpu), show(ns.capacity.mem)]],
        ));
    };
    let Some(r) = c.arg("ratio") else {
        let v = if which == "cpu" {
            ns.capacity.cpu
        } else {
            ns.capacity.mem
        };
        return cx.one(Response::text(cx.me(), show(v)));
    };
    let ratio = match r {
        "none" => None,
        _ => match r.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Some(x),
            _ => {
                return Err(Error::Usage(format!(
                    "ns capacity {which}: `{r}` is not a ratio above 0 (such as 1 or 1.5), or none"
                )))
            }
        },
    };
    cx.node.ns.update(&name, |n| {
        if which == "cpu" {
            n.capacity.cpu = ratio;
        } else {
            n.capacity.mem = ratio;
        }
        Ok(())
    })?;
    cx.ok()
}

fn current(cx: &Ctx) -> Result<(String, crate::ns::Namespace)> {
    let name = cx.namespace();
    let ns = cx
        .node
        .ns
        .get(&name)
        .ok_or_else(|| Error::NotFound(format!("no such namespace: {name}")))?;
    Ok((name, ns))
}

async fn ns_hosts(cx: &Ctx) -> Out {
    let (_, ns) = current(cx)?;
    let hosts: Vec<String> = ns.hosts.into_iter().collect();
    cx.one(Response::text(cx.me(), hosts::compress(&hosts)))
}

/// The hosts a list names, each one checked against the mesh.
async fn named_hosts(cx: &Ctx, spec: &str) -> Result<BTreeSet<String>> {
    let s = cx.node.overlay.snapshot().await?;
    let names: Vec<String> = match spec {
        "all" => s.nodes.keys().cloned().collect(),
        "localhost" => vec![cx.node.name.clone()],
        _ => hosts::expand(spec)?,
    };
    let unknown: Vec<String> = names
        .iter()
        .filter(|n| !s.nodes.contains_key(*n))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(Error::NotFound(format!(
            "not in the mesh: {}; nothing changed",
            hosts::compress(&unknown)
        )));
    }
    Ok(names.into_iter().collect())
}

async fn add_hosts(cx: &Ctx, c: &Call) -> Out {
    let (name, _) = current(cx)?;
    let add = named_hosts(cx, c.arg("hosts").unwrap_or_default()).await?;
    cx.node.ns.update(&name, |ns| {
        ns.hosts.extend(add);
        Ok(())
    })?;
    cx.ok()
}

async fn del_hosts(cx: &Ctx, c: &Call) -> Out {
    let (name, _) = current(cx)?;
    let spec = c.arg("hosts").unwrap_or_default();
    let del: BTreeSet<String> = match spec {
        "all" => current(cx)?.1.hosts,
        "localhost" => BTreeSet::from([cx.node.name.clone()]),
        _ => hosts::expand(spec)?.into_iter().collect(),
    };
    cx.node.ns.update(&name, |ns| {
        let absent: Vec<String> = del.difference(&ns.hosts).cloned().collect();
        if !absent.is_empty() {
            return Err(Error::NotFound(format!(
                "not in namespace {name}: {}; nothing changed",
                hosts::compress(&absent)
            )));
        }
        ns.hosts.retain(|h| !del.contains(h));
        Ok(())
    })?;
    cx.ok()
}

async fn queueing(cx: &Ctx, c: &Call) -> Out {
    let (name, ns) = current(cx)?;
    let set = if c.has("true") {
        true
    } else if c.has("false") {
        false
    } else {
        return cx.one(Response::text(cx.me(), ns.queueing.to_string()));
    };
    cx.node.ns.update(&name, |ns| {
        ns.queueing = set;
        Ok(())
    })?;
    cx.ok()
}

async fn load(cx: &Ctx, c: &Call) -> Out {
    let (name, ns) = current(cx)?;
    let Some(m) = ["cpucommit", "memcommit", "netcommit"]
        .into_iter()
        .find(|m| c.has(m))
    else {
        return cx.one(Response::text(cx.me(), ns.load));
    };
    cx.node.ns.update(&name, |ns| {
        ns.load = m.to_string();
        Ok(())
    })?;
    cx.ok()
}

async fn ns_run(cx: &Ctx, c: &Call) -> Out {
    if cx.alone() {
        return Err(Error::Refused(format!(
            "cannot run `ns run` via {}",
            cx.via()
        )));
    }
    let (sub, _) = grammar::parse(specs(), &c.sub)?;
    if matches!(sub.id, "ns run" | "mesh send" | "read" | "vm launch") {
        return Err(Error::Refused(format!(
            "cannot run `{}` via ns run",
            sub.id
        )));
    }
    let (_, ns) = current(cx)?;
    let mut out = Vec::new();
    let others: Vec<String> = ns
        .hosts
        .iter()
        .filter(|h| **h != cx.node.name)
        .cloned()
        .collect();
    if ns.hosts.contains(&cx.node.name) {
        let ns = Some(cx.namespace());
        // Its own part only: the others run theirs.
        out.extend(super::execute_in(&cx.node, &c.sub, cx.src.clone(), ns, true).await);
    }
    if !others.is_empty() {
        // In this namespace, as minimega's `ns run` does: `ns run vm info`
        // shows each host's VMs of it.
        out.extend(
            run_remote(
                &cx.node,
                others,
                c.sub.clone(),
                Some(cx.namespace()),
                cx.node.send_timeout(),
            )
            .await?,
        );
    }
    out.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(out)
}
