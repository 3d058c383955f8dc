//! Nodes that say their site (`mm serve --site`).

use super::*;

/// A puller that says its site, with a complete holder there, asks a
/// complete holder at another site for nothing; without sites said, it
/// asks both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_with_a_holder_at_its_own_site_asks_none_at_another() {
    for said in [false, true] {
        let hub = Hub::new();
        let data = content(64 * CHUNK_SIZE as usize, 11);
        let (h, far) = (node(&hub, "h"), node(&hub, "far"));
        for n in [&h, &far] {
            n.put("f", &data);
            uplink(&hub, &n.name, 2);
        }
        let p = node(&hub, "p");
        if said {
            hub.set_site("h", "north");
            hub.set_site("p", "north");
            hub.set_site("far", "south");
        }
        p.get("f").await.unwrap();
        assert_eq!(p.read("f").unwrap(), data);
        let from_far = hub.sent_to("far", "p");
        if said {
            assert_eq!(from_far, 0, "sites said");
        } else {
            assert!(from_far > 0, "no sites said: both serve");
        }
    }
}

/// Without a complete holder at its own site, a puller takes what the
/// other site has: a site that says its name is never cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_with_no_holder_at_its_site_pulls_from_another() {
    let hub = Hub::new();
    let data = content(32 * CHUNK_SIZE as usize, 12);
    let far = node(&hub, "far");
    far.put("f", &data);
    let p = node(&hub, "p");
    hub.set_site("far", "south");
    hub.set_site("p", "north");
    p.get("f").await.unwrap();
    assert_eq!(p.read("f").unwrap(), data);
    assert_eq!(hub.sent_to("far", "p"), 32);
}

/// The holder at the puller's own site answers who holds what, but its
/// chunks never come: the puller stops keeping to its site (once that
/// holder has left a request unanswered for `job::STALLED`) and takes the
/// file from the other site's holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_at_the_pullers_site_that_hangs_does_not_hold_the_transfer() {
    let hub = Hub::new();
    let data = content(16 * CHUNK_SIZE as usize, 13);
    let (near, far) = (node(&hub, "near"), node(&hub, "far"));
    for n in [&near, &far] {
        n.put("f", &data);
    }
    hub.set_faults(
        "near",
        Faults {
            hangs: true,
            ..Faults::default()
        },
    );
    let p = node(&hub, "p");
    hub.set_site("near", "north");
    hub.set_site("p", "north");
    hub.set_site("far", "south");
    p.get("f").await.unwrap();
    assert_eq!(p.read("f").unwrap(), data);
    assert_eq!(hub.sent_to("far", "p"), 16);
}

/// A puller at the other site, found by `get` with the chunks it has,
/// is not asked for them by a puller that keeps to its site: only a
/// holder's pointer sends it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sites_puller_found_at_the_start_is_not_asked() {
    let hub = Hub::new();
    let data = content(64 * CHUNK_SIZE as usize, 14);
    let (h, fh) = (node(&hub, "h"), node(&hub, "fh"));
    for n in [&h, &fh] {
        n.put("f", &data);
    }
    let root = h.local.manifest("f").unwrap().unwrap().root;
    let (b, p) = (node(&hub, "b"), node(&hub, "p"));
    for (n, site) in [
        ("h", "north"),
        ("p", "north"),
        ("fh", "south"),
        ("b", "south"),
    ] {
        hub.set_site(n, site);
    }
    // b pulls from the south's holder, slowly: p starts while b is half
    // way, and its `get` finds b with what it has.
    uplink(&hub, "fh", 10);
    let engine = b.engine.clone();
    let pulling = tokio::spawn(async move {
        let pending = engine.get("f", &Select::default()).await.unwrap();
        engine.wait(pending).await
    });
    while b
        .engine
        .news("f", &root, 0)
        .is_none_or(|n| n.chunks.len() < 16)
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.get("f").await.unwrap();
    pulling.await.unwrap().unwrap();
    assert_eq!(p.read("f").unwrap(), data);
    assert_eq!(hub.sent_to("b", "p") + hub.sent_to("fh", "p"), 0);
}
