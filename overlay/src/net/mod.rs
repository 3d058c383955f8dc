//! The event loop that owns the libp2p swarm. Everything else talks to it
//! through [`crate::Overlay`] commands; nothing locks the swarm.
//!
//! Its state is cut by concern, each in a sibling file: [`routing`] (routed
//! and direct requests in flight), [`dialing`] (whom to connect to, back-off,
//! static peers), [`peers`] (identity checks and refusals), [`transient`]
//! (connections made only for direct requests); [`behaviour`] builds the
//! swarm.

mod behaviour;
mod codec;
mod dialing;
mod origin;
mod peers;
mod per_ip;
mod quiet;
mod routing;
mod transient;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{gossipsub, identify, mdns, ping, request_response, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

pub(crate) use behaviour::{build_swarm, listen_addr};
use behaviour::{fmt_err, is_loopback, limits, Behaviour, BehaviourEvent};
use dialing::{Dialing, Static};
use peers::Admission;
use quiet::Quiet;
use routing::Routing;
use transient::Transient;

use crate::degree;
use crate::topology::Topology;
use crate::wire::{self, Announce, DataInfo, HostStats};
use crate::{Answers, Config, Error, Inbound, NodeView, Result, Snapshot};

type DialReply = oneshot::Sender<Result<()>>;
type DirectAnswer = oneshot::Sender<Result<Vec<u8>>>;

const MAX_TTL: u8 = 32;
/// No routed request waits longer than this, whatever it asks for.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

pub(crate) enum Cmd {
    Snapshot(oneshot::Sender<Snapshot>),
    SetDegree(usize),
    SetStats(HostStats),
    SetData(Option<DataInfo>),
    DialName(String, DialReply),
    DialAddr(Multiaddr, DialReply),
    Hangup(String, oneshot::Sender<Result<()>>),
    Direct {
        name: String,
        body: Vec<u8>,
        reply: DirectAnswer,
    },
    Send {
        names: Vec<String>,
        body: Vec<u8>,
        timeout: Duration,
        reply: oneshot::Sender<Answers>,
    },
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    cfg: Config,
    me: PeerId,
    topic: gossipsub::IdentTopic,
    topo: Topology,
    connected: HashSet<PeerId>,
    /// Live connections per peer, and whether we dialled them.
    conns: HashMap<PeerId, Vec<(ConnectionId, bool, Instant)>>,
    dials: Dialing,
    transient: Transient,
    admit: Admission,
    /// When a failed inbound connection was last logged, per address.
    quiet: Quiet,
    /// When each inbound connection still in its handshake arrived: how
    /// long a failed one lasted tells a dropped dial from a wrong key.
    /// Connection limits keep at most `PENDING` of them.
    handshaking: HashMap<ConnectionId, Instant>,
    routes: Routing,
    seq: u64,
    stats: HostStats,
    /// This node's data channel, for its announcement.
    data: Option<DataInfo>,
    announce_due: bool,
    /// The peers this node last announced: a change is announced at the
    /// next tick, and only a change.
    announced: Vec<PeerId>,
    component: HashSet<PeerId>,
    stable_since: Instant,
    inbound_tx: mpsc::Sender<Inbound>,
    done_tx: mpsc::UnboundedSender<routing::LocalDone>,
    done_rx: mpsc::UnboundedReceiver<routing::LocalDone>,
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        cfg: Config,
        inbound_tx: mpsc::Sender<Inbound>,
    ) -> Self {
        let me = *swarm.local_peer_id();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let statics = cfg.peers.iter().cloned().map(Static::new).collect();
        let dials = Dialing::new(statics, &cfg.tuning);
        Self {
            topic: gossipsub::IdentTopic::new(format!("mm/{}/topology", cfg.context)),
            swarm,
            me,
            topo: Topology::new(me),
            cfg,
            connected: HashSet::new(),
            conns: HashMap::new(),
            dials,
            transient: Transient::default(),
            admit: Admission::default(),
            quiet: Quiet::default(),
            handshaking: HashMap::new(),
            routes: Routing::default(),
            // A restarted node keeps its peer id; starting from the clock
            // makes its first announcement newer than any it sent before.
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            stats: HostStats::default(),
            data: None,
            announce_due: true,
            announced: Vec::new(),
            component: HashSet::new(),
            stable_since: Instant::now(),
            inbound_tx,
            done_tx,
            done_rx,
        }
    }

