//! What a namespace's head node asks of its hosts about VMs, as typed
//! requests (never as commands: a host's VMs are launched by the head's
//! scheduler, not by whatever a `mesh send` says), and how a host answers.
//! Requests travel inside `proto::Request::Vm` as CBOR, and so do answers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mm_overlay::wire::encode;
use serde::{Deserialize, Serialize};

use super::{Commit, Config, Op, Target};
use crate::proto::Request;
use crate::{Node, Result};

/// One request; each variant says what it answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Ask {
    /// Launch these, BUILDING (answer: the `Vec<Vm>` launched).
    Launch {
        namespace: String,
        vms: Vec<(String, Config)>,
        /// The head's files directory: the VMs' files under it are
        /// fetched into this host's before they launch. None from a head
        /// of an older build.
        #[serde(default)]
        files: Option<String>,
    },
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

/// A host as the scheduler needs it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Load {
    pub(crate) cpus: u64,
    pub(crate) mem_mib: u64,
    pub(crate) commit: Commit,
}

/// Most VMs one launch request may carry: a bound on what a peer makes
/// this node start.
pub(crate) const MAX_BATCH: usize = 10_000;

/// Answers `ask` on this node. VM work blocks on processes and sockets,
/// so it runs off the async threads.
pub(crate) async fn answer(node: &Arc<Node>, mut ask: Ask) -> Result<Vec<u8>> {
    if let Ask::Launch {
        vms,
        files: Some(head),
        ..
    } = &mut ask
    {
        if vms.len() <= MAX_BATCH {
            localize(node, Path::new(head.as_str()), vms).await?;
        }
    }
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        let vms = &node.vms;
        Ok(match ask {
            Ask::Launch {
                namespace, vms: b, ..
            } => {
                if b.len() > MAX_BATCH {
                    return Err(crate::Error::Refused(format!(
                        "a launch of {} VMs: at most {MAX_BATCH} at once",
                        b.len()
                    )));
                }
                crate::ns::check_name(&namespace)?;
                encode(&vms.launch(&namespace, &b)?)
            }
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
                })
            }
        })
    })
    .await?
}

/// minimega's `GetFiles`: each of the VMs' files that lies in the head's
/// files directory `head` comes from the mesh into this node's, as a
/// `file:` word does (with its qcow2 backing chain), and the VMs take
/// the local path. So an image named on the head reaches every host,
/// whatever their base directories; a path elsewhere is left as it is
/// (the hosts are expected to share it). Nothing launches unless every
/// file came.
async fn localize(node: &Arc<Node>, head: &Path, vms: &mut [(String, Config)]) -> Result<()> {
    let mut here: HashMap<String, String> = HashMap::new();
    for (vm, c) in vms.iter_mut() {
        for path in [&mut c.disk, &mut c.cdrom, &mut c.kernel, &mut c.initrd]
            .into_iter()
            .flatten()
        {
            let Some(name) = Path::new(path.as_str())
                .strip_prefix(head)
                .ok()
                .and_then(|r| r.to_str())
                .filter(|r| {
                    !r.is_empty()
                        && !mm_store::files::has_magic(r)
                        && !r.split('/').any(|c| c == "..")
                })
                .map(str::to_string)
            else {
                continue;
            };
            let local = match here.get(&name) {
                Some(l) => l.clone(),
                None => {
                    let l = crate::resolve::file(node, &name).await.map_err(|e| {
                        crate::Error::NotFound(format!(
                            "{vm}: {name} (from the head's {path}): {e}"
                        ))
                    })?;
                    here.insert(name, l.clone());
                    l
                }
            };
            *path = local;
        }
    }
    Ok(())
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
        |a| answer(node, a),
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
