//! Every command: one family per file (`host.rs`, `mesh.rs`, `file.rs`),
//! each exporting its [`Spec`]s, each spec carrying its handler. [`execute`]
//! is the only way a command runs, whatever its source: the control socket,
//! the shell, or `mesh send` from another node. The grammar (`grammar.rs`)
//! parses every one; help and usage come from the same specs.
//!
//! Handlers call subsystems (`crate::files`, the overlay, ...); subsystems
//! never call back into this module.

mod file;
pub(crate) mod grammar;
mod host;
pub(crate) mod hosts;
mod mesh;
mod net;
mod ns;
mod shell;
mod vm;

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use futures::future::BoxFuture;

use crate::proto::Response;
use crate::{Node, Result};
use grammar::Call;

/// What a handler answers: one response per host that answered.
pub(crate) type Out = Result<Vec<Response>>;

/// A handler: the command's context and its parsed arguments.
pub(crate) type Handler = for<'a> fn(&'a Ctx, &'a Call) -> BoxFuture<'a, Out>;

/// One command of the grammar: its patterns in minimega's notation (see
/// `grammar.rs`), its help, and what runs it.
pub(crate) struct Spec {
    pub(crate) id: &'static str,
    pub(crate) patterns: &'static [&'static str],
    pub(crate) short: &'static str,
    pub(crate) long: &'static str,
    pub(crate) run: Handler,
}

/// Where a command came from: the local control socket, or another node.
#[derive(Debug, Clone)]
pub(crate) enum Source {
    Local { cwd: Option<PathBuf> },
    Mesh { from: String },
}

/// What a handler runs with.
pub(crate) struct Ctx {
    pub(crate) node: Arc<Node>,
    pub(crate) src: Source,
    /// The namespace the command runs in when `namespace NAME COMMAND`
    /// chose one; `None`: the node's active namespace.
    pub(crate) ns: Option<String>,
    /// Act on this node alone, as a command from the mesh does: the
    /// head's own part of an `ns run`, beside its hosts' parts.
    pub(crate) alone: bool,
}

impl Ctx {
    /// This node's name, which labels its answers.
    pub(crate) fn me(&self) -> &str {
        &self.node.name
    }

    /// One answer, from this node.
    pub(crate) fn one(&self, r: Response) -> Out {
        Ok(vec![r])
    }

    /// An empty answer: the command worked and has nothing to say.
    pub(crate) fn ok(&self) -> Out {
        self.one(Response::text(self.me(), ""))
    }

    /// The namespace this command runs in.
    pub(crate) fn namespace(&self) -> String {
        self.ns.clone().unwrap_or_else(|| self.node.ns.active())
    }

    /// Whether the command came from the mesh: what it may do here.
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self.src, Source::Mesh { .. })
    }

    /// Whether the command acts on this node alone (it came from the
    /// mesh, or is the head's own part of an `ns run`), never fanning out
    /// to the namespace's hosts.
    pub(crate) fn alone(&self) -> bool {
        self.alone || self.is_remote()
    }

    /// How a command that acts alone came: for refusals.
    pub(crate) fn via(&self) -> &'static str {
        if self.is_remote() {
            "meshage"
        } else {
            "ns run"
        }
    }
}

/// Every command, in the order `help` lists them (and the grammar tries
/// them).
pub(crate) fn specs() -> &'static [&'static Spec] {
    static ALL: LazyLock<Vec<&'static Spec>> = LazyLock::new(|| {
        host::SPECS
            .iter()
            .chain(mesh::SPECS)
            .chain(file::SPECS)
            .chain(ns::SPECS)
            .chain(vm::SPECS)
            .chain(net::SPECS)
            .chain(shell::SPECS)
            .collect()
    });
    &ALL
}

/// Parses and runs one command; errors become error rows of this node.
pub(crate) async fn execute(node: &Arc<Node>, argv: &[String], src: Source) -> Vec<Response> {
    execute_in(node, argv, src, None, false).await
}

/// [`execute`] in namespace `ns` (None: the active one); `alone`: see
/// [`Ctx::alone`].
pub(crate) async fn execute_in(
    node: &Arc<Node>,
    argv: &[String],
    src: Source,
    ns: Option<String>,
    alone: bool,
) -> Vec<Response> {
    if let Source::Mesh { from } = &src {
        tracing::debug!("command from {from}: {}", argv.join(" "));
    }
    let cx = Ctx {
        node: node.clone(),
        src,
        ns,
        alone,
    };
    let (spec, call) = match parse_resolved(node, argv, !cx.is_remote()).await {
        Ok(p) => p,
        Err(e) => return vec![Response::failure(&node.name, &e)],
    };
    match (spec.run)(&cx, &call).await {
        Ok(rs) => rs,
        Err(e) => vec![Response::failure(&node.name, &e)],
    }
}

/// Whether a command's words are resolved before it runs: not the `file`
/// commands (they take bare names), nor those that carry a command for
/// elsewhere (`mesh send`, `ns run`: each node resolves its own copy;
/// `namespace NAME COMMAND` resolves its command when it runs it).
fn resolves(spec: &Spec) -> bool {
    !(spec.id.starts_with("file ")
        || matches!(
            spec.id,
            "mesh send" | "ns run" | "namespace" | "help" | "read"
        ))
}

/// Parses `argv` with its `file:` and `tar:` words made local paths, on
/// this node (see `resolve`):
/// each is fetched and verified before the command runs, and one that
/// cannot be fails the command, which then does not run. `local`: the
/// command came from this host, not from the mesh.
pub(crate) async fn parse_resolved(
    node: &Arc<Node>,
    argv: &[String],
    local: bool,
) -> Result<(&'static Spec, Call)> {
    let (spec, call) = grammar::parse(specs(), argv)?;
    if !resolves(spec) || !argv.iter().any(|w| crate::resolve::fetches(w)) {
        return Ok((spec, call));
    }
    // A diskspec's options follow its path (`file:a.qcow2,virtio`): only
    // the path is fetched, as minimega does.
    let diskspecs = spec.id == "vm config" && call.has("disks");
    let mut words = Vec::with_capacity(argv.len());
    for w in argv {
        let (w, opts) = match diskspecs {
            true => crate::vm::config::split_diskspec(w),
            false => (w.as_str(), ""),
        };
        let resolved = crate::resolve::word(node, w, local).await.map_err(|e| {
            // Said once: some errors name the word already.
            let e = e.to_string();
            let bare = w.split_once(':').map_or(w, |(_, r)| r);
            let said = if e.starts_with(w) {
                e
            } else if let Some(rest) = e.strip_prefix(bare) {
                format!("{w}{rest}")
            } else {
                format!("{w}: {e}")
            };
            // `file:a.img,virtoi`: the whole word was taken for a name.
            let hint = diskspecs
                .then(|| crate::vm::config::diskspec_hint(w))
                .flatten();
            crate::Error::NotFound(match hint {
                Some(h) => format!("{said}; {h}"),
                None => said,
            })
        })?;
        words.extend(resolved.into_iter().map(|r| match opts {
            "" => r,
            o => format!("{r},{o}"),
        }));
    }
    grammar::parse(specs(), &words)
}
