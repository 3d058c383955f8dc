//! The VM subsystem's logic over the recording fake driver: states,
//! batches, restarts.

use super::*;

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

fn batch(n: &[&str]) -> Vec<(String, Config)> {
    n.iter()
        .map(|s| (s.to_string(), Config::default()))
        .collect()
}

fn states(vms: &Vms, ns: &str) -> Vec<(String, &'static str)> {
    vms.info(ns)
        .into_iter()
        .map(|v| (v.name, v.state.as_str()))
        .collect()
}

fn by(n: &[&str]) -> Target {
    Target::Names(names(n))
}

/// QEMU opens this host's copy of a file the head named; the VM
/// keeps the configured path.
#[test]
fn a_launch_gives_qemu_the_local_copy_and_keeps_the_configured_path() {
    let fake = Arc::new(Fake::default());
    let (_dir, meta) = temp_meta();
    let vms = Vms::open(fake.clone(), meta);
    let cfg = Config {
        disks: vec![config::Disk {
            path: "/head/files/d.img".into(),
            interface: Some("virtio".into()),
            cache: None,
        }],
        ..Config::default()
    };
    let local = HashMap::from([(
        "/head/files/d.img".to_string(),
        "/here/files/d.img".to_string(),
    )]);
    vms.launch_with("foo", &[("a".into(), cfg)], &local)
        .unwrap();
    let calls = fake.calls.lock().unwrap().clone();
    assert!(
        calls[0].ends_with(" disk=/here/files/d.img,virtio"),
        "{calls:?}"
    );
    assert_eq!(
        vms.info("foo")[0].config.show("disks"),
        "/head/files/d.img,virtio"
    );
}

#[test]
fn the_state_machine_follows_minimega() {
    let fake = Arc::new(Fake::default());
    let (_dir, meta) = temp_meta();
    let vms = Vms::open(fake.clone(), meta);
    vms.launch("foo", &batch(&["a", "b", "c"])).unwrap();
    assert!(states(&vms, "foo").iter().all(|(_, s)| *s == "BUILDING"));
    let a = &vms.info("foo")[0];
    assert_eq!(
        (a.pid, a.config.vcpus, a.config.memory_mib),
        (1001, 1, 2048)
    );
    assert!(config::is_uuid(a.config.uuid.as_deref().unwrap()));
    assert_eq!(vms.strict("foo", Op::Start, &by(&["a", "2"])).unwrap(), 2);
    assert_eq!(
        states(&vms, "foo"),
        [
            ("a".into(), "RUNNING"),
            ("b".into(), "RUNNING"),
            ("c".into(), "BUILDING")
        ]
    );
    // Stop only touches running ones; start again resumes a paused one.
    assert_eq!(vms.strict("foo", Op::Stop, &Target::All).unwrap(), 2);
    assert_eq!(vms.strict("foo", Op::Start, &by(&["b"])).unwrap(), 1);
    assert_eq!(vms.strict("foo", Op::Kill, &by(&["c"])).unwrap(), 1);
    assert_eq!(
        states(&vms, "foo"),
        [
            ("a".into(), "PAUSED"),
            ("b".into(), "RUNNING"),
            ("c".into(), "QUIT")
        ]
    );
    // A process that dies on its own is ERROR, and says why.
    fake.dead.lock().unwrap().insert(2, "qemu: oops".into());
    let b = vms.info("foo").into_iter().find(|v| v.name == "b").unwrap();
    assert_eq!((b.state, b.error.as_str()), (State::Error, "qemu: oops"));
    // Only live VMs commit anything.
    assert_eq!((vms.commit().vms, vms.commit().vcpus), (1, 1));
    // Killing the ended ones does nothing; flush forgets them.
    assert_eq!(vms.strict("foo", Op::Kill, &Target::All).unwrap(), 1);
    vms.launch("foo", &batch(&["d"])).unwrap();
    assert_eq!(vms.flush("foo"), 3);
    assert_eq!(states(&vms, "foo"), [("d".into(), "BUILDING")]);
    // Names not here are someone else's: reported, not an error.
    let acted = vms.act("foo", Op::Start, &by(&["d", "elsewhere"]));
    assert_eq!((acted.matched, acted.changed), (names(&["d"]), 1));
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "launch foo/1 a vcpus=1 mem=2048",
            "launch foo/2 b vcpus=1 mem=2048",
            "launch foo/3 c vcpus=1 mem=2048",
            "resume 1",
            "resume 2",
            "pause 1",
            "pause 2",
            "resume 2",
            "kill 3",
            "kill 1",
            "launch foo/4 d vcpus=1 mem=2048",
            "forget foo/1",
            "forget foo/2",
            "forget foo/3",
            "resume 4",
        ]
    );
}

