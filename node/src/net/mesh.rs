//! `ns bridge` on this node: the full mesh of tunnels between a
//! namespace's hosts, mended when hosts come and go, and left again.

use super::*;

impl Net {
    /// `ns bridge` on one host: `bridge` with RSTP on (the mesh has loops)
    /// and one `kind` tunnel with `key` to each of `remotes`; tunnels of
    /// the bridge to anywhere else (a host that left) go. Its tunnels.
    /// Only this mesh's tunnels (its key, or one of `prune`, an earlier
    /// key of it) are touched: those made by hand or by another
    /// namespace's mesh on the same bridge stay.
    pub(crate) fn join_mesh(
        &self,
        bridge: &str,
        kind: Kind,
        key: u32,
        prune: &[u32],
        remotes: &[String],
    ) -> Result<Vec<String>> {
        let mut remotes = remotes.to_vec();
        remotes.sort();
        remotes.dedup();
        self.config(bridge, "rstp_enable=true")?;
        let ours = |t: &Tunnel| t.key.is_some_and(|k| k == key || prune.contains(&k));
        let stale: Vec<String> = {
            let st = self.state();
            let b = &st.bridges[bridge];
            b.tunnels
                .iter()
                .filter(|(_, t)| ours(t))
                .filter(|(_, t)| {
                    !(t.kind == kind && t.key == Some(key) && remotes.contains(&t.remote))
                })
                .map(|(p, _)| p.clone())
                .collect()
        };
        for p in stale {
            self.notunnel(bridge, &p)?;
        }
        let have: Vec<String> = self.state().bridges[bridge]
            .tunnels
            .values()
            .filter(|t| t.key == Some(key))
            .map(|t| t.remote.clone())
            .collect();
        for r in remotes.iter().filter(|r| !have.contains(r)) {
            self.tunnel(kind, bridge, r, Some(key))?;
        }
        Ok(self.state().bridges[bridge]
            .tunnels
            .iter()
            .filter(|(_, t)| t.key == Some(key))
            .map(|(p, _)| p.clone())
            .collect())
    }

    /// `ns del-bridge` (and `clear namespace`) here: the mesh's tunnels
    /// (`key`) and the namespace's host taps on `bridge` go; the bridge
    /// goes too unless something else of mm's is on it (another
    /// namespace's taps, a trunk, other tunnels), which keeps it.
    pub(crate) fn leave(&self, bridge: &str, namespace: &str, key: Option<u32>) -> Result<()> {
        let mut st = self.state();
        let Some(b) = st.bridges.get(bridge).cloned() else {
            return Ok(());
        };
        let mine = |t: &Tap| match &t.owner {
            Owner::Vm { namespace: n, .. } | Owner::Host { namespace: n } => n == namespace,
        };
        let others = st.taps.values().any(|t| t.bridge == bridge && !mine(t))
            || !b.trunks.is_empty()
            || b.tunnels.values().any(|t| t.key != key || key.is_none());
        if !others {
            return self.tear_down(&mut st, bridge, &b);
        }
        let hosts: Vec<String> = st
            .taps
            .iter()
            .filter(|(_, t)| {
                t.bridge == bridge
                    && matches!(&t.owner, Owner::Host { namespace: n } if n == namespace)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for t in hosts {
            self.remove_tap(&mut st, &t);
        }
        drop(st);
        let ports: Vec<String> = b
            .tunnels
            .iter()
            .filter(|(_, t)| key.is_some() && t.key == key)
            .map(|(p, _)| p.clone())
            .collect();
        for p in ports {
            self.notunnel(bridge, &p)?;
        }
        Ok(())
    }
}

/// `ns bridge`'s full mesh: for each host, the endpoints of all the others.
pub(crate) fn mesh_plan(hosts: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    hosts
        .iter()
        .map(|(h, _)| {
            let remotes = hosts
                .iter()
                .filter(|(o, _)| o != h)
                .map(|(_, ip)| ip.clone())
                .collect();
            (h.clone(), remotes)
        })
        .collect()
}
