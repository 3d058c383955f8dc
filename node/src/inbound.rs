//! Requests from other nodes: a command of the grammar (`mesh send`), or
//! one of the files subsystem's requests.

use std::sync::Arc;

use mm_overlay::wire::{decode, encode};
use mm_overlay::Inbound;
use tokio::sync::mpsc;

use crate::cmd::{self, Source};
use crate::proto::Request;
use crate::{Node, Result};

/// Answers every request the overlay hands this node, each in a task of
/// its own.
pub(crate) async fn answer_all(node: Arc<Node>, mut inbound: mpsc::Receiver<Inbound>) {
    while let Some(req) = inbound.recv().await {
        let node = node.clone();
        tokio::spawn(async move {
            let answer = answer(&node, req.from, &req.body)
                .await
                .map_err(|e| mm_overlay::Error::Remote(e.to_string()));
            let _ = req.reply.send(answer);
        });
    }
}

async fn answer(node: &Arc<Node>, from: String, body: &[u8]) -> Result<Vec<u8>> {
    Ok(match decode::<Request>(body)? {
        Request::Command { argv, namespace } => {
            if let Some(ns) = &namespace {
                crate::ns::check_name(ns)?;
            }
            encode(&cmd::execute_in(node, &argv, Source::Mesh { from }, namespace, false).await)
        }
        Request::Holds { pattern } => node.files.holds(pattern).await?,
        Request::Download { url } => {
            crate::resolve::download_here(node, &url).await?;
            encode(&())
        }
        Request::Vm { ask } => crate::vm::wire::answer(node, decode(&ask)?, true).await?,
        Request::Net { ask } => crate::net::wire::answer(node, decode(&ask)?).await?,
        Request::Progress { name, root } => node.files.progress(name, root).await?,
        Request::Have { name, root } => node.files.engine.have_bits(&from, &name, &root)?,
        Request::Data => node.files.grant(&from)?,
        Request::Chunk {
            name,
            root,
            index,
            count,
        } => node.files.chunk(from, name, root, index, count).await?,
    })
}

/// One typed request for `host`: answered by `here` when it is this node,
/// else sent; the answer decoded, or why there is none.
pub(crate) async fn ask_host<T, F>(
    node: &Node,
    host: String,
    req: impl FnOnce() -> Request,
    here: impl FnOnce() -> F,
    timeout: std::time::Duration,
) -> (String, Result<T>)
where
    T: serde::de::DeserializeOwned,
    F: std::future::Future<Output = Result<Vec<u8>>>,
{
    let got: Result<Vec<u8>> = if host == node.name {
        here().await
    } else {
        match node
            .overlay
            .send(vec![host.clone()], encode(&req()), timeout)
            .await
        {
            Ok(mut a) => match a.pop() {
                Some((_, r)) => r.map_err(Into::into),
                None => Err(crate::Error::NotFound(format!("{host}: no answer"))),
            },
            Err(e) => Err(e.into()),
        }
    };
    let out = got.and_then(|b| decode::<T>(&b).map_err(Into::into));
    (host, out)
}

/// [`ask_host`] for each host with its own question, all at once: `wrap`
/// makes a question the request that carries it, `here` answers it on this
/// node.
pub(crate) async fn ask_many<'a, A, T, F>(
    node: &'a Node,
    asks: Vec<(String, A)>,
    wrap: fn(Vec<u8>) -> Request,
    here: impl Fn(A) -> F,
    timeout: std::time::Duration,
) -> Vec<(String, Result<T>)>
where
    A: serde::Serialize,
    T: serde::de::DeserializeOwned,
    F: std::future::Future<Output = Result<Vec<u8>>> + 'a,
{
    let calls = asks.into_iter().map(|(host, ask)| {
        let body = encode(&ask);
        let answer = &here;
        ask_host(node, host, move || wrap(body), move || answer(ask), timeout)
    });
    futures::future::join_all(calls).await
}
