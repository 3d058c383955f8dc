//! Every command: its grammar entry and its handler. [`execute`] is the
//! only way a command runs, whatever its source.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::grammar::{self, Call, Spec};
use crate::proto::{MeshCommand, Response};
use crate::{hosts, stats, Node, Source};

pub static SPECS: &[Spec] = &[
    Spec {
        id: "help",
        patterns: &["help [command]..."],
        short: "list commands, or show how to use one",
        long: "With no argument, lists every command. With words, shows the commands that \
               start with them, or the full help of the one that matches.",
    },
    Spec {
        id: "host",
        patterns: &["host"],
        short: "show this host's load and VM commitments",
        long: "Columns: name, cpus, load (1 minute), memused and memtotal (MiB), rx and tx \
               (MB/s over non-loopback interfaces), uptime (of the node), and the VM \
               commitments the scheduler uses: vms, cpucommit (vCPUs), memcommit (MiB), \
               netcommit (NICs). `mesh send all host` shows every node.",
    },
    Spec {
        id: "version",
        patterns: &["version"],
        short: "show the mm version",
        long: "",
    },
    Spec {
        id: "mesh degree",
        patterns: &["mesh degree [degree]"],
        short: "view or set the number of peers this node keeps",
        long: "A node dials discovered peers until it has at least `degree` of them, and \
               refuses inbound connections beyond max(8, 4 x degree). Degree 0 means no \
               automatic dialing; `mesh dial` still works. The setting survives a restart \
               unless `mm serve --degree` overrides it.",
    },
    Spec {
        id: "mesh dial",
        patterns: &["mesh dial <hostname>"],
        short: "connect this node to another node",
        long: "HOSTNAME is a node already known in the mesh, a multiaddr \
               (/ip4/10.0.0.2/tcp/9000), HOST:PORT, or a host name or address on this \
               node's port. Waits until connected or failed.",
    },
    Spec {
        id: "mesh dot",
        patterns: &["mesh dot <filename>"],
        short: "write the mesh as a graphviz dot file",
        long: "A relative FILENAME is relative to the directory `mm` runs in (or to the \
               node's base directory when run through `mesh send`).",
    },
    Spec {
        id: "mesh hangup",
        patterns: &["mesh hangup <hostname>"],
        short: "disconnect from a direct peer",
        long: "The peer is not dialled again automatically for 30 seconds; after that the \
               degree logic may reconnect to keep the mesh at its degree.",
    },
    Spec {
        id: "mesh list",
        patterns: &["mesh list [all,peers]"],
        short: "display the mesh adjacency list",
        long: "Without an argument, prints every node followed by its ` |--peer` lines. \
               `all` prints the names of every node as a compressed range; `peers` does the \
               same without this node.",
    },
    Spec {
        id: "mesh status",
        patterns: &["mesh status"],
        short: "display a short status report of the mesh",
        long: "Columns: size (nodes reachable, this one included), degree, peers (direct), \
               context, port, and keyed (whether a cluster key is in use).",
    },
    Spec {
        id: "mesh timeout",
        patterns: &["mesh timeout [timeout]"],
        short: "view or set the mesh send timeout, in seconds",
        long: "How long `mesh send` waits for answers. A host that has not answered by \
               then gets a `timed out` error row. 0 means no limit. Default 10.",
    },
    Spec {
        id: "mesh send",
        patterns: &["mesh send <hosts> (command)"],
        short: "run a command on other nodes",
        long: "HOSTS is a name, a comma list, a range such as node[1-8] or kn[01-05,20], or \
               `all` (every node but this one). Nodes that are not direct peers are reached \
               over several hops. The answers come back as one table with a host column; a \
               host that does not answer in time gets a `timed out` error, an unknown one \
               `no such host`. `mesh send` cannot itself be sent.",
    },
];

pub async fn execute(node: &Arc<Node>, argv: &[String], src: &Source) -> Vec<Response> {
    let call = match grammar::parse(SPECS, argv) {
        Ok(c) => c,
        Err(e) => return vec![Response::error(&node.name, e)],
    };
    match run(node, &call, src).await {
        Ok(rs) => rs,
        Err(e) => vec![Response::error(&node.name, e)],
    }
}

