//! Nodes that say their site (`mm serve --site`).

use super::*;

/// Two complete holders of `f` (`chunks` chunks of content `seed`): one
/// to be at the puller's site, one at another.
fn holders(
    hub: &Arc<Hub>,
    names: [&str; 2],
    chunks: usize,
    seed: u64,
) -> (TestNode, TestNode, Vec<u8>) {
    let data = content(chunks * CHUNK_SIZE as usize, seed);
    let (a, b) = (node(hub, names[0]), node(hub, names[1]));
    for n in [&a, &b] {
        n.put("f", &data);
    }
    (a, b, data)
}

/// Each node says its site.
fn say(hub: &Hub, sites: &[(&str, &str)]) {
    for (node, site) in sites {
        hub.set_site(node, site);
    }
}

/// A puller that says its site, with a complete holder there, asks a
/// complete holder at another site for nothing; without sites said, it
/// asks both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_puller_with_a_holder_at_its_own_site_asks_none_at_another() {
    for said in [false, true] {
        let hub = Hub::new();
        let (_h, _far, data) = holders(&hub, ["h", "far"], 64, 11);
        uplink(&hub, "h", 2);
        uplink(&hub, "far", 2);
        let p = node(&hub, "p");
        if said {
            say(&hub, &[("h", "north"), ("p", "north"), ("far", "south")]);
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
    say(&hub, &[("far", "south"), ("p", "north")]);
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
    let (_near, _far, data) = holders(&hub, ["near", "far"], 16, 13);
    hub.set_faults(
        "near",
        Faults {
            hangs: true,
            ..Faults::default()
        },
    );
    let p = node(&hub, "p");
    say(&hub, &[("near", "north"), ("p", "north"), ("far", "south")]);
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
    let (h, _fh, data) = holders(&hub, ["h", "fh"], 64, 14);
    let root = h.local.manifest("f").unwrap().unwrap().root;
    let (b, p) = (node(&hub, "b"), node(&hub, "p"));
    say(
        &hub,
        &[
            ("h", "north"),
            ("p", "north"),
            ("fh", "south"),
            ("b", "south"),
        ],
    );
    // b pulls from the south's holder, slowly: p starts while b is half
    // way, and its `get` finds b with what it has.
    uplink(&hub, "fh", 10);
    let pulling = b.get_until("f", &root, 16).await;
    p.get("f").await.unwrap();
    pulling.await.unwrap().unwrap();
    assert_eq!(p.read("f").unwrap(), data);
    assert_eq!(hub.sent_to("b", "p") + hub.sent_to("fh", "p"), 0);
}
