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
pub(crate) mod inbound;
mod net;
mod node;
mod ns;
pub mod proto;
mod resolve;
mod serve;
mod shell;
mod stats;
mod tarball;
mod vm;
mod web;

pub use error::{Error, Result};
pub use node::{DataPort, Options};
pub(crate) use node::{Node, DEFAULT_DEGREE, NO_LIMIT};
pub use proto::Response;
pub use serve::serve;

/// The `help` command's text, `help WORDS...` included, wrapped to `width`
/// columns (`None`: as the node answers it): the grammar's own, so `mm
/// help` needs no node.
pub fn help(words: &[String], width: Option<usize>) -> std::result::Result<String, String> {
    cmd::grammar::help(
        cmd::specs(),
        words,
        width.unwrap_or(cmd::grammar::HELP_WIDTH),
    )
    .map_err(|e| e.to_string())
}

/// Host names as minimega writes a list of them: `n[1-3],other`.
pub fn compress_hosts(names: &[String]) -> String {
    cmd::hosts::compress(names)
}

/// Whether `argv` is a command of the grammar, without running it (`read
/// FILE check`).
pub fn check_command(argv: &[String]) -> std::result::Result<(), String> {
    cmd::grammar::parse(cmd::specs(), argv)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
