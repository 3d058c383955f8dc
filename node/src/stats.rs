//! This host's load, read from /proc.

use std::path::Path;
use std::time::{Duration, Instant};

use std::sync::Arc;

use mm_overlay::HostStats;

use crate::Node;

/// Samples this host every two seconds into the node's announcements,
/// with what its VMs commit, until the overlay stops.
pub(crate) async fn publish(node: Arc<Node>) {
    let mut sampler = Sampler::new();
    loop {
        let mut st = sampler.sample();
        let n = node.clone();
        if let Ok(c) = tokio::task::spawn_blocking(move || n.vms.commit()).await {
            st.vms = c.vms as u32;
            st.cpu_commit = c.vcpus as u32;
            st.mem_commit_mib = c.mem_mib;
            st.net_commit = c.nics as u32;
        }
        if node.overlay.set_stats(st).await.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Samples host stats; keeps the previous interface counters so rx/tx are
/// rates, not totals since boot.
pub(crate) struct Sampler {
    started: Instant,
    last: Option<(Instant, u64, u64)>,
}

impl Sampler {
    pub(crate) fn new() -> Self {
        Self {
            started: Instant::now(),
            last: None,
        }
    }

    pub(crate) fn sample(&mut self) -> HostStats {
        let now = Instant::now();
        let (rx, tx) = net_bytes();
        let (rx_bps, tx_bps) = match self.last {
            Some((t, r0, t0)) => {
                let dt = now.duration_since(t).as_secs_f64().max(0.001);
                (
                    (rx.saturating_sub(r0) as f64 / dt) as u64,
                    (tx.saturating_sub(t0) as f64 / dt) as u64,
                )
            }
            None => (0, 0),
        };
        self.last = Some((now, rx, tx));
        let (total, avail) = meminfo();
        HostStats {
            cpus: cpus(),
            load: loadavg(),
            mem_used_mib: total.saturating_sub(avail) / 1024,
            mem_total_mib: total / 1024,
            rx_bps,
            tx_bps,
            uptime_secs: now.duration_since(self.started).as_secs(),
            ..HostStats::default()
        }
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

/// CPUs and total memory (MiB), as the scheduler weighs a host.
pub(crate) fn capacity() -> (u64, u64) {
    (cpus() as u64, meminfo().0 / 1024)
}

fn cpus() -> u32 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as u32
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// MemTotal and MemAvailable, in KiB.
fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

/// Bytes received and sent over this host's links (this network
/// namespace's view), each byte once: a host's traffic crosses its NIC and
/// also the bridge, VLAN or tunnel device on top of it, and a VM's its tap
/// as well. So only hardware interfaces count; a host that has none (a
/// container, a lab's namespace) counts its other interfaces but the
/// virtual kinds (taps, bridges, VLANs, tunnels, bonds, OVS's own ports).
fn net_bytes() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    links_bytes(&text, Path::new("/sys/class/net"))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    Hardware,
    Plain,
    Virtual,
}

fn link_kind(sys: &Path, name: &str) -> Link {
    let dir = sys.join(name);
    if name == "lo" || dir.join("tun_flags").exists() {
        return Link::Virtual;
    }
    let uevent = std::fs::read_to_string(dir.join("uevent")).unwrap_or_default();
    let devtype = uevent.lines().find_map(|l| l.strip_prefix("DEVTYPE="));
    if matches!(
        devtype,
        Some(
            "bridge"
                | "vlan"
                | "vxlan"
                | "geneve"
                | "gretap"
                | "ip6gretap"
                | "bond"
                | "macvlan"
                | "ipvlan"
                | "openvswitch"
        )
    ) {
        return Link::Virtual;
    }
    if dir.join("device").exists() {
        return Link::Hardware;
    }
    // Stacked on another link (`lower_*`), or not Ethernet (ARPHRD_ETHER
    // is 1: IP-in-IP, GRE and WireGuard links are not): its bytes cross
    // another link too.
    let stacked = std::fs::read_dir(&dir).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("lower_"))
    });
    let ether = std::fs::read_to_string(dir.join("type")).map_or(true, |t| t.trim() == "1");
    if stacked || !ether {
        Link::Virtual
    } else {
        Link::Plain
    }
}

/// [`net_bytes`] from `/proc/net/dev`'s text and a `/sys/class/net`.
fn links_bytes(dev: &str, sys: &Path) -> (u64, u64) {
    let links: Vec<(Link, u64, u64)> = dev
        .lines()
        .skip(2)
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() >= 9).then(|| (link_kind(sys, name.trim()), f[0], f[8]))
        })
        .collect();
    let hardware = links.iter().any(|l| l.0 == Link::Hardware);
    let wanted = if hardware {
        Link::Hardware
    } else {
        Link::Plain
    };
    links
        .iter()
        .filter(|l| l.0 == wanted)
        .fold((0, 0), |(rx, tx), l| (rx + l.1, tx + l.2))
}

pub(crate) fn duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_real_numbers() {
        let mut s = Sampler::new();
        let a = s.sample();
        assert!(a.cpus >= 1);
        assert!(a.mem_total_mib > 0 && a.mem_used_mib <= a.mem_total_mib);
        assert_eq!(duration(3725), "1h2m5s");
        assert_eq!(duration(5), "5s");
    }

    /// Each byte once: the bridge over a NIC, a VM's tap, a tunnel and
    /// loopback do not add to the NIC's count; without hardware, a
    /// namespace's veth counts and OVS's userspace port (a tap) does not.
    #[test]
    fn rx_and_tx_count_each_link_once() {
        let sys = tempfile::tempdir().unwrap();
        let link = |name: &str, devtype: Option<&str>, files: &[&str]| {
            let d = sys.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            let mut uevent = format!("INTERFACE={name}\n");
            if let Some(t) = devtype {
                uevent = format!("DEVTYPE={t}\n{uevent}");
            }
            std::fs::write(d.join("uevent"), uevent).unwrap();
            for f in files {
                std::fs::write(d.join(f), "").unwrap();
            }
        };
        let dev = |rows: &[(&str, u64, u64)]| {
            let mut t = "Inter-|   Receive\n face |bytes\n".to_string();
            for (n, rx, tx) in rows {
                t += &format!("{n:>6}: {rx} 1 0 0 0 0 0 0 {tx} 1 0 0 0 0 0 0\n");
            }
            t
        };
        link("eth0", None, &["device"]);
        link("br0", Some("bridge"), &[]);
        link("mega_tap0", None, &["tun_flags"]);
        link("vxlan_sys_4789", Some("vxlan"), &[]);
        let host = dev(&[
            ("lo", 7, 7),
            ("eth0", 1000, 2000),
            ("br0", 900, 1900),
            ("mega_tap0", 50, 60),
            ("vxlan_sys_4789", 40, 30),
        ]);
        assert_eq!(links_bytes(&host, sys.path()), (1000, 2000));
        link("veth0", None, &[]);
        link("br-phy", None, &["tun_flags"]);
        link("gre1", None, &[]);
        std::fs::write(sys.path().join("gre1/type"), "778\n").unwrap();
        link("macv0", None, &["lower_veth0"]);
        let lab = dev(&[
            ("lo", 7, 7),
            ("veth0", 300, 400),
            ("br-phy", 290, 390),
            ("gre1", 20, 20),
            ("macv0", 30, 30),
        ]);
        assert_eq!(links_bytes(&lab, sys.path()), (300, 400));
    }
}
