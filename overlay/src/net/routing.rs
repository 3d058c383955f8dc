//! Routed requests: `mesh send` fans out hop by hop, each hop answering for
//! its share of the targets. [`Routing`] is the bookkeeping of what is in
//! flight (pure, no I/O); the event loop's methods below do the sending.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::{request_response, PeerId};
use tokio::sync::oneshot;
use tracing::debug;

use super::{origin, DirectAnswer, EventLoop, MAX_TIMEOUT, MAX_TTL};
use crate::wire::{ByteBuf, Direct, DirectReply, Envelope, Origin, Outcome, Reply};
use crate::{Answers, Error, Inbound, Result};

/// Where a finished aggregation goes: back to a local caller, or back to
/// the peer that forwarded us the envelope.
enum ReplyTo {
    Local(oneshot::Sender<Answers>),
    Remote(request_response::ResponseChannel<Reply>),
}

/// One routed request at this hop: the targets it still waits for, and
/// the outcomes so far.
struct Agg {
    reply: ReplyTo,
    waiting: HashSet<PeerId>,
    results: Vec<Outcome>,
    deadline: Instant,
    /// Names as the origin resolved them, to label rows.
    names: HashMap<PeerId, String>,
    origin: Origin,
    ttl: u8,
    body: Vec<u8>,
    /// Nodes the request came through (origin first); not routed through.
    path: Vec<PeerId>,
    /// Targets already re-routed once after a relay failed.
    retried: HashSet<PeerId>,
}

/// What a request carries from hop to hop: origin, hops left, body, path.
type Carried = (Origin, u8, Vec<u8>, Vec<PeerId>);

/// Answers from the node, back into the event loop.
pub(super) enum LocalDone {
    Routed {
        agg: u64,
        peer: PeerId,
        result: Result<Vec<u8>>,
    },
    Direct {
        channel: request_response::ResponseChannel<DirectReply>,
        result: Result<Vec<u8>>,
    },
}

/// Everything in flight: aggregations, and the requests sent for them.
#[derive(Default)]
pub(super) struct Routing {
    aggs: HashMap<u64, Agg>,
    next_agg: u64,
    /// Envelopes sent on, and the aggregation and targets each covers.
    pub(super) outbound: HashMap<request_response::OutboundRequestId, (u64, Vec<PeerId>)>,
    /// Direct requests sent, and who waits for each answer.
    pub(super) direct_out: HashMap<request_response::OutboundRequestId, DirectAnswer>,
    /// Routed requests addressed here lately, so that none runs twice.
    seen: origin::Seen,
    /// Aggregations for other nodes' requests, and what they hold.
    remote: usize,
    remote_bytes: usize,
}

/// Other nodes' routed requests in flight here at once, and their bytes.
const MAX_REMOTE: usize = 4096;
const MAX_REMOTE_BYTES: usize = 64 << 20;

impl Routing {
    fn open(
        &mut self,
        reply: ReplyTo,
        timeout: Duration,
        names: HashMap<PeerId, String>,
        (origin, ttl, body, path): Carried,
    ) -> u64 {
        self.next_agg += 1;
        let id = self.next_agg;
        let now = Instant::now();
        if matches!(reply, ReplyTo::Remote(_)) {
            self.remote += 1;
            self.remote_bytes += body.len() + 40 * origin.targets.len();
        }
        self.aggs.insert(
            id,
            Agg {
                reply,
                waiting: HashSet::new(),
                results: Vec::new(),
                deadline: now
                    .checked_add(timeout)
                    .unwrap_or_else(|| now + MAX_TIMEOUT),
                names,
                origin,
                ttl,
                body,
                path,
                retried: HashSet::new(),
            },
        );
        id
    }

    /// Records the outcome for one awaited target; hands back the
    /// aggregation once nothing more is awaited.
    fn settle(&mut self, agg: u64, peer: PeerId, result: Result<Vec<u8>>) -> Option<Agg> {
        let a = self.aggs.get_mut(&agg)?;
        if !a.waiting.remove(&peer) {
            return None;
        }
        a.results.push(Outcome {
            peer,
            result: result.map(ByteBuf),
        });
        if a.waiting.is_empty() {
            self.close(agg)
        } else {
            None
        }
    }

