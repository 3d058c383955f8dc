//! VM networking's commands (issue 12): `vlans`, `tap`, `bridge`, `ns
//! bridge`, `vm net`, as minimega has them. `bridge` and `tap` act on this
//! node (`mesh send` and `ns run` take them elsewhere); `ns bridge` and
//! `vm net` reach the namespace's hosts with typed requests.
//!
//! A VLAN alias means one id on every node: a command that came from the
//! mesh asks the node it came from (the namespace's head) what its aliases
//! are, and that node allocates new ones.

use futures::FutureExt;

use super::grammar::Call;
use super::{Ctx, Out, Source, Spec};
use crate::net::netspec::{self, check_ifname};
use crate::net::wire::{ask_each, Ask};
use crate::net::{vlans, HostAddr, Kind};
use crate::ns::NsBridge;
use crate::proto::Response;
use crate::{Error, Result};

pub(super) static SPECS: &[Spec] = &[
    Spec {
        id: "vlans",
        patterns: &[
            "vlans",
            "vlans add <alias> <vlan>",
            "vlans <range,>",
            "vlans <range,> <min> <max>",
            "vlans <blacklist,>",
            "vlans <blacklist,> <vlan>",
        ],
        short: "show or set the VLAN aliases of the active namespace",
        long: "With no argument, lists the aliases of the active namespace (alias, vlan). An \
               alias (LAN, DMZ) gets a free id from the namespace's range when it is first \
               used, one that no namespace of this node uses; `other//LAN` names another \
               namespace's alias. add ALIAS ID sets one by hand; range shows min, max and next, \
               and range MIN MAX sets it (inclusive; default 101-4095; ranges of namespaces may \
               not overlap); blacklist shows the ids never allocated (those used by number, \
               and those given to blacklist ID). Aliases are kept by the node a namespace's \
               commands run on: a host that runs a command from it asks it, so every node \
               agrees on each id.",
        run: |cx, c| vlans_cmd(cx, c).boxed(),
    },
    Spec {
        id: "clear vlans",
        patterns: &["clear vlans [prefix]"],
        short: "forget the VLAN aliases of the active namespace",
        long: "With PREFIX, only the aliases that start with it; without, every alias, the \
               blacklist and the range.",
        run: |cx, c| clear_vlans(cx, c).boxed(),
    },
    Spec {
        id: "tap",
        patterns: &[
            "tap",
            "tap create <vlan> bridge <bridge> ip <ip> name <name>",
            "tap create <vlan> bridge <bridge> ip <ip> [name]",
            "tap create <vlan> bridge <bridge> <dhcp,> name <name>",
            "tap create <vlan> bridge <bridge> <dhcp,> [name]",
            "tap create <vlan> bridge <bridge> name <name>",
            "tap create <vlan> bridge <bridge> [name]",
            "tap create <vlan> ip <ip> name <name>",
            "tap create <vlan> ip <ip> [name]",
            "tap create <vlan> <dhcp,> name <name>",
            "tap create <vlan> <dhcp,> [name]",
            "tap create <vlan> name <name>",
            "tap create <vlan> [name]",
            "tap delete <tap>",
        ],
        short: "make, list or delete host taps: this node's own NIC on a VLAN",
        long: "tap create VLAN puts a port of this host on VLAN (an alias or an id) of \
               mega_bridge, or of BRIDGE, and prints its name (mega_tapN, or NAME); ip ADDR/LEN \
               gives it an address, dhcp asks for one. With no argument, lists the host taps \
               of the active namespace (bridge, tap, vlan). tap delete NAME, or all, removes \
               them.",
        run: |cx, c| tap(cx, c).boxed(),
    },
    Spec {
        id: "bridge",
        patterns: &[
            "bridge",
            "bridge <config,> <bridge> <setting>",
            "bridge <trunk,notrunk,notunnel> <bridge> <interface>",
            "bridge tunnel <vxlan,gre> <bridge> <remote> [key]",
            "bridge <destroy,> <bridge>",
        ],
        short: "show or change this node's Open vSwitch bridges",
        long: "With no argument, lists the bridges mm uses here: bridge, preexisting (there \
               before mm, which never deletes it), vlans (of its taps), trunks, tunnels, \
               config, datapath (system: the kernel's; netdev: userspace). A bridge is made \
               when something first needs it. config BRIDGE KEY=VALUE sets an OVS bridge \
               setting (rstp_enable=true); trunk/notrunk add or remove an untagged port that \
               carries every VLAN; tunnel vxlan|gre BRIDGE REMOTE_IP [KEY] adds a trunk port \
               to another host (a VXLAN key is at most 16777215, 24 bits), notunnel removes \
               it by its port name; destroy removes mm's ports and the bridge, unless it was \
               there before mm.",
        run: |cx, c| bridge(cx, c).boxed(),
    },
    Spec {
        id: "ns bridge",
        patterns: &["ns bridge <bridge> [vxlan,gre]"],
        short: "join a bridge across every host of the namespace with tunnels",
        long: "Makes BRIDGE on each host of the active namespace with RSTP on, and a tunnel \
               (gre by default, or vxlan) from each host to every other: a full mesh, with one \
               key for the bridge, so namespaces on other bridges stay apart. Each host is \
               reached at its address as the mesh knows it (no DNS). A host that cannot be \
               reached, or has no Open vSwitch, is an error row; the others get their tunnels. \
               Run it again after hosts join or leave: the mesh is brought up to date. Shows \
               host, endpoint and tunnels.",
        run: |cx, c| ns_bridge(cx, c).boxed(),
    },
    Spec {
        id: "ns del-bridge",
        patterns: &["ns del-bridge <bridge>"],
        short: "remove a bridge ns bridge made, on every host of the namespace",
        long: "",
        run: |cx, c| ns_del_bridge(cx, c).boxed(),
    },
    Spec {
        id: "vm net",
        patterns: &[
            "vm net connect <vm> <pos> <vlan> [bridge]",
            "vm net disconnect <vm> <pos>",
        ],
        short: "move a launched VM's NIC to another VLAN, or off its bridge",
        long: "POS counts the VM's NICs from 0. connect puts the NIC on VLAN (an alias or an \
               id) of BRIDGE (default: the one it is on); disconnect takes it off, and vm info \
               shows it [disconnected]. The NIC's tap is kept, so the guest sees its link \
               stay.",
        run: |cx, c| vm_net(cx, c).boxed(),
    },
];

