//! The request-response codec: CBOR, with a size limit per protocol that
//! fits what it carries, a deadline on reading a request, and one budget of
//! bytes for all the requests being read at once. A peer that opens streams
//! and trickles or stalls is cut off, and can never make the node hold more
//! than the budget (one peer once held 4.6 GB of a node with 256 stalled
//! streams).

use std::io;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use futures::prelude::*;
use libp2p::request_response::{self, cbor};
use libp2p::StreamProtocol;
use serde::{de::DeserializeOwned, Serialize};

pub(crate) struct Bounded<Req, Resp> {
    inner: cbor::codec::Codec<Req, Resp>,
    request_max: usize,
    /// How long a request may take to arrive, once its stream is open.
    read: Duration,
    /// Bytes of requests being read, shared by every connection and
    /// protocol: a permit per byte.
    budget: Arc<Semaphore>,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Clone for Bounded<Req, Resp> {
    fn clone(&self) -> Self {
        Bounded {
            inner: self.inner.clone(),
            request_max: self.request_max,
            read: self.read,
            budget: self.budget.clone(),
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Bounded<Req, Resp> {
    pub(super) fn new(
        request_max: u64,
        response_max: u64,
        read: Duration,
        budget: Arc<Semaphore>,
    ) -> Self {
        Bounded {
            inner: cbor::codec::Codec::default()
                .set_request_size_maximum(request_max)
                .set_response_size_maximum(response_max),
            request_max: request_max as usize,
            read,
            budget,
            _types: PhantomData,
        }
    }
}

/// Reads a whole request (the sender closes its side after it), taking a
/// permit of `budget` for each byte, held until the request is decoded.
async fn read_bounded<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
    budget: &Arc<Semaphore>,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
    let mut piece = vec![0u8; 16 << 10];
    loop {
        let n = io.read(&mut piece).await?;
        if n == 0 {
            return Ok(buf);
        }
        if buf.len() + n > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a request of more than {max} bytes"),
            ));
        }
        let p = budget
            .clone()
            .try_acquire_many_owned(n as u32)
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    "too many requests being read at once",
                )
            })?;
        match held.as_mut() {
            Some(h) => h.merge(p),
            None => held = Some(p),
        }
        buf.extend_from_slice(&piece[..n]);
    }
}

impl<Req, Resp> request_response::Codec for Bounded<Req, Resp>
where
    Req: Send + Serialize + DeserializeOwned,
    Resp: Send + Serialize + DeserializeOwned,
{
    type Protocol = StreamProtocol;
    type Request = Req;
    type Response = Resp;

    fn read_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> impl Future<Output = io::Result<Req>> + Send
    where
        T: AsyncRead + Unpin + Send,
    {
        let _ = protocol;
        let (read, max, budget) = (self.read, self.request_max, self.budget.clone());
        async move {
            let bytes = tokio::time::timeout(read, read_bounded(io, max, &budget))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request did not arrive in time",
                    )
                })??;
            cbor4ii::serde::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
        }
    }

    // An answer may take as long as the work it answers (a `file get ...
    // wait`): the protocol's request timeout bounds it, not this codec.
    fn read_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
    ) -> impl Future<Output = io::Result<Resp>> + Send
    where
        T: AsyncRead + Unpin + Send,
    {
        self.inner.read_response(protocol, io)
    }

    fn write_request<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        req: Req,
    ) -> impl Future<Output = io::Result<()>> + Send
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.inner.write_request(protocol, io, req)
    }

    fn write_response<T>(
        &mut self,
        protocol: &StreamProtocol,
        io: &mut T,
        res: Resp,
    ) -> impl Future<Output = io::Result<()>> + Send
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.inner.write_response(protocol, io, res)
    }
}
