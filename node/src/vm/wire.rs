//! What a namespace's head node asks of its hosts about VMs, as typed
//! requests (never as commands: a host's VMs are launched by the head's
//! scheduler, not by whatever a `mesh send` says), and how a host answers.
//! Requests travel inside `proto::Request::Vm` as CBOR, and so do answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mm_overlay::wire::encode;
use serde::{Deserialize, Serialize};

use super::{Commit, Config, Op, Target};
use crate::proto::Request;
use crate::{Node, Result};
use mm_store::transfer::Status;

/// One request; each variant says what it answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Ask {
    /// Launch these, BUILDING (answer: the `Vec<Vm>` launched).
    Launch {
        namespace: String,
        vms: Vec<(String, Config)>,
        /// Paths the VMs name, as the head has them, with the name in the
        /// files directory that [`Ask::Fetch`] brought here: QEMU opens
        /// this host's copy. Empty from a head that predates fetching.
        #[serde(default)]
        files: Vec<(String, String)>,
    },
    /// Fetch these files (a name in the files directory and the hash of
    /// the head's version; the head lists an image's backing files as
    /// files of their own) before a launch that names them (answer: `()`).
    Fetch { files: Vec<(String, String)> },
    /// The VMs of a namespace here (answer: `Vec<Vm>`).
    Info { namespace: String },
    /// Start, stop or kill (answer: `vm::Acted`).
    Act {
        namespace: String,
        op: Op,
        target: Target,
    },
    /// Forget the ended VMs (answer: how many, `usize`).
    Flush { namespace: String },
    /// Kill and forget every VM of a namespace (answer: `usize`).
    Clear { namespace: String },
    /// What this host has and its VMs commit (answer: [`Load`]).
    Load,
    /// How many VMs each namespace has here (answer: `BTreeMap<String,
    /// usize>`).
    Counts,
}

/// The VM config a host reads: 1 since `disks`, `cpu`, `machine` and
/// `qemu-append`. A host from before answers none (0), and would launch
/// without what it does not know, a VM's disks among it.
pub(crate) const CONFIG_FORMAT: u32 = 1;

/// A host as the scheduler needs it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Load {
    pub(crate) cpus: u64,
    pub(crate) mem_mib: u64,
    pub(crate) commit: Commit,
    /// [`CONFIG_FORMAT`] as the host has it.
    #[serde(default)]
    pub(crate) format: u32,
}

/// Most VMs one launch request may carry: a bound on what a peer makes
/// this node start.
pub(crate) const MAX_BATCH: usize = 10_000;

/// Answers `ask` on this node. VM work blocks on processes and sockets,
/// so it runs off the async threads.
/// `remote`: the ask came from another node.
pub(crate) async fn answer(node: &Arc<Node>, ask: Ask, remote: bool) -> Result<Vec<u8>> {
    if let Ask::Fetch { files } = ask {
        fetch(node, files).await?;
        return Ok(encode(&()));
    }
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        let vms = &node.vms;
        Ok(match ask {
            Ask::Launch {
                namespace,
                vms: b,
                files,
            } => {
                if b.len() > MAX_BATCH || files.len() > MAX_FETCH {
                    return Err(crate::Error::Refused(format!(
                        "a launch of {} VMs naming {} files: at most {MAX_BATCH} and {MAX_FETCH}",
                        b.len(),
                        files.len()
                    )));
                }
                crate::ns::check_name(&namespace)?;
                // QEMU's own arguments can run programs (a netdev's
                // script) and write files: another node's only by the
                // operator's leave, as for `shell`.
                if remote && !node.allow_shell {
                    if let Some((n, _)) = b.iter().find(|(_, c)| !c.qemu_append.is_empty()) {
                        return Err(crate::Error::Refused(format!(
                            "{n}: vm config qemu-append from another node runs only on a host \
                             started with --allow-shell (it gives QEMU any argument)"
                        )));
                    }
                }
                let here = node.files.local.files.clone();
                let mut local = HashMap::new();
                for (path, name) in files {
                    let p = here.resolve(&name)?;
                    if !p.is_file() {
                        return Err(crate::Error::NotFound(format!(
                            "{name} (the head's {path}) is not here: it was not fetched"
                        )));
                    }
                    local.insert(path, p.display().to_string());
                }
                encode(&vms.launch_with(&namespace, &b, &local)?)
            }
            Ask::Fetch { .. } => unreachable!("answered above"),
            Ask::Info { namespace } => {
                let mut all = vms.info(&namespace);
                for nic in all.iter_mut().flat_map(|v| v.nics.iter_mut()) {
                    (nic.ip, nic.ip6) = node.net.seen(&nic.mac);
                    // Where its tap is now (a bridge destroyed under it
                    // left it disconnected).
                    if let Some((b, vlan, alias)) = node.net.tap_state(&nic.tap) {
                        (nic.bridge, nic.vlan, nic.alias) = (b, vlan, alias);
                    }
                }
                encode(&all)
            }
            Ask::Act {
                namespace,
                op,
                target,
            } => encode(&vms.act(&namespace, op, &target)),
            Ask::Flush { namespace } => encode(&vms.flush(&namespace)),
            Ask::Counts => encode(&vms.counts()),
            Ask::Clear { namespace } => encode(&vms.clear(&namespace)),
            Ask::Load => {
                let (cpus, mem_mib) = crate::stats::capacity();
                encode(&Load {
                    cpus,
                    mem_mib,
                    commit: vms.commit(),
                    format: CONFIG_FORMAT,
                })
            }
        })
    })
    .await?
}

