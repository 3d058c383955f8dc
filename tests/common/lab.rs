//! Simulated hosts: network namespaces on a private bridge, torn down on
//! drop (and, when a test process died without cleaning up, at the next
//! start).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static LAB_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Simulated hosts: network namespaces `<prefix>h<i>` with eth0 = 10.77.0.i/24
/// on a bridge inside `<prefix>sw`. Traffic stays inside these namespaces.
///
/// With [`Lab::with`], hosts may sit in two sites (10.77.0.0/24 and
/// 10.78.0.0/24, each on its own switch) joined by a router namespace that
/// forwards unicast and no multicast; and each host may run its own Open
/// vSwitch (one ovsdb-server and ovs-vswitchd, stopped by pid), with its
/// address on an OVS bridge `br-phy` that holds eth0, as OVS's userspace
/// tunnels need.
pub(crate) struct Lab {
    prefix: String,
    pub n: usize,
    /// The site of each host (index i-1).
    sites: Vec<usize>,
    /// Each host's OVS, if it runs one (index i-1).
    ovs: Vec<Option<Ovs>>,
}

/// What a lab is built with.
#[derive(Default)]
pub(crate) struct Opts<'a> {
    /// Hosts per site; empty: `n` hosts in one site.
    pub sites: Vec<usize>,
    /// Which hosts (1-based) run Open vSwitch.
    pub ovs: Vec<usize>,
    pub rate: Option<&'a str>,
}

/// One host's Open vSwitch: its directory (database, sockets, logs) and
/// daemons.
pub(crate) struct Ovs {
    pub dir: tempfile::TempDir,
    pids: Vec<i32>,
}

impl Ovs {
    /// What `mm serve --ovs-db` and `ovs-vsctl --db` take.
    pub(crate) fn db(&self) -> String {
        format!("unix:{}/db.sock", self.dir.path().display())
    }