#[test]
fn bad_names_launch_nothing() {
    let fake = Arc::new(Fake::default());
    let (_dir, meta) = temp_meta();
    let vms = Vms::open(fake.clone(), meta);
    vms.launch("foo", &batch(&["web"])).unwrap();
    for (bad, why) in [
        (vec!["x", "all"], "`all` is a reserved word"),
        (vec!["x", "12"], "invalid vm name, `12` is an integer"),
        (vec!["x", "x"], "`x` is specified twice"),
        (vec!["x", "web"], "vm already exists with name web"),
        (vec!["x", "a/b"], "invalid vm name `a/b`"),
    ] {
        let e = vms.launch("foo", &batch(&bad)).unwrap_err();
        assert!(e.to_string().contains(why), "{bad:?}: {e}");
    }
    assert_eq!(vms.info("foo").len(), 1, "a bad batch launched something");
    // A process that fails to start takes its batch with it.
    fake.fail.lock().unwrap().push("y".into());
    let e = vms.launch("foo", &batch(&["x", "y"])).unwrap_err();
    assert!(e.to_string().contains("y: no process"), "{e}");
    assert_eq!(vms.info("foo").len(), 1, "half a batch stayed");
    let calls = fake.calls.lock().unwrap().clone();
    let x = calls
        .iter()
        .find_map(|c| {
            c.strip_prefix("launch foo/")?
                .strip_suffix(" x vcpus=1 mem=2048")
        })
        .expect("x was launched");
    assert!(
        calls.contains(&format!("kill {x}")),
        "x was not killed: {calls:?}"
    );
    assert!(
        calls.contains(&format!("forget foo/{x}")),
        "x's directory was left: {calls:?}"
    );
    // Names are per namespace.
    vms.launch("bar", &batch(&["web"])).unwrap();
    assert!(vms.strict("foo", Op::Start, &by(&["nope"])).is_err());
    // A node going down takes its VMs with it.
    vms.kill_all();
    assert!(vms
        .info("foo")
        .iter()
        .chain(vms.info("bar").iter())
        .all(|v| v.state == State::Quit));
}

#[test]
fn after_a_restart_old_vms_are_never_running() {
    let (_dir, meta) = temp_meta();
    {
        let vms = Vms::open(Arc::new(Fake::default()), meta.clone());
        vms.launch("foo", &batch(&["a", "b", "c"])).unwrap();
        vms.strict("foo", Op::Start, &by(&["a"])).unwrap();
        vms.strict("foo", Op::Kill, &by(&["c"])).unwrap();
        // The node is killed: nothing ends its VMs.
    }
    let fake = Arc::new(Fake::default());
    let vms = Vms::open(fake.clone(), meta.clone());
    let info = vms.info("foo");
    let st: Vec<(&str, State)> = info.iter().map(|v| (v.name.as_str(), v.state)).collect();
    assert_eq!(
        st,
        [("a", State::Error), ("b", State::Error), ("c", State::Quit)]
    );
    assert!(
        info[0].error.contains("it was RUNNING"),
        "{}",
        info[0].error
    );
    // Their leftover processes were ended, and ids go on from there.
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(calls, ["reap foo/1 1001", "reap foo/2 1002"]);
    vms.launch("foo", &batch(&["d"])).unwrap();
    assert_eq!(vms.info("foo").last().unwrap().id, 4);
    assert_eq!(vms.flush("foo"), 3);
    vms.kill_all();
    drop(vms);
    // A flushed VM is gone for good; a clean stop leaves QUIT.
    let fake = Arc::new(Fake::default());
    let vms = Vms::open(fake.clone(), meta);
    assert_eq!(states(&vms, "foo"), [("d".into(), "QUIT")]);
    assert!(fake.calls.lock().unwrap().is_empty());
}

/// A node killed as it launches still knows the VMs whose processes
/// may run, ends them at restart, and never gives their ids again; a
/// batch that fails leaves nothing.
#[test]
fn a_vm_is_kept_before_its_process_starts() {
    let (_dir, meta) = temp_meta();
    let fake = Arc::new(Fake::default());
    *fake.crash.lock().unwrap() = Some("b".into());
    let vms = Vms::open(fake.clone(), meta.clone());
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        vms.launch("foo", &batch(&["a", "b", "c"]))
    }));
    assert!(killed.is_err());
    drop(vms);
    let fake = Arc::new(Fake::default());
    let vms = Vms::open(fake.clone(), meta.clone());
    assert_eq!(
        states(&vms, "foo"),
        [
            ("a".into(), "ERROR"),
            ("b".into(), "ERROR"),
            ("c".into(), "ERROR")
        ]
    );
    // a's pid was kept; b's and c's not yet (the driver finds b's).
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(calls, ["reap foo/1 1001", "reap foo/2 0", "reap foo/3 0"]);
    // What the driver found is what vm info shows.
    let pids: Vec<u32> = vms.info("foo").iter().map(|v| v.pid).collect();
    assert_eq!(pids, [1001, 2002, 2003]);
    fake.calls.lock().unwrap().clear();
    *fake.fail.lock().unwrap() = vec!["e".into()];
    assert!(vms.launch("foo", &batch(&["d", "e"])).is_err());
    vms.launch("foo", &batch(&["f"])).unwrap();
    drop(vms);
    let vms = Vms::open(Arc::new(Fake::default()), meta);
    let ids: Vec<(String, u64)> = vms
        .info("foo")
        .iter()
        .map(|v| (v.name.clone(), v.id))
        .collect();
    let want = [("a", 1), ("b", 2), ("c", 3), ("f", 6)].map(|(n, i)| (n.to_string(), i));
    assert_eq!(ids, want);
}
