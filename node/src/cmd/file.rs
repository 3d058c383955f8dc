//! `file ...`: iomeshage, the files directory and transfers.

use std::fmt::Write as _;

use futures::FutureExt;

use super::grammar::Call;
use super::mesh::run_remote;
use super::{Ctx, Out, Spec};
use crate::proto::{Kind, Response};
use crate::Error;

pub(super) static SPECS: &[Spec] = &[
    Spec {
        id: "file list",
        patterns: &[
            "file list",
            "file list <recursive,>",
            "file list <mesh,> [path]",
            "file list <path> [recursive,]",
        ],
        short: "list files in the files directory",
        long: "The files directory is BASE/files (`mm serve --base BASE`; /tmp/mm by default): \
               a file put there is served to the mesh. \
               Columns: dir (<dir> for directories), name, size, modified, hash (the first 16 \
               hex digits of the whole-file BLAKE3 hash, or - until the file has been hashed; \
               files are hashed on first request). `recursive` descends into directories. \
               `file list mesh [path]` lists every node's files (recursively) in one table, \
               to see which hosts hold what; list a file named `mesh` as `./mesh`.",
        run: |cx, c| list(cx, c).boxed(),
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
        run: |cx, c| get(cx, c).boxed(),
    },
    Spec {
        id: "file status",
        patterns: &["file status [all,wide]", "file status <all,> <wide,>"],
        short: "show transfers in progress",
        long: "Columns: filename, completed (chunks), queued, bytes, rate (over the last \
               second; from 0.2 s in, over what came so far), sources (host:chunks served, \
               with bad chunks, failing and dropped sources marked), eta, and state \
               (pulling, queued, stalled, or waiting for holders with the next retry). \
               `wide` adds minimega's tempdir column, the partial file's full path. `all` \
               also shows the last transfers that ended, with state done (its rate the \
               mean over the pull), cancelled or failed: WHY, and a last column, ended \
               (how long ago; - while it goes on).",
        run: |cx, c| status(cx, c).boxed(),
    },
    Spec {
        id: "file served",
        patterns: &["file served"],
        short: "show what this node has sent to others",
        long: "Columns: filename, chunks and bytes sent since the node started, and pullers \
               (how many nodes they went to). When many nodes get one file at once, its \
               holder sends each chunk about once; this is where to see it.",
        run: |cx, _| served(cx).boxed(),
    },
    Spec {
        id: "file delete",
        patterns: &["file delete <name>"],
        short: "delete local files, and cancel their transfers",
        long: "NAME is a file, a directory (deleted with everything under it) or a glob. A \
               transfer in progress for a matching name is cancelled and its partial data \
               removed.",
        run: |cx, c| delete(cx, c).boxed(),
    },
];

async fn list(cx: &Ctx, c: &Call) -> Out {
    let node = &cx.node;
    let mesh = c.has("mesh");
    if mesh && cx.is_remote() {
        // A node answers for itself only, so rows are labelled with the host
        // that sent them; the node that asks can ask everyone itself.
        return Err(Error::Refused(
            "cannot run `file list mesh` via meshage; run it here".into(),
        ));
    }
    let path = c.arg("path").unwrap_or("").to_string();
    let recursive = c.has("recursive") || mesh;
    let header = &["dir", "name", "size", "modified", "hash"];
    let mine = match node.files.list(&path, recursive).await {
        Ok(rows) => Response::table(cx.me(), header, rows),
        Err(e) if mesh => Response::failure(cx.me(), &e),
        Err(e) => return Err(e),
    };
    if !mesh {
        return cx.one(mine);
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
        out.extend(run_remote(node, others, argv, None, node.send_timeout()).await?);
    }
    // Which hosts hold it is the question: one without it is no error,
    // unless none has it.
    let before = out.len();
    out.retain(|r| r.kind != Some(Kind::NotHere));
    if out.is_empty() && before > 0 {
        return Err(Error::NotFound(format!("{path}: not on any node")));
    }
    Ok(out)
}

