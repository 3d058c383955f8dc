//! The transfer engine's view of the mesh, over the overlay: `Holds` (and
//! a puller's refresh, `Progress`) goes to every node as a routed request,
//! chunks come straight from the holder, on the data channel when it can
//! be had.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use mm_overlay::{wire, Overlay};
use mm_store::transfer::{HolderAnswers, ProgressAnswers};
use mm_store::{Asker, ChunkBuf, Held, Miss, Net, Progress, Reply};

use super::data::{DataClient, DataError};
use crate::proto::{ChunkAnswer, Request};

/// How long holders get to answer "who has it" (they may hash the file first).
const HOLDS_TIMEOUT: Duration = Duration::from_secs(30);

/// The network as the store's engine needs it.
pub(crate) struct MeshNet {
    pub(crate) overlay: Overlay,
    pub(crate) data: Arc<DataClient>,
    /// The site this node says it is at (`mm serve --site`).
    pub(crate) site: Option<String>,
}

/// `req` to every other node, each answer decoded; none when this node is
/// alone.
async fn ask_all<T>(
    overlay: Overlay,
    req: Request,
    decode: impl Fn(&[u8]) -> Result<T, mm_overlay::Error>,
) -> Vec<(String, mm_store::Result<T>)> {
    let Ok(snap) = overlay.snapshot().await else {
        return Vec::new();
    };
    let others = snap.others();
    if others.is_empty() {
        return Vec::new();
    }
    match overlay
        .send(others, wire::encode(&req), HOLDS_TIMEOUT)
        .await
    {
        Ok(answers) => answers
            .into_iter()
            .map(|(host, r)| (host, r.and_then(|b| decode(&b)).map_err(net)))
            .collect(),
        Err(e) => vec![(snap.name, Err(net(e)))],
    }
}

/// An overlay error, as the store sees it.
fn net(e: mm_overlay::Error) -> mm_store::Error {
    mm_store::Error::Net(e.to_string())
}

impl Net for MeshNet {
    fn holders(&self, pattern: String) -> BoxFuture<'static, HolderAnswers> {
        ask_all(self.overlay.clone(), Request::Holds { pattern }, |b| {
            wire::decode::<Vec<Held>>(b)
        })
        .boxed()
    }

    fn progress(&self, name: String, root: Vec<u8>) -> BoxFuture<'static, ProgressAnswers> {
        ask_all(
            self.overlay.clone(),
            Request::Progress { name, root },
            |b| wire::decode::<Progress>(b),
        )
        .boxed()
    }

    fn rtt(&self, host: &str) -> Option<Duration> {
        self.data.rtt(host)
    }

    fn far(&self) -> BoxFuture<'static, HashSet<String>> {
        // No site said here: no snapshot taken for nothing.
        let Some(mine) = self.site.clone() else {
            return futures::future::ready(HashSet::new()).boxed();
        };
        let overlay = self.overlay.clone();
        async move {
            let Ok(snap) = overlay.snapshot().await else {
                return HashSet::new();
            };
            snap.nodes
                .into_values()
                .filter(|n| n.site.as_ref().is_some_and(|s| *s != mine))
                .map(|n| n.name)
                .collect()
        }
        .boxed()
    }

    fn have(
        &self,
        host: String,
        name: String,
        root: Vec<u8>,
    ) -> BoxFuture<'static, mm_store::Result<Vec<u8>>> {
        let overlay = self.overlay.clone();
        let data = self.data.clone();
        async move {
            match data.have(&host, name.clone(), root.clone()).await {
                Ok(bits) => return Ok(bits),
                Err(DataError::Miss(m)) => return Err(mm_store::Error::Net(format!("{m:?}"))),
                // No data channel to it for now: over the mesh connection.
                Err(DataError::Setup) => {}
            }
            let body = wire::encode(&Request::Have { name, root });
            overlay.direct(&host, body).await.map_err(net)
        }
        .boxed()
    }

    fn chunk(
        &self,
        host: String,
        name: String,
        root: Vec<u8>,
        index: u32,
        count: u32,
        asker: Asker,
    ) -> BoxFuture<'static, Reply> {
        let overlay = self.overlay.clone();
        let data = self.data.clone();
        async move {
            match data
                .chunk(&host, name.clone(), root.clone(), index, count, asker)
                .await
            {
                Ok(reply) => return reply,
                Err(DataError::Miss(m)) => return Err(m).into(),
                // Noted and logged by the client; for now, the other way.
                Err(DataError::Setup) => {}
            }
            // Without news: the sources polled instead.
            over_mesh(&overlay, host, name, root, index, count)
                .await
                .into()
        }
        .boxed()
    }
}

/// A chunk request over the mesh connection, for a node the data channel
/// cannot reach.
async fn over_mesh(
    overlay: &Overlay,
    host: String,
    name: String,
    root: Vec<u8>,
    index: u32,
    count: u32,
) -> Result<ChunkBuf, Miss> {
    let body = wire::encode(&Request::Chunk {
        name,
        root,
        index,
        count,
    });
    let bytes = overlay
        .direct(&host, body)
        .await
        .map_err(|e| Miss::Failed(e.to_string()))?;
    let answer: ChunkAnswer = wire::decode(&bytes).map_err(|e| Miss::Failed(e.to_string()))?;
    answer.map(|b| ChunkBuf::from(&b[..]))
}
