//! Every command: its grammar entry and its handler. [`execute`] is the
//! only way a command runs, whatever its source.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::grammar::{self, Call, Spec};
use crate::proto::{Request, Response};
use crate::{hosts, stats, Node, Source};
use mm_store::FilesDir;

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
    Spec {
        id: "file list",
        patterns: &[
            "file list",
            "file list <recursive,>",
            "file list <mesh,> [path]",
            "file list <path> [recursive,]",
        ],
        short: "list files in the files directory",
        long: "Columns: dir (<dir> for directories), name, size, modified, hash (the first 16 \
               hex digits of the whole-file BLAKE3 hash, or - until the file has been hashed; \
               files are hashed on first request). `recursive` descends into directories. \
               `file list mesh [path]` lists every node's files (recursively) in one table, \
               to see which hosts hold what; list a file named `mesh` as `./mesh`.",
    },
    Spec {
        id: "file get",
        patterns: &[
            "file get <name> [wait,]",
            "file get <name> from <host> [wait,]",
            "file get <name> hash <hash> [wait,]",
        ],
        short: "fetch a file, glob or directory from every node that holds it",
        long: "Finds NAME on every node, then pulls it in verified 256 KiB chunks from all \
               holders at once, and returns at once (see `file status`); with `wait`, returns \
               when done (`mm file get NAME wait` shows a progress bar on a terminal). A glob \
               or directory fetches every file under it. Modes are preserved; a file already \
               here with the same content is not fetched again. When holders have different \
               files under one name, nothing is fetched and the versions are listed: choose one \
               with `hash H` (a prefix of its hash) or `from HOST`.",
    },
    Spec {
        id: "file status",
        patterns: &["file status"],
        short: "show transfers in progress",
        long: "Columns: filename, tempdir, completed (chunks), queued, bytes, rate, sources \
               (host:chunks served, with bad chunks and dropped sources marked), eta, and \
               state (pulling, queued, or waiting for holders with the next retry).",
    },
    Spec {
        id: "file delete",
        patterns: &["file delete <name>"],
        short: "delete local files, and cancel their transfers",
        long: "NAME is a file, a directory (deleted with everything under it) or a glob. A \
               transfer in progress for a matching name is cancelled and its partial data \
               removed.",
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
                    .ok()
                    .filter(|d| *d <= mm_overlay::MAX_DEGREE)
                    .ok_or_else(|| {
                        format!(
                            "degree must be a whole number from 0 to {}, not '{d}'",
                            mm_overlay::MAX_DEGREE
                        )
                    })?;
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
                let max = 7 * 24 * 3600;
                let d = t
                    .parse::<f64>()
                    .ok()
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .filter(|d| d.as_secs() <= max)
                    .ok_or_else(|| {
                        format!("timeout must be a number of seconds from 0 to {max}, not '{t}'")
                    })?;
                node.set_timeout(d)?;
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
            let path = local_path(node, src, file)?;
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
        "file list" => file_list(node, c).await,
        "file get" => {
            let name = c.arg("name").unwrap_or_default();
            let sel = mm_store::Select {
                from: c.arg("host").map(str::to_owned),
                hash: c.arg("hash").map(str::to_owned),
            };
            let pending = node.engine.get(name, &sel).await?;
            if pending.is_empty() {
                return one(Response::text(me, format!("{name}: already here")));
            }
            let names = |queued: bool| -> Vec<String> {
                pending
                    .iter()
                    .filter(|p| p.queued == queued)
                    .map(|p| p.name.clone())
                    .collect()
            };
            let (queued, coming) = (names(true), names(false));
            if c.has("wait") {
                let mut all = queued;
                all.extend(coming);
                node.engine.wait(pending).await?;
                return one(Response::text(me, format!("fetched {}", all.join(", "))));
            }
            let mut text = Vec::new();
            if !queued.is_empty() {
                text.push(format!("queued {}", queued.join(", ")));
            }
            if !coming.is_empty() {
                text.push(format!("already coming {}", coming.join(", ")));
            }
            one(Response::text(me, text.join("; ")))
        }
        "file status" => {
            let rows = node
                .engine
                .status()
                .into_iter()
                .map(|s| {
                    vec![
                        s.name,
                        s.tempdir,
                        s.completed,
                        s.queued.to_string(),
                        s.bytes,
                        s.rate,
                        s.sources,
                        s.eta,
                        s.phase,
                    ]
                })
                .collect();
            one(Response::table(
                me,
                &[
                    "filename",
                    "tempdir",
                    "completed",
                    "queued",
                    "bytes",
                    "rate",
                    "sources",
                    "eta",
                    "state",
                ],
                rows,
            ))
        }
        "file delete" => {
            let name = c.arg("name").unwrap_or_default();
            let cancelled = node.engine.cancel(name).await;
            let local = node.local.clone();
            let n = name.to_string();
            let deleted = tokio::task::spawn_blocking(move || delete_local(&local, &n))
                .await
                .map_err(|e| e.to_string())??;
            if cancelled.is_empty() && deleted.is_empty() {
                return Err(format!("{name}: no such file"));
            }
            let mut text = String::new();
            if !cancelled.is_empty() {
                let _ = writeln!(text, "cancelled {}", cancelled.join(", "));
            }
            if !deleted.is_empty() {
                let _ = writeln!(text, "deleted {}", deleted.join(", "));
            }
            one(Response::text(me, text.trim_end()))
        }
        other => Err(format!("command {other} has no handler")),
    }
}

