//! The KVM driver: one `qemu-system-x86_64` process per VM, started paused
//! (`-S`) and steered over its QMP socket. KVM where `/dev/kvm` works,
//! TCG where it does not (`accel=kvm:tcg`; `mm serve --accel` chooses). Each VM has a directory
//! `<base>/<namespace>/<id>/` with its QMP socket, serial log, stderr and
//! pid file.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{Config, Driver, Launched, NicState};
use crate::net::netspec::random_mac;
use crate::net::Net;
use crate::{Error, Result};

/// How long QEMU may take to open its QMP socket, and to answer on it.
const QMP_WAIT: Duration = Duration::from_secs(10);

struct Proc {
    child: Child,
    dir: PathBuf,
    namespace: String,
}

pub(crate) struct Qemu {
    base: PathBuf,
    binary: String,
    /// `-machine accel=`: `kvm:tcg` unless the node says otherwise.
    accel: String,
    procs: Mutex<HashMap<u64, Proc>>,
    /// Where the VMs' NICs get their taps.
    net: Arc<Net>,
}

impl Qemu {
    pub(crate) fn new(base: &Path, net: Arc<Net>) -> Qemu {
        Qemu {
            base: base.to_path_buf(),
            binary: "qemu-system-x86_64".into(),
            accel: "kvm:tcg".into(),
            procs: Mutex::new(HashMap::new()),
            net,
        }
    }

    /// With `-machine accel=ACCEL` (`mm serve --accel`).
    pub(crate) fn with_accel(mut self, accel: &str) -> Qemu {
        self.accel = accel.to_string();
        self
    }

