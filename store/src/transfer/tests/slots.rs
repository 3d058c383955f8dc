//! Send slots: a holder's and a puller's answers a few at a time, and
//! which waiting answer goes first.

use std::sync::Arc;
use std::time::Duration;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_sends_its_whole_files_answers_a_few_at_a_time() {
    let hub = Hub::new();
    let dir = tempfile::tempdir().unwrap();
    let one = Tuning {
        send_slots: 1,
        slot_patience: Duration::from_millis(50),
        ..fast()
    };
    let h = node_tuned(&hub, "h", dir, Arc::new(SyncData), one);
    h.put("f", &content(4 * CHUNK_SIZE as usize, 3));
    let root = h.local.manifest("f").unwrap().unwrap().root;
    let first = h.engine.send_slot("f", &root, None);
    assert!(first.held(), "a whole file here");
    // The next waits its patience out, then goes anyway.
    let t0 = std::time::Instant::now();
    let second = h.engine.send_slot("f", &root, None);
    assert!(t0.elapsed() >= Duration::from_millis(50));
    assert!(!second.held());
    drop((first, second));
    // The slots are the node's: any answer not from a transfer in
    // progress here takes one, and the first is free again.
    assert!(h.engine.send_slot("g", &root, None).held());
}

/// A node `p` pulling `f` (held back at its holder `h`, so it is still
/// coming) and holding `g` whole (the same bytes), tuned so: h, p, f's
/// root, and the transfer to wait for.
async fn pulling_f_holding_g(
    hub: &Arc<Hub>,
    tuning: Tuning,
) -> (TestNode, TestNode, Vec<u8>, Vec<Pending>) {
    let h = node(hub, "h");
    let data = file();
    h.put("f", &data);
    uplink(hub, "h", 100);
    let root = h.local.manifest("f").unwrap().unwrap().root;
    let p = node_tuning(hub, "p", tuning);
    p.put("g", &data);
    let pending = p.engine.get("f", &Select::default()).await.unwrap();
    assert!(!pending.is_empty(), "f is not here yet");
    (h, p, root, pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_sends_to_other_pullers_a_few_answers_at_a_time() {
    let one = Tuning {
        send_slots: 4,
        peer_send_slots: 1,
        slot_patience: Duration::from_millis(50),
        ..fast()
    };
    let (_h, p, root, pending) = pulling_f_holding_g(&Hub::new(), one).await;
    // An answer of f, from the transfer in progress: the one peer slot.
    let first = tokio::task::block_in_place(|| p.engine.send_slot("f", &root, None));
    assert!(first.held() && first.busy());
    let t0 = std::time::Instant::now();
    let second = tokio::task::block_in_place(|| p.engine.send_slot("f", &root, None));
    assert!(
        t0.elapsed() >= Duration::from_millis(50) && !second.held(),
        "a second answer to a puller got a slot of its own"
    );
    // Answers of a file held whole here take the holder's slots, which the
    // pullers' answers leave alone.
    let whole = tokio::task::block_in_place(|| p.engine.send_slot("g", &root, None));
    assert!(whole.held() && !whole.busy());
    drop((first, second, whole));
    assert!(tokio::task::block_in_place(|| p.engine.send_slot("f", &root, None)).held());
    p.engine.wait(pending).await.unwrap();
}

/// Of two answers of `name` waiting for the one slot of `up` (the asker
/// of the first to come `first` along, the other `second`), which goes
/// first.
fn first_served(
    engine: &Arc<Engine>,
    up: &Arc<super::uplink::Uplink>,
    (name, root): (&str, &[u8]),
    first: u16,
    second: u16,
) -> u16 {
    let held = engine.send_slot(name, root, None);
    assert!(held.held());
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let waiters: Vec<_> = [first, second]
        .into_iter()
        .enumerate()
        .map(|(k, at)| {
            let (e, n, r, o) = (
                engine.clone(),
                name.to_string(),
                root.to_vec(),
                order.clone(),
            );
            let t = std::thread::spawn(move || {
                let slot = e.send_slot(&n, &r, Some(at));
                assert!(slot.held(), "waited for its turn");
                o.lock().unwrap().push(at);
            });
            while up.waiting() < k + 1 {
                std::thread::yield_now();
            }
            t
        })
        .collect();
    drop(held);
    for t in waiters {
        t.join().unwrap();
    }
    let first_served = order.lock().unwrap()[0];
    first_served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_answers_the_puller_furthest_behind_first_a_holder_in_turn() {
    let one = Tuning {
        send_slots: 1,
        peer_send_slots: 1,
        slot_patience: Duration::from_secs(30),
        ..fast()
    };
    let (_h, p, root, pending) = pulling_f_holding_g(&Hub::new(), one).await;
    let (engine, f, g) = (&p.engine, ("f", &root[..]), ("g", &root[..]));
    tokio::task::block_in_place(|| {
        // From the transfer in progress: the asker furthest behind.
        assert_eq!(
            first_served(engine, &engine.peer_uplink, f, 60_000, 100),
            100
        );
        // From the file held whole: the first come.
        assert_eq!(first_served(engine, &engine.uplink, g, 60_000, 100), 60_000);
    });
    p.engine.wait(pending).await.unwrap();
}
