//! Taps on this node's bridges: a VM's NIC (a kernel tap that QEMU holds)
//! and the host's own (a tap that OVS holds), their tags and moves.

use super::*;

impl Net {
    pub(super) fn fresh(&self, st: &mut State) -> String {
        loop {
            let n = format!("mega_tap{}", st.next);
            st.next += 1;
            let taken = st.taps.contains_key(&n)
                || st.bridges.values().any(|b| b.tunnels.contains_key(&n))
                || self.os.has_dev(&n)
                || self.port_exists(&n).unwrap_or(false);
            if !taken {
                return n;
            }
        }
    }

    /// Adds port `port` to `bridge` with `vlan`'s tag; checks that OVS could
    /// open it.
    pub(super) fn add_port(
        &self,
        bridge: &str,
        port: &str,
        vlan: u16,
        qinq: bool,
        host: bool,
    ) -> Result<()> {
        let tag = format!("tag={vlan}");
        let mut args = vec!["add-port", bridge, port, &tag];
        if qinq {
            // The VM's own tags are kept inside this one.
            args.extend(["--", "set", "port", port, "vlan_mode=dot1q-tunnel"]);
        }
        if host {
            // A tap OVS holds, not an "internal" port: OVS leaves internal
            // ports out of RSTP, and with RSTP on (ns bridge) a port
            // outside it gets no flooded frames, so no ARP requests.
            args.extend(["--", "set", "interface", port, "type=tap"]);
        }
        self.vsctl_port(bridge, port, &args)
    }

    /// An `ovs-vsctl` that adds `port`: one that OVS could not set up is
    /// still recorded in its database (the exit code is 0), so it is
    /// taken out again.
    pub(super) fn vsctl_port(&self, bridge: &str, port: &str, args: &[&str]) -> Result<()> {
        // A port that exists is someone's: refused, and never rolled back.
        if self.port_exists(port)? {
            return Err(Error::Usage(format!(
                "a port named {port} already exists in Open vSwitch"
            )));
        }
        if let Err(e) = self.os.vsctl(args) {
            let _ = self.os.vsctl(&["--if-exists", "del-port", bridge, port]);
            return Err(e);
        }
        Ok(())
    }

