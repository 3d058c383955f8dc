//! What can go wrong in the overlay. The type is serialisable: the outcome
//! of a routed request crosses the mesh with its kind, so the origin can
//! tell a timeout from a relay failure or from the far node's own answer
//! without reading text.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum Error {
    /// The event loop has ended: the node is shutting down.
    #[error("the overlay has stopped")]
    Stopped,
    /// A name looked up on purpose (`mesh dial NAME`, `mesh hangup NAME`, a
    /// direct request) that no node of the mesh carries.
    #[error("no such host: {0}")]
    NoSuchHost(String),
    /// A target of a routed request that is not in the mesh. The answer's
    /// row is labelled with the name, so the message does not repeat it.
    #[error("no such host")]
    NotInMesh,
    /// A target that was in the mesh and is gone: how long ago, in seconds.
    #[error("left the mesh {}", ago(*.0))]
    LeftMesh(u64),
    /// The connection to the target itself (a direct peer) failed.
    #[error("{0}")]
    Link(String),
    #[error("{0} is this node")]
    IsSelf(String),
    #[error("{0} is not a direct peer")]
    NotPeer(String),
    /// A dial that failed, with libp2p's chain of causes.
    #[error("{0}")]
    Dial(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: String, reason: String },
    #[error("timed out")]
    TimedOut,
    #[error("no route to host")]
    NoRoute,
    #[error("too many hops")]
    TooManyHops,
    /// The hop a routed request went through failed.
    #[error("relay through {via}: {reason}")]
    Relay { via: String, reason: String },
    /// A request straight to one peer failed on the way.
    #[error("{peer}: {reason}")]
    Peer { peer: String, reason: String },
    /// A request straight to one peer found no connection to carry it to
    /// its answer: the connection it was on closed first (the other node
    /// may or may not have seen it), or the one dialled for it failed.
    #[error("{peer}: {reason}")]
    Unanswered { peer: String, reason: String },
    /// A relay answered without an outcome for this target.
    #[error("no answer")]
    NoAnswer,
    #[error("node is overloaded")]
    Overloaded,
    #[error("node dropped the request")]
    Dropped,
    /// A peer that has not identified itself (yet) asked something.
    #[error("not admitted: no identity checked yet")]
    NotAdmitted,
    /// A routed request whose origin could not be verified.
    #[error("refused: {0}")]
    Unverified(String),
    /// The target answered with an error of its own.
    #[error("{0}")]
    Remote(String),
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A bad setting: a node name, a cluster key, an address, the transport.
    #[error("{0}")]
    Config(String),
}

/// `3s ago`, `4m ago`, `2h ago`.
fn ago(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s ago"),
        120..7200 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
