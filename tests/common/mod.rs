//! Test harness: real `mm serve` processes, and a network-namespace lab of
//! simulated hosts. Everything a test starts is torn down on drop, also when
//! the test panics.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const MM: &str = env!("CARGO_BIN_EXE_mm");

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
/// Deadlines here bound waiting for liveness; they assert nothing about speed.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > limit {
            panic!("gave up after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub struct Node {
    pub name: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
    netns: Option<String>,
    base: Option<PathBuf>,
}

impl Node {
    /// A node on 127.0.0.1 with a free port and no mDNS (loopback tests must
    /// not multicast onto the machine's real network).
    pub fn local(name: &str, extra: &[&str]) -> Node {
        let mut args: Vec<String> = ["--listen", "127.0.0.1", "--port", "0", "--no-mdns"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::spawn(name, args, None)
    }

    /// A node inside a lab namespace, with default discovery.
    pub fn in_ns(name: &str, ns: &str, extra: &[&str]) -> Node {
        Node::spawn(
            name,
            extra.iter().map(|s| s.to_string()).collect(),
            Some(ns.to_string()),
        )
    }

    /// A node in a lab namespace whose base is `base` (which the caller
    /// owns; it is not removed).
    pub fn in_ns_with_base(name: &str, ns: &str, base: &Path, extra: &[&str]) -> Node {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Node::spawn_at(name, args, Some(ns.to_string()), Some(base.to_path_buf()))
    }

    fn spawn(name: &str, args: Vec<String>, netns: Option<String>) -> Node {
        Node::spawn_at(name, args, netns, None)
    }

    fn spawn_at(
        name: &str,
        args: Vec<String>,
        netns: Option<String>,
        base: Option<PathBuf>,
    ) -> Node {
        let dir = tempfile::Builder::new()
            .prefix(&format!("mm-{name}-"))
            .tempdir()
            .expect("temp dir");
        let mut n = Node {
            name: name.to_string(),
            dir,
            child: None,
            args,
            netns,
            base,
        };
        n.start();
        n
    }

    /// The node's base: its own temp dir unless the test chose one.
    pub fn base(&self) -> &Path {
        self.base.as_deref().unwrap_or(self.dir.path())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Per source, the chunks it gave this node's last finished transfer
    /// of `name` (from the log line `NAME: complete, ... in chunks from
    /// h1:5 h2:3 (bad 1), ...`).
    pub fn served_by(&self, name: &str) -> Vec<(String, u64)> {
        let log = self.log();
        let line = log
            .lines()
            .rfind(|l| l.contains(&format!("{name}: complete")))
            .unwrap_or_else(|| panic!("{} has no completion line for {name}", self.name));
        let list = line
            .split("in chunks from ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or_default();
        list.split_whitespace()
            .filter_map(|e| {
                let (h, c) = e.split_once(':')?;
                let c = c.split(|c: char| !c.is_ascii_digit()).next()?;
                Some((h.to_string(), c.parse().ok()?))
            })
            .collect()
    }

    /// (Re)starts the process with the same base and arguments.
    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log file");
        // MM_SERVE_BIN: another build of `mm` for the nodes, to compare two
        // versions on the same machine in the same hour (benchmarks).
        let bin = std::env::var("MM_SERVE_BIN").unwrap_or_else(|_| MM.to_string());
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &bin]);
                c
            }
            None => Command::new(&bin),
        };
        // If the test process dies (killed by a CI timeout), take the node
        // with it rather than leave it running.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.arg("serve")
            .arg("--base")
            .arg(self.base())
            .args(["--name", &self.name])
            .args(&self.args)
            .env(
                "RUST_LOG",
                // MM_LOG: more detail for a run, e.g. mm_store=trace.
                std::env::var("MM_LOG").unwrap_or_else(|_| {
                    "info,mm_overlay=debug,libp2p_gossipsub=warn,libp2p_mdns=warn".into()
                }),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("start mm serve"));
        let sock = self.base().join("mm.sock");
        wait_for(
            &format!("{} to answer", self.name),
            Duration::from_secs(30),
            || {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        panic!("{} exited at start ({st}):\n{}", self.name, self.log());
                    }
                }
                (sock.exists() && self.try_mm(&["version"]).status.success()).then_some(())
            },
        );
    }

    /// Stops the process: SIGTERM, or SIGKILL when `hard`.
    pub fn stop(&mut self, hard: bool) {
        if let Some(mut c) = self.child.take() {
            let sig = if hard { libc::SIGKILL } else { libc::SIGTERM };
            // SAFETY: signalling a child we own.
            unsafe { libc::kill(c.id() as i32, sig) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Resident memory of the node process, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn try_mm(&self, args: &[&str]) -> Output {
        Command::new(MM)
            .arg("--base")
            .arg(self.base())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run mm")
    }

    /// Runs a command, expecting success; returns stdout.
    pub fn mm(&self, args: &[&str]) -> String {
        let out = self.try_mm(args);
        assert!(
            out.status.success(),
            "{}: mm {} failed ({}): {}{}",
            self.name,
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command with `--json`, whatever its exit status.
    pub fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.try_mm(&full);
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: mm {} gave no JSON ({e}): {}{}",
                self.name,
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// A column of this node's `mesh status`.
    pub fn status(&self, col: &str) -> String {
        let v = self.json(&["mesh", "status"]);
        let header = v[0]["header"].as_array().expect("status header");
        let i = header
            .iter()
            .position(|h| h == col)
            .unwrap_or_else(|| panic!("no column {col}"));
        v[0]["tabular"][0][i].as_str().unwrap().to_string()
    }

    pub fn size(&self) -> usize {
        self.status("size").parse().unwrap()
    }

    pub fn port(&self) -> String {
        self.status("port")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    pub fn wait_size(&self, n: usize, limit: Duration) {
        wait_for(&format!("{} to see {n} nodes", self.name), limit, || {
            (self.size() == n).then_some(())
        });
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop(false);
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("---- log of {} (last lines) ----", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Runs a command that should end by itself, killing it after `limit`
/// (a regression must fail the test, not hang it or leave a node behind).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!(
        "{cmd:?} still running after {limit:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends SIGCONT on drop, so a test that stops a process never leaves it
/// stopped, even when an assertion fails in between.
pub struct Stopped(pub i32);

impl Stopped {
    pub fn new(pid: i32) -> Stopped {
        // SAFETY: plain kill(2) on a process the test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as above.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Rows of a tabular JSON answer as maps from column to value.
pub fn rows(answer: &[Value]) -> Vec<std::collections::HashMap<String, String>> {
    let mut out = Vec::new();
    for r in answer {
        let Some(header) = r["header"].as_array() else {
            continue;
        };
        for row in r["tabular"].as_array().into_iter().flatten() {
            let mut m = std::collections::HashMap::new();
            m.insert(
                "host".to_string(),
                r["host"].as_str().unwrap_or("").to_string(),
            );
            for (h, c) in header.iter().zip(row.as_array().unwrap()) {
                m.insert(
                    h.as_str().unwrap().to_string(),
                    c.as_str().unwrap().to_string(),
                );
            }
            out.push(m);
        }
    }
    out
}

static LAB_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Simulated hosts: network namespaces `<prefix>h<i>` with eth0 = 10.77.0.i/24
/// on a bridge inside `<prefix>sw`. Traffic stays inside these namespaces.
pub struct Lab {
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
    pub fn up(n: usize, rate: Option<&str>) -> Lab {
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

    pub fn ns(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn sw(&self) -> String {
        format!("{}sw", self.prefix)
    }

    pub fn ip(&self, i: usize) -> String {
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