    pub(crate) async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        if let Err(e) = self.swarm.behaviour_mut().gossipsub.subscribe(&self.topic) {
            error!("cannot subscribe to the topology topic: {e}");
        }
        self.publish();
        let mut tick = tokio::time::interval(self.cfg.tuning.tick);
        let mut last_announce = Instant::now();
        let mut last_maintain = Instant::now();
        loop {
            // Each routed request is answered when its deadline falls due,
            // not at the next tick: every hop keeps only a small margin
            // (a tenth) for its answer to make it back in time.
            let due = self.routes.next_deadline();
            let reap = async move {
                match due {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => futures::future::pending().await,
                }
            };
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                _ = reap => self.reap_deadlines(Instant::now()),
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.on_cmd(c),
                    None => break,
                },
                Some(d) = self.done_rx.recv() => self.on_local_done(d),
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.reap_deadlines(now);
                    if self.announced_peers() != self.announced {
                        self.announce_due = true;
                    }
                    if self.announce_due || now.duration_since(last_announce) >= self.cfg.tuning.announce_every {
                        self.publish();
                        last_announce = now;
                    }
                    if now.duration_since(last_maintain) >= self.cfg.tuning.maintain_every {
                        self.maintain(now);
                        last_maintain = now;
                    }
                }
            }
        }
        debug!("overlay event loop stopped");
    }

    fn listen_addrs(&self) -> Vec<Multiaddr> {
        let all: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        // Another host cannot reach our loopback; announce it only when it is
        // all we have (a single-host test mesh).
        if all.iter().any(|a| !is_loopback(a)) {
            all.into_iter().filter(|a| !is_loopback(a)).collect()
        } else {
            all
        }
    }

    fn port(&self) -> u16 {
        self.swarm
            .listeners()
            .flat_map(|a| a.iter())
            .find_map(|p| match p {
                Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .unwrap_or(self.cfg.port)
    }

    fn own_announce(&self) -> Announce {
        let peers = self.announced_peers();
        Announce {
            name: self.cfg.name.clone(),
            seq: self.seq,
            degree: self.cfg.degree as u32,
            port: self.port(),
            keyed: self.cfg.psk.is_some(),
            addrs: self.listen_addrs().iter().map(|a| a.to_string()).collect(),
            peers,
            stats: self.stats.clone(),
            clashes: self
                .recent_clashes()
                .map(|(n, c)| (n.clone(), c.peer.to_string()))
                .collect(),
            data: self.data.clone(),
            site: self.cfg.site.clone(),
        }
    }

    fn publish(&mut self) {
        self.announce_due = false;
        self.seq += 1;
        let a = self.own_announce();
        self.announced = a.peers.clone();
        self.topo.update(self.me, a.clone(), Instant::now());
        let topic = self.topic.clone();
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, wire::encode(&a))
        {
            // Normal while alone or before subscriptions are exchanged; the
            // next periodic announcement covers it.
            debug!("announce not sent: {e}");
        }
    }

    /// Once a second: forget silent nodes, and dial whom the degree policy says.
    fn maintain(&mut self, now: Instant) {
        let (due, later): (Vec<_>, Vec<_>) =
            self.admit.hangups.drain(..).partition(|(_, t)| *t <= now);
        self.admit.hangups = later;
        for (p, _) in due {
            if self.is_refused(&p) {
                let _ = self.swarm.disconnect_peer_id(p);
            }
        }
        self.admit.until.retain(|_, until| *until > now);
        self.close_unidentified(now);
        self.close_transient(now);
        self.dials.prune(now);
        let expire = self.cfg.tuning.expire_after;
        for name in self.topo.expire(now, expire) {
            info!("node {name} left the mesh (silent for {expire:?})");
        }
        let comp = self.reached();
        if comp != self.component {
            self.component = comp;
            self.stable_since = now;
        }
        self.dial_statics(now);

        let mut have: HashSet<PeerId> = self.connected.clone();
        have.extend(self.dials.pending.values().filter_map(|(p, _)| *p));
        let candidates: Vec<PeerId> = self
            .dialable()
            .into_iter()
            .filter(|p| !self.dials.backed_off(p, now))
            .collect();
        let settled = now.duration_since(self.stable_since) >= self.cfg.tuning.settle;
        let passive: HashSet<PeerId> = self
            .topo
            .known()
            .filter(|(_, a)| a.degree == 0)
            .map(|(p, _)| *p)
            .collect();
        let view = degree::View {
            passive: &passive,
            me: self.me,
            degree: self.cfg.degree,
            have: &have,
            candidates: &candidates,
            component: settled.then_some(&self.component),
        };
        let plan = degree::plan(&view, &mut rand::thread_rng());
        for p in plan {
            if !have.contains(&p) && !self.connected.contains(&p) {
                debug!("degree: dialling {p}");
                self.dial_peer(p, None);
            }
        }
    }

    /// Connections dialled for direct requests and idle since: closed,
    /// unless the node needs one to reach its degree (then it is a peer
    /// like any other, and announced).
    fn close_transient(&mut self, now: Instant) {
        // As the degree policy counts them: live connections, less these.
        let mut peers = self
            .connected
            .iter()
            .filter(|p| !self.transient.contains(p))
            .count();
        for p in self.transient.idle(now, self.cfg.tuning.transient_idle) {
            if !self.conns.contains_key(&p) {
                // Its dial failed, or it closed before it was idle.
                self.transient.forget(&p);
                continue;
            }
            if !self.connected.contains(&p) {
                // Not identified yet: that check closes it, or admits it.
                continue;
            }
            if peers < self.cfg.degree {
                debug!("keeping {} as a peer", self.label(&p));
                self.transient.forget(&p);
                peers += 1;
                continue;
            }
            debug!(
                "closing the connection to {}: made for direct requests, idle",
                self.label(&p)
            );
            self.transient.closing(&p);
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    /// The peers this node announces: not the connections it made only for
    /// direct requests, which come and go with every transfer; and a peer
    /// that dialled us only once it announces us. The mesh takes a link
    /// only when both ends list it, so the dialler's word decides, and a
    /// node that was dialled for a grant does not announce that connection
    /// twice (when it comes and when it goes) for nothing.
    fn announced_peers(&self) -> Vec<PeerId> {
        let mut peers: Vec<PeerId> = self
            .connected
            .iter()
            .filter(|p| !self.transient.contains(p))
            .filter(|p| self.dialled(p) || self.topo.lists(p, &self.me))
            .copied()
            .collect();
        peers.sort();
        peers
    }

    /// Whether one of our connections to `p` is one we dialled.
    fn dialled(&self, p: &PeerId) -> bool {
        self.conns
            .get(p)
            .is_some_and(|l| l.iter().any(|(_, dialer, _)| *dialer))
    }

    fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Snapshot(r) => {
                let _ = r.send(self.snapshot());
            }
            Cmd::SetDegree(d) => {
                self.cfg.degree = d;
                *self.swarm.behaviour_mut().limits.limits_mut() =
                    limits(degree::inbound_cap(d) as u32);
                self.announce_due = true;
            }
            Cmd::SetStats(s) => self.stats = s,
            Cmd::SetData(d) => {
                self.data = d;
                self.announce_due = true;
            }
            Cmd::DialName(name, r) => match self.topo.name_holder(&name) {
                Some(p) if p == self.me => {
                    let _ = r.send(Err(Error::IsSelf(name)));
                }
                Some(p) if self.connected.contains(&p) => {
                    let _ = r.send(Ok(()));
                }
                Some(p) => {
                    self.dials.forgive(&p);
                    self.dial_peer(p, Some(r));
                }
                None => {
                    let _ = r.send(Err(Error::NoSuchHost(name)));
                }
            },
            Cmd::DialAddr(a, r) => {
                self.dial_addr(a, Some(r));
            }
            Cmd::Hangup(name, r) => {
                let res = match self.topo.name_holder(&name) {
                    Some(p) if self.connected.contains(&p) => {
                        // Keep the degree logic from dialling it straight back.
                        self.dials.hold_off(p, self.cfg.tuning.hangup_hold);
                        let _ = self.swarm.disconnect_peer_id(p);
                        Ok(())
                    }
                    Some(_) => Err(Error::NotPeer(name)),
                    None => Err(Error::NoSuchHost(name)),
                };
                let _ = r.send(res);
            }
            Cmd::Send {
                names,
                body,
                timeout,
                reply,
            } => self.send_from_here(names, body, timeout, reply),
            Cmd::Direct { name, body, reply } => self.direct_to(name, body, reply),
        }
    }

    /// Whether the reachable set has stayed as it is for the settle time.
    /// `component` is brought up to date only once a tick, so a change
    /// since then counts too.
    fn settled(&self, now: Instant) -> bool {
        now.duration_since(self.stable_since) >= self.cfg.tuning.settle
            && self.reached() == self.component
    }

    /// The nodes this one reaches now, directly or over hops.
    fn reached(&self) -> HashSet<PeerId> {
        self.topo.next_hops(&self.connected).into_keys().collect()
    }

    fn snapshot(&self) -> Snapshot {
        let mesh = self.topo.reachable(&self.connected);
        let mut nodes = std::collections::BTreeMap::new();
        for (p, a) in self.topo.known() {
            if let Some(peers) = mesh.get(&a.name) {
                nodes.insert(
                    a.name.clone(),
                    NodeView {
                        name: a.name.clone(),
                        peer_id: p.to_string(),
                        peers: peers.clone(),
                        degree: a.degree,
                        port: a.port,
                        keyed: a.keyed,
                        addrs: a.addrs.clone(),
                        stats: a.stats.clone(),
                        data: a.data.clone(),
                        site: a.site.clone(),
                    },
                );
            }
        }
        let mut direct: Vec<String> = self
            .connected
            .iter()
            .map(|p| {
                self.topo
                    .name_of(p)
                    .map(str::to_owned)
                    .unwrap_or_else(|| p.to_string())
            })
            .collect();
        direct.sort();
        Snapshot {
            name: self.cfg.name.clone(),
            peer_id: self.me.to_string(),
            context: self.cfg.context.clone(),
            degree: self.cfg.degree,
            port: self.port(),
            keyed: self.cfg.psk.is_some(),
            listen: self.listen_addrs().iter().map(|a| a.to_string()).collect(),
            direct,
            nodes,
            clashes: self.clash_views(),
            settled: self.settled(Instant::now()),
            site: self.cfg.site.clone(),
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!("listening on {address}");
                self.announce_due = true;
            }
            SwarmEvent::IncomingConnection { connection_id, .. } => {
                self.handshaking.insert(connection_id, Instant::now());
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                self.handshaking.remove(&connection_id);
                self.dials.static_dials.remove(&connection_id);
                debug!(
                    "connected to {peer_id} at {}",
                    endpoint.get_remote_address()
                );
                let mut explicit = false;
                if let Some((_, Some(r))) = self.dials.pending.remove(&connection_id) {
                    explicit = true;
                    if self.connected.contains(&peer_id) {
                        // Already a checked peer: this new connection is a
                        // duplicate and is closed below.
                        let _ = r.send(Ok(()));
                    } else {
                        // Answered once the peer's identity checks out.
                        self.dials.confirm.entry(peer_id).or_default().push(r);
                    }
                }
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    for s in self.dials.statics.iter_mut().filter(|s| &s.addr == address) {
                        explicit = true;
                        s.peer = Some(peer_id);
                    }
                }
                let dialer = endpoint.is_dialer();
                let list = self.conns.entry(peer_id).or_default();
                list.push((connection_id, dialer, Instant::now()));
                // One connection per pair is enough. A second one comes from a
                // dial by address to a peer we already had, or from both
                // sides dialling at once. An explicit dial drops its own new
                // connection; otherwise the higher id drops its outbound
                // ones, whatever the order they came up in, so both sides
                // keep the same connection.
                if list.len() > 1 {
                    let mut close = Vec::new();
                    if explicit && dialer {
                        close.push(connection_id);
                    } else if self.me > peer_id {
                        let outbound: Vec<ConnectionId> = list
                            .iter()
                            .filter(|(_, d, _)| *d)
                            .map(|(c, _, _)| *c)
                            .collect();
                        let skip = usize::from(outbound.len() == list.len());
                        close.extend(outbound.into_iter().skip(skip));
                    }
                    for c in close {
                        self.swarm.close_connection(c);
                    }
                }
                if self.is_refused(&peer_id) {
                    if !self.admit.hangups.iter().any(|(p, _)| *p == peer_id) {
                        self.admit
                            .hangups
                            .push((peer_id, Instant::now() + self.cfg.tuning.refuse_close_after));
                    }
                    return;
                }
                // Admitted once its identity checks out (peers.rs).
                if !self.connected.contains(&peer_id) {
                    self.admit
                        .awaiting
                        .entry(peer_id)
                        .or_insert_with(Instant::now);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                let mut short_lived = false;
                if let Some(list) = self.conns.get_mut(&peer_id) {
                    if let Some((_, dialer, at)) = list.iter().find(|(c, _, _)| *c == connection_id)
                    {
                        short_lived = *dialer && at.elapsed() < Duration::from_secs(3);
                    }
                    list.retain(|(c, _, _)| *c != connection_id);
                    if list.is_empty() {
                        self.conns.remove(&peer_id);
                    }
                }
                if short_lived && num_established == 0 {
                    // Accepted, then dropped at once (its inbound cap): back
                    // off as for a failed dial, or we would redial every tick.
                    self.dials.note_failure(peer_id);
                }
                if num_established > 0 {
                    return;
                }
                self.transient.forget(&peer_id);
                self.admit.awaiting.remove(&peer_id);
                self.admit.names.remove(&peer_id);
                for r in self.dials.confirm.remove(&peer_id).unwrap_or_default() {
                    let _ = r.send(Err(Error::Dial(
                        "the peer closed the connection (at its inbound cap, or it refused us)"
                            .into(),
                    )));
                }
                if !self.connected.remove(&peer_id) {
                    return;
                }
                let who = self.topo.name_of(&peer_id).unwrap_or("?").to_owned();
                if !self.announced.contains(&peer_id) {
                    // A connection for direct requests (either end's), never
                    // announced: nothing changed for the mesh.
                    debug!("{who}: a connection for direct requests closed");
                    return;
                }
                // Until it is heard from again (through another path, say),
                // a `mesh send` to it that finds no route says it left, and
                // when.
                if who != "?" {
                    self.topo.note_left(who.clone(), Instant::now());
                }
                info!(
                    "disconnected from {who} ({peer_id}){}",
                    cause.map(|c| format!(": {c}")).unwrap_or_default()
                );
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let text = fmt_err(&error);
                let hint = behaviour::dial_hint(&error, self.cfg.psk.is_some());
                let msg = match hint {
                    Some(h) => format!("dial failed: {text} ({h})"),
                    None => format!("dial failed: {text}"),
                };
                if let Some((_, Some(r))) = self.dials.pending.remove(&connection_id) {
                    let _ = r.send(Err(Error::Dial(msg.clone())));
                }
                self.static_failed(connection_id, hint.unwrap_or(&text));
                debug!(
                    "{} {msg}",
                    peer_id.map(|p| p.to_string()).unwrap_or_default()
                );
                if let Some(p) = peer_id {
                    self.dials.note_failure(p);
                }
            }
            SwarmEvent::IncomingConnectionError {
                connection_id,
                send_back_addr,
                error,
                ..
            } => {
                let held = self
                    .handshaking
                    .remove(&connection_id)
                    .map_or(Duration::ZERO, |t| t.elapsed());
                let text = fmt_err(&error);
                let denied = |e: &libp2p::swarm::ListenError| match e {
                    libp2p::swarm::ListenError::Denied { cause } => {
                        cause
                            .downcast_ref::<libp2p::connection_limits::Exceeded>()
                            .is_some()
                            || cause.downcast_ref::<per_ip::TooManyFromIp>().is_some()
                    }
                    _ => false,
                };
                if denied(&error) {
                    debug!("refused inbound from {send_back_addr}: {text}");
                    return;
                }
                // Not a key mismatch: 1-4 such lines per node at a
                // 15-puller swarm's start, all from members, cut within
                // milliseconds.
                if behaviour::dropped_dial(&error, held) {
                    debug!("inbound handshake from {send_back_addr} cut short by the other end: {text}");
                    return;
                }
                // Once a minute per address at most: a stranger (or a node
                // with another key) retrying would fill the log otherwise.
                let Some(more) = self.quiet.allow(&send_back_addr, Instant::now()) else {
                    return;
                };
                let more = if more > 0 {
                    format!(" ({more} more like it since the last such line)")
                } else {
                    String::new()
                };
                if self.cfg.psk.is_some() {
                    warn!(
                        "peer at {send_back_addr} rejected: cluster key mismatch? ({text}){more}; \
                         next such line for this address in 10 minutes at the earliest"
                    );
                } else {
                    warn!(
                        "inbound connection from {send_back_addr} failed: {text}{more}; if it is \
                         an mm node with a cluster key, this node has none: give it the same \
                         key (--psk-file); next such line for this address in 10 minutes at the \
                         earliest"
                    );
                }
            }
            SwarmEvent::Behaviour(ev) => self.on_behaviour(ev),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, ev: BehaviourEvent) {
        match ev {
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                for (p, addr) in list {
                    if p == self.me || self.is_refused(&p) || is_loopback(&addr) {
                        continue;
                    }
                    let v = self.dials.discovered.entry(p).or_default();
                    if !v.contains(&addr) {
                        debug!("mdns: found {p} at {addr}");
                        v.push(addr);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(list)) => {
                for (p, addr) in list {
                    if let Some(v) = self.dials.discovered.get_mut(&p) {
                        v.retain(|a| *a != addr);
                        if v.is_empty() {
                            self.dials.discovered.remove(&p);
                        }
                    }
                }
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.check_identity(peer_id, &info)
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(e),
            }) => {
                // A peer that stopped answering (powered off, frozen) would
                // otherwise hold its place as a peer until TCP gives up.
                warn!(
                    "{} stopped answering pings ({e}); closing the connection",
                    self.label(&peer)
                );
                self.swarm.close_connection(connection);
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. }) => {
                let Some(src) = message.source else { return };
                match wire::decode::<Announce>(&message.data) {
                    Ok(a) => self.on_announce(src, a),
                    Err(e) => warn!("bad announcement from {src}: {e}"),
                }
            }
            BehaviourEvent::Rpc(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => self.on_envelope(peer, request, channel),
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => self.on_reply(request_id, response),
                }
            }
            BehaviourEvent::Rpc(request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            }) => {
                if let Some((agg, targets)) = self.routes.outbound.remove(&request_id) {
                    let failed = hop_failure(&error, targets == [peer], || self.label(&peer));
                    // Only a request that provably never left may be sent
                    // again; otherwise a command could run twice.
                    let never_left = matches!(
                        error,
                        request_response::OutboundFailure::DialFailure
                            | request_response::OutboundFailure::UnsupportedProtocols
                    );
                    if never_left {
                        self.retry_or_fail(agg, targets, failed);
                    } else {
                        for t in targets {
                            self.settle(agg, t, Err(failed.clone()));
                        }
                    }
                }
            }
            BehaviourEvent::Rpc(request_response::Event::InboundFailure {
                peer, error, ..
            }) => {
                debug!("inbound request from {peer} failed: {error}");
            }
            BehaviourEvent::Bulk(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        self.transient.used(&peer, Instant::now());
                        self.on_direct(peer, request, channel)
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        self.transient.settled(&peer, Instant::now());
                        if let Some(r) = self.routes.direct_out.remove(&request_id) {
                            let _ = r.send(response.result.map(|b| b.0));
                        }
                    }
                }
            }
            BehaviourEvent::Bulk(request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            }) => {
                self.transient.settled(&peer, Instant::now());
                if let Some(r) = self.routes.direct_out.remove(&request_id) {
                    use request_response::OutboundFailure as F;
                    let (peer, reason) = (self.label(&peer), error.to_string());
                    let failed = match error {
                        F::ConnectionClosed | F::DialFailure => Error::Unanswered { peer, reason },
                        _ => Error::Peer { peer, reason },
                    };
                    let _ = r.send(Err(failed));
                }
            }
            BehaviourEvent::Bulk(request_response::Event::InboundFailure {
                peer, error, ..
            }) => {
                debug!("direct request from {peer} failed: {error}");
            }
            _ => {}
        }
    }

    fn label(&self, p: &PeerId) -> String {
        self.topo
            .name_of(p)
            .map(str::to_owned)
            .unwrap_or_else(|| p.to_string())
    }
}

/// A routed request's hop failed: a timeout is `timed out`, as for a host
/// that does not answer; a failure of the target's own connection (it was
/// a direct peer) is said in plain words; only a real relay is named.
fn hop_failure(
    error: &request_response::OutboundFailure,
    to_target: bool,
    via: impl FnOnce() -> String,
) -> Error {
    use request_response::OutboundFailure as F;
    let words = match error {
        F::Timeout => return Error::TimedOut,
        F::ConnectionClosed => "the connection was lost".to_string(),
        F::DialFailure => "cannot connect".to_string(),
        F::UnsupportedProtocols => "not an mm node of this version".to_string(),
        F::Io(e) => e.to_string(),
    };
    if to_target {
        Error::Link(words)
    } else {
        Error::Relay {
            via: via(),
            reason: words,
        }
    }
}
