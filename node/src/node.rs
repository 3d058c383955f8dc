//! The node: its settings, and the subsystems commands act on.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mm_overlay::Overlay;
use mm_store::Meta;

use crate::files::Files;
use crate::Result;

/// What `mm serve` was asked for.
pub struct Options {
    pub base: PathBuf,
    pub name: String,
    pub port: u16,
    /// `None`: all addresses when keyed or insecure, else loopback.
    pub listen: Option<IpAddr>,
    /// No cluster key, and still on the network.
    pub insecure: bool,
    /// Other nodes may run `shell` and `background` here.
    pub allow_shell: bool,
    /// CA certificates (PEM) trusted for `https://` words beside the
    /// webpki roots.
    pub ca_file: Option<PathBuf>,
    /// `None`: the persisted setting, else 3.
    pub degree: Option<usize>,
    pub context: String,
    pub psk_file: Option<PathBuf>,
    pub peers: Vec<String>,
    pub mdns: bool,
    pub data_port: DataPort,
    /// `--ovs-db`: the Open vSwitch database socket (`unix:PATH`); None:
    /// the system's.
    pub ovs_db: Option<String>,
    /// `--ovs-datapath system|netdev`; None: found out at first use.
    pub ovs_datapath: Option<String>,
    /// `--accel`: QEMU's `-machine accel=` for the VMs here (`kvm:tcg`,
    /// `kvm`, `tcg`).
    pub accel: String,
    /// `--site`: where this node says it is (a node name's rules).
    pub site: Option<String>,
}

/// Where the data channel listens.
#[derive(Debug, Clone, Copy)]
pub enum DataPort {
    /// Off: chunks travel over the overlay connection.
    Off,
    /// This port (0 picks a free one); busy is an error.
    Fixed(u16),
    /// This port if it is free, else any (the default, --port + 1).
    Preferred(u16),
}

pub(crate) const DEFAULT_DEGREE: usize = 3;
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// See [`Node::settle`].
const STARTUP_GRACE: Duration = Duration::from_secs(5);
/// How long a node waits, at most, for a young view of the mesh to
/// settle before it says no node holds a file (see [`Node::get_file`]).
const VIEW_SETTLE_LIMIT: Duration = Duration::from_secs(15);
/// What "no time limit" means for a `mesh send`.
pub(crate) const NO_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// How strangers are kept out, as `mesh status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A cluster key: only nodes that hold it connect.
    Keyed,
    /// No key, on the network (`--insecure`): anyone who reaches the port.
    Insecure,
    /// No key, so only this host: loopback, no mDNS.
    Loopback,
}

impl Mode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Mode::Keyed => "keyed",
            Mode::Insecure => "insecure",
            Mode::Loopback => "loopback",
        }
    }
}

/// A running node: the overlay, the metadata database, and the subsystems
/// (`files`, `ns`, `vms`; bridges join it).
pub(crate) struct Node {
    pub(crate) name: String,
    pub(crate) overlay: Overlay,
    pub(crate) meta: Meta,
    pub(crate) files: Files,
    pub(crate) ns: crate::ns::Namespaces,
    pub(crate) vms: crate::vm::Vms,
    /// Bridges, taps, tunnels.
    pub(crate) net: Arc<crate::net::Net>,
    pub(crate) mode: Mode,
    pub(crate) allow_shell: bool,
    /// `background` processes.
    pub(crate) background: crate::shell::Background,
    /// The client for `http(s)://` words.
    pub(crate) web: crate::web::Web,
    pub(crate) started: Instant,
    timeout: Mutex<Duration>,
}

/// The subsystems `serve` starts before the node exists.
pub(crate) struct Parts {
    pub(crate) files: Files,
    pub(crate) vms: crate::vm::Vms,
    pub(crate) net: Arc<crate::net::Net>,
    pub(crate) web: crate::web::Web,
}

impl Node {
    pub(crate) fn new(
        name: String,
        overlay: Overlay,
        meta: Meta,
        parts: Parts,
        mode: Mode,
        allow_shell: bool,
    ) -> Arc<Node> {
        let Parts {
            files,
            vms,
            net,
            web,
        } = parts;
        let timeout = meta
            .get::<u64>("settings", "timeout_ms")
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_TIMEOUT);
        let ns = crate::ns::Namespaces::open(meta.clone(), &name);
        Arc::new(Node {
            name,
            overlay,
            meta,
            files,
            ns,
            vms,
            net,
            mode,
            allow_shell,
            background: crate::shell::Background::default(),
            web,
            started: Instant::now(),
            timeout: Mutex::new(timeout),
        })
    }

    /// A node that has just started is alone for about a second, until
    /// its first peer connects: a command for "every node" waits that
    /// long, at most [`STARTUP_GRACE`] after the start, rather than find
    /// nobody.
    pub(crate) async fn settle(&self) -> Result<mm_overlay::Snapshot> {
        self.view_when(self.started + STARTUP_GRACE, |s| !s.others().is_empty())
            .await
    }

    /// The mesh as this node sees it once the view has settled (see
    /// [`mm_overlay::Snapshot::settled`]), or after
    /// [`VIEW_SETTLE_LIMIT`] in a mesh that keeps changing.
    pub(crate) async fn settled_view(&self) -> Result<mm_overlay::Snapshot> {
        self.view_when(Instant::now() + VIEW_SETTLE_LIMIT, |s| s.settled)
            .await
    }

    /// The mesh as this node sees it once `ready` says so, or at `until`.
    async fn view_when(
        &self,
        until: Instant,
        ready: impl Fn(&mm_overlay::Snapshot) -> bool,
    ) -> Result<mm_overlay::Snapshot> {
        loop {
            let s = self.overlay.snapshot().await?;
            if ready(&s) || Instant::now() >= until {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts fetching `name` (see [`mm_store::Engine::get`]), asking the
    /// mesh once more if no node held it while this node's view was
    /// young. Announcements take seconds to cross a line of nodes: a node
    /// a few hops from the one that told it to fetch can still know only
    /// its neighbours, and would say that nobody holds a file that a node
    /// it has not heard of yet holds. A file that nobody holds costs the
    /// wait only in a mesh that has just changed.
    pub(crate) async fn get_file(
        &self,
        name: &str,
        sel: &mm_store::Select,
    ) -> Result<Vec<mm_store::Pending>> {
        let asked = self.settle().await?;
        match self.files.engine.get(name, sel).await {
            Err(e) if e.is_no_holder() && !asked.settled => {
                tracing::debug!(
                    "{name}: {e}, with a young view of the mesh; asking again once it settles"
                );
                self.settled_view().await?;
                Ok(self.files.engine.get(name, sel).await?)
            }
            r => Ok(r?),
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The deadline `mesh send` uses: the mesh timeout, or
    /// [`NO_LIMIT`] for "unlimited" (0).
    pub(crate) fn send_timeout(&self) -> Duration {
        match self.timeout() {
            t if t.is_zero() => NO_LIMIT,
            t => t,
        }
    }

    pub(crate) fn set_timeout(&self, t: Duration) -> Result<()> {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) = t;
        self.meta
            .put("settings", "timeout_ms", &(t.as_millis() as u64))?;
        Ok(())
    }
}
