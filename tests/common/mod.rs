//! Test harness: real `mm serve` processes (`node.rs`), and a
//! network-namespace lab of simulated hosts (`lab.rs`). Everything a test
//! starts is torn down on drop, also when the test panics.
#![allow(dead_code)]

mod lab;
mod node;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[allow(unused_imports)]
pub(crate) use lab::{Lab, Opts};
#[allow(unused_imports)]
pub(crate) use node::{cluster_key, overlay_links, Node};

pub(crate) const MM: &str = env!("CARGO_BIN_EXE_mm");

/// Polls `f` until it returns `Some`, or panics with `what` after `limit`.
/// Deadlines here bound waiting for liveness; they assert nothing about speed.
pub(crate) fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
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

/// Runs a command that should end by itself, killing it after `limit`
/// (a regression must fail the test, not hang it or leave a node behind).
/// Its output is read while it runs, so a long answer cannot block it.
pub(crate) fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if start.elapsed() > limit {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        let stderr = err.join().unwrap_or_default();
        panic!(
            "{cmd:?} still running after {limit:?}: {}",
            String::from_utf8_lossy(&stderr)
        );
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A temporary directory named after this test process (`mm-PID-what-*`),
/// removed on drop. Those of test processes that were killed (and so
/// could not clean up) are removed first, with any file system still
/// mounted in them.
pub(crate) fn scratch_dir(what: &str) -> tempfile::TempDir {
    static REAPED: std::sync::Once = std::sync::Once::new();
    REAPED.call_once(reap_stale_dirs);
    tempfile::Builder::new()
        .prefix(&format!("mm-{}-{what}-", std::process::id()))
        .tempdir()
        .expect("temp dir")
}

fn reap_stale_dirs() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else {
        return;
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("mm-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let dir = e.path();
        // Deepest first: a mount inside another.
        let mut inside: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| std::path::Path::new(m).starts_with(&dir))
            .collect();
        inside.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in inside {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Sends SIGCONT on drop, so a test that stops a process never leaves it
/// stopped, even when an assertion fails in between.
pub(crate) struct Stopped(pub i32);

impl Stopped {
    pub(crate) fn new(pid: i32) -> Stopped {
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
pub(crate) fn rows(answer: &[Value]) -> Vec<std::collections::HashMap<String, String>> {
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