    /// A tap for each of the config's NICs, on its bridge with its tag;
    /// none if one fails.
    fn taps(&self, namespace: &str, id: u64, name: &str, cfg: &Config) -> Result<Vec<NicState>> {
        cfg.check().map_err(|e| Error::Vm(format!("{name}: {e}")))?;
        for nic in &cfg.nics {
            nic.check().map_err(|e| Error::Vm(format!("{name}: {e}")))?;
        }
        let mut out = Vec::new();
        for nic in &cfg.nics {
            match self.net.add_vm_tap(namespace, id, nic) {
                Ok(tap) => out.push(NicState {
                    tap,
                    mac: nic.mac.clone().unwrap_or_else(random_mac),
                    bridge: nic.bridge.clone(),
                    vlan: Some(nic.vlan),
                    alias: nic.alias.clone(),
                    driver: nic.driver.clone(),
                    ip: String::new(),
                    ip6: String::new(),
                }),
                Err(e) => {
                    self.net.release_vm(namespace, id);
                    return Err(Error::Vm(format!("{name}: {e}")));
                }
            }
        }
        Ok(out)
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Proc>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dir(&self, id: u64) -> Result<PathBuf> {
        self.procs()
            .get(&id)
            .map(|p| p.dir.clone())
            .ok_or_else(|| Error::NotFound(format!("no process for vm {id}")))
    }

    /// One QMP command, after the handshake; its `return` value.
    pub(crate) fn qmp(&self, id: u64, command: &str) -> Result<serde_json::Value> {
        qmp_at(
            &self.dir(id)?.join("qmp.sock"),
            &format!("vm {id}"),
            command,
        )
    }

    /// Starts QEMU for a VM whose taps exist; its pid and accelerator.
    fn start(
        &self,
        namespace: &str,
        id: u64,
        name: &str,
        cfg: &Config,
        dir: &Path,
        nics: &[NicState],
    ) -> Result<(u32, String)> {
        let sock = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&sock);
        let stderr = std::fs::File::create(dir.join("stderr.log"))
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(["-S", "-nodefaults", "-nographic", "-display", "none"])
            .arg("-machine")
            .arg(match &cfg.machine {
                Some(m) => format!("type={m},accel={}", self.accel),
                None => format!("accel={}", self.accel),
            })
            .args(["-name", name])
            .args(["-m", &cfg.memory_mib.to_string()])
            .args(["-smp", &cfg.vcpus.to_string()])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .arg("-serial")
            .arg(format!("file:{}", dir.join("serial.log").display()))
            .arg("-pidfile")
            .arg(dir.join("pid"));
        if let Some(u) = &cfg.uuid {
            cmd.args(["-uuid", u]);
        }
        if let Some(c) = &cfg.cpu {
            cmd.args(["-cpu", c]);
        }
        let (snap, cache) = if cfg.snapshot {
            ("on", "unsafe")
        } else {
            ("off", "writeback")
        };
        let mut ahci = 0;
        for d in &cfg.disks {
            let tail = format!(
                "file={},cache={},snapshot={snap}",
                qemu_opt(&d.path),
                d.cache.as_deref().unwrap_or(cache)
            );
            // QEMU has no `if=ahci`: a controller, and a disk on each of
            // its ports, as minimega makes them.
            if d.interface.as_deref() == Some("ahci") {
                if ahci == 0 {
                    cmd.args(["-device", "ahci,id=ahci"]);
                }
                cmd.arg("-device")
                    .arg(format!("ide-hd,drive=ahci-drive-{ahci},bus=ahci.{ahci}"));
                cmd.arg("-drive")
                    .arg(format!("id=ahci-drive-{ahci},if=none,{tail}"));
                ahci += 1;
                continue;
            }
            let iface = d.interface.as_deref().unwrap_or("ide");
            cmd.arg("-drive").arg(format!("if={iface},{tail}"));
        }
        if let Some(c) = &cfg.cdrom {
            cmd.arg("-drive")
                .arg(format!("file={},media=cdrom", qemu_opt(c)));
        }
        if let Some(k) = &cfg.kernel {
            cmd.arg("-kernel").arg(k);
        }
        if let Some(i) = &cfg.initrd {
            cmd.arg("-initrd").arg(i);
        }
        if !cfg.append.is_empty() {
            cmd.arg("-append").arg(cfg.append.join(" "));
        }
        for (i, n) in nics.iter().enumerate() {
            // The tap exists and is on its bridge: QEMU only opens it.
            cmd.arg("-netdev").arg(format!(
                "tap,id=nic{i},ifname={},script=no,downscript=no",
                n.tap
            ));
            cmd.arg("-device")
                .arg(format!("{},netdev=nic{i},mac={}", n.driver, n.mac));
        }
        // Last, as minimega puts them, so they can add to all of the above.
        cmd.args(&cfg.qemu_append);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| Error::io(format!("cannot run {}", self.binary), e))?;
        // QEMU makes the socket file a moment before it listens on it, and
        // opens it before it reads the rest of its command line (a missing
        // disk fails after): it has started once it answers, so ask until
        // it does, it exits, or the wait runs out.
        let start = Instant::now();
        while let Err(e) = qmp_at(&sock, name, "query-status") {
            if let Ok(Some(st)) = child.try_wait() {
                let why = format!("{name}: qemu exited at start ({st}): {}", last_words(dir));
                return Err(Error::Vm(why));
            }
            if start.elapsed() > QMP_WAIT {
                let _ = child.kill();
                let _ = child.wait();
                let why = format!("{name}: qemu did not answer on QMP within {QMP_WAIT:?} ({e})");
                return Err(Error::Vm(why));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = child.id();
        let accel = match qmp_at(&sock, name, "query-kvm") {
            Ok(v) if v["enabled"] == true => "kvm",
            _ => "tcg",
        };
        self.procs().insert(
            id,
            Proc {
                child,
                dir: dir.to_path_buf(),
                namespace: namespace.to_string(),
            },
        );
        Ok((pid, accel.into()))
    }

    #[cfg(test)]
    /// QEMU's own word on the VM: `prelaunch`, `running`, `paused`, ...
    pub(crate) fn status(&self, id: u64) -> Result<String> {
        let v = self.qmp(id, "query-status")?;
        Ok(v["status"].as_str().unwrap_or_default().to_string())
    }

    #[cfg(test)]
    /// `kvm` or `tcg`, as QEMU reports it.
    pub(crate) fn accel(&self, id: u64) -> Result<&'static str> {
        let v = self.qmp(id, "query-kvm")?;
        Ok(if v["enabled"] == true { "kvm" } else { "tcg" })
    }
}

