//! The swarm's behaviour and its configuration: what a connection speaks,
//! and the limits that hold on it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    connection_limits, gossipsub, identify, mdns, ping, request_response, Multiaddr,
    StreamProtocol, Swarm,
};

use super::codec::Bounded;
use super::per_ip::PerIp;
use crate::wire::{Direct, DirectReply, Envelope, Reply};
use crate::{degree, Config, Error, Result};

/// A routed request is a command line or a file pattern, and the list of
/// targets it is for (about 40 bytes each): 256 KiB holds thousands.
const ROUTED_REQUEST_MAX: u64 = 256 << 10;
/// Answers carry manifests (32 bytes per 256 KiB chunk of every file a
/// `file get` matched): see docs/design.md.
const ROUTED_ANSWER_MAX: u64 = 64 << 20;
/// A direct request is a chunk, have-bits or grant request: a name and a
/// hash.
const DIRECT_REQUEST_MAX: u64 = 64 << 10;
/// A direct answer is at most a run of chunks.
const DIRECT_ANSWER_MAX: u64 = 8 << 20;
/// Streams at once per connection and protocol, each until answered (a
/// `Holds` may wait 30 s for a node that is hashing, and pullers trading
/// over the overlay keep dozens in flight each way).
const ROUTED_STREAMS: usize = 256;
const DIRECT_STREAMS: usize = 256;
/// Bytes of requests being read at once, whatever the peers: what stalled
/// or trickling streams can make a node hold.
const READ_BUDGET: usize = 32 << 20;
/// Inbound connections in their handshake at once: in all, and from one
/// address (a host may run several nodes, a lab many).
const PENDING: u32 = 128;
const PENDING_PER_IP: usize = 32;
/// A request must arrive within this once its stream is open.
const REQUEST_READ: Duration = Duration::from_secs(10);

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub(super) per_ip: PerIp,
    pub(super) limits: connection_limits::Behaviour,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(super) gossipsub: gossipsub::Behaviour,
    pub(super) rpc: request_response::Behaviour<Bounded<Envelope, Reply>>,
    pub(super) bulk: request_response::Behaviour<Bounded<Direct, DirectReply>>,
}

pub(crate) fn build_swarm(cfg: &Config) -> Result<Swarm<Behaviour>> {
    let protocol_version = protocol_version(&cfg.context);
    let agent = format!("mm/{} {}", env!("CARGO_PKG_VERSION"), cfg.name);
    let mdns_on = cfg.mdns;
    let cap = degree::inbound_cap(cfg.degree) as u32;
    let psk = cfg.psk;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(cfg.keypair.clone())
        .with_tokio()
        .with_other_transport(|key| crate::transport::build(key, psk))
        .map_err(|e| Error::Config(format!("transport: {e}")))?
        .with_behaviour(|key| {
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .heartbeat_interval(Duration::from_secs(1))
                // Small clusters with low degree: keep the gossip mesh within
                // the few connections a node has, and check the relations the
                // builder no longer validates (D_lo <= D <= D_hi, D_out <= D/2).
                .mesh_n(4)
                .mesh_n_low(1)
                .mesh_n_high(8)
                .mesh_outbound_min(1)
                .flood_publish(true)
                .max_transmit_size(256 * 1024)
                .validation_mode(gossipsub::ValidationMode::Strict)
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_cfg,
            )?;
            let mdns = if mdns_on {
                let c = mdns::Config {
                    ttl: Duration::from_secs(20),
                    query_interval: Duration::from_secs(5),
                    enable_ipv6: false,
                };
                Some(mdns::tokio::Behaviour::new(c, key.public().to_peer_id())?)
            } else {
                None
            };
            let rpc_cfg = request_response::Config::default()
                // Deadlines are enforced per request by the aggregation logic;
                // this only reaps requests whose peer vanished silently.
                .with_request_timeout(Duration::from_secs(24 * 3600))
                .with_max_concurrent_streams(ROUTED_STREAMS);
            let budget = Arc::new(tokio::sync::Semaphore::new(READ_BUDGET));
            let codec = Bounded::new(
                ROUTED_REQUEST_MAX,
                ROUTED_ANSWER_MAX,
                REQUEST_READ,
                budget.clone(),
            );
            let rpc = request_response::Behaviour::with_codec(
                codec,
                [(
                    StreamProtocol::new("/mm/route/2"),
                    request_response::ProtocolSupport::Full,
                )],
                rpc_cfg,
            );
            let bulk_codec =
                Bounded::new(DIRECT_REQUEST_MAX, DIRECT_ANSWER_MAX, REQUEST_READ, budget);
            let bulk = request_response::Behaviour::with_codec(
                bulk_codec,
                [(
                    StreamProtocol::new("/mm/direct/2"),
                    request_response::ProtocolSupport::Full,
                )],
                request_response::Config::default()
                    // Callers bound the work in flight per peer; this only
                    // has to outlast a queue of chunks on a slow link.
                    .with_request_timeout(Duration::from_secs(120))
                    .with_max_concurrent_streams(DIRECT_STREAMS),
            );
            Ok(Behaviour {
                per_ip: PerIp::new(PENDING_PER_IP),
                limits: connection_limits::Behaviour::new(limits(cap)),
                ping: ping::Behaviour::new(
                    ping::Config::new()
                        .with_interval(Duration::from_secs(5))
                        .with_timeout(Duration::from_secs(10)),
                ),
                identify: identify::Behaviour::new(
                    identify::Config::new(protocol_version.clone(), key.public())
                        .with_agent_version(agent.clone()),
                ),
                mdns: mdns.into(),
                gossipsub,
                rpc,
                bulk,
            })
        })
        .map_err(|e| Error::Config(format!("behaviour: {e}")))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