/// A path named in a command. From the local CLI: as the user wrote it,
/// relative to their directory. From another node: only inside this node's
/// base directory, so no node can write anywhere on another.
fn local_path(node: &Node, src: &Source, file: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(file);
    match src {
        Source::Local { cwd } => Ok(match cwd {
            Some(cwd) if !p.is_absolute() => cwd.join(p),
            _ => p,
        }),
        Source::Mesh { .. } => {
            if p.is_absolute() || p.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(format!(
                    "{file}: from another node, a path must stay inside the base directory"
                ));
            }
            Ok(node.base.join(p))
        }
    }
}

fn delete_local(local: &mm_store::Local, name: &str) -> Result<Vec<String>, String> {
    let files = &local.files;
    let clean = mm_store::FilesDir::clean(name)?;
    if clean.is_empty() {
        return Err("refusing to delete the whole files directory; name what to delete".into());
    }
    let mut deleted = Vec::new();
    if !mm_store::files::has_magic(&clean) {
        let path = files.resolve(&clean)?;
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if m.is_dir() {
                for f in files.expand(&clean)? {
                    local.forget(&f);
                }
                std::fs::remove_dir_all(&path).map_err(|e| format!("{clean}: {e}"))?;
            } else {
                std::fs::remove_file(&path).map_err(|e| format!("{clean}: {e}"))?;
                local.forget(&clean);
            }
            deleted.push(clean);
        }
        return Ok(deleted);
    }
    for f in files.expand(&clean)? {
        let path = files.resolve(&f)?;
        std::fs::remove_file(&path).map_err(|e| format!("{f}: {e}"))?;
        local.forget(&f);
        deleted.push(f);
    }
    Ok(deleted)
}

async fn file_list(node: &Arc<Node>, c: &Call) -> Result<Vec<Response>, String> {
    let mesh = c.has("mesh");
    let path = c.arg("path").unwrap_or("").to_string();
    let recursive = c.has("recursive") || mesh;
    let local = node.local.clone();
    let p = path.clone();
    let rows = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<String>>, String> {
        let entries = local.files.list(&p, recursive)?;
        Ok(entries
            .into_iter()
            .map(|e| {
                let hash = if e.is_dir {
                    String::new()
                } else {
                    local
                        .cached(&e.name)
                        .map(|m| m.root_hex()[..16].to_string())
                        .unwrap_or_else(|| "-".into())
                };
                vec![
                    if e.is_dir {
                        "<dir>".into()
                    } else {
                        String::new()
                    },
                    e.name,
                    e.size.to_string(),
                    mm_store::transfer::fmt_time(e.modified),
                    hash,
                ]
            })
            .collect())
    })
    .await
    .map_err(|e| e.to_string())?;
    let header = &["dir", "name", "size", "modified", "hash"];
    let mine = match rows {
        Ok(rows) => Response::table(&node.name, header, rows),
        Err(e) if mesh => Response::error(&node.name, e),
        Err(e) => return Err(e),
    };
    if !mesh {
        return Ok(vec![mine]);
    }
    // Every other node's listing of the same path, in the same table.
    let others = node.overlay.snapshot().await?.others();
    let mut out = vec![mine];
    if !others.is_empty() {
        let mut argv = vec!["file".to_string(), "list".into()];
        if !path.is_empty() {
            argv.push(path.clone());
        }
        argv.push("recursive".into());
        out.extend(run_remote(node, others, argv, node.send_timeout()).await?);
    }
    // Which hosts hold it is the question: one without it is no error,
    // unless none has it.
    let before = out.len();
    out.retain(|r| !FilesDir::is_not_here(&r.error));
    if out.is_empty() && before > 0 {
        return Err(format!("{path}: not on any node"));
    }
    Ok(out)
}

/// Runs a command of the grammar on other nodes, waiting at most
/// `timeout`; one error row per host that could not answer.
async fn run_remote(
    node: &Node,
    targets: Vec<String>,
    argv: Vec<String>,
    timeout: Duration,
) -> Result<Vec<Response>, String> {
    let body = mm_overlay::wire::encode(&Request::Command { argv });
    let answers = node.overlay.send(targets, body, timeout).await?;
    let mut out = Vec::new();
    for (host, result) in answers {
        match result.and_then(|b| mm_overlay::wire::decode::<Vec<Response>>(&b)) {
            Ok(rs) => out.extend(rs),
            Err(e) => out.push(Response::error(&host, e)),
        }
    }
    Ok(out)
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
    let targets: Vec<String> = if spec == "all" {
        node.overlay.snapshot().await?.others()
    } else {
        hosts::expand(spec)?
    };
    if targets.is_empty() {
        return Err("mesh send all: there are no other nodes in the mesh".into());
    }
    // A `file get ... wait` is waited for however long the transfer takes:
    // the timeout is for hosts that do not answer, and one that dies
    // drops its connection, which fails its row at once.
    let timeout = if sub.id == "file get" && sub.has("wait") {
        node.send_timeout().max(crate::NO_LIMIT)
    } else {
        node.send_timeout()
    };
    let mut out = run_remote(node, targets, c.sub.clone(), timeout).await?;
    out.sort_by(|a, b| a.host.cmp(&b.host));
    Ok(out)
}
