//! `namespace ...`, `clear namespace`, `ns ...`: namespaces, as minimega
//! has them (issue 10; VMs and the scheduler's commands follow).

use std::collections::BTreeSet;

use futures::FutureExt;

use super::grammar::{self, Call};
use super::mesh::{run_remote, settle};
use super::{hosts, specs, Ctx, Out, Spec};
use crate::proto::Response;
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
        long: "With no argument, lists the namespaces: namespace, vms, active. With NAME, \
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
        long: "Removes NAME (the active namespace if none is given) and returns to mm if it was \
               active. Clearing mm resets it to this node alone.",
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
        id: "ns run",
        patterns: &["ns run (command)"],
        short: "run a command on every host of the active namespace",
        long: "The answers come back as one table with a host column; a host that does not \
               answer gets an error row. `ns run` and `mesh send` cannot be run this way, and \
               `ns run` cannot be sent with `mesh send`.",
        run: |cx, c| ns_run(cx, c).boxed(),
    },
];

async fn namespace(cx: &Ctx, c: &Call) -> Out {
    let node = &cx.node;
    let Some(name) = c.arg("name") else {
        let active = node.ns.active();
        let rows = node
            .ns
            .list()
            .into_iter()
            .map(|(n, _)| {
                let vms = node.vms.info(&n).len().to_string();
                vec![n.clone(), vms, (n == active).to_string()]
            })
            .collect();
        return cx.one(Response::table(
            cx.me(),
            &["namespace", "vms", "active"],
            rows,
        ));
    };
    if node.ns.get(name).is_none() {
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
    let (spec, call) = grammar::parse(specs(), &c.sub)?;
    if spec.id == "namespace" {
        return Err(Error::usage(
            "namespace NAME COMMAND: the command cannot be another namespace command",
        ));
    }
    let inner = super::Ctx {
        node: node.clone(),
        src: cx.src.clone(),
        ns: Some(name.to_string()),
    };
    (spec.run)(&inner, &call).await
}

async fn clear(cx: &Ctx, c: &Call) -> Out {
    let name = c.arg("name").map_or_else(|| cx.namespace(), str::to_owned);
    cx.node.ns.clear(&name)?;
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
    if cx.is_remote() {
        return Err(Error::Refused("cannot run `ns run` via meshage".into()));
    }
    let (sub, _) = grammar::parse(specs(), &c.sub)?;
    if matches!(sub.id, "ns run" | "mesh send") {
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
        out.extend(super::execute_in(&cx.node, &c.sub, cx.src.clone(), ns).await);
    }
    if !others.is_empty() {
        out.extend(run_remote(&cx.node, others, c.sub.clone(), cx.node.send_timeout()).await?);
    }
    out.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(out)
}
