//! Who may be a peer: identity checks (context, name), refusals, and
//! announcements from the topology topic.

use std::collections::HashMap;
use std::time::Instant;

use libp2p::{identify, Multiaddr, PeerId};
use tracing::{error, info, warn};

use super::behaviour::protocol_version;
use super::EventLoop;
use crate::topology::Update;
use crate::wire::Announce;
use crate::Error;

/// Who is a peer. A connection is admitted only once the peer's identity
/// checks out (identify: our context, a valid name that is not ours nor
/// another node's); until then nothing it asks is answered.
#[derive(Default)]
pub(super) struct Admission {
    /// Peers of another context or with a clashing name, and until when
    /// they are not dialled or listened to (their identity is checked again
    /// on every new connection, so a fixed node is taken back).
    pub(super) until: HashMap<PeerId, Instant>,
    /// Refused peers still connected, and when to close the connection.
    pub(super) hangups: Vec<(PeerId, Instant)>,
    /// Connected peers whose identity has not come yet, and since when.
    pub(super) awaiting: HashMap<PeerId, Instant>,
    /// The name each admitted peer gave (and its announcements carry).
    pub(super) names: HashMap<PeerId, String>,
    /// Names that two nodes claim, as this node saw them: the one it
    /// refused, where, and when last. Shown by `mesh status` and `mesh
    /// list`, and carried in announcements, so that every node shows them.
    pub(super) clashes: HashMap<String, Clash>,
}

#[derive(Debug, Clone)]
pub(super) struct Clash {
    pub(super) peer: PeerId,
    pub(super) addr: String,
    pub(super) at: Instant,
    /// The other claimant of this node's own name has been up longer.
    pub(super) older: bool,
}

/// How long a clash is shown after it was last seen, and how many are kept.
pub(super) const CLASH_SHOWN: std::time::Duration = std::time::Duration::from_secs(600);
const CLASHES_MAX: usize = 256;

impl EventLoop {
    /// `name` is claimed by `peer` (at `addr`) as well as by another node
    /// (this one, or one in the topology).
    fn note_clash(&mut self, name: &str, peer: PeerId, addr: String, older: bool) {
        let now = Instant::now();
        if self.admit.clashes.len() >= CLASHES_MAX && !self.admit.clashes.contains_key(name) {
            self.admit
                .clashes
                .retain(|_, c| now.duration_since(c.at) < CLASH_SHOWN);
            if self.admit.clashes.len() >= CLASHES_MAX {
                return;
            }
        }
        let new = self
            .admit
            .clashes
            .insert(
                name.to_string(),
                Clash {
                    peer,
                    addr,
                    at: now,
                    older,
                },
            )
            .is_none();
        if new {
            self.announce_due = true;
        }
    }

    /// `peer` now goes by `name`: a clash it was refused for under another
    /// name is over (a clone restarted with `--name` keeps its peer id).
    fn clashes_over(&mut self, peer: PeerId, name: &str) {
        let before = self.admit.clashes.len();
        self.admit
            .clashes
            .retain(|n, c| c.peer != peer || n == name);
        if self.admit.clashes.len() != before {
            info!("{peer} is named '{name}' now: its name clash is over");
            self.announce_due = true;
        }
    }

    /// The clashes seen here lately, by name.
    pub(super) fn recent_clashes(&self) -> impl Iterator<Item = (&String, &Clash)> {
        let now = Instant::now();
        self.admit
            .clashes
            .iter()
            .filter(move |(_, c)| now.duration_since(c.at) < CLASH_SHOWN)
    }