async fn run(node: &Arc<Node>, c: &Call, src: &Source) -> Result<Vec<Response>, String> {
    let me = node.name.as_str();
    let one = |r: Response| Ok(vec![r]);
    let ok = || Ok(vec![Response::text(me, "")]);
    match c.id {
        "help" => {
            let words = c.lists.get("command").cloned().unwrap_or_default();
            one(Response::text(me, grammar::help(SPECS, &words)?))
        }
        "version" => one(Response::text(
            me,
            format!("mm {}", env!("CARGO_PKG_VERSION")),
        )),
        "host" => one(host_table(node).await?),
        "mesh status" => {
            let s = node.overlay.snapshot().await?;
            one(Response::table(
                me,
                &["size", "degree", "peers", "context", "port", "keyed"],
                vec![vec![
                    s.nodes.len().to_string(),
                    s.degree.to_string(),
                    s.direct.len().to_string(),
                    s.context,
                    s.port.to_string(),
                    s.keyed.to_string(),
                ]],
            ))
        }
        "mesh list" => {
            let s = node.overlay.snapshot().await?;
            let mut text = String::new();
            if c.has("all") || c.has("peers") {
                let names: Vec<String> = s
                    .nodes
                    .keys()
                    .filter(|n| c.has("all") || **n != s.name)
                    .cloned()
                    .collect();
                text = hosts::compress(&names);
            } else {
                for (name, n) in &s.nodes {
                    let _ = writeln!(text, "{name}");
                    for p in &n.peers {
                        let _ = writeln!(text, " |--{p}");
                    }
                }
            }
            one(Response::text(me, text))
        }
        "mesh degree" => match c.arg("degree") {
            None => {
                let s = node.overlay.snapshot().await?;
                one(Response::text(me, s.degree.to_string()))
            }
            Some(d) => {
                let d: usize = d
                    .parse()
                    .map_err(|_| format!("degree must be a whole number, not '{d}'"))?;
                node.overlay.set_degree(d).await?;
                node.meta.put("settings", "degree", &(d as u64))?;
                ok()
            }
        },
        "mesh timeout" => match c.arg("timeout") {
            None => {
                let t = node.timeout();
                one(Response::text(
                    me,
                    if t.is_zero() {
                        "unlimited".to_string()
                    } else {
                        format!("{}s", t.as_secs_f64())
                    },
                ))
            }
            Some(t) => {
                let secs: f64 = t
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| format!("timeout must be a number of seconds, not '{t}'"))?;
                node.set_timeout(Duration::from_secs_f64(secs))?;
                ok()
            }
        },
        "mesh dial" => {
            let target = c.arg("hostname").unwrap_or_default();
            let s = node.overlay.snapshot().await?;
            node.overlay.dial(target, s.port).await?;
            ok()
        }
        "mesh hangup" => {
            node.overlay
                .hangup(c.arg("hostname").unwrap_or_default())
                .await?;
            ok()
        }
        "mesh dot" => {
            let file = c.arg("filename").unwrap_or_default();
            let path = local_path(node, src, file);
            let s = node.overlay.snapshot().await?;
            let mut dot = String::from("graph mesh {\n\tsize=\"8,11\";\n");
            let _ = writeln!(dot, "\t\"{}\" [style=filled, color=lightblue];", s.name);
            for (name, n) in &s.nodes {
                for p in n.peers.iter().filter(|p| name < *p) {
                    let _ = writeln!(dot, "\t\"{name}\" -- \"{p}\";");
                }
            }
            dot.push_str("}\n");
            std::fs::write(&path, dot)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            ok()
        }
        "mesh send" => mesh_send(node, c, src).await,
        other => Err(format!("command {other} has no handler")),
    }
}

fn local_path(node: &Node, src: &Source, file: &str) -> PathBuf {
    let p = PathBuf::from(file);
    if p.is_absolute() {
        return p;
    }
    match src {
        Source::Local { cwd: Some(cwd) } => cwd.join(p),
        _ => node.base.join(p),
    }
}

async fn host_table(node: &Node) -> Result<Response, String> {
    let s = node.overlay.snapshot().await?;
    let mut st = s
        .nodes
        .get(&s.name)
        .map(|n| n.stats.clone())
        .unwrap_or_default();
    // The sampled stats can be two seconds old; uptime need not be.
    st.uptime_secs = node.started.elapsed().as_secs();
    Ok(Response::table(
        &node.name,
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
            st.cpus.to_string(),
            format!("{:.2}", st.load),
            st.mem_used_mib.to_string(),
            st.mem_total_mib.to_string(),
            format!("{:.1}", st.rx_bps as f64 / 1e6),
            format!("{:.1}", st.tx_bps as f64 / 1e6),
            stats::duration(st.uptime_secs),
            st.vms.to_string(),
            st.cpu_commit.to_string(),
            st.mem_commit_mib.to_string(),
            st.net_commit.to_string(),
        ]],
    ))
}

async fn mesh_send(node: &Arc<Node>, c: &Call, src: &Source) -> Result<Vec<Response>, String> {
    if matches!(src, Source::Mesh { .. }) {
        return Err("cannot run `mesh send` via meshage".into());
    }
    let sub = grammar::parse(SPECS, &c.sub)?;
    if sub.id == "mesh send" {
        return Err("cannot run `mesh send` via meshage".into());
    }
    let spec = c.arg("hosts").unwrap_or_default();
    let s = node.overlay.snapshot().await?;
    let targets: Vec<String> = if spec == "all" {
        s.nodes.keys().filter(|n| **n != s.name).cloned().collect()
    } else {
        hosts::expand(spec)?
    };
    if targets.is_empty() {
        return Err("mesh send all: there are no other nodes in the mesh".into());
    }
    let body = mm_overlay::wire::encode(&MeshCommand {
        argv: c.sub.clone(),
    });
    let timeout = match node.timeout() {
        t if t.is_zero() => Duration::from_secs(24 * 3600),
        t => t,
    };
    let answers = node.overlay.send(targets, body, timeout).await?;
    let mut out = Vec::new();
    for (host, result) in answers {
        match result.and_then(|b| mm_overlay::wire::decode::<Vec<Response>>(&b)) {
            Ok(rs) => out.extend(rs),
            Err(e) => out.push(Response::error(&host, e)),
        }
    }
    out.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(out)
}
