//! Signing and checking the origin of routed requests, and remembering the
//! ones seen, so that none runs twice.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

use crate::wire::Origin;

/// A signature is taken for this long after it was made: a request crosses
/// the mesh in seconds (a long `mesh send` runs long, but arrives at once).
pub(super) const VALID: Duration = Duration::from_secs(300);
/// Clocks of testbed hosts disagree a little.
const SKEW: Duration = Duration::from_secs(600);
/// Signatures remembered at most, against replays.
const SEEN_MAX: usize = 100_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn message(node: &PeerId, targets: &[PeerId], expires_ms: u64, body: &[u8]) -> Vec<u8> {
    let mut m = b"mm/route/1\0".to_vec();
    let n = node.to_bytes();
    m.extend_from_slice(&(n.len() as u32).to_be_bytes());
    m.extend_from_slice(&n);
    m.extend_from_slice(&(targets.len() as u32).to_be_bytes());
    for t in targets {
        let t = t.to_bytes();
        m.extend_from_slice(&(t.len() as u32).to_be_bytes());
        m.extend_from_slice(&t);
    }
    m.extend_from_slice(&expires_ms.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The public key an (ed25519) peer id carries.
fn public_key(p: &PeerId) -> Option<PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = p.as_ref();
    if mh.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok()
}

pub(super) fn sign(key: &Keypair, targets: Vec<PeerId>, body: &[u8]) -> Origin {
    let node = key.public().to_peer_id();
    let expires_ms = now_ms() + VALID.as_millis() as u64;
    let sig = key
        .sign(&message(&node, &targets, expires_ms, body))
        .unwrap_or_default();
    Origin {
        node,
        targets,
        expires_ms,
        sig,
    }
}

/// Signatures seen lately, each until it expires.
#[derive(Default)]
pub(super) struct Seen(HashMap<Vec<u8>, u64>);

impl Seen {
    /// Checks that `o` was made by its node, for `me`, lately, and for the
    /// first time; remembers it.
    pub(super) fn check(&mut self, o: &Origin, me: &PeerId, body: &[u8]) -> Result<(), String> {
        let now = now_ms();
        let skew = SKEW.as_millis() as u64;
        if o.expires_ms + skew < now || o.expires_ms > now + VALID.as_millis() as u64 + skew {
            return Err("a request signed for another time (are the clocks far apart?)".into());
        }
        if !o.targets.contains(me) {
            return Err(format!("a request {} did not address here", o.node));
        }
        let key = public_key(&o.node).ok_or("an origin with no key in its id")?;
        if !key.verify(&message(&o.node, &o.targets, o.expires_ms, body), &o.sig) {
            return Err(format!("a request not signed by {}", o.node));
        }
        if self.0.len() >= SEEN_MAX {
            self.0.retain(|_, exp| *exp + skew >= now);
        }
        if self.0.len() >= SEEN_MAX {
            return Err("too many requests to remember; try again".into());
        }
        if self.0.insert(o.sig.clone(), o.expires_ms).is_some() {
            return Err(format!("a request of {} seen before", o.node));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_origin_can_sign_and_only_once() {
        let k = Keypair::generate_ed25519();
        let me = PeerId::random();
        let other = PeerId::random();
        let o = sign(&k, vec![me], b"mesh status");
        let mut seen = Seen::default();
        assert!(seen.check(&o, &me, b"mesh status").is_ok());
        assert!(seen.check(&o, &me, b"mesh status").is_err(), "a replay");
        let o = sign(&k, vec![me], b"mesh status");
        assert!(
            seen.check(&o, &other, b"mesh status").is_err(),
            "turned to another target"
        );
        assert!(
            seen.check(&o, &me, b"file delete all").is_err(),
            "another body"
        );
        let mut forged = o.clone();
        forged.node = Keypair::generate_ed25519().public().to_peer_id();
        assert!(
            seen.check(&forged, &me, b"mesh status").is_err(),
            "another origin"
        );
        let mut late = sign(&k, vec![me], b"x");
        late.expires_ms -= 2 * (VALID + SKEW).as_millis() as u64;
        assert!(seen.check(&late, &me, b"x").is_err(), "too old");
    }
}
