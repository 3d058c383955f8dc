//! What a new operator hits (issue 15): each mistake or mishap gets an
//! answer that says what happened, on real nodes on loopback.

mod common;

use std::time::Duration;

use common::{run_bounded, scratch_dir, Node, Stopped, MM};

const LONG: Duration = Duration::from_secs(60);

/// The error rows of a `mesh send`, by host.
fn errors_of(answer: &[serde_json::Value]) -> Vec<(String, String)> {
    answer
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap_or("").to_string(),
                r["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `mm serve` with these arguments, which must fail at start.
fn serve_fails(args: &[&str]) -> String {
    let base = scratch_dir("busy");
    let key = common::cluster_key().display().to_string();
    let mut cmd = std::process::Command::new(MM);
    cmd.args(["serve", "--base", &base.path().display().to_string()])
        .args(["--listen", "127.0.0.1", "--no-mdns"]);
    if !args.contains(&"--psk-file") {
        cmd.args(["--psk-file", &key]);
    }
    let out = run_bounded(cmd.args(args), Duration::from_secs(30));
    let err = stderr_of(&out);
    assert!(!out.status.success(), "mm serve {args:?} started: {err}");
    err
}

/// A second node on a port in use does not start next to the first (the
/// overlay listens with SO_REUSEPORT, which let it): the error names the
/// port. The same for an explicit --data-port.
#[test]
fn a_port_in_use_is_an_error_that_names_it() {
    let a = Node::local("a", &[]);
    let port = a.port();
    let err = serve_fails(&["--name", "b", "--port", &port]);
    assert!(
        err.contains(&format!("port {port} is in use")) && err.contains("--port"),
        "{err}"
    );
    let data_port = {
        let log = a.log();
        let at = log.find("data channel on port ").expect("data port logged") + 21;
        log[at..].split_whitespace().next().unwrap().to_string()
    };
    let err = serve_fails(&["--name", "c", "--port", "0", "--data-port", &data_port]);
    assert!(
        err.contains(&format!(":{data_port}")) && err.contains("--data-port"),
        "{err}"
    );
    // The first node was not disturbed.
    a.mm(&["mesh", "status"]);
}

/// A frozen direct peer's row says `timed out`, not the request-response
/// internals; a node that left says so, and when; and `mesh status` does
/// not count a frozen peer the mesh already dropped.
#[test]
fn mesh_send_rows_say_timed_out_and_left_the_mesh() {
    let a = Node::local("a", &[]);
    let mut b = Node::local("b", &["--peer", &a.addr()]);
    a.wait_size(2, LONG);
    a.mm(&["mesh", "timeout", "2"]);
    {
        let _frozen = Stopped::new(b.pid().unwrap() as i32);
        let ans = a.json(&["mesh", "send", "b", "version"]);
        assert_eq!(
            errors_of(&ans),
            vec![("b".to_string(), "timed out".to_string())],
            "{ans:?}"
        );
        // Once the mesh drops it, it counts as a peer no longer.
        a.wait_size(1, LONG);
        assert_eq!(a.status("peers"), "0");
    }
    b.stop(true);
    let ans = a.json(&["mesh", "send", "b", "version"]);
    let errs = errors_of(&ans);
    assert_eq!(errs.len(), 1, "{ans:?}");
    assert!(
        errs[0].0 == "b" && errs[0].1.starts_with("left the mesh ") && errs[0].1.ends_with(" ago"),
        "{ans:?}"
    );
    // A name never seen is still what it was.
    let ans = a.json(&["mesh", "send", "nobody", "version"]);
    assert_eq!(errors_of(&ans)[0].1, "no such host", "{ans:?}");
}

/// `file get ... from HOST` names the real problem: a host that does not
/// exist, or one without the file (and who has it); `hash` takes hex only.
#[test]
fn file_get_from_and_hash_say_what_is_wrong() {
    let a = Node::local("a", &[]);
    let b = Node::local("b", &["--peer", &a.addr()]);
    let c = Node::local("c", &["--peer", &a.addr()]);
    a.wait_size(3, LONG);
    b.wait_size(3, LONG);
    std::fs::write(b.base().join("files").join("x.bin"), b"some bytes").unwrap();
    let fails = |args: &[&str]| {
        let out = a.try_mm(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", stderr_of(&out));
        stderr_of(&out)
    };
    let err = fails(&["file", "get", "x.bin", "from", "n9"]);
    assert!(err.contains("no such host: n9"), "{err}");
    let err = fails(&["file", "get", "x.bin", "from", "c"]);
    assert!(
        err.contains("x.bin: c does not hold it; held by b"),
        "{err}"
    );
    let err = fails(&["file", "get", "x.bin", "hash", "zzzz"]);
    assert!(err.contains("a hash is hex digits"), "{err}");
    // And the right ones work.
    a.mm(&["file", "get", "x.bin", "from", "b", "wait"]);
    assert_eq!(
        std::fs::read(a.base().join("files").join("x.bin")).unwrap(),
        b"some bytes"
    );
    drop(c);
}

/// `mesh wait` holds a script until the mesh has formed, and says what is
/// missing when it gives up; `file get` and `mesh send all` right after a
/// start wait for the first peer instead of finding nobody.
#[test]
fn scripts_can_wait_for_the_mesh_and_a_fresh_node_finds_its_peers() {
    let a = Node::local("a", &[]);
    let out = a.try_mm(&["mesh", "wait", "2", "1"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no 2 nodes after 1s; the mesh has 1 (a)"),
        "{err}"
    );
    std::fs::write(a.base().join("files").join("early.bin"), b"early").unwrap();
    // Asked the moment its control socket answers, before its first peer.
    let b = Node::local("b", &["--peer", &a.addr()]);
    b.mm(&["file", "get", "early.bin", "wait"]);
    assert_eq!(
        std::fs::read(b.base().join("files").join("early.bin")).unwrap(),
        b"early"
    );
    let c = Node::local("c", &["--peer", &a.addr()]);
    let ans = c.json(&["mesh", "send", "all", "version"]);
    assert!(
        !ans.is_empty() && errors_of(&ans).iter().all(|(_, e)| e.is_empty()),
        "{ans:?}"
    );
    a.mm(&["mesh", "wait", "3"]);
    a.mm(&["mesh", "wait", "a,b,c", "30"]);
    let out = a.try_mm(&["mesh", "wait", "b,zed[1-2]", "0.5"]);
    let err = stderr_of(&out);
    assert!(err.contains("no zed[1-2] after 0.5s"), "{err}");
}

/// A key file that others can read is taken, with a warning that says why
/// it matters; one that is not a key says what is wrong in words.
#[test]
fn key_files_that_are_readable_or_wrong_are_explained() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch_dir("keys");
    let open_key = dir.path().join("open.key");
    std::fs::copy(common::cluster_key(), &open_key).unwrap();
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let a = Node::local("a", &["--psk-file", &open_key.display().to_string()]);
    assert!(
        a.log().contains("can be read by other users (mode 644)"),
        "{}",
        a.log()
    );
    let quiet = Node::local("q", &[]);
    assert!(!quiet.log().contains("can be read by other users"));
    let bad_key = dir.path().join("bad.key");
    std::fs::write(&bad_key, "/key/swarm/psk/1.0.0/\n/base16/\nxyz\n").unwrap();
    let err = serve_fails(&["--psk-file", &bad_key.display().to_string(), "--port", "0"]);
    assert!(
        err.contains("not a cluster key: its key is not 64 hex digits long")
            && !err.contains("Invalid"),
        "{err}"
    );
}

/// A node without a key that a keyed node keeps dialling says that a key
/// may be the reason, and so does the keyed node of its `--peer`; a
/// `--peer` where nothing listens is said to be that; `mesh dial HOST`
/// without a port says which port it tried.
#[test]
fn key_mismatches_and_portless_dials_say_what_to_do() {
    let open = Node::local("open", &["--insecure"]);
    let key = common::cluster_key().display().to_string();
    let keyed = Node::local("keyed", &["--psk-file", &key, "--peer", &open.addr()]);
    common::wait_for("the unkeyed side to explain", LONG, || {
        open.log()
            .contains("this node has none: give it the same key (--psk-file)")
            .then_some(())
    });
    let peer = format!(
        "--peer /ip4/{} not reached",
        open.addr().replace(':', "/tcp/")
    );
    common::wait_for("the keyed side to explain", LONG, || {
        keyed
            .log()
            .contains(&format!(
                "{peer} (cluster key mismatch, or the peer is down?)"
            ))
            .then_some(())
    });
    // Port 1 of loopback: nothing listens, the connection is refused.
    let alone = Node::local("alone", &["--peer", "127.0.0.1:1"]);
    common::wait_for("a refused --peer to be explained", LONG, || {
        alone
            .log()
            .contains("--peer /ip4/127.0.0.1/tcp/1 not reached (nothing listens there")
            .then_some(())
    });
    let port = keyed.port();
    let out = keyed.try_mm(&["mesh", "dial", "127.0.0.2"]);
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!(
            "no port given, so this node's port {port} was tried: use 127.0.0.2:PORT"
        )),
        "{err}"
    );
}

/// A node started with a name the mesh already has (a cloned VM image
/// keeps the hostname) stops with an error that says so; the mesh shows the
/// clash on every node, and the first holder of the name stays.
#[test]
fn a_newcomer_with_a_name_in_use_stops_and_the_mesh_shows_the_clash() {
    let first = Node::local("n1", &[]);
    let other = Node::local("n2", &["--peer", &first.addr()]);
    first.wait_size(2, LONG);
    // Up long enough to be the older of the two by any count.
    std::thread::sleep(Duration::from_secs(4));
    let mut clone = Node::local("n1", &["--peer", &other.addr()]);
    let status = common::wait_for("the clone to stop", LONG, || clone.exit_status());
    assert_eq!(status.code(), Some(1), "{}", clone.log());
    assert!(
        clone
            .log()
            .contains("the name 'n1' is already taken in this mesh"),
        "{}",
        clone.log()
    );
    for n in [&first, &other] {
        common::wait_for("the clash to show", LONG, || {
            (n.status("clashes") == "n1").then_some(())
        });
        let list = n.mm(&["mesh", "list"]);
        assert!(
            list.contains("! name clash: two nodes claim 'n1'; n2 refused"),
            "{list}"
        );
    }
    assert_eq!(first.size(), 2);
    first.mm(&["mesh", "send", "n2", "version"]);
}

/// `file status` fits a terminal: minimega's tempdir column, a long path,
/// only with `wide`; when ended rows ended, only with `all`.
#[test]
fn file_status_leaves_the_tempdir_to_wide() {
    let a = Node::local("a", &[]);
    let header = |args: &[&str]| -> Vec<String> {
        let v = a.json(args);
        v[0]["header"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_string())
            .collect()
    };
    let short = header(&["file", "status"]);
    assert_eq!(
        short,
        [
            "filename",
            "completed",
            "queued",
            "bytes",
            "rate",
            "sources",
            "eta",
            "state"
        ]
    );
    let wide = header(&["file", "status", "wide"]);
    assert_eq!(wide[..2], ["filename", "tempdir"]);
    assert_eq!(wide[2..], short[1..]);
    // `all` adds when each ended row ended: repeated pulls of one file
    // are otherwise alike.
    let all = header(&["file", "status", "all"]);
    assert_eq!(all[..short.len()], short[..]);
    assert_eq!(all[short.len()..], ["ended"]);
    let all_wide = header(&["file", "status", "all", "wide"]);
    assert_eq!(all_wide[..wide.len()], wide[..]);
    assert_eq!(all_wide[wide.len()..], ["ended"]);
}
