//! The mesh as this node knows it: the latest announcement of every node,
//! the graph they describe, and routes over it. Pure data, no I/O.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::wire::Announce;

#[derive(Debug)]
struct Entry {
    announce: Announce,
    heard: Instant,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Update {
    /// First announcement from this node (or first since it expired).
    New,
    Refreshed,
    /// Older than what we have; ignored.
    Stale,
    /// Another live node already uses this name; ignored.
    NameTaken {
        holder: PeerId,
    },
}

#[derive(Debug)]
pub(crate) struct Topology {
    me: PeerId,
    nodes: HashMap<PeerId, Entry>,
    /// Names of nodes that left (expired or were dropped), and when: a
    /// `mesh send` to one says so, instead of `no such host` as for a typo.
    left: HashMap<String, Instant>,
}

/// Departed names remembered at most (the oldest go first).
const LEFT_MAX: usize = 4096;

impl Topology {
    pub(crate) fn new(me: PeerId) -> Self {
        Self {
            me,
            nodes: HashMap::new(),
            left: HashMap::new(),
        }
    }

    /// Notes that `name` left (expired, dropped, or its last link went);
    /// forgotten as soon as it is heard from again.
    pub(crate) fn note_left(&mut self, name: String, now: Instant) {
        if self.left.len() >= LEFT_MAX {
            if let Some(oldest) = self
                .left
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(n, _)| n.clone())
            {
                self.left.remove(&oldest);
            }
        }
        self.left.insert(name, now);
    }

    /// When the node of this name left the mesh, if it was in it and is
    /// not back.
    pub(crate) fn left_at(&self, name: &str) -> Option<Instant> {
        self.left.get(name).copied()
    }

    pub(crate) fn update(&mut self, from: PeerId, a: Announce, now: Instant) -> Update {
        if let Some(holder) = self.name_holder(&a.name) {
            if holder != from {
                return Update::NameTaken { holder };
            }
        }
        match self.nodes.get_mut(&from) {
            Some(e) if e.announce.seq > a.seq && e.announce.name == a.name => Update::Stale,
            Some(e) => {
                self.left.remove(&a.name);
                e.announce = a;
                e.heard = now;
                Update::Refreshed
            }
            None => {
                self.left.remove(&a.name);
                self.nodes.insert(
                    from,
                    Entry {
                        announce: a,
                        heard: now,
                    },
                );
                Update::New
            }
        }
    }

    /// Drops nodes not heard from within `max_age` (never this node itself);
    /// returns their names.
    pub(crate) fn expire(&mut self, now: Instant, max_age: Duration) -> Vec<String> {
        let me = self.me;
        let dead: Vec<PeerId> = self
            .nodes
            .iter()
            .filter(|(p, e)| **p != me && now.duration_since(e.heard) > max_age)
            .map(|(p, _)| *p)
            .collect();
        let names: Vec<String> = dead
            .iter()
            .filter_map(|p| self.nodes.remove(p))
            .map(|e| e.announce.name)
            .collect();
        for n in &names {
            self.note_left(n.clone(), now);
        }
        names
    }

    pub(crate) fn remove(&mut self, peer: &PeerId) {
        if *peer != self.me {
            if let Some(e) = self.nodes.remove(peer) {
                self.note_left(e.announce.name, Instant::now());
            }
        }
    }

    pub(crate) fn name_holder(&self, name: &str) -> Option<PeerId> {
        self.nodes
            .iter()
            .find(|(_, e)| e.announce.name == name)
            .map(|(p, _)| *p)
    }

    pub(crate) fn name_of(&self, peer: &PeerId) -> Option<&str> {
        self.nodes.get(peer).map(|e| e.announce.name.as_str())
    }

    pub(crate) fn announce_of(&self, peer: &PeerId) -> Option<&Announce> {
        self.nodes.get(peer).map(|e| &e.announce)
    }

    /// Adjacency over edges both ends confirm. This node's own edges are its
    /// live connections (`direct`), which it knows first-hand.
    pub(crate) fn graph(&self, direct: &HashSet<PeerId>) -> HashMap<PeerId, Vec<PeerId>> {
        let mut adj: HashMap<PeerId, Vec<PeerId>> = HashMap::new();
        for (p, e) in &self.nodes {
            if *p == self.me {
                continue;
            }
            for q in &e.announce.peers {
                let confirmed = if *q == self.me {
                    direct.contains(p)
                } else {
                    self.nodes
                        .get(q)
                        .is_some_and(|other| other.announce.peers.contains(p))
                };
                if confirmed {
                    adj.entry(*p).or_default().push(*q);
                }
            }
        }
        let mine: Vec<PeerId> = direct
            .iter()
            .filter(|p| self.nodes.contains_key(p))
            .copied()
            .collect();
        adj.insert(self.me, mine);
        adj
    }

    /// For every node reachable from here, the direct peer to send through.
    /// This node itself maps to itself.
    pub(crate) fn next_hops(&self, direct: &HashSet<PeerId>) -> HashMap<PeerId, PeerId> {
        self.next_hops_avoiding(direct, &HashSet::new())
    }

