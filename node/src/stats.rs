//! This host's load, read from /proc.

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

/// Bytes received and sent on every interface but loopback (this network
/// namespace's view).
fn net_bytes() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    let mut rx = 0;
    let mut tx = 0;
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() >= 9 {
            rx += f[0];
            tx += f[8];
        }
    }
    (rx, tx)
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
}