    /// Whether OVS has a port of this name, on any bridge.
    pub(super) fn port_exists(&self, port: &str) -> Result<bool> {
        match self.os.vsctl(&["port-to-br", port]) {
            Ok(_) => Ok(true),
            Err(Error::Net(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A VM's NIC: a tap on its bridge with its VLAN's tag; its name.
    pub(crate) fn add_vm_tap(&self, namespace: &str, id: u64, nic: &Nic) -> Result<String> {
        let mut st = self.state();
        self.ensure_bridge(&mut st, &nic.bridge)?;
        let t = self.fresh(&mut st);
        self.os.ip(&["tuntap", "add", "mode", "tap", &t])?;
        let up = self
            .os
            .ip(&["link", "set", &t, "up"])
            .and_then(|_| self.add_port(&nic.bridge, &t, nic.vlan, nic.qinq, false));
        if let Err(e) = up {
            let _ = self.os.ip(&["link", "del", &t]);
            return Err(e);
        }
        let tap = Tap {
            bridge: nic.bridge.clone(),
            vlan: Some(nic.vlan),
            alias: nic.alias.clone(),
            qinq: nic.qinq,
            owner: Owner::Vm {
                namespace: namespace.to_string(),
                id,
            },
            ip: None,
            dhcp: false,
        };
        self.save_tap(&t, Some(&tap));
        st.taps.insert(t.clone(), tap);
        Ok(t)
    }

    /// `tap create`: the host's own port on `bridge`, VLAN `vlan`; its
    /// name.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn add_host_tap(
        &self,
        namespace: &str,
        bridge: &str,
        vlan: u16,
        alias: Option<String>,
        name: Option<&str>,
        addr: &HostAddr,
    ) -> Result<String> {
        let mut st = self.state();
        if let Some(n) = name {
            check_ifname("tap", n)?;
            if n == "all" {
                return Err(Error::usage(
                    "`all` is a reserved word -- cannot use for tap name",
                ));
            }
            if st.taps.contains_key(n) || st.bridges.contains_key(n) || self.os.has_dev(n) {
                return Err(Error::Usage(format!("a device named {n} already exists")));
            }
        }
        let ip = match addr {
            HostAddr::Ip(a) => Some(check_cidr(a)?),
            _ => None,
        };
        self.ensure_bridge(&mut st, bridge)?;
        let t = match name {
            Some(n) => n.to_string(),
            None => self.fresh(&mut st),
        };
        self.add_port(bridge, &t, vlan, false, true)?;
        let set_up = self
            .os
            .ip(&["link", "set", &t, "up"])
            .and_then(|_| match addr {
                HostAddr::Ip(a) => self.os.ip(&["addr", "add", a, "dev", &t]).map(|_| ()),
                HostAddr::Dhcp => self.os.dhcp(&t),
                HostAddr::None => Ok(()),
            });
        if let Err(e) = set_up {
            let _ = self.os.vsctl(&["--if-exists", "del-port", bridge, &t]);
            return Err(e);
        }
        let tap = Tap {
            bridge: bridge.to_string(),
            vlan: Some(vlan),
            alias,
            qinq: false,
            owner: Owner::Host {
                namespace: namespace.to_string(),
            },
            ip,
            dhcp: *addr == HostAddr::Dhcp,
        };
        self.save_tap(&t, Some(&tap));
        st.taps.insert(t.clone(), tap);
        Ok(t)
    }

    /// Takes a tap off its bridge and removes it (a VM's kernel tap too).
    pub(super) fn remove_tap(&self, st: &mut State, name: &str) {
        let Some(t) = st.taps.remove(name) else {
            return;
        };
        if t.dhcp {
            self.os.dhcp_stop(name);
        }
        match self.os.vsctl(&["--if-exists", "del-port", &t.bridge, name]) {
            // Gone, or its bridge is (no bridge named ...).
            Ok(_) | Err(Error::Net(_)) => {}
            Err(e) => {
                // OVS did not answer: kept recorded for the next start.
                tracing::warn!(
                    "removing tap {name} from {}: {e}; it is removed at the next start",
                    t.bridge
                );
                return;
            }
        }
        if matches!(t.owner, Owner::Vm { .. }) {
            let _ = self.os.ip(&["link", "del", name]);
        }
        self.save_tap(name, None);
    }

    /// Where a tap is now: (bridge, vlan, alias); None if mm has no such
    /// tap.
    pub(crate) fn tap_state(&self, tap: &str) -> Option<(String, Option<u16>, Option<String>)> {
        self.state()
            .taps
            .get(tap)
            .map(|t| (t.bridge.clone(), t.vlan, t.alias.clone()))
    }

    /// `tap delete NAME|all` in `namespace`: host taps only.
    pub(crate) fn delete_host_taps(&self, namespace: &str, which: &str) -> Result<usize> {
        let mut st = self.state();
        let mine = |t: &Tap| matches!(&t.owner, Owner::Host { namespace: n } if n == namespace);
        let names: Vec<String> = if which == "all" {
            st.taps
                .iter()
                .filter(|(_, t)| mine(t))
                .map(|(n, _)| n.clone())
                .collect()
        } else {
            match st.taps.get(which) {
                None => return Err(Error::NotFound(format!("unknown tap: {which}"))),
                Some(t) if !matches!(t.owner, Owner::Host { .. }) => {
                    return Err(Error::Usage(format!(
                        "not a host tap: {which} (a VM's NIC; vm net disconnect moves it)"
                    )))
                }
                Some(t) if !mine(t) => {
                    return Err(Error::Usage(format!(
                        "not a host tap in active namespace: {which}"
                    )))
                }
                Some(_) => vec![which.to_string()],
            }
        };
        for n in &names {
            self.remove_tap(&mut st, n);
        }
        Ok(names.len())
    }

    /// The host taps of `namespace`: (bridge, tap, vlan shown).
    pub(crate) fn host_taps(&self, namespace: &str) -> Vec<(String, String, String)> {
        self.state()
            .taps
            .iter()
            .filter(|(_, t)| matches!(&t.owner, Owner::Host { namespace: n } if n == namespace))
            .map(|(n, t)| {
                (
                    t.bridge.clone(),
                    n.clone(),
                    Nic::show_vlan(t.alias.as_deref(), t.vlan),
                )
            })
            .collect()
    }

    /// The addresses of host taps: a tunnel must never ride on one.
    pub(crate) fn tap_ips(&self) -> Vec<String> {
        self.state()
            .taps
            .values()
            .filter_map(|t| t.ip.as_ref())
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .collect()
    }

    /// A VM's taps go with it (`vm kill`, `vm flush`).
    pub(crate) fn release_vm(&self, namespace: &str, id: u64) {
        let mut st = self.state();
        let owner = Owner::Vm {
            namespace: namespace.to_string(),
            id,
        };
        let names: Vec<String> = st
            .taps
            .iter()
            .filter(|(_, t)| t.owner == owner)
            .map(|(n, _)| n.clone())
            .collect();
        for n in names {
            self.remove_tap(&mut st, &n);
        }
    }

    /// `vm net connect|disconnect`: the tap stays (QEMU holds it); its
    /// port moves to `to` (bridge, vlan, alias), or off every bridge.
    pub(crate) fn move_tap(
        &self,
        tap: &str,
        to: Option<(&str, u16, Option<String>)>,
    ) -> Result<()> {
        let mut st = self.state();
        let Some(t) = st.taps.get(tap).cloned() else {
            return Err(Error::NotFound(format!("unknown tap: {tap}")));
        };
        if let Some((br, _, _)) = &to {
            self.ensure_bridge(&mut st, br)?;
        }
        if t.vlan.is_some() {
            self.os
                .vsctl(&["--if-exists", "del-port", &t.bridge, tap])?;
        }
        let mut t = t;
        t.vlan = None;
        if let Some((br, vlan, alias)) = to {
            let r = self.add_port(br, tap, vlan, t.qinq, false);
            if r.is_ok() {
                t.bridge = br.to_string();
                t.vlan = Some(vlan);
                t.alias = alias;
            }
            self.save_tap(tap, Some(&t));
            st.taps.insert(tap.to_string(), t);
            return r;
        }
        self.save_tap(tap, Some(&t));
        st.taps.insert(tap.to_string(), t);
        Ok(())
    }
}

/// An address with its prefix length, as `ip addr add` takes it.
pub(super) fn check_cidr(a: &str) -> Result<String> {
    let (ip, len) = a.split_once('/').unwrap_or((a, ""));
    let parsed: std::result::Result<std::net::IpAddr, _> = ip.parse();
    let max = match parsed {
        Ok(std::net::IpAddr::V4(_)) => 32,
        Ok(std::net::IpAddr::V6(_)) => 128,
        Err(_) => {
            return Err(Error::Usage(format!(
                "`{a}` is not an address such as 10.0.0.1/24"
            )))
        }
    };
    match len.parse::<u8>() {
        Ok(n) if n <= max => Ok(a.to_string()),
        _ => Err(Error::Usage(format!(
            "`{a}`: give the prefix length too, such as {ip}/24"
        ))),
    }
}
