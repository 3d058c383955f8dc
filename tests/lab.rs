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
