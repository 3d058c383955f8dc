//! The control socket: `<base>/mm.sock`, mode 0600. One JSON request per
//! line in, one JSON array of [`Response`]s per line out.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::cmd::{self, Source};
use crate::proto::{ControlRequest, Query, Response, TransferStatus};
use crate::{Error, Node, Result};

/// Lines longer than this are refused rather than buffered without bound.
const MAX_LINE: usize = 1 << 20;

pub(crate) fn socket_path(base: &Path) -> PathBuf {
    base.join("mm.sock")
}

/// Binds the socket, refusing to steal it from a live node.
pub(crate) async fn bind(base: &Path) -> Result<UnixListener> {
    let path = socket_path(base);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(Error::Startup(format!(
                "a node is already running with base {} (its socket {} answers)",
                base.display(),
                path.display()
            )));
        }
        // Left by a node that did not shut down cleanly.
        let _ = std::fs::remove_file(&path);
    }
    let listener = UnixListener::bind(&path).map_err(|e| {
        Error::io(
            format!("cannot create control socket {}", path.display()),
            e,
        )
    })?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("cannot restrict {}", path.display()), e))?;
    Ok(listener)
}

pub(crate) async fn serve(listener: UnixListener, node: Arc<Node>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let node = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = session(stream, node).await {
                        debug!("control session ended: {e}");
                    }
                });
            }
            Err(e) => {
                warn!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn session(stream: UnixStream, node: Arc<Node>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        if line.len() > MAX_LINE {
            // The rest of the line would read as more requests: answer once
            // and hang up.
            let too_long = vec![Response::error(&node.name, "request too long")];
            let mut out = serde_json::to_vec(&too_long).unwrap_or_default();
            out.push(b'\n');
            w.write_all(&out).await?;
            return Ok(());
        }
        let answer = match serde_json::from_str::<ControlRequest>(&line) {
            Ok(ControlRequest {
                query: Some(Query::Transfers),
                ..
            }) => {
                let rows: Vec<TransferStatus> = node
                    .files
                    .engine
                    .status(false)
                    .iter()
                    .map(TransferStatus::from)
                    .collect();
                serde_json::to_vec(&rows)
            }
            Ok(req) => {
                let src = Source::Local {
                    cwd: req.cwd.map(PathBuf::from),
                };
                serde_json::to_vec(&cmd::execute(&node, &req.argv, src).await)
            }
            Err(e) => serde_json::to_vec(&[Response::error(
                &node.name,
                format!("malformed request: {e}"),
            )]),
        };
        let mut out = answer.unwrap_or_else(|_| b"[]".to_vec());
        out.push(b'\n');
        w.write_all(&out).await?;
    }
}

/// A connection from the `mm` command to its local node.
pub struct Client {
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    pub async fn connect(base: &Path) -> Result<Self> {
        let path = socket_path(base);
        let s = UnixStream::connect(&path).await.map_err(|e| {
            Error::Startup(format!(
                "cannot reach the mm node at {} ({e}); start one with `mm --base {} serve`, \
                 or name a running node's base with `mm --base DIR ...`",
                path.display(),
                base.display()
            ))
        })?;
        let (r, w) = s.into_split();
        Ok(Self {
            r: BufReader::new(r),
            w,
        })
    }

    /// Runs a command on the node.
    pub async fn run(&mut self, argv: &[String]) -> Result<Vec<Response>> {
        self.ask(argv, None).await
    }

    /// The node's transfers in progress, as typed data.
    pub async fn transfers(&mut self) -> Result<Vec<TransferStatus>> {
        self.ask(&[], Some(Query::Transfers)).await
    }

    async fn ask<T: serde::de::DeserializeOwned>(
        &mut self,
        argv: &[String],
        query: Option<Query>,
    ) -> Result<T> {
        let req = ControlRequest {
            argv: argv.to_vec(),
            cwd: std::env::current_dir()
                .ok()
                .map(|p| p.to_string_lossy().into_owned()),
            query,
        };
        let mut line = serde_json::to_vec(&req).expect("a request encodes as JSON");
        line.push(b'\n');
        self.w.write_all(&line).await.map_err(|e| Error::Lost {
            sent: false,
            detail: e.to_string(),
        })?;
        let mut answer = String::new();
        let n = self
            .r
            .read_line(&mut answer)
            .await
            .map_err(|e| Error::Lost {
                sent: true,
                detail: e.to_string(),
            })?;
        if n == 0 {
            return Err(Error::Lost {
                sent: true,
                detail: "it closed the connection".into(),
            });
        }
        serde_json::from_str(&answer).map_err(|e| {
            Error::io(
                "malformed answer from the node",
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })
    }
}
