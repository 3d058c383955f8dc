//! `mesh ...`: the overlay, as minimega's meshage commands show and steer it.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use futures::FutureExt;

use super::grammar::{self, Call};
use super::{hosts, specs, Ctx, Out, Source, Spec};
use crate::proto::{Request, Response};
use crate::{Error, Node, Result};

pub(super) static SPECS: &[Spec] = &[
    Spec {
        id: "mesh degree",
        patterns: &["mesh degree [degree]"],
        short: "view or set the number of peers this node keeps",
        long: "A node dials discovered peers until it has at least `degree` of them, and \
               refuses inbound connections beyond max(8, 4 x degree). Degree 0 means no \
               automatic dialing; `mesh dial` still works. The setting survives a restart \
               unless `mm serve --degree` overrides it.",
        run: |cx, c| degree(cx, c).boxed(),
    },
    Spec {
        id: "mesh dial",
        patterns: &["mesh dial <hostname>"],
        short: "connect this node to another node",
        long: "HOSTNAME is a node already known in the mesh, a multiaddr \
               (/ip4/10.0.0.2/tcp/9000), HOST:PORT, or a host name or address on this \
               node's port. Waits until connected or failed.",
        run: |cx, c| dial(cx, c).boxed(),
    },
    Spec {
        id: "mesh dot",
        patterns: &["mesh dot <filename>"],
        short: "write the mesh as a graphviz dot file",
        long: "A relative FILENAME is relative to the directory `mm` runs in. It cannot be \
               sent to another node: no node writes a file another names.",
        run: |cx, c| dot(cx, c).boxed(),
    },
    Spec {
        id: "mesh hangup",
        patterns: &["mesh hangup <hostname>"],
        short: "disconnect from a direct peer",
        long: "The peer is not dialled again automatically for 30 seconds; after that the \
               degree logic may reconnect to keep the mesh at its degree.",
        run: |cx, c| hangup(cx, c).boxed(),
    },
    Spec {
        id: "mesh list",
        patterns: &["mesh list [all,peers]"],
        short: "display the mesh adjacency list",
        long: "Without an argument, prints every node followed by its ` |--peer` lines. \
               `all` prints the names of every node as a compressed range; `peers` does the \
               same without this node.",
        run: |cx, c| list(cx, c).boxed(),
    },
    Spec {
        id: "mesh status",
        patterns: &["mesh status"],
        short: "display a short status report of the mesh",
        long: "Columns: size (nodes reachable, this one included), degree, peers (direct), \
               context, port, keyed (whether a cluster key is in use), mode: keyed, \
               insecure (no key, on the network), or loopback (no key, so this host only), \
               clashes: names that two nodes claim, as any node saw them in the last \
               10 minutes (- if none; `mesh list` says which nodes), and site: where this \
               node says it is (`mm serve --site`; - if it says nowhere).",
        run: |cx, _| status(cx).boxed(),
    },
    Spec {
        id: "mesh timeout",
        patterns: &["mesh timeout [timeout]"],
        short: "view or set the mesh send timeout, in seconds",
        long: "How long `mesh send` waits for answers. A host that has not answered by \
               then gets a `timed out` error row. 0 means no limit. Default 10.",
        run: |cx, c| timeout(cx, c).boxed(),
    },
    Spec {
        id: "mesh wait",
        patterns: &["mesh wait [hosts] [timeout]"],
        short: "wait until the mesh has N nodes, or the hosts named",
        long: "For scripts, right after `mm serve`: a new node is alone for about a second. \
               HOSTS is a number N (wait until the mesh holds at least N nodes, this one \
               included), or a name, list or range (wait until every one of them is in the \
               mesh); without it, until one other node is. Gives up after TIMEOUT seconds \
               (default 60) with an error that says what is missing.",
        run: |cx, c| wait(cx, c).boxed(),
    },
    Spec {
        id: "mesh send",
        patterns: &["mesh send <hosts> (command)"],
        short: "run a command on other nodes",
        long: "HOSTS is a name, a comma list, a range such as node[1-8] or kn[01-05,20], or \
               `all` (every node but this one). Nodes that are not direct peers are reached \
               over several hops. The answers come back as one table with a host column; a \
               host that does not answer in time gets a `timed out` error, one that left \
               the mesh `left the mesh Ns ago`, a name never seen `no such host`. `mesh send` cannot itself be sent.",
        run: |cx, c| send(cx, c).boxed(),
    },
];

