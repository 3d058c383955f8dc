//! meshage: the mm overlay. Nodes find each other with mDNS, keep about
//! `degree` direct peers, spread their peer lists and load to the whole mesh
//! over gossipsub, and route requests hop by hop to any node by name.
//!
//! The swarm lives in one task ([`net`]); [`Overlay`] is the cloneable handle
//! the rest of the node uses, and [`Inbound`] carries requests addressed to
//! this node out to it.

mod degree;
mod error;
mod net;
mod topology;
mod transport;
mod tuning;
pub mod wire;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

pub use error::{Error, Result};
pub use libp2p::identity::Keypair;
pub use libp2p::pnet::PreSharedKey;
pub use libp2p::{multiaddr, Multiaddr};
use tokio::sync::{mpsc, oneshot};
pub use transport::{new_psk, parse_psk, psk_bytes};
pub use tuning::Tuning;
pub use wire::{DataInfo, HostStats};

pub struct Config {
    pub name: String,
    pub context: String,
    pub listen_ip: IpAddr,
    /// 0 picks a free port.
    pub port: u16,
    pub degree: usize,
    pub keypair: Keypair,
    pub psk: Option<PreSharedKey>,
    /// Static peers, dialled (with back-off) until first reached.
    pub peers: Vec<Multiaddr>,
    pub mdns: bool,
    /// Dial nothing but loopback addresses (a node without a cluster key
    /// keeps to its host).
    pub loopback_only: bool,
    /// The site this node says it is at (`mm serve --site`), announced
    /// to the mesh: pullers keep each chunk's trips between sites few.
    pub site: Option<String>,
    pub tuning: Tuning,
}

/// A request for this node to answer: routed to it by `send`, or sent
/// straight to it by `direct`.
pub struct Inbound {
    /// Name of the originating node.
    pub from: String,
    pub body: Vec<u8>,
    pub reply: oneshot::Sender<Result<Vec<u8>>>,
}

/// One node of the reachable mesh, as its latest announcement describes it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub peer_id: String,
    /// Confirmed neighbours, by name, sorted.
    pub peers: Vec<String>,
    pub degree: u32,
    pub port: u16,
    pub keyed: bool,
    pub addrs: Vec<String>,
    pub stats: HostStats,
    pub data: Option<DataInfo>,
    /// The site it says it is at, if any (a valid node name).
    pub site: Option<String>,
}

/// This node's view of the mesh at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub peer_id: String,
    pub context: String,
    pub degree: usize,
    pub port: u16,
    pub keyed: bool,
    pub listen: Vec<String>,
    /// Live direct connections, by name (peer id while not yet announced).
    pub direct: Vec<String>,
    /// Every reachable node, this one included, by name.
    pub nodes: BTreeMap<String, NodeView>,
    /// Names claimed by two nodes, as this node or others saw them.
    pub clashes: Vec<ClashView>,
    /// The reachable set has not changed for the overlay's settle time
    /// (3 s): long enough for every node's announcement to have arrived.
    /// A young view can lack nodes far away that other nodes already see.
    pub settled: bool,
    /// The site this node says it is at (`mm serve --site`).
    pub site: Option<String>,
}

/// A name that two nodes claim, as one node saw it.
#[derive(Debug, Clone)]
pub struct ClashView {
    pub name: String,
    /// The node that saw it (this one, or one whose announcement says so).
    pub seen_by: String,
    /// The claimant it refused; where, when this node saw it (else empty).
    pub peer_id: String,
    pub addr: String,
    pub secs_ago: u64,
    /// The name is this node's own.
    pub ours: bool,
    /// This node saw the other claimant of its own name, up longer than it.
    pub other_is_older: bool,
}

impl Snapshot {
    /// Whether this node is the newcomer to a mesh that has its name
    /// already: another node refused it over the name, or it met the other
    /// claimant, which has been up longer. (Two nodes that meet as peers
    /// refuse each other; neither is told to go, and both show the clash.)
    pub fn name_taken(&self) -> Option<&ClashView> {
        self.clashes.iter().find(|c| {
            c.ours && (c.other_is_older || (c.seen_by != self.name && c.peer_id == self.peer_id))
        })
    }
}

