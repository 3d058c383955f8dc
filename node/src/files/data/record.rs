//! Records: `[u32 BE length][ciphertext][16-byte tag]`, the length being
//! the associated data, each direction with its own AES-256-GCM key and a
//! counter nonce; and the answer trailer that says what an answer is.

use std::sync::Arc;

use mm_store::{ChunkBuf, Miss, News, Reply};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::reader::FdReader;
use super::{TAG, TRAILER, WITH_NEWS};

/// One direction of a connection: its key and the next nonce.
pub(super) struct Sealer {
    key: Arc<LessSafeKey>,
    counter: u64,
}

impl Sealer {
    pub(super) fn new(secret: &[u8], direction: &[u8]) -> Sealer {
        // One secret, two keys: the two directions never share a nonce.
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"mm data channel v1");
        let prk = salt.extract(secret);
        let info = [direction];
        let okm = prk
            .expand(&info, &AES_256_GCM)
            .expect("AES-256 key length is a valid HKDF output");
        Sealer {
            key: Arc::new(LessSafeKey::new(UnboundKey::from(okm))),
            counter: 0,
        }
    }

    fn next_nonce(&mut self) -> Nonce {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.counter.to_be_bytes());
        self.counter += 1;
        Nonce::assume_unique_for_key(n)
    }

    /// Turns `record[start..]` (plaintext after 4 bytes of room) into a
    /// whole record, in place, with the next nonce.
    pub(super) fn seal(&mut self, record: &mut ChunkBuf, start: usize) {
        let nonce = self.next_nonce();
        let len = (record.len() - start - 4 + TAG) as u32;
        record[start..start + 4].copy_from_slice(&len.to_be_bytes());
        let (head, body) = record[start..].split_at_mut(4);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(&*head), body)
            .expect("records are far below the AES-GCM limit");
        record.extend_from_slice(tag.as_ref());
    }

    /// Reads one small record from a task: the handshake's acknowledgement.
    /// (Chunks are read by [`Sealer::open_blocking`], on a thread.)
    pub(super) async fn open<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
        max: usize,
    ) -> std::io::Result<ChunkBuf> {
        let mut head = [0u8; 4];
        r.read_exact(&mut head).await?;
        let mut buf = ChunkBuf::from(&vec![0u8; record_len(head, max)?][..]);
        r.read_exact(&mut buf).await?;
        self.unseal(head, buf)
    }

    /// Reads one record on a data connection's thread; returns its
    /// plaintext (page-aligned: a chunk can go to disk from this buffer).
    pub(super) fn open_blocking(
        &mut self,
        r: &mut FdReader,
        max: usize,
    ) -> std::io::Result<ChunkBuf> {
        r.start();
        let mut head = [0u8; 4];
        r.read_exact(&mut head)?;
        let len = record_len(head, max)?;
        let mut buf = ChunkBuf::with_capacity(len);
        r.read_into(&mut buf, len)?;
        self.unseal(head, buf)
    }

    /// Checks and decrypts a record's body in place.
    fn unseal(&mut self, head: [u8; 4], mut buf: ChunkBuf) -> std::io::Result<ChunkBuf> {
        let nonce = self.next_nonce();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(&head), &mut buf)
            .map_err(|_| bad("a record that does not authenticate".into()))?
            .len();
        buf.truncate(plain);
        Ok(buf)
    }
}

/// A record's length from its head, if within `max` bytes of plaintext.
fn record_len(head: [u8; 4], max: usize) -> std::io::Result<usize> {
    let len = u32::from_be_bytes(head) as usize;
    if !(TAG..=max + TAG).contains(&len) {
        return Err(bad(format!("a record of {len} bytes")));
    }
    Ok(len)
}

pub(super) fn bad(what: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("data channel: {what}"),
    )
}

/// Splits an answer's trailer and news off. The error breaks the
/// connection; a miss in the reply is the server's answer to this request
/// alone.
pub(super) type Answer = Result<Reply, String>;

/// Answer kinds, in the trailer.
pub(super) const KIND_CHUNK: u8 = 0;
pub(super) const KIND_FAILED: u8 = 1;
pub(super) const KIND_NOT_YET: u8 = 2;
pub(super) const KIND_REDIRECT: u8 = 3;
/// The server does not hold that version (any more).
pub(super) const KIND_GONE: u8 = 4;
/// The server's have-bitfield, the answer to a have poll (no chunks asked).
pub(super) const KIND_BITS: u8 = 5;

pub(super) fn answer(mut plain: ChunkBuf, want: u32) -> Answer {
    if plain.len() < TRAILER {
        return Err("data channel: a short answer".into());
    }
    let t = plain.len() - TRAILER;
    let index = u32::from_be_bytes(plain[t + 1..].try_into().expect("4 bytes"));
    let kind = plain[t];
    plain.truncate(t);
    if index != want {
        return Err(format!(
            "data channel: answer for chunk {index}, expected {want}"
        ));
    }
    let news = if kind & WITH_NEWS != 0 {
        Some(news(&mut plain)?)
    } else {
        None
    };
    let text = || String::from_utf8_lossy(&plain).into_owned();
    let chunks = match kind & !WITH_NEWS {
        KIND_CHUNK | KIND_BITS => Ok(plain),
        KIND_FAILED => Err(Miss::Failed(text())),
        KIND_NOT_YET => Err(Miss::NotYet),
        KIND_REDIRECT => Err(Miss::Redirect(text())),
        KIND_GONE => Err(Miss::Gone(text())),
        k => return Err(format!("data channel: an answer of unknown kind {k}")),
    };
    Ok(Reply { chunks, news })
}

