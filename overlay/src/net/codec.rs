//! The request-response codec: CBOR, with a size limit per protocol that
//! fits what it carries, and a deadline on reading a request. A peer that
//! opens a stream and trickles or stalls is cut off, instead of holding a
//! buffer (one peer once held 4.6 GB of a node with 256 stalled streams).

use std::io;
use std::marker::PhantomData;
use std::time::Duration;

use futures::prelude::*;
use libp2p::request_response::{self, cbor};
use libp2p::StreamProtocol;
use serde::{de::DeserializeOwned, Serialize};

pub(crate) struct Bounded<Req, Resp> {
    inner: cbor::codec::Codec<Req, Resp>,
    /// How long a request may take to arrive, once its stream is open.
    read: Duration,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> Clone for Bounded<Req, Resp> {
    fn clone(&self) -> Self {
        Bounded {
            inner: self.inner.clone(),
            read: self.read,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Bounded<Req, Resp> {
    pub(super) fn new(request_max: u64, response_max: u64, read: Duration) -> Self {
        Bounded {
            inner: cbor::codec::Codec::default()
                .set_request_size_maximum(request_max)
                .set_response_size_maximum(response_max),
            read,
            _types: PhantomData,
        }
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
        let read = self.read;
        let request = self.inner.read_request(protocol, io);
        async move {
            tokio::time::timeout(read, request).await.map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the request did not arrive in time",
                )
            })?
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
