//! VMs across a namespace lab (issue 10): a head node and three hosts, each
//! a network namespace running `mm serve`, the hosts starting real QEMU
//! processes (tiny, diskless; KVM where it works, else TCG).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::{rows, wait_for, Lab, Node};

const LONG: Duration = Duration::from_secs(90);

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The lab: the head in the first namespace, hosts n1..n3 in the others.
fn lab() -> (Lab, Node, Vec<Node>) {
    let lab = Lab::up(4, None);
    let head = Node::in_ns("head", &lab.ns(1), &[]);
    let hosts: Vec<Node> = (1..=3)
        .map(|i| Node::in_ns(&format!("n{i}"), &lab.ns(i + 1), &[]))
        .collect();
    head.wait_size(4, LONG);
    (lab, head, hosts)
}

fn vm_info(head: &Node) -> Vec<HashMap<String, String>> {
    let mut r = rows(&head.json(&["vm", "info"]));
    r.sort_by(|a, b| a["name"].cmp(&b["name"]));
    r
}

/// vm name -> host, from a `vm | dst` answer.
fn placement(head: &Node, args: &[&str]) -> BTreeMap<String, String> {
    rows(&head.json(args))
        .into_iter()
        .map(|r| (r["vm"].clone(), r["dst"].clone()))
        .collect()
}

fn per_host(p: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for h in p.values() {
        *n.entry(h.clone()).or_default() += 1;
    }
    n
}

/// What QEMU itself says of a VM, over its QMP socket.
fn qmp_status(sock: &Path) -> String {
    let s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    for cmd in ["qmp_capabilities", "query-status"] {
        writeln!(w, "{{\"execute\":\"{cmd}\"}}").unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if let Some(ret) = v.get("return") {
                if cmd == "query-status" {
                    return ret["status"].as_str().unwrap().to_string();
                }
                break;
            }
        }
    }
    unreachable!()
}

/// Whether the process runs: a zombie (killed, its orphan not yet reaped
/// by init) does not.
fn alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat.rsplit_once(") ").map(|(_, r)| r.chars().next());
    !matches!(state, Some(Some('Z' | 'X')) | None)
}

fn cmdline(pid: &str) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn host<'a>(hosts: &'a [Node], name: &str) -> &'a Node {
    hosts.iter().find(|h| h.name == name).unwrap()
}

fn sock(hosts: &[Node], vm: &HashMap<String, String>, ns: &str) -> std::path::PathBuf {
    host(hosts, &vm["host"])
        .base()
        .join(ns)
        .join(&vm["id"])
        .join("qmp.sock")
}

