//! Dialing: whom to connect to, and what is known of how to reach them.
//! [`Dialing`] holds that state; the event loop's methods here dial.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use tracing::{debug, warn};

use super::behaviour::{fmt_err, is_loopback};

/// Why a node without a cluster key dials nothing off its host.
const OFF_HOST: &str = "this node has no cluster key, so it stays on this host; give every \
                        node the same key (mm keygen, --psk-file), or start it with --insecure";
use super::{DialReply, EventLoop};
use crate::{Error, Tuning};

/// A `--peer` address, redialled with back-off until reached.
pub(super) struct Static {
    pub(super) addr: Multiaddr,
    /// Who answered there, once reached.
    pub(super) peer: Option<PeerId>,
    next: Instant,
    attempts: u32,
    /// When a failed dial to it was last logged as a warning.
    warned: Option<Instant>,
}

impl Static {
    /// Failed dials to a `--peer` address are warned about at most this
    /// often: the operator named it, so not reaching it is news, but it is
    /// retried every 30 s.
    const WARN_EVERY: Duration = Duration::from_secs(600);

    pub(super) fn new(addr: Multiaddr) -> Static {
        Static {
            addr,
            peer: None,
            next: Instant::now(),
            attempts: 0,
            warned: None,
        }
    }

    /// A dial to it failed: whether to say so as a warning now.
    pub(super) fn failed(&mut self, now: Instant) -> bool {
        if self
            .warned
            .is_some_and(|t| now.duration_since(t) < Self::WARN_EVERY)
        {
            return false;
        }
        self.warned = Some(now);
        true
    }
}

struct Backoff {
    until: Instant,
    failures: u32,
}

#[derive(Default)]
pub(super) struct Dialing {
    /// Dials in progress, and the `mesh dial` caller waiting on each.
    pub(super) pending: HashMap<ConnectionId, (Option<PeerId>, Option<DialReply>)>,
    /// `mesh dial` callers waiting for the peer's identity to check out.
    pub(super) confirm: HashMap<PeerId, Vec<DialReply>>,
    backoff: HashMap<PeerId, Backoff>,
    /// `--peer` addresses: redialled with back-off whenever not connected.
    pub(super) statics: Vec<Static>,
    /// Dials in progress to `--peer` addresses: a failure is the
    /// operator's to hear of.
    pub(super) static_dials: HashMap<ConnectionId, Multiaddr>,
    /// Peers found by mDNS, with the addresses they advertised.
    pub(super) discovered: HashMap<PeerId, Vec<Multiaddr>>,
    /// Last addresses each node announced; outlives topology expiry so a
    /// node that restarts can be found again.
    pub(super) last_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    backoff_max: Duration,
    static_retry_max: Duration,
}

impl Dialing {
    pub(super) fn new(statics: Vec<Static>, t: &Tuning) -> Dialing {
        Dialing {
            statics,
            backoff_max: t.backoff_max,
            static_retry_max: t.static_retry_max,
            ..Dialing::default()
        }
    }

    /// A failed dial: leave the peer alone for a while, longer each time
    /// (2 s doubling, up to the tuning's maximum).
    pub(super) fn note_failure(&mut self, p: PeerId) {
        let now = Instant::now();
        let b = self.backoff.entry(p).or_insert(Backoff {
            until: now,
            failures: 0,
        });
        b.failures += 1;
        b.until = now + Duration::from_secs(1u64 << b.failures.min(6)).min(self.backoff_max);
    }

    /// Not to be dialled automatically for `wait` (after `mesh hangup`).
    pub(super) fn hold_off(&mut self, p: PeerId, wait: Duration) {
        self.backoff.insert(
            p,
            Backoff {
                until: Instant::now() + wait,
                failures: 0,
            },
        );
    }

    /// A dial that worked, or one asked for explicitly: no back-off.
    pub(super) fn forgive(&mut self, p: &PeerId) {
        self.backoff.remove(p);
    }

    pub(super) fn backed_off(&self, p: &PeerId, now: Instant) -> bool {
        self.backoff.get(p).is_some_and(|b| b.until > now)
    }