    /// Clashes seen here, then those other nodes report.
    pub(super) fn clash_views(&self) -> Vec<crate::ClashView> {
        let now = Instant::now();
        let mut out: Vec<crate::ClashView> = self
            .recent_clashes()
            .map(|(name, c)| crate::ClashView {
                name: name.clone(),
                seen_by: self.cfg.name.clone(),
                peer_id: c.peer.to_string(),
                addr: c.addr.clone(),
                secs_ago: now.duration_since(c.at).as_secs(),
                ours: *name == self.cfg.name,
                other_is_older: c.older,
            })
            .collect();
        for (_, a) in self.topo.known() {
            for (name, peer) in &a.clashes {
                if !out.iter().any(|c| c.name == *name && c.seen_by == a.name) {
                    out.push(crate::ClashView {
                        name: name.clone(),
                        seen_by: a.name.clone(),
                        peer_id: peer.clone(),
                        addr: String::new(),
                        secs_ago: 0,
                        ours: *name == self.cfg.name,
                        other_is_older: false,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.name, &a.seen_by).cmp(&(&b.name, &b.seen_by)));
        out
    }

    pub(super) fn is_refused(&self, p: &PeerId) -> bool {
        self.admit.until.get(p).is_some_and(|t| *t > Instant::now())
    }

    /// Stops dealing with a peer for a while. The connection is closed a
    /// little later, so that the peer too receives our identity and can log
    /// why. `why` is logged once per refusal.
    /// Connections whose peer has not identified itself in time are
    /// closed: it may be no mm node at all, or one that never will.
    pub(super) fn close_unidentified(&mut self, now: Instant) {
        let within = self.cfg.tuning.identify_within;
        let late: Vec<PeerId> = self
            .admit
            .awaiting
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= within)
            .map(|(p, _)| *p)
            .collect();
        for p in late {
            self.admit.awaiting.remove(&p);
            info!("closing the connection to {p}: no identity within {within:?}");
            let _ = self.swarm.disconnect_peer_id(p);
        }
    }

    /// The name an admitted peer gave, for requests it sends straight here;
    /// `None` for a peer not admitted.
    pub(super) fn admitted_name(&self, p: &PeerId) -> Option<String> {
        if !self.connected.contains(p) {
            return None;
        }
        self.admit
            .names
            .get(p)
            .cloned()
            .or_else(|| self.topo.name_of(p).map(str::to_owned))
    }

    pub(super) fn refuse(&mut self, p: PeerId, why: String, clash: bool) {
        if !self.is_refused(&p) {
            if clash {
                error!("{why}");
            } else {
                info!("{why}");
            }
        }
        self.admit
            .until
            .insert(p, Instant::now() + self.cfg.tuning.refuse_for);
        self.dials.discovered.remove(&p);
        self.topo.remove(&p);
        self.connected.remove(&p);
        for r in self.dials.confirm.remove(&p).unwrap_or_default() {
            let _ = r.send(Err(Error::Dial(why.clone())));
        }
        if !self.admit.hangups.iter().any(|(q, _)| *q == p) {
            self.admit
                .hangups
                .push((p, Instant::now() + self.cfg.tuning.refuse_close_after));
        }
    }

    pub(super) fn check_identity(&mut self, p: PeerId, info: &identify::Info) {
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
                "ignoring {p} {addr}: it is in another context or of another version ({}, \
                 we are {ours})",
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
            self.note_clash(name, p, addr.clone(), false);
            return self.refuse(p, why, true);
        }
        if let Some(holder) = self.topo.name_holder(name).filter(|h| *h != p) {
            self.note_clash(name, p, addr.clone(), false);
            let why = format!(
                "refusing peer {p} {addr}: it is named '{name}', which {holder} already is; \
                 names must be unique in a mesh (start one of them with --name)"
            );
            return self.refuse(p, why, true);
        }
        // Checks out: take it back if it was refused before (renamed, or
        // moved to our context), admit it, and answer any `mesh dial`
        // waiting on it.
        if self.admit.until.remove(&p).is_some() {
            info!("{p} ({name}) now checks out; accepting it");
            self.admit.hangups.retain(|(q, _)| *q != p);
        }
        self.admit.awaiting.remove(&p);
        self.clashes_over(p, name);
        self.admit.names.insert(p, name.to_string());
        if self.conns.contains_key(&p) {
            self.connected.insert(p);
        }
        self.dials.forgive(&p);
        for r in self.dials.confirm.remove(&p).unwrap_or_default() {
            let _ = r.send(Ok(()));
        }
    }

    pub(super) fn on_announce(&mut self, src: PeerId, a: Announce) {
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
            let addr = a.addrs.first().cloned().unwrap_or_default();
            // Up at least two seconds longer: this node is the newcomer.
            let older = a.stats.uptime_secs > self.stats.uptime_secs + 2;
            self.note_clash(&a.name, src, addr, older);
            return self.refuse(src, why, true);
        }
        // A site that is no valid name is as good as none: it only steers
        // where chunks are asked for.
        let mut a = a;
        if a.site
            .as_deref()
            .is_some_and(|s| crate::check_site(s).is_err())
        {
            a.site = None;
        }
        let addrs: Vec<Multiaddr> = a.addrs.iter().filter_map(|s| s.parse().ok()).collect();
        if !addrs.is_empty() {
            self.dials.last_addrs.insert(src, addrs);
        }
        let name = a.name.clone();
        match self.topo.update(src, a, Instant::now()) {
            Update::New => {
                self.clashes_over(src, &name);
                info!("node {name} joined the mesh")
            }
            Update::NameTaken { holder } => {
                if !self.admit.clashes.contains_key(&name) {
                    warn!(
                        "node {src} announces the name '{name}', already used by {holder}: \
                         ignoring it"
                    );
                }
                let addr = self
                    .dials
                    .last_addrs
                    .get(&src)
                    .and_then(|v| v.first())
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                self.note_clash(&name, src, addr, false);
            }
            Update::Refreshed | Update::Stale => {}
        }
    }
}