    /// Like [`Self::next_hops`], but never through the nodes in `avoid`
    /// (those a request already passed through), so a request cannot loop
    /// while nodes' views of the mesh disagree.
    pub(crate) fn next_hops_avoiding(
        &self,
        direct: &HashSet<PeerId>,
        avoid: &HashSet<PeerId>,
    ) -> HashMap<PeerId, PeerId> {
        let mut adj = self.graph(direct);
        for v in adj.values_mut() {
            v.retain(|p| !avoid.contains(p));
        }
        let mut hop: HashMap<PeerId, PeerId> = HashMap::new();
        hop.insert(self.me, self.me);
        let mut queue = VecDeque::new();
        // Visit neighbours in a fixed order so routes are stable between calls.
        let mut first: Vec<PeerId> = adj.get(&self.me).cloned().unwrap_or_default();
        first.sort();
        for n in first {
            hop.insert(n, n);
            queue.push_back(n);
        }
        while let Some(p) = queue.pop_front() {
            let via = hop[&p];
            let mut next: Vec<PeerId> = adj.get(&p).cloned().unwrap_or_default();
            next.sort();
            for q in next {
                if let std::collections::hash_map::Entry::Vacant(v) = hop.entry(q) {
                    v.insert(via);
                    queue.push_back(q);
                }
            }
        }
        hop
    }

    /// The reachable part of the mesh, this node included, by name, with each
    /// node's confirmed neighbours by name. Sorted, for display.
    pub(crate) fn reachable(&self, direct: &HashSet<PeerId>) -> BTreeMap<String, Vec<String>> {
        let adj = self.graph(direct);
        let hops = self.next_hops(direct);
        let mut out = BTreeMap::new();
        for p in hops.keys() {
            let Some(name) = self.name_of(p) else {
                continue;
            };
            let mut peers: Vec<String> = adj
                .get(p)
                .into_iter()
                .flatten()
                .filter_map(|q| self.name_of(q).map(str::to_owned))
                .collect();
            peers.sort();
            peers.dedup();
            out.insert(name.to_owned(), peers);
        }
        out
    }

    /// Whether `p`'s latest announcement lists `q` as its peer.
    pub(crate) fn lists(&self, p: &PeerId, q: &PeerId) -> bool {
        self.nodes
            .get(p)
            .is_some_and(|e| e.announce.peers.contains(q))
    }

    /// Peers known from announcements, with their advertised addresses.
    pub(crate) fn known(&self) -> impl Iterator<Item = (&PeerId, &Announce)> {
        self.nodes.iter().map(|(p, e)| (p, &e.announce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::HostStats;

    fn ann(name: &str, seq: u64, peers: &[PeerId]) -> Announce {
        Announce {
            name: name.into(),
            seq,
            degree: 2,
            port: 9000,
            keyed: false,
            addrs: vec![],
            peers: peers.to_vec(),
            stats: HostStats::default(),
            clashes: vec![],
            data: None,
            site: None,
        }
    }

    /// A line a-b-c-d seen from a.
    fn line() -> (Topology, [PeerId; 4], HashSet<PeerId>) {
        let ids = [
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        ];
        let [a, b, c, d] = ids;
        let now = Instant::now();
        let mut t = Topology::new(a);
        t.update(a, ann("a", 1, &[b]), now);
        t.update(b, ann("b", 1, &[a, c]), now);
        t.update(c, ann("c", 1, &[b, d]), now);
        t.update(d, ann("d", 1, &[c]), now);
        (t, ids, HashSet::from([b]))
    }

    #[test]
    fn routes_over_several_hops_go_through_the_first_hop() {
        let (t, [a, b, c, d], direct) = line();
        let hops = t.next_hops(&direct);
        assert_eq!(hops[&a], a);
        assert_eq!(hops[&b], b);
        assert_eq!(hops[&c], b);
        assert_eq!(hops[&d], b);
    }

    #[test]
    fn routes_avoid_nodes_already_visited() {
        let (mut t, [a, b, c, d], _) = line();
        // A square a-b-d-c-a seen from a; the way to d avoiding b is via c.
        let now = Instant::now();
        t.update(b, ann("b", 2, &[a, d]), now);
        t.update(c, ann("c", 2, &[a, d]), now);
        t.update(d, ann("d", 2, &[b, c]), now);
        let direct = HashSet::from([b, c]);
        let first = t.next_hops(&direct)[&d];
        assert!(first == b || first == c);
        let other = if first == b { c } else { b };
        let avoid = HashSet::from([first]);
        assert_eq!(t.next_hops_avoiding(&direct, &avoid)[&d], other);
        let both = HashSet::from([b, c]);
        assert!(!t.next_hops_avoiding(&direct, &both).contains_key(&d));
    }

    #[test]
    fn one_sided_edges_are_not_routes() {
        let (mut t, [_, b, c, d], direct) = line();
        // d drops c, but c has not announced yet: the edge is unconfirmed.
        t.update(d, ann("d", 2, &[]), Instant::now());
        let hops = t.next_hops(&direct);
        assert!(hops.contains_key(&c));
        assert!(!hops.contains_key(&d));
        let r = t.reachable(&direct);
        assert_eq!(r.len(), 3);
        assert_eq!(r["b"], vec!["a".to_string(), "c".to_string()]);
        let _ = b;
    }

    #[test]
    fn stale_and_duplicate_names_are_refused() {
        let (mut t, [_, b, _, _], _) = line();
        assert_eq!(t.update(b, ann("b", 0, &[]), Instant::now()), Update::Stale);
        let intruder = PeerId::random();
        assert_eq!(
            t.update(intruder, ann("b", 9, &[]), Instant::now()),
            Update::NameTaken { holder: b }
        );
        assert_eq!(t.name_holder("b"), Some(b));
    }

    #[test]
    fn silent_nodes_expire_but_self_stays() {
        let (mut t, [a, ..], direct) = line();
        let later = Instant::now() + Duration::from_secs(60);
        let mut gone = t.expire(later, Duration::from_secs(10));
        gone.sort();
        assert_eq!(gone, vec!["b", "c", "d"]);
        assert_eq!(t.name_of(&a), Some("a"));
        assert_eq!(t.reachable(&direct).len(), 1);
    }
}
