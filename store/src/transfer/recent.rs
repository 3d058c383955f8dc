//! Chunks a puller wrote lately, kept in memory for the other pullers of
//! the same file. In a swarm the chunks asked of a puller are mostly the
//! ones it got last (the rarest), so most answers come from here. The rest
//! are read back with `O_DIRECT`: the partial file is written that way,
//! and a read through the page cache would fill fresh page cache memory,
//! which on a VM whose host takes freed memory back costs ten times a warm
//! copy (2.3 against 0.19 CPU-s per GiB, measured).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::buf::ChunkBuf;

/// Chunks kept per transfer (16 MiB): over half a second of a 200 Mbit/s
/// downlink, which is about how long a chunk stays the rarest.
const KEEP: usize = super::chunks(16 << 20);

/// Where chunk bytes sit in a buffer that arrived.
struct Piece {
    buf: Arc<ChunkBuf>,
    at: usize,
    len: usize,
}

#[derive(Default)]
pub(super) struct Recent {
    by_chunk: HashMap<usize, Piece>,
    order: VecDeque<usize>,
    /// Set once another node asked this node for the file: a lone puller
    /// keeps nothing.
    pub(super) on: bool,
}

impl Recent {
    /// Keeps chunk `idx`, bytes `at..at + len` of `buf`, dropping the
    /// oldest beyond [`KEEP`].
    pub(super) fn keep(&mut self, idx: usize, buf: &Arc<ChunkBuf>, at: usize, len: usize) {
        if !self.on {
            return;
        }
        let piece = Piece {
            buf: buf.clone(),
            at,
            len,
        };
        if self.by_chunk.insert(idx, piece).is_none() {
            self.order.push_back(idx);
        }
        while self.order.len() > KEEP {
            if let Some(old) = self.order.pop_front() {
                self.by_chunk.remove(&old);
            }
        }
    }

    /// Appends chunks `idx..idx + most` to `out`, as many in a row as are
    /// kept; how many.
    pub(super) fn copy(&self, idx: usize, most: usize, out: &mut ChunkBuf) -> usize {
        let mut n = 0;
        while n < most {
            let Some(p) = self.by_chunk.get(&(idx + n)) else {
                break;
            };
            out.extend_from_slice(&p.buf[p.at..p.at + p.len]);
            n += 1;
        }
        n
    }

    /// Forgets a chunk (found missing from the file again).
    pub(super) fn forget(&mut self, idx: usize) {
        self.by_chunk.remove(&idx);
        self.order.retain(|&i| i != idx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_chunks_once_asked_and_copies_runs() {
        let buf = Arc::new(ChunkBuf::from(&b"aabbcc"[..]));
        let mut r = Recent::default();
        r.keep(0, &buf, 0, 2);
        assert_eq!(r.copy(0, 1, &mut ChunkBuf::with_capacity(8)), 0, "off");
        r.on = true;
        for i in 0..3 {
            r.keep(i, &buf, 2 * i, 2);
        }
        let mut out = ChunkBuf::with_capacity(8);
        assert_eq!(r.copy(1, 4, &mut out), 2, "a run as far as kept");
        assert_eq!(&out[..], b"bbcc");
        r.forget(1);
        assert_eq!(r.copy(0, 4, &mut ChunkBuf::with_capacity(8)), 1);
        for i in 10..10 + KEEP {
            r.keep(i, &buf, 0, 2);
        }
        assert_eq!(r.order.len(), KEEP);
        assert_eq!(
            r.copy(0, 1, &mut ChunkBuf::with_capacity(8)),
            0,
            "oldest gone"
        );
    }
}
