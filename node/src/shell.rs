//! Host commands (issue 11): `shell` runs one and waits for its output;
//! `background` starts one and returns at once, and keeps it listed until
//! it is cleared. The program runs directly, not through `sh`, as in
//! minimega: its words are its arguments.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncReadExt;

use crate::{Error, Result};

/// Most output a `shell` answer carries, each of stdout and stderr: an
/// answer crosses the mesh, whose messages are bounded.
pub(crate) const MAX_OUTPUT: usize = 512 << 10;

/// What a `shell` command did.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) stdout: String,
    pub(crate) stderr: String,
    /// None: killed by a signal.
    pub(crate) code: Option<i32>,
}

fn spawn_error(argv: &[String], e: std::io::Error) -> Error {
    Error::io(format!("cannot run {}", argv[0]), e)
}

/// Reads at most [`MAX_OUTPUT`] bytes, and says when there was more.
async fn bounded(r: Option<impl tokio::io::AsyncRead + Unpin>) -> String {
    let Some(r) = r else {
        return String::new();
    };
    let mut buf = Vec::new();
    let mut r = r.take(MAX_OUTPUT as u64 + 1);
    let _ = r.read_to_end(&mut buf).await;
    let cut = buf.len() > MAX_OUTPUT;
    buf.truncate(MAX_OUTPUT);
    let mut s = String::from_utf8_lossy(&buf).into_owned();
    if cut {
        s.push_str("\n(output cut at 512 KiB)");
        // The rest is drained so the program is not blocked writing it.
        let mut rest = r.into_inner();
        let _ = tokio::io::copy(&mut rest, &mut tokio::io::sink()).await;
    }
    s
}

/// Runs `argv` and waits for it. The process is killed if the answer is
/// no longer wanted (the request was dropped).
pub(crate) async fn run(argv: &[String]) -> Result<Ran> {
    let mut child = tokio::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| spawn_error(argv, e))?;
    let (stdout, stderr) = tokio::join!(bounded(child.stdout.take()), bounded(child.stderr.take()));
    let status = child.wait().await.map_err(|e| spawn_error(argv, e))?;
    Ok(Ran {
        stdout,
        stderr,
        code: status.code(),
    })
}

struct Proc {
    child: std::process::Child,
    command: String,
    started: u64,
    /// How it ended, once it has.
    ended: Option<String>,
}

/// The `background` processes of this node.
#[derive(Default)]
pub(crate) struct Background {
    st: Mutex<(u64, BTreeMap<u64, Proc>)>,
}

/// One row of the `background` listing.
pub(crate) struct Listed {
    pub(crate) id: u64,
    pub(crate) pid: u32,
    pub(crate) state: String,
    pub(crate) started: u64,
    pub(crate) command: String,
}

impl Background {
    fn st(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, Proc>)> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `argv`, its output discarded; returns its id and pid.
    pub(crate) fn start(&self, argv: &[String]) -> Result<(u64, u32)> {
        let child = std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| spawn_error(argv, e))?;
        let pid = child.id();
        let mut st = self.st();
        st.0 += 1;
        let id = st.0;
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        st.1.insert(
            id,
            Proc {
                child,
                command: argv.join(" "),
                started,
                ended: None,
            },
        );
        Ok((id, pid))
    }

    pub(crate) fn list(&self) -> Vec<Listed> {
        let mut st = self.st();
        st.1.iter_mut()
            .map(|(id, p)| {
                if p.ended.is_none() {
                    if let Ok(Some(s)) = p.child.try_wait() {
                        p.ended = Some(s.to_string());
                    }
                }
                Listed {
                    id: *id,
                    pid: p.child.id(),
                    state: p.ended.clone().unwrap_or_else(|| "running".into()),
                    started: p.started,
                    command: p.command.clone(),
                }
            })
            .collect()
    }

    /// Kills (if it still runs) and forgets one process, or all of them.
    pub(crate) fn clear(&self, id: Option<u64>) -> Result<usize> {
        let mut st = self.st();
        let ids: Vec<u64> = match id {
            Some(i) if st.1.contains_key(&i) => vec![i],
            Some(i) => return Err(Error::NotFound(format!("no background process {i}"))),
            None => st.1.keys().copied().collect(),
        };
        for i in &ids {
            if let Some(mut p) = st.1.remove(i) {
                let _ = p.child.kill();
                let _ = p.child.wait();
            }
        }
        Ok(ids.len())
    }

    /// On the node's way down.
    pub(crate) fn kill_all(&self) {
        let _ = self.clear(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[tokio::test]
    async fn shell_returns_output_and_status_and_bounds_them() {
        let r = run(&a("echo hello world")).await.unwrap();
        assert_eq!((r.stdout.as_str(), r.code), ("hello world\n", Some(0)));
        let r = run(&a("ls /nonexistent-dir")).await.unwrap();
        assert!(
            r.code != Some(0) && r.stderr.contains("nonexistent"),
            "{r:?}"
        );
        let e = run(&a("no-such-program-here")).await.unwrap_err();
        assert!(
            e.to_string().contains("cannot run no-such-program-here"),
            "{e}"
        );
        let r = run(&a("head -c 2000000 /dev/zero")).await.unwrap();
        assert!(r.stdout.len() < MAX_OUTPUT + 100 && r.stdout.ends_with("(output cut at 512 KiB)"));
        assert_eq!(r.code, Some(0));
    }

    #[test]
    fn background_processes_are_listed_and_cleared() {
        let b = Background::default();
        let (id, pid) = b.start(&a("sleep 30")).unwrap();
        b.start(&a("true")).unwrap();
        let l = b.list();
        assert_eq!(
            (l[0].id, l[0].pid, l[0].state.as_str()),
            (id, pid, "running")
        );
        assert_eq!(l[0].command, "sleep 30");
        assert!(b.clear(Some(99)).is_err());
        assert_eq!(b.clear(Some(id)).unwrap(), 1);
        // SAFETY: signal 0 only asks whether the process exists (it was
        // waited for, so it is not a zombie).
        assert_ne!(unsafe { libc::kill(pid as i32, 0) }, 0, "sleep survived");
        assert_eq!(b.list().len(), 1);
        b.kill_all();
        assert!(b.list().is_empty());
    }
}
