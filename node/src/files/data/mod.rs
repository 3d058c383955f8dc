//! The data channel: chunk bytes between two nodes on a TCP connection of
//! their own, sealed with AES-256-GCM under a key handed over the mesh's
//! Noise channel.
//!
//! Why not the libp2p connection: Noise's ChaCha20-Poly1305 and yamux run in
//! one task per connection and cost about 1 CPU-second per GiB on each side,
//! which caps a transfer at a fraction of what the wire can do. AES-GCM with
//! AES-NI runs at ~9 GB/s here, and a plain TCP socket adds no framing
//! copies. The security argument stays the mesh's: a secret and a one-time
//! ticket are only ever sent over Noise (and the cluster key, if any) to an
//! authenticated node; the connection's handshake (Noise `NNpsk0` keyed by
//! that secret, `handshake.rs`) proves the client holds it before the
//! server spends anything, the ticket opens one connection within
//! [`TICKET_TTL`], and every record is authenticated, so a stranger can
//! neither read nor inject chunk bytes, nor make the server work. (Content
//! is verified against the manifest's blake3 hashes on top of that.) A
//! client can skip the grant with a keyed hello (`keyed.rs`): it proves the
//! static key its node announced in the mesh, and the cluster key.
//!
//! Wire: the ticket and the handshake, or the keyed hello (see
//! `handshake.rs`), then records of
//! `[u32 BE length][ciphertext][16-byte tag]`, the length bytes being the
//! associated data, each direction with its own key (from the handshake)
//! and a counter nonce. The server's first record is an acknowledgement,
//! which gives the client the round trip. Then the client sends requests
//! (CBOR [`DataReq`]) and the server answers each, in order, with `body ||
//! kind (1 byte) || index (u32 BE)`: kind 0 is the chunk, kind 1 an error
//! message, 2 "not yet", 3 a redirect, 4 "gone" (not that version). A
//! request with `seen` gets, from a puller, its news between body and
//! kind: `entries (u32 BE each) || from (u32 BE) || count (u32 BE)`, and
//! the kind with [`WITH_NEWS`] set. A request for no chunks (`count` 0) is
//! a have poll: its answer, kind 5, is the server's have-bitfield for that
//! version (or a miss), so polling another puller costs a small record on
//! the connection the chunks take, not a libp2p stream.
//!
//! Each side reads a connection on a thread of its own, with the chunk on
//! one core all the way: the server reads a request, reads the chunk, seals
//! and sends it; the client receives and decrypts (see docs/design.md for
//! what that saved). Only the client's requests are written by a task.

mod client;
mod handshake;
mod keyed;
mod reader;
mod record;
mod server;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub(crate) use client::{ip_of, DataClient, DataError};
pub(crate) use keyed::{Identity, Members};
pub(crate) use server::DataServer;

pub(super) const TICKET_TTL: Duration = Duration::from_secs(30);
/// Tickets outstanding at once; a node asking for more is refused.
pub(super) const MAX_TICKETS: usize = 1024;
/// Connecting, sending the ticket and getting the acknowledgement.
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Asking for a grant over the mesh.
pub(super) const GRANT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take to present its ticket.
pub(super) const TICKET_WAIT: Duration = Duration::from_secs(2);
/// Connections waiting for their ticket at once; more are closed at once
/// (anyone who can reach the port can open one).
pub(super) const UNPROVEN: usize = 128;
/// Of those, from one address at most.
pub(super) const UNPROVEN_PER_IP: usize = 16;
/// Tickets outstanding for one node, and connections served to one node,
/// at most: a puller needs one of each per holder, a few while one breaks.
pub(super) const PER_NODE: usize = 8;
/// Bytes one connection's keys seal at most; then the server closes it, and
/// the client asks for a new grant (new keys) on its next request.
pub(super) const KEY_BYTES: u64 = 64 << 30;
/// Connections being served at once, each by a thread of its own: one per
/// node pulling from this one, normally. More are closed at once.
pub(super) const SERVING: usize = 512;
/// A name in a request, at most.
pub(super) const MAX_NAME: usize = 4096;
/// An error in an answer, at most.
pub(super) const MAX_ERROR: usize = 1024;
/// A client connection with nothing to do for this long is closed.
pub(super) const IDLE: Duration = Duration::from_secs(30);
/// A server connection that hears nothing for this long is closed.
pub(super) const SERVER_IDLE: Duration = Duration::from_secs(60);
/// One chunk answer: how long the server may take once it is next in line.
pub(super) const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests queued on one client connection.
pub(super) const QUEUE: usize = 64;
/// A request record is a name, a hash, an index and a count.
pub(super) const MAX_REQUEST: usize = 64 * 1024;
/// An answer record: a run of chunks, news and the trailer.
pub(super) const MAX_ANSWER: usize =
    mm_store::manifest::CHUNK_SIZE as usize * mm_store::manifest::MAX_RUN + 4096 + NEWS_ROOM;
