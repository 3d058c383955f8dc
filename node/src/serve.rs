//! `mm serve`: start the subsystems in order, run until SIGINT or SIGTERM,
//! then stop them in reverse.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use mm_store::Meta;
use tracing::{info, warn};

use crate::base::{check_base, load_key, lock_base, parse_peer};
use crate::files::Files;
use crate::node::Mode;
use crate::{control, inbound, stats, Error, Node, Options, Result, DEFAULT_DEGREE};

/// Raises the soft limit on open descriptors to the hard one: a node holds
/// one per connection, data connection and open file, and the default 1,024
/// is soon reached on a busy node (or by a flood of connections).
fn raise_fd_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                warn!(
                    "cannot raise the open file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// Runs a node until SIGINT or SIGTERM.
pub async fn serve(opts: Options) -> Result<()> {
    raise_fd_limit();
    std::fs::create_dir_all(opts.base.join("files"))
        .map_err(|e| Error::io(format!("cannot create {}", opts.base.display()), e))?;
    let _ = std::fs::set_permissions(&opts.base, std::fs::Permissions::from_mode(0o700));
    check_base(&opts.base)?;
    let _lock = lock_base(&opts.base)?;
    let listener = control::bind(&opts.base).await?;
    let keypair = load_key(&opts.base)?;
    let psk = match &opts.psk_file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| Error::io(format!("cannot read cluster key {}", f.display()), e))?;
            // Whoever reads the key can join the mesh and run every command.
            if let Ok(m) = std::fs::metadata(f) {
                if m.permissions().mode() & 0o044 != 0 {
                    warn!(
                        "cluster key {} can be read by other users (mode {:o}): anyone who \
                         reads it can join the mesh and run every command; chmod 600 it",
                        f.display(),
                        m.permissions().mode() & 0o777
                    );
                }
            }
            Some(
                mm_overlay::parse_psk(&text)
                    .map_err(|e| Error::Startup(format!("{}: {e}", f.display())))?,
            )
        }
        None => None,
    };
    let (mode, listen, mdns) = secure_default(&opts, psk.is_some())?;
    let meta = Meta::open(&opts.base.join("meta.db"))?;
    let degree = opts
        .degree
        .or_else(|| meta.get::<u64>("settings", "degree").map(|d| d as usize))
        .unwrap_or(DEFAULT_DEGREE);
    let peers = opts
        .peers
        .iter()
        .map(|p| parse_peer(p, if opts.port == 0 { 9000 } else { opts.port }))
        .collect::<Result<Vec<_>>>()?;
    if mode == Mode::Loopback {
        let off_host = |a: &mm_overlay::Multiaddr| {
            !a.iter().any(|p| match p {
                mm_overlay::multiaddr::Protocol::Ip4(ip) => ip.is_loopback(),
                mm_overlay::multiaddr::Protocol::Ip6(ip) => ip.is_loopback(),
                _ => false,
            })
        };
        if let Some(a) = peers.iter().find(|a| off_host(a)) {
            return Err(Error::Startup(format!(
                "--peer {a} without a cluster key would join this node to a mesh anyone can \
                 command; give every node the same key (mm keygen, --psk-file), or use \
                 --insecure on a trusted network"
            )));
        }
    }

    // 1. The overlay: everything else reaches other nodes through it.
    let (overlay, inbound) = mm_overlay::start(mm_overlay::Config {
        name: opts.name.clone(),
        context: opts.context.clone(),
        listen_ip: listen,
        port: opts.port,
        degree,
        keypair,
        psk,
        peers,
        mdns,
        loopback_only: mode == Mode::Loopback,
        site: opts.site.clone(),
        tuning: mm_overlay::Tuning::default(),
    })
    .await?;
    let snap = overlay.snapshot().await?;
    info!(
        "node {} ({}) up: context {}, degree {degree}, port {}, {}, base {}{}",
        opts.name,
        snap.peer_id,
        opts.context,
        snap.port,
        if snap.keyed {
            "keyed"
        } else {
            "no cluster key"
        },
        opts.base.display(),
        opts.site
            .as_ref()
            .map(|s| format!(", site {s}"))
            .unwrap_or_default()
    );
    // 2. Files: the files directory, transfers, the data channel.
    let files = Files::start(
        &opts.base.join("files"),
        meta.clone(),
        &overlay,
        listen,
        opts.data_port,
        psk.as_ref().map(mm_overlay::psk_bytes),
    )
    .await?;
    // 3. Bridges and taps, then VMs: one QEMU process each, in a
    // directory under the base, its NICs taps on bridges.
    let datapath = opts
        .ovs_datapath
        .as_deref()
        .map(crate::net::Datapath::parse)
        .transpose()?;
    // Opening removes what a killed node left, by running programs: off
    // the async threads.
    let (db, m) = (opts.ovs_db.clone(), meta.clone());
    let net = std::sync::Arc::new(
        tokio::task::spawn_blocking(move || {
            crate::net::Net::open(
                std::sync::Arc::new(crate::net::os::Real::new(db)),
                m,
                datapath,
            )
        })
        .await?,
    );
    let vms = crate::vm::Vms::open(
        std::sync::Arc::new(
            crate::vm::qemu::Qemu::new(&opts.base, net.clone()).with_accel(&opts.accel),
        ),
        meta.clone(),
    );
    let node = Node::new(
        opts.name.clone(),
        overlay.clone(),
        meta.clone(),
        crate::node::Parts {
            files,
            vms,
            net,
            web: crate::web::Web::new(opts.ca_file.as_deref())?,
        },
        mode,
        opts.allow_shell,
    );
    // 4. What feeds and asks the node: host stats, other nodes, the CLI.
    let stats = tokio::spawn(stats::publish(node.clone()));
    let answering = tokio::spawn(inbound::answer_all(node.clone(), inbound));
    let control = tokio::spawn(control::serve(listener, node.clone()));

    let outcome = tokio::select! {
        _ = wait_for_signal() => Ok(()),
        e = newcomer_with_a_taken_name(&overlay) => Err(e),
    };
    info!("shutting down");
    // In reverse: no new commands, no new requests, then the subsystems.
    control.abort();
    let _ = std::fs::remove_file(control::socket_path(&opts.base));
    answering.abort();
    stats.abort();
    node.files.stop();
    // A node that stops takes its VMs with it.
    node.vms.kill_all();
    // Then their taps, and the bridges this node made.
    let n = node.clone();
    let _ = tokio::task::spawn_blocking(move || n.net.stop()).await;
    node.background.kill_all();
    if let Err(e) = meta.flush() {
        warn!("flushing metadata: {e}");
    }
    // Give aborted tasks a moment to drop what they hold.
    tokio::time::sleep(Duration::from_millis(10)).await;
    outcome
}

