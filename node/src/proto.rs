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
}

/// What one node asks of another, routed (`Command`, `Holds`) or direct
/// (`Chunk`, `Data`, `Have`). Answers: `Command` a CBOR `Vec<Response>`;
/// `Holds` a CBOR `Vec<mm_store::Held>`; `Chunk` a CBOR [`ChunkAnswer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    /// A command of the grammar, from `mesh send`.
    Command { argv: Vec<String> },
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