/// Most files one launch may have a host fetch: a bound on what a peer
/// makes this node pull.
pub(crate) const MAX_FETCH: usize = 256;

/// How long a file may go without a byte before a fetch for a launch
/// gives up on it (its transfer goes on).
const STUCK: Duration = Duration::from_secs(60);

/// minimega's `GetFiles`: the head's version of each file (by its hash;
/// the head lists an image's backing files too), into this node's files
/// directory, all at once; every failure is reported, not just the first.
/// When none of them has moved for [`STUCK`] (holders gone, or queued
/// behind stalled transfers), the fetch fails naming each file not here
/// yet, so a launch never waits on holders that went away; the transfers
/// go on.
async fn fetch(node: &Arc<Node>, files: Vec<(String, String)>) -> Result<()> {
    if files.len() > MAX_FETCH {
        return Err(crate::Error::Refused(format!(
            "a fetch of {} files: at most {MAX_FETCH} at once",
            files.len()
        )));
    }
    let mut failed: Vec<String> = Vec::new();
    let mut coming = Vec::new();
    for (name, hash) in &files {
        // One file each: a glob (or a directory) would have this node
        // pull whatever it matches, and the guard, which watches the
        // names as given, would never see it stuck.
        if mm_store::files::has_magic(name) {
            failed.push(format!("{name}: not one file's name"));
            continue;
        }
        let sel = mm_store::Select {
            hash: Some(hash.clone()),
            from: None,
        };
        match node.get_file(name, &sel).await {
            Ok(p) => coming.push((name.clone(), p)),
            // The engine's advice (`file delete` it) could take the disk
            // of a VM running here: say where, and when.
            Err(crate::Error::Store(mm_store::Error::Exists(_))) => failed.push(format!(
                "{name}: the copy here differs from the head's; once no VM here uses it, \
                 delete it (mesh send {me} file delete {name}) and launch again",
                me = node.name
            )),
            Err(e) => failed.push(naming(name, e)),
        }
    }
    let engine = &node.files.engine;
    // The transfers' own names: those the guard finds in `file status`.
    let names: Vec<String> = coming
        .iter()
        .flat_map(|(_, p)| p.iter().map(|t| t.name.clone()))
        .collect();
    let all = futures::future::join_all(
        coming
            .into_iter()
            .map(|(name, p)| async move { (name, engine.wait(p).await) }),
    );
    tokio::pin!(all);
    let mut watch = Watch::new(std::time::Instant::now());
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let waited = loop {
        tokio::select! {
            biased;
            done = &mut all => break Some(done),
            _ = tick.tick() => {
                let rows = engine.status(false);
                if let Some(stuck) = watch.stuck(&rows, &names, std::time::Instant::now()) {
                    failed.push(stuck);
                    break None;
                }
            }
        }
    };
    for (name, r) in waited.into_iter().flatten() {
        if let Err(e) = r {
            failed.push(naming(&name, e));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::NotFound(failed.join("; ")))
    }
}

/// Whether a fetch's files still come: [`STUCK`] without a byte of any of
/// them (or, while one of them waits for a transfer slot, of any transfer
/// here) is stuck. A transfer reading back what it had counts as moving.
struct Watch {
    seen: HashMap<String, u64>,
    moved: std::time::Instant,
}

impl Watch {
    fn new(now: std::time::Instant) -> Watch {
        Watch {
            seen: HashMap::new(),
            moved: now,
        }
    }

    /// Given `file status`'s rows now, why the files `ours` are stuck,
    /// naming each not here yet; None while they come (or are all here).
    fn stuck(
        &mut self,
        rows: &[Status],
        ours: &[String],
        now: std::time::Instant,
    ) -> Option<String> {
        let mine = |s: &&Status| ours.contains(&s.name);
        let queued = rows.iter().filter(mine).any(|s| s.queued);
        for s in rows {
            let was = self.seen.insert(s.name.clone(), s.bytes_done);
            let counts = queued || ours.contains(&s.name);
            let verifying = s.phase.starts_with("verifying");
            if counts && (verifying || was.is_none_or(|b| b < s.bytes_done)) {
                self.moved = now;
            }
        }
        let left: Vec<String> = rows
            .iter()
            .filter(mine)
            .map(|s| {
                format!(
                    "{} ({}, {}/{} chunks)",
                    s.name, s.phase, s.chunks_done, s.chunks
                )
            })
            .collect();
        (!left.is_empty() && now.duration_since(self.moved) >= STUCK).then(|| {
            format!(
                "none of them moved for {}s: {} (see file status; the transfers go on)",
                STUCK.as_secs(),
                left.join(", ")
            )
        })
    }
}

