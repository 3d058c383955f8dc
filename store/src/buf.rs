//! Chunk bytes in page-aligned buffers that are used again and again.
//!
//! Page-aligned, so that a puller can hand a whole chunk to the partial
//! file with `O_DIRECT`: the bytes go to the disk without a copy into the
//! page cache and without writeback later (the transfer syncs them anyway).
//! Pooled, because a fresh megabyte from the allocator often comes as
//! fresh pages, which the kernel must fault in and zero for every chunk:
//! about 7% of the CPU of a 1 GiB transfer before the pool.

use std::alloc::Layout;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Mutex;

/// What `O_DIRECT` asks of a buffer's address on any common block device.
pub const ALIGN: usize = 4096;
/// Buffers of each size kept for reuse. A transfer has a few dozen requests
/// in flight at most; more than that in the pool is memory nobody needs.
const POOL: usize = 64;
/// Smaller buffers (requests, acknowledgements) come and go through the
/// allocator: they cost nothing to fault in, and must not crowd chunk
/// buffers out of the pool.
const POOLED: usize = CHUNK / 2;
const CHUNK: usize = crate::manifest::CHUNK_SIZE as usize;
/// The pooled sizes: a chunk, and a run of chunks, each with the few pages
/// a record adds around it on either side. An ask from `POOLED` up gets the
/// smallest that fits, so that any pooled buffer of a size fits any ask of
/// that size; larger asks are allocated and freed as such.
const CLASSES: [usize; 2] = [
    CHUNK + 4 * ALIGN,
    CHUNK * crate::manifest::MAX_RUN + 4 * ALIGN,
];

static FREE: [Mutex<Vec<Raw>>; CLASSES.len()] = [const { Mutex::new(Vec::new()) }; CLASSES.len()];

/// The pool for buffers of `cap` bytes, if they are pooled.
fn class_of(cap: usize) -> Option<usize> {
    if cap < POOLED {
        return None;
    }
    CLASSES.iter().position(|&c| cap <= c)
}

/// An allocation of `cap` bytes at `ALIGN`.
struct Raw {
    ptr: NonNull<u8>,
    cap: usize,
}

// SAFETY: Raw owns its allocation exclusively; no shared state.
unsafe impl Send for Raw {}
// SAFETY: a shared Raw (through a shared ChunkBuf) only gives out `&[u8]`;
// writing needs `&mut`.
unsafe impl Sync for Raw {}

impl Raw {
    fn layout(cap: usize) -> Layout {
        Layout::from_size_align(cap, ALIGN).expect("a chunk buffer's size is far below isize::MAX")
    }

    fn new(cap: usize) -> Raw {
        let layout = Raw::layout(cap);
        // SAFETY: the layout's size is not zero.
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        Raw { ptr, cap }
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        // SAFETY: allocated in ChunkBuf::with_capacity with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Raw::layout(self.cap)) }
    }
}

/// A byte buffer whose data starts on a page boundary.
pub struct ChunkBuf {
    raw: Option<Raw>,
    len: usize,
}

impl ChunkBuf {
    /// An empty buffer for at least `cap` bytes (from the pool if one fits).
    pub fn with_capacity(cap: usize) -> ChunkBuf {
        let class = class_of(cap);
        let cap = class.map_or(cap.max(1), |k| CLASSES[k]);
        let reused = class.and_then(|k| FREE[k].lock().unwrap_or_else(|e| e.into_inner()).pop());
        let raw = reused.unwrap_or_else(|| Raw::new(cap));
        ChunkBuf {
            raw: Some(raw),
            len: 0,
        }
    }

    fn raw(&self) -> &Raw {
        self.raw.as_ref().expect("taken only in drop")
    }

    /// The room after the bytes, to be filled (then [`ChunkBuf::filled`]).
    pub fn spare(&mut self) -> &mut [MaybeUninit<u8>] {
        let (ptr, cap) = (self.raw().ptr, self.raw().cap);
        // SAFETY: the allocation holds `cap` bytes; MaybeUninit needs no
        // initialisation, and `&mut self` makes this the only reference.
        unsafe {
            std::slice::from_raw_parts_mut(
                ptr.as_ptr().add(self.len).cast::<MaybeUninit<u8>>(),
                cap - self.len,
            )
        }
    }

