//! The event loop that owns the libp2p swarm. Everything else talks to it
//! through [`crate::Overlay`] commands; nothing locks the swarm.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    connection_limits, gossipsub, identify, mdns, ping, request_response, Multiaddr, PeerId,
    StreamProtocol, Swarm,
};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::degree;
use crate::topology::{Topology, Update};
use crate::wire::{
    self, Announce, ByteBuf, Direct, DirectReply, Envelope, HostStats, Outcome, Reply,
};
use crate::{Answers, Config, Inbound, NodeView, Snapshot};

type DialReply = oneshot::Sender<Result<(), String>>;
type DirectAnswer = oneshot::Sender<Result<Vec<u8>, String>>;

const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);
/// A node silent for this long has left the mesh.
const EXPIRE_AFTER: Duration = Duration::from_secs(9);
/// How long the reachable set must stay unchanged before islands are bridged.
const SETTLE: Duration = Duration::from_secs(3);
const MAX_TTL: u8 = 32;
/// How long a refused peer is left alone before its identity is checked again.
const REFUSE_FOR: Duration = Duration::from_secs(60);
/// No routed request waits longer than this, whatever it asks for.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    gossipsub: gossipsub::Behaviour,
    rpc: request_response::cbor::Behaviour<Envelope, Reply>,
    bulk: request_response::cbor::Behaviour<Direct, DirectReply>,
}

pub(crate) enum Cmd {
    Snapshot(oneshot::Sender<Snapshot>),
    SetDegree(usize),
    SetStats(HostStats),
    DialName(String, oneshot::Sender<Result<(), String>>),
    DialAddr(Multiaddr, oneshot::Sender<Result<(), String>>),
    Hangup(String, oneshot::Sender<Result<(), String>>),
    Direct {
        name: String,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, String>>,
    },
    Send {
        names: Vec<String>,
        body: Vec<u8>,
        timeout: Duration,
        reply: oneshot::Sender<Answers>,
    },
}

/// Where a finished aggregation goes: back to a local caller, or back to
/// the peer that forwarded us the envelope.
enum ReplyTo {
    Local(oneshot::Sender<Answers>),
    Remote(request_response::ResponseChannel<Reply>),
}

struct Agg {
    reply: ReplyTo,
    waiting: HashSet<PeerId>,
    results: Vec<Outcome>,
    deadline: Instant,
    /// Names as the origin resolved them, to label rows.
    names: HashMap<PeerId, String>,
    src: String,
    ttl: u8,
    body: Vec<u8>,
    /// Nodes the request came through (origin first); not routed through.
    path: Vec<PeerId>,
    /// Targets already re-routed once after a relay failed.
    retried: HashSet<PeerId>,
}

/// Answers from the node, back into the event loop.
enum LocalDone {
    Routed {
        agg: u64,
        peer: PeerId,
        result: Result<Vec<u8>, String>,
    },
    Direct {
        channel: request_response::ResponseChannel<DirectReply>,
        result: Result<Vec<u8>, String>,
    },
}

struct Static {
    addr: Multiaddr,
    peer: Option<PeerId>,
    next: Instant,
    attempts: u32,
}