/// `e`, with the file's name in front unless it names it already.
fn naming(name: &str, e: impl std::fmt::Display) -> String {
    let e = e.to_string();
    if e.contains(name) {
        e
    } else {
        format!("{name}: {e}")
    }
}

/// Asks each host its own question, all at once, this node directly;
/// one answer per host, decoded, or why there is none.
pub(crate) async fn ask_each<T: serde::de::DeserializeOwned>(
    node: &Arc<Node>,
    asks: Vec<(String, Ask)>,
    timeout: Duration,
) -> Vec<(String, Result<T>)> {
    crate::inbound::ask_many(
        node,
        asks,
        |ask| Request::Vm { ask },
        |a| answer(node, a, false),
        timeout,
    )
    .await
}

/// [`ask_each`] with the same question for every host.
pub(crate) async fn ask_all<T: serde::de::DeserializeOwned>(
    node: &Arc<Node>,
    hosts: impl IntoIterator<Item = String>,
    ask: Ask,
    timeout: Duration,
) -> Vec<(String, Result<T>)> {
    let asks = hosts.into_iter().map(|h| (h, ask.clone())).collect();
    ask_each(node, asks, timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn row(name: &str, bytes: u64, phase: &str, queued: bool) -> Status {
        Status {
            name: name.into(),
            tempdir: String::new(),
            chunks_done: (bytes >> 18) as usize,
            chunks: 40,
            queued,
            bytes_done: bytes,
            size: 40 << 18,
            rate: 0.0,
            sources: Vec::new(),
            resumed: 0,
            eta_secs: None,
            phase: phase.into(),
            ended: None,
        }
    }

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    /// A fetch is stuck only when nothing of it moves for a minute: a
    /// file done early does not count against it, a slow one that moves
    /// keeps it going, and one queued behind moving transfers waits.
    /// A host from before the config format answers none: 0, which the
    /// head refuses to launch on.
    #[test]
    fn an_older_hosts_load_says_format_0() {
        #[derive(Serialize)]
        struct Old {
            cpus: u64,
            mem_mib: u64,
            commit: Commit,
        }
        let old = Old {
            cpus: 2,
            mem_mib: 1024,
            commit: Commit::default(),
        };
        let l: Load = mm_overlay::wire::decode(&encode(&old)).unwrap();
        assert_eq!((l.cpus, l.format), (2, 0));
        const { assert!(CONFIG_FORMAT > 0) };
    }

    #[test]
    fn a_fetch_is_stuck_only_when_none_of_it_moves_for_a_minute() {
        let ours = vec!["kernel".to_string(), "disk".to_string()];
        let t0 = Instant::now();
        let mut w = Watch::new(t0);
        // The kernel comes at once and leaves the table; the disk moves.
        assert!(w
            .stuck(
                &[
                    row("kernel", 0, "pulling", false),
                    row("disk", 0, "pulling", false)
                ],
                &ours,
                at(t0, 0)
            )
            .is_none());
        for s in 1..100 {
            assert!(w
                .stuck(
                    &[row("disk", s << 20, "pulling", false)],
                    &ours,
                    at(t0, 2 * s)
                )
                .is_none());
        }
        // Then the disk stops: stuck a minute later, and says where it is.
        let still = [row(
            "disk",
            99 << 20,
            "waiting for holders (retry in 8s)",
            false,
        )];
        assert!(w.stuck(&still, &ours, at(t0, 200)).is_none());
        let why = w.stuck(&still, &ours, at(t0, 258)).unwrap();
        assert!(why.contains("disk (waiting for holders"), "{why}");
        assert!(!why.contains("kernel"), "{why}");
        // All here: never stuck.
        assert!(w.stuck(&[], &ours, at(t0, 999)).is_none());

        // Queued behind another transfer that moves: waits; behind one
        // that does not, stuck.
        let mut w = Watch::new(t0);
        for s in 0..50 {
            let rows = [
                row("other", s << 20, "pulling", false),
                row("disk", 0, "pulling", true),
            ];
            assert!(w.stuck(&rows, &ours, at(t0, 2 * s)).is_none());
        }
        let rows = [
            row("other", 49 << 20, "pulling", false),
            row("disk", 0, "pulling", true),
        ];
        assert!(w.stuck(&rows, &ours, at(t0, 159)).is_some());

        // Another that moves does not keep a stalled one of ours going.
        let mut w = Watch::new(t0);
        for s in 0..40 {
            let rows = [
                row("other", s << 20, "pulling", false),
                row("disk", 5, "pulling", false),
            ];
            let r = w.stuck(&rows, &ours, at(t0, 2 * s));
            assert_eq!(r.is_some(), 2 * s >= 60, "at {}s", 2 * s);
        }

        // Reading back a resumed file counts as moving.
        let mut w = Watch::new(t0);
        for s in 0..50 {
            let rows = [row("disk", 7, "verifying partial data", false)];
            assert!(w.stuck(&rows, &ours, at(t0, 2 * s)).is_none());
        }
    }
}
