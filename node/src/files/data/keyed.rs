//! Who may open a data connection without a grant: the node's data
//! channel identity, and the members it accepts keyed handshakes from.
//!
//! Why: a grant is a libp2p request, and between two nodes that are not
//! peers it dials a libp2p connection first (TCP, pnet, Noise XX, yamux,
//! the request: about 6 round trips, and a Noise handshake's signatures on
//! both sides), before the data connection's own 2. At a swarm's start
//! every puller opens one to most others, each round trip queued behind
//! chunk data in full downlinks. A keyed handshake takes the data
//! connection's 2 round trips alone.
//!
//! Each node makes a static X25519 key at start (never stored) and puts its
//! public half, with the data port, in its announcement. Announcements are
//! signed by the node's identity and travel only inside the mesh (under
//! the cluster key, if any), so the key a client proves in the handshake
//! names a member, and which one. The handshake (Noise `IKpsk2`,
//! `handshake.rs`) is keyed by the cluster key too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use mm_overlay::Overlay;

/// This node's data channel identity.
pub(crate) struct Identity {
    private: [u8; 32],
    pub(crate) public: [u8; 32],
    /// The handshake's pre-shared key and the hello's MAC key are made
    /// from this: the cluster key, or a fixed label on a mesh without one.
    secret: [u8; 32],
    /// Each hello carries the next count: a server takes only counts above
    /// the last it took from this key, so a hello seen on the wire cannot
    /// be sent again. The key is new at each start, so the count can be.
    next: AtomicU64,
}

impl Identity {
    pub(crate) fn new(cluster_key: Option<[u8; 32]>) -> Identity {
        let kp = snow::Builder::new(super::handshake::KEYED.parse().expect("a Noise pattern"))
            .generate_keypair()
            .expect("X25519 keys from the system's randomness");
        let mut id = Identity {
            private: [0; 32],
            public: [0; 32],
            secret: blake3::derive_key(
                "mm data channel keyed handshake 2026-12",
                cluster_key
                    .as_ref()
                    .map_or(&b"no cluster key"[..], |k| &k[..]),
            ),
            next: AtomicU64::new(1),
        };
        id.private.copy_from_slice(&kp.private);
        id.public.copy_from_slice(&kp.public);
        id
    }

    pub(super) fn private(&self) -> &[u8; 32] {
        &self.private
    }

    pub(super) fn psk(&self) -> &[u8; 32] {
        &self.secret
    }

    pub(super) fn count(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The MAC key of hellos to the server whose static key is `server`:
    /// only a holder of the cluster key who has read the server's
    /// announcement can make one, so anyone else's hello is refused on a
    /// hash, before the server does any Diffie-Hellman for it.
    pub(super) fn mac_key(&self, server: &[u8; 32]) -> [u8; 32] {
        *blake3::keyed_hash(&self.secret, server).as_bytes()
    }
}

/// Where the server learns whose key a handshake proved.
enum Source {
    Mesh(Overlay),
    /// Fixed keys, for tests without a mesh.
    #[cfg(test)]
    Fixed(HashMap<[u8; 32], String>),
}

/// The members whose keyed handshakes a server takes, by the keys in their
/// announcements, and the last count it took from each key.
pub(crate) struct Members {
    source: Source,
    last: Mutex<HashMap<[u8; 32], u64>>,
}

impl Members {
    pub(crate) fn mesh(overlay: Overlay) -> Members {
        Members {
            source: Source::Mesh(overlay),
            last: Mutex::default(),
        }
    }

    #[cfg(test)]
    pub(super) fn fixed(keys: HashMap<[u8; 32], String>) -> Members {
        Members {
            source: Source::Fixed(keys),
            last: Mutex::default(),
        }
    }

    /// The keys of the members this node sees now, by host.
    async fn keys(&self) -> HashMap<[u8; 32], String> {
        match &self.source {
            Source::Mesh(o) => match o.snapshot().await {
                Ok(snap) => snap
                    .nodes
                    .into_values()
                    .filter(|n| n.name != snap.name)
                    .filter_map(|n| {
                        let key: [u8; 32] = n.data?.key.try_into().ok()?;
                        Some((key, n.name))
                    })
                    .collect(),
                Err(_) => HashMap::new(),
            },
            #[cfg(test)]
            Source::Fixed(k) => k.clone(),
        }
    }

    /// The host whose key `key` is, if its hello's `count` is new: else why
    /// not.
    pub(super) async fn admit(&self, key: &[u8; 32], count: u64) -> Result<String, String> {
        let keys = self.keys().await;
        let Some(host) = keys.get(key) else {
            // A member whose announcement has not reached this node yet
            // gets a grant instead.
            return Err("a key no member here announces".into());
        };
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        // A node's key is new at each start: forget the keys of nodes that
        // are gone, so the map stays the size of the mesh.
        if last.len() > 2 * keys.len() + 64 {
            last.retain(|k, _| keys.contains_key(k));
        }
        let seen = last.entry(*key).or_insert(0);
        if count <= *seen {
            return Err(format!("a hello from {host} sent before (count {count})"));
        }
        *seen = count;
        Ok(host.clone())
    }
}