async fn status(cx: &Ctx) -> Out {
    let s = cx.node.overlay.snapshot().await?;
    cx.one(Response::table(
        cx.me(),
        &[
            "size", "degree", "peers", "context", "port", "keyed", "mode", "clashes", "site",
        ],
        vec![vec![
            s.nodes.len().to_string(),
            s.degree.to_string(),
            // Direct peers still in the mesh: a frozen peer's connection
            // outlives its place in the mesh, and `size` no longer counts it.
            s.direct
                .iter()
                .filter(|n| s.nodes.contains_key(*n))
                .count()
                .to_string(),
            s.context.clone(),
            s.port.to_string(),
            s.keyed.to_string(),
            cx.node.mode.as_str().to_string(),
            clashed_names(&s),
            s.site.clone().unwrap_or_else(|| "-".into()),
        ]],
    ))
}

/// Names two nodes claim, as this node or any other saw them: `-` if none.
fn clashed_names(s: &mm_overlay::Snapshot) -> String {
    let mut names: Vec<String> = s.clashes.iter().map(|c| c.name.clone()).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        "-".into()
    } else {
        hosts::compress(&names)
    }
}

async fn list(cx: &Ctx, c: &Call) -> Out {
    let s = cx.node.overlay.snapshot().await?;
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
        // A second node with a name in use is kept out of the mesh, so the
        // list above cannot show it: say so under it.
        for c in &s.clashes {
            let _ = write!(
                text,
                "! name clash: two nodes claim '{}'; {} refused ",
                c.name, c.seen_by
            );
            let _ = match (c.peer_id.is_empty(), c.addr.is_empty()) {
                (true, _) => writeln!(text, "one"),
                (false, true) => writeln!(text, "{}", c.peer_id),
                (false, false) => writeln!(text, "{} at {}", c.peer_id, c.addr),
            };
        }
    }
    cx.one(Response::text(cx.me(), text))
}

async fn degree(cx: &Ctx, c: &Call) -> Out {
    let node = &cx.node;
    let Some(d) = c.arg("degree") else {
        let s = node.overlay.snapshot().await?;
        return cx.one(Response::text(cx.me(), s.degree.to_string()));
    };
    let d: usize = d
        .parse()
        .ok()
        .filter(|d| *d <= mm_overlay::MAX_DEGREE)
        .ok_or_else(|| {
            Error::Usage(format!(
                "degree must be a whole number from 0 to {}, not '{d}'",
                mm_overlay::MAX_DEGREE
            ))
        })?;
    node.overlay.set_degree(d).await?;
    node.meta.put("settings", "degree", &(d as u64))?;
    cx.ok()
}

async fn timeout(cx: &Ctx, c: &Call) -> Out {
    let Some(t) = c.arg("timeout") else {
        let t = cx.node.timeout();
        return cx.one(Response::text(
            cx.me(),
            if t.is_zero() {
                "unlimited".to_string()
            } else {
                format!("{}s", t.as_secs_f64())
            },
        ));
    };
    let max = 7 * 24 * 3600;
    let d = t
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .filter(|d| d.as_secs() <= max)
        .ok_or_else(|| {
            Error::Usage(format!(
                "timeout must be a number of seconds from 0 to {max}, not '{t}'"
            ))
        })?;
    cx.node.set_timeout(d)?;
    cx.ok()
}

