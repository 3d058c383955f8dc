//! Paths that fetch themselves and host commands (issue 11): three nodes
//! on a lab of network namespaces.

mod common;

use std::time::Duration;

use common::{rows, Lab, Node};

const LONG: Duration = Duration::from_secs(60);

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn md5(data: &[u8]) -> String {
    let out = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// A qcow2 (version 2) header naming `backing`: what a reader of backing
/// files looks at.
fn qcow2(backing: Option<&str>) -> Vec<u8> {
    let mut h = vec![0u8; 72];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&2u32.to_be_bytes());
    if let Some(b) = backing {
        h[8..16].copy_from_slice(&72u64.to_be_bytes());
        h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
        h.extend_from_slice(b.as_bytes());
    }
    h
}

#[test]
fn file_words_fetch_on_the_node_that_runs_the_command_and_shell_needs_the_opt_in() {
    let lab = Lab::up(3, None);
    let n1 = Node::in_ns("p1", &lab.ns(1), &["--allow-shell"]);
    let n2 = Node::in_ns("p2", &lab.ns(2), &["--allow-shell"]);
    let n3 = Node::in_ns("p3", &lab.ns(3), &[]);
    for n in [&n1, &n2, &n3] {
        n.wait_size(3, LONG);
    }
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::create_dir_all(n1.base().join("files/images")).unwrap();
    std::fs::write(n1.base().join("files/images/x.img"), &data).unwrap();
    let sum = md5(&data);

    // Each target fetches the file for itself and sums its own copy; a
    // node without --allow-shell refuses, naming the flag.
    let ans = n1.json(&[
        "mesh",
        "send",
        "all",
        "shell",
        "md5sum",
        "file:images/x.img",
    ]);
    let by: std::collections::HashMap<&str, &serde_json::Value> = ans
        .iter()
        .map(|r| (r["host"].as_str().unwrap(), r))
        .collect();
    let p2 = by["p2"]["response"].as_str().unwrap();
    let p2_path = n2.base().join("files/images/x.img");
    assert_eq!(
        p2.trim(),
        format!("{sum}  {}", p2_path.display()),
        "{ans:?}"
    );
    assert_eq!(std::fs::read(&p2_path).unwrap(), data);
    let p3 = by["p3"]["error"].as_str().unwrap();
    assert!(
        p3.contains("cannot run `shell` via meshage: this node was not started with --allow-shell"),
        "{ans:?}"
    );
    // From its own control socket a node always runs it; a leading `/`
    // is the files directory's root, as minimega writes it.
    let out = n3.mm(&["shell", "md5sum", "file:/images/x.img"]);
    let p3_path = n3.base().join("files/images/x.img");
    assert_eq!(out.trim(), format!("{sum}  {}", p3_path.display()));
    // A glob is every match, one word each, fetched.
    std::fs::write(n1.base().join("files/images/y.img"), b"y").unwrap();
    let out = n2.mm(&["shell", "ls", "file:images/*.img"]);
    let want: Vec<String> = ["x.img", "y.img"]
        .iter()
        .map(|f| n2.base().join("files/images").join(f).display().to_string())
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
    let out = n2.try_mm(&["shell", "ls", "file:images/*.none"]);
    assert!(
        stderr_of(&out).contains("file:images/*.none: "),
        "{}",
        stderr_of(&out)
    );
    // vm config shows the local path.
    n2.mm(&["vm", "config", "disk", "file:images/x.img"]);
    assert_eq!(
        n2.mm(&["vm", "config", "disk"]).trim(),
        p2_path.display().to_string()
    );
    // A diskspec's options after a file: word stay options: only its path
    // is fetched.
    n2.mm(&[
        "vm",
        "config",
        "disks",
        "file:images/x.img,virtio,unsafe",
        "file:images/x.img",
    ]);
    assert_eq!(
        n2.mm(&["vm", "config", "disks"]).trim(),
        format!("{0},virtio,unsafe {0}", p2_path.display())
    );
    // A qcow2 image brings its backing files, named relative to it.
    std::fs::create_dir_all(n1.base().join("files/images/layer")).unwrap();
    std::fs::write(n1.base().join("files/images/base.qcow2"), qcow2(None)).unwrap();
    std::fs::write(
        n1.base().join("files/images/layer/mid.qcow2"),
        qcow2(Some("../base.qcow2")),
    )
    .unwrap();
    std::fs::write(
        n1.base().join("files/images/layer/top.qcow2"),
        qcow2(Some("mid.qcow2")),
    )
    .unwrap();
    n2.mm(&["vm", "config", "disk", "file:images/layer/top.qcow2"]);
    for f in ["layer/top.qcow2", "layer/mid.qcow2", "base.qcow2"] {
        let here = n2.base().join("files/images").join(f);
        let there = n1.base().join("files/images").join(f);
        assert_eq!(std::fs::read(&here).ok(), std::fs::read(&there).ok(), "{f}");
    }
    // One that names a file outside the files directory is refused.
    std::fs::write(
        n1.base().join("files/images/evil.qcow2"),
        qcow2(Some("../../node.key")),
    )
    .unwrap();
    let out = n2.try_mm(&["vm", "config", "disk", "file:images/evil.qcow2"]);
    assert!(
        stderr_of(&out).contains("is outside the files directory"),
        "{}",
        stderr_of(&out)
    );
    // A word that cannot be fetched fails the command, which does not run.
    let marker = n2.base().join("marker");
    let out = n2.try_mm(&[
        "shell",
        "touch",
        &marker.display().to_string(),
        "file:nope.img",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("file:nope.img: ") && stderr_of(&out).contains("no node holds it"),
        "{}",
        stderr_of(&out)
    );
    assert!(!marker.exists(), "the command ran");
    // tar: fetches the tarball, unpacks it next to itself, and is its one
    // top directory; two top entries are an error that says so.
    let src = common::scratch_dir("tarsrc");
    std::fs::create_dir_all(src.path().join("tool/bin")).unwrap();
    std::fs::write(src.path().join("tool/bin/run"), b"echo hi\n").unwrap();
    std::fs::write(src.path().join("stray"), b"x").unwrap();
    std::fs::create_dir_all(n1.base().join("files/pkgs")).unwrap();
    let tar = |out: &std::path::Path, what: &[&str]| {
        let st = std::process::Command::new("tar")
            .arg("czf")
            .arg(out)
            .arg("-C")
            .arg(src.path())
            .args(what)
            .status()
            .unwrap();
        assert!(st.success());
    };
    tar(&n1.base().join("files/pkgs/tool.tar.gz"), &["tool"]);
    tar(&n1.base().join("files/pkgs/two.tgz"), &["tool", "stray"]);
    let out = n2.mm(&["shell", "ls", "-R", "tar:pkgs/tool.tar.gz"]);
    let top = n2.base().join("files/pkgs/tool");
    assert!(out.contains("bin") && out.contains("run"), "{out}");
    assert_eq!(std::fs::read(top.join("bin/run")).unwrap(), b"echo hi\n");
    // Its record is mm's own: not listed, not served.
    assert!(n2.base().join("files/pkgs/.tool.tar.gz.mm-tar").exists());
    let list = n2.mm(&["file", "list", "pkgs"]);
    assert!(!list.contains("mm-tar"), "{list}");
    let out = n3.try_mm(&["file", "get", "pkgs/.tool.tar.gz.mm-tar", "from", "p2"]);
    assert!(!out.status.success());
    let out = n2.try_mm(&["shell", "ls", "tar:pkgs/two.tgz"]);
    assert!(
        stderr_of(&out).contains("has 2 top-level entries (stray, tool), not one directory"),
        "{}",
        stderr_of(&out)
    );
    // Through mesh send, the target resolves the word for itself.
    let ans = n1.json(&[
        "mesh",
        "send",
        "p2",
        "shell",
        "echo",
        "tar:pkgs/tool.tar.gz",
    ]);
    assert_eq!(
        ans[0]["response"].as_str().unwrap().trim(),
        top.display().to_string(),
        "{ans:?}"
    );
    // A tarball elsewhere on the node, by its absolute path: next to itself.
    let elsewhere = common::scratch_dir("tarlocal");
    let local = elsewhere.path().join("local.tar.gz");
    tar(&local, &["tool"]);
    let out = n3.mm(&["shell", "echo", &format!("tar:{}", local.display())]);
    assert_eq!(
        out.trim(),
        elsewhere.path().join("tool").display().to_string()
    );
    // Never over a directory it did not unpack.
    let again = src.path().join("again.tar.gz");
    tar(&again, &["tool"]);
    let out = n3.try_mm(&["shell", "echo", &format!("tar:{}", again.display())]);
    assert!(
        stderr_of(&out).contains("is there already and was not unpacked from it"),
        "{}",
        stderr_of(&out)
    );
    // The file commands take bare names: nothing is rewritten.
    let out = n2.try_mm(&["file", "get", "file:images/x.img"]);
    assert!(
        stderr_of(&out).contains("no node holds it"),
        "{}",
        stderr_of(&out)
    );
    // A failing program is an error with its status and stderr.
    let out = n2.try_mm(&["shell", "ls", "/nonexistent-mm-dir"]);
    let e = stderr_of(&out);
    assert!(
        e.contains("ls failed (exit status 2)") && e.contains("nonexistent-mm-dir"),
        "{e}"
    );

    // background: started, listed, cleared; refused from the mesh without
    // the opt-in.
    let started = n2.mm(&["background", "sleep", "300"]);
    assert!(started.starts_with("started 1 (pid "), "{started}");
    let listed = rows(&n2.json(&["background"]));
    assert_eq!(
        (listed[0]["state"].as_str(), listed[0]["command"].as_str()),
        ("running", "sleep 300")
    );
    let pid = listed[0]["pid"].clone();
    n2.mm(&["clear", "background", "1"]);
    assert!(rows(&n2.json(&["background"])).is_empty());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "sleep survived"
    );
    let ans = n1.json(&["mesh", "send", "p3", "background", "sleep", "1"]);
    assert!(
        ans[0]["error"].as_str().unwrap().contains("--allow-shell"),
        "{ans:?}"
    );
}
