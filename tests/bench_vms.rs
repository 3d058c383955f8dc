//! VM launch benchmark (not a test): the wall time of `vm launch kvm 30`
//! from a head node onto 3 lab hosts until every VM is BUILDING, against
//! the same 30 QEMU processes started by hand in a loop (each until its
//! QMP socket answers, which is what BUILDING means), in the same lab at
//! the same time. Run as root: `cargo bench --bench vms [-- ROUNDS]`
//! (MM_BENCH_VMS to resize). See docs/benchmarks.md.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{rows, Lab, Node};

/// The QMP handshake and one query-status: QEMU is up and steerable.
fn answers(sock: &Path) -> bool {
    let Ok(s) = UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(mut w) = s.try_clone() else {
        return false;
    };
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let _ = r.read_line(&mut line);
    for cmd in ["qmp_capabilities", "query-status"] {
        if writeln!(w, "{{\"execute\":\"{cmd}\"}}").is_err() {
            return false;
        }
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                return false;
            }
            if line.contains("\"return\"") {
                break;
            }
        }
    }
    true
}

/// One QEMU as the KVM driver starts it, in lab namespace `ns`, waited
/// for until it answers on QMP.
fn by_hand(ns: &str, dir: &Path, name: &str) -> Child {
    std::fs::create_dir_all(dir).unwrap();
    let sock = dir.join("qmp.sock");
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "qemu-system-x86_64"])
        .args(["-S", "-nodefaults", "-nographic", "-display", "none"])
        .args([
            "-machine",
            "accel=kvm:tcg",
            "-name",
            name,
            "-m",
            "32",
            "-smp",
            "1",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .arg("-serial")
        .arg(format!("file:{}", dir.join("serial.log").display()))
        .arg("-pidfile")
        .arg(dir.join("pid"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let t = Instant::now();
    while !(sock.exists() && answers(&sock)) {
        assert!(child.try_wait().unwrap().is_none(), "{name}: qemu exited");
        assert!(t.elapsed() < Duration::from_secs(30), "{name}: no QMP");
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(3);
    let count: usize = std::env::var("MM_BENCH_VMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let lab = Lab::up(4, None);
    let head = Node::in_ns("head", &lab.ns(1), &[]);
    let _hosts: Vec<Node> = (1..=3)
        .map(|i| Node::in_ns(&format!("n{i}"), &lab.ns(i + 1), &[]))
        .collect();
    head.wait_size(4, Duration::from_secs(90));
    head.mm(&["namespace", "bench"]);
    head.mm(&["vm", "config", "memory", "32"]);
    let scratch = common::scratch_dir("benchvms");
    println!("| round | `vm launch kvm {count}` (s) | by hand in a loop (s) | ratio |");
    println!("|---|---|---|---|");
    let mut ratios = Vec::new();
    for round in 1..=rounds {
        let t = Instant::now();
        head.mm(&["vm", "launch", "kvm", &count.to_string()]);
        let mm = t.elapsed();
        let info = rows(&head.json(&["vm", "info"]));
        let building = info.iter().filter(|r| r["state"] == "BUILDING").count();
        assert_eq!(building, count, "not every VM is BUILDING");
        head.mm(&["vm", "kill", "all"]);
        head.mm(&["vm", "flush"]);

        let t = Instant::now();
        let mut children: Vec<Child> = (0..count)
            .map(|i| {
                let dir = scratch.path().join(format!("{round}-{i}"));
                by_hand(&lab.ns(2 + i % 3), &dir, &format!("vm-{i}"))
            })
            .collect();
        let hand = t.elapsed();
        for c in &mut children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let ratio = mm.as_secs_f64() / hand.as_secs_f64();
        ratios.push(ratio);
        println!(
            "| {round} | {:.2} | {:.2} | {ratio:.2} |",
            mm.as_secs_f64(),
            hand.as_secs_f64()
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!("\nmedian ratio: {:.2}", ratios[ratios.len() / 2]);
}
