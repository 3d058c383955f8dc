//! The bridge logic over the recording fake: the exact `ovs-vsctl` and `ip`
//! calls each operation issues, and what a stop and a restart remove.

use super::*;

fn nic(bridge: &str, vlan: u16, qinq: bool) -> Nic {
    Nic {
        bridge: bridge.into(),
        vlan,
        alias: Some("LAN".into()),
        mac: None,
        driver: "e1000".into(),
        qinq,
    }
}

#[test]
fn vm_taps_join_their_bridge_tagged_and_go_with_the_vm() {
    let (net, os, _db) = fake();
    let t = net
        .add_vm_tap("foo", 7, &nic("mega_bridge", 101, false))
        .unwrap();
    assert_eq!(t, "mega_tap0");
    assert_eq!(
        os.take(),
        [
            "ovs-vsctl add-br mega_bridge -- set bridge mega_bridge datapath_type=netdev",
            "ip link set mega_bridge up",
            "ovs-ofctl add-flow mega_bridge dl_type=0x0806,actions=local,normal",
            "ovs-ofctl add-flow mega_bridge dl_type=0x86dd,nw_proto=58,icmp_type=135,actions=local,normal",
            "ovs-ofctl add-flow mega_bridge dl_type=0x86dd,nw_proto=58,icmp_type=136,actions=local,normal",
            "ip tuntap add mode tap mega_tap0",
            "ip link set mega_tap0 up",
            "ovs-vsctl add-port mega_bridge mega_tap0 tag=101",
        ]
    );
    // The bridge is made once; the counter passes over names in use.
    os.devs.lock().unwrap().insert("mega_tap1".into());
    let t2 = net
        .add_vm_tap("foo", 7, &nic("mega_bridge", 102, true))
        .unwrap();
    assert_eq!(t2, "mega_tap2");
    assert_eq!(
        os.take(),
        [
            "ip tuntap add mode tap mega_tap2",
            "ip link set mega_tap2 up",
            "ovs-vsctl add-port mega_bridge mega_tap2 tag=102 -- set port mega_tap2 \
             vlan_mode=dot1q-tunnel",
        ]
    );
    let rows = net.list();
    assert_eq!(rows[0].vlans, ["LAN (101)", "LAN (102)"]);
    assert_eq!(rows[0].datapath, "netdev");
    assert!(!rows[0].preexisting);
    // vm net disconnect, then connect elsewhere: the tap stays.
    net.move_tap("mega_tap0", None).unwrap();
    net.move_tap("mega_tap0", Some(("mega_bridge", 200, None)))
        .unwrap();
    assert_eq!(
        os.take(),
        [
            "ovs-vsctl --if-exists del-port mega_bridge mega_tap0",
            "ovs-vsctl add-port mega_bridge mega_tap0 tag=200",
        ]
    );
    net.release_vm("foo", 7);
    assert_eq!(
        os.take(),
        [
            "ovs-vsctl --if-exists del-port mega_bridge mega_tap0",
            "ip link del mega_tap0",
            "ovs-vsctl --if-exists del-port mega_bridge mega_tap2",
            "ip link del mega_tap2",
        ]
    );
    // A tap that cannot join its bridge is not left behind.
    os.fail.lock().unwrap().push("add-port".into());
    assert!(net
        .add_vm_tap("foo", 8, &nic("mega_bridge", 101, false))
        .is_err());
    let calls = os.take();
    assert_eq!(
        calls[calls.len() - 2..],
        [
            "ovs-vsctl --if-exists del-port mega_bridge mega_tap3",
            "ip link del mega_tap3"
        ],
        "{calls:?}"
    );
}

