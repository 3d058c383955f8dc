//! meshage on a simulated LAN: hosts as network namespaces on one bridge,
//! each running `mm serve` with default discovery (mDNS).

mod common;

use std::time::Duration;

use common::{rows, wait_for, Lab, Node};

#[test]
fn eight_hosts_with_degree_two_form_one_mesh() {
    let lab = Lab::up(8, None);
    let mut nodes: Vec<Node> = (1..=8)
        .map(|i| Node::in_ns(&format!("h{i}"), &lab.ns(i), &["--degree", "2"]))
        .collect();
    for n in &nodes {
        n.wait_size(8, Duration::from_secs(90));
    }
    // size is counted over the graph reachable from each node, so 8 from
    // every node means one component; check the adjacency agrees.
    let list = nodes[0].mm(&["mesh", "list"]);
    for i in 1..=8 {
        assert!(list.contains(&format!("h{i}\n")), "{list}");
    }
    for n in &nodes {
        let peers: usize = n.status("peers").parse().unwrap();
        assert!(peers >= 1, "{} has no peers", n.name);
    }
    let ans = nodes[7].json(&["mesh", "send", "all", "host"]);
    assert_eq!(rows(&ans).len(), 7);
    // A node that leaves is noticed by the others.
    drop(nodes.pop());
    wait_for("h8 to leave the mesh", Duration::from_secs(60), || {
        (nodes[0].size() == 7).then_some(())
    });
}

#[test]
fn without_a_cluster_key_a_node_keeps_to_its_host() {
    let lab = Lab::up(3, None);
    // `mm serve` in host 1 without a key, with these arguments: it must exit.
    let serve_without_a_key = |extra: &[&str]| {
        let base = common::scratch_dir("nokey");
        common::run_bounded(
            std::process::Command::new("ip")
                .args(["netns", "exec", &lab.ns(1), common::MM])
                .args(["serve", "--base", &base.path().display().to_string()])
                .args(extra),
            Duration::from_secs(30),
        )
    };
    // The default: no key, so loopback only and no mDNS.
    let alone = Node::in_ns("h1", &lab.ns(1), &["--no-key"]);
    assert_eq!(alone.status("mode"), "loopback");
    assert!(
        alone.log().contains("listening on loopback only"),
        "{}",
        alone.log()
    );
    // An open mesh where the operator says so.
    let open2 = Node::in_ns("h2", &lab.ns(2), &["--insecure"]);
    let open3 = Node::in_ns("h3", &lab.ns(3), &["--insecure"]);
    assert_eq!(open2.status("mode"), "insecure");
    open2.wait_size(2, Duration::from_secs(60));
    open3.wait_size(2, Duration::from_secs(60));
    // The node on loopback is reached by nobody, and reaches nobody.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alone.size(), 1);
    assert_eq!(open2.size(), 2);
    // Asked to listen on the network without a key: refused, with the way.
    let out = serve_without_a_key(&["--listen", "10.77.0.1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("without a cluster key") && err.contains("mm keygen"),
        "{err}"
    );
    // Nor does it go out to the network by itself.
    let out = alone.try_mm(&["mesh", "dial", "10.77.0.2:9000"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no cluster key"),
        "{err}"
    );
    let out = serve_without_a_key(&["--peer", "10.77.0.2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("without a cluster key"),
        "{err}"
    );
    // With the key, the mode says so.
    let keyed = Node::in_ns("h4", &lab.ns(1), &["--port", "9100"]);
    assert_eq!(keyed.status("mode"), "keyed");
}
