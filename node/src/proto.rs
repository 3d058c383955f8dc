//! The node's messages: the command answer ([`Response`]) and what crosses the
//! control socket and the overlay between mm nodes. One place, one format
//! each: JSON lines on the control socket, CBOR inside overlay envelopes.
//! (The data channel's few records are described in `files/data/`.)

use serde::{Deserialize, Serialize};

/// One host's answer to one command, as in minimega: a table, a free-form
/// response, or an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub host: String,
    #[serde(default)]
    pub header: Vec<String>,
    #[serde(default)]
    pub tabular: Vec<Vec<String>>,
    #[serde(default)]
    pub response: String,
    #[serde(default)]
    pub error: String,
    /// What the error is, where a caller acts on it rather than shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
}

/// Error kinds an answer carries for the node that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The name asked about is not here at all (`file list mesh` leaves
    /// such hosts out).
    NotHere,
}

impl Response {
    pub fn text(host: &str, text: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            response: text.into(),
            ..Self::default()
        }
    }

    pub fn table(host: &str, header: &[&str], rows: Vec<Vec<String>>) -> Self {
        Self {
            host: host.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            tabular: rows,
            ..Self::default()
        }
    }

    pub fn error(host: &str, error: impl std::fmt::Display) -> Self {
        Self {
            host: host.into(),
            error: error.to_string(),
            ..Self::default()
        }
    }

    /// An error row, with its kind where a caller may act on it.
    pub fn failure(host: &str, e: &crate::Error) -> Self {
        Self {
            kind: e.is_not_here().then_some(Kind::NotHere),
            ..Self::error(host, e)
        }
    }
}

/// A command sent to the node over its control socket.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ControlRequest {
    pub argv: Vec<String>,
    /// The client's working directory, for commands that take a local path.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Typed data for the `mm` command itself instead of running `argv`:
    /// what it draws must not depend on how a table is rendered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Query>,
}

/// What [`ControlRequest::query`] asks for; each answers a JSON line of
/// its own type instead of `Vec<Response>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Query {
    /// This node's transfers in progress: a `Vec<TransferStatus>`.
    Transfers,
}

/// One transfer in progress, as `file status` knows it, for progress bars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferStatus {
    pub name: String,
    pub chunks_done: usize,
    pub chunks: usize,
    pub bytes_done: u64,
    pub size: u64,
    /// Bytes per second, recently.
    pub rate: f64,
    /// Seconds left at that rate; none while it is not moving.
    pub eta_secs: Option<u64>,
    /// The `state` column of `file status`.
    pub state: String,
    pub queued: bool,
    pub sources: Vec<TransferSource>,
}

/// One source of a [`TransferStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSource {
    pub host: String,
    /// Chunks it gave that were verified and written.
    pub served: u64,
    /// Chunks it gave that failed verification.
    pub bad: u32,
    /// Requests that failed in a row.
    pub failing: u32,
    pub dropped: bool,
    /// Requests unanswered for 5 s or more (a hung host).
    #[serde(default)]
    pub stalled: bool,
}

impl From<&mm_store::transfer::Status> for TransferStatus {
    fn from(s: &mm_store::transfer::Status) -> Self {
        Self {
            name: s.name.clone(),
            chunks_done: s.chunks_done,
            chunks: s.chunks,
            bytes_done: s.bytes_done,
            size: s.size,
            rate: s.rate,
            eta_secs: s.eta_secs,
            state: s.phase.clone(),
            queued: s.queued,
            sources: s
                .sources
                .iter()
                .map(|r| TransferSource {
                    host: r.host.clone(),
                    served: r.served,
                    bad: r.bad,
                    failing: r.failing,
                    dropped: r.dropped,
                    stalled: r.stalled,
                })
                .collect(),
        }
    }
}

/// What one node asks of another, routed (`Command`, `Holds`, `Progress`,
/// `Vm`) or direct (`Chunk`, `Data`, `Have`). Answers: `Command` a CBOR
/// `Vec<Response>`; `Holds` a CBOR `Vec<mm_store::Held>`; `Progress` a CBOR
/// `mm_store::Progress`; `Chunk` a CBOR [`ChunkAnswer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A command of the grammar, from `mesh send` (in the receiver's
    /// active namespace) or `ns run` (in the sender's: `namespace`).
    Command {
        argv: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        namespace: Option<String>,
    },
    /// Which files matching this name, glob or directory can you serve?
    Holds { pattern: String },
    Chunk {
        name: String,
        #[serde(with = "serde_bytes")]
        root: Vec<u8>,
        index: u32,
        /// Chunks from `index` on, one after another (the answer may hold
        /// fewer, at least one).
        count: u32,
    },
    /// A ticket and key for a data connection (answer: a CBOR
    /// `Option<Grant>`, none if the node has the channel off). Sent over
    /// Noise only: it is what keeps strangers off the data channel.
    Data,
    /// A namespace head's request about VMs: a CBOR `vm::wire::Ask`,
    /// answered in the CBOR its variant names. Opaque here so the VM
    /// subsystem's types stay its own.
    Vm {
        #[serde(with = "serde_bytes")]
        ask: Vec<u8>,
    },
    /// A request about bridges, taps and VLANs: a CBOR `net::wire::Ask`,
    /// answered in the CBOR its variant names.
    Net {
        #[serde(with = "serde_bytes")]
        ask: Vec<u8>,
    },
    /// Download this URL into your files directory (answer: CBOR `()`
    /// once it is in place): the node the mesh chose for it, so that
    /// nodes asking at once download it once.
    Download { url: String },
    /// What do you have of this version of this file? (A puller's refresh,
    /// every few seconds: no manifest.)
    Progress {
        name: String,
        #[serde(with = "serde_bytes")]
        root: Vec<u8>,
    },
    /// Which chunks of this file do you have so far? (raw bitfield)
    Have {
        name: String,
        #[serde(with = "serde_bytes")]
        root: Vec<u8>,
    },
}

/// The answer to [`Request::Chunk`]: the chunks sent, one after another,
/// or why not.
pub type ChunkAnswer = Result<serde_bytes::ByteBuf, mm_store::Miss>;
