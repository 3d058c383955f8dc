//! `shell`, `background`, `clear background`: host commands (issue 11).
//! From the local control socket (root's, mode 0600) they always run;
//! from other nodes only when this node was started with --allow-shell.

use futures::FutureExt;

use super::grammar::Call;
use super::{Ctx, Out, Spec};
use crate::proto::Response;
use crate::{shell, stats, Error, Result};

pub(super) static SPECS: &[Spec] = &[
    Spec {
        id: "shell",
        patterns: &["shell <command>..."],
        short: "run a host command and show its output",
        long: "Runs the program directly (not through sh: quote a pipeline as `shell sh -c \
               '...'`) and waits for it. Its output is the answer (at most 512 KiB each of \
               stdout and stderr); a program that fails is an error line with its exit status \
               and stderr. Words like file:NAME become local paths first, so `mesh send all \
               shell md5sum file:images/big` has each node fetch the file and sum its own copy. \
               Through mesh send or ns run, a node runs it only if started with \
               --allow-shell.",
        run: |cx, c| run_shell(cx, c).boxed(),
    },
    Spec {
        id: "background",
        patterns: &["background", "background <command>..."],
        short: "start a host command and return at once, or list them",
        long: "With a command, starts it (output discarded) and answers its id and pid. \
               Alone, lists this node's background processes: id, pid, state (running, or \
               how it exited), started, command. `clear background [id]` kills one, or all. \
               Through mesh send or ns run, only with --allow-shell, as for shell.",
        run: |cx, c| run_background(cx, c).boxed(),
    },
    Spec {
        id: "clear background",
        patterns: &["clear background [id]"],
        short: "kill a background process, or all of them, and forget it",
        long: "",
        run: |cx, c| clear_background(cx, c).boxed(),
    },
];

/// Another node may run host commands here only if the operator said so.
fn allowed(cx: &Ctx, what: &str) -> Result<()> {
    if cx.is_remote() && !cx.node.allow_shell {
        return Err(Error::Refused(format!(
            "cannot run `{what}` via meshage: this node was not started with --allow-shell"
        )));
    }
    Ok(())
}

async fn run_shell(cx: &Ctx, c: &Call) -> Out {
    allowed(cx, "shell")?;
    let argv = c.lists.get("command").cloned().unwrap_or_default();
    let r = shell::run(&argv).await?;
    match r.code {
        Some(0) => {
            let mut text = r.stdout;
            text.push_str(&r.stderr);
            cx.one(Response::text(cx.me(), text))
        }
        code => {
            let how = code.map_or("killed by a signal".to_string(), |c| {
                format!("exit status {c}")
            });
            let said = if r.stderr.trim().is_empty() {
                r.stdout
            } else {
                r.stderr
            };
            Err(Error::Refused(format!(
                "{} failed ({how}): {}",
                argv[0],
                said.trim_end()
            )))
        }
    }
}

async fn run_background(cx: &Ctx, c: &Call) -> Out {
    allowed(cx, "background")?;
    let Some(argv) = c.lists.get("command") else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let rows = cx
            .node
            .background
            .list()
            .into_iter()
            .map(|p| {
                vec![
                    p.id.to_string(),
                    p.pid.to_string(),
                    p.state,
                    format!("{} ago", stats::duration(now.saturating_sub(p.started))),
                    p.command,
                ]
            })
            .collect();
        return cx.one(Response::table(
            cx.me(),
            &["id", "pid", "state", "started", "command"],
            rows,
        ));
    };
    let (id, pid) = cx.node.background.start(argv)?;
    cx.one(Response::text(cx.me(), format!("started {id} (pid {pid})")))
}

async fn clear_background(cx: &Ctx, c: &Call) -> Out {
    allowed(cx, "clear background")?;
    let id = match c.arg("id") {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            Error::Usage(format!(
                "clear background: `{s}` is not an id (see background)"
            ))
        })?),
    };
    cx.node.background.clear(id)?;
    cx.ok()
}