#[test]
fn the_cluster_workflow_runs_real_vms_across_three_hosts() {
    let (_lab, head, hosts) = lab();
    head.mm(&["namespace", "foo"]);
    assert_eq!(head.mm(&["ns", "hosts"]).trim(), "n[1-3]");
    head.mm(&["ns", "queueing", "true"]);
    head.mm(&["vm", "config", "memory", "32"]);
    head.mm(&["vm", "launch", "kvm", "6"]);
    // Queued, not launched.
    let q = rows(&head.json(&["ns", "queue"]));
    assert_eq!(
        (q[0]["count"].as_str(), q[0]["names"].as_str()),
        ("6", "vm-[0-5]")
    );
    assert!(q[0]["config"].contains("memory=32"), "{q:?}");
    assert!(vm_info(&head).is_empty());
    // Least loaded first: two each on three idle hosts alike.
    let dry = placement(&head, &["ns", "schedule", "dry-run"]);
    assert_eq!(dry.len(), 6);
    assert!(per_host(&dry).values().all(|n| *n == 2), "{dry:?}");
    // Edit the stored placement; bad edits change nothing.
    let moved = if dry["vm-0"] == "n1" { "n2" } else { "n1" };
    head.mm(&["ns", "schedule", "mv", "vm-0", moved]);
    for (bad, why) in [
        (vec!["vm-9", "n1"], "not in the stored schedule: vm-9"),
        (vec!["vm-1", "head"], "head is not a host of namespace foo"),
    ] {
        let mut args = vec!["ns", "schedule", "mv"];
        args.extend(bad);
        let out = head.try_mm(&args);
        assert!(stderr_of(&out).contains(why), "{}", stderr_of(&out));
    }
    let stored = placement(&head, &["ns", "schedule", "dump"]);
    assert_eq!(stored["vm-0"], moved);
    assert_eq!(stored.iter().filter(|(v, _)| *v != "vm-0").count(), 5);
    for (v, h) in &stored {
        if v != "vm-0" {
            assert_eq!(h, &dry[v], "{v} moved by itself");
        }
    }

    // Launch: six real QEMU processes, where the stored schedule says.
    head.mm(&["vm", "launch"]);
    assert!(
        rows(&head.json(&["ns", "queue"])).is_empty(),
        "the queue stayed"
    );
    let info = vm_info(&head);
    assert_eq!(info.len(), 6, "{info:?}");
    for v in &info {
        assert_eq!(v["host"], stored[&v["name"]], "{v:?}");
        assert_eq!(v["state"], "BUILDING");
        assert_eq!(v["memory"], "32");
        assert!(["kvm", "tcg"].contains(&v["accel"].as_str()), "{v:?}");
        assert!(alive(&v["pid"]), "{v:?}");
        let cl = cmdline(&v["pid"]);
        let base = host(&hosts, &v["host"]).base().display().to_string();
        assert!(
            cl.contains(&format!("-name {}", v["name"])) && cl.contains(&base),
            "{v:?}: {cl}"
        );
        assert_eq!(qmp_status(&sock(&hosts, v, "foo")), "prelaunch");
    }
    let listed = rows(&head.json(&["namespace"]));
    let foo = listed.iter().find(|r| r["namespace"] == "foo").unwrap();
    assert_eq!((foo["vms"].as_str(), foo["active"].as_str()), ("6", "true"));
    // ns run: each host answers in this namespace, for its own VMs.
    let ran = rows(&head.json(&["ns", "run", "vm", "info"]));
    assert_eq!(ran.len(), 6, "{ran:?}");
    assert!(
        ran.iter().all(|r| stored[&r["name"]] == r["host"]),
        "{ran:?}"
    );
    // The hosts' commitments count these VMs.
    let load: HashMap<String, HashMap<String, String>> = rows(&head.json(&["host"]))
        .into_iter()
        .map(|r| (r["name"].clone(), r))
        .collect();
    assert_eq!(load.len(), 3, "{load:?}");
    for (h, n) in per_host(&stored) {
        assert_eq!(load[&h]["vms"], n.to_string(), "{h}");
        assert_eq!(load[&h]["cpucommit"], n.to_string(), "{h}");
        assert_eq!(load[&h]["memcommit"], (32 * n).to_string(), "{h}");
    }

    head.mm(&["vm", "start", "all"]);
    head.mm(&["vm", "stop", "vm-1"]);
    for v in vm_info(&head) {
        let (state, qmp) = if v["name"] == "vm-1" {
            ("PAUSED", "paused")
        } else {
            ("RUNNING", "running")
        };
        assert_eq!(v["state"], state, "{v:?}");
        assert_eq!(qmp_status(&sock(&hosts, &v, "foo")), qmp, "{v:?}");
    }
    // The script form of the issue: one column set, one table, every host.
    let shown = head.mm(&[".columns", "name,state,host", "vm", "info"]);
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 7, "{shown}");
    assert!(
        lines[0].starts_with("name ") && lines[0].ends_with("| host"),
        "{shown}"
    );
    // Innermost first, as in minimega: filter, then the columns.
    let shown = head.mm(&[
        ".annotate",
        "false",
        ".columns",
        "name",
        ".filter",
        "state=paused",
        "vm",
        "info",
    ]);
    assert_eq!(shown, "name\nvm-1\n");
    let out = head.try_mm(&["vm", "start", "vm-1,ghost"]);
    assert!(
        stderr_of(&out).contains("no such vm: ghost"),
        "{}",
        stderr_of(&out)
    );

    // Kill: QUIT, and the processes are gone; flush forgets them.
    head.mm(&["vm", "kill", "vm-[0-2]"]);
    let info = vm_info(&head);
    for v in &info {
        let quit = ["vm-0", "vm-1", "vm-2"].contains(&v["name"].as_str());
        assert_eq!(v["state"], if quit { "QUIT" } else { "RUNNING" }, "{v:?}");
        if quit {
            wait_for(&format!("{}'s qemu to end", v["name"]), LONG, || {
                (!alive(&v["pid"])).then_some(())
            });
        }
    }
    head.mm(&["vm", "kill", "all"]);
    head.mm(&["vm", "flush"]);
    assert!(vm_info(&head).is_empty());
    for v in &info {
        assert!(!alive(&v["pid"]), "{v:?} outlived vm kill all");
    }
    let st = rows(&head.json(&["ns", "schedule", "status"]));
    assert_eq!(st.len(), 1, "{st:?}");
    let s = &st[0];
    assert_eq!(
        [
            &s["state"],
            &s["launched"],
            &s["failures"],
            &s["total"],
            &s["hosts"]
        ],
        ["completed", "6", "0", "6", "3"]
    );
    // vm launch is not for mesh send or ns run: the scheduler sends VMs.
    let ans = head.json(&["mesh", "send", "n1", "vm", "launch", "kvm", "1"]);
    assert!(
        ans[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot run `vm launch` via meshage"),
        "{ans:?}"
    );
    let out = head.try_mm(&["ns", "run", "vm", "launch", "kvm", "1"]);
    assert!(
        stderr_of(&out).contains("cannot run `vm launch` via ns run"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn constraints_place_vms_where_they_say_errors_keep_the_queue_and_restarts_never_show_running() {
    let (_lab, mut head, mut hosts) = lab();
    head.mm(&["namespace", "bar"]);
    head.mm(&["ns", "queueing", "true"]);
    head.mm(&["vm", "config", "memory", "32"]);
    let batch = |cfg: &[&str], names: &str| {
        if !cfg.is_empty() {
            let mut a = vec!["vm", "config"];
            a.extend(cfg);
            head.mm(&a);
        }
        head.mm(&["vm", "launch", "kvm", names]);
        if !cfg.is_empty() {
            head.mm(&["clear", "vm", "config", cfg[0]]);
        }
    };
    batch(&["schedule", "n3"], "pinned[1-2]");
    batch(&["colocate", "pinned1"], "buddy");
    batch(&["coschedule", "0"], "loner");
    batch(&[], "rest[1-2]");
    // A colocate target that exists nowhere: refused at once.
    head.mm(&["vm", "config", "colocate", "ghost"]);
    let out = head.try_mm(&["vm", "launch", "kvm", "x"]);
    assert!(
        stderr_of(&out).contains("nonexistent colocate VMs: [ghost]"),
        "{}",
        stderr_of(&out)
    );
    head.mm(&["clear", "vm", "config", "colocate"]);
    // A host that is not the namespace's: refused when it is set.
    let out = head.try_mm(&["vm", "config", "schedule", "n9"]);
    assert!(
        stderr_of(&out).contains("n9 is not a host of namespace bar"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(head.mm(&["vm", "config", "schedule"]).trim(), "");
    // schedule and colocate together: an error in either order.
    head.mm(&["vm", "config", "schedule", "n1"]);
    let out = head.try_mm(&["vm", "config", "colocate", "loner"]);
    assert!(
        stderr_of(&out).contains("cannot set colocate"),
        "{}",
        stderr_of(&out)
    );
    head.mm(&["clear", "vm", "config"]);
    head.mm(&["vm", "config", "memory", "32"]);
    head.mm(&["vm", "launch"]);
    let info = vm_info(&head);
    let at: BTreeMap<&str, &str> = info
        .iter()
        .map(|v| (v["name"].as_str(), v["host"].as_str()))
        .collect();
    // Pinned first, then the one that wants to be alone on the least
    // loaded host (n1, by name), then the rest beside neither.
    assert_eq!(
        at,
        BTreeMap::from([
            ("buddy", "n3"),
            ("loner", "n1"),
            ("pinned1", "n3"),
            ("pinned2", "n3"),
            ("rest1", "n2"),
            ("rest2", "n2"),
        ])
    );

    // Impossible constraints fail naming the VM and the host, and the
    // queue is kept for another try.
    head.mm(&["vm", "config", "schedule", "n1"]);
    head.mm(&["vm", "launch", "kvm", "squeezed"]);
    head.mm(&["clear", "vm", "config", "schedule"]);
    let out = head.try_mm(&["vm", "launch"]);
    let e = stderr_of(&out);
    assert!(e.contains("squeezed: cannot go on n1"), "{e}");
    assert_eq!(rows(&head.json(&["ns", "queue"]))[0]["names"], "squeezed");
    head.mm(&["ns", "flush"]);
    // A cap the batch does not fit under: nothing launches.
    head.mm(&["ns", "capacity", "cpu", "1"]);
    head.mm(&["vm", "launch", "kvm", "big[1-4]"]);
    let out = head.try_mm(&["vm", "launch"]);
    assert!(
        stderr_of(&out).contains("no host can take it"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(rows(&head.json(&["ns", "queue"]))[0]["count"], "4");
    assert_eq!(vm_info(&head).len(), 6);
    head.mm(&["ns", "flush"]);
    head.mm(&["ns", "capacity", "cpu", "none"]);
    // A colocate target gone by launch time: named, queue kept.
    head.mm(&["vm", "config", "colocate", "rest1"]);
    head.mm(&["vm", "launch", "kvm", "follower"]);
    head.mm(&["clear", "vm", "config", "colocate"]);
    head.mm(&["vm", "kill", "rest1"]);
    head.mm(&["vm", "flush"]);
    let out = head.try_mm(&["vm", "launch"]);
    assert!(
        stderr_of(&out).contains("nonexistent colocate VMs: [rest1]"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(rows(&head.json(&["ns", "queue"]))[0]["names"], "follower");
    head.mm(&["ns", "flush"]);
    // QEMU's own arguments from a head reach a host's command line only
    // if that host allows other nodes' programs (--allow-shell); cpu and
    // machine are checked names.
    head.mm(&["vm", "config", "qemu-append", "-vga", "std"]);
    head.mm(&["vm", "launch", "kvm", "odd"]);
    let out = head.try_mm(&["vm", "launch"]);
    assert!(
        stderr_of(&out).contains("odd: vm config qemu-append from another node runs only on a host started with --allow-shell"),
        "{}",
        stderr_of(&out)
    );
    head.mm(&["ns", "flush"]);
    head.mm(&["clear", "vm", "config", "qemu-append"]);
    // Nor may another node set it here, or hand it over in a clone.
    let ans = hosts[0].json(&[
        "mesh",
        "send",
        "head",
        "vm",
        "config",
        "qemu-append",
        "-D",
        "/x",
    ]);
    assert!(
        ans[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot set vm config qemu-append via meshage"),
        "{ans:?}"
    );
    assert_eq!(head.mm(&["vm", "config", "qemu-append"]).trim(), "");
    // (n3: n1 holds a VM that wants to be alone.)
    let n3 = &hosts[2];
    n3.mm(&["namespace", "bar"]);
    n3.mm(&["ns", "add-hosts", "localhost"]);
    n3.mm(&["ns", "del-hosts", "head,n[1-2]"]);
    for c in [
        &["vm", "config", "memory", "32"][..],
        &["vm", "config", "qemu-append", "-vga", "std"],
        &["vm", "launch", "kvm", "theirs"],
    ] {
        n3.mm(c);
    }
    let out = head.try_mm(&["vm", "config", "clone", "theirs"]);
    assert!(
        stderr_of(&out).contains("theirs runs on n3, with vm config qemu-append"),
        "{}",
        stderr_of(&out)
    );
    // (Only its own: the head's VMs on n3 are in a namespace bar too.)
    n3.mm(&["vm", "kill", "theirs"]);
    n3.mm(&["vm", "flush"]);
    n3.mm(&["namespace", "mm"]);

    // The head restarts: its namespace, settings and VMs are all there.
    head.stop(false);
    head.start();
    head.wait_size(4, LONG);
    assert_eq!(
        head.mm(&["namespace"])
            .lines()
            .filter(|l| l.contains("bar"))
            .count(),
        1
    );
    assert_eq!(head.mm(&["ns", "hosts"]).trim(), "n[1-3]");
    assert_eq!(head.mm(&["ns", "queueing"]).trim(), "true");
    assert_eq!(vm_info(&head).len(), 5);
    // A host killed outright: after its restart its VMs are ERROR, never
    // RUNNING, and their processes are gone. One stopped cleanly: QUIT.
    head.mm(&["vm", "start", "all"]);
    let before: Vec<HashMap<String, String>> = vm_info(&head);
    let n2 = hosts.iter_mut().find(|h| h.name == "n2").unwrap();
    n2.stop(true);
    n2.start();
    let n3 = hosts.iter_mut().find(|h| h.name == "n3").unwrap();
    n3.stop(false);
    n3.start();
    head.wait_size(4, LONG);
    let after = wait_for("the hosts to answer vm info again", LONG, || {
        let a = vm_info(&head);
        (a.len() == 5).then_some(a)
    });
    for v in &after {
        let want = match v["host"].as_str() {
            "n1" => "RUNNING",
            "n2" => "ERROR",
            _ => "QUIT",
        };
        assert_eq!(v["state"], want, "{v:?}");
        if want == "ERROR" {
            assert!(v["error"].contains("without ending it"), "{v:?}");
        }
    }
    for v in before.iter().filter(|v| v["host"] != "n1") {
        wait_for(&format!("{}'s qemu to end", v["name"]), LONG, || {
            (!alive(&v["pid"])).then_some(())
        });
    }
    // Clearing the namespace kills its VMs on every host.
    let n1_pid = before.iter().find(|v| v["host"] == "n1").unwrap()["pid"].clone();
    head.mm(&["clear", "namespace", "bar"]);
    wait_for("loner's qemu to end", LONG, || {
        (!alive(&n1_pid)).then_some(())
    });
    head.mm(&["namespace", "bar"]);
    assert!(vm_info(&head).is_empty());
}

/// minimega's `GetFiles`: a VM's image named on the head (here by a
/// `file:` word) is fetched by the host that launches it, the head's
/// version, into its own files directory, and QEMU opens that copy; the
/// VM keeps the configured path. (The lab's hosts share one filesystem,
/// so the head's path would open too: the test looks at which path QEMU
/// was given, and at the host's files.)
#[test]
fn a_host_fetches_the_images_the_head_names_before_it_launches() {
    let lab = Lab::up(2, None);
    let head = Node::in_ns("head", &lab.ns(1), &[]);
    let n1 = Node::in_ns("n1", &lab.ns(2), &[]);
    head.wait_size(2, LONG);
    let image: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let theirs = head.base().join("files/images/d.img");
    std::fs::create_dir_all(theirs.parent().unwrap()).unwrap();
    std::fs::write(&theirs, &image).unwrap();
    head.mm(&["namespace", "img"]);
    head.mm(&["ns", "add-hosts", "head"]);
    head.mm(&["vm", "config", "memory", "32"]);
    head.mm(&["vm", "config", "disk", "file:images/d.img"]);
    head.mm(&["vm", "config", "schedule", "n1"]);
    head.mm(&["vm", "launch", "kvm", "a"]);
    let local = n1.base().join("files/images/d.img");
    assert!(
        std::fs::read(&local).is_ok_and(|b| b == image),
        "n1 has no copy of images/d.img"
    );
    let theirs = theirs.canonicalize().unwrap().display().to_string();
    let vm = |name: &str| {
        wait_for(&format!("{name} to be launched"), LONG, || {
            vm_info(&head)
                .into_iter()
                .find(|v| v["name"] == name && v["state"] == "BUILDING")
        })
    };
    let a = vm("a");
    assert_eq!(
        (a["host"].as_str(), a["disks"].as_str()),
        ("n1", theirs.as_str())
    );
    assert!(cmdline(&a["pid"]).contains(&format!("file={}", local.display())));
    // The head launching on itself opens its own file.
    head.mm(&["vm", "config", "schedule", "head"]);
    head.mm(&["vm", "launch", "kvm", "h"]);
    assert!(cmdline(&vm("h")["pid"]).contains(&format!("file={theirs},")));
    // A new version on the head: n1's old copy is not taken for it, and
    // never overwritten.
    let v2: Vec<u8> = image.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&theirs, &v2).unwrap();
    head.mm(&["vm", "config", "schedule", "n1"]);
    let out = head.try_mm(&["vm", "launch", "kvm", "b"]);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("images/d.img: the copy here differs from the head's")
            && err.contains("mesh send n1 file delete images/d.img")
            && err.contains("not launched: b"),
        "{err}"
    );
    assert!(std::fs::read(&local).is_ok_and(|b| b == image));
    // A file gone from the head since `vm config`: said so, by its name.
    let gone = head.base().join("files/images/gone.img");
    std::fs::write(&gone, &image).unwrap();
    head.mm(&["vm", "config", "disk", "file:images/gone.img"]);
    std::fs::remove_file(&gone).unwrap();
    let out = head.try_mm(&["vm", "launch", "kvm", "c"]);
    let err = stderr_of(&out);
    assert!(
        err.contains("images/gone.img is not in the head's files directory any more"),
        "{err}"
    );
    head.mm(&["clear", "namespace", "img"]);
}
