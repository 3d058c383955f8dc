//! iomeshage benchmark (not a test). Run as root:
//!   cargo bench --bench files            # B1, B2 (3 and 7 pullers), B3
//!   cargo bench --bench files -- b1      # one part: b1 | b2
//! Env: MM_B1_MIB (default 1024), MM_B2_MIB (default 256), MM_B2_RATE
//! (default 200mbit). See docs/benchmarks.md.

#[path = "common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{wait_for, Lab, Node};

fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// A file of `mib` MiB of incompressible bytes, written fast.
fn make_file(path: &std::path::Path, mib: u64) {
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut f = std::fs::File::create(path).unwrap();
    for _ in 0..mib {
        for c in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        std::io::Write::write_all(&mut f, &buf).unwrap();
    }
}

fn peak_rss_mib(n: &Node) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", n.pid().unwrap())).unwrap();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Raw TCP baseline between two lab hosts: python's sendfile to a receiver
/// that writes to disk, like a node does.
fn raw_tcp(lab: &Lab, src: &std::path::Path, dst: &std::path::Path) -> Duration {
    let recv = format!(
        "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{}',7777));s.listen(1);c,_=s.accept();f=open('{}','wb')\n\
         while True:\n  b=c.recv(1<<20)\n  if not b: break\n  f.write(b)\nf.close()",
        lab.ip(2),
        dst.display()
    );
    let send = format!(
        "import socket,os,time\nfor i in range(100):\n  try:\n    s=socket.create_connection(('{}',7777));break\n  except OSError: time.sleep(0.05)\n\
         f=open('{}','rb');n=os.fstat(f.fileno()).st_size;o=0\nwhile o<n: o+=os.sendfile(s.fileno(),f.fileno(),o,n-o)\ns.close()",
        lab.ip(2),
        src.display()
    );
    let mut r = Command::new("ip")
        .args(["netns", "exec", &lab.ns(2), "python3", "-c", &recv])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let ok = Command::new("ip")
        .args(["netns", "exec", &lab.ns(1), "python3", "-c", &send])
        .status()
        .unwrap()
        .success();
    assert!(ok && r.wait().unwrap().success(), "raw TCP copy failed");
    t.elapsed()
}

fn b1() {
    let mib = env_num("MM_B1_MIB", 1024);
    let lab = Lab::up(2, None);
    let nodes: Vec<Node> = (1..=2)
        .map(|i| Node::in_ns(&format!("h{i}"), &lab.ns(i), &[]))
        .collect();
    nodes[1].wait_size(2, Duration::from_secs(60));
    let src = nodes[0].base().join("files/big");
    make_file(&src, mib);
    // A first get makes the holder hash the file (once); time the second,
    // as any later get would find the manifest cached.
    nodes[1].mm(&["file", "get", "big", "wait"]);
    nodes[1].mm(&["file", "delete", "big"]);
    let scratch = tempfile::tempdir().unwrap();
    let raw = raw_tcp(&lab, &src, &scratch.path().join("copy"));
    drop(scratch);
    // MM_PERF=FILE: a system-wide `perf record -g` of the timed get alone.
    let perf = std::env::var("MM_PERF").ok().map(|out| {
        let child = Command::new("perf")
            .args(["record", "-a", "-g", "-q", "-o", &out])
            .spawn()
            .expect("perf");
        std::thread::sleep(Duration::from_millis(500));
        child
    });
    let t = Instant::now();
    nodes[1].mm(&["file", "get", "big", "wait"]);
    let mm = t.elapsed();
    if let Some(child) = perf {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait_with_output();
    }
    let bytes = (mib << 20) as f64;
    println!("B1: {mib} MiB between two namespace hosts, uncapped");
    println!(
        "| raw TCP (python sendfile -> file) | {:.2} s | {:.0} MB/s |",
        raw.as_secs_f64(),
        bytes / raw.as_secs_f64() / 1e6
    );
    println!(
        "| mm file get | {:.2} s | {:.0} MB/s | {:.0}% of raw TCP |",
        mm.as_secs_f64(),
        bytes / mm.as_secs_f64() / 1e6,
        100.0 * raw.as_secs_f64() / mm.as_secs_f64()
    );
    println!(
        "B3: peak RSS holder {:.1} MiB, puller {:.1} MiB",
        peak_rss_mib(&nodes[0]),
        peak_rss_mib(&nodes[1])
    );
}

fn b2(pullers: usize) {
    let mib = env_num("MM_B2_MIB", 256);
    let rate = std::env::var("MM_B2_RATE").unwrap_or_else(|_| "200mbit".into());
    let bits: f64 = rate.trim_end_matches("mbit").parse::<f64>().unwrap() * 1e6;
    let n = pullers + 1;
    let lab = Lab::up(n, Some(&rate));
    let nodes: Vec<Node> = (1..=n)
        .map(|i| Node::in_ns(&format!("h{i}"), &lab.ns(i), &[]))
        .collect();
    for x in &nodes {
        x.wait_size(n, Duration::from_secs(90));
    }
    make_file(&nodes[0].base().join("files/big"), mib);
    // Have the holder hash it before the clock starts.
    nodes[1].mm(&["file", "get", "big", "wait"]);
    nodes[1].mm(&["file", "delete", "big"]);
    nodes[0].mm(&["mesh", "timeout", "0"]);
    let t = Instant::now();
    nodes[0].mm(&["mesh", "send", "all", "file", "get", "big", "wait"]);
    let took = t.elapsed();
    for x in &nodes[1..] {
        wait_for("the copy", Duration::from_secs(5), || {
            (std::fs::metadata(x.base().join("files/big")).ok()?.len() == mib << 20).then_some(())
        });
    }
    let ideal = (mib << 20) as f64 * 8.0 / bits;
    println!(
        "| B2 | 1 holder, {pullers} pullers, {rate} caps, {mib} MiB | last puller done {:.2} s | size/cap {:.2} s | ratio {:.2} |",
        took.as_secs_f64(),
        ideal,
        took.as_secs_f64() / ideal
    );
}

fn main() {
    let parts: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |p: &str| parts.is_empty() || parts.iter().any(|x| x == p);
    if want("b1") {
        b1();
    }
    if want("b2") {
        b2(3);
        b2(7);
    }
}
