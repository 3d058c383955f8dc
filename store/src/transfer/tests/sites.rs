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