impl Driver for Qemu {
    fn launch(&self, namespace: &str, id: u64, name: &str, cfg: &Config) -> Result<Launched> {
        let dir = self.base.join(namespace).join(id.to_string());
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
        let nics = match self.taps(namespace, id, name, cfg) {
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir(self.base.join(namespace));
                return Err(e);
            }
        };
        match self.start(namespace, id, name, cfg, &dir, &nics) {
            Ok((pid, accel)) => Ok(Launched { pid, accel, nics }),
            Err(e) => {
                self.net.release_vm(namespace, id);
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn resume(&self, id: u64) -> Result<()> {
        self.qmp(id, "cont").map(|_| ())
    }

    fn pause(&self, id: u64) -> Result<()> {
        self.qmp(id, "stop").map(|_| ())
    }

    fn kill(&self, id: u64) -> Result<()> {
        let _ = self.qmp(id, "quit");
        let Some(mut p) = self.procs().remove(&id) else {
            return Ok(());
        };
        let start = Instant::now();
        let mut ended = false;
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = p.child.try_wait() {
                ended = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !ended {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        self.net.release_vm(&p.namespace, id);
        Ok(())
    }

    fn reap(&self, namespace: &str, id: u64, pid: u32) -> Option<u32> {
        // Only a process whose command line names this VM's own socket:
        // the pid may have been reused by anything since.
        let dir = self.base.join(namespace).join(id.to_string());
        let sock = dir.join("qmp.sock");
        // A node killed as it launched kept the VM but not yet its pid
        // (0): QEMU's own pid file names it.
        let written = std::fs::read_to_string(dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        for pid in [pid].into_iter().chain(written).filter(|p| *p > 1) {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                continue;
            };
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.contains(&*sock.to_string_lossy()) {
                tracing::warn!(
                    "killing vm {id}'s qemu (pid {pid}), left running by a node that was killed"
                );
                // SAFETY: kill(2) on a pid whose command line was just checked.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                return Some(pid);
            }
        }
        None
    }

    fn forget(&self, namespace: &str, id: u64) {
        self.procs().remove(&id);
        self.net.release_vm(namespace, id);
        // The namespace is a checked name and the id a number: this is
        // always a directory beneath the base.
        let ns_dir = self.base.join(namespace);
        let dir = ns_dir.join(id.to_string());
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", dir.display());
            }
        }
        // The namespace's directory goes with its last VM.
        let _ = std::fs::remove_dir(&ns_dir);
    }

    fn died(&self, id: u64) -> Option<String> {
        let mut procs = self.procs();
        let p = procs.get_mut(&id)?;
        let st = p.child.try_wait().ok()??;
        let words = last_words(&p.dir);
        Some(if words.is_empty() {
            format!("qemu exited ({st})")
        } else {
            format!("qemu exited ({st}): {words}")
        })
    }
}

/// A value inside a `-drive` option: commas are doubled, as QEMU reads
/// them.
fn qemu_opt(v: &str) -> String {
    v.replace(',', ",,")
}

impl Drop for Qemu {
    /// A node that stops takes its VMs with it.
    fn drop(&mut self) {
        for (_, mut p) in self.procs().drain() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// One QMP command on the socket at `sock`, after the handshake.
/// `vm` names the VM in errors.
fn qmp_at(sock: &Path, vm: &str, command: &str) -> Result<serde_json::Value> {
    let io = |e: std::io::Error| Error::io(format!("QMP of {vm} ({})", sock.display()), e);
    let s = UnixStream::connect(sock).map_err(io)?;
    s.set_read_timeout(Some(QMP_WAIT)).map_err(io)?;
    let mut w = s.try_clone().map_err(io)?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(io)?; // the greeting
    let mut ask = |cmd: &str| -> Result<serde_json::Value> {
        writeln!(w, "{{\"execute\":\"{cmd}\"}}").map_err(io)?;
        loop {
            line.clear();
            if r.read_line(&mut line).map_err(io)? == 0 {
                // `quit` closes the socket before or after its answer.
                return Ok(serde_json::Value::Null);
            }
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| Error::Vm(format!("QMP of {vm}: {e}: {}", line.trim())))?;
            if let Some(ret) = v.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = v.get("error") {
                return Err(Error::Vm(format!("QMP {cmd} on {vm}: {err}")));
            }
            // An event: not the answer.
        }
    };
    ask("qmp_capabilities")?;
    ask(command)
}

/// The end of what QEMU wrote to stderr, on one line.
fn last_words(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{Op, State, Target, Vms};
    use super::*;

    /// Real QEMU under a temporary base, with fake networking.
    struct Rig {
        dir: tempfile::TempDir,
        q: Arc<Qemu>,
        vms: Vms,
        _keep: (
            Arc<crate::net::os::Fake>,
            tempfile::TempDir,
            tempfile::TempDir,
        ),
    }

    fn rig(accel: &str) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (net, os, netdb) = crate::net::fake();
        let q = Arc::new(Qemu::new(dir.path(), net).with_accel(accel));
        let (db, meta) = super::super::temp_meta();
        let vms = Vms::open(q.clone(), meta);
        Rig {
            dir,
            q,
            vms,
            _keep: (os, netdb, db),
        }
    }

    fn tiny() -> Config {
        Config {
            memory_mib: 32,
            ..Config::default()
        }
    }

    /// Real QEMU processes (CI installs qemu-system-x86): the states the
    /// node keeps are the ones QEMU reports.
    #[test]
    fn real_qemu_vms_follow_the_state_machine() {
        let Rig { dir, q, vms, .. } = &rig("kvm:tcg");
        let batch = vec![("a".to_string(), tiny()), ("b".to_string(), tiny())];
        vms.launch("foo", &batch).unwrap();
        let info = vms.info("foo");
        assert!(info.iter().all(|v| v.state == State::Building));
        let (a, b) = (info[0].id, info[1].id);
        assert_eq!(q.status(a).unwrap(), "prelaunch");
        assert_eq!(q.accel(a).unwrap(), info[0].accel);
        assert!(dir.path().join(format!("foo/{a}/pid")).exists());
        vms.act("foo", Op::Start, &Target::All);
        assert_eq!(q.status(a).unwrap(), "running");
        vms.act("foo", Op::Stop, &Target::Names(vec!["a".to_string()]));
        assert_eq!(q.status(a).unwrap(), "paused");
        // A process that dies on its own shows as ERROR.
        let pid = info[1].pid as i32;
        // SAFETY: kill(2) on a child this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let b_state = (0..100)
            .find_map(|_| {
                let v = vms.info("foo").into_iter().find(|v| v.id == b)?;
                if v.state == State::Error {
                    return Some(v);
                }
                std::thread::sleep(Duration::from_millis(50));
                None
            })
            .expect("b never showed as ERROR");
        assert!(b_state.error.contains("qemu exited"), "{}", b_state.error);
        vms.act("foo", Op::Kill, &Target::All);
        let gone = (0..100).any(|_| {
            // SAFETY: signal 0 only asks whether the process exists.
            let alive = unsafe { libc::kill(info[0].pid as i32, 0) } == 0;
            if alive {
                std::thread::sleep(Duration::from_millis(50));
            }
            !alive
        });
        assert!(gone, "a's qemu outlived vm kill");
        assert_eq!(vms.flush("foo"), 2);
        assert!(!dir.path().join("foo").exists(), "flushed VMs left files");
    }

    /// `mm serve --accel tcg`, for hosts whose KVM hangs guests: QEMU
    /// runs TCG even where /dev/kvm opens.
    #[test]
    fn the_accelerator_is_the_nodes_choice() {
        let Rig { vms, .. } = &rig("tcg");
        vms.launch("foo", &[("a".to_string(), tiny())]).unwrap();
        let info = vms.info("foo");
        assert_eq!(info[0].accel, "tcg");
        vms.kill_all();
        assert_eq!(vms.flush("foo"), 1);
    }

    /// `vm config cpu`, `machine`, `qemu-append` and several disks reach
    /// QEMU's command line, and QEMU takes them.
    #[test]
    fn cpu_machine_disks_and_qemu_append_reach_qemu() {
        let Rig { dir, q, vms, .. } = &rig("kvm:tcg");
        let disk = |n: &str, spec: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
            crate::vm::config::Disk::parse(&format!("{}{spec}", p.display()), None).unwrap()
        };
        let cfg = Config {
            disks: vec![
                disk("a.img", ",virtio"),
                disk("b.img", ",writethrough"),
                disk("c.img", ",ahci"),
                disk("d.img", ",ahci,none"),
            ],
            cpu: Some("qemu64,+ssse3".into()),
            machine: Some("q35".into()),
            qemu_append: vec!["-vga".into(), "std".into()],
            ..tiny()
        };
        vms.launch("foo", &[("a".to_string(), cfg)]).unwrap();
        let v = &vms.info("foo")[0];
        assert_eq!(q.status(v.id).unwrap(), "prelaunch");
        let argv = std::fs::read(format!("/proc/{}/cmdline", v.pid)).unwrap();
        let argv: Vec<String> = argv
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let has = |a: &str, b: &str| argv.windows(2).any(|w| w[0] == a && w[1] == b);
        assert!(has("-cpu", "qemu64,+ssse3"), "{argv:?}");
        // The disks in order; AHCI's on a controller, a port each.
        let want: Vec<String> = [
            ("a.img", "if=virtio,", "unsafe"),
            ("b.img", "if=ide,", "writethrough"),
            ("c.img", "id=ahci-drive-0,if=none,", "unsafe"),
            ("d.img", "id=ahci-drive-1,if=none,", "none"),
        ]
        .iter()
        .map(|(f, pre, cache)| {
            let p = dir.path().join(f);
            format!("{pre}file={},cache={cache},snapshot=on", p.display())
        })
        .collect();
        let drives: Vec<&String> = argv
            .windows(2)
            .filter(|w| w[0] == "-drive")
            .map(|w| &w[1])
            .collect();
        assert_eq!(drives, want.iter().collect::<Vec<_>>());
        for d in ["ahci,id=ahci", "ide-hd,drive=ahci-drive-1,bus=ahci.1"] {
            assert!(has("-device", d), "{argv:?}");
        }
        assert!(has("-machine", "type=q35,accel=kvm:tcg"), "{argv:?}");
        assert_eq!(argv[argv.len() - 3..argv.len() - 1], ["-vga", "std"]);
        vms.kill_all();
        assert_eq!(vms.flush("foo"), 1);
    }

    /// A node killed as it launched kept no pid: QEMU's pid file names
    /// the process, ended only if its command line names the VM's socket.
    #[test]
    fn a_leftover_process_is_found_by_its_pid_file() {
        let dir = tempfile::tempdir().unwrap();
        let (net, _os, _netdb) = crate::net::fake();
        let q = Qemu::new(dir.path(), net);
        let vm = dir.path().join("foo/7");
        std::fs::create_dir_all(&vm).unwrap();
        let spawn = |arg: &Path| {
            let c = std::process::Command::new("sh")
                .args(["-c", "while :; do sleep 0.1; done"])
                .arg(arg)
                .spawn()
                .unwrap();
            // spawn can return before the child's exec is done: until then
            // its command line is this test's (or empty), as a real QEMU's
            // long since started never is.
            let cmdline = format!("/proc/{}/cmdline", c.id());
            let arg = arg.to_string_lossy().into_owned();
            while !String::from_utf8_lossy(&std::fs::read(&cmdline).unwrap()).contains(&arg) {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            c
        };
        let mut other = spawn(&dir.path().join("foo/8/qmp.sock"));
        let mut ours = spawn(&vm.join("qmp.sock"));
        std::fs::write(vm.join("pid"), format!("{}\n", other.id())).unwrap();
        assert_eq!(q.reap("foo", 7, 0), None);
        assert!(other.try_wait().unwrap().is_none(), "another VM's ended");
        std::fs::write(vm.join("pid"), format!("{}\n", ours.id())).unwrap();
        assert_eq!(q.reap("foo", 7, 0), Some(ours.id()));
        assert!(ours.wait().unwrap().code().is_none(), "not killed");
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[test]
    fn a_qemu_that_cannot_start_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, meta) = super::super::temp_meta();
        let (net, _os, _netdb) = crate::net::fake();
        let vms = Vms::open(Arc::new(Qemu::new(dir.path(), net)), meta);
        let cfg = Config {
            disks: vec![crate::vm::config::Disk {
                path: "/nonexistent/disk.qcow2".into(),
                interface: None,
                cache: None,
            }],
            ..tiny()
        };
        let e = vms
            .launch("foo", &[("a".to_string(), cfg)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("qemu exited at start") && e.contains("disk.qcow2"),
            "{e}"
        );
        assert!(vms.info("foo").is_empty());
    }
}
