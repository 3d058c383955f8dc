//! The mm daemon: one command grammar, its handlers, and the control socket
//! that the `mm` command talks to.

pub mod commands;
pub mod control;
mod data;
pub mod grammar;
pub mod hosts;
mod net;
pub mod proto;
pub mod stats;

use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mm_overlay::{Keypair, Multiaddr, Overlay};
use mm_store::{ChunkBuf, Engine, FilesDir, Local, Meta};
use tracing::{info, warn};

pub use proto::Response;

pub struct Options {
    pub base: PathBuf,
    pub name: String,
    pub port: u16,
    pub listen: IpAddr,
    /// `None`: the persisted setting, else 3.
    pub degree: Option<usize>,
    pub context: String,
    pub psk_file: Option<PathBuf>,
    pub peers: Vec<String>,
    pub mdns: bool,
    pub data_port: DataPort,
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

pub const DEFAULT_DEGREE: usize = 3;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a command came from: the local control socket, or another node.
pub enum Source {
    Local { cwd: Option<PathBuf> },
    Mesh { from: String },
}

pub struct Node {
    pub name: String,
    pub base: PathBuf,
    pub overlay: Overlay,
    pub meta: Meta,
    pub local: Arc<Local>,
    pub engine: Arc<Engine>,
    data: Option<Arc<data::DataServer>>,
    pub started: std::time::Instant,
    timeout: Mutex<Duration>,
}

/// What "no time limit" means for a `mesh send`.
pub const NO_LIMIT: Duration = Duration::from_secs(24 * 3600);

impl Node {
    pub fn timeout(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The deadline `mesh send` uses: the mesh timeout, or
    /// [`NO_LIMIT`] for "unlimited" (0).
    pub fn send_timeout(&self) -> Duration {
        match self.timeout() {
            t if t.is_zero() => NO_LIMIT,
            t => t,
        }
    }

    pub fn set_timeout(&self, t: Duration) -> Result<(), String> {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) = t;
        self.meta
            .put("settings", "timeout_ms", &(t.as_millis() as u64))
    }
}

/// Loads the node's identity from `<base>/node.key`, creating it on first
/// start, so a node keeps its peer id across restarts.
fn load_key(base: &Path) -> Result<Keypair, String> {
    let path = base.join("node.key");
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            format!(
                "{} is not a node key ({e}); move it away to make a new identity",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| e.to_string())?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            std::io::Write::write_all(&mut f, &bytes)
                .and_then(|_| f.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn parse_peer(s: &str, default_port: u16) -> Result<Multiaddr, String> {
    if s.starts_with('/') {
        return s
            .parse()
            .map_err(|e| format!("--peer {s}: bad multiaddr: {e}"));
    }
    use std::net::ToSocketAddrs;
    let with_port = if s.contains(':') {
        s.to_string()
    } else {
        format!("{s}:{default_port}")
    };
    let sa = with_port
        .to_socket_addrs()
        .map_err(|e| format!("--peer {s}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("--peer {s}: no IPv4 address"))?;
    Ok(format!("/ip4/{}/tcp/{}", sa.ip(), sa.port())
        .parse()
        .expect("a valid multiaddr"))
}

/// The base holds the node's key and control socket: it must be ours alone.
fn check_base(base: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(base).map_err(|e| format!("{}: {e}", base.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(format!(
            "{} belongs to another user or is writable by others; choose another --base",
            base.display()
        ));
    }
    Ok(())
}

/// Holds an exclusive lock on `<base>/lock` for the node's lifetime, so two
/// nodes never share a base (even if the socket file was removed).
fn lock_base(base: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = base.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!(
            "a node is already running with base {}",
            base.display()
        ));
    }
    Ok(f)
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn serve(opts: Options) -> Result<(), String> {
    std::fs::create_dir_all(opts.base.join("files"))
        .map_err(|e| format!("cannot create {}: {e}", opts.base.display()))?;
    let _ = std::fs::set_permissions(&opts.base, std::fs::Permissions::from_mode(0o700));
    check_base(&opts.base)?;
    let _lock = lock_base(&opts.base)?;
    let listener = control::bind(&opts.base).await?;
    let keypair = load_key(&opts.base)?;
    let psk = match &opts.psk_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| format!("cannot read cluster key {}: {e}", f.display()))?;
            Some(mm_overlay::parse_psk(&text).map_err(|e| format!("{}: {e}", f.display()))?)
        }
        None => None,
    };
    let meta = Meta::open(&opts.base.join("meta.db"))?;
    let degree = opts
        .degree
        .or_else(|| meta.get::<u64>("settings", "degree").map(|d| d as usize))
        .unwrap_or(DEFAULT_DEGREE);
    let timeout = meta
        .get::<u64>("settings", "timeout_ms")
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_TIMEOUT);
    let peers = opts
        .peers
        .iter()
        .map(|p| parse_peer(p, if opts.port == 0 { 9000 } else { opts.port }))
        .collect::<Result<Vec<_>, _>>()?;
    let (overlay, mut inbound) = mm_overlay::start(mm_overlay::Config {
        name: opts.name.clone(),
        context: opts.context.clone(),
        listen_ip: opts.listen,
        port: opts.port,
        degree,
        keypair,
        psk,
        peers,
        mdns: opts.mdns,
    })
    .await?;
    let snap = overlay.snapshot().await?;
    info!(
        "node {} ({}) up: context {}, degree {degree}, port {}, {}, base {}",
        opts.name,
        snap.peer_id,
        opts.context,
        snap.port,
        if snap.keyed {
            "keyed"
        } else {
            "no cluster key"
        },
        opts.base.display()
    );
    let files = FilesDir::open(&opts.base.join("files"))?;
    let local = Arc::new(Local::new(files, meta.clone()));
    let engine = Engine::new(
        local.clone(),
        Arc::new(net::MeshNet {
            overlay: overlay.clone(),
            data: Arc::new(data::DataClient::new(overlay.clone())),
        }),
    );
    let start = |port| data::DataServer::start(opts.listen, port, engine.clone());
    let data = match opts.data_port {
        DataPort::Fixed(port) => Some(start(port).await?),
        DataPort::Preferred(port) => match start(port).await {
            Ok(d) => Some(d),
            Err(e) => {
                warn!("{e}; using a free port instead");
                Some(start(0).await?)
            }
        },
        DataPort::Off => None,
    };
    match &data {
        Some(d) => info!("data channel on port {}", d.port()),
        None => info!("data channel off: chunks travel over the overlay connection"),
    }
    engine.resume();
    let node = Arc::new(Node {
        name: opts.name.clone(),
        base: opts.base.clone(),
        overlay: overlay.clone(),
        meta: meta.clone(),
        local,
        engine,
        data,
        started: std::time::Instant::now(),
        timeout: Mutex::new(timeout),
    });

    let stats_overlay = overlay.clone();
    tokio::spawn(async move {
        let mut sampler = stats::Sampler::new();
        loop {
            if stats_overlay.set_stats(sampler.sample()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });

    let mesh_node = node.clone();
    tokio::spawn(async move {
        while let Some(req) = inbound.recv().await {
            let node = mesh_node.clone();
            tokio::spawn(async move {
                let answer = answer(&node, req.from, &req.body).await;
                let _ = req.reply.send(answer);
            });
        }
    });

    tokio::spawn(control::serve(listener, node.clone()));

    wait_for_signal().await;
    info!("shutting down");
    let _ = std::fs::remove_file(control::socket_path(&opts.base));
    if let Err(e) = meta.flush() {
        warn!("flushing metadata: {e}");
    }
    Ok(())
}

/// Answers a request from another node.
async fn answer(node: &Arc<Node>, from: String, body: &[u8]) -> Result<Vec<u8>, String> {
    use mm_overlay::wire::{decode, encode};
    match decode::<proto::Request>(body)? {
        proto::Request::Command { argv } => {
            let src = Source::Mesh { from };
            Ok(encode(&commands::execute(node, &argv, &src).await))
        }
        proto::Request::Holds { pattern } => {
            let engine = node.engine.clone();
            let held = tokio::task::spawn_blocking(move || engine.held(&pattern))
                .await
                .map_err(|e| e.to_string())??;
            Ok(encode(&held))
        }
        proto::Request::Have { name, root } => node.engine.have_bits(&name, &root),
        proto::Request::Data => {
            let grant = node.data.as_ref().map(|d| d.grant(&from)).transpose()?;
            Ok(encode(&grant))
        }
        proto::Request::Chunk {
            name,
            root,
            index,
            count,
        } => {
            let engine = node.engine.clone();
            tokio::task::spawn_blocking(move || {
                let most = mm_store::manifest::CHUNK_SIZE as usize * mm_store::manifest::MAX_RUN;
                let mut buf = ChunkBuf::with_capacity(most);
                engine
                    .read_chunk(
                        &from,
                        &name,
                        &root,
                        index as usize,
                        count as usize,
                        &mut buf,
                    )
                    .map(|()| buf.to_vec())
                    .map_err(|m| m.to_wire())
            })
            .await
            .map_err(|e| e.to_string())?
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