struct Backoff {
    until: Instant,
    failures: u32,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    cfg: Config,
    me: PeerId,
    topic: gossipsub::IdentTopic,
    topo: Topology,
    connected: HashSet<PeerId>,
    dialing: HashMap<ConnectionId, (Option<PeerId>, Option<DialReply>)>,
    /// `mesh dial` callers waiting for the peer's identity to check out.
    confirm: HashMap<PeerId, Vec<DialReply>>,
    /// Live connections per peer, and whether we dialled them.
    conns: HashMap<PeerId, Vec<(ConnectionId, bool, Instant)>>,
    /// Last addresses each node announced; outlives topology expiry so a
    /// node that restarts can be found again.
    last_addrs: HashMap<PeerId, Vec<Multiaddr>>,
    /// Peers found by mDNS, with the addresses they advertised.
    discovered: HashMap<PeerId, Vec<Multiaddr>>,
    backoff: HashMap<PeerId, Backoff>,
    /// Peers of another context or with a clashing name, and until when
    /// they are not dialled or listened to (their identity is checked again
    /// on every new connection, so a fixed node is taken back).
    refused: HashMap<PeerId, Instant>,
    /// Refused peers still connected, and when to close the connection.
    hangups: Vec<(PeerId, Instant)>,
    /// `--peer` addresses: redialled with back-off whenever not connected.
    statics: Vec<Static>,
    seq: u64,
    stats: HostStats,
    announce_due: bool,
    component: HashSet<PeerId>,
    stable_since: Instant,
    aggs: HashMap<u64, Agg>,
    next_agg: u64,
    outbound: HashMap<request_response::OutboundRequestId, (u64, Vec<PeerId>)>,
    direct_out: HashMap<request_response::OutboundRequestId, DirectAnswer>,
    inbound_tx: mpsc::Sender<Inbound>,
    done_tx: mpsc::UnboundedSender<LocalDone>,
    done_rx: mpsc::UnboundedReceiver<LocalDone>,
}

pub(crate) fn build_swarm(cfg: &Config) -> Result<Swarm<Behaviour>, String> {
    let protocol_version = protocol_version(&cfg.context);
    let agent = format!("mm/{} {}", env!("CARGO_PKG_VERSION"), cfg.name);
    let mdns_on = cfg.mdns;
    let cap = degree::inbound_cap(cfg.degree) as u32;
    let psk = cfg.psk;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_other_transport(|key| crate::transport::build(key, psk))
        .map_err(|e| format!("transport: {e}"))?
        .with_behaviour(|key| {
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_secs(1))
                // Small clusters with low degree: keep the gossip mesh within
                // the few connections a node has, and check the relations the
                // builder no longer validates (D_lo <= D <= D_hi, D_out <= D/2).
                .mesh_n(4)
                .mesh_n_low(1)
                .mesh_n_high(8)
                .mesh_outbound_min(1)
                .flood_publish(true)
                .max_transmit_size(256 * 1024)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_cfg,
            )?;
            let mdns = if mdns_on {
                let c = mdns::Config {
                    ttl: Duration::from_secs(20),
                    query_interval: Duration::from_secs(5),
                    enable_ipv6: false,
                };
                Some(mdns::tokio::Behaviour::new(c, key.public().to_peer_id())?)
            } else {
                None
            };
            let rpc_cfg = request_response::Config::default()
                // Deadlines are enforced per request by the aggregation logic;
                // this only reaps requests whose peer vanished silently.
                .with_request_timeout(Duration::from_secs(24 * 3600))
                .with_max_concurrent_streams(1024);
            let codec = request_response::cbor::codec::Codec::default()
                .set_request_size_maximum(16 << 20)
                .set_response_size_maximum(64 << 20);
            let rpc = request_response::Behaviour::with_codec(
                codec,
                [(
                    StreamProtocol::new("/mm/route/1"),
                    request_response::ProtocolSupport::Full,
                )],
                rpc_cfg,
            );
            let bulk_codec = request_response::cbor::codec::Codec::default()
                .set_request_size_maximum(1 << 20)
                .set_response_size_maximum(8 << 20);
            let bulk = request_response::Behaviour::with_codec(
                bulk_codec,
                [(
                    StreamProtocol::new("/mm/direct/1"),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    // Callers bound the work in flight per peer; this only
                    // has to outlast a queue of chunks on a slow link.
                    .with_request_timeout(Duration::from_secs(120))
                    .with_max_concurrent_streams(1024),
            );
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(limits(cap)),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(Duration::from_secs(5))
                        .with_timeout(Duration::from_secs(10)),
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new(protocol_version.clone(), key.public())
                        .with_agent_version(agent.clone()),
                ),
                mdns: mdns.into(),
                gossipsub,
                rpc,
                bulk,
            })
        })
        .map_err(|e| format!("behaviour: {e}"))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

