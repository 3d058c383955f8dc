//! Whom to dial. A node dials until it has `degree` direct peers; past that
//! it stops soliciting, except to join two parts of the mesh that have no
//! path between them. Pure logic, so the whole policy is unit-tested.

use std::collections::HashSet;

use libp2p::PeerId;
use rand::seq::SliceRandom;
use rand::Rng;

pub(crate) struct View<'a> {
    pub me: PeerId,
    pub degree: usize,
    /// Live connections and dials in progress.
    pub have: &'a HashSet<PeerId>,
    /// Peers we could dial now (discovered or known, not in back-off).
    pub candidates: &'a [PeerId],
    /// The part of the mesh reachable from here, once the topology has been
    /// quiet long enough to trust; `None` while it is still settling.
    pub component: Option<&'a HashSet<PeerId>>,
    /// Nodes that never dial (degree 0): they cannot bridge.
    pub passive: &'a HashSet<PeerId>,
}

/// Inbound connections beyond this are refused.
pub(crate) fn inbound_cap(degree: usize) -> usize {
    degree.saturating_mul(4).max(8)
}

pub(crate) fn plan(v: &View, rng: &mut impl Rng) -> Vec<PeerId> {
    if v.degree == 0 {
        return Vec::new();
    }
    let mut fresh: Vec<PeerId> = v
        .candidates
        .iter()
        .filter(|p| **p != v.me && !v.have.contains(p))
        .copied()
        .collect();
    fresh.sort();
    fresh.dedup();
    if v.have.len() < v.degree {
        // Random choice spreads the load: if every node dialled the same
        // lowest id, that node would hit its inbound cap.
        fresh.shuffle(rng);
        fresh.truncate(v.degree - v.have.len());
        return fresh;
    }
    // Degree is met, but the nodes may have paired off into islands (with
    // degree 2, two triangles are both "done"). The lowest id of each island
    // that dials at all bridges to a random node it can see outside it; one
    // dial per island keeps the extra edges few.
    let Some(component) = v.component else {
        return Vec::new();
    };
    if component.iter().filter(|p| !v.passive.contains(p)).min() != Some(&v.me) {
        return Vec::new();
    }
    let outside: Vec<PeerId> = fresh
        .into_iter()
        .filter(|p| !component.contains(p))
        .collect();
    outside.choose(rng).copied().into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn ids(n: usize) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = (0..n).map(|_| PeerId::random()).collect();
        v.sort();
        v
    }

    #[test]
    fn dials_up_to_degree_and_no_further() {
        let p = ids(6);
        let have = HashSet::from([p[1]]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let v = View {
            me: p[0],
            degree: 3,
            have: &have,
            candidates: &p,
            component: None,
            passive: &HashSet::new(),
        };
        let d = plan(&v, &mut rng);
        assert_eq!(d.len(), 2);
        assert!(!d.contains(&p[0]) && !d.contains(&p[1]));

        let full = HashSet::from([p[1], p[2], p[3]]);
        let v = View { have: &full, ..v };
        assert!(plan(&v, &mut rng).is_empty());
    }

    #[test]
    fn degree_zero_never_dials() {
        // A settled view in which any other node would bridge: it is alone
        // in its component (so it is the lowest id there), with candidates
        // outside. Only degree 0 keeps it from dialling.
        let p = ids(3);
        let have = HashSet::new();
        let alone = HashSet::from([p[0]]);
        let v = View {
            me: p[0],
            degree: 0,
            have: &have,
            candidates: &p,
            component: Some(&alone),
            passive: &HashSet::new(),
        };
        assert!(plan(&v, &mut rand::thread_rng()).is_empty());
        let v = View { degree: 1, ..v };
        assert!(!plan(&v, &mut rand::thread_rng()).is_empty());
    }

    #[test]
    fn only_the_lowest_id_of_an_island_bridges() {
        let p = ids(6);
        let island: HashSet<PeerId> = p[..3].iter().copied().collect();
        let have = HashSet::from([p[1], p[2]]);
        let mut rng = rand::thread_rng();
        let none = HashSet::new();
        let v = View {
            me: p[0],
            degree: 2,
            have: &have,
            candidates: &p,
            component: Some(&island),
            passive: &none,
        };
        let d = plan(&v, &mut rng);
        assert_eq!(d.len(), 1);
        assert!(!island.contains(&d[0]));

        let have1 = HashSet::from([p[0], p[2]]);
        let v = View {
            me: p[1],
            have: &have1,
            ..v
        };
        assert!(plan(&v, &mut rng).is_empty());

        // If the lowest id never dials, the next one bridges.
        let passive = HashSet::from([p[0]]);
        let v = View {
            passive: &passive,
            ..v
        };
        assert_eq!(plan(&v, &mut rng).len(), 1);
    }

    /// Runs the policy on every node until nothing changes (or 50 rounds),
    /// with the nodes of `arrived(round)` taking part in each round.
    fn settle(
        p: &[PeerId],
        adj: &mut [HashSet<PeerId>],
        rng: &mut impl Rng,
        arrived: impl Fn(usize) -> Vec<PeerId>,
    ) {
        let n = p.len();
        let idx = |x: &PeerId| p.iter().position(|q| q == x).unwrap();
        for round in 0..50 {
            let here = arrived(round);
            let mut changed = false;
            for me in &here {
                let i = idx(me);
                let comp = component(adj, i, p);
                let v = View {
                    me: *me,
                    degree: 2,
                    have: &adj[i].clone(),
                    candidates: &here,
                    component: Some(&comp),
                    passive: &HashSet::new(),
                };
                for t in plan(&v, rng) {
                    let j = idx(&t);
                    if adj[j].len() < inbound_cap(2) {
                        changed |= adj[i].insert(t);
                        adj[j].insert(*me);
                    }
                }
            }
            if !changed && here.len() == n {
                break;
            }
        }
    }

    /// Simulates arrival in every order: nodes dial by the policy until
    /// nothing changes, and the result is always one component.
    #[test]
    fn any_arrival_order_ends_in_one_component() {
        for seed in 0..200u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let n = 8;
            let p = ids(n);
            let mut order = p.clone();
            order.shuffle(&mut rng);
            let mut adj: Vec<HashSet<PeerId>> = vec![HashSet::new(); n];
            settle(&p, &mut adj, &mut rng, |round| {
                order[..n.min(round + 2)].to_vec()
            });
            assert_eq!(component(&adj, 0, &p).len(), n, "seed {seed}: islands");
        }
    }

    /// Two triangles: every node has its degree (2), so only the island
    /// bridging can join them, and it must.
    #[test]
    fn islands_that_formed_are_joined() {
        for seed in 0..50u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let p = ids(6);
            let mut adj: Vec<HashSet<PeerId>> = vec![HashSet::new(); 6];
            for tri in [[0, 1, 2], [3, 4, 5]] {
                for &a in &tri {
                    for &b in &tri {
                        if a != b {
                            adj[a].insert(p[b]);
                        }
                    }
                }
            }
            assert_eq!(component(&adj, 0, &p).len(), 3);
            settle(&p, &mut adj, &mut rng, |_| p.clone());
            assert_eq!(
                component(&adj, 0, &p).len(),
                6,
                "seed {seed}: still two islands"
            );
        }
    }

    fn component(adj: &[HashSet<PeerId>], start: usize, p: &[PeerId]) -> HashSet<PeerId> {
        let mut seen = HashSet::from([p[start]]);
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            for q in &adj[i] {
                if seen.insert(*q) {
                    stack.push(p.iter().position(|x| x == q).unwrap());
                }
            }
        }
        seen
    }
}
