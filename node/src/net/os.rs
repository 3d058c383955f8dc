//! The edge to the kernel and Open vSwitch: `ovs-vsctl` and `ip`, behind
//! one trait, so the bridge logic is tested with a recording fake and no
//! root. The real one runs the programs, bounded in time.

use std::path::Path;
use std::process::{Command, Stdio};
#[cfg(test)]
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// What the bridge logic asks of the system.
pub(crate) trait Os: Send + Sync {
    /// `ovs-vsctl ARGS` against the node's OVS database; its stdout.
    fn vsctl(&self, args: &[&str]) -> Result<String>;
    /// `ip ARGS`; its stdout.
    fn ip(&self, args: &[&str]) -> Result<String>;
    /// Whether a network device of this name exists here.
    fn has_dev(&self, name: &str) -> bool;
    /// Asks DHCP for an address on `dev`; a client stays to renew it.
    fn dhcp(&self, dev: &str) -> Result<()>;
    /// Stops the DHCP client of `dev`.
    fn dhcp_stop(&self, dev: &str);
    /// `ovs-ofctl ARGS` against `bridge` (its name is the last argument
    /// but one: `add-flow BRIDGE FLOW`).
    fn ofctl(&self, verb: &str, bridge: &str, arg: &str) -> Result<()>;
    /// Whether bridges' frames can be read here (not in the fake).
    fn packets(&self) -> bool {
        true
    }
}

/// How long one `ovs-vsctl` may wait for the database and for
/// ovs-vswitchd to apply a change.
const VSCTL_TIMEOUT: u32 = 10;

/// How to start OVS, for the errors that say it is not running.
const START_OVS: &str = "start it (`systemctl start openvswitch-switch`, or \
     `/usr/share/openvswitch/scripts/ovs-ctl start`), or point `mm serve --ovs-db unix:PATH` at \
     the socket of one that runs";

/// The real system.
pub(crate) struct Real {
    /// `--db=` for ovs-vsctl; None: the system's.
    db: Option<String>,
}

impl Real {
    pub(crate) fn new(db: Option<String>) -> Real {
        Real { db }
    }
}

/// Runs `prog args`, killed after `limit`; (success, stdout, stderr).
fn run(prog: &str, args: &[&str], limit: Duration) -> Result<(bool, String, String)> {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                let pkg = if prog == "ip" {
                    "iproute2"
                } else {
                    "openvswitch-switch"
                };
                Error::NotFound(format!(
                    "{prog} is not installed here: install {pkg} (apt-get install {pkg})"
                ))
            } else {
                Error::io(format!("cannot run {prog}"), e)
            }
        })?;
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() > limit => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::TimedOut(format!(
                    "{prog} {} did not finish within {limit:?}",
                    args.join(" ")
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(Error::io(format!("waiting for {prog}"), e)),
        }
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("reading {prog}"), e))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Where the DHCP client of `dev` keeps its pid, so that it can be
/// stopped with its tap.
fn dhcp_pidfile(dev: &str) -> String {
    format!("/run/mm-dhclient-{dev}.pid")
}

impl Os for Real {
    fn vsctl(&self, args: &[&str]) -> Result<String> {
        let timeout = format!("--timeout={VSCTL_TIMEOUT}");
        let db = self.db.as_ref().map(|d| format!("--db={d}"));
        let mut all: Vec<&str> = vec![&timeout];
        all.extend(db.as_deref());
        all.extend_from_slice(args);
        let limit = Duration::from_secs(u64::from(VSCTL_TIMEOUT) + 5);
        let (ok, out, err) = run("ovs-vsctl", &all, limit)?;
        let err = err.trim();
        if !ok {
            if err.contains("database connection failed") || err.contains("Connection refused") {
                return Err(Error::NotFound(format!(
                    "Open vSwitch is not running ({err}): {START_OVS}"
                )));
            }
            if err.contains("timed out") || err.contains("Alarm clock") {
                return Err(Error::TimedOut(format!(
                    "Open vSwitch did not answer within {VSCTL_TIMEOUT} s (is ovs-vswitchd \
                     running?): {START_OVS}"
                )));
            }
            return Err(Error::Net(format!(
                "ovs-vsctl {} failed: {err}",
                args.join(" ")
            )));
        }
        // It exits 0 when a datapath is missing, and says so only here.
        if err.contains("Error detected while setting up") {
            return Err(Error::Net(format!("ovs-vsctl {}: {err}", args.join(" "))));
        }
        Ok(out)
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        let (ok, out, err) = run("ip", args, Duration::from_secs(10))?;
        if !ok {
            return Err(Error::Net(format!(
                "ip {} failed: {}",
                args.join(" "),
                err.trim()
            )));
        }
        Ok(out)
    }

    fn has_dev(&self, name: &str) -> bool {
        !name.contains('/') && Path::new("/sys/class/net").join(name).exists()
    }

    fn dhcp_stop(&self, dev: &str) {
        let pf = dhcp_pidfile(dev);
        if let Err(e) = run(
            "dhclient",
            &["-x", "-pf", &pf, dev],
            Duration::from_secs(10),
        ) {
            tracing::warn!("stopping the DHCP client of {dev}: {e}");
        }
        let _ = std::fs::remove_file(&pf);
    }