/// Runs blocking bridge work (it runs programs) off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// The id a VLAN word names in the command's namespace: looked up here, or,
/// for a command that came from the mesh, by the node it came from.
pub(super) async fn vlan(cx: &Ctx, word: &str) -> Result<(u16, Option<String>)> {
    let namespace = cx.namespace();
    match &cx.src {
        Source::Mesh { from } if *from != cx.node.name => {
            let ask = Ask::Vlan {
                namespace,
                word: word.to_string(),
            };
            let mut a = ask_each(&cx.node, vec![(from.clone(), ask)], cx.node.send_timeout()).await;
            let (_, r) = a.pop().ok_or_else(|| Error::NotFound("no answer".into()))?;
            r.map_err(|e| {
                Error::NotFound(format!(
                    "VLAN {word}: {from}, where this command came from and which keeps the \
                     aliases, said: {e}"
                ))
            })
        }
        _ => cx.node.ns.lookup_vlan(&namespace, word),
    }
}

/// The netspecs of `vm config net`, their VLANs looked up.
pub(super) async fn nics(cx: &Ctx, specs: &[String]) -> Result<Vec<netspec::Nic>> {
    let mut out = Vec::new();
    // All are read before any alias is allocated: a typo allocates none.
    let parsed = specs
        .iter()
        .map(|s| netspec::parse(s))
        .collect::<Result<Vec<_>>>()?;
    for s in parsed {
        let (id, alias) = vlan(cx, &s.vlan).await?;
        out.push(netspec::Nic {
            bridge: s.bridge,
            vlan: id,
            alias,
            mac: s.mac,
            driver: s.driver,
            qinq: s.qinq,
        });
    }
    Ok(out)
}

