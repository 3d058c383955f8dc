//! Connections dialled only to carry direct requests. A file transfer asks
//! every holder for a data channel grant; each such request would otherwise
//! leave a libp2p connection behind for an hour, and after one big
//! `file get` the overlay is a complete graph: every node then runs
//! gossipsub, identify and ping on every pair, which cost a 15-node swarm
//! more CPU than its chunks' hashing. So such a connection is closed once
//! idle, unless the node needs it to reach its degree.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

#[derive(Default)]
pub(super) struct Transient(HashMap<PeerId, Use>);

struct Use {
    last: Instant,
    in_flight: usize,
    /// Told to close: not offered again.
    closing: bool,
}

impl Transient {
    /// A direct request to `p`; `fresh` when no connection to it existed,
    /// so that this request dials one.
    pub(super) fn sent(&mut self, p: PeerId, fresh: bool, now: Instant) {
        let u = if fresh {
            self.0.entry(p).or_insert(Use {
                last: now,
                in_flight: 0,
                closing: false,
            })
        } else {
            match self.0.get_mut(&p) {
                Some(u) => u,
                None => return,
            }
        };
        u.in_flight += 1;
        u.last = now;
    }

    /// A direct request to `p` was answered or failed.
    pub(super) fn settled(&mut self, p: &PeerId, now: Instant) {
        if let Some(u) = self.0.get_mut(p) {
            u.in_flight = u.in_flight.saturating_sub(1);
            u.last = now;
        }
    }

    /// `p` sent a direct request over the connection.
    pub(super) fn used(&mut self, p: &PeerId, now: Instant) {
        if let Some(u) = self.0.get_mut(p) {
            u.last = now;
        }
    }

    /// Whether the connection to `p` is one of these: the node does not
    /// announce it as a peer, so the mesh's topology does not churn with
    /// every transfer.
    pub(super) fn contains(&self, p: &PeerId) -> bool {
        self.0.contains_key(p)
    }

    /// The connection is gone, or is a peer of the node's degree now.
    pub(super) fn forget(&mut self, p: &PeerId) {
        self.0.remove(p);
    }

    /// The connection was told to close.
    pub(super) fn closing(&mut self, p: &PeerId) {
        if let Some(u) = self.0.get_mut(p) {
            u.closing = true;
        }
    }

    /// Those with nothing in flight and unused for `idle`, not yet told
    /// to close.
    pub(super) fn idle(&self, now: Instant, idle: Duration) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = self
            .0
            .iter()
            .filter(|(_, u)| !u.closing && u.in_flight == 0 && now.duration_since(u.last) >= idle)
            .map(|(p, _)| *p)
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(10);

    #[test]
    fn only_a_connection_the_request_dialled_is_transient() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let mut t = Transient::default();
        t.sent(a, true, t0);
        t.sent(b, false, t0);
        t.settled(&a, t0);
        t.settled(&b, t0);
        assert_eq!(t.idle(t0 + IDLE, IDLE), vec![a]);
        assert!(t.contains(&a) && !t.contains(&b));
        t.closing(&a);
        assert!(t.idle(t0 + 2 * IDLE, IDLE).is_empty(), "told to close once");
        assert!(t.contains(&a), "not announced while it closes");
    }

    #[test]
    fn a_request_in_flight_or_recent_use_keeps_it() {
        let p = PeerId::random();
        let t0 = Instant::now();
        let mut t = Transient::default();
        t.sent(p, true, t0);
        t.sent(p, false, t0);
        t.settled(&p, t0);
        // One of the two is still in flight, however long it takes.
        assert!(t.idle(t0 + 5 * IDLE, IDLE).is_empty());
        t.settled(&p, t0 + 5 * IDLE);
        assert!(t.idle(t0 + 5 * IDLE + IDLE / 2, IDLE).is_empty());
        // The peer's own requests over it count as use.
        t.used(&p, t0 + 6 * IDLE);
        assert!(t.idle(t0 + 6 * IDLE + IDLE / 2, IDLE).is_empty());
        assert_eq!(t.idle(t0 + 7 * IDLE, IDLE), vec![p]);
    }

    #[test]
    fn a_closed_connection_is_forgotten() {
        let p = PeerId::random();
        let t0 = Instant::now();
        let mut t = Transient::default();
        t.sent(p, true, t0);
        t.forget(&p);
        assert!(!t.contains(&p));
        // A later request over a connection that exists is not transient.
        t.sent(p, false, t0);
        t.settled(&p, t0);
        assert!(t.idle(t0 + IDLE, IDLE).is_empty());
    }
}
