//! Simulated hosts: network namespaces on a private bridge, torn down on
//! drop (and, when a test process died without cleaning up, at the next
//! start).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static LAB_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Simulated hosts: network namespaces `<prefix>h<i>` with eth0 = 10.77.0.i/24
/// on a bridge inside `<prefix>sw`. Traffic stays inside these namespaces.
pub(crate) struct Lab {
    prefix: String,
    pub n: usize,
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
        reap_stale_labs();
        let prefix = format!(
            "mmt{}x{}",
            std::process::id(),
            LAB_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        let lab = Lab { prefix, n };
        if let Err(e) = lab.build(rate) {
            panic!("building the lab: {e}");
        }
        lab
    }

    pub(crate) fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn sw(&self) -> String {
        format!("{}sw", self.prefix)
    }

    pub(crate) fn ip(&self, i: usize) -> String {
        format!("10.77.0.{i}")
    }

    fn build(&self, rate: Option<&str>) -> Result<(), String> {
        let sw = self.sw();
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
        for i in 1..=self.n {
            let h = self.ns(i);
            let port = format!("h{i}");
            let addr = format!("{}/24", self.ip(i));
            sh(&["ip", "netns", "add", &h])?;
            sh(&[
                "ip", "link", "add", "eth0", "netns", &h, "type", "veth", "peer", "name", &port,
                "netns", &sw,
            ])?;
            sh(&["ip", "-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
            sh(&["ip", "-n", &h, "link", "set", "lo", "up"])?;
            sh(&["ip", "-n", &h, "addr", "add", &addr, "dev", "eth0"])?;
            sh(&["ip", "-n", &h, "link", "set", "eth0", "up"])?;
            // No default route in a lab host; this lets mDNS multicast out.
            sh(&["ip", "-n", &h, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
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
        for i in 1..=self.n {
            delete_ns(&self.ns(i));
        }
        delete_ns(&self.sw());
    }
}
