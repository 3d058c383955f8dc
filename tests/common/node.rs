//! Real `mm serve` processes: started, stopped, asked, and torn down on
//! drop, also when the test panics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{rows, run_bounded, scratch_dir, wait_for, MM};

/// No single `mm` call of a test takes longer than this: a regression that
/// hangs fails the test instead of the whole suite.
const CALL_LIMIT: Duration = Duration::from_secs(300);

pub(crate) struct Node {
    pub name: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    args: Vec<String>,
    netns: Option<String>,
    base: Option<PathBuf>,
}

/// The arguments, with the test process's cluster key added where the
/// test did not choose.
fn keyed(extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = extra
        .iter()
        .filter(|a| **a != "--no-key")
        .map(|s| s.to_string())
        .collect();
    let chose = extra
        .iter()
        .any(|a| matches!(*a, "--psk-file" | "--insecure" | "--no-key"));
    if !chose {
        args.push("--psk-file".into());
        args.push(cluster_key().display().to_string());
    }
    args
}

/// One cluster key for every lab node of this test process (`mm keygen`).
pub(crate) fn cluster_key() -> PathBuf {
    static KEY: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let dir = scratch_dir("key");
        let out = Command::new(MM).arg("keygen").output().expect("mm keygen");
        assert!(out.status.success(), "mm keygen failed");
        let path = dir.path().join("cluster.key");
        std::fs::write(&path, &out.stdout).expect("write the key");
        // As an operator should keep it: a node warns about a key that
        // others can read.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod the key");
        (dir, path)
    })
    .1
    .clone()
}

