//! What can go wrong in node-local storage and in transfers. Callers match
//! on the kind (a file that is not here, a version that is not here, a
//! cancelled transfer); the text is for the operator, and names the file or
//! path and, where it helps, what to do.

use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// No such file or directory in the files directory.
    #[error("{name}: no such file or directory here")]
    NotHere { name: String },
    /// The name is here, but not in the version asked for.
    #[error("{name}: not here in that version")]
    NotThatVersion { name: String },
    #[error("{name}: no chunk {index}")]
    NoChunk { name: String, index: usize },
    #[error("{name}: not being fetched here")]
    NotFetching { name: String },
    #[error("cancelled")]
    Cancelled,
    /// Holders disagree on the content of a name: nothing was fetched. The
    /// text lists each version with its hash, size, mtime and holders.
    #[error(
        "conflict, nothing fetched; choose one with `file get NAME hash H` or \
         `file get NAME from HOST`:\n{0}"
    )]
    Conflict(String),
    /// A name that may not be used: absolute, with `..`, with control
    /// characters, reserved, or leading outside the files directory.
    #[error("{0}")]
    BadName(String),
    /// Nobody offers what was asked for.
    #[error("{0}")]
    NoHolder(String),
    /// A file is already here (or appeared meanwhile) with other content:
    /// it is never overwritten.
    #[error("{0}")]
    Exists(String),
    /// Another transfer of the name is in the way.
    #[error("{0}")]
    Busy(String),
    #[error("not enough disk space in {}: need {need}, {free} free", dir.display())]
    NoSpace {
        dir: PathBuf,
        need: String,
        free: String,
    },
    /// A manifest that does not describe a file consistently.
    #[error("{0}")]
    BadManifest(String),
    /// The file changed under us (while it was hashed, say).
    #[error("{0} changed while it was being hashed; try again")]
    Changed(String),
    /// `op` says what was being done, `path` to what.
    #[error("{}: {source}", io_what(op, path))]
    Io {
        op: String,
        path: PathBuf,
        source: Arc<std::io::Error>,
    },
    #[error("metadata database: {0}")]
    Meta(String),
    /// What the network layer said (a node that did not answer, say).
    #[error("{0}")]
    Net(String),
    /// A transfer task that ended without its result (it panicked).
    #[error("{0}")]
    Failed(String),
}

fn io_what(op: &str, path: &std::path::Path) -> String {
    if op.is_empty() {
        path.display().to_string()
    } else {
        format!("{op} {}", path.display())
    }
}

impl Error {
    /// An I/O error while doing `op` (may be empty) to `path`.
    pub fn io(op: impl Into<String>, path: impl Into<PathBuf>, e: std::io::Error) -> Error {
        Error::Io {
            op: op.into(),
            path: path.into(),
            source: Arc::new(e),
        }
    }

    /// Whether the error only says that a name is not here at all.
    pub fn is_not_here(&self) -> bool {
        matches!(self, Error::NotHere { .. })
    }

    /// Whether no node of the mesh holds what was asked for.
    pub fn is_no_holder(&self) -> bool {
        matches!(self, Error::NoHolder(_))
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::Failed(format!("a blocking task failed: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
