//! What other nodes ask of this one about networking, as typed requests
//! inside `proto::Request::Net` (CBOR, as the answers): `ns bridge` from a
//! namespace's head, a VLAN alias from a host that runs a command the head
//! sent, a VM's NIC moved by `vm net`.

use std::sync::Arc;
use std::time::Duration;

use mm_overlay::wire::encode;
use serde::{Deserialize, Serialize};

use super::Kind;
use crate::proto::Request;
use crate::{Error, Node, Result};

/// Most remote endpoints one `Mesh` may carry: a bound on the ports a peer
/// makes this node create.
pub(crate) const MAX_REMOTES: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Ask {
    /// The addresses a tunnel may reach this node at (answer:
    /// `Vec<String>`, best first); an error if its OVS is not there.
    Addrs,
    /// `ns bridge` here: the bridge, RSTP on, one tunnel to each remote
    /// (answer: `Vec<String>`, its tunnel ports).
    Mesh {
        bridge: String,
        kind: Kind,
        key: u32,
        /// Earlier keys of this mesh, whose tunnels go.
        prune: Vec<u32>,
        remotes: Vec<String>,
    },
    /// `ns del-bridge` here: the mesh's tunnels and the namespace's host
    /// taps on the bridge go, and the bridge unless another's ports are on
    /// it (answer: `()`; a bridge that is not here is no error).
    Leave {
        bridge: String,
        namespace: String,
        key: Option<u32>,
    },
    /// The id of a VLAN word in a namespace, asked of the node a command
    /// came from, so that every node agrees on an alias (answer: `(u16,
    /// Option<String>)`).
    Vlan { namespace: String, word: String },
    /// `clear namespace`: remove the namespace's host taps here (answer:
    /// `usize`, how many).
    Taps { namespace: String },
    /// `vm net connect|disconnect` (answer: `bool`, whether the VM is
    /// here).
    Connect {
        namespace: String,
        vm: String,
        pos: usize,
        /// (bridge, None: the one it is on; vlan; alias).
        to: Option<(Option<String>, u16, Option<String>)>,
    },
}

/// Answers `ask` on this node.
pub(crate) async fn answer(node: &Arc<Node>, ask: Ask) -> Result<Vec<u8>> {
    if let Ask::Addrs = ask {
        // A host whose OVS is not there gets no tunnels, nor do the
        // others to it: it fails here, before the mesh is planned.
        let n = node.clone();
        let taps = tokio::task::spawn_blocking(move || {
            n.net.check()?;
            Ok::<_, Error>(n.net.tap_ips())
        })
        .await??;
        return Ok(encode(&addrs(node, &taps).await?));
    }
    let node = node.clone();
    // Bridges and taps are made by running programs: off the async threads.
    tokio::task::spawn_blocking(move || {
        Ok(match ask {
            Ask::Addrs => unreachable!("answered above"),
            Ask::Mesh {
                bridge,
                kind,
                key,
                prune,
                remotes,
            } => {
                if remotes.len() > MAX_REMOTES {
                    return Err(Error::Refused(format!(
                        "a tunnel mesh of {} hosts: at most {MAX_REMOTES}",
                        remotes.len()
                    )));
                }
                super::netspec::check_ifname("bridge", &bridge)?;
                if key > kind.max_key() || prune.len() > 16 {
                    return Err(Error::Refused("a malformed tunnel mesh".into()));
                }
                encode(&node.net.join_mesh(&bridge, kind, key, &prune, &remotes)?)
            }
            Ask::Leave {
                bridge,
                namespace,
                key,
            } => encode(&node.net.leave(&bridge, &namespace, key)?),
            Ask::Taps { namespace } => encode(&node.net.delete_host_taps(&namespace, "all")?),
            Ask::Vlan { namespace, word } => encode(&node.ns.lookup_vlan(&namespace, &word)?),
            Ask::Connect {
                namespace,
                vm,
                pos,
                to,
            } => {
                if let Some((b, vlan, _)) = &to {
                    if let Some(b) = b {
                        super::netspec::check_ifname("bridge", b)?;
                    }
                    if !(1..=4095).contains(vlan) {
                        return Err(Error::Usage(format!("invalid VLAN {vlan}: from 1 to 4095")));
                    }
                }
                encode(&node.vms.connect(&node.net, &namespace, &vm, pos, to)?)
            }
        })
    })
    .await?
}

/// This node's addresses as the overlay announces them, but loopback,
/// link-local and those of its own host taps (a tunnel must not ride on
/// the network it carries): IPv4 first.
async fn addrs(node: &Arc<Node>, taps: &[String]) -> Result<Vec<String>> {
    let s = node.overlay.snapshot().await?;
    let mine = s
        .nodes
        .get(&s.name)
        .map(|n| n.addrs.clone())
        .unwrap_or_default();
    let mut ips: Vec<std::net::IpAddr> = Vec::new();
    for a in mine.iter().chain(s.listen.iter()) {
        let Some(ip) = crate::files::data::ip_of(a) else {
            continue;
        };
        let link_local = match ip {
            std::net::IpAddr::V4(v) => v.is_link_local(),
            std::net::IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80,
        };
        if ip.is_loopback() || ip.is_unspecified() || link_local {
            continue;
        }
        if taps.contains(&ip.to_string()) || ips.contains(&ip) {
            continue;
        }
        ips.push(ip);
    }
    ips.sort_by_key(|ip| ip.is_ipv6());
    Ok(ips.into_iter().map(|ip| ip.to_string()).collect())
}

/// Asks each host its own question, all at once, this node directly.
pub(crate) async fn ask_each<T: serde::de::DeserializeOwned>(
    node: &Arc<Node>,
    asks: Vec<(String, Ask)>,
    timeout: Duration,
) -> Vec<(String, Result<T>)> {
    crate::inbound::ask_many(
        node,
        asks,
        |ask| Request::Net { ask },
        |a| answer(node, a),
        timeout,
    )
    .await
}
