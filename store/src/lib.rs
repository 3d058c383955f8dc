//! Node-local storage: the files directory, file manifests, small metadata
//! in sled (`meta` is the only code that touches sled), and the transfer
//! engine that pulls files from other nodes.

pub mod buf;
mod error;
pub mod files;
pub mod fmt;
pub mod local;
pub mod manifest;
#[cfg(any(test, feature = "test-util"))]
pub mod mem;
pub mod meta;
pub mod transfer;

pub use buf::ChunkBuf;
pub use error::{Error, Result};
pub use files::FilesDir;
pub use local::Local;
pub use manifest::Manifest;
pub use meta::Meta;
pub use transfer::{
    Asker, Engine, Held, Miss, Net, News, Pending, Progress, Reply, Select, Sent, Tuning, MAX_GONE,
};
