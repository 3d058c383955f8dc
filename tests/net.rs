//! VM networking across a lab (issue 12): hosts as network namespaces, each
//! with its own Open vSwitch (userspace datapath, one ovsdb-server and
//! ovs-vswitchd per host, stopped by pid), `ns bridge` tunnels between
//! them, host taps and a real QEMU NIC on VLANs. The tests prove the
//! reachability on a VLAN and the isolation between VLANs, with a negative
//! control, and that nothing of mm's is left.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::{rows, wait_for, Lab, Node, Opts};

const LONG: Duration = Duration::from_secs(90);

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn in_ns(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .expect("ip netns exec")
}

/// One ping from `dev` in `ns`.
fn ping(ns: &str, dev: &str, ip: &str) -> bool {
    in_ns(ns, &["ping", "-c", "1", "-W", "1", "-I", dev, ip])
        .status
        .success()
}

fn mac(ns: &str, dev: &str) -> String {
    let o = in_ns(ns, &["cat", &format!("/sys/class/net/{dev}/address")]);
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The MAC `ns` has learnt for `ip`.
fn neighbour(ns: &str, ip: &str) -> String {
    let o = in_ns(ns, &["ip", "neigh", "show", ip]);
    let t = String::from_utf8_lossy(&o.stdout).into_owned();
    t.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

fn devices(ns: &str) -> Vec<String> {
    let o = in_ns(ns, &["ls", "/sys/class/net"]);
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// A capture on `dev` in `ns` of the frames `filter` takes, until
/// dropped; then how many there were.
struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Capture {
    fn start(ns: &str, dev: &str, filter: &str) -> Capture {
        let dir = common::scratch_dir("pcap");
        let file = dir.path().join("c.pcap");
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "tcpdump", "-nn", "-U", "-i", dev, "-w"])
            .arg(&file)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump)");
        // It has started once it says it listens.
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut err, &mut line).unwrap();
        assert!(line.contains("listening"), "tcpdump: {line}");
        Capture {
            child,
            file,
            _dir: dir,
        }
    }

    /// Stops it; the frames it caught, one line each.
    fn frames(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.child.kill();
        let _ = self.child.wait();
        let o = Command::new("tcpdump")
            .args(["-nn", "-e", "-r"])
            .arg(&self.file)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The head in the first namespace (no OVS: its database socket does not
/// exist), hosts n1..n(k) with their own OVS in the others.
fn lab(sites: Vec<usize>) -> (Lab, Node, Vec<Node>) {
    let n: usize = sites.iter().sum();
    let lab = Lab::with(
        n,
        Opts {
            sites,
            ovs: (2..=n).collect(),
            rate: None,
        },
    );
    let head = Node::in_ns(
        "head",
        &lab.ns(1),
        &["--ovs-db", "unix:/nonexistent/mm-test/db.sock"],
    );
    let hosts = (2..=n)
        .map(|i| {
            let db = lab.ovs(i).db();
            Node::in_ns(
                &format!("n{}", i - 1),
                &lab.ns(i),
                // The datapath is found out: netdev, as this kernel has no
                // OVS module (and `bridge` says so).
                &["--ovs-db", &db],
            )
        })
        .collect();
    (lab, head, hosts)
}

/// `mesh send HOST namespace foo ARGS...` from the head, expecting success.
fn on(head: &Node, host: &str, args: &[&str]) -> String {
    let mut full = vec!["mesh", "send", host, "namespace", "foo"];
    full.extend_from_slice(args);
    head.mm(&full)
}

/// `tap create VLAN bridge foo ip ADDR` on each host, in namespace foo.
fn host_taps(head: &Node, taps: &[(&str, &str, &str)]) {
    for (host, vlan, ip) in taps {
        on(
            head,
            host,
            &["tap", "create", vlan, "bridge", "foo", "ip", ip],
        );
    }
}

fn tap_of(head: &Node, host: &str) -> String {
    let out = head.json(&["mesh", "send", host, "namespace", "foo", "tap"]);
    let r = rows(&out);
    assert_eq!(r.len(), 1, "{host}: {out:?}");
    r[0]["tap"].clone()
}

/// Tunnels to every other host, on each host: the rows of `ns bridge`.
fn ns_bridge(head: &Node, kind: &str) -> (Vec<HashMap<String, String>>, Vec<String>) {
    let out = head.json(&["ns", "bridge", "foo", kind]);
    // Each table is its tunnel host's, so the leading `host` column is
    // that host (and not a second `host` beside the head's).
    let tables = out
        .iter()
        .filter(|r| r["header"].as_array().is_some_and(|h| !h.is_empty()));
    for t in tables {
        assert_eq!(
            t["header"],
            serde_json::json!(["endpoint", "tunnels"]),
            "{t}"
        );
    }
    let errors = out
        .iter()
        .filter_map(|r| {
            r["error"]
                .as_str()
                .filter(|e| !e.is_empty())
                .map(|e| format!("{}: {e}", r["host"].as_str().unwrap_or("")))
        })
        .collect();
    (rows(&out), errors)
}

/// Two VLANs over tunnels between three hosts: the same VLAN reaches
/// across, the other VLAN (with the same address) sees nothing of it.
fn vlans_stay_apart(kind: &str) {
    let (lab, head, hosts) = lab(vec![4]);
    head.wait_size(4, LONG);
    head.mm(&["namespace", "foo"]);
    assert_eq!(head.mm(&["ns", "hosts"]).trim(), "n[1-3]");
    // A host without OVS is an error row that names it; the others get
    // their tunnels.
    head.mm(&["ns", "add-hosts", "head"]);
    let (r, errors) = ns_bridge(&head, kind);
    assert!(
        errors.len() == 1 && errors[0].starts_with("head: ") && errors[0].contains("not running"),
        "{errors:?}"
    );
    head.mm(&["ns", "del-hosts", "head"]);
    assert_eq!(r.len(), 3, "{r:?}");
    for row in &r {
        assert_eq!(
            row["tunnels"].split_whitespace().count(),
            2,
            "{}: {row:?}",
            row["host"]
        );
        assert!(row["endpoint"].starts_with("10.77.0."), "{row:?}");
    }
    // Host taps: A on n1 and n2, B on n3 with n2's address. The aliases
    // are the head's, asked by each host.
    host_taps(
        &head,
        &[
            ("n1", "A", "10.0.0.1/24"),
            ("n2", "A", "10.0.0.2/24"),
            ("n3", "B", "10.0.0.2/24"),
        ],
    );
    let v: HashMap<String, String> = rows(&head.json(&["vlans"]))
        .into_iter()
        .map(|r| (r["alias"].clone(), r["vlan"].clone()))
        .collect();
    assert_eq!((v["A"].as_str(), v["B"].as_str()), ("101", "102"), "{v:?}");
    let ns = rows(&head.json(&["namespace"]));
    assert!(ns.iter().all(|r| r["vlans"] == "101-4095"), "{ns:?}");
    let (t1, t2, t3) = (
        tap_of(&head, "n1"),
        tap_of(&head, "n2"),
        tap_of(&head, "n3"),
    );
    let rows2 = rows(&head.json(&["mesh", "send", "n2", "namespace", "foo", "tap"]));
    assert_eq!(rows2[0]["vlan"], "A (101)");
    let (h1, h2, h3) = (lab.ns(2), lab.ns(3), lab.ns(4));
    let (m1, m2) = (mac(&h1, &t1), mac(&h2, &t2));
    // n3 must see nothing from n1; n2, the control, must.
    let quiet = Capture::start(&h3, &t3, &format!("ether src {m1}"));
    let heard = Capture::start(&h2, &t2, &format!("ether src {m1}"));
    // A new port forwards once RSTP lets it, about 3 s.
    if !(0..60).any(|_| ping(&h1, &t1, "10.0.0.2")) {
        if std::env::var_os("MM_HOLD").is_some() {
            eprintln!(
                "HOLDING: {h1} {h2} {h3} taps {t1} {t2} {t3} ovs {} {} {}",
                lab.ovs(2).db(),
                lab.ovs(3).db(),
                lab.ovs(4).db()
            );
            std::thread::sleep(Duration::from_secs(900));
        }
        panic!("n1 never reached n2 on VLAN A");
    }
    for _ in 0..3 {
        assert!(ping(&h1, &t1, "10.0.0.2"));
    }
    assert_eq!(
        neighbour(&h1, "10.0.0.2"),
        m2,
        "n1 reached the wrong 10.0.0.2"
    );
    // VLAN B has no 10.0.0.1.
    for _ in 0..3 {
        assert!(!ping(&h3, &t3, "10.0.0.1"), "VLAN B reached VLAN A");
    }
    let leaked = quiet.frames();
    assert!(leaked.is_empty(), "VLAN B saw VLAN A's frames: {leaked:?}");
    assert!(
        !heard.frames().is_empty(),
        "the control capture saw nothing"
    );

    // One real QEMU VM with a NIC on A: its tap joins the bridge tagged.
    head.mm(&["vm", "config", "memory", "32"]);
    head.mm(&["vm", "config", "net", "foo,A"]);
    assert_eq!(head.mm(&["vm", "config", "net"]).trim(), "[foo,A]");
    head.mm(&["vm", "config", "schedule", "n2"]);
    head.mm(&["vm", "launch", "kvm", "1"]);
    let vm = &rows(&head.json(&["vm", "info"]))[0];
    assert_eq!(
        (
            vm["host"].as_str(),
            vm["vlan"].as_str(),
            vm["bridge"].as_str()
        ),
        ("n2", "[A (101)]", "[foo]"),
        "{vm:?}"
    );
    let vtap = vm["tap"].trim_matches(['[', ']']).to_string();
    assert_eq!(lab.ovs(3).vsctl(&["get", "port", &vtap, "tag"]), "101");
    // QEMU holds it: the link is up.
    let link = text(&in_ns(&h2, &["ip", "link", "show", &vtap]));
    assert!(link.contains("LOWER_UP"), "{link}");
    // vm info shows the IP the NIC is seen with in ARP on its bridge. The
    // diskless guest says nothing, so n2's host tap stands in for its
    // NIC: it takes the VM's MAC and asks for 10.0.0.1.
    let vmac = vm["mac"].trim_matches(['[', ']']).to_string();
    assert_eq!(vm["ip"], "[]", "{vm:?}");
    let set = in_ns(&h2, &["ip", "link", "set", &t2, "address", &vmac]);
    assert!(set.status.success(), "{}", text(&set));
    in_ns(&h2, &["ip", "neigh", "flush", "dev", &t2]);
    wait_for("vm info to show the VM's IP", LONG, || {
        ping(&h2, &t2, "10.0.0.1");
        let v = &rows(&head.json(&["vm", "info"]))[0];
        (v["ip"] == "[10.0.0.2]").then_some(())
    });
    // vm net moves it: off the bridge, then onto B.
    head.mm(&["vm", "net", "disconnect", "vm-0", "0"]);
    assert_eq!(
        rows(&head.json(&["vm", "info"]))[0]["vlan"],
        "[disconnected]"
    );
    head.mm(&["vm", "net", "connect", "vm-0", "0", "B"]);
    assert_eq!(rows(&head.json(&["vm", "info"]))[0]["vlan"], "[B (102)]");
    assert_eq!(lab.ovs(3).vsctl(&["get", "port", &vtap, "tag"]), "102");

    // Negative control: n1 without its tunnels reaches nothing; `ns
    // bridge` again mends the mesh.
    let n1_ports: Vec<String> = r.iter().find(|row| row["host"] == "n1").unwrap()["tunnels"]
        .trim_matches(['[', ']'])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    for p in &n1_ports {
        head.mm(&["mesh", "send", "n1", "bridge", "notunnel", "foo", p]);
    }
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..3 {
        assert!(!ping(&h1, &t1, "10.0.0.2"), "n1 reached n2 with no tunnel");
    }
    let (r, errors) = ns_bridge(&head, kind);
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        r.iter()
            .all(|row| row["tunnels"].split_whitespace().count() == 2),
        "{r:?}"
    );
    wait_for("n1 to reach n2 again", LONG, || {
        ping(&h1, &t1, "10.0.0.2").then_some(())
    });
    // Another key breaks it too: n1's tunnels to n2 and n3 with a key
    // of their own.
    let ports: Vec<String> = lab
        .ovs(2)
        .vsctl(&["list-ports", "foo"])
        .lines()
        .map(str::to_string)
        .collect();
    for p in ports.iter().filter(|p| *p != &t1) {
        head.mm(&["mesh", "send", "n1", "bridge", "notunnel", "foo", p]);
    }
    let mut wrong = Vec::new();
    for ip in [lab.ip(3), lab.ip(4)] {
        let out = head.json(&[
            "mesh", "send", "n1", "bridge", "tunnel", kind, "foo", &ip, "4242",
        ]);
        wrong.push(
            out[0]["response"]
                .as_str()
                .unwrap_or_default()
                .trim()
                .to_string(),
        );
    }
    std::thread::sleep(Duration::from_secs(4));
    for _ in 0..3 {
        assert!(
            !ping(&h1, &t1, "10.0.0.2"),
            "n1 reached n2 through another key"
        );
    }
    // Tunnels made by hand are not the namespace's: clear namespace would
    // leave them (and their bridge), so they go by hand.
    for p in &wrong {
        head.mm(&["mesh", "send", "n1", "bridge", "notunnel", "foo", p]);
    }

    // Cleanup: flush takes the VM's tap, clear namespace the bridges and
    // host taps on every host, a stop what the node made.
    head.mm(&["vm", "kill", "all"]);
    assert!(!devices(&h2).contains(&vtap), "{vtap} outlived vm kill");
    head.mm(&["vm", "flush"]);
    head.mm(&["clear", "namespace", "foo"]);
    for i in 2..=4 {
        let brs = lab.ovs(i).vsctl(&["list-br"]);
        assert_eq!(brs, "br-phy", "host {i} kept a bridge of mm's");
        let left: Vec<String> = devices(&lab.ns(i))
            .into_iter()
            .filter(|d| d.starts_with("mega_tap") || d == "foo")
            .collect();
        assert!(left.is_empty(), "host {i}: {left:?}");
    }
    drop(hosts);
    drop(head);
}

#[test]
fn vlans_stay_apart_across_hosts_over_vxlan() {
    vlans_stay_apart("vxlan");
}

#[test]
fn vlans_stay_apart_across_hosts_over_gre() {
    vlans_stay_apart("gre");
}

#[test]
fn a_node_that_stops_removes_its_taps_and_bridges_but_not_others() {
    let (lab, head, mut hosts) = lab(vec![2]);
    let n1 = &mut hosts[0];
    n1.wait_size(2, LONG);
    let ovs = lab.ovs(2);
    // A bridge that was there before mm: mm uses it, and leaves it.
    ovs.vsctl(&[
        "add-br",
        "old",
        "--",
        "set",
        "bridge",
        "old",
        "datapath_type=netdev",
    ]);
    n1.mm(&["tap", "create", "LAN", "ip", "10.0.0.1/24"]);
    n1.mm(&["tap", "create", "LAN", "bridge", "old"]);
    // A trunk: a device of the host's own (a veth here).
    let ns2 = lab.ns(2);
    let made = in_ns(
        &ns2,
        &[
            "ip", "link", "add", "tr0", "type", "veth", "peer", "name", "tr1",
        ],
    );
    assert!(made.status.success(), "{}", text(&made));
    n1.mm(&["bridge", "trunk", "old", "tr0"]);
    let out = n1.try_mm(&["bridge", "trunk", "old", "nodev0"]);
    assert!(
        text(&out).contains("could not open network device nodev0"),
        "{}",
        text(&out)
    );
    let b = rows(&n1.json(&["bridge"]));
    let pre: HashMap<String, String> = b
        .iter()
        .map(|r| (r["bridge"].clone(), r["preexisting"].clone()))
        .collect();
    assert_eq!(pre["old"], "true");
    assert_eq!(pre["mega_bridge"], "false");
    assert!(b.iter().all(|r| r["datapath"] == "netdev"), "{b:?}");
    // Errors that say what is wrong.
    for (args, why) in [
        (
            vec!["bridge", "tunnel", "vxlan", "old", "10.0.0.9", "16777216"],
            "at most 16777215",
        ),
        (
            vec!["bridge", "notunnel", "old", "nope"],
            "unknown tunnel: nope",
        ),
        (vec!["tap", "create", "4096"], "from 1 to 4095"),
        (vec!["tap", "delete", "nope"], "unknown tap: nope"),
        (
            vec!["vm", "config", "net", "a,b,c,d,e,f"],
            "malformed netspec",
        ),
    ] {
        let out = n1.try_mm(&args);
        assert!(
            !out.status.success() && text(&out).contains(why),
            "{args:?}: {}",
            text(&out)
        );
    }
    // mm on head has no OVS: networking fails and says how to start it;
    // the rest goes on.
    let out = head.try_mm(&["tap", "create", "LAN"]);
    assert!(
        text(&out).contains("Open vSwitch is not running"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("--ovs-db"), "{}", text(&out));
    head.mm(&["mesh", "status"]);
    // A port that exists is not mm's to add, nor to take away.
    let out = n1.try_mm(&["bridge", "trunk", "br-phy", "eth0"]);
    assert!(text(&out).contains("already exists"), "{}", text(&out));
    assert_eq!(ovs.vsctl(&["port-to-br", "eth0"]), "br-phy");
    // A setting of a bridge that was there before mm comes back.
    n1.mm(&["bridge", "config", "old", "rstp_enable=true"]);
    // vm info follows a NIC whose bridge is destroyed under it.
    n1.mm(&["vm", "config", "memory", "32"]);
    n1.mm(&["vm", "config", "net", "LAN"]);
    n1.mm(&["vm", "launch", "kvm", "1"]);
    assert_eq!(rows(&n1.json(&["vm", "info"]))[0]["vlan"], "[LAN (101)]");
    n1.mm(&["bridge", "destroy", "mega_bridge"]);
    assert_eq!(rows(&n1.json(&["vm", "info"]))[0]["vlan"], "[disconnected]");
    n1.stop(false);
    assert_eq!(ovs.vsctl(&["list-br"]), "br-phy\nold");
    assert_eq!(ovs.vsctl(&["list-ports", "old"]), "");
    assert_eq!(ovs.vsctl(&["get", "bridge", "old", "rstp_enable"]), "false");
    let mgmt = format!("unix:{}/old.mgmt", ovs.dir.path().display());
    let flows = Command::new("ovs-ofctl")
        .args(["dump-flows", &mgmt])
        .output()
        .unwrap();
    let flows = text(&flows);
    assert!(!flows.contains("LOCAL"), "mm left flows on old: {flows}");
    let left: Vec<String> = devices(&lab.ns(2))
        .into_iter()
        .filter(|d| d.starts_with("mega_"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Two sites that share no layer 2 and no multicast, joined by a router:
/// mDNS finds the nodes of each site, one dial joins the sites into one
/// mesh, and `ns bridge` carries one VLAN across.
#[test]
fn one_vlan_spans_two_routed_sites() {
    // Site A: head (h1), n1 (h2); site B: n2 (h3), n3 (h4).
    let (lab, head, hosts) = lab(vec![2, 2]);
    head.wait_size(2, LONG);
    hosts[2].wait_size(2, LONG);
    // mDNS stays in its site: nothing crosses the router before a dial.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(head.size(), 2, "mDNS crossed the router");
    head.mm(&["mesh", "dial", &format!("{}:9000", lab.ip(3))]);
    for n in hosts.iter().chain([&head]) {
        n.wait_size(4, LONG);
    }
    let all = rows(&head.json(&["mesh", "send", "all", "mesh", "status"]));
    let mut names: Vec<&str> = all.iter().map(|r| r["host"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["n1", "n2", "n3"], "{all:?}");
    head.mm(&["namespace", "foo"]);
    let (r, errors) = ns_bridge(&head, "vxlan");
    assert!(errors.is_empty(), "{errors:?}");
    let ends: HashMap<String, String> = r
        .iter()
        .map(|row| (row["host"].clone(), row["endpoint"].clone()))
        .collect();
    assert_eq!(ends["n1"], lab.ip(2));
    assert_eq!(ends["n3"], lab.ip(4));
    host_taps(
        &head,
        &[
            ("n1", "A", "10.0.0.1/24"),
            ("n3", "A", "10.0.0.3/24"),
            ("n2", "B", "10.0.0.3/24"),
        ],
    );
    let (t1, t3) = (tap_of(&head, "n1"), tap_of(&head, "n3"));
    let (h1, h3) = (lab.ns(2), lab.ns(4));
    wait_for("site A to reach site B on VLAN A", LONG, || {
        ping(&h1, &t1, "10.0.0.3").then_some(())
    });
    assert_eq!(neighbour(&h1, "10.0.0.3"), mac(&h3, &t3));
    // VLAN B, with n3's address, reaches nothing of VLAN A.
    let t2 = tap_of(&head, "n2");
    for _ in 0..3 {
        assert!(!ping(&lab.ns(3), &t2, "10.0.0.1"), "VLAN B reached VLAN A");
    }
    // A host that leaves the namespace leaves the mesh of tunnels when
    // ns bridge runs again; the others keep theirs.
    head.mm(&["ns", "del-hosts", "n2"]);
    let (r, errors) = ns_bridge(&head, "vxlan");
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(r.len(), 2, "{r:?}");
    assert!(
        r.iter()
            .all(|row| row["tunnels"].split_whitespace().count() == 1),
        "{r:?}"
    );
    // The tunnel to n2 may have been each side's RSTP root port: RSTP
    // starts over (net::Net::notunnel) and converges in a few seconds.
    wait_for("n1 to reach n3 without n2", LONG, || {
        ping(&h1, &t1, "10.0.0.3").then_some(())
    });
    assert!(
        !devices(&lab.ns(3)).contains(&"foo".to_string()),
        "n2 kept the bridge after it left the namespace"
    );
    // clear namespace takes its host taps too, on mega_bridge as well.
    on(&head, "n1", &["tap", "create", "C", "ip", "10.0.1.1/24"]);
    head.mm(&["clear", "namespace", "foo"]);
    let left: Vec<String> = devices(&h1)
        .into_iter()
        .filter(|d| d.starts_with("mega_tap"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The VLAN commands and netspecs on one node: no OVS is needed until a
/// tap is made.
#[test]
fn vlans_ranges_and_netspecs_as_minimega_has_them() {
    let n = Node::local("solo", &["--ovs-db", "unix:/nonexistent/mm-test/db.sock"]);
    let vlans = |n: &Node| -> Vec<(String, String)> {
        rows(&n.json(&["vlans"]))
            .into_iter()
            .map(|r| (r["alias"].clone(), r["vlan"].clone()))
            .collect()
    };
    n.mm(&[
        "vm",
        "config",
        "net",
        "101",
        "LAN",
        "br0,DMZ,12:37:13:37:00:02,virtio-net-pci",
    ]);
    assert_eq!(
        n.mm(&["vm", "config", "net"]).trim(),
        "[101 LAN br0,DMZ,12:37:13:37:00:02,virtio-net-pci]"
    );
    // 101 was used by number: the aliases pass over it.
    assert_eq!(
        vlans(&n),
        [("DMZ".into(), "103".into()), ("LAN".into(), "102".into())]
    );
    assert_eq!(rows(&n.json(&["vlans", "blacklist"]))[0]["vlan"], "101");
    // Another namespace gets ids of its own, and may reach into this one.
    n.mm(&["namespace", "foo"]);
    n.mm(&["vm", "config", "net", "LAN", "mm//LAN"]);
    assert_eq!(vlans(&n), [("LAN".into(), "104".into())]);
    n.mm(&["vlans", "range", "200", "201"]);
    n.mm(&["vlans", "add", "X", "200"]);
    n.mm(&["vm", "config", "net", "Y"]);
    assert_eq!(rows(&n.json(&["vlans"]))[2]["vlan"], "201");
    let r = &rows(&n.json(&["vlans", "range"]))[0];
    assert_eq!((r["min"].as_str(), r["max"].as_str()), ("200", "201"));
    for (args, why) in [
        (vec!["vm", "config", "net", "Z"], "out of VLANs"),
        (
            vec!["vlans", "add", "W", "104"],
            "vlan already in use: 104 is LAN",
        ),
        (
            vec!["vm", "config", "net", "100,e1000,extra"],
            "malformed netspec",
        ),
        (vec!["vm", "config", "net", "0"], "VLAN 0"),
    ] {
        let out = n.try_mm(&args);
        assert!(
            !out.status.success() && text(&out).contains(why),
            "{args:?}: {}",
            text(&out)
        );
    }
    // A typo allocates nothing; clear vlans forgets them.
    assert_eq!(vlans(&n).len(), 3);
    n.mm(&["clear", "vlans", "X"]);
    assert_eq!(vlans(&n).len(), 2);
    n.mm(&["clear", "vlans"]);
    assert!(vlans(&n).is_empty());
    let ns = rows(&n.json(&["namespace"]));
    let range: HashMap<&str, &str> = ns
        .iter()
        .map(|r| (r["namespace"].as_str(), r["vlans"].as_str()))
        .collect();
    assert_eq!((range["mm"], range["foo"]), ("101-4095", "101-4095"));
    // No OVS here: a tap fails, saying how to start it.
    let out = n.try_mm(&["tap", "create", "LAN"]);
    assert!(
        text(&out).contains("Open vSwitch is not running"),
        "{}",
        text(&out)
    );
}