async fn get(cx: &Ctx, c: &Call) -> Out {
    let engine = &cx.node.files.engine;
    let name = c.arg("name").unwrap_or_default();
    let sel = mm_store::Select {
        from: c.arg("host").map(str::to_owned),
        hash: c.arg("hash").map(str::to_owned),
    };
    if let Some(h) = &sel.hash {
        if h.is_empty() || !h.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Error::Usage(format!(
                "hash {h:?}: a hash is hex digits (a prefix of one that `file list` or a \
                 conflict shows)"
            )));
        }
    }
    if let Some(h) = &sel.from {
        if *h == cx.node.name {
            return Err(Error::Usage(format!("{h} is this node")));
        }
        // A node far along a line may not have heard of it yet.
        let mut s = super::mesh::settle(&cx.node).await?;
        if !s.nodes.contains_key(h) && !s.settled {
            s = cx.node.settled_view().await?;
        }
        if !s.nodes.contains_key(h) {
            return Err(mm_overlay::Error::NoSuchHost(h.clone()).into());
        }
    }
    let pending = cx.node.get_file(name, &sel).await?;
    if pending.is_empty() {
        return cx.one(Response::text(cx.me(), format!("{name}: already here")));
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
        engine.wait(pending).await?;
        return cx.one(Response::text(
            cx.me(),
            format!("fetched {}", all.join(", ")),
        ));
    }
    let mut text = Vec::new();
    if !queued.is_empty() {
        text.push(format!("queued {}", queued.join(", ")));
    }
    if !coming.is_empty() {
        text.push(format!("already coming {}", coming.join(", ")));
    }
    cx.one(Response::text(cx.me(), text.join("; ")))
}

async fn status(cx: &Ctx, c: &Call) -> Out {
    // The partial file's path is half the width of a row, and rarely what
    // an operator looks for: only `wide` shows it.
    let wide = c.has("wide");
    let all = c.has("all");
    // Repeated pulls of one file leave rows alike but for when they ended.
    let now = std::time::SystemTime::now();
    let rows = cx
        .node
        .files
        .engine
        .status(all)
        .into_iter()
        .map(|s| {
            let mut row = vec![s.name.clone()];
            if wide {
                row.push(s.tempdir.clone());
            }
            row.extend([
                s.completed(),
                s.queued.to_string(),
                s.bytes(),
                s.rate(),
                s.sources_label(),
                s.eta(),
                s.phase.clone(),
            ]);
            if all {
                row.push(s.ended.map_or_else(
                    || "-".to_string(),
                    |t| {
                        let secs = now.duration_since(t).map_or(0, |d| d.as_secs());
                        format!("{} ago", crate::stats::duration(secs))
                    },
                ));
            }
            row
        })
        .collect();
    let mut header = vec!["filename"];
    if wide {
        header.push("tempdir");
    }
    header.extend([
        "completed",
        "queued",
        "bytes",
        "rate",
        "sources",
        "eta",
        "state",
    ]);
    if all {
        header.push("ended");
    }
    cx.one(Response::table(cx.me(), &header, rows))
}

async fn served(cx: &Ctx) -> Out {
    let rows = cx
        .node
        .files
        .engine
        .sent()
        .into_iter()
        .map(|(name, s)| {
            vec![
                name,
                s.chunks.to_string(),
                mm_store::fmt::human(s.bytes as f64),
                s.to.len().to_string(),
            ]
        })
        .collect();
    cx.one(Response::table(
        cx.me(),
        &["filename", "chunks", "bytes", "pullers"],
        rows,
    ))
}

async fn delete(cx: &Ctx, c: &Call) -> Out {
    let name = c.arg("name").unwrap_or_default();
    let (cancelled, deleted) = cx.node.files.delete(name).await?;
    if cancelled.is_empty() && deleted.is_empty() {
        return Err(Error::NotFound(format!("{name}: no such file")));
    }
    let mut text = String::new();
    if !cancelled.is_empty() {
        let _ = writeln!(text, "cancelled {}", cancelled.join(", "));
    }
    if !deleted.is_empty() {
        let _ = writeln!(text, "deleted {}", deleted.join(", "));
    }
    cx.one(Response::text(cx.me(), text.trim_end()))
}