    /// `ovs-vsctl` on this OVS; its stdout.
    pub(crate) fn vsctl(&self, args: &[&str]) -> String {
        let out = Command::new("ovs-vsctl")
            .arg("--timeout=10")
            .arg(format!("--db={}", self.db()))
            .args(args)
            .output()
            .expect("ovs-vsctl");
        assert!(
            out.status.success(),
            "ovs-vsctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn start(ns: &str) -> Result<Ovs, String> {
        let dir = super::scratch_dir("ovs");
        let d = dir.path().display().to_string();
        let mut ovs = Ovs { dir, pids: vec![] };
        sh(&[
            "ovsdb-tool",
            "create",
            &format!("{d}/conf.db"),
            "/usr/share/openvswitch/vswitch.ovsschema",
        ])?;
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(["netns", "exec", ns])
                .args(args)
                .env("OVS_RUNDIR", &d)
                .env("OVS_LOGDIR", &d)
                .output()
                .map_err(|e| format!("{args:?}: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "{args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        run(&[
            "ovsdb-server",
            &format!("{d}/conf.db"),
            &format!("--remote=punix:{d}/db.sock"),
            &format!("--pidfile={d}/ovsdb-server.pid"),
            &format!("--log-file={d}/ovsdb-server.log"),
            "--detach",
        ])?;
        ovs.pids.extend(read_pid(&format!("{d}/ovsdb-server.pid")));
        sh(&[
            "ovs-vsctl",
            &format!("--db=unix:{d}/db.sock"),
            "--no-wait",
            "init",
        ])?;
        run(&[
            "ovs-vswitchd",
            &format!("unix:{d}/db.sock"),
            &format!("--pidfile={d}/ovs-vswitchd.pid"),
            &format!("--log-file={d}/ovs-vswitchd.log"),
            "--detach",
        ])?;
        ovs.pids.extend(read_pid(&format!("{d}/ovs-vswitchd.pid")));
        Ok(ovs)
    }
}

fn read_pid(path: &str) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl Drop for Ovs {
    fn drop(&mut self) {
        for p in &self.pids {
            // SAFETY: kill(2) on a daemon this lab started, by its pid file.
            unsafe { libc::kill(*p, libc::SIGTERM) };
        }
        for p in &self.pids {
            for _ in 0..100 {
                if !Path::new(&format!("/proc/{p}")).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // SAFETY: as above; it did not end on SIGTERM.
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
    }
}

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Lab {
    /// Builds `n` hosts, each capped at `rate` (tc tbf) both ways if given.
    pub(crate) fn up(n: usize, rate: Option<&str>) -> Lab {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the namespace lab needs root (CI runs as root)"
        );
        Lab::with(
            n,
            Opts {
                rate,
                ..Opts::default()
            },
        )
    }

    /// Builds `n` hosts as `o` says.
    pub(crate) fn with(n: usize, o: Opts) -> Lab {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the namespace lab needs root (CI runs as root)"
        );
        reap_stale_labs();
        let prefix = format!(
            "mmt{}x{}",
            std::process::id(),
            LAB_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let sites = if o.sites.is_empty() {
            vec![0; n]
        } else {
            assert_eq!(o.sites.iter().sum::<usize>(), n, "hosts per site");
            o.sites
                .iter()
                .enumerate()
                .flat_map(|(s, k)| std::iter::repeat_n(s, *k))
                .collect()
        };
        let mut lab = Lab {
            prefix,
            n,
            sites,
            ovs: (0..n).map(|_| None).collect(),
        };
        if let Err(e) = lab.build(o.rate, &o.ovs) {
            panic!("building the lab: {e}");
        }
        lab
    }

    /// Host i's Open vSwitch.
    pub(crate) fn ovs(&self, i: usize) -> &Ovs {
        self.ovs[i - 1].as_ref().expect("this host runs no OVS")
    }

    pub(crate) fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn sw(&self, site: usize) -> String {
        match site {
            0 => format!("{}sw", self.prefix),
            s => format!("{}sw{s}", self.prefix),
        }
    }

    fn router(&self) -> String {
        format!("{}rt", self.prefix)
    }

    fn site_count(&self) -> usize {
        self.sites.iter().max().map_or(1, |m| m + 1)
    }

    /// Host i's address (site 0: 10.77.0.i, site 1: 10.78.0.i).
    pub(crate) fn ip(&self, i: usize) -> String {
        format!("10.{}.0.{i}", 77 + self.sites[i - 1])
    }

    fn build(&mut self, rate: Option<&str>, ovs: &[usize]) -> Result<(), String> {
        for site in 0..self.site_count() {
            let sw = self.sw(site);
            sh(&["ip", "netns", "add", &sw])?;
            sh(&["ip", "-n", &sw, "link", "set", "lo", "up"])?;
            sh(&[
                "ip",
                "-n",
                &sw,
                "link",
                "add",
                "br0",
                "type",
                "bridge",
                "mcast_snooping",
                "0",
            ])?;
            sh(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        }
        if self.site_count() > 1 {
            // A router that forwards between the sites; Linux routes no
            // multicast without a daemon, so mDNS stays in its site.
            let rt = self.router();
            sh(&["ip", "netns", "add", &rt])?;
            sh(&["ip", "-n", &rt, "link", "set", "lo", "up"])?;
            sh(&[
                "ip",
                "netns",
                "exec",
                &rt,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])?;
            for site in 0..self.site_count() {
                let sw = self.sw(site);
                let leg = format!("rt{site}");
                sh(&[
                    "ip", "link", "add", &leg, "netns", &rt, "type", "veth", "peer", "name", &leg,
                    "netns", &sw,
                ])?;
                sh(&["ip", "-n", &sw, "link", "set", &leg, "master", "br0", "up"])?;
                let a = format!("10.{}.0.254/24", 77 + site);
                sh(&["ip", "-n", &rt, "addr", "add", &a, "dev", &leg])?;
                sh(&["ip", "-n", &rt, "link", "set", &leg, "up"])?;
            }
        }
        for i in 1..=self.n {
            let h = self.ns(i);
            let site = self.sites[i - 1];
            let sw = self.sw(site);
            let port = format!("h{i}");
            let addr = format!("{}/24", self.ip(i));
            sh(&["ip", "netns", "add", &h])?;
            sh(&[
                "ip", "link", "add", "eth0", "netns", &h, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])?;
            sh(&["ip", "-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            sh(&["ip", "-n", &h, "link", "set", "lo", "up"])?;
            sh(&["ip", "-n", &h, "link", "set", "eth0", "up"])?;
            // The address sits on eth0, or on an OVS bridge that holds
            // eth0: OVS's userspace tunnels leave by the bridge that has
            // the address.
            if !ovs.is_empty() {
                // OVS's userspace datapath re-injects frames whose TCP
                // checksums a veth left to offload, and TCP between it
                // and any other host then fails: offload off, everywhere.
                sh(&[
                    "ip", "netns", "exec", &h, "ethtool", "-K", "eth0", "tx", "off",
                ])?;
            }
            let dev = if ovs.contains(&i) {
                let o = Ovs::start(&h)?;
                o.vsctl(&[
                    "add-br",
                    "br-phy",
                    "--",
                    "set",
                    "bridge",
                    "br-phy",
                    "datapath_type=netdev",
                ]);
                o.vsctl(&["add-port", "br-phy", "eth0"]);
                sh(&["ip", "-n", &h, "link", "set", "br-phy", "up"])?;
                sh(&[
                    "ip", "netns", "exec", &h, "ethtool", "-K", "br-phy", "tx", "off",
                ])?;
                self.ovs[i - 1] = Some(o);
                "br-phy"
            } else {
                "eth0"
            };
            sh(&["ip", "-n", &h, "addr", "add", &addr, "dev", dev])?;
            // No default route in a lab host; this lets mDNS multicast out.
            sh(&["ip", "-n", &h, "route", "add", "224.0.0.0/4", "dev", dev])?;
            for other in (0..self.site_count()).filter(|s| *s != site) {
                let net = format!("10.{}.0.0/24", 77 + other);
                let via = format!("10.{}.0.254", 77 + site);
                sh(&[
                    "ip", "-n", &h, "route", "add", &net, "via", &via, "dev", dev,
                ])?;
            }
            if let Some(r) = rate {
                let burst = "256kb";
                for (ns, dev) in [(&h, "eth0"), (&sw, port.as_str())] {
                    sh(&[
                        "ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root",
                        "tbf", "rate", r, "burst", burst, "latency", "50ms",
                    ])?;
                }
            }
        }
        Ok(())
    }
}

fn delete_ns(name: &str) {
    // Kill whatever still runs inside (only PIDs in this namespace).
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            if let Ok(p) = pid.parse::<i32>() {
                // SAFETY: plain kill(2) on a pid inside our own namespace.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
    }
    let _ = sh(&["ip", "netns", "del", name]);
}

fn lab_namespaces() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|n| n.starts_with("mmt"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Removes labs left by test processes that died without cleaning up.
fn reap_stale_labs() {
    for ns in lab_namespaces() {
        let pid: Option<i32> = ns[3..].split('x').next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid {
            if pid != std::process::id() as i32 && !Path::new(&format!("/proc/{pid}")).exists() {
                delete_ns(&ns);
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Each OVS stops by its pid first, then its host goes.
        for o in &mut self.ovs {
            o.take();
        }
        for i in 1..=self.n {
            delete_ns(&self.ns(i));
        }
        for site in 0..self.site_count() {
            delete_ns(&self.sw(site));
        }
        delete_ns(&self.router());
    }
}