    /// Counts `n` more bytes of [`ChunkBuf::spare`] as written.
    ///
    /// # Safety
    /// The first `n` bytes of `spare()` must have been initialised.
    pub unsafe fn filled(&mut self, n: usize) {
        assert!(n <= self.raw().cap - self.len);
        self.len += n;
    }

    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn extend_from_slice(&mut self, more: &[u8]) {
        let spare = self.spare();
        assert!(more.len() <= spare.len(), "a chunk buffer does not grow");
        // SAFETY: `spare` has room for `more`, and the two cannot overlap
        // (`more` is borrowed while `self` is borrowed mutably).
        unsafe {
            std::ptr::copy_nonoverlapping(more.as_ptr(), spare.as_mut_ptr().cast(), more.len());
            self.filled(more.len());
        }
    }

    /// Appends `len` bytes of `file` from offset `off`.
    pub fn read_at(&mut self, file: &std::fs::File, off: u64, len: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let spare = self.spare();
        assert!(len <= spare.len(), "a chunk buffer does not grow");
        let mut done = 0;
        while done < len {
            let at = libc::off64_t::try_from(off + done as u64).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "an offset out of range")
            })?;
            // SAFETY: pread writes at most `len - done` bytes into the
            // spare room, which holds at least `len`.
            let n = unsafe {
                libc::pread64(
                    file.as_raw_fd(),
                    spare[done..].as_mut_ptr().cast(),
                    len - done,
                    at,
                )
            };
            match n {
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file is shorter than its manifest says",
                    ))
                }
                n if n < 0 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
                n => done += n as usize,
            }
        }
        // SAFETY: pread filled the first `len` bytes.
        unsafe { self.filled(len) };
        Ok(())
    }
}

impl From<&[u8]> for ChunkBuf {
    fn from(bytes: &[u8]) -> ChunkBuf {
        let mut b = ChunkBuf::with_capacity(bytes.len());
        b.extend_from_slice(bytes);
        b
    }
}

impl Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the first `len` bytes are initialised.
        unsafe { std::slice::from_raw_parts(self.raw().ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in deref; `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.raw().ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkBuf({} bytes)", self.len)
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        let Some(raw) = self.raw.take() else { return };
        if let Some(k) = class_of(raw.cap).filter(|&k| CLASSES[k] == raw.cap) {
            let mut free = FREE[k].lock().unwrap_or_else(|e| e.into_inner());
            if free.len() < POOL {
                free.push(raw);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_reused_and_hold_their_bytes() {
        let mut a = ChunkBuf::with_capacity(3 * ALIGN);
        assert_eq!(a.as_ptr() as usize % ALIGN, 0);
        a.extend_from_slice(&[7u8; 100]);
        assert_eq!(&a[..], &[7u8; 100][..]);
        a.extend_from_slice(&[1u8; ALIGN - 100]);
        assert_eq!(a.len(), ALIGN);
        a.truncate(5);
        assert_eq!(&a[..], &[7u8; 5][..]);
        let b = ChunkBuf::from(&b"abc"[..]);
        assert_eq!(&b[..], b"abc");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let mut r = ChunkBuf::with_capacity(16);
        r.read_at(&f, 2, 5).unwrap();
        assert_eq!(&r[..], b"23456");
        assert!(r.read_at(&f, 8, 5).is_err(), "past the end");
        let mut big = ChunkBuf::with_capacity(POOLED + 1);
        big.extend_from_slice(b"old bytes");
        assert_eq!(big.raw().cap, CLASSES[0]);
        drop(big);
        // A chunk-sized buffer goes back to the pool, and comes out empty.
        let again = ChunkBuf::with_capacity(POOLED);
        assert!(again.is_empty());
        assert_eq!(again.as_ptr() as usize % ALIGN, 0);
        // A run needs the larger size.
        let run = ChunkBuf::with_capacity(CLASSES[0] + 1);
        assert_eq!(run.raw().cap, CLASSES[1]);
        assert_eq!(run.as_ptr() as usize % ALIGN, 0);
    }
}