/// The most news an answer carries: its entries, `from` and the count.
pub(super) const NEWS_ROOM: usize = 4 * mm_store::transfer::MAX_NEWS + 8;
/// Set in an answer's kind when news come before the trailer.
pub(super) const WITH_NEWS: u8 = 0x80;
/// The most have-bits a poll's answer carries: a file of up to 2 TiB.
pub(super) const MAX_BITS: usize = MAX_ANSWER - NEWS_ROOM - 4096;
pub(super) const TAG: usize = 16;
/// Where a chunk starts in the server's record buffer: on a page boundary,
/// like the page cache it is copied from. A copy into a destination a few
/// bytes past the source's offset within a page hits 4K aliasing in the
/// CPU's string copy: on this machine, `pread` into a buffer at page offset
/// 4 ran at 2.7 GB/s, at offset 0 or 64 at 10 GB/s.
pub(super) const ANSWER_AT: usize = mm_store::buf::ALIGN;
pub(super) const ACK: &[u8] = b"mm data channel ok";
pub(super) const TRAILER: usize = 5;

/// What a node hands out over Noise to let another open a data connection.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Grant {
    pub(crate) port: u16,
    #[serde(with = "serde_bytes")]
    pub(crate) ticket: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub(crate) key: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct DataReq {
    pub(super) name: String,
    #[serde(with = "serde_bytes")]
    pub(super) root: Vec<u8>,
    pub(super) index: u32,
    // Required: a build without runs had another chunk size, and nodes of
    // different chunk sizes refuse each other's manifests anyway.
    pub(super) count: u32,
    /// The requester's count of this node's news heard so far; absent, no
    /// news (and none from an older node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) seen: Option<u32>,
    /// How far along the requester is ([`mm_store::Asker::progress`]);
    /// absent from an older node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) progress: Option<u16>,
    /// Pullers the requester could not reach ([`mm_store::Asker::gone`]);
    /// absent from an older node. Only valid node names among the first
    /// [`mm_store::MAX_GONE`] entries are kept (see [`some_names`]).
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "some_names"
    )]
    pub(super) gone: Vec<String>,
}

/// A list of node names as a request carries it: of the first
/// [`mm_store::MAX_GONE`] entries, those that are node names (an entry
/// that is no string makes the request malformed); the rest read past
/// without being kept (a request may hold thousands of empty strings
/// within its size limit).
fn some_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Names;
    impl<'de> serde::de::Visitor<'de> for Names {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a list of node names")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> Result<Vec<String>, A::Error> {
            let mut names = Vec::new();
            for _ in 0..mm_store::MAX_GONE {
                match seq.next_element::<String>()? {
                    Some(n) if mm_overlay::check_name(&n).is_ok() => names.push(n),
                    Some(_) => {}
                    None => return Ok(names),
                }
            }
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(names)
        }
    }
    d.deserialize_seq(Names)
}

/// Random bytes as records and answers: never a panic, and no record over
/// its limit is read.
#[cfg(test)]
pub(crate) fn fuzz_records(rng: &mut impl rand::Rng) {
    use mm_store::ChunkBuf;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    for _ in 0..3000 {
        let n = rng.gen_range(0..300);
        let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
        let mut s = record::Sealer::new(&[3u8; 32], b"client to server");
        let _ = rt.block_on(s.open(&mut &bytes[..], 100));
        let _ = record::answer(ChunkBuf::from(&bytes[..]), rng.gen());
        let _ = mm_overlay::wire::decode::<DataReq>(&bytes);
    }
    // A length far over the limit is refused before anything is read.
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 64]);
    let mut s = record::Sealer::new(&[3u8; 32], b"client to server");
    assert!(rt.block_on(s.open(&mut &huge[..], MAX_ANSWER)).is_err());
}
