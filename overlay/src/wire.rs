//! Messages that cross the overlay between nodes. Every type that goes on the
//! wire between two mm nodes is defined here and nowhere else.

use serde::{Deserialize, Serialize};

use crate::Error;

/// A host's load, as spread to the whole mesh in its announcement. The
/// scheduler reads the commitments; `host` and `mesh send all host` show all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostStats {
    pub cpus: u32,
    /// One-minute load average.
    pub load: f64,
    pub mem_used_mib: u64,
    pub mem_total_mib: u64,
    /// Receive and transmit rates over non-loopback interfaces, bytes/s.
    pub rx_bps: u64,
    pub tx_bps: u64,
    pub uptime_secs: u64,
    pub vms: u32,
    pub cpu_commit: u32,
    pub mem_commit_mib: u64,
    pub net_commit: u32,
}

/// What each node periodically publishes to the topology topic: enough for
/// every other node to know the whole graph, route to it and show its load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announce {
    pub name: String,
    /// Increases with every announcement, so a stale copy never wins.
    pub seq: u64,
    pub degree: u32,
    pub port: u16,
    pub keyed: bool,
    /// Listen addresses, as multiaddr strings, for `mesh dial HOST`.
    pub addrs: Vec<String>,
    /// Direct peers, as peer-id bytes.
    #[serde(with = "peer_list")]
    pub peers: Vec<libp2p::PeerId>,
    pub stats: HostStats,
    /// Names this node saw claimed by two nodes lately, each with the peer
    /// id of the claimant it refused (absent from older builds'
    /// announcements).
    #[serde(default)]
    pub clashes: Vec<(String, String)>,
    /// Where and how to open a data connection to this node (absent with
    /// the channel off, and from older builds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataInfo>,
    /// The site the node says it is at (`mm serve --site`); absent when
    /// it says none, and from older builds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// A node's data channel, as its announcement gives it: the port, and the
/// static key its keyed handshake proves. The announcement is signed by the
/// node's identity and only travels inside the mesh (under the cluster key,
/// if any), so a key found here belongs to a member, and to that member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataInfo {
    pub port: u16,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
}

/// Who sent a routed request, and for whom, signed by its origin and
/// carried unchanged from hop to hop: a destination knows who asked (not
/// just what the last hop claims), and a relay cannot turn the request to
/// other targets or send it again later.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    #[serde(with = "peer_id")]
    pub node: libp2p::PeerId,
    /// Every target of the request.
    #[serde(with = "peer_list")]
    pub targets: Vec<libp2p::PeerId>,
    /// Unix time (ms) after which the signature is not taken.
    pub expires_ms: u64,
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// A routed request. `dst` lists the final targets reached through this hop;
/// each hop handles its own share and forwards the rest grouped by next hop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub origin: Origin,
    #[serde(with = "peer_list")]
    pub dst: Vec<libp2p::PeerId>,
    /// Time left for the whole request, in milliseconds, as seen by the sender.
    pub timeout_ms: u64,
    /// Hops left; a last guard against loops.
    pub ttl: u8,
    /// Nodes the request has passed through; never routed through again.
    #[serde(default, with = "peer_list")]
    pub path: Vec<libp2p::PeerId>,
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// The answer to an [`Envelope`]: one outcome per target it covered.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    pub results: Vec<Outcome>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    #[serde(with = "peer_id")]
    pub peer: libp2p::PeerId,
    pub result: Result<ByteBuf, Error>,
}

/// A request straight to one peer (file chunks and other bulk work): never
/// relayed, so bulk bytes cross exactly one connection. Who sent it is the
/// connection's authenticated peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Direct {
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectReply {
    pub result: Result<ByteBuf, Error>,
}

/// Raw bytes that encode as a CBOR byte string, not an array of integers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteBuf(#[serde(with = "serde_bytes")] pub Vec<u8>);

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Writing into a Vec cannot fail.
    cbor4ii::serde::to_vec(Vec::new(), v).expect("cbor encoding into memory")
}

pub fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> crate::Result<T> {
    cbor4ii::serde::from_slice(b).map_err(|e| Error::Malformed(e.to_string()))
}

