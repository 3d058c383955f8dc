//! meshage benchmark (not a test): convergence time of 8, 16 and 32
//! namespace hosts, the round trip of `mesh send all host`, and idle RSS.
//! Run as root: `cargo bench --bench mesh [-- 8 16 32]`. See docs/benchmarks.md.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Lab, Node};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn timed(n: &Node, args: &[&str], runs: usize) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                n.mm(args);
                t.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![8, 16, 32]
    } else {
        sizes
    };
    println!(
        "| hosts | all started (s) | converged after last start (s) | converged from first start (s) \
         | `mesh send all host` (ms) | local `host` (ms) | idle RSS per node (MiB, median / max) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for n in sizes {
        let lab = Lab::up(n, None);
        let t0 = Instant::now();
        let nodes: Vec<Node> = (1..=n)
            .map(|i| Node::in_ns(&format!("h{i}"), &lab.ns(i), &[]))
            .collect();
        let started = t0.elapsed();
        let t1 = Instant::now();
        let mut pending: Vec<&Node> = nodes.iter().collect();
        while !pending.is_empty() {
            pending.retain(|x| x.size() != n);
            if t1.elapsed() > Duration::from_secs(300) {
                panic!("{} nodes never converged", pending.len());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let after_last = t1.elapsed();
        let from_first = t0.elapsed();
        // Every node still agrees once the last one has.
        assert!(nodes.iter().all(|x| x.size() == n));

        let send = timed(&nodes[0], &["mesh", "send", "all", "host"], 11);
        let local = timed(&nodes[0], &["host"], 11);
        std::thread::sleep(Duration::from_secs(10));
        let mut rss: Vec<u64> = nodes.iter().filter_map(|x| x.rss_kib()).collect();
        rss.sort();
        println!(
            "| {n} | {:.2} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1} / {:.1} |",
            started.as_secs_f64(),
            after_last.as_secs_f64(),
            from_first.as_secs_f64(),
            send.as_secs_f64() * 1e3,
            local.as_secs_f64() * 1e3,
            rss[rss.len() / 2] as f64 / 1024.0,
            rss[rss.len() - 1] as f64 / 1024.0,
        );
        drop(nodes);
        drop(lab);
    }
}
