//! `mm serve`: start the subsystems in order, run until SIGINT or SIGTERM,
//! then stop them in reverse.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use mm_store::Meta;
use tracing::{info, warn};

use crate::base::{check_base, load_key, lock_base, parse_peer};
use crate::files::Files;
use crate::{control, inbound, stats, Error, Node, Options, Result, DEFAULT_DEGREE};

/// Runs a node until SIGINT or SIGTERM.
pub async fn serve(opts: Options) -> Result<()> {
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
            Some(
                mm_overlay::parse_psk(&text)
                    .map_err(|e| Error::Startup(format!("{}: {e}", f.display())))?,
            )
        }
        None => None,
    };
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

    // 1. The overlay: everything else reaches other nodes through it.
    let (overlay, inbound) = mm_overlay::start(mm_overlay::Config {
        name: opts.name.clone(),
        context: opts.context.clone(),
        listen_ip: opts.listen,
        port: opts.port,
        degree,
        keypair,
        psk,
        peers,
        mdns: opts.mdns,
        tuning: mm_overlay::Tuning::default(),
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
    // 2. Files: the files directory, transfers, the data channel.
    let files = Files::start(
        &opts.base.join("files"),
        meta.clone(),
        &overlay,
        opts.listen,
        opts.data_port,
    )
    .await?;
    let node = Node::new(
        opts.name.clone(),
        opts.base.clone(),
        overlay.clone(),
        meta.clone(),
        files,
    );
    // 3. What feeds and asks the node: host stats, other nodes, the CLI.
    let stats = tokio::spawn(stats::publish(overlay.clone()));
    let answering = tokio::spawn(inbound::answer_all(node.clone(), inbound));
    let control = tokio::spawn(control::serve(listener, node.clone()));

    wait_for_signal().await;
    info!("shutting down");
    // In reverse: no new commands, no new requests, then the subsystems.
    control.abort();
    let _ = std::fs::remove_file(control::socket_path(&opts.base));
    answering.abort();
    stats.abort();
    node.files.stop();
    if let Err(e) = meta.flush() {
        warn!("flushing metadata: {e}");
    }
    // Give aborted tasks a moment to drop what they hold.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
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
