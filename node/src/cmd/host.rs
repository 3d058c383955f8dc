//! `help`, `host`, `version`: the node itself.

use futures::FutureExt;

use super::grammar::{self, Call};
use super::mesh::run_remote;
use super::{specs, Ctx, Out, Spec};
use crate::proto::Response;
use crate::stats;

pub(super) static SPECS: &[Spec] = &[
    Spec {
        id: "help",
        patterns: &["help [command]..."],
        short: "list commands, or show how to use one",
        long: "With no argument, lists every command. With words, shows the commands that \
               start with them, or the full help of the one that matches.",
        run: |cx, c| help(cx, c).boxed(),
    },
    Spec {
        id: "host",
        patterns: &["host"],
        short: "show the load and VM commitments of the namespace's hosts",
        long: "Columns: name, cpus, load (1 minute), memused and memtotal (MiB), rx and tx \
               (MiB/s over non-loopback interfaces, as `file status` counts), uptime (of the node); `-` until the first sample, about a second after the node starts, and the VM \
               commitments the scheduler uses: vms, cpucommit (vCPUs), memcommit (MiB), \
               netcommit (NICs), counted over the VMs the host runs (not QUIT or ERROR). One \
               row per host of the active namespace (in mm, this node alone); `mesh send all \
               host` shows every other node.",
        run: |cx, _| host(cx).boxed(),
    },
    Spec {
        id: "read",
        patterns: &["read <file> [check,continue]"],
        short: "run a file of commands",
        long: "Each line is a command, as if typed in the shell; `#` starts a comment, and \
               dot commands alone set the mode for the lines after them. Stops at the first \
               line that fails, unless `continue`; `check` only checks that each line is a \
               command. The mm command reads the file and sends its lines; a `read` inside \
               the file, and `read` via mesh send or ns run, are refused.",
        run: |cx, _| read(cx).boxed(),
    },
    Spec {
        id: "version",
        patterns: &["version"],
        short: "show the mm version",
        long: "",
        run: |cx, _| version(cx).boxed(),
    },
];

async fn help(cx: &Ctx, c: &Call) -> Out {
    let words = c.lists.get("command").cloned().unwrap_or_default();
    cx.one(Response::text(
        cx.me(),
        grammar::help(specs(), &words, grammar::HELP_WIDTH)?,
    ))
}

/// The mm command runs `read` itself: only a raw control-socket client, or
/// another node, gets here.
async fn read(cx: &Ctx) -> Out {
    Err(crate::Error::Refused(if cx.is_remote() {
        "cannot run `read` via meshage".into()
    } else {
        "read is run by the mm command, which sends the file's lines one by one: mm read FILE"
            .into()
    }))
}

async fn version(cx: &Ctx) -> Out {
    cx.one(Response::text(
        cx.me(),
        format!("mm {}", env!("CARGO_PKG_VERSION")),
    ))
}

/// The hosts of the namespace, each its own row; from the mesh, this
/// node's alone (so a head's fan-out does not fan out again).
async fn host(cx: &Ctx) -> Out {
    let me = cx.me().to_string();
    let hosts: Vec<String> = match cx.node.ns.get(&cx.namespace()) {
        Some(ns) if !cx.alone() => ns.hosts.into_iter().collect(),
        _ => vec![me.clone()],
    };
    let others: Vec<String> = hosts.iter().filter(|h| **h != me).cloned().collect();
    let mut out = Vec::new();
    if hosts.contains(&me) {
        out.extend(this_host(cx).await?);
    }
    if !others.is_empty() {
        let argv = vec!["host".to_string()];
        out.extend(run_remote(&cx.node, others, argv, None, cx.node.send_timeout()).await?);
    }
    Ok(out)
}

async fn this_host(cx: &Ctx) -> Out {
    let node = &cx.node;
    let s = node.overlay.snapshot().await?;
    let mut st = s
        .nodes
        .get(&s.name)
        .map(|n| n.stats.clone())
        .unwrap_or_default();
    // The sampled stats can be two seconds old; uptime and the VMs need
    // not be.
    st.uptime_secs = node.started.elapsed().as_secs();
    let n = node.clone();
    let c = tokio::task::spawn_blocking(move || n.vms.commit()).await?;
    st.vms = c.vms as u32;
    st.cpu_commit = c.vcpus as u32;
    st.mem_commit_mib = c.mem_mib;
    st.net_commit = c.nics as u32;
    // Until the first sample (about a second after start) there is nothing
    // to show, and zeros would read as a host with no CPU.
    let sampled = |v: String| if st.cpus == 0 { "-".to_string() } else { v };
    let mib = |bps: u64| format!("{:.1}", bps as f64 / (1u64 << 20) as f64);
    cx.one(Response::table(
        cx.me(),
        &[
            "name",
            "cpus",
            "load",
            "memused",
            "memtotal",
            "rx",
            "tx",
            "uptime",
            "vms",
            "cpucommit",
            "memcommit",
            "netcommit",
        ],
        vec![vec![
            node.name.clone(),
            sampled(st.cpus.to_string()),
            sampled(format!("{:.2}", st.load)),
            sampled(st.mem_used_mib.to_string()),
            sampled(st.mem_total_mib.to_string()),
            sampled(mib(st.rx_bps)),
            sampled(mib(st.tx_bps)),
            stats::duration(st.uptime_secs),
            st.vms.to_string(),
            st.cpu_commit.to_string(),
            st.mem_commit_mib.to_string(),
            st.net_commit.to_string(),
        ]],
    ))
}
