//! iomeshage benchmark (not a test). Run as root:
//!   cargo bench --bench files            # B1, B2 (3 and 7 pullers), B3
//!   cargo bench --bench files -- b1      # one part: b1 | b2
//! Env: MM_B1_MIB (default 1024), MM_B1_RUNS (default 9), MM_B2_MIB
//! (default 256), MM_B2_RATE (default 200mbit), MM_B2_PULLERS (default
//! 3,7), MM_B2_RUNS (default 1: each count that many times, in turn, and
//! the medians), MM_B2_WARM (MiB of a swarm before the timed one; none by
//! default); MM_SERVE_BIN runs the nodes from another build of `mm`. See
//! docs/benchmarks.md.

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

/// User + system CPU seconds the node has used so far.
fn cpu_secs(n: &Node) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", n.pid().unwrap())).unwrap();
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th; in clock ticks.
    let rest = stat.rsplit(')').next().unwrap();
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11] + f[12]) / hz
}

/// Context switches (voluntary + not) of all of a node's threads so far.
fn switches(n: &Node) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", n.pid().unwrap())) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .flat_map(|s| {
            s.lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// Bytes and packets (skbs, so a GSO packet counts once) a lab host's
/// eth0 has sent so far.
fn uplink_sent(lab: &Lab, i: usize) -> (u64, u64) {
    let out = Command::new("ip")
        .args(["-j", "-n", &lab.ns(i), "-s", "link", "show", "dev", "eth0"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let tx = &v[0]["stats64"]["tx"];
    (
        tx["bytes"].as_u64().unwrap_or(0),
        tx["packets"].as_u64().unwrap_or(0),
    )
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

/// On this VM, memory the host has taken back (free page reporting, about
/// 2 s after it is freed) is slow to touch again: writing a GiB into such
/// page-cache pages took 1.9 s instead of 0.18 s in a plain write test.
/// Writing and deleting a scratch file a little larger than the copy just
/// before each timed copy leaves both contenders the same warm, free page
/// cache memory.
fn warm_memory(mib: u64) {
    use std::io::Write;
    let dir = common::scratch_dir("warm");
    let mut f = std::fs::File::create(dir.path().join("warm")).unwrap();
    let block = vec![1u8; 1 << 20];
    for _ in 0..mib + mib / 2 {
        f.write_all(&block).unwrap();
    }
}

/// `MM_PERF=FILE`: a system-wide `perf record -g` from now, when `now`.
fn start_perf(now: bool) -> Option<std::process::Child> {
    let out = std::env::var("MM_PERF").ok().filter(|_| now)?;
    // MM_PERF_ARGS replaces `-g`, e.g. "--call-graph dwarf -F 199" where
    // the binary has no frame pointers.
    let how = std::env::var("MM_PERF_ARGS").unwrap_or_else(|_| "-g".into());
    let child = Command::new("perf")
        .args(["record", "-a", "-q", "-o", &out])
        .args(how.split_whitespace())
        .spawn()
        .expect("perf");
    std::thread::sleep(Duration::from_millis(500));
    Some(child)
}

fn stop_perf(perf: Option<std::process::Child>) {
    if let Some(child) = perf {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let _ = child.wait_with_output();
    }
}

fn b1() {
    let mib = env_num("MM_B1_MIB", 1024);
    let runs = env_num("MM_B1_RUNS", 9) as usize;
    let lab = Lab::up(2, None);
    let nodes: Vec<Node> = (1..=2)
        .map(|i| Node::in_ns(&format!("h{i}"), &lab.ns(i), &[]))
        .collect();
    nodes[1].wait_size(2, Duration::from_secs(60));
    let src = nodes[0].base().join("files/big");
    make_file(&src, mib);
    // A first get makes the holder hash the file (once); time the later
    // ones, as any later get would find the manifest cached.
    nodes[1].mm(&["file", "get", "big", "wait"]);
    nodes[1].mm(&["file", "delete", "big"]);
    let bytes = (mib << 20) as f64;
    println!("B1: {mib} MiB between two namespace hosts, uncapped, {runs} runs");
    println!("| run | raw TCP (python sendfile -> file) | mm file get | ratio |");
    println!("|---|---|---|---|");
    // This VM's timings swing run to run (fresh memory is slow to touch the
    // first time): alternate the two and compare medians.
    let (mut raws, mut mms, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        // Which goes first alternates, so neither always inherits the
        // memory the other just freed (warm or not).
        let raw_first = run % 2 == 1;
        let raw_copy = || {
            let scratch = common::scratch_dir("b1");
            warm_memory(mib);
            raw_tcp(&lab, &src, &scratch.path().join("copy"))
        };
        let mut raw = if raw_first {
            raw_copy()
        } else {
            Duration::ZERO
        };
        warm_memory(mib);
        // MM_PERF=FILE: a system-wide `perf record -g` of the last get.
        let perf = start_perf(run == runs);
        let cpu0 = (cpu_secs(&nodes[0]), cpu_secs(&nodes[1]));
        let sw0: u64 = nodes.iter().map(switches).sum();
        let up0 = uplink_sent(&lab, 1);
        let t = Instant::now();
        nodes[1].mm(&["file", "get", "big", "wait"]);
        let mm = t.elapsed();
        let cpu = (cpu_secs(&nodes[0]) - cpu0.0, cpu_secs(&nodes[1]) - cpu0.1);
        let up = uplink_sent(&lab, 1);
        let sw = nodes.iter().map(switches).sum::<u64>() - sw0;
        eprintln!(
            "cpu: holder {:.2} s, puller {:.2} s; the holder sent {} packets ({:.1} KiB each); {sw} context switches",
            cpu.0,
            cpu.1,
            up.1 - up0.1,
            (up.0 - up0.0) as f64 / (up.1 - up0.1).max(1) as f64 / 1024.0
        );
        cpus.push((cpu.0 + cpu.1) / (mib as f64 / 1024.0));
        stop_perf(perf);
        if !raw_first {
            raw = raw_copy();
        }
        println!(
            "| {run} | {:.2} s ({:.0} MB/s) | {:.2} s ({:.0} MB/s) | {:.0}% |",
            raw.as_secs_f64(),
            bytes / raw.as_secs_f64() / 1e6,
            mm.as_secs_f64(),
            bytes / mm.as_secs_f64() / 1e6,
            100.0 * raw.as_secs_f64() / mm.as_secs_f64()
        );
        if let Some(l) = nodes[1]
            .log()
            .lines()
            .rfind(|l| l.contains("big: complete"))
        {
            eprintln!("puller: {}", l.split("big: ").nth(1).unwrap_or(l));
        }
        if let Ok(dir) = std::env::var("MM_B1_LOGS") {
            for x in &nodes {
                let _ = std::fs::copy(x.log_path(), format!("{dir}/{}-{run}.log", x.name));
            }
        }
        raws.push(raw.as_secs_f64());
        mms.push(mm.as_secs_f64());
        nodes[1].mm(&["file", "delete", "big"]);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (raw, mm, cpu) = (median(&mut raws), median(&mut mms), median(&mut cpus));
    println!(
        "| median | {raw:.2} s | {mm:.2} s | **{:.0}% of raw TCP** |",
        100.0 * raw / mm
    );
    println!("B1 CPU: holder + puller {cpu:.2} CPU-s per GiB delivered (median)");
    println!(
        "B3: peak RSS holder {:.1} MiB, puller {:.1} MiB",
        peak_rss_mib(&nodes[0]),
        peak_rss_mib(&nodes[1])
    );
}

/// One swarm of `pullers`: its ratio (last done over size/cap) and CPU-s
/// per GiB delivered.
fn b2(pullers: usize) -> (f64, f64) {
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
    // Have the holder hash it before the clock starts: a puller's get for
    // a version no node has asks every node what it holds, which hashes
    // the file, and then fetches nothing. (Not a real get: the holder
    // would remember that puller as having every chunk. Nor a get on the
    // holder: with no other holder, it answers "only here" unhashed.)
    let none = nodes[1].try_mm(&["file", "get", "big", "hash", "0000000000000000"]);
    assert!(!none.status.success(), "no node holds that version");
    wait_for("the holder's hash", Duration::from_secs(60), || {
        let list = nodes[0].mm(&["file", "list"]);
        list.lines()
            .any(|l| l.contains("big") && !l.trim_end().ends_with('-'))
            .then_some(())
    });
    nodes[0].mm(&["mesh", "timeout", "0"]);
    // MM_B2_WARM=MIB: a swarm of a file of that size first, so that the
    // timed one starts with the data connections open (they stay 30 s):
    // what setting them up under load costs a swarm's start.
    if let Some(warm) = std::env::var("MM_B2_WARM")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        make_file(&nodes[0].base().join("files/warm"), warm);
        nodes[0].mm(&["mesh", "send", "all", "file", "get", "warm", "wait"]);
    }
    // What the mesh costs with no transfer, for as long as one would take:
    // the part of the figure below that is not the swarm's.
    let idle0: Vec<f64> = nodes.iter().map(cpu_secs).collect();
    let idle_for = Duration::from_secs(5);
    std::thread::sleep(idle_for);
    let idle: f64 = nodes
        .iter()
        .zip(&idle0)
        .map(|(x, c0)| cpu_secs(x) - c0)
        .sum::<f64>()
        / idle_for.as_secs_f64();
    let perf = start_perf(true);
    let cpu0: Vec<f64> = nodes.iter().map(cpu_secs).collect();
    let sw0: u64 = nodes.iter().map(switches).sum();
    let up0: Vec<(u64, u64)> = (1..=n).map(|i| uplink_sent(&lab, i)).collect();
    let t = Instant::now();
    nodes[0].mm(&["mesh", "send", "all", "file", "get", "big", "wait"]);
    let took = t.elapsed();
    let cpu: Vec<f64> = nodes
        .iter()
        .zip(&cpu0)
        .map(|(x, c0)| cpu_secs(x) - c0)
        .collect();
    let sw = nodes.iter().map(switches).sum::<u64>() - sw0;
    let (mut up_bytes, mut up_pkts) = (0, 0);
    for (i, (b0, p0)) in up0.iter().enumerate() {
        let (b, p) = uplink_sent(&lab, i + 1);
        up_bytes += b - b0;
        up_pkts += p - p0;
    }
    stop_perf(perf);
    for x in &nodes[1..] {
        wait_for("the copy", Duration::from_secs(5), || {
            (std::fs::metadata(x.base().join("files/big")).ok()?.len() == mib << 20).then_some(())
        });
    }
    let mut from_holder = 0u64;
    for x in &nodes[1..] {
        let served = x.served_by("big");
        eprintln!("{}: chunks from {served:?}", x.name);
        from_holder += served
            .iter()
            .filter(|(h, _)| h == "h1")
            .map(|(_, c)| c)
            .sum::<u64>();
    }
    // MM_B2_LOGS=DIR keeps the nodes' logs.
    if let Ok(dir) = std::env::var("MM_B2_LOGS") {
        for x in &nodes {
            let _ = std::fs::copy(x.log_path(), format!("{dir}/{}-{pullers}.log", x.name));
        }
    }
    // The swarm's aim: the holder's uplink sends each chunk about once.
    let chunks = (mib << 20).div_ceil(mm_store::manifest::CHUNK_SIZE);
    eprintln!(
        "chunks sent by the holder: {from_holder} for {chunks} in the file ({:.2} each)",
        from_holder as f64 / chunks as f64
    );
    // CPU per GiB delivered, every node's user + sys time during the
    // transfer: comparable with B1's figure.
    let gib = (pullers as u64 * mib) as f64 / 1024.0;
    let total: f64 = cpu.iter().sum();
    let max = cpu[1..].iter().cloned().fold(0.0, f64::max);
    let idle_part = idle * took.as_secs_f64();
    println!(
        "| B2 CPU | {pullers} pullers | {:.2} CPU-s per GiB delivered ({total:.1} CPU-s for {gib:.2} GiB; an idle mesh of {n} nodes {idle:.2} CPU-s per s, {:.2} per GiB over that time) | holder {:.2} CPU-s, busiest puller {max:.2} CPU-s |",
        total / gib,
        idle_part / gib,
        cpu[0]
    );
    // Per-packet work (the lab's veths, bridge and shapers, and each
    // stack) and wake-ups: what a byte costs besides crypto and copies.
    println!(
        "| B2 packets | {pullers} pullers | uplinks sent {:.2} GiB in {up_pkts} packets ({:.1} KiB each) | {:.0} context switches per GiB delivered |",
        up_bytes as f64 / (1u64 << 30) as f64,
        up_bytes as f64 / up_pkts.max(1) as f64 / 1024.0,
        sw as f64 / gib
    );
    let ideal = (mib << 20) as f64 * 8.0 / bits;
    println!(
        "| B2 | 1 holder, {pullers} pullers, {rate} caps, {mib} MiB | last puller done {:.2} s | size/cap {:.2} s | ratio {:.2} |",
        took.as_secs_f64(),
        ideal,
        took.as_secs_f64() / ideal
    );
    (took.as_secs_f64() / ideal, total / gib)
}

/// The median and the range of `v`.
fn spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    };
    (median, v[0], v[v.len() - 1])
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
        let pullers: Vec<usize> = std::env::var("MM_B2_PULLERS")
            .unwrap_or_else(|_| "3,7".into())
            .split(',')
            .map(|n| n.trim().parse().expect("MM_B2_PULLERS: numbers, e.g. 3,7"))
            .collect();
        // Runs next to each other on this machine differ by up to 0.05 of
        // the ratio: a target near the figure needs a median. In turn, so
        // that the machine's drift falls on every count alike.
        let runs = env_num("MM_B2_RUNS", 1).max(1) as usize;
        let mut got = vec![(Vec::new(), Vec::new()); pullers.len()];
        for _ in 0..runs {
            for (n, (ratios, cpus)) in pullers.iter().zip(&mut got) {
                let (ratio, cpu) = b2(*n);
                ratios.push(ratio);
                cpus.push(cpu);
            }
        }
        for (n, (ratios, cpus)) in pullers.iter().zip(&mut got).filter(|_| runs > 1) {
            let (r, r0, r1) = spread(ratios);
            let (c, c0, c1) = spread(cpus);
            println!(
                "| B2 median of {runs} | {n} pullers | ratio {r:.2} ({r0:.2}-{r1:.2}) | {c:.2} CPU-s per GiB ({c0:.2}-{c1:.2}) |"
            );
        }
    }
}
