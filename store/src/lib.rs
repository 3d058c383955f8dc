//! Node-local storage. `meta` is the only code that touches sled; the files
//! directory and transfers will live beside it.

pub mod meta;

pub use meta::Meta;
