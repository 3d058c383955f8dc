//! Namespaces across a mesh (issue 10): real nodes on loopback, a head
//! node and three hosts.

mod common;

use std::time::Duration;

use common::{rows, Node};

const LONG: Duration = Duration::from_secs(60);

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn namespaces(n: &Node) -> Vec<(String, String)> {
    rows(&n.json(&["namespace"]))
        .into_iter()
        .map(|r| (r["namespace"].clone(), r["active"].clone()))
        .collect()
}

#[test]
fn a_namespace_holds_the_mesh_but_the_head_and_survives_a_restart() {
    // The head dials n1 (again after its restart, on a new port).
    let n1 = Node::local("n1", &[]);
    let n: Vec<Node> = (2..=3)
        .map(|i| Node::local(&format!("n{i}"), &["--peer", &n1.addr()]))
        .collect();
    let mut head = Node::local("head", &["--peer", &n1.addr()]);
    head.wait_size(4, LONG);
    // The default holds the head alone.
    assert_eq!(head.mm(&["ns", "hosts"]).trim(), "head");
    head.mm(&["namespace", "foo"]);
    assert_eq!(head.mm(&["ns", "hosts"]).trim(), "n[1-3]");
    assert_eq!(
        namespaces(&head),
        vec![("foo".into(), "true".into()), ("mm".into(), "false".into())]
    );
    // One command in another namespace leaves the active one alone.
    assert_eq!(head.mm(&["namespace", "mm", "ns", "hosts"]).trim(), "head");
    assert_eq!(head.mm(&["ns", "hosts"]).trim(), "n[1-3]");
    // Unknown hosts change nothing.
    let out = head.try_mm(&["ns", "add-hosts", "n9,head"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("not in the mesh: n9; nothing changed"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(head.mm(&["ns", "hosts"]).trim(), "n[1-3]");
    head.mm(&["ns", "del-hosts", "n2"]);
    assert_eq!(head.mm(&["ns", "hosts"]).trim(), "n[1,3]");
    let out = head.try_mm(&["ns", "del-hosts", "n2"]);
    assert!(
        stderr_of(&out).contains("not in namespace foo: n2"),
        "{}",
        stderr_of(&out)
    );
    head.mm(&["ns", "add-hosts", "localhost"]);
    assert_eq!(head.mm(&["ns", "hosts"]).trim(), "head,n[1,3]");
    head.mm(&["ns", "queueing", "true"]);
    head.mm(&["ns", "load", "memcommit"]);
    // ns run: every host of the namespace, one table.
    let ans = head.json(&["ns", "run", "version"]);
    let hosts: Vec<&str> = ans.iter().map(|r| r["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["head", "n1", "n3"], "{ans:?}");
    assert!(ans.iter().all(|r| r["error"] == ""), "{ans:?}");
    // The head is a host too: its part is its own row, not the fan-out
    // `host` makes in a namespace (which listed n1 and n3 twice).
    let ans = head.json(&["ns", "run", "host"]);
    let mut hosts: Vec<&str> = ans.iter().map(|r| r["host"].as_str().unwrap()).collect();
    hosts.sort();
    assert_eq!(hosts, ["head", "n1", "n3"], "{ans:?}");
    // One command in a namespace from the mesh creates none there.
    let ans = head.json(&["mesh", "send", "n1", "namespace", "foo", "vm", "info"]);
    assert!(ans.iter().all(|r| r["error"] == ""), "{ans:?}");
    let there = head.json(&["mesh", "send", "n1", "namespace"]);
    let names: Vec<String> = rows(&there)
        .into_iter()
        .map(|r| r["namespace"].clone())
        .collect();
    assert_eq!(names, ["mm"], "{there:?}");
    // Never through mesh send, nor nested.
    let ans = head.json(&["mesh", "send", "n1", "ns", "run", "version"]);
    assert!(
        ans[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot run `ns run` via meshage"),
        "{ans:?}"
    );
    let out = head.try_mm(&["ns", "run", "ns", "run", "version"]);
    assert!(
        stderr_of(&out).contains("cannot run `ns run` via ns run"),
        "{}",
        stderr_of(&out)
    );
    // Kept in sled: a restart brings it all back.
    head.stop(false);
    head.start();
    head.wait_size(4, LONG);
    assert_eq!(head.mm(&["ns", "hosts"]).trim(), "head,n[1,3]");
    assert_eq!(head.mm(&["ns", "queueing"]).trim(), "true");
    assert_eq!(head.mm(&["ns", "load"]).trim(), "memcommit");
    // Clearing the active one returns to mm.
    head.mm(&["clear", "namespace"]);
    assert_eq!(namespaces(&head), vec![("mm".into(), "true".into())]);
    assert_eq!(head.mm(&["ns", "hosts"]).trim(), "head");
    drop((n1, n));
}

#[test]
fn a_new_namespace_on_a_lone_node_holds_that_node() {
    let a = Node::local("alone", &[]);
    a.mm(&["namespace", "solo"]);
    assert_eq!(a.mm(&["ns", "hosts"]).trim(), "alone");
    let out = a.try_mm(&["namespace", "bad/name"]);
    assert!(
        stderr_of(&out).contains("invalid namespace name"),
        "{}",
        stderr_of(&out)
    );
    let out = a.try_mm(&["clear", "namespace", "nope"]);
    assert!(
        stderr_of(&out).contains("no such namespace: nope"),
        "{}",
        stderr_of(&out)
    );
}

/// Two launches at once would read the same queue and free names and
/// could place the same VMs twice: the second is refused while the first
/// waits on a host that does not answer.
#[test]
fn one_vm_launch_at_a_time_in_a_namespace() {
    let n1 = Node::local("n1", &[]);
    let head = Node::local("head", &["--peer", &n1.addr()]);
    head.wait_size(2, LONG);
    head.mm(&["namespace", "foo"]);
    head.mm(&["mesh", "timeout", "10"]);
    let frozen = common::Stopped::new(n1.pid().unwrap() as i32);
    let outs: Vec<String> = std::thread::scope(|s| {
        let a = s.spawn(|| stderr_of(&head.try_mm(&["vm", "launch", "kvm", "a"])));
        let b = s.spawn(|| stderr_of(&head.try_mm(&["vm", "launch", "kvm", "b"])));
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    drop(frozen);
    let refused = outs
        .iter()
        .filter(|o| o.contains("a vm launch in foo is under way"));
    let waited = outs
        .iter()
        .filter(|o| o.contains("not every host of foo answered"));
    assert_eq!((refused.count(), waited.count()), (1, 1), "{outs:?}");
    // The guard ends with its launch, failed or not.
    head.mm(&["ns", "queueing", "true"]);
    head.mm(&["vm", "launch", "kvm", "c"]);
    assert!(head.mm(&["ns", "queue"]).contains('c'));
}

#[test]
fn a_read_file_runs_line_by_line_with_its_modes_and_stops_at_the_first_error() {
    let a = Node::local("reader", &[]);
    let dir = common::scratch_dir("script");
    let script = dir.path().join("setup.mm");
    std::fs::write(
        &script,
        "# set up a namespace\n\
         namespace scripted\n\
         .annotate false\n\
         ns queueing true   # and queue\n\
         .columns namespace,active namespace\n\
         ns bogus\n\
         namespace after\n",
    )
    .unwrap();
    let path = script.display().to_string();
    let out = a.try_mm(&["read", &path]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The mode set on line 3 holds for the lines after it.
    assert!(
        stdout.starts_with("namespace | active\nmm        | false\nscripted  | true\n"),
        "{stdout}"
    );
    let err = stderr_of(&out);
    assert!(err.contains("unknown command: ns bogus"), "{err}");
    assert!(err.contains(&format!("read: stopped at {path}:6")), "{err}");
    let names: Vec<String> = namespaces(&a).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["mm", "scripted"], "a line after the error ran");
    assert_eq!(a.mm(&["ns", "queueing"]).trim(), "true");
    // `check` runs nothing and names every bad line.
    a.mm(&["namespace", "mm"]);
    std::fs::write(&script, "namespace checked\nvm lunch kvm 2\nns hosts\n").unwrap();
    let out = a.try_mm(&["read", &path, "check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains(&format!("{path}:2: unknown command: vm lunch")),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(namespaces(&a).len(), 2, "check ran a line");
    // `continue` goes past errors; nested reads and ns run read are refused.
    std::fs::write(&script, "vm lunch\nread x\nnamespace later\n").unwrap();
    let out = a.try_mm(&["read", &path, "continue"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("cannot run nested `read` commands"),
        "{}",
        stderr_of(&out)
    );
    assert_eq!(namespaces(&a).len(), 3);
    a.mm(&["namespace", "mm"]);
    let out = a.try_mm(&["ns", "run", "read", &path]);
    assert!(
        stderr_of(&out).contains("cannot run `read` via ns run"),
        "{}",
        stderr_of(&out)
    );
}
