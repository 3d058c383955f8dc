//! meshage on loopback: real `mm serve` processes joined by --peer and
//! `mesh dial` (mDNS off, so nothing leaves the machine).

mod common;

use std::time::Duration;

use common::{overlay_links, rows, run_bounded, wait_for, Node, Stopped, MM};

const CONVERGE: Duration = Duration::from_secs(60);

fn hosts_of(answer: &[serde_json::Value]) -> Vec<String> {
    let mut h: Vec<String> = rows(answer)
        .into_iter()
        .map(|r| r["host"].clone())
        .collect();
    h.sort();
    h
}

#[test]
fn four_nodes_join_by_peer_and_dial() {
    let a = Node::local("a", &[]);
    let b = Node::local("b", &["--peer", &a.addr()]);
    let c = Node::local("c", &["--peer", &b.addr()]);
    let d = Node::local("d", &["--degree", "0"]);
    d.mm(&["mesh", "dial", &c.addr()]);
    for n in [&a, &b, &c, &d] {
        n.wait_size(4, CONVERGE);
    }
    let list = a.mm(&["mesh", "list"]);
    for name in ["a\n", "b\n", "c\n", "d\n", " |--c\n"] {
        assert!(list.contains(name), "mesh list lacks {name:?}:\n{list}");
    }
    assert_eq!(a.mm(&["mesh", "list", "all"]).trim(), "a,b,c,d");
    // No cluster key: these nodes keep to this host.
    assert_eq!(a.status("mode"), "loopback");
    // One connection per pair, counted from the kernel's socket table:
    // several dials between the same two nodes (both sides, or a --peer
    // and a mesh dial) leave one.
    let links = overlay_links(&[&a, &b, &c, &d]);
    assert!(!links.is_empty(), "no links found");
    assert!(links.values().all(|n| *n == 1), "{links:?}");
    assert_eq!(a.mm(&["mesh", "list", "peers"]).trim(), "b,c,d");

    // `mesh send all host`: one row per other node, with real stats.
    let ans = d.json(&["mesh", "send", "all", "host"]);
    assert_eq!(hosts_of(&ans), vec!["a", "b", "c"]);
    for r in rows(&ans) {
        assert_eq!(r["host"], r["name"]);
        assert!(r["cpus"].parse::<u32>().unwrap() >= 1);
        assert!(r["memtotal"].parse::<u64>().unwrap() > 0);
    }
    // The table form has the host column first and sorted rows.
    let table = d.mm(&["mesh", "send", "all", "mesh", "status"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("host | size | degree | peers | context | port"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("a ") && lines[3].starts_with("c "),
        "{table}"
    );
}

#[test]
fn multi_hop_line_and_missing_hosts() {
    let a = Node::local("a", &["--degree", "0"]);
    let b = Node::local("b", &["--degree", "0"]);
    let c = Node::local("c", &["--degree", "0"]);
    let d = Node::local("d", &["--degree", "0"]);
    b.mm(&["mesh", "dial", &a.addr()]);
    c.mm(&["mesh", "dial", &b.addr()]);
    d.mm(&["mesh", "dial", &c.addr()]);
    a.wait_size(4, CONVERGE);
    d.wait_size(4, CONVERGE);
    assert_eq!(a.status("peers"), "1", "a must reach d through b and c");

    let ans = a.json(&["mesh", "send", "d", "mesh", "status"]);
    assert_eq!(hosts_of(&ans), vec!["d"]);
    assert_eq!(rows(&ans)[0]["peers"], "1");
    let ans = a.json(&["mesh", "send", "all", "host"]);
    assert_eq!(hosts_of(&ans), vec!["b", "c", "d"]);
    let ans = d.json(&["mesh", "send", "a,b", "mesh", "list", "peers"]);
    assert_eq!(ans.len(), 2);

    // An unknown host gets an error row; the others still answer; exit 1.
    let out = a.try_mm(&["mesh", "send", "c,zz", "version"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("E: zz: no such host"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("mm "));

    // A host that stops answering gets `timed out` when the mesh timeout
    // says (not the default 10 s), and does not hold up the others.
    a.mm(&["mesh", "timeout", "2"]);
    assert_eq!(a.mm(&["mesh", "timeout"]).trim(), "2s");
    let frozen = Stopped::new(node_pid(&d));
    let asked = std::time::Instant::now();
    let ans = a.json(&["mesh", "send", "c,d", "version"]);
    let took = asked.elapsed();
    drop(frozen);
    // The relay next to d gives up first (each hop keeps a tenth for the
    // way back: 2 s x 0.9 x 0.9 from here), so the answer is a little
    // early, and far before the default 10 s.
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(8),
        "a 2 s timeout answered after {took:?}"
    );
    let d_row = ans.iter().find(|r| r["host"] == "d").expect("a row for d");
    assert_eq!(d_row["error"], "timed out");
    let c_row = ans.iter().find(|r| r["host"] == "c").expect("a row for c");
    assert_eq!(
        c_row["error"], "",
        "c must answer while d is frozen: {ans:?}"
    );

    // `mesh send` of `mesh send` is refused.
    let out = a.try_mm(&["mesh", "send", "b", "mesh", "send", "c", "host"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot run `mesh send` via meshage"));

    // No node writes a file another names: `mesh dot` once replaced a
    // node's identity key this way.
    let key = std::fs::read(b.base().join("node.key")).unwrap();
    let out = a.try_mm(&["mesh", "send", "b", "mesh", "dot", "node.key"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot run `mesh dot` via meshage"),
        "{out:?}"
    );
    assert_eq!(std::fs::read(b.base().join("node.key")).unwrap(), key);
    // Nor deletes outside the files directory through a link.
    let outside = common::scratch_dir("outside");
    std::fs::write(outside.path().join("precious"), b"keep").unwrap();
    std::os::unix::fs::symlink(outside.path(), b.base().join("files/out")).unwrap();
    let out = a.try_mm(&["mesh", "send", "b", "file", "delete", "out/precious"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(outside.path().join("precious").exists());
    // A graphviz file of the line.
    let dot = a.base().join("mesh.dot");
    a.mm(&["mesh", "dot", dot.to_str().unwrap()]);
    let text = std::fs::read_to_string(&dot).unwrap();
    assert!(text.starts_with("graph mesh {"));
    assert!(
        text.contains("\"a\" -- \"b\"") && text.contains("\"c\" -- \"d\""),
        "{text}"
    );
}

/// Every hop forwards with a tenth less time, so that its answer makes it
/// back before the hop before it gives up. That holds only if each hop
/// answers when its own deadline falls due: when deadlines were checked on
/// a 250 ms tick, a live host's row came back `timed out` (8 of 72 sends
/// through 3 hops at a 2 s timeout; nearly always at 1.2 s, whose last
/// margin is about 100 ms).
#[test]
fn live_hosts_answer_in_time_at_the_end_of_a_long_line() {
    let names = ["a", "b", "c", "d", "e"];
    let mut nodes: Vec<Node> = Vec::new();
    for (i, n) in names.iter().enumerate() {
        // Start offsets spread over a tick, so that the nodes' timers are
        // out of phase.
        std::thread::sleep(Duration::from_millis(37 * i as u64 + 11));
        nodes.push(Node::local(n, &["--degree", "0"]));
    }
    for w in nodes.windows(2) {
        w[1].mm(&["mesh", "dial", &w[0].addr()]);
    }
    for n in &nodes {
        n.wait_size(5, CONVERGE);
    }
    let a = &nodes[0];
    wait_for("routes to e", CONVERGE, || {
        let ans = a.json(&["mesh", "send", "e", "version"]);
        (ans.len() == 1 && ans[0]["error"] == "").then_some(())
    });
    a.mm(&["mesh", "timeout", "1.2"]);
    let _frozen = Stopped::new(node_pid(&nodes[4]));
    for round in 0..12 {
        let ans = a.json(&["mesh", "send", "c,d,e", "version"]);
        for live in ["c", "d"] {
            let row = ans.iter().find(|r| r["host"] == live).expect("a row");
            assert_eq!(
                row["error"], "",
                "round {round}: {live} answered late: {ans:?}"
            );
        }
        // Frozen: it times out, until its peer or the mesh gives up on it
        // (no route, no such host).
        let e = ans.iter().find(|r| r["host"] == "e").expect("a row for e");
        assert_ne!(e["error"], "", "round {round}: {ans:?}");
    }
}

fn node_pid(n: &Node) -> i32 {
    // The node process is the one whose command line names this base.
    let base = n.base().to_string_lossy().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(" serve ") && cmd.contains(&base) {
            return pid;
        }
    }
    panic!("no process for {}", n.name);
}

/// A transfer from a holder without a data channel asks for a grant, and
/// then for its chunks over the mesh, as direct requests: they dial a
/// connection of their own. It is closed once idle: a `file get` across a
/// line leaves the line as it was (once, such connections stayed an hour,
/// and a swarm left a complete graph behind). (With the data channel on,
/// a keyed hello needs no such connection; a grant, when the holder does
/// not know the puller yet, still does.)
#[test]
fn a_connection_made_for_a_transfer_is_closed_once_idle() {
    let a = Node::local("a", &["--degree", "0"]);
    let b = Node::local("b", &["--degree", "0"]);
    let c = Node::local("c", &["--degree", "0", "--no-data-channel"]);
    b.mm(&["mesh", "dial", &a.addr()]);
    c.mm(&["mesh", "dial", &b.addr()]);
    a.wait_size(3, CONVERGE);
    c.wait_size(3, CONVERGE);
    let link = |x: &Node, y: &Node| {
        overlay_links(&[x, y])
            .get(&(x.name.clone(), y.name.clone()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(link(&a, &c), 0, "a and c start two hops apart");
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    for round in ["one.bin", "two.bin"] {
        std::fs::write(c.base().join("files").join(round), &data).unwrap();
        let got = a.mm(&["file", "get", round, "wait"]);
        assert!(got.contains(&format!("fetched {round}")), "{got}");
        assert_eq!(
            std::fs::read(a.base().join("files").join(round)).unwrap(),
            data
        );
        wait_for("the a-c connection to close", CONVERGE, || {
            (link(&a, &c) == 0).then_some(())
        });
    }
    assert!(
        a.log()
            .contains("closing the connection to c: made for direct requests, idle"),
        "a closed no connection it made for direct requests"
    );
    // c was dialled, and a never announced it: to c, never a peer of the
    // mesh, so nothing to announce when it came or went.
    let c_log = c.log();
    assert!(
        c_log.contains("a: a connection for direct requests closed")
            && !c_log.contains("disconnected from a"),
        "c took a's connection for direct requests as a peer"
    );
    assert_eq!(a.status("peers"), "1");
    assert_eq!(c.status("peers"), "1");
}

#[test]
fn hangup_then_the_mesh_reconverges() {
    // b keeps its links to a and d only because they dial it: degree 0 and
    // no --peer, so after the hangup only a could restore a-b, and it
    // must not for a while.
    let a = Node::local("a", &["--degree", "3"]);
    let b = Node::local("b", &["--degree", "0"]);
    let c = Node::local("c", &["--degree", "2", "--peer", &a.addr()]);
    let d = Node::local("d", &["--degree", "2", "--peer", &b.addr()]);
    b.mm(&["mesh", "dial", &a.addr()]);
    for n in [&a, &b, &c, &d] {
        n.wait_size(4, CONVERGE);
    }
    let ab = || {
        overlay_links(&[&a, &b])
            .get(&("a".to_string(), "b".to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(ab(), 1, "no a-b link to hang up");
    a.mm(&["mesh", "hangup", "b"]);
    wait_for("a to log the hangup", CONVERGE, || {
        a.log().contains("disconnected from b").then_some(())
    });
    // Gone, and not dialled back by a, which still wants a third peer,
    // over several of its degree ticks.
    for _ in 0..8 {
        assert_eq!(ab(), 0, "the a-b link came back within the hold");
        std::thread::sleep(Duration::from_millis(500));
    }
    // Not a direct peer (any more, or ever): a clear error.
    let out = d.try_mm(&["mesh", "hangup", "zz"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such host"));
    for n in [&a, &b, &c, &d] {
        n.wait_size(4, CONVERGE);
    }
    // Routes settle a little after sizes do: every node answers soon.
    wait_for("every node to answer c", CONVERGE, || {
        let ans = c.json(&["mesh", "send", "all", "version"]);
        (ans.iter().filter(|r| r["error"] == "").count() == 3).then_some(())
    });
    let ans = c.json(&["mesh", "send", "all", "version"]);
    assert_eq!(
        ans.iter().filter(|r| r["error"] == "").count(),
        3,
        "{ans:?}"
    );
}

#[test]
fn a_node_without_the_cluster_key_stays_out() {
    let dir = common::scratch_dir("keys");
    let key = |f: &str| {
        let out = std::process::Command::new(MM)
            .arg("keygen")
            .output()
            .unwrap();
        let p = dir.path().join(f);
        std::fs::write(&p, &out.stdout).unwrap();
        p.to_string_lossy().into_owned()
    };
    let (k1, k2) = (key("k1"), key("k2"));
    assert_ne!(std::fs::read(&k1).unwrap(), std::fs::read(&k2).unwrap());
    let a = Node::local("a", &["--psk-file", &k1]);
    let b = Node::local("b", &["--psk-file", &k1, "--peer", &a.addr()]);
    let wrong = Node::local("wrong", &["--psk-file", &k2, "--peer", &a.addr()]);
    let open = Node::local("open", &["--peer", &a.addr()]);
    a.wait_size(2, CONVERGE);
    assert_eq!(a.status("keyed"), "true");
    wait_for("a to log the rejected peers", CONVERGE, || {
        a.log().contains("cluster key mismatch").then_some(())
    });
    // Give the outsiders a few more dial attempts, then check they are out.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(a.size(), 2);
    assert_eq!(b.size(), 2);
    assert_eq!(wrong.size(), 1);
    assert_eq!(wrong.status("peers"), "0");
    assert_eq!(open.size(), 1);
    // A malformed key file is refused at start with a clear message.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "not a key").unwrap();
    let out = run_bounded(
        std::process::Command::new(MM)
            .args(["serve", "--no-mdns", "--port", "0", "--base"])
            .arg(dir.path().join("base"))
            .arg("--psk-file")
            .arg(&bad),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex digits"));
}

#[test]
fn duplicate_names_are_refused_on_both_sides() {
    let a = Node::local("twin", &[]);
    let b = Node::local("twin", &["--peer", &a.addr()]);
    for n in [&a, &b] {
        wait_for("the clash to be logged", CONVERGE, || {
            n.log().contains("names must be unique").then_some(())
        });
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(a.status("peers"), "0");
    assert_eq!(b.status("peers"), "0");
    // Neither can tell which came first, so both stay, and both show it.
    for n in [&a, &b] {
        assert_eq!(n.status("clashes"), "twin");
        assert!(n
            .mm(&["mesh", "list"])
            .contains("! name clash: two nodes claim 'twin'"));
    }
    // The operator renames one (same base, same peer id): the clash is
    // over on both, not shown for its ten minutes.
    let mut b = b;
    b.stop(false);
    b.name = "single".into();
    b.start();
    a.wait_size(2, CONVERGE);
    for n in [&a, &b] {
        wait_for("the clash to be over", CONVERGE, || {
            (n.status("clashes") == "-").then_some(())
        });
        assert!(!n.mm(&["mesh", "list"]).contains("name clash"));
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let a = Node::local("a", &[]);
    let check = |args: &[&str], code: i32, needle: &str| {
        let out = a.try_mm(args);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(code),
            "mm {}: {err}",
            args.join(" ")
        );
        assert!(
            err.contains(needle),
            "mm {}: {err:?} lacks {needle:?}",
            args.join(" ")
        );
    };
    check(&["frobnicate"], 1, "unknown command: frobnicate");
    check(&["mesh", "degree", "x"], 1, "degree must be a whole number");
    check(
        &["mesh", "degree", "18446744073709551615"],
        1,
        "from 0 to 1024",
    );
    check(&["mesh", "timeout", "1e19"], 1, "number of seconds");
    check(
        &["mesh", "send", "n[1-65535,1-65535]", "host"],
        1,
        "more than",
    );
    check(&["mesh", "send", "zz", "version"], 1, "no such host");
    check(
        &["mesh", "degree", "1", "2"],
        1,
        "usage: mesh degree [degree]",
    );
    check(&["mesh", "send"], 1, "usage: mesh send <hosts> (command)");
    check(&["mesh", "send", "n[1-", "host"], 1, "malformed host list");
    check(&["mesh", "send", "all", "host"], 1, "no other nodes");
    check(&["mesh", "send", "a", "bogus"], 1, "unknown command: bogus");
    check(&["mesh", "dial", "/not/a/multiaddr"], 1, "bad multiaddr");
    check(&["mesh", "dial", "127.0.0.1:1"], 1, "dial");
    check(&["mesh", "timeout", "-3"], 1, "number of seconds");
    let help = a.mm(&["help"]);
    assert!(help.contains("mesh send <hosts> (command)"));
    assert!(a
        .mm(&["help", "mesh", "send"])
        .contains("over several hops"));
    // No node at all: exit 2 and say how to start one.
    let out = std::process::Command::new(MM)
        .args(["--base", "/nonexistent/mm", "mesh", "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mm serve"));
    // A second node on the same base is refused.
    let out = run_bounded(
        std::process::Command::new(MM)
            .args(["serve", "--no-mdns", "--port", "0", "--base"])
            .arg(a.base()),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    // Garbage on the control socket is answered with an error, not a crash.
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(a.base().join("mm.sock")).unwrap();
    s.write_all(b"{not json\n").unwrap();
    let mut line = String::new();
    std::io::BufReader::new(&s).read_line(&mut line).unwrap();
    assert!(line.contains("malformed request"), "{line}");
    assert_eq!(
        a.mm(&["version"]).trim(),
        format!("mm {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn restart_keeps_identity_and_settings_and_survives_a_corrupt_db() {
    use std::os::unix::fs::PermissionsExt;
    let mut a = Node::local("a", &[]);
    let sock = a.base().join("mm.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket must be private");
    let key = std::fs::read(a.base().join("node.key")).unwrap();
    a.mm(&["mesh", "degree", "5"]);
    a.mm(&["mesh", "timeout", "7"]);
    a.stop(false);
    assert!(!sock.exists(), "SIGTERM must remove the socket");
    a.start();
    assert_eq!(a.mm(&["mesh", "degree"]).trim(), "5");
    assert_eq!(a.mm(&["mesh", "timeout"]).trim(), "7s");
    assert_eq!(std::fs::read(a.base().join("node.key")).unwrap(), key);
    let ids: Vec<String> = a
        .log()
        .lines()
        .filter(|l| l.contains(" up: "))
        .filter_map(|l| l.split('(').nth(1)?.split(')').next().map(str::to_string))
        .collect();
    assert_eq!(ids.len(), 2);
    assert_eq!(ids[0], ids[1], "peer id changed across a restart");

    // A killed node leaves a stale socket; the next start takes it over.
    a.stop(true);
    std::fs::write(a.base().join("meta.db").join("conf"), b"\xff garbage").unwrap();
    a.start();
    assert!(
        a.log().contains("cannot be opened"),
        "corruption not reported"
    );
    assert_eq!(a.mm(&["mesh", "degree"]).trim(), "3");
}

#[test]
fn interactive_shell_reads_commands() {
    use std::io::Write;
    let a = Node::local("a", &[]);
    let mut child = std::process::Command::new(MM)
        .arg("--base")
        .arg(a.base())
        .env("HOME", a.base())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"mesh status\nmesh degree\nbogus\nexit\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("size"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown command: bogus"));
}

#[test]
fn other_contexts_stay_apart() {
    let a = Node::local("a", &[]);
    let b = Node::local("b", &["--peer", &a.addr()]);
    let other = Node::local("other", &["--context", "lab2", "--peer", &a.addr()]);
    a.wait_size(2, CONVERGE);
    wait_for("a to log the foreign context", CONVERGE, || {
        a.log().contains("another context").then_some(())
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(a.size(), 2);
    assert_eq!(b.size(), 2);
    assert_eq!(other.size(), 1);
    assert_eq!(other.status("context"), "lab2");
}

#[test]
fn inbound_connections_beyond_the_cap_are_refused() {
    // Degree 1: the cap is max(8, 4 x 1) = 8 inbound connections.
    let hub = Node::local("hub", &["--degree", "1"]);
    let spokes: Vec<Node> = (0..10)
        .map(|i| Node::local(&format!("s{i}"), &["--degree", "0"]))
        .collect();
    let ok = spokes
        .iter()
        .filter(|s| s.try_mm(&["mesh", "dial", &hub.addr()]).status.success())
        .count();
    // `mesh dial` reports success only for connections the hub kept.
    assert_eq!(ok, 8, "{ok} dials reported success");
    wait_for("the hub to settle at its cap", CONVERGE, || {
        (hub.status("peers") == "8").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let peers: usize = hub.status("peers").parse().unwrap();
    assert_eq!(
        peers, 8,
        "hub accepted {peers} peers ({ok} dials reported success)"
    );
    // Raising the degree raises the cap at once.
    hub.mm(&["mesh", "degree", "3"]);
    for s in &spokes {
        // Dialling a peer we already have is a no-op, not a second link.
        s.mm(&["mesh", "dial", &hub.addr()]);
    }
    wait_for("the hub to accept the rest", CONVERGE, || {
        (hub.status("peers") == "10").then_some(())
    });
    let mut all: Vec<&Node> = spokes.iter().collect();
    all.push(&hub);
    let links = overlay_links(&all);
    let to_hub: Vec<usize> = links
        .iter()
        .filter(|((x, y), _)| x == "hub" || y == "hub")
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(to_hub, vec![1; 10], "{links:?}");
}