fn refuse_remote(cx: &Ctx, what: &str, why: &str) -> Result<()> {
    if cx.is_remote() {
        return Err(Error::Refused(format!(
            "cannot run `{what}` via meshage: {why}"
        )));
    }
    Ok(())
}

async fn vlans_cmd(cx: &Ctx, c: &Call) -> Out {
    refuse_remote(
        cx,
        "vlans",
        "the aliases are kept by the node a namespace's commands run on; run it there",
    )?;
    let ns = cx.namespace();
    let me = cx.me();
    if let (Some(a), Some(v)) = (c.arg("alias"), c.arg("vlan")) {
        cx.node.ns.vlans_mut(&ns, |t| vlans::add(t, &ns, a, v))?;
        return cx.ok();
    }
    if let (Some(lo), Some(hi)) = (c.arg("min"), c.arg("max")) {
        cx.node
            .ns
            .vlans_mut(&ns, |t| vlans::set_range(t, &ns, lo, hi))?;
        return cx.ok();
    }
    let table = cx
        .node
        .ns
        .get(&ns)
        .ok_or_else(|| Error::NotFound(format!("no such namespace: {ns}")))?
        .vlans;
    if c.has("range") {
        let (lo, hi) = table.range();
        // The id a new alias gets: past those other namespaces took.
        let all = cx.node.ns.vlans_mut(&ns, |t| Ok(t.clone()))?;
        let next = vlans::next_free(&all, &ns).map_or("none".to_string(), |n| n.to_string());
        return cx.one(Response::table(
            me,
            &["min", "max", "next"],
            vec![vec![lo.to_string(), hi.to_string(), next]],
        ));
    }
    if c.has("blacklist") {
        if let Some(v) = c.arg("vlan") {
            let Some(id) = vlans::parse_id(v)? else {
                return Err(Error::Usage(format!("expected integer VLAN, not `{v}`")));
            };
            cx.node.ns.vlans_mut(&ns, |t| {
                t.entry(ns.clone()).or_default().blacklist.insert(id);
                Ok(())
            })?;
            return cx.ok();
        }
        let mut all: Vec<u16> = cx
            .node
            .ns
            .list()
            .into_iter()
            .flat_map(|(_, n)| n.vlans.blacklist)
            .collect();
        all.sort();
        all.dedup();
        let rows = all.into_iter().map(|v| vec![v.to_string()]).collect();
        return cx.one(Response::table(me, &["vlan"], rows));
    }
    let rows = table
        .aliases
        .iter()
        .map(|(a, v)| vec![a.clone(), v.to_string()])
        .collect();
    cx.one(Response::table(me, &["alias", "vlan"], rows))
}

async fn clear_vlans(cx: &Ctx, c: &Call) -> Out {
    refuse_remote(
        cx,
        "clear vlans",
        "the aliases are kept by the node a namespace's commands run on; run it there",
    )?;
    let ns = cx.namespace();
    let prefix = c.arg("prefix").map(str::to_owned);
    cx.node.ns.vlans_mut(&ns, |t| {
        vlans::clear(t.entry(ns.clone()).or_default(), prefix.as_deref());
        Ok(())
    })?;
    cx.ok()
}

/// Words a tap may not be named: they read as the rest of the command.
const RESERVED: &[&str] = &["all", "bridge", "ip", "dhcp", "name"];

async fn tap(cx: &Ctx, c: &Call) -> Out {
    let ns = cx.namespace();
    if let Some(t) = c.arg("tap") {
        let (node, t, n) = (cx.node.clone(), t.to_string(), ns.clone());
        blocking(move || node.net.delete_host_taps(&n, &t)).await?;
        return cx.ok();
    }
    let Some(word) = c.arg("vlan") else {
        let (node, n) = (cx.node.clone(), ns.clone());
        let rows = blocking(move || Ok(node.net.host_taps(&n)))
            .await?
            .into_iter()
            .map(|(b, t, v)| vec![b, t, v])
            .collect();
        return cx.one(Response::table(cx.me(), &["bridge", "tap", "vlan"], rows));
    };
    let name = c.arg("name").map(str::to_owned);
    if let Some(n) = &name {
        if RESERVED.contains(&n.as_str()) {
            return Err(Error::Usage(format!(
                "`{n}` is a reserved word -- cannot use for tap name"
            )));
        }
    }
    let bridge = c
        .arg("bridge")
        .unwrap_or(netspec::DEFAULT_BRIDGE)
        .to_string();
    check_ifname("bridge", &bridge)?;
    let addr = match (c.arg("ip"), c.has("dhcp")) {
        (Some(ip), _) => HostAddr::Ip(ip.to_string()),
        (None, true) => HostAddr::Dhcp,
        _ => HostAddr::None,
    };
    let (id, alias) = vlan(cx, word).await?;
    let node = cx.node.clone();
    let t = blocking(move || {
        node.net
            .add_host_tap(&ns, &bridge, id, alias, name.as_deref(), &addr)
    })
    .await?;
    cx.one(Response::text(cx.me(), t))
}

