//! The files subsystem: the files directory and its manifests (`Local`),
//! the transfer engine, and the data channel that carries chunks. It
//! answers other nodes' file requests (who holds what, have-bits, chunks,
//! data channel grants) and does the work of the `file` commands.

pub(crate) mod data;
mod mesh;

use std::net::IpAddr;
use std::sync::Arc;

use mm_overlay::{wire, Overlay};
use mm_store::{Engine, FilesDir, Local, Meta};
use tracing::{info, warn};

use crate::proto::ChunkAnswer;
use crate::{DataPort, Error, Result};
use data::{DataClient, DataServer, Identity, Members};
use mesh::MeshNet;

pub(crate) struct Files {
    pub(crate) local: Arc<Local>,
    pub(crate) engine: Arc<Engine>,
    data: Option<Arc<DataServer>>,
}

impl Files {
    /// Opens `<base>/files`, starts the data channel, and resumes the
    /// transfers a previous run left unfinished.
    pub(crate) async fn start(
        files: &std::path::Path,
        meta: Meta,
        overlay: &Overlay,
        listen: IpAddr,
        port: DataPort,
        cluster_key: Option<[u8; 32]>,
    ) -> Result<Files> {
        let files = FilesDir::open(files)?;
        let local = Arc::new(Local::new(files, meta));
        let identity = Arc::new(Identity::new(cluster_key));
        let site = overlay.snapshot().await?.site;
        let engine = Engine::new(
            local.clone(),
            Arc::new(MeshNet {
                overlay: overlay.clone(),
                data: Arc::new(DataClient::new(overlay.clone(), identity.clone())),
                site,
            }),
        );
        let start = |port| {
            DataServer::start(
                listen,
                port,
                engine.clone(),
                identity.clone(),
                Members::mesh(overlay.clone()),
            )
        };
        let data = match port {
            DataPort::Fixed(port) => Some(start(port).await?),
            DataPort::Preferred(port) => match start(port).await {
                Ok(d) => Some(d),
                Err(e) => {
                    warn!("{e}; using a free port instead");
                    Some(start(0).await?)
                }
            },
            DataPort::Off => None,
        };
        match &data {
            Some(d) => {
                info!("data channel on port {}", d.port());
                overlay
                    .set_data(Some(mm_overlay::DataInfo {
                        port: d.port(),
                        key: identity.public.to_vec(),
                    }))
                    .await?;
            }
            None => info!("data channel off: chunks travel over the overlay connection"),
        }
        engine.resume();
        Ok(Files {
            local,
            engine,
            data,
        })
    }

    /// Stops serving chunks. Transfers in progress keep their records and
    /// resume at the next start.
    pub(crate) fn stop(&self) {
        if let Some(d) = &self.data {
            d.stop();
        }
    }

    /// The rows of `file list`: dir, name, size, modified, hash.
    pub(crate) async fn list(&self, path: &str, recursive: bool) -> Result<Vec<Vec<String>>> {
        let local = self.local.clone();
        let p = path.to_string();
        let rows = tokio::task::spawn_blocking(move || -> mm_store::Result<Vec<Vec<String>>> {
            let entries = local.files.list(&p, recursive)?;
            Ok(entries
                .into_iter()
                .map(|e| {
                    let hash = if e.is_dir {
                        String::new()
                    } else {
                        local
                            .cached(&e.name)
                            .map(|m| m.root_hex()[..16].to_string())
                            .unwrap_or_else(|| "-".into())
                    };
                    vec![
                        if e.is_dir {
                            "<dir>".into()
                        } else {
                            String::new()
                        },
                        e.name,
                        e.size.to_string(),
                        mm_store::fmt::fmt_time(e.modified),
                        hash,
                    ]
                })
                .collect())
        })
        .await??;
        Ok(rows)
    }

    /// Cancels the transfers and deletes the local files that `name` (a
    /// file, a directory or a glob) stands for; returns their names.
    pub(crate) async fn delete(&self, name: &str) -> Result<(Vec<String>, Vec<String>)> {
        let cancelled = self.engine.cancel(name).await;
        let local = self.local.clone();
        let n = name.to_string();
        let deleted = tokio::task::spawn_blocking(move || delete_local(&local, &n)).await??;
        Ok((cancelled, deleted))
    }

    /// What this node can serve for `pattern` (CBOR `Vec<Held>`).
    pub(crate) async fn holds(&self, pattern: String) -> Result<Vec<u8>> {
        let engine = self.engine.clone();
        let held = tokio::task::spawn_blocking(move || engine.held(&pattern)).await??;
        Ok(wire::encode(&held))
    }

    /// What this node has of one version of `name`, for a puller's
    /// refresh (CBOR [`mm_store::Progress`]).
    pub(crate) async fn progress(&self, name: String, root: Vec<u8>) -> Result<Vec<u8>> {
        let engine = self.engine.clone();
        let p = tokio::task::spawn_blocking(move || engine.progress(&name, &root)).await??;
        Ok(wire::encode(&p))
    }

    /// A chunk request over the overlay (CBOR [`ChunkAnswer`]).
    pub(crate) async fn chunk(
        &self,
        from: String,
        name: String,
        root: Vec<u8>,
        index: u32,
        count: u32,
    ) -> Result<Vec<u8>> {
        let engine = self.engine.clone();
        let answer: ChunkAnswer = tokio::task::spawn_blocking(move || {
            engine
                .read_chunks(&from, &name, &root, index as usize, count as usize)
                .map(|buf| serde_bytes::ByteBuf::from(buf.to_vec()))
        })
        .await?;
        Ok(wire::encode(&answer))
    }

    /// A data channel grant for `from` (CBOR `Option<Grant>`; none with
    /// the channel off).
    pub(crate) fn grant(&self, from: &str) -> Result<Vec<u8>> {
        let grant = self.data.as_ref().map(|d| d.grant(from)).transpose()?;
        Ok(wire::encode(&grant))
    }
}

fn delete_local(local: &Local, name: &str) -> Result<Vec<String>> {
    let files = &local.files;
    let clean = FilesDir::clean(name)?;
    if clean.is_empty() {
        return Err(Error::usage(
            "refusing to delete the whole files directory; name what to delete",
        ));
    }
    let gone = |f: &str, e| Error::io(f.to_string(), e);
    let mut deleted = Vec::new();
    if !mm_store::files::has_magic(&clean) {
        let path = files.resolve(&clean)?;
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            if m.is_dir() {
                for f in files.expand(&clean)? {
                    local.forget(&f);
                }
                std::fs::remove_dir_all(&path).map_err(|e| gone(&clean, e))?;
            } else {
                std::fs::remove_file(&path).map_err(|e| gone(&clean, e))?;
                local.forget(&clean);
            }
            deleted.push(clean);
        }
        return Ok(deleted);
    }
    for f in files.expand(&clean)? {
        let path = files.resolve(&f)?;
        std::fs::remove_file(&path).map_err(|e| gone(&f, e))?;
        local.forget(&f);
        deleted.push(f);
    }
    Ok(deleted)
}
