//! VM networking on this node (issue 12): Open vSwitch bridges, the taps of
//! VMs and of the host on them with their VLAN tags, trunks and tunnels,
//! all through [`os::Os`] (the real `ovs-vsctl` and `ip`, or a recording
//! fake). What mm made is kept in sled until it is removed, so a node that
//! stops removes its taps and the bridges it created (never one that was
//! there before it), and one that was killed removes them at its restart.
//!
//! The datapath is the kernel's (`system`) where it works, else OVS's
//! userspace one (`netdev`), which keeps the same semantics: per-port tags,
//! trunks, tunnels that carry 802.1Q, RSTP. `mm serve --ovs-datapath`
//! overrides the detection.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use mm_store::Meta;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

mod mesh;
pub(crate) mod netspec;
pub(crate) mod os;
pub(crate) mod snoop;
mod taps;
pub(crate) mod vlans;
pub(crate) mod wire;

use netspec::{check_ifname, Nic};
use os::Os;

pub(crate) use mesh::mesh_plan;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Datapath {
    System,
    Netdev,
}

impl Datapath {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Datapath::System => "system",
            Datapath::Netdev => "netdev",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Datapath> {
        match s {
            "system" => Ok(Datapath::System),
            "netdev" => Ok(Datapath::Netdev),
            _ => Err(Error::Usage(format!(
                "--ovs-datapath {s}: system (the kernel's) or netdev (userspace)"
            ))),
        }
    }
}

