//! The base directory: who may own it, its lock, and the node's identity
//! key in it.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use mm_overlay::{Keypair, Multiaddr};

use crate::{Error, Result};

/// Loads the node's identity from `<base>/node.key`, creating it on first
/// start, so a node keeps its peer id across restarts.
pub(crate) fn load_key(base: &Path) -> Result<Keypair> {
    let path = base.join("node.key");
    let cannot = |what: &str, e| Error::io(format!("cannot {what} {}", path.display()), e);
    match std::fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes).map_err(|e| {
            Error::Startup(format!(
                "{} is not a node key ({e}); move it away to make a new identity",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key
                .to_protobuf_encoding()
                .map_err(|e| Error::Startup(format!("encoding a new node key: {e}")))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| cannot("create", e))?;
            std::io::Write::write_all(&mut f, &bytes)
                .and_then(|_| f.sync_all())
                .map_err(|e| cannot("write", e))?;
            Ok(key)
        }
        Err(e) => Err(cannot("read", e)),
    }
}

/// A `--peer`: a multiaddr, `HOST:PORT`, or `HOST` on `default_port`.
pub(crate) fn parse_peer(s: &str, default_port: u16) -> Result<Multiaddr> {
    let bad = |why: String| Error::Startup(format!("--peer {s}: {why}"));
    if s.starts_with('/') {
        return s.parse().map_err(|e| bad(format!("bad multiaddr: {e}")));
    }
    use std::net::ToSocketAddrs;
    let with_port = if s.contains(':') {
        s.to_string()
    } else {
        format!("{s}:{default_port}")
    };
    let sa = with_port
        .to_socket_addrs()
        .map_err(|e| bad(e.to_string()))?
        .find(|a| a.is_ipv4())
        .ok_or_else(|| bad("no IPv4 address".into()))?;
    Ok(format!("/ip4/{}/tcp/{}", sa.ip(), sa.port())
        .parse()
        .expect("a valid multiaddr"))
}

/// The base holds the node's key and control socket: it must be ours alone.
pub(crate) fn check_base(base: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(base).map_err(|e| Error::io(base.display().to_string(), e))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(Error::Startup(format!(
            "{} belongs to another user or is writable by others; choose another --base",
            base.display()
        )));
    }
    Ok(())
}

/// Holds an exclusive lock on `<base>/lock` for the node's lifetime, so two
/// nodes never share a base (even if the socket file was removed).
pub(crate) fn lock_base(base: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = base.join("lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::Startup(format!(
            "a node is already running with base {}",
            base.display()
        )));
    }
    Ok(f)
}
