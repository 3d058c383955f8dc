//! The mm daemon: the subsystems a node runs (the overlay, files; VMs and
//! bridges to come), the commands that drive them (`cmd/`), and the control
//! socket the `mm` command talks to. This file is wiring only.

mod base;
pub(crate) mod cmd;
pub mod control;
mod error;
mod files;
#[cfg(test)]
mod fuzz;
mod inbound;
mod node;
pub mod proto;
mod serve;
mod stats;

pub use error::{Error, Result};
pub use node::{DataPort, Options};
pub(crate) use node::{Node, DEFAULT_DEGREE, NO_LIMIT};
pub use proto::Response;
pub use serve::serve;