/// How long after its start a node leaves when it finds its name taken: a
/// newcomer learns it within a second or two; later, it is the node that
/// was there first, which stays and shows the clash.
const NAME_CHECK: Duration = Duration::from_secs(15);

/// Returns (with the error to stop with) only if, within [`NAME_CHECK`] of
/// its start, this node turns out to be a newcomer whose name another node
/// already has (cloned VM images share a hostname, the default name).
async fn newcomer_with_a_taken_name(overlay: &mm_overlay::Overlay) -> Error {
    let start = tokio::time::Instant::now();
    while start.elapsed() < NAME_CHECK {
        if let Ok(s) = overlay.snapshot().await {
            if let Some(c) = s.name_taken() {
                let other = if c.seen_by == s.name {
                    format!(
                        "{}{}",
                        c.peer_id,
                        if c.addr.is_empty() {
                            String::new()
                        } else {
                            format!(" at {}", c.addr)
                        }
                    )
                } else {
                    format!("another node (so {} says)", c.seen_by)
                };
                let e = Error::Startup(format!(
                    "the name '{}' is already taken in this mesh, by {other}: start this node \
                     with another --name",
                    s.name
                ));
                tracing::error!("{e}");
                return e;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::future::pending().await
}

/// Without a cluster key, anyone who can reach a node's port could run any
/// command on it: so a node without one stays on this host (loopback, no
/// mDNS) unless told `--insecure`, and says how to do better.
fn secure_default(opts: &Options, keyed: bool) -> Result<(Mode, IpAddr, bool)> {
    let all = IpAddr::from([0, 0, 0, 0]);
    if keyed {
        return Ok((Mode::Keyed, opts.listen.unwrap_or(all), opts.mdns));
    }
    if opts.insecure {
        let ports = match opts.port {
            0 => "its ports".to_string(),
            p => format!("port {p}"),
        };
        warn!(
            "no cluster key (--insecure): anyone who can reach {ports} can join this mesh \
             and run every command"
        );
        return Ok((Mode::Insecure, opts.listen.unwrap_or(all), opts.mdns));
    }
    const HOW: &str =
        "give every node the same cluster key (`(umask 077; mm keygen > /etc/mm.key)`, \
                       then `mm serve --psk-file /etc/mm.key`), or run an open mesh on a \
                       trusted network with --insecure";
    let loopback = IpAddr::from([127, 0, 0, 1]);
    match opts.listen {
        Some(ip) if !ip.is_loopback() => Err(Error::Startup(format!(
            "--listen {ip} without a cluster key would let anyone on the network run commands \
             here; {HOW}"
        ))),
        ip => {
            warn!("no cluster key: listening on loopback only, without mDNS; to join other hosts, {HOW}");
            Ok((Mode::Loopback, ip.unwrap_or(loopback), false))
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