    /// Forgets back-offs that ended long ago.
    pub(super) fn prune(&mut self, now: Instant) {
        self.backoff
            .retain(|_, b| b.until + Duration::from_secs(600) > now);
    }

    /// Static peers not connected whose next attempt is due.
    fn due_statics(&mut self, now: Instant, connected: &HashSet<PeerId>) -> Vec<Multiaddr> {
        let mut due = Vec::new();
        for s in &mut self.statics {
            let up = s.peer.is_some_and(|p| connected.contains(&p));
            if up {
                s.attempts = 0;
                continue;
            }
            if s.next <= now {
                s.attempts += 1;
                s.next =
                    now + Duration::from_secs(1u64 << s.attempts.min(5)).min(self.static_retry_max);
                due.push(s.addr.clone());
            }
        }
        due
    }
}

impl EventLoop {
    /// Every peer we know how to reach: found by mDNS or announced in the mesh.
    pub(super) fn dialable(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.dials.discovered.keys().copied().collect();
        v.extend(
            self.topo
                .known()
                .filter(|(_, a)| !a.addrs.is_empty())
                .map(|(p, _)| *p),
        );
        v.extend(self.dials.last_addrs.keys().copied());
        v.retain(|p| *p != self.me && !self.is_refused(p));
        v.sort();
        v.dedup();
        v
    }

    pub(super) fn addrs_of(&self, p: &PeerId) -> Vec<Multiaddr> {
        let mut v: Vec<Multiaddr> = self.dials.discovered.get(p).cloned().unwrap_or_default();
        if let Some(a) = self.topo.announce_of(p) {
            v.extend(a.addrs.iter().filter_map(|s| s.parse().ok()));
        }
        v.extend(self.dials.last_addrs.get(p).into_iter().flatten().cloned());
        dial_set(v)
    }

    pub(super) fn dial_peer(&mut self, p: PeerId, reply: Option<DialReply>) {
        let mut addrs = self.addrs_of(&p);
        if self.cfg.loopback_only {
            addrs.retain(is_loopback);
            if addrs.is_empty() {
                if let Some(r) = reply {
                    let _ = r.send(Err(Error::Dial(OFF_HOST.into())));
                }
                return;
            }
        }
        let opts = DialOpts::peer_id(p)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .allocate_new_port()
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.pending.insert(id, (Some(p), reply));
            }
            Err(e) => {
                let msg = format!("dial {p}: {}", fmt_err(&e));
                debug!("{msg}");
                if let Some(r) = reply {
                    let _ = r.send(Err(Error::Dial(msg)));
                }
            }
        }
    }

    /// Dials `a`; the dial's connection id if it started.
    pub(super) fn dial_addr(
        &mut self,
        a: Multiaddr,
        reply: Option<DialReply>,
    ) -> Option<ConnectionId> {
        if self.cfg.loopback_only && !is_loopback(&a) {
            if let Some(r) = reply {
                let _ = r.send(Err(Error::Dial(format!("{a}: {OFF_HOST}"))));
            }
            return None;
        }
        // A new port for each dial, not the listener's (libp2p's default,
        // for NAT traversal, which a mesh whose nodes announce their own
        // addresses does not need): bound to the listening port, a dial
        // failed now and then with "address already in use" (the suite's
        // `four_nodes_join_by_peer_and_dial`, once), and libp2p-tcp 0.45
        // retries on a new port only for "address not available".
        let opts = DialOpts::unknown_peer_id()
            .address(a.clone())
            .allocate_new_port()
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.pending.insert(id, (None, reply));
                Some(id)
            }
            Err(e) => {
                let msg = format!("dial {a}: {}", fmt_err(&e));
                warn!("{msg}");
                if let Some(r) = reply {
                    let _ = r.send(Err(Error::Dial(msg)));
                }
                None
            }
        }
    }

    pub(super) fn dial_statics(&mut self, now: Instant) {
        for a in self.dials.due_statics(now, &self.connected) {
            if let Some(id) = self.dial_addr(a.clone(), None) {
                self.dials.static_dials.insert(id, a);
            }
        }
    }

    /// A dial to a `--peer` address failed: a warning, now and then, that
    /// says what to check.
    pub(super) fn static_failed(&mut self, id: ConnectionId, why: &str) {
        let Some(a) = self.dials.static_dials.remove(&id) else {
            return;
        };
        let now = Instant::now();
        if let Some(s) = self.dials.statics.iter_mut().find(|s| s.addr == a) {
            if s.failed(now) {
                warn!(
                    "--peer {a} not reached ({why}); tried again at least every 30 s, next such \
                     line in 10 minutes at the earliest"
                );
            }
        }
    }
}