fn list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

async fn bridge(cx: &Ctx, c: &Call) -> Out {
    let node = cx.node.clone();
    let Some(br) = c.arg("bridge").map(str::to_owned) else {
        let rows = blocking(move || Ok(node.net.list()))
            .await?
            .into_iter()
            .map(|r| {
                vec![
                    r.name,
                    r.preexisting.to_string(),
                    list(&r.vlans),
                    list(&r.trunks),
                    list(&r.tunnels),
                    r.config,
                    r.datapath,
                ]
            })
            .collect();
        return cx.one(Response::table(
            cx.me(),
            &[
                "bridge",
                "preexisting",
                "vlans",
                "trunks",
                "tunnels",
                "config",
                "datapath",
            ],
            rows,
        ));
    };
    check_ifname("bridge", &br)?;
    let iface = c.arg("interface").map(str::to_owned).unwrap_or_default();
    if c.has("vxlan") || c.has("gre") {
        let kind = if c.has("vxlan") {
            Kind::Vxlan
        } else {
            Kind::Gre
        };
        let remote = c.arg("remote").unwrap_or_default().to_string();
        let key = match c.arg("key") {
            None => None,
            Some(k) => Some(k.parse::<u32>().map_err(|_| {
                Error::Usage(format!(
                    "tunnel key `{k}`: a whole number, at most {}",
                    kind.max_key()
                ))
            })?),
        };
        let port = blocking(move || node.net.tunnel(kind, &br, &remote, key)).await?;
        return cx.one(Response::text(cx.me(), port));
    }
    let cfg = c.arg("setting").map(str::to_owned);
    let sub = ["config", "trunk", "notrunk", "notunnel", "destroy"]
        .into_iter()
        .find(|w| c.has(w));
    blocking(move || match sub {
        Some("config") => node.net.config(&br, cfg.as_deref().unwrap_or_default()),
        Some("trunk") => node.net.trunk(&br, &iface),
        Some("notrunk") => node.net.notrunk(&br, &iface),
        Some("notunnel") => node.net.notunnel(&br, &iface),
        Some("destroy") => node.net.destroy(&br),
        _ => Err(Error::usage("bridge: which subcommand?")),
    })
    .await?;
    cx.ok()
}

fn random_key(kind: Kind) -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    (u32::from_le_bytes(b) & kind.max_key()).max(1)
}