/// One outcome per target of [`Overlay::send`], labelled by host name.
pub type Answers = Vec<(String, Result<Vec<u8>>)>;

impl Snapshot {
    /// Every reachable node but this one: what `all` means.
    pub fn others(&self) -> Vec<String> {
        self.nodes
            .keys()
            .filter(|n| **n != self.name)
            .cloned()
            .collect()
    }
}

#[derive(Clone)]
pub struct Overlay {
    tx: mpsc::Sender<net::Cmd>,
}

/// Most direct peers a node may be asked to keep.
pub const MAX_DEGREE: usize = 1024;

/// Node names: what `mesh send` host lists and `mesh dot` can carry.
pub fn check_name(name: &str) -> Result<()> {
    check_word("node name", name)?;
    if name == "all" {
        return Err(Error::Config(format!(
            "invalid node name '{name}': it means every node in `mesh send`"
        )));
    }
    Ok(())
}

/// Site names (`mm serve --site`): a node name's rules, and `-`, which
/// `mesh status` shows for no site, is none.
pub fn check_site(site: &str) -> Result<()> {
    check_word("site", site)?;
    if site == "-" {
        return Err(Error::Config(
            "invalid site '-': it is how mesh status shows no site; leave --site out".into(),
        ));
    }
    Ok(())
}

fn check_word(kind: &str, name: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::Config(format!("invalid {kind} '{name}': {why}")));
    if name.is_empty() || name.len() > 64 {
        return bad("1 to 64 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return bad("letters, digits, '-', '_' and '.' only");
    }
    Ok(())
}

/// Starts the overlay: binds the listener and spawns the event loop.
pub async fn start(cfg: Config) -> Result<(Overlay, mpsc::Receiver<Inbound>)> {
    let mut swarm = net::build_swarm(&cfg)?;
    let addr = net::listen_addr(cfg.listen_ip, cfg.port);
    port_is_free(cfg.listen_ip, cfg.port).map_err(|reason| Error::Listen {
        addr: addr.to_string(),
        reason,
    })?;
    swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
        addr: addr.to_string(),
        reason: with_causes(&e),
    })?;
    // Bind errors surface as events; wait for the first listen address (or
    // failure) so a busy port is a startup error, not a silent node.
    let (inbound_tx, inbound_rx) = mpsc::channel(256);
    let (tx, rx) = mpsc::channel(256);
    let ev = net::EventLoop::new(swarm, cfg, inbound_tx);
    tokio::spawn(ev.run(rx));
    let overlay = Overlay { tx };
    for _ in 0..100 {
        let s = overlay.snapshot().await?;
        if !s.listen.is_empty() {
            return Ok((overlay, inbound_rx));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(Error::Listen {
        addr: addr.to_string(),
        reason: "is the port in use?".into(),
    })
}

/// libp2p listens with `SO_REUSEPORT`, so a second node on the same port
/// would bind next to the first, and the kernel would split the inbound
/// connections between them. A plain bind first (without it) fails with
/// `EADDRINUSE` while any socket listens on the port, `SO_REUSEPORT` or not.
fn port_is_free(ip: std::net::IpAddr, port: u16) -> std::result::Result<(), String> {
    if port == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind((ip, port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "port {port} is in use (another mm node? each node on a host needs its own \
             --port and --base)"
        )),
        Err(e) => Err(format!("port {port}: {e}")),
    }
}

/// An error and its causes: libp2p's transport errors often say nothing
/// themselves ("") and keep the io error as their source.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cause = e.source();
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    parts.retain(|p| !p.is_empty());
    parts.join(": ")
}

