//! The node's errors: the overlay's and the store's, and the node's own
//! (a bad command line, a refusal, a data channel or start-up failure).
//! VM and bridge errors join here as those subsystems arrive. Errors
//! become text only at the edges: a command's answer, the wire, the log.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Overlay(#[from] mm_overlay::Error),
    #[error(transparent)]
    Store(#[from] mm_store::Error),
    /// A command line the grammar does not take, or an argument it cannot
    /// use; the text says what would be right.
    #[error("{0}")]
    Usage(String),
    /// What a command names is nowhere to be found.
    #[error("{0}")]
    NotFound(String),
    /// Not allowed from where the command came.
    #[error("{0}")]
    Refused(String),
    /// A VM's process would not start, or would not do what it was told.
    #[error("{0}")]
    Vm(String),
    /// Open vSwitch or the kernel would not make a bridge, tap or tunnel.
    #[error("{0}")]
    Net(String),
    /// Starting the node: the base, the key, the ports.
    #[error("{0}")]
    Startup(String),
    /// A wait that ran out; the text says what did not happen.
    #[error("{0}")]
    TimedOut(String),
    /// The `mm` command's connection to its node broke, before the
    /// request was written (`sent` false: it did not run) or after (it may
    /// have run).
    #[error("{}", lost(*sent, detail))]
    Lost { sent: bool, detail: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn usage(text: impl Into<String>) -> Error {
        Error::Usage(text.into())
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether the connection to the node broke (a client may reconnect).
    pub fn is_lost(&self) -> bool {
        matches!(self, Error::Lost { .. })
    }

    /// No node of the mesh holds the file asked for.
    pub(crate) fn is_no_holder(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_no_holder())
    }

    /// Whether it only says that a name is not here at all.
    pub(crate) fn is_not_here(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_not_here())
    }
}

fn lost(sent: bool, detail: &str) -> String {
    if sent {
        format!("the command was sent but the node did not answer ({detail}); it may have run")
    } else {
        format!("the command was not sent: lost the connection to the node ({detail})")
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::Store(e.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