fn limits(inbound_cap: u32) -> connection_limits::ConnectionLimits {
    connection_limits::ConnectionLimits::default()
        .with_max_established_incoming(Some(inbound_cap))
        .with_max_established_per_peer(Some(2))
}

fn protocol_version(context: &str) -> String {
    format!("/mm/{context}/1")
}

fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// An error with its chain of causes: libp2p's top-level texts ("Failed to
/// negotiate transport protocol(s)") say little on their own.
fn fmt_err(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

impl EventLoop {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        cfg: Config,
        inbound_tx: mpsc::Sender<Inbound>,
    ) -> Self {
        let me = *swarm.local_peer_id();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let statics = cfg
            .peers
            .iter()
            .map(|a| Static {
                addr: a.clone(),
                peer: None,
                next: Instant::now(),
                attempts: 0,
            })
            .collect();
        Self {
            topic: gossipsub::IdentTopic::new(format!("mm/{}/topology", cfg.context)),
            swarm,
            me,
            topo: Topology::new(me),
            cfg,
            connected: HashSet::new(),
            dialing: HashMap::new(),
            discovered: HashMap::new(),
            backoff: HashMap::new(),
            refused: HashMap::new(),
            confirm: HashMap::new(),
            conns: HashMap::new(),
            last_addrs: HashMap::new(),
            hangups: Vec::new(),
            statics,
            // A restarted node keeps its peer id; starting from the clock
            // makes its first announcement newer than any it sent before.
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            stats: HostStats::default(),
            announce_due: true,
            component: HashSet::new(),
            stable_since: Instant::now(),
            aggs: HashMap::new(),
            next_agg: 0,
            outbound: HashMap::new(),
            direct_out: HashMap::new(),
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
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_announce = Instant::now();
        let mut last_maintain = Instant::now();
        loop {
            tokio::select! {
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.on_cmd(c),
                    None => break,
                },
                Some(d) = self.done_rx.recv() => self.on_local_done(d),
                _ = tick.tick() => {
                    let now = Instant::now();
                    self.reap_deadlines(now);
                    if self.announce_due || now.duration_since(last_announce) >= ANNOUNCE_EVERY {
                        self.publish();
                        last_announce = now;
                    }
                    if now.duration_since(last_maintain) >= Duration::from_secs(1) {
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
        let mut peers: Vec<PeerId> = self.connected.iter().copied().collect();
        peers.sort();
        Announce {
            name: self.cfg.name.clone(),
            seq: self.seq,
            degree: self.cfg.degree as u32,
            port: self.port(),
            keyed: self.cfg.psk.is_some(),
            addrs: self.listen_addrs().iter().map(|a| a.to_string()).collect(),
            peers,
            stats: self.stats.clone(),
        }
    }

    fn publish(&mut self) {
        self.announce_due = false;
        self.seq += 1;
        let a = self.own_announce();
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
        let (due, later): (Vec<_>, Vec<_>) = self.hangups.drain(..).partition(|(_, t)| *t <= now);
        self.hangups = later;
        for (p, _) in due {
            if self.is_refused(&p) {
                let _ = self.swarm.disconnect_peer_id(p);
            }
        }
        self.refused.retain(|_, until| *until > now);
        self.backoff
            .retain(|_, b| b.until + Duration::from_secs(600) > now);
        for name in self.topo.expire(now, EXPIRE_AFTER) {
            info!("node {name} left the mesh (silent for {EXPIRE_AFTER:?})");
        }
        let comp: HashSet<PeerId> = self.topo.next_hops(&self.connected).into_keys().collect();
        if comp != self.component {
            self.component = comp;
            self.stable_since = now;
        }
        self.dial_statics(now);

        let mut have: HashSet<PeerId> = self.connected.clone();
        have.extend(self.dialing.values().filter_map(|(p, _)| *p));
        let candidates: Vec<PeerId> = self
            .dialable()
            .into_iter()
            .filter(|p| self.backoff.get(p).is_none_or(|b| b.until <= now))
            .collect();
        let settled = now.duration_since(self.stable_since) >= SETTLE;
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

    /// Every peer we know how to reach: found by mDNS or announced in the mesh.
    fn dialable(&self) -> Vec<PeerId> {
        let mut v: Vec<PeerId> = self.discovered.keys().copied().collect();
        v.extend(
            self.topo
                .known()
                .filter(|(_, a)| !a.addrs.is_empty())
                .map(|(p, _)| *p),
        );
        v.extend(self.last_addrs.keys().copied());
        v.retain(|p| *p != self.me && !self.is_refused(p));
        v.sort();
        v.dedup();
        v
    }

    fn addrs_of(&self, p: &PeerId) -> Vec<Multiaddr> {
        let mut v: Vec<Multiaddr> = self.discovered.get(p).cloned().unwrap_or_default();
        if let Some(a) = self.topo.announce_of(p) {
            v.extend(a.addrs.iter().filter_map(|s| s.parse().ok()));
        }
        v.extend(self.last_addrs.get(p).into_iter().flatten().cloned());
        v.sort();
        v.dedup();
        v
    }

    fn dial_peer(&mut self, p: PeerId, reply: Option<DialReply>) {
        let addrs = self.addrs_of(&p);
        let opts = DialOpts::peer_id(p)
            .addresses(addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dialing.insert(id, (Some(p), reply));
            }
            Err(e) => {
                let msg = format!("dial {p}: {}", fmt_err(&e));
                debug!("{msg}");
                if let Some(r) = reply {
                    let _ = r.send(Err(msg));
                }
            }
        }
    }

    fn dial_addr(&mut self, a: Multiaddr, reply: Option<DialReply>) {
        let opts = DialOpts::unknown_peer_id().address(a.clone()).build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dialing.insert(id, (None, reply));
            }
            Err(e) => {
                let msg = format!("dial {a}: {}", fmt_err(&e));
                warn!("{msg}");
                if let Some(r) = reply {
                    let _ = r.send(Err(msg));
                }
            }
        }
    }

    fn dial_statics(&mut self, now: Instant) {
        let mut due = Vec::new();
        for s in &mut self.statics {
            let up = s.peer.is_some_and(|p| self.connected.contains(&p));
            if up {
                s.attempts = 0;
                continue;
            }
            if s.next <= now {
                s.attempts += 1;
                s.next = now + Duration::from_secs((1u64 << s.attempts.min(5)).min(30));
                due.push(s.addr.clone());
            }
        }
        for a in due {
            self.dial_addr(a, None);
        }
    }

    fn note_dial_failure(&mut self, p: PeerId) {
        let b = self.backoff.entry(p).or_insert(Backoff {
            until: Instant::now(),
            failures: 0,
        });
        b.failures += 1;
        b.until = Instant::now() + Duration::from_secs((1u64 << b.failures.min(6)).min(60));
    }

    fn is_refused(&self, p: &PeerId) -> bool {
        self.refused.get(p).is_some_and(|t| *t > Instant::now())
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
            Cmd::DialName(name, r) => match self.topo.name_holder(&name) {
                Some(p) if p == self.me => {
                    let _ = r.send(Err(format!("{name} is this node")));
                }
                Some(p) if self.connected.contains(&p) => {
                    let _ = r.send(Ok(()));
                }
                Some(p) => {
                    self.backoff.remove(&p);
                    self.dial_peer(p, Some(r));
                }
                None => {
                    let _ = r.send(Err(format!("no such host: {name}")));
                }
            },
            Cmd::DialAddr(a, r) => self.dial_addr(a, Some(r)),
            Cmd::Hangup(name, r) => {
                let res = match self.topo.name_holder(&name) {
                    Some(p) if self.connected.contains(&p) => {
                        // Keep the degree logic from dialling it straight back.
                        self.backoff.insert(
                            p,
                            Backoff {
                                until: Instant::now() + Duration::from_secs(30),
                                failures: 0,
                            },
                        );
                        let _ = self.swarm.disconnect_peer_id(p);
                        Ok(())
                    }
                    Some(_) => Err(format!("{name} is not a direct peer")),
                    None => Err(format!("no such host: {name}")),
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
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!("listening on {address}");
                self.announce_due = true;
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                debug!(
                    "connected to {peer_id} at {}",
                    endpoint.get_remote_address()
                );
                let mut explicit = false;
                if let Some((_, Some(r))) = self.dialing.remove(&connection_id) {
                    explicit = true;
                    if self.connected.contains(&peer_id) {
                        // Already a checked peer: this new connection is a
                        // duplicate and is closed below.
                        let _ = r.send(Ok(()));
                    } else {
                        // Answered once the peer's identity checks out.
                        self.confirm.entry(peer_id).or_default().push(r);
                    }
                }
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    for s in self.statics.iter_mut().filter(|s| &s.addr == address) {
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
                    if !self.hangups.iter().any(|(p, _)| *p == peer_id) {
                        self.hangups
                            .push((peer_id, Instant::now() + Duration::from_secs(2)));
                    }
                    return;
                }
                if self.connected.insert(peer_id) {
                    self.announce_due = true;
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
                    self.note_dial_failure(peer_id);
                }
                if num_established > 0 {
                    return;
                }
                for r in self.confirm.remove(&peer_id).unwrap_or_default() {
                    let _ = r.send(Err(
                        "the peer closed the connection (at its inbound cap, or it refused us)"
                            .into(),
                    ));
                }
                if self.connected.remove(&peer_id) {
                    let who = self.topo.name_of(&peer_id).unwrap_or("?").to_owned();
                    info!(
                        "disconnected from {who} ({peer_id}){}",
                        cause.map(|c| format!(": {c}")).unwrap_or_default()
                    );
                    self.announce_due = true;
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                let hint = if self.cfg.psk.is_some() {
                    " (cluster key mismatch, or the peer is down?)"
                } else {
                    ""
                };
                let msg = format!("dial failed: {}{hint}", fmt_err(&error));
                if let Some((_, Some(r))) = self.dialing.remove(&connection_id) {
                    let _ = r.send(Err(msg.clone()));
                }
                debug!(
                    "{} {msg}",
                    peer_id.map(|p| p.to_string()).unwrap_or_default()
                );
                if let Some(p) = peer_id {
                    self.note_dial_failure(p);
                }
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let text = fmt_err(&error);
                if text.contains("connection limit") || text.contains("Connection limit") {
                    debug!("refused inbound from {send_back_addr}: at the inbound cap");
                } else if self.cfg.psk.is_some() {
                    warn!("peer at {send_back_addr} rejected: cluster key mismatch? ({text})");
                } else {
                    warn!("inbound connection from {send_back_addr} failed: {text}");
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
                    let v = self.discovered.entry(p).or_default();
                    if !v.contains(&addr) {
                        debug!("mdns: found {p} at {addr}");
                        v.push(addr);
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(list)) => {
                for (p, addr) in list {
                    if let Some(v) = self.discovered.get_mut(&p) {
                        v.retain(|a| *a != addr);
                        if v.is_empty() {
                            self.discovered.remove(&p);
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
                if let Some((agg, targets)) = self.outbound.remove(&request_id) {
                    let msg = format!("relay through {}: {error}", self.label(&peer));
                    // Only a request that provably never left may be sent
                    // again; otherwise a command could run twice.
                    let never_left = matches!(
                        error,
                        request_response::OutboundFailure::DialFailure
                            | request_response::OutboundFailure::UnsupportedProtocols
                    );
                    if never_left {
                        self.retry_or_fail(agg, targets, msg);
                    } else {
                        for t in targets {
                            self.settle(agg, t, Err(msg.clone()));
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
                    } => self.on_direct(peer, request, channel),
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some(r) = self.direct_out.remove(&request_id) {
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
                if let Some(r) = self.direct_out.remove(&request_id) {
                    let _ = r.send(Err(format!("{}: {error}", self.label(&peer))));
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

    /// Stops dealing with a peer for a while. The connection is closed a
    /// little later, so that the peer too receives our identity and can log
    /// why. `why` is logged once per refusal.
    fn refuse(&mut self, p: PeerId, why: String, clash: bool) {
        if !self.is_refused(&p) {
            if clash {
                error!("{why}");
            } else {
                info!("{why}");
            }
        }
        self.refused.insert(p, Instant::now() + REFUSE_FOR);
        self.discovered.remove(&p);
        self.topo.remove(&p);
        if self.connected.remove(&p) {
            self.announce_due = true;
        }
        for r in self.confirm.remove(&p).unwrap_or_default() {
            let _ = r.send(Err(why.clone()));
        }
        if !self.hangups.iter().any(|(q, _)| *q == p) {
            self.hangups
                .push((p, Instant::now() + Duration::from_secs(2)));
        }
    }

    fn check_identity(&mut self, p: PeerId, info: &identify::Info) {
        let ours = protocol_version(&self.cfg.context);
        let addr = info
            .listen_addrs
            .first()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if !info.protocol_version.starts_with("/mm/") {
            let why = format!("ignoring {p}: not an mm node ({})", info.protocol_version);
            return self.refuse(p, why, false);
        }
        if info.protocol_version != ours {
            let why = format!(
                "ignoring {p} {addr}: it is in another context ({}, we are {ours})",
                info.protocol_version
            );
            return self.refuse(p, why, false);
        }
        let name = info
            .agent_version
            .split_once(' ')
            .map(|(_, n)| n)
            .unwrap_or("");
        if let Err(e) = crate::check_name(name) {
            let why = format!("refusing peer {p} {addr}: {e}");
            return self.refuse(p, why, true);
        }
        if name == self.cfg.name {
            let why = format!(
                "refusing peer {p} {addr}: it is also named '{name}'; names must be unique \
                 in a mesh (start one of them with --name)"
            );
            return self.refuse(p, why, true);
        }
        // Checks out: take it back if it was refused before (renamed, or
        // moved to our context), and answer any `mesh dial` waiting on it.
        if self.refused.remove(&p).is_some() {
            info!("{p} ({name}) now checks out; accepting it");
            self.hangups.retain(|(q, _)| *q != p);
            if self.conns.contains_key(&p) && self.connected.insert(p) {
                self.announce_due = true;
            }
        }
        self.backoff.remove(&p);
        for r in self.confirm.remove(&p).unwrap_or_default() {
            let _ = r.send(Ok(()));
        }
    }

    fn on_announce(&mut self, src: PeerId, a: Announce) {
        if src == self.me || self.is_refused(&src) {
            return;
        }
        if let Err(e) = crate::check_name(&a.name) {
            return self.refuse(src, format!("node {src} announces a bad name: {e}"), true);
        }
        if a.name == self.cfg.name {
            let why = format!(
                "node {src} announces this node's name '{}'; names must be unique in a mesh: \
                 ignoring it",
                a.name
            );
            return self.refuse(src, why, true);
        }
        let addrs: Vec<Multiaddr> = a.addrs.iter().filter_map(|s| s.parse().ok()).collect();
        if !addrs.is_empty() {
            self.last_addrs.insert(src, addrs);
        }
        let name = a.name.clone();
        match self.topo.update(src, a, Instant::now()) {
            Update::New => info!("node {name} joined the mesh"),
            Update::NameTaken { holder } => warn!(
                "node {src} announces the name '{name}', already used by {holder}: ignoring it"
            ),
            Update::Refreshed | Update::Stale => {}
        }
    }

    // ---- routed requests ----

    fn send_from_here(
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
        let src = self.cfg.name.clone();
        let id = self.new_agg(
            ReplyTo::Local(reply),
            timeout,
            known.clone(),
            (src, MAX_TTL, body, Vec::new()),
        );
        if let Some(agg) = self.aggs.get_mut(&id) {
            for n in unknown {
                // Unknown names have no peer id; label them with a random one.
                let fake = PeerId::random();
                agg.names.insert(fake, n);
                agg.results.push(Outcome {
                    peer: fake,
                    result: Err("no such host".into()),
                });
            }
        }
        self.route(id, known.into_keys().collect(), timeout);
        self.finish_if_idle(id);
    }

    fn finish_if_idle(&mut self, agg: u64) {
        if self.aggs.get(&agg).is_some_and(|a| a.waiting.is_empty()) {
            self.finish(agg);
        }
    }

    fn new_agg(
        &mut self,
        reply: ReplyTo,
        timeout: Duration,
        names: HashMap<PeerId, String>,
        (src, ttl, body, path): (String, u8, Vec<u8>, Vec<PeerId>),
    ) -> u64 {
        self.next_agg += 1;
        let id = self.next_agg;
        self.aggs.insert(
            id,
            Agg {
                reply,
                waiting: HashSet::new(),
                results: Vec::new(),
                deadline: Instant::now()
                    .checked_add(timeout)
                    .unwrap_or_else(|| Instant::now() + MAX_TIMEOUT),
                names,
                src,
                ttl,
                body,
                path,
                retried: HashSet::new(),
            },
        );
        id
    }

    /// Handles this node's share of `targets` and forwards the rest, grouped
    /// by next hop, each group as one envelope.
    fn route(&mut self, agg: u64, targets: Vec<PeerId>, timeout: Duration) {
        let Some(a) = self.aggs.get(&agg) else {
            return;
        };
        let (src, ttl, body) = (a.src.clone(), a.ttl, a.body.clone());
        let avoid: HashSet<PeerId> = a.path.iter().copied().collect();
        let mut path = a.path.clone();
        path.push(self.me);
        let hops = self.topo.next_hops_avoiding(&self.connected, &avoid);
        let mut groups: HashMap<PeerId, Vec<PeerId>> = HashMap::new();
        let mut local = false;
        let mut failed = Vec::new();
        for t in targets {
            if let Some(a) = self.aggs.get_mut(&agg) {
                a.waiting.insert(t);
            }
            if t == self.me {
                local = true;
            } else if ttl == 0 {
                failed.push((t, "too many hops".to_string()));
            } else if let Some(h) = hops.get(&t) {
                groups.entry(*h).or_default().push(t);
            } else {
                failed.push((t, "no route to host".to_string()));
            }
        }
        for (t, e) in failed {
            self.settle(agg, t, Err(e));
        }
        // Leave each hop a margin so partial answers make it back before the
        // caller gives up.
        let margin = (timeout / 10).max(Duration::from_millis(50));
        let downstream = timeout.saturating_sub(margin);
        for (hop, dst) in groups {
            let env = Envelope {
                src: src.clone(),
                dst: dst.clone(),
                timeout_ms: downstream.as_millis() as u64,
                ttl: ttl - 1,
                path: path.clone(),
                body: body.clone(),
            };
            let rid = self.swarm.behaviour_mut().rpc.send_request(&hop, env);
            self.outbound.insert(rid, (agg, dst));
        }
        if local {
            let (tx, rx) = oneshot::channel();
            let inbound = Inbound {
                from: src,
                body,
                reply: tx,
            };
            let done = self.done_tx.clone();
            let me = self.me;
            match self.inbound_tx.try_send(inbound) {
                Ok(()) => {
                    tokio::spawn(async move {
                        let result = rx
                            .await
                            .unwrap_or_else(|_| Err("node dropped the request".into()));
                        let _ = done.send(LocalDone::Routed {
                            agg,
                            peer: me,
                            result,
                        });
                    });
                }
                Err(_) => self.settle(agg, me, Err("node is overloaded".into())),
            }
        }
    }

    fn on_envelope(
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
        let timeout = Duration::from_millis(env.timeout_ms).min(MAX_TIMEOUT);
        let ttl = env.ttl.min(MAX_TTL);
        let id = self.new_agg(
            ReplyTo::Remote(channel),
            timeout,
            HashMap::new(),
            (env.src, ttl, env.body, env.path),
        );
        self.route(id, env.dst, timeout);
        self.finish_if_idle(id);
    }

    fn on_reply(&mut self, rid: request_response::OutboundRequestId, reply: Reply) {
        let Some((agg, targets)) = self.outbound.remove(&rid) else {
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
            self.settle(agg, t, Err("no answer".into()));
        }
    }

    /// A relay failed (typically its connection closed while the mesh
    /// re-forms): route those targets once more over the current topology,
    /// if time remains; otherwise they fail with `msg`.
    fn retry_or_fail(&mut self, agg: u64, targets: Vec<PeerId>, msg: String) {
        let Some(a) = self.aggs.get_mut(&agg) else {
            return;
        };
        let left = a.deadline.saturating_duration_since(Instant::now());
        let (again, fail): (Vec<PeerId>, Vec<PeerId>) = targets
            .into_iter()
            .partition(|t| !a.retried.contains(t) && left > Duration::from_millis(100));
        a.retried.extend(again.iter().copied());
        for t in fail {
            self.settle(agg, t, Err(msg.clone()));
        }
        if !again.is_empty() {
            debug!("{msg}; routing {} target(s) again", again.len());
            self.route(agg, again, left);
        }
    }

    fn on_local_done(&mut self, d: LocalDone) {
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

    fn direct_to(&mut self, name: String, body: Vec<u8>, reply: DirectAnswer) {
        let Some(p) = self.topo.name_holder(&name).filter(|p| *p != self.me) else {
            let _ = reply.send(Err(format!("no such host: {name}")));
            return;
        };
        // request_response dials by itself when not connected; give the
        // swarm the addresses the node announced.
        if !self.connected.contains(&p) {
            for a in self.addrs_of(&p) {
                self.swarm.add_peer_address(p, a);
            }
        }
        let src = self.cfg.name.clone();
        let rid = self
            .swarm
            .behaviour_mut()
            .bulk
            .send_request(&p, Direct { src, body });
        self.direct_out.insert(rid, reply);
    }

    fn on_direct(
        &mut self,
        from: PeerId,
        req: Direct,
        channel: request_response::ResponseChannel<DirectReply>,
    ) {
        if self.is_refused(&from) {
            return;
        }
        let (tx, rx) = oneshot::channel();
        let inbound = Inbound {
            from: req.src,
            body: req.body,
            reply: tx,
        };
        if self.inbound_tx.try_send(inbound).is_err() {
            let reply = DirectReply {
                result: Err("node is overloaded".into()),
            };
            let _ = self
                .swarm
                .behaviour_mut()
                .bulk
                .send_response(channel, reply);
            return;
        }
        let done = self.done_tx.clone();
        tokio::spawn(async move {
            let result = rx
                .await
                .unwrap_or_else(|_| Err("node dropped the request".into()));
            let _ = done.send(LocalDone::Direct { channel, result });
        });
    }

    fn settle(&mut self, agg: u64, peer: PeerId, result: Result<Vec<u8>, String>) {
        let Some(a) = self.aggs.get_mut(&agg) else {
            return;
        };
        if !a.waiting.remove(&peer) {
            return;
        }
        a.results.push(Outcome {
            peer,
            result: result.map(ByteBuf),
        });
        if a.waiting.is_empty() {
            self.finish(agg);
        }
    }

    fn reap_deadlines(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .aggs
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(a) = self.aggs.get_mut(&id) {
                for p in std::mem::take(&mut a.waiting) {
                    a.results.push(Outcome {
                        peer: p,
                        result: Err("timed out".into()),
                    });
                }
            }
            self.finish(id);
        }
    }

    fn finish(&mut self, agg: u64) {
        let Some(a) = self.aggs.remove(&agg) else {
            return;
        };
        self.outbound.retain(|_, (id, _)| *id != agg);
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

pub(crate) fn listen_addr(ip: IpAddr, port: u16) -> Multiaddr {
    let mut a = Multiaddr::empty();
    a.push(match ip {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    });
    a.push(Protocol::Tcp(port));
    a
}
