//! What a namespace's head node asks of its hosts about VMs, as typed
//! requests (never as commands: a host's VMs are launched by the head's
//! scheduler, not by whatever a `mesh send` says), and how a host answers.
//! Requests travel inside `proto::Request::Vm` as CBOR, and so do answers.

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
pub(crate) async fn answer(node: &Arc<Node>, ask: Ask) -> Result<Vec<u8>> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        let vms = &node.vms;
        Ok(match ask {
            Ask::Launch { namespace, vms: b } => {
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
