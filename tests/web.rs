//! `http://` and `https://` words (issue 11): nodes on a lab of network
//! namespaces, and a web server of the test's own (tests/web/server.py) in
//! a lab host of its own, whose log of GETs proves what was downloaded and
//! how often.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Lab, Node};

const LONG: Duration = Duration::from_secs(60);

struct Server {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
}

impl Server {
    /// The server in lab host `ns`, on `addr`.
    fn start(root: &Path, ns: &str, addr: &str, tls: Option<(&Path, &Path)>) -> Server {
        let log = root.join("gets.log");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "python3"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/web/server.py"
            ))
            .arg(root.join("www"))
            .arg(&log)
            .arg(addr);
        if let Some((c, k)) = tls {
            cmd.arg(c).arg(k);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().expect("the server's port");
        Server { child, port, log }
    }

    /// How many times `path` was asked for.
    fn gets(&self, path: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == path)
            .count()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sha(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Nothing half-downloaded is left on `n`: no partial web file.
fn no_partials(n: &Node) {
    let dir = n.base().join("files/.mm-partial");
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("web-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "{}: {left:?}", n.name);
}

#[test]
fn a_url_is_downloaded_once_for_the_mesh_and_served_by_it_after() {
    let tmp = common::scratch_dir("web");
    std::fs::create_dir_all(tmp.path().join("www/images")).unwrap();
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 253) as u8).collect();
    std::fs::write(tmp.path().join("www/images/web.img"), &data).unwrap();
    let lab = Lab::up(4, None);
    let srv = Server::start(tmp.path(), &lab.ns(4), &lab.ip(4), None);
    let url = format!("http://{}:{}/images/web.img", lab.ip(4), srv.port);
    let w1 = Node::in_ns("w1", &lab.ns(1), &[]);
    let w2 = Node::in_ns("w2", &lab.ns(2), &[]);
    let w3 = Node::in_ns("w3", &lab.ns(3), &["--allow-shell"]);
    for n in [&w1, &w2, &w3] {
        n.wait_size(3, LONG);
    }
    // Two nodes ask at once: one download.
    let answers: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = [&w1, &w2]
            .into_iter()
            .map(|n| s.spawn(|| n.mm(&["shell", "sha256sum", &url])))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let want = sha(&tmp.path().join("www/images/web.img"));
    for (n, a) in [&w1, &w2].iter().zip(&answers) {
        let local = n.base().join("files/images/web.img");
        assert_eq!(
            a.trim(),
            format!("{want}  {}", local.display()),
            "{}",
            n.name
        );
    }
    assert_eq!(srv.gets("/images/web.img"), 1, "downloaded more than once");
    // A third, through mesh send, gets it from the mesh, not the web.
    let ans = w1.json(&["mesh", "send", "w3", "shell", "sha256sum", &url]);
    let w3_path = w3.base().join("files/images/web.img");
    assert_eq!(
        ans[0]["response"].as_str().unwrap().trim(),
        format!("{want}  {}", w3_path.display()),
        "{ans:?}"
    );
    w3.mm(&["vm", "config", "disk", &url]);
    assert_eq!(
        w3.mm(&["vm", "config", "disk"]).trim(),
        w3_path.display().to_string()
    );
    assert_eq!(
        std::fs::read(w3.base().join("files/images/web.img")).unwrap(),
        data
    );
    assert_eq!(srv.gets("/images/web.img"), 1, "w3 went to the web");

    // Errors say what went wrong and leave nothing.
    let base = format!("http://{}:{}", lab.ip(4), srv.port);
    for (path, why) in [
        ("/missing.img", "the server answered 404"),
        ("/short", "the body ended after 10 of 1000 bytes"),
        ("/loop", "more than 5 redirects"),
    ] {
        let out = w2.try_mm(&["shell", "true", &format!("{base}{path}")]);
        assert_eq!(out.status.code(), Some(1), "{path}");
        assert!(stderr_of(&out).contains(why), "{path}: {}", stderr_of(&out));
        assert!(!w2.base().join("files").join(&path[1..]).exists(), "{path}");
    }
    drop(srv);
    let out = w2.try_mm(&["shell", "true", &format!("{base}/gone.img")]);
    assert!(
        stderr_of(&out).contains("onnection refused"),
        "{}",
        stderr_of(&out)
    );
    for n in [&w1, &w2, &w3] {
        no_partials(n);
    }
}

#[test]
fn https_trusts_the_operators_ca_and_refuses_others() {
    let tmp = common::scratch_dir("tls");
    let d = tmp.path();
    std::fs::create_dir_all(d.join("www")).unwrap();
    std::fs::write(d.join("www/secure.img"), b"over tls").unwrap();
    let ssl = |args: &[&str]| {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "openssl {args:?}");
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=mm test CA",
    ]);
    ssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=mm test server",
    ]);
    let lab = Lab::up(3, None);
    let ip = lab.ip(3);
    std::fs::write(d.join("ext.cnf"), format!("subjectAltName=IP:{ip}\n")).unwrap();
    ssl(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let srv = Server::start(
        d,
        &lab.ns(3),
        &ip,
        Some((&d.join("srv.pem"), &d.join("srv.key"))),
    );
    let url = format!("https://{ip}:{}/secure.img", srv.port);
    let ca = d.join("ca.pem").display().to_string();
    let trusting = Node::in_ns("t1", &lab.ns(1), &["--ca-file", &ca]);
    let out = trusting.mm(&["shell", "cat", &url]);
    assert_eq!(out.trim_end(), "over tls");
    // A node that does not trust the CA refuses the server.
    // (In a mesh of its own: with t1 it would get the file from t1.)
    let other = Node::in_ns("t2", &lab.ns(2), &["--context", "apart"]);
    let out = other.try_mm(&["shell", "cat", &url]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr_of(&out);
    assert!(
        e.contains("certificate") || e.contains("UnknownIssuer"),
        "{e}"
    );
    no_partials(&other);
    assert!(!other.base().join("files/secure.img").exists());
}
