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
pub(crate) use lab::Lab;
pub(crate) use node::Node;

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
pub(crate) fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
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
