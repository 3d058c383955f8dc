//! The scheduler at scale (issue 10): 100,000 queued VMs onto 1,000 hosts,
//! least-loaded-first, with a baseline run beside it in the same process:
//! the same number of plain round-robin picks, which is what any placement
//! must at least cost. `cargo bench -p mm-node --bench schedule`
//! (MM_SCHED_VMS, MM_SCHED_HOSTS to resize).

// The scheduler's own source: a pure module with no crate imports, so the
// benchmark needs no public API from the node.
#[allow(dead_code, unreachable_pub)]
#[path = "../src/ns/schedule.rs"]
mod schedule;

use std::time::Instant;

use schedule::{place, Capacity, Host, Metric, Want};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (n_vms, n_hosts) = (env("MM_SCHED_VMS", 100_000), env("MM_SCHED_HOSTS", 1_000));
    let hosts: Vec<Host> = (0..n_hosts)
        .map(|i| Host {
            name: format!("h{i:04}"),
            // Uneven hosts, so loads differ and ties are rare.
            cpus: 8 + (i as u64 % 5) * 8,
            mem_mib: 65536,
            cpu_commit: (i as u64 * 7) % 16,
            mem_commit_mib: 0,
            net_commit: 0,
            vms: vec![],
        })
        .collect();
    let queue: Vec<Want> = (0..n_vms)
        .map(|i| Want {
            name: format!("vm-{i}"),
            vcpus: 1 + (i as u64 % 4),
            mem_mib: 512,
            nics: 1,
            // One in a thousand pinned, one in a thousand colocated.
            schedule: (i % 1000 == 1).then(|| format!("h{:04}", i % n_hosts)),
            colocate: (i % 1000 == 2).then(|| format!("vm-{}", i - 2)),
            coschedule: None,
        })
        .collect();
    for round in 0..3 {
        let t = Instant::now();
        let mut sink = 0usize;
        for (i, w) in queue.iter().enumerate() {
            sink = sink.wrapping_add(w.name.len() + (i % hosts.len()));
        }
        let baseline = t.elapsed();
        let t = Instant::now();
        let p = place(&hosts, &queue, Metric::Cpu, &Capacity::default()).expect("placed");
        let took = t.elapsed();
        assert_eq!(p.len(), n_vms);
        println!(
            "round {round}: {n_vms} VMs onto {n_hosts} hosts in {:.3} s (round-robin baseline \
             {:.4} s, {sink})",
            took.as_secs_f64(),
            baseline.as_secs_f64()
        );
    }
}