    /// The aggregation, if it awaits nothing (every target was answered
    /// at once, or there were none).
    fn close_if_idle(&mut self, agg: u64) -> Option<Agg> {
        if self.aggs.get(&agg).is_some_and(|a| a.waiting.is_empty()) {
            self.close(agg)
        } else {
            None
        }
    }

    /// Aggregations past their deadline, each target still awaited marked
    /// `timed out`.
    fn close_late(&mut self, now: Instant) -> Vec<Agg> {
        let late: Vec<u64> = self
            .aggs
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Vec::new();
        for id in late {
            if let Some(a) = self.aggs.get_mut(&id) {
                for p in std::mem::take(&mut a.waiting) {
                    a.results.push(Outcome {
                        peer: p,
                        result: Err(Error::TimedOut),
                    });
                }
            }
            out.extend(self.close(id));
        }
        out
    }

    /// The earliest deadline of a request in flight.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.aggs.values().map(|a| a.deadline).min()
    }

    /// After a relay failed: which of `targets` to route once more (not
    /// re-routed before, and time left), and which to fail; with the time
    /// left.
    fn split_retry(
        &mut self,
        agg: u64,
        targets: Vec<PeerId>,
        now: Instant,
    ) -> Option<(Vec<PeerId>, Vec<PeerId>, Duration)> {
        let a = self.aggs.get_mut(&agg)?;
        let left = a.deadline.saturating_duration_since(now);
        let (again, fail): (Vec<PeerId>, Vec<PeerId>) = targets
            .into_iter()
            .partition(|t| !a.retried.contains(t) && left > Duration::from_millis(100));
        a.retried.extend(again.iter().copied());
        Some((again, fail, left))
    }

    fn close(&mut self, agg: u64) -> Option<Agg> {
        let a = self.aggs.remove(&agg)?;
        if matches!(a.reply, ReplyTo::Remote(_)) {
            self.remote -= 1;
            self.remote_bytes = self
                .remote_bytes
                .saturating_sub(a.body.len() + 40 * a.origin.targets.len());
        }
        self.outbound.retain(|_, (id, _)| *id != agg);
        Some(a)
    }
}

impl EventLoop {
    pub(super) fn send_from_here(
        &mut self,
        names: Vec<String>,
        body: Vec<u8>,
        timeout: Duration,
        reply: oneshot::Sender<Answers>,
    ) {
        let timeout = timeout.min(MAX_TIMEOUT);
        let hops = self.topo.next_hops(&self.connected);
        let mut known = HashMap::new();
        let mut unknown = Vec::new();
        for n in names {
            match self.topo.name_holder(&n) {
                Some(p) if hops.contains_key(&p) => {
                    known.insert(p, n);
                }
                _ => unknown.push(n),
            }
        }
        let origin = origin::sign(&self.cfg.keypair, known.keys().copied().collect(), &body);
        let id = self.routes.open(
            ReplyTo::Local(reply),
            timeout,
            known.clone(),
            (origin, MAX_TTL, body, Vec::new()),
        );
        if let Some(agg) = self.routes.aggs.get_mut(&id) {
            for n in unknown {
                // Unknown names have no peer id; label them with a random one.
                let fake = PeerId::random();
                let why = match self.topo.left_at(&n) {
                    Some(t) => Error::LeftMesh(t.elapsed().as_secs()),
                    None if self.topo.name_holder(&n).is_some() => Error::NoRoute,
                    None => Error::NotInMesh,
                };
                agg.names.insert(fake, n);
                agg.results.push(Outcome {
                    peer: fake,
                    result: Err(why),
                });
            }
        }
        self.route(id, known.into_keys().collect(), timeout);
        self.finish_if_idle(id);
    }

    fn finish_if_idle(&mut self, agg: u64) {
        if let Some(a) = self.routes.close_if_idle(agg) {
            self.deliver(a);
        }
    }

