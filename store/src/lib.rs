//! Node-local storage: the files directory, file manifests, and small
//! metadata in sled (`meta` is the only code that touches sled).

pub mod buf;
pub mod files;
pub mod manifest;
pub mod meta;

pub use buf::ChunkBuf;
pub use files::FilesDir;
pub use manifest::Manifest;
pub use meta::Meta;
pub mod local;

pub use local::Local;
pub mod transfer;

pub use transfer::{Engine, Held, Net, Select};
