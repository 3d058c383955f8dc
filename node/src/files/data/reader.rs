//! Reading a socket from a thread by its descriptor, with a deadline per
//! record.

use std::time::{Duration, Instant};

use mm_store::ChunkBuf;

/// Reads a socket by its descriptor from a thread, giving each record at
/// most `wait` from its first byte on (a peer that trickles cannot hold a
/// thread for longer); the same for a blocking or a non-blocking socket.
pub(super) struct FdReader {
    fd: std::os::fd::RawFd,
    wait: Duration,
    deadline: Instant,
    /// The socket's SO_RCVLOWAT as last set (0: never set, the kernel's 1).
    lowat: i32,
}

/// Bytes a wait for more data waits for at most: on a rate-capped link a
/// chunk trickles in a packet or two at a time, and a wake-up for each
/// cost more than the copy (a lone pull at 200 Mbit/s spent 2.5 CPU-s per
/// GiB against 0.8 uncapped). A chunk (256 KiB) is one wake-up: at 64 KiB
/// the 15-puller bench's readers blocked 3.3 times per chunk, and the
/// swarm cost 5% more CPU per GiB. The kernel grows the receive buffer to
/// twice this, so a sender is never held back by it.
const LOWAT: usize = 256 * 1024;

impl FdReader {
    pub(super) fn new(fd: std::os::fd::RawFd, wait: Duration) -> FdReader {
        FdReader {
            fd,
            wait,
            deadline: Instant::now() + wait,
            lowat: 0,
        }
    }

    /// A new record: a new deadline.
    pub(super) fn start(&mut self) {
        self.deadline = Instant::now() + self.wait;
    }

    /// What is there already, without waiting: none if nothing is (or a
    /// signal came first).
    fn try_recv(&self, to: *mut u8, len: usize) -> std::io::Result<Option<usize>> {
        use std::io::ErrorKind::{Interrupted, WouldBlock};
        // SAFETY: the caller's room holds `len` bytes.
        let n = unsafe { libc::recv(self.fd, to.cast(), len, libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = std::io::Error::last_os_error();
        if matches!(e.kind(), Interrupted | WouldBlock) {
            Ok(None)
        } else {
            Err(e)
        }
    }

    fn read(&mut self, to: *mut u8, len: usize) -> std::io::Result<usize> {
        use std::io::ErrorKind::{Interrupted, TimedOut};
        // What is there already, without a poll first.
        if let Some(n) = self.try_recv(to, len)? {
            return Ok(n);
        }
        // Then wake when a good part of what is due has come: never more
        // than is due, so a record's end is never waited past.
        let lowat = len.min(LOWAT) as i32;
        if lowat != self.lowat {
            // SAFETY: an int option on a descriptor we read. A socket that
            // takes no low mark (not TCP) just wakes sooner.
            unsafe {
                libc::setsockopt(
                    self.fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVLOWAT,
                    (&lowat as *const i32).cast(),
                    std::mem::size_of::<i32>() as libc::socklen_t,
                )
            };
            self.lowat = lowat;
        }
        loop {
            let mut p = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let left = self.deadline.saturating_duration_since(Instant::now());
            // Rounded up: a wait of less than a millisecond must not spin.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            match unsafe { libc::poll(&mut p, 1, ms) } {
                0 => return Err(TimedOut.into()),
                rc if rc < 0 => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != Interrupted {
                        return Err(e);
                    }
                    continue;
                }
                _ => {}
            }
            if let Some(n) = self.try_recv(to, len)? {
                return Ok(n);
            }
        }
    }

    pub(super) fn read_exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < out.len() {
            match self.read(out[done..].as_mut_ptr(), out.len() - done)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => done += n,
            }
        }
        Ok(())
    }

    /// Appends exactly `n` bytes to `buf`, into its spare room.
    pub(super) fn read_into(&mut self, buf: &mut ChunkBuf, n: usize) -> std::io::Result<()> {
        let want = buf.len() + n;
        while buf.len() < want {
            let left = want - buf.len();
            let room = &mut buf.spare()[..left];
            match self.read(room.as_mut_ptr().cast(), room.len())? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                // SAFETY: read(2) initialised the first `got` bytes.
                got => unsafe { buf.filled(got) },
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::data::record::testing::{pair, record};
    use crate::files::data::MAX_ANSWER;

    #[test]
    fn a_thread_reads_records_and_gives_up_on_silence() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let (mut tx, mut rx) = pair();
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut r = record(&[5u8; 100_000]);
        tx.seal(&mut r, 0);
        // In two pieces, the second after a pause: the reader waits for it.
        let (first, second) = r.split_at(1000);
        b.write_all(first).unwrap();
        let rest = second.to_vec();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            b.write_all(&rest).unwrap();
            b
        });
        let mut from = FdReader::new(a.as_raw_fd(), Duration::from_secs(5));
        let got = rx.open_blocking(&mut from, MAX_ANSWER).unwrap();
        assert_eq!(&got[..], &[5u8; 100_000][..]);
        let peer = writer.join().unwrap();
        // Nothing more comes: a timeout, not a hang.
        let mut quiet = FdReader::new(a.as_raw_fd(), Duration::from_millis(100));
        let e = rx.open_blocking(&mut quiet, MAX_ANSWER).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        // The peer gone: end of stream.
        drop(peer);
        let e = rx.open_blocking(&mut from, MAX_ANSWER).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