pub(super) fn limits(inbound_cap: u32) -> connection_limits::ConnectionLimits {
    connection_limits::ConnectionLimits::default()
        .with_max_pending_incoming(Some(PENDING))
        .with_max_established_incoming(Some(inbound_cap))
        .with_max_established_per_peer(Some(2))
}

/// What identify carries: the context, and the version of what nodes
/// exchange (2: typed outcomes, signed origins, typed chunk answers), so a
/// node of another version is refused with a reason instead of failing on
/// every message.
pub(super) fn protocol_version(context: &str) -> String {
    format!("/mm/{context}/2")
}

pub(super) fn is_loopback(a: &Multiaddr) -> bool {
    a.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

/// An error with its chain of causes: libp2p's top-level texts ("Failed to
/// negotiate transport protocol(s)") say little on their own.
pub(super) fn fmt_err(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// What a dial that failed on the way (not one libp2p refused to make, or
/// stopped for being to the wrong peer or this node: their errors say so)
/// most likely means, for the operator: no `mm serve` at that address and
/// port, or (the TCP connection made, the handshake failed) another
/// cluster key.
pub(super) fn dial_hint(e: &libp2p::swarm::DialError, keyed: bool) -> Option<&'static str> {
    let libp2p::swarm::DialError::Transport(tried) = e else {
        return None;
    };
    let refused = !tried.is_empty()
        && tried.iter().all(|(_, t)| match t {
            libp2p::TransportError::Other(io) => refused(io),
            libp2p::TransportError::MultiaddrNotSupported(_) => false,
        });
    Some(if refused {
        "nothing listens there: is `mm serve` running at that address, with that --port?"
    } else if keyed {
        "cluster key mismatch, or the peer is down?"
    } else {
        "is the peer up? If it has a cluster key, this node has none: give it the same key \
         (--psk-file)"
    })
}

/// Whether a connection was refused, however deep libp2p's layers hold
/// the error. Through the node's transport, the refusal sits in a generic
/// timeout layer that shows it in its text but gives no source, so no
/// downcast reaches its kind: the text it is, at every level
/// (`the_transports_own_refusal_is_seen_as_refused`).
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut at = Some(e);
    while let Some(x) = at {
        if x.to_string().to_lowercase().contains("connection refused") {
            return true;
        }
        at = x.source();
    }
    false
}