impl Overlay {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> net::Cmd) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).await.map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    pub async fn snapshot(&self) -> Result<Snapshot> {
        self.ask(net::Cmd::Snapshot).await
    }

    pub async fn set_degree(&self, degree: usize) -> Result<()> {
        self.tx
            .send(net::Cmd::SetDegree(degree.min(MAX_DEGREE)))
            .await
            .map_err(|_| Error::Stopped)
    }

    pub async fn set_stats(&self, stats: HostStats) -> Result<()> {
        self.tx
            .send(net::Cmd::SetStats(stats))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Puts this node's data channel in its announcements (from the next
    /// one, sent at once), or takes it out.
    pub async fn set_data(&self, data: Option<DataInfo>) -> Result<()> {
        self.tx
            .send(net::Cmd::SetData(data))
            .await
            .map_err(|_| Error::Stopped)
    }

    /// Dials a mesh node by name, a multiaddr, `HOST:PORT`, or a host name
    /// (on this node's port), and waits until connected or failed.
    pub async fn dial(&self, target: &str, default_port: u16) -> Result<()> {
        // libp2p bounds each step, but a caller must never wait forever.
        tokio::time::timeout(
            Duration::from_secs(60),
            self.dial_inner(target, default_port),
        )
        .await
        .map_err(|_| Error::Dial(format!("dial {target}: no answer within 60s")))?
    }

    async fn dial_inner(&self, target: &str, default_port: u16) -> Result<()> {
        if target.starts_with('/') {
            let a: Multiaddr = target
                .parse()
                .map_err(|e| Error::Config(format!("bad multiaddr {target}: {e}")))?;
            return self.ask(|r| net::Cmd::DialAddr(a, r)).await?;
        }
        match self
            .ask(|r| net::Cmd::DialName(target.to_owned(), r))
            .await?
        {
            // Not a node's name: a host name or address, then.
            Err(Error::NoSuchHost(_)) => {}
            other => return other,
        }
        let a = resolve(target, default_port).await?;
        let no_port = target.parse::<IpAddr>().is_ok() || !target.contains(':');
        match self.ask(|r| net::Cmd::DialAddr(a, r)).await? {
            // The port was this node's own guess: say so, since the other
            // node may listen elsewhere.
            Err(Error::Dial(why)) if no_port => Err(Error::Dial(format!(
                "{why} (no port given, so this node's port {default_port} was tried: \
                 use {target}:PORT)"
            ))),
            other => other,
        }
    }

    pub async fn hangup(&self, name: &str) -> Result<()> {
        self.ask(|r| net::Cmd::Hangup(name.to_owned(), r)).await?
    }

    /// Sends `body` straight to one node, connecting to it if need be (never
    /// relayed: for bulk transfers), and returns its answer.
    pub async fn direct(&self, name: &str, body: Vec<u8>) -> Result<Vec<u8>> {
        // A request that opens the connection can reach the other node
        // before its identify exchange is done there, and is refused: the
        // node will know us a round trip later. Without this, the first
        // data channel grants of a swarm failed, and pullers took chunks
        // from the holder over the mesh connection for 5 s.
        let mut wait = Duration::from_millis(20);
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        // When two nodes dial each other at once (a swarm's start: every
        // puller asks every other for a grant), each side keeps one of the
        // two connections, and a request on the one closed fails, or the
        // dial made for it does. Twice more, then, after a moment (the
        // race can take a round to settle), on the one kept or a new one.
        // Direct requests only read (a chunk, a have-bitfield) or hand out
        // a grant, which expires unused: asking again is harmless.
        let mut again = 2;
        loop {
            let r = self
                .ask(|reply| net::Cmd::Direct {
                    name: name.to_owned(),
                    body: body.clone(),
                    reply,
                })
                .await?;
            match r {
                Err(Error::NotAdmitted) if std::time::Instant::now() + wait < deadline => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                Err(Error::Unanswered { .. }) if again > 0 => {
                    again -= 1;
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                r => return r,
            }
        }
    }

    /// Sends `body` to every named node and collects one outcome per name.
    /// Names not in the mesh answer "no such host"; silent ones "timed out".
    pub async fn send(
        &self,
        names: Vec<String>,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Answers> {
        self.ask(|reply| net::Cmd::Send {
            names,
            body,
            timeout,
            reply,
        })
        .await
    }
}

/// Turns `HOST:PORT`, `HOST` or `IP` into a TCP multiaddr.
pub async fn resolve(target: &str, default_port: u16) -> Result<Multiaddr> {
    let with_port = match target.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{default_port}"),
        Ok(ip) => format!("{ip}:{default_port}"),
        Err(_) if !target.contains(':') => format!("{target}:{default_port}"),
        Err(_) => target.to_owned(),
    };
    let mut addrs = tokio::net::lookup_host(with_port.as_str())
        .await
        .map_err(|e| Error::Dial(format!("cannot resolve {target}: {e}")))?;
    let sa = addrs
        .find(|a| a.is_ipv4())
        .ok_or_else(|| Error::Dial(format!("cannot resolve {target}: no IPv4 address")))?;
    Ok(net::listen_addr(sa.ip(), sa.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sites_follow_the_same_rules_but_for_all_and_dash() {
        for ok in ["n1", "kn-01", "a.b_c"] {
            assert!(check_name(ok).is_ok() && check_site(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "x[1]", "a,b", &"x".repeat(65)] {
            assert!(
                check_name(bad).is_err() && check_site(bad).is_err(),
                "{bad}"
            );
        }
        // `all` is every node in `mesh send`, not a site; `-` is no site.
        assert!(check_name("all").is_err() && check_site("all").is_ok());
        assert!(check_name("-").is_ok() && check_site("-").is_err());
        let e = check_site("a b").unwrap_err().to_string();
        assert!(e.contains("invalid site 'a b'"), "{e}");
    }

    async fn node(name: &str, degree: usize, peers: Vec<Multiaddr>) -> Overlay {
        let tuning = Tuning {
            // Transient connections go soon, so each round dials anew
            // (not so soon that one closes under the other side's
            // request: idleness counts this side's requests only).
            transient_idle: Duration::from_millis(500),
            ..Tuning::default()
        };
        let (overlay, mut inbound) = start(Config {
            name: name.into(),
            context: "mm".into(),
            listen_ip: "127.0.0.1".parse().unwrap(),
            port: 0,
            degree,
            keypair: Keypair::generate_ed25519(),
            psk: None,
            peers,
            mdns: false,
            loopback_only: true,
            site: None,
            tuning,
        })
        .await
        .unwrap();
        // Echoes every request.
        tokio::spawn(async move {
            while let Some(r) = inbound.recv().await {
                let _ = r.reply.send(Ok(r.body));
            }
        });
        overlay
    }

    async fn wait_for(what: &str, mut ok: impl AsyncFnMut() -> bool) {
        for _ in 0..300 {
            if ok().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("not in 6 s: {what}");
    }

    /// Two nodes that are not peers ask each other something at the same
    /// moment, as every puller of a swarm asks every other for a grant:
    /// both dial, each side keeps one of the two connections, and a
    /// request on the one closed used to fail ("Connection was closed
    /// before a response was received"; or "Failed to dial the requested
    /// peer", for the dial made for it), costing a swarm a source at its
    /// start.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nodes_that_dial_each_other_at_once_both_get_their_answers() {
        let hub = node("hub", 2, vec![]).await;
        let at = hub.snapshot().await.unwrap().listen[0]
            .parse::<Multiaddr>()
            .unwrap();
        let a = node("a", 1, vec![at.clone()]).await;
        let b = node("b", 1, vec![at]).await;
        for x in [&a, &b] {
            wait_for("a and b know each other", async || {
                x.snapshot().await.unwrap().nodes.len() == 3
            })
            .await;
        }
        for round in 0..8u8 {
            for x in [&a, &b] {
                wait_for("no connection between a and b", async || {
                    let direct = x.snapshot().await.unwrap().direct;
                    !direct.iter().any(|n| n == "a" || n == "b")
                })
                .await;
            }
            let (to_b, to_a) = tokio::join!(a.direct("b", vec![round]), b.direct("a", vec![round]));
            assert_eq!(to_b.unwrap(), [round], "a's request, round {round}");
            assert_eq!(to_a.unwrap(), [round], "b's request, round {round}");
        }
    }
}