impl Node {
    /// A node on 127.0.0.1 with a free port and no mDNS (loopback tests must
    /// not multicast onto the machine's real network).
    pub(crate) fn local(name: &str, extra: &[&str]) -> Node {
        let mut args: Vec<String> = ["--listen", "127.0.0.1", "--port", "0", "--no-mdns"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::spawn(name, args, None)
    }

    /// A node inside a lab namespace, with default discovery.
    /// A node inside a lab namespace, with default discovery and this test
    /// process's cluster key (unless `extra` names a key or `--insecure`,
    /// or asks for none with `--no-key`).
    pub(crate) fn in_ns(name: &str, ns: &str, extra: &[&str]) -> Node {
        Node::spawn(name, keyed(extra), Some(ns.to_string()))
    }

    /// A node in a lab namespace whose base is `base` (which the caller
    /// owns; it is not removed).
    pub(crate) fn in_ns_with_base(name: &str, ns: &str, base: &Path, extra: &[&str]) -> Node {
        Node::spawn_at(
            name,
            keyed(extra),
            Some(ns.to_string()),
            Some(base.to_path_buf()),
        )
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
        let dir = scratch_dir(name);
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
    pub(crate) fn base(&self) -> &Path {
        self.base.as_deref().unwrap_or(self.dir.path())
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.path().join("node.log")
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Per source, the chunks it gave this node's last finished transfer
    /// of `name`, from `file status all` (whose `sources` cell reads
    /// `h1:5, h2:3 (bad 1)`; older builds: `h1:5 h2:3(bad 1)`). A node of an older build (`MM_SERVE_BIN`) has
    /// no `all`; its completion line in the log says the same.
    pub(crate) fn served_by(&self, name: &str) -> Vec<(String, u64)> {
        let out = self.try_mm(&["--json", "file", "status", "all"]);
        let cell = if out.status.success() {
            // The row is kept a moment after the file is in place.
            wait_for(
                &format!("{}'s finished transfer of {name}", self.name),
                Duration::from_secs(30),
                || {
                    let v = self.json(&["file", "status", "all"]);
                    rows(&v)
                        .into_iter()
                        .rfind(|r| r["filename"] == name && r["state"] == "done")
                        .map(|r| r["sources"].clone())
                },
            )
        } else {
            let log = self.log();
            let line = log
                .lines()
                .rfind(|l| l.contains(&format!("{name}: complete")))
                .unwrap_or_else(|| panic!("{} has no completion line for {name}", self.name));
            line.split("in chunks from ")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .unwrap_or_default()
                .to_string()
        };
        cell.split_whitespace()
            .filter_map(|e| {
                let (h, c) = e.split_once(':')?;
                let c = c.split(|c: char| !c.is_ascii_digit()).next()?;
                Some((h.to_string(), c.parse().ok()?))
            })
            .collect()
    }

    /// (Re)starts the process with the same base and arguments.
    pub(crate) fn start(&mut self) {
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
                    "info,mm_overlay=debug,mm_store::transfer::serve=debug,\
                     libp2p_gossipsub=warn,libp2p_mdns=warn"
                        .into()
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
    pub(crate) fn stop(&mut self, hard: bool) {
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

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Resident memory of the node process, in KiB.
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    pub(crate) fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Runs `mm` against this node, whatever its exit status (killed and
    /// failed after [`CALL_LIMIT`]).
    pub(crate) fn try_mm(&self, args: &[&str]) -> Output {
        run_bounded(
            Command::new(MM).arg("--base").arg(self.base()).args(args),
            CALL_LIMIT,
        )
    }

    /// Runs a command, expecting success; returns stdout.
    pub(crate) fn mm(&self, args: &[&str]) -> String {
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
    pub(crate) fn json(&self, args: &[&str]) -> Vec<Value> {
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
    pub(crate) fn status(&self, col: &str) -> String {
        let v = self.json(&["mesh", "status"]);
        let header = v[0]["header"].as_array().expect("status header");
        let i = header
            .iter()
            .position(|h| h == col)
            .unwrap_or_else(|| panic!("no column {col}"));
        v[0]["tabular"][0][i].as_str().unwrap().to_string()
    }

    pub(crate) fn size(&self) -> usize {
        self.status("size").parse().unwrap()
    }

    pub(crate) fn port(&self) -> String {
        self.status("port")
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    pub(crate) fn wait_size(&self, n: usize, limit: Duration) {
        wait_for(&format!("{} to see {n} nodes", self.name), limit, || {
            (self.size() == n).then_some(())
        });
    }
}

impl Drop for Node {
    /// Stops the node. After a failure, keeps its log where the message
    /// says and shows its end. Never panics: a panic in a drop during a
    /// panic aborts the test process, and the rest of its teardown (lab
    /// namespaces, other nodes) would not run. Hence no `eprintln!`, which
    /// panics when stderr is closed.
    fn drop(&mut self) {
        use std::io::Write;
        self.stop(false);
        if !std::thread::panicking() {
            return;
        }
        let kept = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("failed")
            .join(format!(
                "{}.log",
                self.dir
                    .path()
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
            ));
        let copied = std::fs::create_dir_all(kept.parent().unwrap_or(Path::new(".")))
            .and_then(|_| std::fs::copy(self.log_path(), &kept));
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let mut err = std::io::stderr().lock();
        let _ = match copied {
            Ok(_) => writeln!(
                err,
                "---- log of {} kept in {} ----",
                self.name,
                kept.display()
            ),
            Err(e) => writeln!(err, "---- log of {} (not kept: {e}) ----", self.name),
        };
        for l in tail.iter().rev() {
            let _ = writeln!(err, "{l}");
        }
    }
}

/// Established TCP connections between the overlay ports of `nodes` (all
/// in this network namespace), per pair of node names: read from
/// /proc/net/tcp and each node process's descriptors, not from what the
/// nodes say. Data channel connections are not counted.
pub(crate) fn overlay_links(
    nodes: &[&Node],
) -> std::collections::BTreeMap<(String, String), usize> {
    use std::collections::{BTreeMap, HashMap};
    // inode -> (local port, remote port), established only.
    let mut socks: HashMap<u64, (u16, u16)> = HashMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" {
                continue;
            }
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or(""), 16).ok();
            if let (Some(l), Some(r), Ok(ino)) = (port(f[1]), port(f[2]), f[9].parse()) {
                socks.insert(ino, (l, r));
            }
        }
    }
    // Per node: its name, its overlay port, and the (local, remote) ports
    // of its sockets.
    type Ends = (String, u16, Vec<(u16, u16)>);
    let mut ends: Vec<Ends> = Vec::new();
    for n in nodes {
        let port: u16 = n.port().parse().expect("a port");
        let pid = n.pid().expect("a running node");
        let mut mine = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            let link = link.to_string_lossy();
            if let Some(ino) = link
                .strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|i| i.parse::<u64>().ok())
            {
                // A socket may sit behind several descriptors.
                if seen.insert(ino) {
                    mine.extend(socks.get(&ino).copied());
                }
            }
        }
        ends.push((n.name.clone(), port, mine));
    }
    // Each connection once: from the side whose name sorts first. One end
    // is an overlay port (libp2p dials from its listening port, so often
    // both are).
    let mut links = BTreeMap::new();
    for (x, xport, xs) in &ends {
        for (y, yport, ys) in &ends {
            if x >= y {
                continue;
            }
            let n = xs
                .iter()
                .filter(|(l, r)| (l == xport || r == yport) && ys.contains(&(*r, *l)))
                .count();
            if n > 0 {
                links.insert((x.clone(), y.clone()), n);
            }
        }
    }
    links
}