/// How long an inbound handshake must have lasted before its being cut
/// short says more than "a member dropped a dial". A member drops the loser
/// of two dials within milliseconds; a node with a cluster key that dialled
/// a node without one waits out its handshake timeout (10 s), because the
/// unkeyed end is still waiting for the rest of what it took for a
/// multistream frame's length, and then closes.
pub(super) const WAITED_OUT: Duration = Duration::from_secs(5);

/// Whether a failed inbound handshake, `held` long, is a member's dropped
/// dial: a debug line, not a warning that a key may be wrong.
pub(super) fn dropped_dial(e: &(dyn std::error::Error + 'static), held: Duration) -> bool {
    held < WAITED_OUT && cut_short(e)
}

/// Whether a failed handshake was cut short by the other end (it reset or
/// closed the connection): what a member's own aborted dial looks like to
/// the node it dialled (the two dialled each other at once and one
/// connection was dropped, or the dialler gave up). A node with another
/// cluster key mostly gets further: its bytes arrive, and do not decode
/// (but see [`WAITED_OUT`]).
pub(super) fn cut_short(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let mut at = Some(e);
    while let Some(x) = at {
        // The stream ended while the protocols were being agreed
        // (multistream says so for an end of file; garbage is a protocol
        // error).
        if matches!(
            x.downcast_ref::<libp2p::core::upgrade::NegotiationError>(),
            Some(libp2p::core::upgrade::NegotiationError::Failed)
        ) {
            return true;
        }
        // Two of libp2p's layers hold the I/O error without giving it as
        // their source: the cluster key's and Noise's.
        let io = x.downcast_ref::<std::io::Error>().or_else(|| {
            match x.downcast_ref::<libp2p::pnet::PnetError>() {
                Some(libp2p::pnet::PnetError::HandshakeError(io))
                | Some(libp2p::pnet::PnetError::IoError(io)) => Some(io),
                None => match x.downcast_ref::<libp2p::noise::Error>() {
                    Some(libp2p::noise::Error::Io(io)) => Some(io),
                    _ => None,
                },
            }
        });
        if io.is_some_and(|io| {
            matches!(
                io.kind(),
                ConnectionReset | BrokenPipe | UnexpectedEof | ConnectionAborted
            )
        }) {
            return true;
        }
        // An I/O error around another error gives that error's source as
        // its own, skipping the error itself: look inside.
        if let Some(inner) = io.and_then(|io| io.get_ref()) {
            if cut_short(inner) {
                return true;
            }
        }
        at = x.source();
    }
    false
}

pub(crate) fn listen_addr(ip: IpAddr, port: u16) -> Multiaddr {
    let mut a = Multiaddr::empty();
    a.push(match ip {
        IpAddr::V4(v4) => Protocol::Ip4(v4),
        IpAddr::V6(v6) => Protocol::Ip6(v6),
    });
    a.push(Protocol::Tcp(port));
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::swarm::DialError;
    use libp2p::TransportError;
    use std::io::{Error as IoError, ErrorKind};

    /// A layer of a handshake's error, as libp2p nests them.
    #[derive(Debug)]
    struct Layer(IoError);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Handshake failed")
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_handshake_the_other_end_cut_short_is_told_from_one_that_did_not_decode() {
        for kind in [
            ErrorKind::ConnectionReset,
            ErrorKind::BrokenPipe,
            ErrorKind::UnexpectedEof,
        ] {
            assert!(cut_short(&Layer(IoError::from(kind))), "{kind:?}");
        }
        // What a node with another cluster key gets: garbage.
        let garbage = Layer(IoError::new(
            ErrorKind::InvalidData,
            "Maximum frame length exceeded",
        ));
        assert!(!cut_short(&garbage));
        assert!(!cut_short(&IoError::from(ErrorKind::TimedOut)));
        // The cluster key's layer holds its error without giving it as a
        // source.
        let pnet =
            libp2p::pnet::PnetError::HandshakeError(IoError::from(ErrorKind::ConnectionReset));
        assert!(std::error::Error::source(&pnet).is_none());
        assert!(cut_short(&pnet));
        let noise = libp2p::noise::Error::Io(IoError::from(ErrorKind::BrokenPipe));
        assert!(cut_short(&noise));
        assert!(!cut_short(&libp2p::noise::Error::BadSignature));
        // The cluster key's layer inside an I/O error of the transport.
        let wrapped = IoError::other(libp2p::pnet::PnetError::HandshakeError(IoError::from(
            ErrorKind::ConnectionReset,
        )));
        assert!(cut_short(&Layer(wrapped)));
        // The stream ended while the protocols were being agreed.
        let ended = || libp2p::core::upgrade::NegotiationError::Failed;
        assert!(cut_short(&Layer(IoError::other(ended()))));
        assert!(cut_short(&ended()));
        let garbage = libp2p::core::upgrade::NegotiationError::ProtocolError(
            libp2p::core::upgrade::ProtocolError::InvalidMessage,
        );
        assert!(!cut_short(&Layer(IoError::other(garbage))));
    }

    #[test]
    fn a_refused_dial_is_told_from_one_whose_handshake_failed() {
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let dial =
            |e: IoError| DialError::Transport(vec![(addr.clone(), TransportError::Other(e))]);
        // As libp2p's boxed transport wraps it.
        let refused = dial(IoError::other(Layer(IoError::from(
            ErrorKind::ConnectionRefused,
        ))));
        for keyed in [true, false] {
            assert!(dial_hint(&refused, keyed)
                .unwrap()
                .contains("nothing listens there"));
        }
        let garbage = dial(IoError::other(Layer(IoError::new(
            ErrorKind::InvalidData,
            "Maximum frame length exceeded",
        ))));
        assert!(dial_hint(&garbage, true)
            .unwrap()
            .contains("cluster key mismatch"));
        assert!(dial_hint(&garbage, false)
            .unwrap()
            .contains("this node has none"));
        // Refused at one address, no handshake at another: not "nothing".
        let mixed = DialError::Transport(vec![
            (
                addr.clone(),
                TransportError::Other(IoError::from(ErrorKind::ConnectionRefused)),
            ),
            (
                addr.clone(),
                TransportError::Other(IoError::from(ErrorKind::TimedOut)),
            ),
        ]);
        assert!(dial_hint(&mixed, true)
            .unwrap()
            .contains("cluster key mismatch"));
        // libp2p's own refusals explain themselves.
        assert_eq!(dial_hint(&DialError::Aborted, true), None);
    }

    /// Through the node's own transport stack, with a key and without: a
    /// closed port is told as refused, however libp2p's layers wrap it.
    #[tokio::test]
    async fn the_transports_own_refusal_is_seen_as_refused() {
        use libp2p::core::transport::{DialOpts, PortUse};
        use libp2p::core::{Endpoint, Transport};
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let key = libp2p::identity::Keypair::generate_ed25519();
        let psk = crate::transport::parse_psk(&crate::transport::new_psk()).unwrap();
        for psk in [None, Some(psk)] {
            let mut t = crate::transport::build(&key, psk);
            let opts = DialOpts {
                role: Endpoint::Dialer,
                port_use: PortUse::New,
            };
            let Err(e) = t.dial(addr.clone(), opts).unwrap().await else {
                panic!("a connection to a closed port");
            };
            assert!(refused(&e), "{}", fmt_err(&e));
            let dial = DialError::Transport(vec![(addr.clone(), TransportError::Other(e))]);
            assert!(dial_hint(&dial, psk.is_some())
                .unwrap()
                .contains("nothing listens there"));
        }
    }

    #[test]
    fn a_handshake_cut_short_after_the_other_end_waited_it_out_is_not_a_dropped_dial() {
        let ended = || {
            Layer(IoError::other(
                libp2p::core::upgrade::NegotiationError::Failed,
            ))
        };
        assert!(dropped_dial(&ended(), Duration::from_millis(3)));
        assert!(dropped_dial(
            &ended(),
            WAITED_OUT - Duration::from_millis(1)
        ));
        // A keyed node's dial to a node without a key: 10 s, then closed.
        assert!(!dropped_dial(&ended(), Duration::from_secs(10)));
        assert!(!dropped_dial(&ended(), WAITED_OUT));
        let garbage = Layer(IoError::new(ErrorKind::InvalidData, "bad frame"));
        assert!(!dropped_dial(&garbage, Duration::from_millis(3)));
    }
}
