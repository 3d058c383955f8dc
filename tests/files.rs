//! iomeshage: file transfer between real nodes, most of it in the
//! network-namespace lab (rate caps make transfers slow enough to interrupt).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{wait_for, Lab, Node, Opts};
use mm_store::mem::content;

const LONG: Duration = Duration::from_secs(120);

fn put(n: &Node, name: &str, data: &[u8], mode: u32) {
    let p = n.base().join("files").join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, data).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn read(n: &Node, name: &str) -> Option<Vec<u8>> {
    std::fs::read(n.base().join("files").join(name)).ok()
}

fn mode(n: &Node, name: &str) -> u32 {
    std::fs::metadata(n.base().join("files").join(name))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn lab_nodes(lab: &Lab, n: usize) -> Vec<Node> {
    let nodes: Vec<Node> = (1..=n)
        .map(|i| Node::in_ns(&format!("h{i}"), &lab.ns(i), &["--degree", "2"]))
        .collect();
    for x in &nodes {
        x.wait_size(n, LONG);
    }
    nodes
}

/// Waits until `n`'s first transfer has at least `chunks` chunks.
fn wait_chunks(n: &Node, chunks: u32) {
    wait_for(&format!("{chunks} chunks on {}", n.name), LONG, || {
        let st = common::rows(&n.json(&["file", "status"]));
        st.first()
            .and_then(|r| r["completed"].split('/').next()?.parse::<u32>().ok())
            .filter(|c| *c >= chunks)
            .map(|_| ())
    });
}

fn partial_files(n: &Node) -> usize {
    std::fs::read_dir(n.base().join("files").join(".mm-partial"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn get_a_file_a_glob_and_a_directory_with_modes() {
    let lab = Lab::up(3, None);
    let nodes = lab_nodes(&lab, 3);
    let (h1, h3) = (&nodes[0], &nodes[2]);
    let big = content(5 << 20 | 12345, 1);
    put(h1, "big.img", &big, 0o640);
    put(h1, "a.iso", b"alpha", 0o755);
    put(h1, "b.iso", b"beta", 0o600);
    put(h1, "vms/disk1.qcow2", &content(3000, 2), 0o644);
    put(h1, "vms/sub/disk2.qcow2", &content(70000, 3), 0o600);
    put(h1, "empty", b"", 0o644);

    assert!(h3
        .mm(&["file", "get", "big.img", "wait"])
        .contains("fetched big.img"));
    assert_eq!(read(h3, "big.img").unwrap(), big);
    assert_eq!(mode(h3, "big.img"), 0o640);

    h3.mm(&["file", "get", "*.iso", "wait"]);
    assert_eq!(read(h3, "a.iso").unwrap(), b"alpha");
    assert_eq!(read(h3, "b.iso").unwrap(), b"beta");
    assert_eq!(mode(h3, "a.iso"), 0o755);
    assert_eq!(mode(h3, "b.iso"), 0o600);

    h3.mm(&["file", "get", "vms", "wait"]);
    assert_eq!(read(h3, "vms/sub/disk2.qcow2").unwrap(), content(70000, 3));
    assert_eq!(mode(h3, "vms/sub/disk2.qcow2"), 0o600);
    h3.mm(&["file", "get", "empty", "wait"]);
    assert_eq!(read(h3, "empty").unwrap(), b"");

    // Already here with the same content: not fetched again.
    assert!(h3.mm(&["file", "get", "big.img"]).contains("already here"));
    // Non-blocking form returns at once and the file arrives.
    put(h1, "later.bin", &content(1 << 20, 9), 0o644);
    assert!(h3
        .mm(&["file", "get", "later.bin"])
        .contains("queued later.bin"));
    wait_for("later.bin", LONG, || {
        read(h3, "later.bin").filter(|d| d.len() == 1 << 20)
    });

    // The listing shows it, with its hash; the mesh listing shows who holds what.
    let list = h3.json(&["file", "list"]);
    let names: Vec<String> = common::rows(&list)
        .into_iter()
        .map(|r| r["name"].clone())
        .collect();
    assert!(names.contains(&"big.img".to_string()), "{names:?}");
    let mesh = common::rows(&h3.json(&["file", "list", "mesh"]));
    let holders: Vec<&str> = mesh
        .iter()
        .filter(|r| r["name"] == "big.img")
        .map(|r| r["host"].as_str())
        .collect();
    assert_eq!(holders.len(), 2, "{mesh:?}");
    // A path only some hosts have: their rows, and no error for the rest.
    let out = h3.try_mm(&["file", "list", "mesh", "vms"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && out.stderr.is_empty(), "{out:?}");
    assert!(text.contains("vms/sub/disk2.qcow2"), "{text}");
    let out = h3.try_mm(&["file", "list", "mesh", "nowhere"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not on any node"),
        "{out:?}"
    );
    assert_eq!(partial_files(h3), 0);
}

#[test]
fn pulls_from_three_holders_and_survives_a_corrupt_one() {
    let lab = Lab::up(4, Some("80mbit"));
    // h3 serves without a data channel: its chunks take the overlay
    // connection, and the puller mixes both ways.
    let nodes: Vec<Node> = (1..=4)
        .map(|i| {
            let mut args = vec!["--degree", "2"];
            if i == 3 {
                args.push("--no-data-channel");
            }
            Node::in_ns(&format!("h{i}"), &lab.ns(i), &args)
        })
        .collect();
    for x in &nodes {
        x.wait_size(4, LONG);
    }
    let data = content(24 << 20, 7);
    for h in &nodes[..3] {
        put(h, "shared.bin", &data, 0o644);
    }
    // Let every holder hash its copy (a `file get` on a holder asks the
    // others, who hash on first request), then corrupt h2's in place,
    // keeping size and mtime: its cached manifest is stale, so it serves
    // bad data under the right hash.
    assert!(nodes[0]
        .mm(&["file", "get", "shared.bin"])
        .contains("already here"));
    let p = nodes[1].base().join("files/shared.bin");
    let before = std::fs::metadata(&p).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        // Every chunk bad, so that a run from h2 brings nothing good.
        let chunk = mm_store::manifest::CHUNK_SIZE as usize;
        for off in (0..24u64 << 20).step_by(chunk) {
            f.write_all_at(b"XXXX", off + 100).unwrap();
        }
        f.set_modified(before).unwrap();
    }
    let puller = &nodes[3];
    puller.mm(&["file", "get", "shared.bin", "wait"]);
    assert_eq!(read(puller, "shared.bin").unwrap(), data, "content differs");
    let log = puller.log();
    let served = puller.served_by("shared.bin");
    for h in ["h1", "h3"] {
        assert!(
            served.iter().any(|(s, c)| s == h && *c > 0),
            "{h} served nothing: {served:?}"
        );
    }
    assert!(
        log.contains("from h2 failed verification"),
        "the corrupt holder was not reported"
    );
    assert!(
        log.contains("no data channel to h3"),
        "h3 was not reached over the overlay connection"
    );
}

#[test]
fn pullers_serve_each_other_and_the_holder_sends_each_chunk_about_once() {
    let lab = Lab::up(4, Some("80mbit"));
    let nodes = lab_nodes(&lab, 4);
    let chunks = (40 << 20) / mm_store::manifest::CHUNK_SIZE;
    let data = content(40 << 20, 21);
    put(&nodes[0], "swarm.bin", &data, 0o644);
    // Hash it on the holder first, as a later get would find it.
    nodes[0].mm(&["file", "get", "swarm.bin"]);
    // Far shorter than the transfers: a `file get ... wait` sent with
    // `mesh send` is waited for all the same.
    nodes[0].mm(&["mesh", "timeout", "1"]);
    let out = nodes[0].mm(&["mesh", "send", "all", "file", "get", "swarm.bin", "wait"]);
    // The same answer from three hosts, compressed as minimega does.
    assert!(out.starts_with("h[2-4]: fetched"), "{out}");
    let mut from_holder = 0;
    for p in &nodes[1..] {
        assert_eq!(read(p, "swarm.bin").unwrap(), data, "{} differs", p.name);
        let served = p.served_by("swarm.bin");
        assert_eq!(served.iter().map(|(_, c)| c).sum::<u64>(), chunks);
        from_holder += served
            .iter()
            .filter(|(h, _)| h == "h1")
            .map(|(_, c)| c)
            .sum::<u64>();
        assert!(
            served.iter().any(|(h, c)| h != "h1" && *c > 0),
            "{} took nothing from the other pullers: {served:?}",
            p.name
        );
    }
    // What the holder itself counts as sent, kept by the pullers or not.
    // Without it pointing pullers at each other it sent 15% more than the
    // file in a trial run; a one-to-one copy each would be 3 times the file.
    // With it, each chunk once, give or take an endgame duplicate.
    let sent = holder_sent(&nodes[0], "swarm.bin");
    eprintln!("the holder sent {sent} chunks for {chunks} (pullers kept {from_holder} of them)");
    assert!(
        sent >= from_holder,
        "it sent {sent}, they kept {from_holder}"
    );
    assert!(
        sent <= chunks + 4,
        "the holder sent {sent} chunks for {chunks}"
    );
}

#[test]
fn same_name_conflict_fails_and_writes_nothing() {
    let lab = Lab::up(3, None);
    let nodes = lab_nodes(&lab, 3);
    put(&nodes[0], "dup.txt", b"version one", 0o644);
    put(&nodes[1], "dup.txt", b"version two!", 0o644);
    let out = nodes[2].try_mm(&["file", "get", "dup.txt", "wait"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict") && err.contains("2 different versions"),
        "{err}"
    );
    assert!(err.contains("on h1") && err.contains("on h2"), "{err}");
    assert!(err.contains("size 11") && err.contains("size 12"), "{err}");
    assert!(read(&nodes[2], "dup.txt").is_none());
    assert_eq!(partial_files(&nodes[2]), 0);
    // Choosing a version works.
    nodes[2].mm(&["file", "get", "dup.txt", "from", "h2", "wait"]);
    assert_eq!(read(&nodes[2], "dup.txt").unwrap(), b"version two!");
    // Path escapes are refused as such (not merely found nowhere).
    for (bad, why) in [
        ("../etc/passwd", "may not contain '..'"),
        ("/../etc/passwd", "may not contain '..'"),
        ("a/../../x", "may not contain '..'"),
        (".mm-partial/x", "reserved for transfers in progress"),
    ] {
        let out = nodes[2].try_mm(&["file", "get", bad]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad} accepted");
        assert!(err.contains(why), "{bad}: {err}");
    }
    let out = nodes[2].try_mm(&["file", "get", "missing.iso"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node holds it"));
    // A leading `/` is the files directory's root (minimega's names), and
    // a file already here is not fetched again.
    let out = nodes[2].try_mm(&["file", "get", "/etc/passwd"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node holds it"));
    // One of the versions is here: nothing to fetch, nothing to choose.
    let here = nodes[2].mm(&["file", "get", "/dup.txt", "wait"]);
    assert!(here.contains("already here"), "{here}");
}

/// Right after `mesh wait`, the node that waited sees the whole line, but a
/// node far along it may still know only its neighbours: it once said that
/// no node held a file that the node at the other end held.
#[test]
fn a_get_sent_down_a_young_line_finds_the_holder_at_its_far_end() {
    let key = common::cluster_key().display().to_string();
    let mut line: Vec<Node> = Vec::new();
    for i in 1..=4 {
        let mut args = vec!["--psk-file", key.as_str(), "--degree", "1"];
        let prev = line.last().map(|n| n.addr());
        if let Some(p) = &prev {
            args.extend(["--peer", p.as_str()]);
        }
        line.push(Node::local(&format!("n{i}"), &args));
    }
    line[0].mm(&["mesh", "wait", "4"]);
    let data = content(3 << 20, 7);
    put(&line[0], "far.img", &data, 0o644);
    let out = line[0].try_mm(&["mesh", "send", "all", "file", "get", "far.img", "wait"]);
    assert!(out.status.success(), "{out:?}");
    for (i, n) in line.iter().enumerate().skip(1) {
        assert!(
            read(n, "far.img").as_deref() == Some(&data[..]),
            "n{} lacks it",
            i + 1
        );
    }
    // A name nobody holds still gets its error, once the view has settled.
    let out = line[3].try_mm(&["file", "get", "nope.img", "wait"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no node holds it (asked 3 other nodes)"),
        "{err}"
    );
}

/// Chunks of `name` that `holder` has sent, by its own count (`file served`).
fn holder_sent(holder: &Node, name: &str) -> u64 {
    common::rows(&holder.json(&["file", "served"]))
        .iter()
        .find(|r| r["filename"] == name)
        .and_then(|r| r["chunks"].parse().ok())
        .unwrap_or(0)
}

/// The label of `host` in the `sources` cell of `name`'s last finished
/// transfer on `n` (`h2:58 (failing 4)`).
fn source_label(n: &Node, name: &str, host: &str) -> String {
    // The row is kept a moment after the file is in place.
    let row = wait_for(&format!("the finished transfer of {name}"), LONG, || {
        let st = common::rows(&n.json(&["file", "status", "all"]));
        st.into_iter()
            .rfind(|r| r["filename"] == name && r["state"] == "done")
    });
    assert!(row["ended"].ends_with("s ago"), "{row:?}");
    row["sources"]
        .split(", ")
        .find(|s| s.starts_with(&format!("{host}:")))
        .unwrap_or_else(|| panic!("{host} is no source of {name}: {row:?}"))
        .to_string()
}

/// Waits until `host` has given at least one chunk of `n`'s transfer.
fn wait_served(n: &Node, host: &str) {
    wait_for(&format!("{host} to serve {}", n.name), LONG, || {
        let st = common::rows(&n.json(&["file", "status"]));
        let cell = st.first()?.get("sources")?.clone();
        let served: u64 = cell
            .split_whitespace()
            .find_map(|s| s.strip_prefix(&format!("{host}:")))?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        (served > 0).then_some(())
    });
}

#[test]
fn a_holder_killed_mid_transfer_is_dropped() {
    let lab = Lab::up(3, Some("40mbit"));
    let mut nodes = lab_nodes(&lab, 3);
    let data = content(24 << 20, 11);
    put(&nodes[0], "f.bin", &data, 0o644);
    put(&nodes[1], "f.bin", &data, 0o644);
    nodes[2].mm(&["file", "get", "f.bin"]);
    wait_served(&nodes[2], "h2");
    nodes[1].stop(true);
    wait_for("f.bin", LONG, || {
        read(&nodes[2], "f.bin").filter(|d| d.len() == data.len())
    });
    assert_eq!(read(&nodes[2], "f.bin").unwrap(), data);
    // h2 gave its part before it died, and was then no longer relied on.
    let h2 = source_label(&nodes[2], "f.bin", "h2");
    assert!(!h2.starts_with("h2:0"), "{h2}");
    assert!(h2.contains("(failing") || h2.contains("(dropped)"), "{h2}");
}

#[test]
fn a_stopped_holder_does_not_stall_the_transfer() {
    let lab = Lab::up(3, Some("40mbit"));
    let nodes = lab_nodes(&lab, 3);
    let data = content(24 << 20, 16);
    put(&nodes[0], "s.bin", &data, 0o644);
    put(&nodes[1], "s.bin", &data, 0o644);
    nodes[2].mm(&["file", "get", "s.bin"]);
    wait_served(&nodes[2], "h2");
    // A hung host, not a dead one: its connections stay open, and nothing
    // comes back on them.
    let _frozen = common::Stopped::new(nodes[1].pid().unwrap() as i32);
    wait_for("s.bin despite a stopped holder", LONG, || {
        read(&nodes[2], "s.bin").filter(|d| d.len() == data.len())
    });
    assert_eq!(read(&nodes[2], "s.bin").unwrap(), data);
    assert!(!source_label(&nodes[2], "s.bin", "h1").starts_with("h1:0"));
}

/// With every holder hung, the transfer shows it: no rate, no eta, the
/// sources marked, and a state that says for how long. When they come back,
/// so does the transfer.
#[test]
fn a_transfer_whose_holders_all_hang_says_so_and_resumes() {
    let lab = Lab::up(3, Some("40mbit"));
    let nodes = lab_nodes(&lab, 3);
    let data = content(48 << 20, 18);
    put(&nodes[0], "hung.bin", &data, 0o644);
    put(&nodes[1], "hung.bin", &data, 0o644);
    nodes[2].mm(&["file", "get", "hung.bin"]);
    wait_served(&nodes[2], "h1");
    {
        let _a = common::Stopped::new(nodes[0].pid().unwrap() as i32);
        let _b = common::Stopped::new(nodes[1].pid().unwrap() as i32);
        let row = wait_for("the stall to show", LONG, || {
            common::rows(&nodes[2].json(&["file", "status"]))
                .into_iter()
                .find(|r| r["filename"] == "hung.bin")
                .filter(|r| r["state"].starts_with("stalled (no data for "))
        });
        assert_eq!(row["rate"], "0 B/s", "{row:?}");
        assert_eq!(row["eta"], "-", "{row:?}");
        for h in ["h1", "h2"] {
            let label = row["sources"]
                .split(", ")
                .find(|s| s.starts_with(&format!("{h}:")))
                .unwrap_or_else(|| panic!("{h} is no source: {row:?}"));
            assert!(
                ["(stalled)", "(failing", "(dropped)"]
                    .iter()
                    .any(|m| label.contains(m)),
                "{h} looks healthy: {row:?}"
            );
        }
    }
    wait_for("hung.bin after the holders resume", LONG, || {
        read(&nodes[2], "hung.bin").filter(|d| d.len() == data.len())
    });
    assert_eq!(read(&nodes[2], "hung.bin").unwrap(), data);
}

#[test]
fn a_puller_killed_mid_transfer_resumes() {
    let lab = Lab::up(2, Some("40mbit"));
    let mut nodes = lab_nodes(&lab, 2);
    let data = content(24 << 20, 12);
    put(&nodes[0], "r.bin", &data, 0o644);
    nodes[1].mm(&["file", "get", "r.bin"]);
    // 4 MiB in: more than a quarter second, when have-bits are recorded.
    wait_chunks(
        &nodes[1],
        ((4 << 20) / mm_store::manifest::CHUNK_SIZE) as u32,
    );
    nodes[1].stop(true);
    // What the holder sent before the kill (its last reads for the dead
    // puller done by now).
    std::thread::sleep(Duration::from_secs(1));
    let sent_before = holder_sent(&nodes[0], "r.bin");
    // Between the kill and the restart, a chunk of every pair goes bad on
    // disk: what was recorded as here must be read back and checked.
    let cs = mm_store::manifest::CHUNK_SIZE;
    let part = std::fs::read_dir(nodes[1].base().join("files/.mm-partial"))
        .unwrap()
        .next()
        .expect("a partial file")
        .unwrap()
        .path();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
        for off in (cs..24 << 20).step_by(2 * cs as usize) {
            f.write_all_at(b"XXXX", off + 100).unwrap();
        }
    }
    nodes[1].start();
    wait_for("r.bin", LONG, || {
        read(&nodes[1], "r.bin").filter(|d| d.len() == data.len())
    });
    assert_eq!(read(&nodes[1], "r.bin").unwrap(), data);
    let log = nodes[1].log();
    let resumed = log
        .lines()
        .find(|l| l.contains("resuming r.bin"))
        .expect("a resume line");
    let recorded: u64 = resumed
        .split(": ")
        .last()
        .and_then(|r| r.split('/').next()?.parse().ok())
        .unwrap();
    // The summary counts what was here already and verified, so that the
    // sources' counts need not add up to the whole file.
    let kept: u64 = log
        .split("(and ")
        .nth(1)
        .and_then(|r| r.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no count of chunks kept across the restart:\n{log}"));
    assert!(kept >= 1, "nothing kept across the restart: {resumed}");
    assert!(
        kept < recorded,
        "the damaged chunks were taken as here ({kept} of {recorded})"
    );
    assert!(
        log.contains("chunks recorded as here did not verify; fetching them again"),
        "the damage was not reported"
    );
    // What was kept is not fetched again: the holder sent exactly the
    // rest, by its own count.
    let chunks = (24 << 20) / cs;
    let sent_after = holder_sent(&nodes[0], "r.bin") - sent_before;
    assert_eq!(
        sent_after,
        chunks - kept,
        "re-fetched chunks kept across the restart"
    );
    assert_eq!(partial_files(&nodes[1]), 0);
}

/// A puller killed mid-swarm: the others could not reach it, tell the
/// holder so (which stops pointing them at it), and finish. The holder's
/// line is at debug: the test nodes' default log filter has it (an
/// `MM_LOG` for a run must keep `mm_store::transfer::serve=debug`).
#[test]
fn a_puller_killed_mid_swarm_is_told_to_the_holder_and_the_others_finish() {
    let lab = Lab::up(4, Some("40mbit"));
    let mut nodes = lab_nodes(&lab, 4);
    let data = content(24 << 20, 44);
    put(&nodes[0], "k.bin", &data, 0o644);
    for p in &nodes[1..] {
        p.mm(&["file", "get", "k.bin"]);
    }
    // A third in: the victim was sent chunks first, and the others asked
    // it for some.
    wait_chunks(
        &nodes[1],
        ((8 << 20) / mm_store::manifest::CHUNK_SIZE) as u32,
    );
    nodes[1].stop(true);
    for p in &nodes[2..] {
        wait_for(&format!("k.bin on {}", p.name), LONG, || {
            read(p, "k.bin").filter(|d| d.len() == data.len())
        });
        assert!(
            read(p, "k.bin").unwrap() == data,
            "{}: k.bin differs",
            p.name
        );
    }
    let log = nodes[0].log();
    assert!(
        log.lines()
            .any(|l| l.contains("k.bin: h2 cannot be reached")),
        "the holder was not told that h2 is gone:\n{log}"
    );
}

#[test]
fn delete_cancels_a_transfer() {
    let lab = Lab::up(2, Some("20mbit"));
    let nodes = lab_nodes(&lab, 2);
    put(&nodes[0], "d.bin", &content(24 << 20, 13), 0o644);
    nodes[1].mm(&["file", "get", "d.bin"]);
    wait_for("the transfer to start", LONG, || {
        (!common::rows(&nodes[1].json(&["file", "status"])).is_empty()).then_some(())
    });
    assert!(nodes[1]
        .mm(&["file", "delete", "d.bin"])
        .contains("cancelled d.bin"));
    wait_for("the transfer to go", LONG, || {
        common::rows(&nodes[1].json(&["file", "status"]))
            .is_empty()
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(read(&nodes[1], "d.bin").is_none());
    assert_eq!(partial_files(&nodes[1]), 0);
    let out = nodes[1].try_mm(&["file", "delete", "d.bin"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such file"));
}

#[test]
fn not_enough_disk_is_a_clear_error() {
    let lab = Lab::up(2, None);
    let nodes = lab_nodes(&lab, 2);
    put(&nodes[0], "huge.bin", &content(40 << 20, 14), 0o644);
    // A node whose base is a 16 MiB tmpfs.
    let small = common::scratch_dir("tiny");
    let mnt = small.path();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot mount a tmpfs (needs root)");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _u = Unmount(mnt);
    let base = mnt.join("base");
    let tiny = Node::in_ns_with_base("tiny", &lab.ns(2), &base, &["--port", "9100"]);
    tiny.wait_size(3, LONG);
    let out = tiny.try_mm(&["file", "get", "huge.bin", "wait"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not enough disk space"), "{err}");
    assert!(!base.join("files/huge.bin").exists());
    drop(tiny);
}

#[test]
fn with_no_holder_left_the_transfer_waits_then_finishes() {
    let lab = Lab::up(2, Some("40mbit"));
    let mut nodes = lab_nodes(&lab, 2);
    let data = content(16 << 20, 15);
    put(&nodes[0], "w.bin", &data, 0o644);
    nodes[1].mm(&["file", "get", "w.bin"]);
    wait_chunks(&nodes[1], 1);
    nodes[0].stop(true);
    // Never silently abandoned: `file status` says it is waiting.
    let row = wait_for("the waiting state", LONG, || {
        let st = common::rows(&nodes[1].json(&["file", "status"]));
        st.into_iter()
            .next()
            .filter(|r| r["state"].starts_with("waiting for holders"))
    });
    // Nothing flows, so no rate and no eta (not those of the last second
    // it pulled).
    assert_eq!(
        (row["rate"].as_str(), row["eta"].as_str()),
        ("0 B/s", "-"),
        "{row:?}"
    );
    nodes[0].start();
    wait_for("w.bin", LONG, || {
        read(&nodes[1], "w.bin").filter(|d| d.len() == data.len())
    });
    assert_eq!(read(&nodes[1], "w.bin").unwrap(), data);
}

/// A mesh-wide get while nodes (the holder too) are killed and restarted at
/// random: every copy that appears under its name is whole, and every
/// puller ends with one (a restarted one resumes).
#[test]
fn kills_and_restarts_during_a_swarm_leave_only_whole_copies() {
    let lab = Lab::up(5, Some("80mbit"));
    let mut nodes = lab_nodes(&lab, 5);
    let data = content(32 << 20, 31);
    put(&nodes[0], "chaos.bin", &data, 0o644);
    nodes[0].mm(&["file", "get", "chaos.bin"]);
    for p in &nodes[1..] {
        p.mm(&["file", "get", "chaos.bin"]);
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("chaos seed {seed}");
    let mut x = seed | 1;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let check_whole = |nodes: &[Node]| {
        for p in &nodes[1..] {
            if let Some(got) = read(p, "chaos.bin") {
                assert!(
                    got == data,
                    "{} has a wrong chaos.bin under its name",
                    p.name
                );
            }
        }
    };
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(300 + next(1200)));
        check_whole(&nodes);
        let victim = next(5) as usize;
        nodes[victim].stop(next(2) == 0);
        std::thread::sleep(Duration::from_millis(next(800)));
        nodes[victim].start();
    }
    // Every puller, restarted or not, finishes (a killed one resumes; one
    // killed before it recorded the get asks again).
    for p in &nodes[1..] {
        if read(p, "chaos.bin").is_none() && common::rows(&p.json(&["file", "status"])).is_empty() {
            p.mm(&["file", "get", "chaos.bin"]);
        }
    }
    for p in &nodes[1..] {
        wait_for(&format!("chaos.bin on {}", p.name), LONG, || {
            read(p, "chaos.bin").filter(|d| d.len() == data.len())
        });
    }
    check_whole(&nodes);
    for p in &nodes[1..] {
        wait_for("partial files to go", LONG, || {
            (partial_files(p) == 0).then_some(())
        });
    }
}

/// The chunk requests `name`'s last completed pull on `n` made, from its
/// log line.
fn requests(n: &Node, name: &str) -> u64 {
    let log = n.log();
    let line = log
        .lines()
        .rfind(|l| l.contains(&format!("{name}: complete")))
        .unwrap_or_else(|| panic!("no completion line for {name}"));
    let before = line
        .split(" chunk requests")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .unwrap_or_default();
    before
        .parse()
        .unwrap_or_else(|_| panic!("no request count in {line}"))
}

/// Two sites, each node saying its own (`--site`): a puller at the
/// holder's site asks nothing of a complete holder at the other one (which
/// would be both quicker to reach and as complete, were sites not said).
#[test]
fn a_puller_asks_nothing_of_another_site_while_its_own_has_the_file() {
    let lab = Lab::with(
        3,
        Opts {
            sites: vec![2, 1],
            ..Opts::default()
        },
    );
    let site = |i: usize| if i <= 2 { "north" } else { "south" };
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node::in_ns(&format!("h{i}"), &lab.ns(i), &["--site", site(i)]))
        .collect();
    // mDNS stays in its site.
    nodes[2].mm(&["mesh", "dial", &format!("{}:9000", lab.ip(1))]);
    for n in &nodes {
        n.wait_size(3, LONG);
    }
    assert_eq!(nodes[0].status("site"), "north");
    assert_eq!(nodes[2].status("site"), "south");
    let chunks = (16 << 20) / mm_store::manifest::CHUNK_SIZE;
    let data = content(16 << 20, 31);
    put(&nodes[0], "s.bin", &data, 0o644);
    nodes[2].mm(&["file", "get", "s.bin", "wait"]);
    assert_eq!(read(&nodes[2], "s.bin").unwrap(), data);
    // A moment later, as an operator would: h3 stopped asking h1, which
    // sends h2 whole runs now (single chunks while another pulls).
    std::thread::sleep(Duration::from_secs(3));
    nodes[1].mm(&["file", "get", "s.bin", "wait"]);
    assert_eq!(read(&nodes[1], "s.bin").unwrap(), data);
    let asks = requests(&nodes[1], "s.bin");
    assert!(
        asks <= chunks / 4 + 8,
        "{asks} requests for {chunks} chunks"
    );
    // h3 is tracked (as a complete holder), and asked for nothing.
    let from = |n: &Node, h: &str| {
        let served = n.served_by("s.bin");
        let c = served
            .iter()
            .filter(|(s, _)| s == h)
            .map(|(_, c)| c)
            .sum::<u64>();
        (c, served)
    };
    let (h1, served) = from(&nodes[1], "h1");
    assert_eq!((h1, from(&nodes[1], "h3").0), (chunks, 0), "{served:?}");
    // h1 restarts: h2's data connection to it was closed meanwhile. The
    // next pull opens a fresh one rather than fail a chunk on the old one
    // (and take it from the other site).
    nodes[0].stop(false);
    nodes[0].start();
    for n in &nodes {
        n.wait_size(3, LONG);
    }
    nodes[1].mm(&["file", "delete", "s.bin"]);
    nodes[1].mm(&["file", "get", "s.bin", "wait"]);
    assert_eq!(read(&nodes[1], "s.bin").unwrap(), data);
    let (h3, served) = from(&nodes[1], "h3");
    assert_eq!(h3, 0, "{served:?}");
}
