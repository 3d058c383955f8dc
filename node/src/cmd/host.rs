//! `help`, `host`, `version`: the node itself.

use futures::FutureExt;

use super::grammar::{self, Call};
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
        short: "show this host's load and VM commitments",
        long: "Columns: name, cpus, load (1 minute), memused and memtotal (MiB), rx and tx \
               (MiB/s over non-loopback interfaces, as `file status` counts), uptime (of the node); `-` until the first sample, about a second after the node starts, and the VM \
               commitments the scheduler uses: vms, cpucommit (vCPUs), memcommit (MiB), \
               netcommit (NICs). `mesh send all host` shows every node.",
        run: |cx, _| host(cx).boxed(),
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

async fn version(cx: &Ctx) -> Out {
    cx.one(Response::text(
        cx.me(),
        format!("mm {}", env!("CARGO_PKG_VERSION")),
    ))
}

async fn host(cx: &Ctx) -> Out {
    let node = &cx.node;
    let s = node.overlay.snapshot().await?;
    let mut st = s
        .nodes
        .get(&s.name)
        .map(|n| n.stats.clone())
        .unwrap_or_default();
    // The sampled stats can be two seconds old; uptime need not be.
    st.uptime_secs = node.started.elapsed().as_secs();
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