async fn ns_bridge(cx: &Ctx, c: &Call) -> Out {
    refuse_remote(
        cx,
        "ns bridge",
        "it reaches every host of the namespace itself",
    )?;
    let (name, ns) = super::vm::current(cx)?;
    let br = c.arg("bridge").unwrap_or_default().to_string();
    check_ifname("bridge", &br)?;
    let kind = if c.has("vxlan") {
        Kind::Vxlan
    } else {
        Kind::Gre
    };
    // The same key as before, so a run after hosts change keeps the
    // tunnels that still hold.
    let key = match ns.bridges.get(&br) {
        Some(b) if b.kind == kind => b.key,
        _ => random_key(kind),
    };
    // A mesh of the other kind before: its tunnels go.
    let prune: Vec<u32> = ns
        .bridges
        .get(&br)
        .filter(|b| b.key != key)
        .map(|b| b.key)
        .into_iter()
        .collect();
    let old_key = ns.bridges.get(&br).map(|b| b.key);
    let before = ns
        .bridges
        .get(&br)
        .map(|b| b.hosts.clone())
        .unwrap_or_default();
    cx.node.ns.update(&name, |n| {
        let hosts = n.hosts.union(&before).cloned().collect();
        n.bridges.insert(br.clone(), NsBridge { kind, key, hosts });
        Ok(())
    })?;
    let t = cx.node.send_timeout();
    // Hosts that left the namespace lose the bridge.
    let left: Vec<String> = before.difference(&ns.hosts).cloned().collect();
    let mut out = del_bridge(cx, &left, &br, &name, old_key).await;
    let hosts: Vec<(String, Ask)> = ns.hosts.iter().map(|h| (h.clone(), Ask::Addrs)).collect();
    let mut ends = Vec::new();
    for (h, r) in ask_each::<Vec<String>>(&cx.node, hosts, t).await {
        match r {
            Ok(a) if !a.is_empty() => ends.push((h, a[0].clone())),
            Ok(_) => out.push(Response::error(
                &h,
                "no address a tunnel can reach it at (the mesh knows none but loopback)",
            )),
            Err(e) => out.push(Response::error(&h, e)),
        }
    }
    let plan = crate::net::mesh_plan(&ends);
    let asks = plan
        .into_iter()
        .map(|(h, remotes)| {
            (
                h,
                Ask::Mesh {
                    bridge: br.clone(),
                    kind,
                    key,
                    prune: prune.clone(),
                    remotes,
                },
            )
        })
        .collect();
    // A table per host, as from that host: the answer's leading `host`
    // column is then the tunnel's host (one table from this node named
    // the column twice, and `.columns host` could not pick the second).
    let mut tables = Vec::new();
    for (h, r) in ask_each::<Vec<String>>(&cx.node, asks, t).await {
        match r {
            Ok(ports) => {
                let ep = ends.iter().find(|(x, _)| *x == h).map(|(_, e)| e.clone());
                let row = vec![ep.unwrap_or_default(), list(&ports)];
                tables.push(Response::table(&h, &["endpoint", "tunnels"], vec![row]));
            }
            Err(e) => out.push(Response::error(&h, e)),
        }
    }
    if out.is_empty() {
        // Only hosts that failed (and will get it next time) stay on
        // the record beside the namespace's.
        cx.node.ns.update(&name, |n| {
            if let Some(b) = n.bridges.get_mut(&br) {
                b.hosts = n.hosts.clone();
            }
            Ok(())
        })?;
    }
    tables.extend(out);
    Ok(tables)
}

/// Takes namespace `ns`'s mesh (`key`) and host taps off `br` on each of
/// `hosts`, and the bridge where nothing else of mm's is on it; the hosts
/// that failed, as error rows.
pub(super) async fn del_bridge(
    cx: &Ctx,
    hosts: &[String],
    br: &str,
    ns: &str,
    key: Option<u32>,
) -> Vec<Response> {
    let asks = hosts
        .iter()
        .map(|h| {
            (
                h.clone(),
                Ask::Leave {
                    bridge: br.to_string(),
                    namespace: ns.to_string(),
                    key,
                },
            )
        })
        .collect();
    ask_each::<()>(&cx.node, asks, cx.node.send_timeout())
        .await
        .into_iter()
        .filter_map(|(h, r)| {
            r.err()
                .map(|e| Response::error(&h, format!("bridge {br} was not removed: {e}")))
        })
        .collect()
}

/// Removes the host taps of namespace `ns` on each of `hosts` (`clear
/// namespace`); the hosts that failed, as error rows.
pub(super) async fn clear_taps(cx: &Ctx, hosts: &[String], ns: &str) -> Vec<Response> {
    let asks = hosts
        .iter()
        .map(|h| {
            (
                h.clone(),
                Ask::Taps {
                    namespace: ns.to_string(),
                },
            )
        })
        .collect();
    ask_each::<usize>(&cx.node, asks, cx.node.send_timeout())
        .await
        .into_iter()
        .filter_map(|(h, r)| {
            r.err().map(|e| {
                Response::error(&h, format!("its host taps of {ns} were not removed: {e}"))
            })
        })
        .collect()
}