/// A tunnel's encapsulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    Vxlan,
    Gre,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Vxlan => "vxlan",
            Kind::Gre => "gre",
        }
    }

    /// The largest key: a VXLAN network id has 24 bits (minimega
    /// truncates a larger key on the sending side only, and nothing
    /// passes), a GRE key 32.
    pub(crate) fn max_key(self) -> u32 {
        match self {
            Kind::Vxlan => 0xff_ffff,
            Kind::Gre => u32::MAX,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tunnel {
    pub(crate) kind: Kind,
    pub(crate) remote: String,
    pub(crate) key: Option<u32>,
}

/// A bridge mm uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Bridge {
    /// It was there before mm: mm never deletes it.
    pub(crate) preexisting: bool,
    pub(crate) trunks: BTreeSet<String>,
    /// By port name.
    pub(crate) tunnels: BTreeMap<String, Tunnel>,
    /// `bridge config` settings.
    pub(crate) config: BTreeMap<String, String>,
    /// On a bridge that was there before mm: each setting mm changed, as
    /// it was (None: unset), put back when mm is done with the bridge.
    #[serde(default)]
    pub(crate) before: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Owner {
    /// A VM's NIC: a kernel tap that QEMU holds.
    Vm { namespace: String, id: u64 },
    /// `tap create`: a tap that OVS holds, the host's own NIC on a VLAN.
    Host { namespace: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Tap {
    pub(crate) bridge: String,
    /// None: disconnected (`vm net disconnect`).
    pub(crate) vlan: Option<u16>,
    pub(crate) alias: Option<String>,
    pub(crate) qinq: bool,
    pub(crate) owner: Owner,
    /// A host tap's address, if it was given one.
    #[serde(default)]
    pub(crate) ip: Option<String>,
    /// A dhclient runs for it.
    #[serde(default)]
    pub(crate) dhcp: bool,
}

/// A host tap's address.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum HostAddr {
    None,
    Ip(String),
    Dhcp,
}

const TREE: &str = "net";

/// What the tree keeps, by `bridge:NAME` and `tap:NAME`.
#[derive(Serialize, Deserialize)]
enum Record {
    Bridge(Bridge),
    Tap(Tap),
}

#[derive(Default)]
struct State {
    bridges: BTreeMap<String, Bridge>,
    taps: BTreeMap<String, Tap>,
    /// The N of the next `mega_tapN`: VM taps, host taps and tunnel ports
    /// share it, as in minimega.
    next: u64,
}

/// This node's bridges and taps.
pub(crate) struct Net {
    os: Arc<dyn Os>,
    meta: Meta,
    /// `--ovs-datapath`; else found out at first use.
    want: Option<Datapath>,
    datapath: Mutex<Option<Datapath>>,
    st: Mutex<State>,
    /// The IPs VMs were seen with on the bridges.
    snoop: snoop::Snooper,
}

/// The bridge a probe makes to learn whether the kernel datapath works.
const PROBE: &str = "mm-probe";

/// Most bridges mm uses on a node: each costs OVS a bridge and this node
/// a reader thread, and other nodes can ask for them.
const MAX_BRIDGES: usize = 256;

const SNOOP_FLOWS: [&str; 3] = [
    "dl_type=0x0806,actions=local,normal",
    "dl_type=0x86dd,nw_proto=58,icmp_type=135,actions=local,normal",
    "dl_type=0x86dd,nw_proto=58,icmp_type=136,actions=local,normal",
];

/// The bridge settings `bridge config` takes (and `other_config:KEY`).
const CONFIG_KEYS: &[&str] = &[
    "rstp_enable",
    "stp_enable",
    "mcast_snooping_enable",
    "fail_mode",
    "protocols",
];

impl Net {
    /// Removes what a node that was killed left (its records in `meta`);
    /// what cannot be removed now (OVS is down) stays recorded for the
    /// next start.
    pub(crate) fn open(os: Arc<dyn Os>, meta: Meta, want: Option<Datapath>) -> Net {
        let net = Net {
            os,
            meta,
            want,
            datapath: Mutex::new(None),
            st: Mutex::new(State::default()),
            snoop: snoop::Snooper::default(),
        };
        let mut left = State::default();
        for (k, r) in net.meta.all::<Record>(TREE) {
            match (r, k.split_once(':')) {
                (Record::Tap(t), Some((_, n))) => {
                    left.taps.insert(n.to_string(), t);
                }
                (Record::Bridge(b), Some((_, n))) => {
                    left.bridges.insert(n.to_string(), b);
                }
                _ => {}
            }
        }
        if !left.taps.is_empty() || !left.bridges.is_empty() {
            tracing::warn!(
                "removing {} taps and the ports and bridges of {} bridges left by a node that \
                 did not stop cleanly",
                left.taps.len(),
                left.bridges.len()
            );
            *net.state() = left;
            net.stop();
        }
        net
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn save_bridge(&self, name: &str, b: Option<&Bridge>) {
        self.save("bridge", name, b.map(|b| Record::Bridge(b.clone())));
    }

    fn save_tap(&self, name: &str, t: Option<&Tap>) {
        self.save("tap", name, t.map(|t| Record::Tap(t.clone())));
    }

    /// Keeps `what:name` (None: forgets it); a failure is only logged, as
    /// the record only serves the cleanup after a crash.
    fn save(&self, what: &str, name: &str, r: Option<Record>) {
        let k = format!("{what}:{name}");
        let done = match r {
            Some(r) => self.meta.put(TREE, &k, &r),
            None => self.meta.remove(TREE, &k),
        };
        if let Err(e) = done {
            tracing::warn!("cannot keep {what} {name} in the database: {e}");
        }
    }

    /// Whether OVS answers here (and which datapath it has): a host
    /// whose OVS is down gets no tunnels, nor do the others to it.
    pub(crate) fn check(&self) -> Result<()> {
        self.os
            .vsctl(&["get", "Open_vSwitch", ".", "ovs_version"])?;
        self.datapath().map(|_| ())
    }

    /// The datapath new bridges get.
    pub(crate) fn datapath(&self) -> Result<Datapath> {
        if let Some(d) = self.want {
            return Ok(d);
        }
        let mut dp = self.datapath.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(d) = *dp {
            return Ok(d);
        }
        // A kernel bridge that OVS could not set up still "succeeds"
        // (the error is on stderr, which os::Real makes an error) and
        // makes no device.
        let made = self.os.vsctl(&[
            "--may-exist",
            "add-br",
            PROBE,
            "--",
            "set",
            "bridge",
            PROBE,
            "datapath_type=system",
        ]);
        let d = match made {
            Ok(_) if self.os.has_dev(PROBE) => Some(Datapath::System),
            Ok(_) | Err(Error::Net(_)) => Some(Datapath::Netdev),
            Err(_) => None,
        };
        // On every path: a probe that timed out may still be recorded.
        let _ = self.os.vsctl(&["--if-exists", "del-br", PROBE]);
        let Some(d) = d else {
            return made.map(|_| Datapath::Netdev);
        };
        tracing::info!("Open vSwitch datapath: {}", d.as_str());
        *dp = Some(d);
        Ok(d)
    }

    /// Makes `name` if it is missing; one that exists is used as it is
    /// (and marked preexisting).
    fn ensure_bridge(&self, st: &mut State, name: &str) -> Result<()> {
        if st.bridges.contains_key(name) {
            return Ok(());
        }
        check_ifname("bridge", name)?;
        if st.taps.contains_key(name) {
            return Err(Error::Usage(format!("{name} is a tap, not a bridge")));
        }
        if st.bridges.len() >= MAX_BRIDGES {
            return Err(Error::Refused(format!(
                "mm already uses {MAX_BRIDGES} bridges here; bridge destroy some first"
            )));
        }
        let preexisting = match self.os.vsctl(&["br-exists", name]) {
            Ok(_) => true,
            Err(Error::Net(_)) => false,
            Err(e) => return Err(e),
        };
        if !preexisting {
            let dp = format!("datapath_type={}", self.datapath()?.as_str());
            if let Err(e) = self
                .os
                .vsctl(&["add-br", name, "--", "set", "bridge", name, &dp])
            {
                let _ = self.os.vsctl(&["--if-exists", "del-br", name]);
                return Err(Error::Net(format!("cannot create bridge {name}: {e}")));
            }
            if let Err(e) = self.os.ip(&["link", "set", name, "up"]) {
                let _ = self.os.vsctl(&["--if-exists", "del-br", name]);
                return Err(Error::Net(format!("cannot bring bridge {name} up: {e}")));
            }
        }
        let b = Bridge {
            preexisting,
            ..Bridge::default()
        };
        self.save_bridge(name, Some(&b));
        st.bridges.insert(name.to_string(), b);
        self.snoop_on(name, preexisting);
        Ok(())
    }

    /// As minimega: every ARP frame and neighbour solicitation or
    /// advertisement is copied to the bridge's own port (it gets only
    /// flooded ones otherwise), where the snooper reads them; but only on
    /// a bridge mm made (another's flows are its owner's). Without them
    /// `vm info` shows fewer IPs; nothing else depends on it.
    fn snoop_on(&self, bridge: &str, preexisting: bool) {
        let flows: &[&str] = if preexisting { &[] } else { &SNOOP_FLOWS };
        for flow in flows {
            if let Err(e) = self.os.ofctl("add-flow", bridge, flow) {
                // Not fatal: only vm info's IPs depend on it.
                tracing::warn!("bridge {bridge}: vm info shows fewer IPs: {e}");
                break;
            }
        }
        if self.os.packets() {
            self.snoop.watch(bridge);
        }
    }

    /// The addresses `mac` was seen with: (IPv4, IPv6), empty if none.
    pub(crate) fn seen(&self, mac: &str) -> (String, String) {
        let s = self.snoop.seen(mac);
        (
            s.ip.map(|i| i.to_string()).unwrap_or_default(),
            s.ip6.map(|i| i.to_string()).unwrap_or_default(),
        )
    }

    fn with_bridge<T>(
        &self,
        bridge: &str,
        f: impl FnOnce(&mut State, &mut Bridge) -> Result<T>,
    ) -> Result<T> {
        let mut st = self.state();
        self.ensure_bridge(&mut st, bridge)?;
        let mut b = st.bridges.get(bridge).cloned().unwrap_or_default();
        let out = f(&mut st, &mut b);
        self.save_bridge(bridge, Some(&b));
        st.bridges.insert(bridge.to_string(), b);
        out
    }

    /// `bridge trunk BR IFACE`: an untagged port, which carries every VLAN.
    pub(crate) fn trunk(&self, bridge: &str, iface: &str) -> Result<()> {
        check_ifname("interface", iface)?;
        self.with_bridge(bridge, |st, b| {
            if b.trunks.contains(iface) {
                return Err(Error::Usage(format!("bridge already trunking to {iface}")));
            }
            if st.taps.contains_key(iface) {
                return Err(Error::Usage(format!("{iface} is one of mm's taps")));
            }
            self.vsctl_port(bridge, iface, &["add-port", bridge, iface])?;
            b.trunks.insert(iface.to_string());
            Ok(())
        })
    }

    pub(crate) fn notrunk(&self, bridge: &str, iface: &str) -> Result<()> {
        self.existing(bridge)?;
        self.with_bridge(bridge, |_, b| {
            if !b.trunks.contains(iface) {
                return Err(Error::NotFound(format!("unknown trunk: {iface}")));
            }
            self.os.vsctl(&["--if-exists", "del-port", bridge, iface])?;
            b.trunks.remove(iface);
            Ok(())
        })
    }

    /// `bridge tunnel vxlan|gre BR REMOTE [KEY]`: a trunk port to another
    /// host; its name.
    pub(crate) fn tunnel(
        &self,
        kind: Kind,
        bridge: &str,
        remote: &str,
        key: Option<u32>,
    ) -> Result<String> {
        let ip: std::net::IpAddr = remote
            .parse()
            .map_err(|_| Error::Usage(format!("`{remote}` is not an IP address")))?;
        if let Some(k) = key {
            if k > kind.max_key() {
                return Err(Error::Usage(format!(
                    "a {} key is at most {} ({} bits); {k} is larger",
                    kind.as_str(),
                    kind.max_key(),
                    if kind == Kind::Vxlan { 24 } else { 32 }
                )));
            }
        }
        self.with_bridge(bridge, |st, b| {
            let port = self.fresh(st);
            let ty = format!("type={}", kind.as_str());
            let rip = format!("options:remote_ip={ip}");
            let k = key.map(|k| format!("options:key={k}"));
            let mut args = vec![
                "add-port",
                bridge,
                &port,
                "--",
                "set",
                "interface",
                &port,
                &ty,
                &rip,
            ];
            args.extend(k.as_deref());
            if let Err(e) = self.vsctl_port(bridge, &port, &args) {
                return Err(Error::Net(format!(
                    "this node's Open vSwitch ({} datapath) cannot make a {} tunnel: {e}",
                    self.datapath().map(|d| d.as_str()).unwrap_or("unknown"),
                    kind.as_str()
                )));
            }
            b.tunnels.insert(
                port.clone(),
                Tunnel {
                    kind,
                    remote: ip.to_string(),
                    key,
                },
            );
            Ok(port)
        })
    }

    pub(crate) fn notunnel(&self, bridge: &str, port: &str) -> Result<()> {
        self.existing(bridge)?;
        self.with_bridge(bridge, |_, b| {
            if !b.tunnels.contains_key(port) {
                return Err(Error::NotFound(format!("unknown tunnel: {port}")));
            }
            self.os.vsctl(&["--if-exists", "del-port", bridge, port])?;
            b.tunnels.remove(port);
            if b.config.get("rstp_enable").is_some_and(|v| v == "true") {
                // OVS's RSTP keeps a root port that was deleted ("unknown
                // root port") and then forwards nothing over the rest;
                // turned off and on, it starts over (two transactions).
                self.os
                    .vsctl(&["set", "bridge", bridge, "rstp_enable=false"])?;
                self.os
                    .vsctl(&["set", "bridge", bridge, "rstp_enable=true"])?;
            }
            Ok(())
        })
    }

    /// `bridge config BR KEY=VALUE`.
    pub(crate) fn config(&self, bridge: &str, kv: &str) -> Result<()> {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(Error::Usage(format!("expected key=value, not `{kv}`")));
        };
        let other = k.strip_prefix("other_config:").is_some_and(|o| {
            !o.is_empty()
                && o.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        });
        if !(CONFIG_KEYS.contains(&k) || other) {
            return Err(Error::Usage(format!(
                "bridge config takes {} or other_config:KEY, not {k}",
                CONFIG_KEYS.join(", ")
            )));
        }
        let val_ok = !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c));
        if !val_ok {
            return Err(Error::Usage(format!(
                "bridge config {k}: `{v}` is not a plain value"
            )));
        }
        self.with_bridge(bridge, |_, b| {
            if b.preexisting && !b.before.contains_key(k) {
                let was = self
                    .os
                    .vsctl(&["get", "bridge", bridge, k])
                    .ok()
                    .map(|v| v.trim().trim_matches('"').to_string())
                    .filter(|v| !v.is_empty() && v != "[]");
                b.before.insert(k.to_string(), was);
            }
            self.os.vsctl(&["set", "bridge", bridge, kv])?;
            b.config.insert(k.to_string(), v.to_string());
            Ok(())
        })
    }

    fn existing(&self, bridge: &str) -> Result<()> {
        if self.state().bridges.contains_key(bridge) {
            Ok(())
        } else {
            Err(Error::NotFound(format!(
                "bridge not found: {bridge} (mm has not used it)"
            )))
        }
    }

    /// `bridge destroy BR`: mm's ports on it go, and the bridge unless it
    /// was there before mm. A VM's NIC on it is left disconnected.
    pub(crate) fn destroy(&self, bridge: &str) -> Result<()> {
        let mut st = self.state();
        let Some(b) = st.bridges.get(bridge).cloned() else {
            return Err(Error::NotFound(format!(
                "bridge not found: {bridge} (mm has not used it)"
            )));
        };
        self.tear_down(&mut st, bridge, &b)
    }

    fn tear_down(&self, st: &mut State, bridge: &str, b: &Bridge) -> Result<()> {
        self.snoop.unwatch(bridge);
        let on: Vec<String> = st
            .taps
            .iter()
            .filter(|(_, t)| t.bridge == bridge)
            .map(|(n, _)| n.clone())
            .collect();
        for n in on {
            let vm = matches!(st.taps[&n].owner, Owner::Vm { .. });
            if vm && st.taps[&n].vlan.is_some() {
                let _ = self.os.vsctl(&["--if-exists", "del-port", bridge, &n]);
                if let Some(t) = st.taps.get_mut(&n) {
                    t.vlan = None;
                    let t = t.clone();
                    self.save_tap(&n, Some(&t));
                }
            } else if !vm {
                self.remove_tap(st, &n);
            }
        }
        if b.preexisting {
            for p in b.trunks.iter().chain(b.tunnels.keys()) {
                self.os.vsctl(&["--if-exists", "del-port", bridge, p])?;
            }
            // Its settings as they were before mm.
            for (k, was) in &b.before {
                let kv = was.as_ref().map(|v| format!("{k}={v}"));
                let r = match (&kv, k.split_once(':')) {
                    (Some(kv), _) => self.os.vsctl(&["set", "bridge", bridge, kv]),
                    (None, Some((col, key))) => {
                        self.os.vsctl(&["remove", "bridge", bridge, col, key])
                    }
                    (None, None) => self.os.vsctl(&["clear", "bridge", bridge, k]),
                };
                if let Err(e) = r {
                    tracing::warn!("bridge {bridge}: cannot put {k} back: {e}");
                }
            }
        } else {
            self.os.vsctl(&["--if-exists", "del-br", bridge])?;
        }
        st.bridges.remove(bridge);
        self.save_bridge(bridge, None);
        Ok(())
    }

    /// `bridge`: every bridge mm uses.
    pub(crate) fn list(&self) -> Vec<BridgeRow> {
        let st = self.state();
        st.bridges
            .iter()
            .map(|(name, b)| {
                let mut vlans: Vec<(u16, String)> = st
                    .taps
                    .values()
                    .filter(|t| t.bridge == *name)
                    .filter_map(|t| Some((t.vlan?, Nic::show_vlan(t.alias.as_deref(), t.vlan))))
                    .collect();
                vlans.sort();
                vlans.dedup();
                let datapath = if b.preexisting {
                    self.os
                        .vsctl(&["get", "bridge", name, "datapath_type"])
                        .map(|d| match d.trim().trim_matches('"') {
                            "" => "system".to_string(),
                            d => d.to_string(),
                        })
                        .unwrap_or_else(|_| "unknown".into())
                } else {
                    self.datapath()
                        .map(|d| d.as_str().to_string())
                        .unwrap_or_else(|_| "unknown".into())
                };
                BridgeRow {
                    name: name.clone(),
                    preexisting: b.preexisting,
                    vlans: vlans.into_iter().map(|(_, s)| s).collect(),
                    trunks: b.trunks.iter().cloned().collect(),
                    tunnels: b.tunnels.keys().cloned().collect(),
                    config: serde_json::to_string(&b.config).unwrap_or_default(),
                    datapath,
                }
            })
            .collect()
    }

    /// On the node's way down (and at a start after a crash): every tap
    /// goes, every bridge mm created, mm's ports on the others.
    pub(crate) fn stop(&self) {
        let mut st = self.state();
        let taps: Vec<String> = st.taps.keys().cloned().collect();
        for t in taps {
            self.remove_tap(&mut st, &t);
        }
        let bridges: Vec<(String, Bridge)> = st
            .bridges
            .iter()
            .map(|(n, b)| (n.clone(), b.clone()))
            .collect();
        for (n, b) in bridges {
            if let Err(e) = self.tear_down(&mut st, &n, &b) {
                tracing::warn!("cannot remove bridge {n}: {e}; it is removed at the next start");
                // Kept recorded for the next start.
                self.save_bridge(&n, Some(&b));
            }
        }
    }
}

/// One row of `bridge`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BridgeRow {
    pub(crate) name: String,
    pub(crate) preexisting: bool,
    pub(crate) vlans: Vec<String>,
    pub(crate) trunks: Vec<String>,
    pub(crate) tunnels: Vec<String>,
    pub(crate) config: String,
    pub(crate) datapath: String,
}

/// A node's networking over the recording fake, for tests; the fake, and
/// the database's directory (kept while they are used).
#[cfg(test)]
pub(crate) fn fake() -> (Arc<Net>, Arc<os::Fake>, tempfile::TempDir) {
    let (dir, meta) = crate::vm::temp_meta();
    let os = Arc::new(os::Fake::default());
    let net = Arc::new(Net::open(os.clone(), meta, Some(Datapath::Netdev)));
    (net, os, dir)
}

#[cfg(test)]
mod tests;