    /// Handles this node's share of `targets` and forwards the rest, grouped
    /// by next hop, each group as one envelope.
    fn route(&mut self, agg: u64, targets: Vec<PeerId>, timeout: Duration) {
        let Some(a) = self.routes.aggs.get(&agg) else {
            return;
        };
        let (origin, ttl, body) = (a.origin.clone(), a.ttl, a.body.clone());
        let avoid: HashSet<PeerId> = a.path.iter().copied().collect();
        let mut path = a.path.clone();
        path.push(self.me);
        let hops = self.topo.next_hops_avoiding(&self.connected, &avoid);
        let mut groups: HashMap<PeerId, Vec<PeerId>> = HashMap::new();
        let mut local = false;
        let mut failed = Vec::new();
        for t in targets {
            if let Some(a) = self.routes.aggs.get_mut(&agg) {
                a.waiting.insert(t);
            }
            if t == self.me {
                local = true;
            } else if ttl == 0 {
                failed.push((t, Error::TooManyHops));
            } else if let Some(h) = hops.get(&t) {
                groups.entry(*h).or_default().push(t);
            } else {
                failed.push((t, Error::NoRoute));
            }
        }
        for (t, e) in failed {
            self.settle(agg, t, Err(e));
        }
        // Leave each hop a margin so partial answers make it back before the
        // caller gives up: a tenth, and at least 100 ms, which covers a hop
        // of a loaded host.
        let margin = (timeout / 10).max(Duration::from_millis(100));
        let downstream = timeout.saturating_sub(margin);
        for (hop, dst) in groups {
            let env = Envelope {
                origin: origin.clone(),
                dst: dst.clone(),
                timeout_ms: downstream.as_millis() as u64,
                ttl: ttl - 1,
                path: path.clone(),
                body: body.clone(),
            };
            let rid = self.swarm.behaviour_mut().rpc.send_request(&hop, env);
            self.routes.outbound.insert(rid, (agg, dst));
        }
        if local {
            // Who asked, as its signature proves: not a name any hop claims.
            if let Err(e) = self.routes.seen.check(&origin, &self.me, &body) {
                tracing::warn!("refusing a routed request: {e}");
                self.settle(agg, self.me, Err(Error::Unverified(e)));
                return;
            }
            let from = self
                .topo
                .name_of(&origin.node)
                .map(str::to_owned)
                .unwrap_or_else(|| origin.node.to_string());
            let (tx, rx) = oneshot::channel();
            let inbound = Inbound {
                from,
                body,
                reply: tx,
            };
            let done = self.done_tx.clone();
            let me = self.me;
            match self.inbound_tx.try_send(inbound) {
                Ok(()) => {
                    tokio::spawn(async move {
                        let result = rx.await.unwrap_or(Err(Error::Dropped));
                        let _ = done.send(LocalDone::Routed {
                            agg,
                            peer: me,
                            result,
                        });
                    });
                }
                Err(_) => self.settle(agg, me, Err(Error::Overloaded)),
            }
        }
    }

    pub(super) fn on_envelope(
        &mut self,
        from: PeerId,
        env: Envelope,
        channel: request_response::ResponseChannel<Reply>,
    ) {
        if !self.connected.contains(&from) || self.is_refused(&from) {
            let _ = self
                .swarm
                .behaviour_mut()
                .rpc
                .send_response(channel, Reply::default());
            return;
        }
        // What other nodes' requests may hold here while they run: a peer
        // that sends many with long deadlines is answered `overloaded`.
        let size = env.body.len() + 40 * (env.dst.len() + env.origin.targets.len());
        if self.routes.remote >= MAX_REMOTE || self.routes.remote_bytes + size > MAX_REMOTE_BYTES {
            let results = env
                .dst
                .iter()
                .map(|p| Outcome {
                    peer: *p,
                    result: Err(Error::Overloaded),
                })
                .collect();
            let _ = self
                .swarm
                .behaviour_mut()
                .rpc
                .send_response(channel, Reply { results });
            return;
        }
        let timeout = Duration::from_millis(env.timeout_ms).min(MAX_TIMEOUT);
        let ttl = env.ttl.min(MAX_TTL);
        let id = self.routes.open(
            ReplyTo::Remote(channel),
            timeout,
            HashMap::new(),
            (env.origin, ttl, env.body, env.path),
        );
        self.route(id, env.dst, timeout);
        self.finish_if_idle(id);
    }