/// Takes the news off the end of an answer's body.
fn news(plain: &mut ChunkBuf) -> Result<News, String> {
    let short = || "data channel: an answer with broken news".to_string();
    let len = plain.len();
    if len < 8 {
        return Err(short());
    }
    let word = |at: usize| u32::from_be_bytes(plain[at..at + 4].try_into().expect("4 bytes"));
    let (from, count) = (word(len - 8), word(len - 4) as usize);
    if count > mm_store::transfer::MAX_NEWS || 4 * count > len - 8 {
        return Err(short());
    }
    let start = len - 8 - 4 * count;
    let chunks = (0..count).map(|k| word(start + 4 * k)).collect();
    plain.truncate(start);
    Ok(News { from, chunks })
}

/// Sealers and records for the tests of this module and its neighbours.
#[cfg(test)]
pub(super) mod testing {
    use super::*;

    pub(in crate::files::data) fn pair() -> (Sealer, Sealer) {
        let secret = [9u8; 32];
        (
            Sealer::new(&secret, b"client to server"),
            Sealer::new(&secret, b"client to server"),
        )
    }

    pub(in crate::files::data) fn record(plain: &[u8]) -> ChunkBuf {
        let mut r = ChunkBuf::with_capacity(4 + plain.len() + TAG);
        r.extend_from_slice(&[0u8; 4]);
        r.extend_from_slice(plain);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{pair, record};
    use super::*;
    use crate::files::data::MAX_ANSWER;

    fn buf(bytes: &[u8]) -> ChunkBuf {
        ChunkBuf::from(bytes)
    }

    #[tokio::test]
    async fn records_round_trip_in_order() {
        let (mut tx, mut rx) = pair();
        let mut wire = Vec::new();
        for msg in [&b"one"[..], b"", &[7u8; 70_000]] {
            let mut r = record(msg);
            tx.seal(&mut r, 0);
            wire.extend_from_slice(&r);
        }
        let mut rd = &wire[..];
        assert_eq!(&rx.open(&mut rd, MAX_ANSWER).await.unwrap()[..], b"one");
        assert!(rx.open(&mut rd, MAX_ANSWER).await.unwrap().is_empty());
        assert_eq!(
            &rx.open(&mut rd, MAX_ANSWER).await.unwrap()[..],
            &[7u8; 70_000][..]
        );
    }

    #[tokio::test]
    async fn tampered_replayed_or_misdirected_records_fail() {
        let (mut tx, mut rx) = pair();
        let mut r = record(b"chunk bytes");
        tx.seal(&mut r, 0);
        let mut flipped = r.to_vec();
        flipped[6] ^= 1;
        assert!(rx.open(&mut &flipped[..], 100).await.is_err());
        // A fresh opener at nonce 0 takes the genuine record...
        let (_, mut rx) = pair();
        assert!(rx.open(&mut &r[..], 100).await.is_ok());
        // ...but not a replay of it at nonce 1.
        assert!(rx.open(&mut &r[..], 100).await.is_err());
        // The other direction's key does not open it.
        let mut other = Sealer::new(&[9u8; 32], b"server to client");
        assert!(other.open(&mut &r[..], 100).await.is_err());
        // A length over the limit is refused before anything is allocated.
        let mut huge = r.to_vec();
        huge[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        let (_, mut rx) = pair();
        assert!(rx.open(&mut &huge[..], 100).await.is_err());
    }

    #[test]
    fn answers_carry_their_index_and_kind() {
        let mut ok = b"data".to_vec();
        ok.push(0);
        ok.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(&answer(buf(&ok), 5).unwrap().chunks.unwrap()[..], b"data");
        assert!(
            answer(buf(&ok), 6).is_err(),
            "an answer out of line breaks the stream"
        );
        let mut err = b"not here".to_vec();
        err.push(1);
        err.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(
            answer(buf(&err), 5).unwrap().chunks.unwrap_err(),
            Miss::Failed("not here".into())
        );
        let mut redirect = b"h3".to_vec();
        redirect.push(KIND_REDIRECT);
        redirect.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(
            answer(buf(&redirect), 5).unwrap().chunks.unwrap_err(),
            Miss::Redirect("h3".into())
        );
        let mut not_yet = vec![KIND_NOT_YET];
        not_yet.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(
            answer(buf(&not_yet), 5).unwrap().chunks.unwrap_err(),
            Miss::NotYet
        );
        assert!(answer(buf(&[1, 2]), 0).is_err());
        // News behind the body, before the trailer.
        let mut with = b"data".to_vec();
        for w in [7u32, 9, 2, 2] {
            with.extend_from_slice(&w.to_be_bytes());
        }
        with.push(KIND_CHUNK | WITH_NEWS);
        with.extend_from_slice(&5u32.to_be_bytes());
        let r = answer(buf(&with), 5).unwrap();
        assert_eq!(&r.chunks.unwrap()[..], b"data");
        assert_eq!(
            r.news,
            Some(News {
                from: 2,
                chunks: vec![7, 9]
            })
        );
        // News that claim more entries than the answer holds, or more than
        // any answer may: the stream is broken.
        for count in [3u32, u32::MAX] {
            let mut lie = 7u32.to_be_bytes().to_vec();
            lie.extend_from_slice(&0u32.to_be_bytes());
            lie.extend_from_slice(&count.to_be_bytes());
            lie.push(KIND_NOT_YET | WITH_NEWS);
            lie.extend_from_slice(&5u32.to_be_bytes());
            assert!(answer(buf(&lie), 5).is_err(), "{count}");
        }
    }
}