async fn wait(cx: &Ctx, c: &Call) -> Out {
    let limit = match c.arg("timeout") {
        None => Duration::from_secs(60),
        Some(t) => t
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .filter(|d| d.as_secs() <= 7 * 24 * 3600)
            .ok_or_else(|| {
                Error::Usage(format!("timeout must be a number of seconds, not '{t}'"))
            })?,
    };
    enum Want {
        Size(usize),
        Hosts(Vec<String>),
    }
    let want = match c.arg("hosts") {
        None => Want::Size(2),
        Some(h) => match h.parse::<usize>() {
            Ok(n) => Want::Size(n),
            Err(_) => Want::Hosts(hosts::expand(h)?),
        },
    };
    let end = tokio::time::Instant::now() + limit;
    loop {
        let s = cx.node.overlay.snapshot().await?;
        let (done, missing) = match &want {
            Want::Size(n) => (s.nodes.len() >= *n, Vec::new()),
            Want::Hosts(h) => {
                let m: Vec<String> = h
                    .iter()
                    .filter(|n| !s.nodes.contains_key(*n))
                    .cloned()
                    .collect();
                (m.is_empty(), m)
            }
        };
        if done {
            return cx.one(Response::text(
                cx.me(),
                format!("{} nodes in the mesh", s.nodes.len()),
            ));
        }
        if tokio::time::Instant::now() >= end {
            let what = match &want {
                Want::Size(n) => format!("{n} nodes"),
                Want::Hosts(_) => hosts::compress(&missing),
            };
            return Err(Error::TimedOut(format!(
                "mesh wait: no {what} after {}s; the mesh has {} ({})",
                limit.as_secs_f64(),
                s.nodes.len(),
                hosts::compress(&s.nodes.keys().cloned().collect::<Vec<_>>())
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// See [`Node::settle`].
pub(super) async fn settle(node: &Node) -> Result<mm_overlay::Snapshot> {
    node.settle().await
}

async fn dial(cx: &Ctx, c: &Call) -> Out {
    let target = c.arg("hostname").unwrap_or_default();
    let s = cx.node.overlay.snapshot().await?;
    cx.node.overlay.dial(target, s.port).await?;
    cx.ok()
}

async fn hangup(cx: &Ctx, c: &Call) -> Out {
    cx.node
        .overlay
        .hangup(c.arg("hostname").unwrap_or_default())
        .await?;
    cx.ok()
}

async fn dot(cx: &Ctx, c: &Call) -> Out {
    let file = c.arg("filename").unwrap_or_default();
    let Source::Local { cwd } = &cx.src else {
        // It once replaced a node's identity key, and wrote through a
        // symlink out of the base: a node never writes a path another chose.
        return Err(Error::Refused(
            "cannot run `mesh dot` via meshage: it writes a file where the node runs; \
             run it on that node"
                .into(),
        ));
    };
    let p = PathBuf::from(file);
    let path = match cwd {
        Some(cwd) if !p.is_absolute() => cwd.join(p),
        _ => p,
    };
    let s = cx.node.overlay.snapshot().await?;
    let mut dot = String::from("graph mesh {\n\tsize=\"8,11\";\n");
    let _ = writeln!(dot, "\t\"{}\" [style=filled, color=lightblue];", s.name);
    for (name, n) in &s.nodes {
        for p in n.peers.iter().filter(|p| name < *p) {
            let _ = writeln!(dot, "\t\"{name}\" -- \"{p}\";");
        }
    }
    dot.push_str("}\n");
    std::fs::write(&path, dot)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    cx.ok()
}

async fn send(cx: &Ctx, c: &Call) -> Out {
    let refused = || Error::Refused("cannot run `mesh send` via meshage".into());
    if cx.is_remote() {
        return Err(refused());
    }
    let (sub, args) = grammar::parse(specs(), &c.sub)?;
    if sub.id == "mesh send" {
        return Err(refused());
    }
    let spec = c.arg("hosts").unwrap_or_default();
    let targets: Vec<String> = if spec == "all" {
        settle(&cx.node).await?.others()
    } else {
        hosts::expand(spec)?
    };
    if targets.is_empty() {
        return Err(Error::usage(
            "mesh send all: there are no other nodes in the mesh",
        ));
    }
    // A `file get ... wait` is waited for however long the transfer takes:
    // the timeout is for hosts that do not answer, and one that dies
    // drops its connection, which fails its row at once.
    let timeout = if sub.id == "file get" && args.has("wait") {
        cx.node.send_timeout().max(crate::NO_LIMIT)
    } else {
        cx.node.send_timeout()
    };
    let mut out = run_remote(&cx.node, targets, c.sub.clone(), None, timeout).await?;
    out.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(out)
}

/// Runs a command of the grammar on other nodes, in `namespace` (None:
/// each one's active namespace), waiting at most `timeout`; one error row
/// per host that could not answer.
pub(super) async fn run_remote(
    node: &Node,
    targets: Vec<String>,
    argv: Vec<String>,
    namespace: Option<String>,
    timeout: Duration,
) -> Result<Vec<Response>> {
    let body = mm_overlay::wire::encode(&Request::Command { argv, namespace });
    let answers = node.overlay.send(targets, body, timeout).await?;
    let mut out = Vec::new();
    for (host, result) in answers {
        match result.and_then(|b| mm_overlay::wire::decode::<Vec<Response>>(&b)) {
            // Labelled with the host that answered, whatever the answer
            // says it is from.
            Ok(rs) => out.extend(rs.into_iter().map(|r| Response {
                host: host.clone(),
                ..r
            })),
            Err(e) => out.push(Response::error(&host, e)),
        }
    }
    Ok(out)
}