/// The addresses to dial a peer at, each once. mDNS gives an address with
/// the peer's id at its end (`.../p2p/ID`), an announcement the same
/// address without: libp2p dials every address given at once, so both
/// were dialled, and the loser's handshake was cut short (about 140 per
/// 15-puller swarm, each a Noise handshake's CPU on both ends). libp2p
/// adds the id itself when it dials a peer by id.
pub(super) fn dial_set(addrs: impl IntoIterator<Item = Multiaddr>) -> Vec<Multiaddr> {
    let mut v: Vec<Multiaddr> = addrs
        .into_iter()
        .map(|mut a| {
            while matches!(a.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) {
                a.pop();
            }
            a
        })
        .filter(|a| !a.is_empty())
        .collect();
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_with_and_without_the_peer_id_is_dialled_once() {
        let p = PeerId::random();
        let bare: Multiaddr = "/ip4/10.0.0.5/tcp/9000".parse().unwrap();
        let with_id = bare.clone().with(libp2p::multiaddr::Protocol::P2p(p));
        let other: Multiaddr = "/ip4/10.0.1.5/tcp/9000".parse().unwrap();
        assert_eq!(
            dial_set([with_id.clone(), bare.clone(), other.clone(), with_id]),
            vec![bare, other]
        );
    }

    #[test]
    fn failed_dials_back_off_longer_each_time_up_to_the_cap() {
        let t = Tuning::default();
        let mut d = Dialing::new(Vec::new(), &t);
        let p = PeerId::random();
        let now = Instant::now();
        assert!(!d.backed_off(&p, now));
        let mut waits = Vec::new();
        for _ in 0..8 {
            d.note_failure(p);
            waits.push(d.backoff[&p].until - now);
        }
        assert!(d.backed_off(&p, now));
        assert!(waits[0] >= Duration::from_secs(2) && waits[0] < Duration::from_secs(3));
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert!(*waits.last().unwrap() <= t.backoff_max + Duration::from_millis(100));
        assert!(!d.backed_off(&p, now + t.backoff_max + Duration::from_secs(1)));
        // A dial asked for explicitly, or that worked, clears it.
        d.forgive(&p);
        assert!(!d.backed_off(&p, now));
    }

    #[test]
    fn a_hangup_holds_the_peer_off_for_its_time() {
        let t = Tuning::default();
        let mut d = Dialing::new(Vec::new(), &t);
        let p = PeerId::random();
        let now = Instant::now();
        d.hold_off(p, t.hangup_hold);
        assert!(d.backed_off(&p, now + t.hangup_hold - Duration::from_secs(1)));
        assert!(!d.backed_off(&p, now + t.hangup_hold + Duration::from_secs(1)));
    }

    #[test]
    fn static_peers_are_redialled_with_back_off_while_down() {
        let t = Tuning::default();
        let a: Multiaddr = "/ip4/10.0.0.1/tcp/9000".parse().unwrap();
        let mut d = Dialing::new(vec![Static::new(a.clone())], &t);
        let none = HashSet::new();
        let now = Instant::now();
        assert_eq!(d.due_statics(now, &none), vec![a.clone()]);
        assert!(d.due_statics(now, &none).is_empty(), "not again at once");
        assert_eq!(d.due_statics(now + t.static_retry_max, &none), vec![a]);
        // Reached: not dialled.
        let p = PeerId::random();
        d.statics[0].peer = Some(p);
        let up = HashSet::from([p]);
        assert!(d.due_statics(now + t.static_retry_max * 2, &up).is_empty());
    }
}