#[test]
fn host_taps_trunks_tunnels_and_config_issue_what_minimega_issues() {
    let (net, os, _db) = fake();
    // A bridge that exists is used, marked preexisting, never deleted.
    os.devs.lock().unwrap().insert("br0".into());
    let t = net
        .add_host_tap(
            "foo",
            "br0",
            101,
            None,
            Some("vtap"),
            &HostAddr::Ip("10.0.0.1/24".into()),
        )
        .unwrap();
    assert_eq!(t, "vtap");
    assert_eq!(
        os.take(),
        [
            "ovs-vsctl add-port br0 vtap tag=101 -- set interface vtap type=tap",
            "ip link set vtap up",
            "ip addr add 10.0.0.1/24 dev vtap",
        ]
    );
    assert_eq!(net.tap_ips(), ["10.0.0.1"]);
    assert_eq!(
        net.host_taps("foo"),
        [("br0".into(), "vtap".into(), "101".into())]
    );
    assert!(net.host_taps("bar").is_empty());
    for (r, why) in [
        (
            net.add_host_tap("foo", "br0", 101, None, Some("vtap"), &HostAddr::None),
            "already exists",
        ),
        (
            net.add_host_tap(
                "foo",
                "br0",
                101,
                None,
                None,
                &HostAddr::Ip("10.0.0.1".into()),
            ),
            "prefix length",
        ),
    ] {
        assert!(r.unwrap_err().to_string().contains(why), "{why}");
    }
    assert!(os.take().is_empty(), "a refused tap touched the system");
    net.trunk("br0", "eth1").unwrap();
    assert!(net
        .trunk("br0", "eth1")
        .unwrap_err()
        .to_string()
        .contains("already trunking"));
    let g = net
        .tunnel(Kind::Gre, "br0", "192.0.2.2", Some(4_000_000_000))
        .unwrap();
    let v = net
        .tunnel(Kind::Vxlan, "br0", "192.0.2.3", Some(5000))
        .unwrap();
    // VXLAN keys have 24 bits: minimega truncates a larger one, and
    // nothing passes.
    let e = net
        .tunnel(Kind::Vxlan, "br0", "192.0.2.3", Some(16_777_216))
        .unwrap_err();
    assert!(e.to_string().contains("at most 16777215"), "{e}");
    assert!(net.tunnel(Kind::Gre, "br0", "nohost", None).is_err());
    net.config("br0", "rstp_enable=true").unwrap();
    assert!(net.config("br0", "novalue").is_err());
    assert_eq!(
        os.take(),
        [
            "ovs-vsctl add-port br0 eth1".to_string(),
            format!(
                "ovs-vsctl add-port br0 {g} -- set interface {g} type=gre \
                 options:remote_ip=192.0.2.2 options:key=4000000000"
            ),
            format!(
                "ovs-vsctl add-port br0 {v} -- set interface {v} type=vxlan \
                 options:remote_ip=192.0.2.3 options:key=5000"
            ),
            "ovs-vsctl set bridge br0 rstp_enable=true".to_string(),
        ]
    );
    let row = &net.list()[0];
    assert!(row.preexisting);
    assert_eq!(row.trunks, ["eth1"]);
    assert_eq!(row.tunnels, [g.clone(), v.clone()]);
    assert_eq!(row.config, r#"{"rstp_enable":"true"}"#);
    assert!(net
        .notunnel("br0", "eth1")
        .unwrap_err()
        .to_string()
        .contains("unknown tunnel"));
    net.notunnel("br0", &v).unwrap();
    net.notrunk("br0", "eth1").unwrap();
    assert!(net
        .delete_host_taps("bar", "vtap")
        .unwrap_err()
        .to_string()
        .contains("not a host tap in active namespace"));
    // Destroying a bridge that was there before mm takes only mm's ports.
    net.destroy("br0").unwrap();
    assert_eq!(
        os.take(),
        [
            format!("ovs-vsctl --if-exists del-port br0 {v}"),
            // RSTP starts over when a tunnel goes (OVS keeps a deleted
            // root port).
            "ovs-vsctl set bridge br0 rstp_enable=false".to_string(),
            "ovs-vsctl set bridge br0 rstp_enable=true".to_string(),
            "ovs-vsctl --if-exists del-port br0 eth1".to_string(),
            "ovs-vsctl --if-exists del-port br0 vtap".to_string(),
            format!("ovs-vsctl --if-exists del-port br0 {g}"),
            // Put back as it was (the fake had it unset).
            "ovs-vsctl clear bridge br0 rstp_enable".to_string(),
        ]
    );
    assert!(net.list().is_empty());
    assert!(net.destroy("br0").is_err());
}

#[test]
fn ns_bridge_makes_a_full_mesh_and_mends_it() {
    let hosts: Vec<(String, String)> = (1..=4)
        .map(|i| (format!("n{i}"), format!("10.0.0.{i}")))
        .collect();
    let plan = mesh_plan(&hosts);
    assert_eq!(plan.len(), 4);
    for (h, remotes) in &plan {
        assert_eq!(remotes.len(), 3, "{h}");
        let me = &hosts.iter().find(|(n, _)| n == h).unwrap().1;
        assert!(!remotes.contains(me), "{h} tunnels to itself");
    }
    // Every pair is joined both ways: N(N-1) ports in all.
    let ends: usize = plan.values().map(Vec::len).sum();
    assert_eq!(ends, 12);
    assert!(mesh_plan(&hosts[..1])["n1"].is_empty());

    let (net, os, _db) = fake();
    let remotes = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let ports = net
        .join_mesh(
            "foo",
            Kind::Vxlan,
            77,
            &[],
            &remotes(&["10.0.0.2", "10.0.0.3", "10.0.0.3"]),
        )
        .unwrap();
    assert_eq!(ports.len(), 2);
    let calls = os.take();
    assert!(calls.contains(&"ovs-vsctl set bridge foo rstp_enable=true".to_string()));
    // Run again after n3 left and n4 joined: n2's tunnel stays.
    let again = net
        .join_mesh(
            "foo",
            Kind::Vxlan,
            77,
            &[],
            &remotes(&["10.0.0.2", "10.0.0.4"]),
        )
        .unwrap();
    assert!(
        again.contains(&ports[0]) && !again.contains(&ports[1]),
        "{again:?}"
    );
    let calls = os.take();
    assert!(
        calls.contains(&format!("ovs-vsctl --if-exists del-port foo {}", ports[1])),
        "{calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| c.contains("type=vxlan")).count(),
        1,
        "{calls:?}"
    );
}

#[test]
fn a_stop_and_a_restart_after_a_crash_remove_what_mm_made() {
    let (dir, meta) = crate::vm::temp_meta();
    let os = Arc::new(os::Fake::default());
    os.devs.lock().unwrap().insert("old".into());
    {
        let net = Net::open(os.clone(), meta.clone(), Some(Datapath::Netdev));
        net.add_vm_tap("foo", 1, &nic("mega_bridge", 101, false))
            .unwrap();
        net.add_host_tap("foo", "old", 5, None, None, &HostAddr::None)
            .unwrap();
        net.tunnel(Kind::Gre, "old", "192.0.2.9", None).unwrap();
        os.take();
        // Killed: nothing is removed.
    }
    let net = Net::open(os.clone(), meta.clone(), Some(Datapath::Netdev));
    let mut calls = os.take();
    calls.sort();
    assert_eq!(
        calls,
        [
            "ip link del mega_tap0",
            "ovs-vsctl --if-exists del-br mega_bridge",
            "ovs-vsctl --if-exists del-port mega_bridge mega_tap0",
            "ovs-vsctl --if-exists del-port old mega_tap1",
            "ovs-vsctl --if-exists del-port old mega_tap2",
        ]
    );
    assert!(
        os.devs.lock().unwrap().contains("old"),
        "a preexisting bridge was deleted"
    );
    assert!(net.list().is_empty());
    // A clean stop does the same, and then a start finds nothing left.
    net.add_vm_tap("foo", 2, &nic("br9", 9, false)).unwrap();
    net.stop();
    os.take();
    drop(net);
    let _net = Net::open(os.clone(), meta, Some(Datapath::Netdev));
    assert!(os.take().is_empty());
    drop(dir);
}

#[test]
fn the_datapath_is_the_kernels_where_it_works() {
    let (_dir, meta) = crate::vm::temp_meta();
    let os = Arc::new(os::Fake::default());
    // The fake makes the probe's device: the kernel datapath works.
    let net = Net::open(os.clone(), meta.clone(), None);
    assert_eq!(net.datapath().unwrap(), Datapath::System);
    assert_eq!(
        os.take(),
        [
            "ovs-vsctl --may-exist add-br mm-probe -- set bridge mm-probe datapath_type=system",
            "ovs-vsctl --if-exists del-br mm-probe",
        ]
    );
    // Asked once.
    net.datapath().unwrap();
    assert!(os.take().is_empty());
    // Where OVS cannot set up a kernel bridge, userspace.
    let os = Arc::new(os::Fake::default());
    os.fail.lock().unwrap().push("datapath_type=system".into());
    let net = Net::open(os.clone(), meta, None);
    assert_eq!(net.datapath().unwrap(), Datapath::Netdev);
}

#[test]
fn what_is_not_mms_is_left_as_it_was() {
    let (net, os, _db) = fake();
    os.devs.lock().unwrap().insert("br-phy".into());
    os.ports.lock().unwrap().insert("eth0".into());
    // An existing port is refused, and never rolled back (deleted).
    let e = net.trunk("br-phy", "eth0").unwrap_err().to_string();
    assert!(e.contains("already exists"), "{e}");
    let calls = os.take();
    assert!(!calls.iter().any(|c| c.contains("del-port")), "{calls:?}");
    // No flows on a bridge mm did not make; its settings come back.
    assert!(!calls.iter().any(|c| c.contains("add-flow")), "{calls:?}");
    net.config("br-phy", "rstp_enable=true").unwrap();
    net.config("br-phy", "other_config:x=1").unwrap();
    for bad in ["ports=[]", "name=x", "rstp_enable=a b", "other_config:=1"] {
        assert!(net.config("br-phy", bad).is_err(), "{bad} was taken");
    }
    os.take();
    net.destroy("br-phy").unwrap();
    let calls = os.take();
    assert!(
        calls.contains(&"ovs-vsctl remove bridge br-phy other_config x".to_string())
            && calls.contains(&"ovs-vsctl clear bridge br-phy rstp_enable".to_string()),
        "{calls:?}"
    );
    assert!(!calls.iter().any(|c| c.contains("del-br")), "{calls:?}");
    // A mesh touches only its own tunnels; leaving keeps a bridge that
    // another namespace uses.
    net.tunnel(Kind::Gre, "shared", "192.0.2.7", Some(5))
        .unwrap();
    net.join_mesh("shared", Kind::Gre, 9, &[], &["192.0.2.8".to_string()])
        .unwrap();
    net.add_host_tap("other", "shared", 7, None, None, &HostAddr::None)
        .unwrap();
    net.add_host_tap("foo", "shared", 8, None, None, &HostAddr::None)
        .unwrap();
    assert_eq!(net.list()[0].tunnels.len(), 2);
    net.leave("shared", "foo", Some(9)).unwrap();
    let row = &net.list()[0];
    assert_eq!(
        (row.tunnels.len(), row.vlans.as_slice()),
        (1, &["7".to_string()][..])
    );
    net.leave("shared", "other", None).unwrap();
    assert_eq!(net.list().len(), 1, "a bridge with a hand-made tunnel went");
    // NICs from another node's launch are checked again.
    let mut n = nic("mega_bridge", 101, false);
    n.check().unwrap();
    for bad in [
        Nic {
            vlan: 0,
            ..n.clone()
        },
        Nic {
            driver: "e1000,romfile=/etc/shadow".into(),
            ..n.clone()
        },
        Nic {
            mac: Some("00:11:22:33:44:55,x=1".into()),
            ..n.clone()
        },
        Nic {
            bridge: "-bad".into(),
            ..n.clone()
        },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
    }
    n.mac = Some("01:00:00:00:00:01".into());
    assert!(n.check().is_err(), "a multicast MAC");
}