async fn ns_del_bridge(cx: &Ctx, c: &Call) -> Out {
    refuse_remote(
        cx,
        "ns del-bridge",
        "it reaches every host of the namespace itself",
    )?;
    let (name, ns) = super::vm::current(cx)?;
    let br = c.arg("bridge").unwrap_or_default();
    if !ns.bridges.contains_key(br) {
        return Err(Error::NotFound(format!(
            "bridge is not associated with namespace {name}: {br}"
        )));
    }
    let hosts: Vec<String> = ns.hosts.union(&ns.bridges[br].hosts).cloned().collect();
    let errors = del_bridge(cx, &hosts, br, &name, Some(ns.bridges[br].key)).await;
    cx.node.ns.update(&name, |n| {
        n.bridges.remove(br);
        Ok(())
    })?;
    if errors.is_empty() {
        return cx.ok();
    }
    Ok(errors)
}

async fn vm_net(cx: &Ctx, c: &Call) -> Out {
    let (name, ns) = super::vm::current(cx)?;
    let vm = c.arg("vm").unwrap_or_default().to_string();
    let pos = c.arg("pos").unwrap_or_default();
    let pos: usize = pos
        .parse()
        .map_err(|_| Error::Usage(format!("NIC position `{pos}`: a number from 0")))?;
    let to = match c.arg("vlan") {
        Some(w) => {
            let (id, alias) = vlan(cx, w).await?;
            let br = match c.arg("bridge") {
                Some(b) => {
                    check_ifname("bridge", b)?;
                    Some(b.to_string())
                }
                None => None,
            };
            Some((br, id, alias))
        }
        None => None,
    };
    let hosts = super::vm::reach(cx, &ns);
    let asks = hosts
        .iter()
        .map(|h| {
            (
                h.clone(),
                Ask::Connect {
                    namespace: name.clone(),
                    vm: vm.clone(),
                    pos,
                    to: to.clone(),
                },
            )
        })
        .collect();
    let mut found = false;
    let mut out = Vec::new();
    for (h, r) in ask_each::<bool>(&cx.node, asks, cx.node.send_timeout()).await {
        match r {
            Ok(here) => found |= here,
            Err(e) => out.push(Response::error(&h, e)),
        }
    }
    if !found && out.is_empty() {
        return Err(Error::NotFound(format!("no such vm: {vm}")));
    }
    if out.is_empty() {
        return cx.ok();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{grammar, specs};

    fn parse(line: &str) -> grammar::Call {
        let argv: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        grammar::parse(specs(), &argv).unwrap().1
    }

    #[test]
    fn tap_and_bridge_lines_read_as_meant() {
        let c = parse("tap create LAN dhcp");
        assert!(c.has("dhcp") && c.arg("name").is_none());
        let c = parse("tap create LAN bridge br0 ip 10.0.0.1/24 t0");
        assert_eq!(
            (c.arg("bridge"), c.arg("ip"), c.arg("name")),
            (Some("br0"), Some("10.0.0.1/24"), Some("t0"))
        );
        let c = parse("tap create LAN name t1");
        assert_eq!(c.arg("name"), Some("t1"));
        // `name NAME` after an address or dhcp too, as the docs say.
        for line in [
            "tap create LAN ip 10.0.0.2/24 name t2",
            "tap create LAN bridge br0 ip 10.0.0.2/24 name t2",
            "tap create LAN dhcp name t2",
            "tap create LAN bridge br0 dhcp name t2",
        ] {
            assert_eq!(parse(line).arg("name"), Some("t2"), "{line}");
        }
        assert!(parse("vlans blacklist").has("blacklist"));
        assert!(parse("vlans range 1 2").has("range"));
        assert!(parse("bridge notrunk br0 eth1").has("notrunk"));
        assert!(parse("bridge destroy br0").has("destroy"));
        let c = parse("bridge config br0 rstp_enable=true");
        assert!(c.has("config") && c.arg("setting") == Some("rstp_enable=true"));
        assert!(parse("ns bridge foo vxlan").has("vxlan"));
    }
}