mod peer_id {
    use libp2p::PeerId;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(p: &PeerId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&p.to_bytes())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PeerId, D::Error> {
        let b: serde_bytes::ByteBuf = Deserialize::deserialize(d)?;
        PeerId::from_bytes(&b).map_err(D::Error::custom)
    }
}

mod peer_list {
    use libp2p::PeerId;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[PeerId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|p| serde_bytes::ByteBuf::from(p.to_bytes())))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerId>, D::Error> {
        let raw: Vec<serde_bytes::ByteBuf> = Deserialize::deserialize(d)?;
        raw.iter()
            .map(|b| PeerId::from_bytes(b).map_err(D::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trip_keeps_bytes_raw() {
        let env = Envelope {
            origin: Origin {
                node: libp2p::PeerId::random(),
                targets: vec![],
                expires_ms: 0,
                sig: vec![],
            },
            dst: vec![libp2p::PeerId::random()],
            timeout_ms: 10,
            ttl: 3,
            path: vec![],
            body: vec![7u8; 4096],
        };
        let b = encode(&env);
        // A byte string costs a few bytes of framing, an integer array ~2x.
        assert!(
            b.len() < 4096 + 200,
            "body not encoded as raw bytes: {}",
            b.len()
        );
        let back: Envelope = decode(&b).unwrap();
        assert_eq!(back.dst, env.dst);
        assert_eq!(back.body, env.body);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode::<Envelope>(&[0xff, 0x00, 0x13]).is_err());
        assert!(decode::<Announce>(b"").is_err());
    }
}

/// Random and mutated bytes into every decoder of this layer: never a
/// panic, only an error or a value.
#[cfg(test)]
mod fuzz {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn mutations(valid: &[u8], rng: &mut impl Rng) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for _ in 0..200 {
            let mut m = valid.to_vec();
            match rng.gen_range(0..4) {
                0 if !m.is_empty() => {
                    let i = rng.gen_range(0..m.len());
                    m[i] = rng.gen();
                }
                1 => m.truncate(rng.gen_range(0..=m.len())),
                2 => {
                    let i = rng.gen_range(0..=m.len());
                    m.insert(i, rng.gen());
                }
                _ => {
                    let n = rng.gen_range(0..64);
                    m = (0..n).map(|_| rng.gen()).collect();
                }
            }
            out.push(m);
        }
        out
    }

    #[test]
    fn no_decoder_panics_on_junk() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let p = libp2p::PeerId::random();
        let env = encode(&Envelope {
            origin: Origin {
                node: p,
                targets: vec![p],
                expires_ms: 1,
                sig: vec![1, 2, 3],
            },
            dst: vec![p],
            timeout_ms: 5,
            ttl: 3,
            path: vec![p],
            body: b"mesh status".to_vec(),
        });
        let reply = encode(&Reply {
            results: vec![Outcome {
                peer: p,
                result: Err(Error::TimedOut),
            }],
        });
        let ann = encode(&Announce {
            name: "a".into(),
            seq: 1,
            degree: 3,
            port: 9000,
            keyed: true,
            addrs: vec!["/ip4/1.2.3.4/tcp/9000".into()],
            peers: vec![p],
            stats: HostStats::default(),
            clashes: vec![("b".into(), p.to_string())],
            data: Some(DataInfo {
                port: 9001,
                key: vec![5; 32],
            }),
            site: Some("north".into()),
        });
        let direct = encode(&DirectReply {
            result: Ok(ByteBuf(vec![9; 100])),
        });
        for valid in [&env, &reply, &ann, &direct] {
            for m in mutations(valid, &mut rng) {
                let _ = decode::<Envelope>(&m);
                let _ = decode::<Reply>(&m);
                let _ = decode::<Announce>(&m);
                let _ = decode::<Direct>(&m);
                let _ = decode::<DirectReply>(&m);
            }
        }
        // Deep nesting and huge declared lengths are errors, not stack
        // overflows or allocations.
        let nested = vec![0x81u8; 100_000];
        assert!(decode::<Reply>(&nested).is_err());
        let huge = [0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(decode::<Direct>(&huge).is_err());
    }
}