    pub(super) fn on_reply(&mut self, rid: request_response::OutboundRequestId, reply: Reply) {
        let Some((agg, targets)) = self.routes.outbound.remove(&rid) else {
            return;
        };
        let mut pending: HashSet<PeerId> = targets.into_iter().collect();
        for o in reply.results {
            // Only accept answers for targets we actually sent that way.
            if pending.remove(&o.peer) {
                self.settle(agg, o.peer, o.result.map(|b| b.0));
            }
        }
        for t in pending {
            self.settle(agg, t, Err(Error::NoAnswer));
        }
    }

    /// A relay failed (typically its connection closed while the mesh
    /// re-forms): route those targets once more over the current topology,
    /// if time remains; otherwise they fail with `failed`.
    pub(super) fn retry_or_fail(&mut self, agg: u64, targets: Vec<PeerId>, failed: Error) {
        let Some((again, fail, left)) = self.routes.split_retry(agg, targets, Instant::now())
        else {
            return;
        };
        for t in fail {
            self.settle(agg, t, Err(failed.clone()));
        }
        if !again.is_empty() {
            debug!("{failed}; routing {} target(s) again", again.len());
            self.route(agg, again, left);
        }
    }

    pub(super) fn on_local_done(&mut self, d: LocalDone) {
        match d {
            LocalDone::Routed { agg, peer, result } => self.settle(agg, peer, result),
            LocalDone::Direct { channel, result } => {
                let reply = DirectReply {
                    result: result.map(ByteBuf),
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .bulk
                    .send_response(channel, reply);
            }
        }
    }

    pub(super) fn direct_to(&mut self, name: String, body: Vec<u8>, reply: DirectAnswer) {
        let Some(p) = self.topo.name_holder(&name).filter(|p| *p != self.me) else {
            let _ = reply.send(Err(Error::NoSuchHost(name)));
            return;
        };
        // Its connection, if this request makes one, is closed once idle
        // (not one a dial already under way makes).
        let fresh = !self.conns.contains_key(&p)
            && !self.dials.pending.values().any(|(q, _)| *q == Some(p));
        self.transient.sent(p, fresh, Instant::now());
        // request_response dials by itself when not connected, from the
        // listening port; when the other node dials back at that moment
        // (a swarm's start), the two SYNs between the two listening ports
        // make one TCP connection that both ends open as the dialler, and
        // its handshake fails on both. So a dial of its own first, from a
        // new port, which request_response's then waits for.
        if !self.connected.contains(&p) {
            let addrs = self.addrs_of(&p);
            for a in &addrs {
                self.swarm.add_peer_address(p, a.clone());
            }
            let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(p)
                .addresses(addrs)
                .allocate_new_port()
                .build();
            let _ = self.swarm.dial(opts);
        }
        let rid = self
            .swarm
            .behaviour_mut()
            .bulk
            .send_request(&p, Direct { body });
        self.routes.direct_out.insert(rid, reply);
    }

    pub(super) fn on_direct(
        &mut self,
        from: PeerId,
        req: Direct,
        channel: request_response::ResponseChannel<DirectReply>,
    ) {
        // Answered only once its identity checked out, and labelled with the
        // name it gave then: the connection's peer is authenticated.
        let Some(name) = self.admitted_name(&from) else {
            self.refuse_direct(channel, Error::NotAdmitted);
            return;
        };
        let (tx, rx) = oneshot::channel();
        let inbound = Inbound {
            from: name,
            body: req.body,
            reply: tx,
        };
        if self.inbound_tx.try_send(inbound).is_err() {
            self.refuse_direct(channel, Error::Overloaded);
            return;
        }
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let result = rx.await.unwrap_or(Err(Error::Dropped));
            let _ = done.send(LocalDone::Direct { channel, result });
        });
    }

    fn refuse_direct(&mut self, channel: request_response::ResponseChannel<DirectReply>, e: Error) {
        let reply = DirectReply { result: Err(e) };
        let _ = self
            .swarm
            .behaviour_mut()
            .bulk
            .send_response(channel, reply);
    }

    pub(super) fn settle(&mut self, agg: u64, peer: PeerId, result: Result<Vec<u8>>) {
        if let Some(a) = self.routes.settle(agg, peer, result) {
            self.deliver(a);
        }
    }

    pub(super) fn reap_deadlines(&mut self, now: Instant) {
        for a in self.routes.close_late(now) {
            self.deliver(a);
        }
    }

    /// Sends a finished aggregation's outcomes where they are awaited.
    fn deliver(&mut self, a: Agg) {
        match a.reply {
            ReplyTo::Local(tx) => {
                let rows = a
                    .results
                    .into_iter()
                    .map(|o| {
                        let name = a
                            .names
                            .get(&o.peer)
                            .cloned()
                            .unwrap_or_else(|| self.label(&o.peer));
                        (name, o.result.map(|b| b.0))
                    })
                    .collect();
                let _ = tx.send(rows);
            }
            ReplyTo::Remote(ch) => {
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .rpc
                    .send_response(ch, Reply { results: a.results });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(r: &mut Routing, timeout: Duration) -> (u64, oneshot::Receiver<Answers>) {
        let (tx, rx) = oneshot::channel();
        let id = r.open(
            ReplyTo::Local(tx),
            timeout,
            HashMap::new(),
            (
                origin::sign(&libp2p::identity::Keypair::generate_ed25519(), vec![], b""),
                MAX_TTL,
                Vec::new(),
                Vec::new(),
            ),
        );
        (id, rx)
    }

    #[test]
    fn an_aggregation_closes_with_its_last_answer_or_at_its_deadline() {
        let mut r = Routing::default();
        let (id, _rx) = open(&mut r, Duration::from_secs(1));
        let (p, q) = (PeerId::random(), PeerId::random());
        r.aggs.get_mut(&id).unwrap().waiting.extend([p, q]);
        assert!(r.settle(id, p, Ok(b"x".to_vec())).is_none());
        assert!(r.settle(id, p, Ok(Vec::new())).is_none(), "answered twice");
        let deadline = r.next_deadline().unwrap();
        assert!(r.close_late(deadline - Duration::from_millis(1)).is_empty());
        let late = r.close_late(deadline);
        assert_eq!(late.len(), 1);
        let outcomes: Vec<&Outcome> = late[0].results.iter().collect();
        assert_eq!(outcomes.len(), 2);
        assert!(outcomes
            .iter()
            .any(|o| o.peer == q && o.result == Err(Error::TimedOut)));
        assert!(r.next_deadline().is_none());
        // The last answer closes it before its deadline.
        let (id, _rx) = open(&mut r, Duration::from_secs(1));
        r.aggs.get_mut(&id).unwrap().waiting.insert(p);
        assert!(r.settle(id, p, Ok(Vec::new())).is_some());
        assert!(r.aggs.is_empty());
    }

    #[test]
    fn a_target_is_routed_again_once_and_only_in_time() {
        let mut r = Routing::default();
        let (id, _rx) = open(&mut r, Duration::from_secs(10));
        let (p, q) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let (again, fail, _) = r.split_retry(id, vec![p], now).unwrap();
        assert_eq!((again, fail), (vec![p], vec![]));
        let (again, fail, _) = r.split_retry(id, vec![p, q], now).unwrap();
        assert_eq!(
            (again, fail),
            (vec![q], vec![p]),
            "p was routed again already"
        );
        // With (almost) no time left, nothing is routed again.
        let (id, _rx) = open(&mut r, Duration::from_millis(50));
        let (again, fail, _) = r.split_retry(id, vec![p], now).unwrap();
        assert_eq!((again, fail), (vec![], vec![p]));
    }
}