    fn ofctl(&self, verb: &str, bridge: &str, arg: &str) -> Result<()> {
        // A bridge's OpenFlow socket is in ovs-vswitchd's run directory:
        // the system's is where ovs-ofctl looks; for another database,
        // the directory of its socket.
        let target = match self.db.as_deref().and_then(|d| d.strip_prefix("unix:")) {
            Some(sock) => {
                let dir = Path::new(sock).parent().unwrap_or(Path::new("/"));
                format!("unix:{}/{bridge}.mgmt", dir.display())
            }
            None => bridge.to_string(),
        };
        let (ok, _, err) = run("ovs-ofctl", &[verb, &target, arg], Duration::from_secs(10))?;
        if !ok {
            return Err(Error::Net(format!(
                "ovs-ofctl {verb} {target} {arg} failed: {}",
                err.trim()
            )));
        }
        Ok(())
    }

    fn dhcp(&self, dev: &str) -> Result<()> {
        // One try, bounded: a VLAN with no DHCP server is an error, not
        // a client left running.
        let (ok, _, err) = run(
            "dhclient",
            &["-1", "-pf", &dhcp_pidfile(dev), dev],
            Duration::from_secs(70),
        )
        .map_err(|e| match e {
            Error::NotFound(_) => Error::NotFound(
                "dhclient is not installed here: install isc-dhcp-client, or give the tap \
                     an address (tap create VLAN ip ADDR)"
                    .into(),
            ),
            e => e,
        })?;
        if !ok {
            return Err(Error::Net(format!(
                "no DHCP lease on {dev}: {}",
                err.trim()
            )));
        }
        Ok(())
    }
}

/// A system that records every call and runs nothing. Bridges and devices
/// it was told to make exist after; a test can make calls fail.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Fake {
    pub(crate) calls: Mutex<Vec<String>>,
    /// Devices that exist (bridges, taps, ports).
    pub(crate) devs: Mutex<std::collections::BTreeSet<String>>,
    /// A call whose text contains one of these fails.
    pub(crate) fail: Mutex<Vec<String>>,
    /// Ports in OVS's database.
    pub(crate) ports: Mutex<std::collections::BTreeSet<String>>,
}

#[cfg(test)]
impl Fake {
    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    fn call(&self, line: String) -> Result<()> {
        self.calls.lock().unwrap().push(line.clone());
        if self.fail.lock().unwrap().iter().any(|f| line.contains(f)) {
            return Err(Error::Net(format!("{line}: failed (fake)")));
        }
        Ok(())
    }
}

#[cfg(test)]
impl Os for Fake {
    fn vsctl(&self, args: &[&str]) -> Result<String> {
        let line = format!("ovs-vsctl {}", args.join(" "));
        if args.first() == Some(&"port-to-br") {
            return match self.ports.lock().unwrap().contains(args[1]) {
                true => Ok("some-bridge".into()),
                false => Err(Error::Net("no port".into())),
            };
        }
        if args.first() == Some(&"br-exists") {
            // Asked, not done: not recorded.
            return match self.devs.lock().unwrap().contains(args[1]) {
                true => Ok(String::new()),
                false => Err(Error::Net("no bridge".into())),
            };
        }
        if args.first() == Some(&"get") {
            return Ok(String::new());
        }
        self.call(line)?;
        let mut devs = self.devs.lock().unwrap();
        let after = |w: &str| {
            args.iter()
                .position(|a| *a == w)
                .and_then(|i| args.get(i + 1))
        };
        if let Some(b) = after("add-br") {
            devs.insert(b.to_string());
        }
        if let Some(b) = after("del-br") {
            devs.remove(*b);
        }
        let mut ports = self.ports.lock().unwrap();
        if let Some(i) = args.iter().position(|a| *a == "add-port") {
            ports.insert(args[i + 2].to_string());
        }
        if let Some(i) = args.iter().position(|a| *a == "del-port") {
            ports.remove(args[i + 2]);
        }
        Ok(String::new())
    }

    fn ip(&self, args: &[&str]) -> Result<String> {
        self.call(format!("ip {}", args.join(" ")))?;
        let mut devs = self.devs.lock().unwrap();
        match args {
            ["tuntap", "add", "mode", "tap", t] => {
                devs.insert(t.to_string());
            }
            ["link", "del", t] => {
                devs.remove(*t);
            }
            _ => {}
        }
        Ok(String::new())
    }

    fn has_dev(&self, name: &str) -> bool {
        self.devs.lock().unwrap().contains(name)
    }

    fn dhcp(&self, dev: &str) -> Result<()> {
        self.call(format!("dhclient -1 {dev}"))
    }

    fn dhcp_stop(&self, dev: &str) {
        let _ = self.call(format!("dhclient -x {dev}"));
    }

    fn ofctl(&self, verb: &str, bridge: &str, arg: &str) -> Result<()> {
        self.call(format!("ovs-ofctl {verb} {bridge} {arg}"))
    }

    fn packets(&self) -> bool {
        false
    }
}
