//! The data channel: chunk bytes between two nodes on a TCP connection of
//! their own, sealed with AES-256-GCM under a key handed over the mesh's
//! Noise channel.
//!
//! Why not the libp2p connection: Noise's ChaCha20-Poly1305 and yamux run in
//! one task per connection and cost about 1 CPU-second per GiB on each side,
//! which caps a transfer at a fraction of what the wire can do. AES-GCM with
//! AES-NI runs at ~9 GB/s here, and a plain TCP socket adds no framing
//! copies. The security argument stays the mesh's: a key and a one-time
//! ticket are only ever sent over Noise (and the cluster key, if any) to an
//! authenticated node, the ticket opens one connection within
//! [`TICKET_TTL`], and every record is authenticated, so a stranger can
//! neither read nor inject chunk bytes. (Content is verified against the
//! manifest's blake3 hashes on top of that.)
//!
//! Wire, after the client sends the 16-byte ticket: records of
//! `[u32 BE length][ciphertext][16-byte tag]`, the length bytes being the
//! associated data, each direction with its own key and a counter nonce.
//! The server's first record is an acknowledgement, which proves to the
//! client that it reached the node holding the key. Then the client sends
//! requests (CBOR [`DataReq`]) and the server answers each, in order, with
//! `body || kind (1 byte) || index (u32 BE)`: kind 0 is the chunk, kind 1 an
//! error message, 2 "not yet", 3 a redirect.
//!
//! Each side reads a connection on a thread of its own, with the chunk on
//! one core all the way: the server reads a request, reads the chunk, seals
//! and sends it; the client receives and decrypts (see docs/design.md for
//! what that saved). Only the client's requests are written by a task.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mm_overlay::{wire, Overlay};
use mm_store::transfer::Miss;
use mm_store::{ChunkBuf, Engine};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::proto::Request;

/// How long a ticket can wait for its connection.
const TICKET_TTL: Duration = Duration::from_secs(30);
/// Tickets outstanding at once; a node asking for more is refused.
const MAX_TICKETS: usize = 1024;
/// Connecting, sending the ticket and getting the acknowledgement.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Asking for a grant over the mesh.
const GRANT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new connection may take to present its ticket.
const TICKET_WAIT: Duration = Duration::from_secs(2);
/// Connections waiting for their ticket at once; more are closed at once
/// (anyone who can reach the port can open one).
const UNPROVEN: usize = 128;
/// Connections being served at once, each by a thread of its own: one per
/// node pulling from this one, normally. More are closed at once.
const SERVING: usize = 512;
/// A name in a request, at most.
const MAX_NAME: usize = 4096;
/// An error in an answer, at most.
const MAX_ERROR: usize = 1024;
/// A client connection with nothing to do for this long is closed.
const IDLE: Duration = Duration::from_secs(30);
/// A server connection that hears nothing for this long is closed.
const SERVER_IDLE: Duration = Duration::from_secs(600);
/// One chunk answer: how long the server may take once it is next in line.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(120);
/// Requests queued on one client connection.
const QUEUE: usize = 64;
/// A request record is a name, a hash, an index and a count.
const MAX_REQUEST: usize = 64 * 1024;
/// An answer record: a run of chunks and the trailer.
const MAX_ANSWER: usize =
    mm_store::manifest::CHUNK_SIZE as usize * mm_store::manifest::MAX_RUN + 4096;
const TAG: usize = 16;
/// Where a chunk starts in the server's record buffer: on a page boundary,
/// like the page cache it is copied from. A copy into a destination a few
/// bytes past the source's offset within a page hits 4K aliasing in the
/// CPU's string copy: on this machine, `pread` into a buffer at page offset
/// 4 ran at 2.7 GB/s, at offset 0 or 64 at 10 GB/s.
const ANSWER_AT: usize = mm_store::buf::ALIGN;
const ACK: &[u8] = b"mm data channel ok";
const TRAILER: usize = 5;

/// What a node hands out over Noise to let another open a data connection.
#[derive(Debug, Serialize, Deserialize)]
pub struct Grant {
    pub port: u16,
    #[serde(with = "serde_bytes")]
    pub ticket: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
struct DataReq {
    name: String,
    #[serde(with = "serde_bytes")]
    root: Vec<u8>,
    index: u32,
    // Required: a build without runs had another chunk size, and nodes of
    // different chunk sizes refuse each other's manifests anyway.
    count: u32,
}

/// One direction of a connection: its key and the next nonce.
struct Sealer {
    key: Arc<LessSafeKey>,
    counter: u64,
}

impl Sealer {
    fn new(secret: &[u8], direction: &[u8]) -> Sealer {
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
    fn seal(&mut self, record: &mut ChunkBuf, start: usize) {
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
    async fn open<R: AsyncRead + Unpin>(
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
    fn open_blocking(&mut self, r: &mut FdReader, max: usize) -> std::io::Result<ChunkBuf> {
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

/// Reads a socket by its descriptor from a thread, giving each record at
/// most `wait` from its first byte on (a peer that trickles cannot hold a
/// thread for longer); the same for a blocking or a non-blocking socket.
struct FdReader {
    fd: std::os::fd::RawFd,
    wait: Duration,
    deadline: Instant,
}

impl FdReader {
    fn new(fd: std::os::fd::RawFd, wait: Duration) -> FdReader {
        FdReader {
            fd,
            wait,
            deadline: Instant::now() + wait,
        }
    }

    /// A new record: a new deadline.
    fn start(&mut self) {
        self.deadline = Instant::now() + self.wait;
    }

    fn read(&mut self, to: *mut u8, len: usize) -> std::io::Result<usize> {
        use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
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
            // SAFETY: the caller's room holds `len` bytes.
            let n = unsafe { libc::read(self.fd, to.cast(), len) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = std::io::Error::last_os_error();
            if !matches!(e.kind(), Interrupted | WouldBlock) {
                return Err(e);
            }
        }
    }

    fn read_exact(&mut self, out: &mut [u8]) -> std::io::Result<()> {
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
    fn read_into(&mut self, buf: &mut ChunkBuf, n: usize) -> std::io::Result<()> {
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

fn bad(what: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("data channel: {what}"),
    )
}

struct Ticket {
    secret: [u8; 32],
    host: String,
    issued: Instant,
}

/// The serving side: a listener, and the tickets handed out.
pub struct DataServer {
    port: u16,
    engine: Arc<Engine>,
    serving: Arc<tokio::sync::Semaphore>,
    tickets: Mutex<HashMap<[u8; 16], Ticket>>,
    rng: SystemRandom,
}

impl DataServer {
    /// Listens on `ip:port` (0 picks a free port) and serves from `engine`.
    pub async fn start(ip: IpAddr, port: u16, engine: Arc<Engine>) -> Result<Arc<Self>, String> {
        let listener = TcpListener::bind(SocketAddr::new(ip, port))
            .await
            .map_err(|e| format!("data channel: cannot listen on {ip}:{port}: {e} (choose another port with --data-port)"))?;
        let port = listener.local_addr().map_err(|e| e.to_string())?.port();
        let me = Arc::new(DataServer {
            port,
            engine,
            serving: Arc::new(tokio::sync::Semaphore::new(SERVING)),
            tickets: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        });
        tokio::spawn(me.clone().accept(listener));
        Ok(me)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn tickets(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], Ticket>> {
        self.tickets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A one-time ticket and key for `host`, to be sent over Noise.
    pub fn grant(&self, host: &str) -> Result<Grant, String> {
        let mut ticket = [0u8; 16];
        let mut secret = [0u8; 32];
        self.rng
            .fill(&mut ticket)
            .and_then(|_| self.rng.fill(&mut secret))
            .map_err(|_| "no randomness for a data channel key".to_string())?;
        let mut tickets = self.tickets();
        tickets.retain(|_, t| t.issued.elapsed() < TICKET_TTL);
        if tickets.len() >= MAX_TICKETS {
            return Err("too many data connections being set up; try again".into());
        }
        tickets.insert(
            ticket,
            Ticket {
                secret,
                host: host.to_string(),
                issued: Instant::now(),
            },
        );
        Ok(Grant {
            port: self.port,
            ticket: ticket.to_vec(),
            key: secret.to_vec(),
        })
    }

    async fn accept(self: Arc<Self>, listener: TcpListener) {
        let unproven = Arc::new(tokio::sync::Semaphore::new(UNPROVEN));
        loop {
            match listener.accept().await {
                Ok((stream, addr)) => {
                    let Ok(permit) = unproven.clone().try_acquire_owned() else {
                        debug!("data connection from {addr} closed: too many without a ticket");
                        continue;
                    };
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.serve(stream, permit).await {
                            debug!("data connection from {addr}: {e}");
                        }
                    });
                }
                Err(e) => {
                    // Out of descriptors, typically: wait rather than spin.
                    warn!("data channel: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        unproven: tokio::sync::OwnedSemaphorePermit,
    ) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let mut ticket = [0u8; 16];
        tokio::time::timeout(TICKET_WAIT, rd.read_exact(&mut ticket))
            .await
            .map_err(|_| bad("no ticket".into()))??;
        let t = self
            .tickets()
            .remove(&ticket)
            .filter(|t| t.issued.elapsed() < TICKET_TTL)
            .ok_or_else(|| bad("an unknown or expired ticket".into()))?;
        // Proven: no longer counts against the connections still waiting.
        drop(unproven);
        let Ok(serving) = self.serving.clone().try_acquire_owned() else {
            return Err(bad(format!(
                "{SERVING} data connections are open already; {} is refused",
                t.host
            )));
        };
        let opener = Sealer::new(&t.secret, b"client to server");
        let mut sealer = Sealer::new(&t.secret, b"server to client");
        let mut ack = ChunkBuf::with_capacity(4 + ACK.len() + TAG);
        ack.extend_from_slice(&[0u8; 4]);
        ack.extend_from_slice(ACK);
        sealer.seal(&mut ack, 0);
        wr.write_all(&ack).await?;
        debug!("data connection from {} open", t.host);

        // From here on, one thread per connection with blocking I/O: it
        // reads a request, reads the chunk into its record, seals it and
        // sends it, so a chunk is touched by one core from the page cache
        // to the socket, and no task hands it to another. Requests are
        // pipelined by the client; the socket buffer overlaps the rest.
        let stream = rd.reunite(wr).map_err(|e| bad(e.to_string()))?.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        let engine = self.engine.clone();
        std::thread::Builder::new()
            .name("mm-data".into())
            .spawn(move || {
                let _serving = serving;
                if let Err(e) = serve_blocking(&engine, &t.host, stream, opener, sealer) {
                    debug!("data connection from {}: {e}", t.host);
                }
            })?;
        Ok(())
    }
}

/// Answers requests on `stream` until the client closes it (or is idle
/// for [`SERVER_IDLE`]).
fn serve_blocking(
    engine: &Engine,
    from: &str,
    mut stream: std::net::TcpStream,
    mut opener: Sealer,
    mut sealer: Sealer,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut rd = FdReader::new(stream.as_raw_fd(), SERVER_IDLE);
    loop {
        let plain = match opener.open_blocking(&mut rd, MAX_REQUEST) {
            Ok(p) => p,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let req: DataReq = wire::decode(&plain).map_err(bad)?;
        let record = answer_record(engine, from, &req, &mut sealer);
        stream.write_all(&record[ANSWER_AT - 4..])?;
    }
}

/// The sealed answer to `req`: the chunk, or why not.
fn answer_record(engine: &Engine, from: &str, req: &DataReq, sealer: &mut Sealer) -> ChunkBuf {
    let mut record = ChunkBuf::with_capacity(ANSWER_AT + MAX_ANSWER + TAG);
    record.extend_from_slice(&[0u8; ANSWER_AT]);
    let read = if req.name.len() > MAX_NAME {
        Err(Miss::Failed("a name too long".into()))
    } else {
        let (index, count) = (req.index as usize, req.count as usize);
        engine.read_chunk(from, &req.name, &req.root, index, count, &mut record)
    };
    let kind = match read {
        Ok(()) => KIND_CHUNK,
        Err(miss) => {
            record.truncate(ANSWER_AT);
            let (kind, text) = match miss {
                Miss::NotYet => (KIND_NOT_YET, String::new()),
                Miss::Redirect(h) => (KIND_REDIRECT, h),
                Miss::Failed(e) | Miss::Lost(e) => (KIND_FAILED, e),
            };
            // The text repeats the name asked for: keep it within what the
            // other side accepts.
            let mut end = text.len().min(MAX_ERROR);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            record.extend_from_slice(&text.as_bytes()[..end]);
            kind
        }
    };
    record.extend_from_slice(&[kind]);
    record.extend_from_slice(&req.index.to_be_bytes());
    sealer.seal(&mut record, ANSWER_AT - 4);
    record
}

/// A request waiting for its answer, in line.
struct Waiting {
    index: u32,
    reply: oneshot::Sender<Result<ChunkBuf, Miss>>,
}

struct Job {
    req: Vec<u8>,
    waiting: Waiting,
}

/// One open client connection.
struct Conn {
    tx: mpsc::Sender<Job>,
    dead: Arc<AtomicBool>,
}

/// One serving node's connection, opened on demand; its lock is held while
/// one is being set up, so a burst of requests opens one connection, and a
/// slow setup for one node holds up no other.
type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

/// The pulling side: one connection per serving node, opened on demand.
pub struct DataClient {
    overlay: Overlay,
    conns: Mutex<HashMap<String, Slot>>,
    /// Per node: the round trip of its data channel handshake.
    rtts: Mutex<HashMap<String, Duration>>,
    fallback: Fallback,
}

/// Why a chunk did not come over the data channel.
pub enum DataError {
    /// No data connection can be had for now (logged): use another way.
    Setup,
    /// The server's answer to this request, or a broken connection.
    Miss(Miss),
}

impl DataClient {
    pub fn new(overlay: Overlay) -> DataClient {
        DataClient {
            overlay,
            conns: Mutex::new(HashMap::new()),
            rtts: Mutex::new(HashMap::new()),
            fallback: Fallback::default(),
        }
    }

    pub fn rtt(&self, host: &str) -> Option<Duration> {
        self.rtts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .copied()
    }

    pub async fn chunk(
        &self,
        host: &str,
        name: String,
        root: Vec<u8>,
        index: u32,
        count: u32,
    ) -> Result<ChunkBuf, DataError> {
        let req = wire::encode(&DataReq {
            name,
            root,
            index,
            count,
        });
        let (reply, answer) = oneshot::channel();
        let mut job = Job {
            req,
            waiting: Waiting { index, reply },
        };
        // An idle connection may close just as it is picked: then once more
        // on a fresh one.
        for _ in 0..2 {
            let tx = self.conn(host).await?;
            match tx.send(job).await {
                Ok(()) => {
                    return match answer.await {
                        Ok(r) => r.map_err(DataError::Miss),
                        Err(_) => Err(lost("data connection closed".into())),
                    };
                }
                Err(mpsc::error::SendError(j)) => job = j,
            }
        }
        Err(lost("data connection keeps closing".into()))
    }

    async fn conn(&self, host: &str) -> Result<mpsc::Sender<Job>, DataError> {
        let slot = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if !c.dead.load(Ordering::SeqCst) && !c.tx.is_closed() {
                return Ok(c.tx.clone());
            }
        }
        *slot = None;
        // Checked under the slot's lock: requests that queued behind a
        // failed setup go the other way at once instead of trying again.
        if self.fallback.active(host) {
            return Err(DataError::Setup);
        }
        match self.open(host).await {
            Ok(conn) => {
                let tx = conn.tx.clone();
                *slot = Some(conn);
                Ok(tx)
            }
            Err((why, off)) => {
                self.fallback.note(host, &why, off);
                Err(DataError::Setup)
            }
        }
    }

    /// A new connection; or why not, and whether the node has the channel
    /// off for good (as opposed to a setup that failed this time).
    async fn open(&self, host: &str) -> Result<Conn, (String, bool)> {
        let body = tokio::time::timeout(
            GRANT_TIMEOUT,
            self.overlay.direct(host, wire::encode(&Request::Data)),
        )
        .await
        .map_err(|_| {
            (
                format!("{host} did not grant a data connection in time"),
                false,
            )
        })?
        .map_err(|e| (e, false))?;
        let grant = wire::decode::<Option<Grant>>(&body)
            .map_err(|e| (e, false))?
            .ok_or_else(|| (format!("{host} grants no data connection"), true))?;
        if grant.ticket.len() != 16 || grant.key.len() != 32 {
            return Err((format!("{host} sent a malformed data channel grant"), false));
        }
        let snap = self.overlay.snapshot().await.map_err(|e| (e, false))?;
        let mut ips: Vec<IpAddr> = snap
            .nodes
            .get(host)
            .map(|n| n.addrs.iter().filter_map(|a| ip_of(a)).collect())
            .unwrap_or_default();
        ips.sort_unstable();
        ips.dedup();
        // Another host's loopback address is this host: try it last.
        ips.sort_by_key(|ip| ip.is_loopback());
        if ips.is_empty() {
            return Err((format!("no address known for {host}"), false));
        }
        let mut last = String::new();
        for ip in ips {
            let addr = SocketAddr::new(ip, grant.port);
            match tokio::time::timeout(SETUP_TIMEOUT, handshake(addr, &grant)).await {
                Ok(Ok((conn, rtt))) => {
                    debug!("data connection to {host} at {addr}, round trip {rtt:?}");
                    self.rtts
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(host.to_string(), rtt);
                    return Ok(conn);
                }
                Ok(Err(e)) => last = format!("{addr}: {e}"),
                Err(_) => last = format!("{addr}: timed out"),
            }
        }
        Err((format!("no data connection to {host} ({last})"), false))
    }
}

/// The connection broke: not the answer to this request.
fn lost(e: String) -> DataError {
    DataError::Miss(Miss::Lost(e))
}

fn ip_of(multiaddr: &str) -> Option<IpAddr> {
    let mut parts = multiaddr.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("ip4" | "ip6"), Some(ip)) => ip.parse().ok(),
        _ => None,
    }
}

/// Opens a data connection; returns it with the ticket's round trip.
async fn handshake(addr: SocketAddr, grant: &Grant) -> std::io::Result<(Conn, Duration)> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let sent = Instant::now();
    wr.write_all(&grant.ticket).await?;
    let mut sealer = Sealer::new(&grant.key, b"client to server");
    let mut opener = Sealer::new(&grant.key, b"server to client");
    if &opener.open(&mut rd, ACK.len()).await?[..] != ACK {
        return Err(bad("a wrong acknowledgement".into()));
    }
    let rtt = sent.elapsed();
    // From here on tokio only writes: the reader is a thread (below) with a
    // descriptor of its own, and the writing one is registered for
    // writability alone, so arriving data does not wake tokio's driver.
    let stream = rd.reunite(wr).map_err(|e| bad(e.to_string()))?.into_std()?;
    let reading = stream.try_clone()?;
    // SAFETY: a std TcpStream owns its descriptor for as long as it lives,
    // and the AsyncFd owns the stream.
    let wr = unsafe { AsyncFd::register_with_interest(stream, Interest::WRITABLE) }
        .map_err(|e| e.into_parts().1)?;
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
    let (line_tx, mut line_rx) = mpsc::unbounded_channel::<Waiting>();
    let dead = Arc::new(AtomicBool::new(false));

    // Writer: seals requests in order and puts each in line for its answer.
    let wdead = dead.clone();
    tokio::spawn(async move {
        let mut closing = false;
        loop {
            let job = if closing {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(_) => break,
                }
            } else {
                match tokio::time::timeout(IDLE, rx.recv()).await {
                    Ok(Some(j)) => j,
                    Ok(None) => break,
                    Err(_) => {
                        // Idle: refuse new requests (they go to a fresh
                        // connection), send what is already queued. Answers
                        // still due arrive after our half-close.
                        rx.close();
                        closing = true;
                        continue;
                    }
                }
            };
            if wdead.load(Ordering::SeqCst) {
                let _ = job
                    .waiting
                    .reply
                    .send(Err(Miss::Lost("data connection lost".into())));
                break;
            }
            let mut record = ChunkBuf::with_capacity(4 + job.req.len() + TAG);
            record.extend_from_slice(&[0u8; 4]);
            record.extend_from_slice(&job.req);
            sealer.seal(&mut record, 0);
            if line_tx.send(job.waiting).is_err() {
                break;
            }
            if let Err(e) = write_all(&wr, &record).await {
                wdead.store(true, Ordering::SeqCst);
                debug!("data connection to {addr}: {e}");
                break;
            }
        }
        // Tells the server we are done (the reader's descriptor keeps the
        // socket open for the answers still due).
        let _ = wr.get_ref().shutdown(std::net::Shutdown::Write);
    });

    // Reader: answers come in request order. A thread of its own, as on
    // the server: receive and decrypt on one core, no task in between. It
    // reads the descriptor itself; the write half stays with tokio.
    let mut from = FdReader::new(std::os::fd::AsRawFd::as_raw_fd(&reading), ANSWER_TIMEOUT);
    // However the reader ends (even in a panic), no more answers come on
    // this connection: new requests must go to a fresh one.
    let rdead = DeadOnDrop(dead.clone());
    let reader = move || {
        // Keeps the descriptor open for as long as it is read.
        let _reading = reading;
        let rdead = rdead;
        while let Some(w) = line_rx.blocking_recv() {
            let r = match opener.open_blocking(&mut from, MAX_ANSWER) {
                Ok(plain) => answer(plain, w.index),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    Err("data connection: no answer in time".into())
                }
                Err(e) => Err(e.to_string()),
            };
            let (r, fatal) = match r {
                Ok(answered) => (answered, false),
                Err(e) => (Err(Miss::Lost(e)), true),
            };
            let _ = w.reply.send(r);
            if fatal {
                rdead.0.store(true, Ordering::SeqCst);
                // The rest in line will never be answered on this stream.
                line_rx.close();
                while let Some(w) = line_rx.blocking_recv() {
                    let _ = w.reply.send(Err(Miss::Lost("data connection lost".into())));
                }
                return;
            }
        }
    };
    std::thread::Builder::new()
        .name("mm-data-rx".into())
        .spawn(reader)?;
    Ok((Conn { tx, dead }, rtt))
}

/// Sets a connection's dead flag when dropped.
struct DeadOnDrop(Arc<AtomicBool>);

impl Drop for DeadOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Writes all of `buf` to a socket tokio watches for writability only.
async fn write_all(sock: &AsyncFd<std::net::TcpStream>, mut buf: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    while !buf.is_empty() {
        let mut ready = sock.writable().await?;
        match ready.try_io(|s| (&mut s.get_ref()).write(buf)) {
            Ok(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) => return Err(e),
            // Not writable after all: wait again.
            Err(_) => {}
        }
    }
    Ok(())
}

/// Splits an answer's trailer off. The outer error breaks the connection;
/// the inner one is the server's answer to this request alone.
type Answer = Result<Result<ChunkBuf, Miss>, String>;

/// Answer kinds, in the trailer.
const KIND_CHUNK: u8 = 0;
const KIND_FAILED: u8 = 1;
const KIND_NOT_YET: u8 = 2;
const KIND_REDIRECT: u8 = 3;

fn answer(mut plain: ChunkBuf, want: u32) -> Answer {
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
    let text = || String::from_utf8_lossy(&plain).into_owned();
    match kind {
        KIND_CHUNK => Ok(Ok(plain)),
        KIND_FAILED => Ok(Err(Miss::Failed(text()))),
        KIND_NOT_YET => Ok(Err(Miss::NotYet)),
        KIND_REDIRECT => Ok(Err(Miss::Redirect(text()))),
        k => Err(format!("data channel: an answer of unknown kind {k}")),
    }
}

/// Which nodes refused or could not be reached on the data channel, so that
/// chunks go the slower way for a while instead of failing: a minute for a
/// node with the channel off, a few seconds after a failed setup.
#[derive(Default)]
struct Fallback(Mutex<HashMap<String, Instant>>);

impl Fallback {
    const OFF: Duration = Duration::from_secs(60);
    const FAILED: Duration = Duration::from_secs(5);

    fn active(&self, host: &str) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, until| *until > Instant::now());
        m.contains_key(host)
    }

    fn note(&self, host: &str, why: &str, off: bool) {
        let until = Instant::now() + if off { Self::OFF } else { Self::FAILED };
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.insert(host.to_string(), until).is_none() {
            info!("no data channel to {host} ({why}); chunks go over the mesh connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Sealer) {
        let secret = [9u8; 32];
        (
            Sealer::new(&secret, b"client to server"),
            Sealer::new(&secret, b"client to server"),
        )
    }

    fn buf(bytes: &[u8]) -> ChunkBuf {
        ChunkBuf::from(bytes)
    }

    fn record(plain: &[u8]) -> ChunkBuf {
        let mut r = ChunkBuf::with_capacity(4 + plain.len() + TAG);
        r.extend_from_slice(&[0u8; 4]);
        r.extend_from_slice(plain);
        r
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

    #[test]
    fn answers_carry_their_index_and_kind() {
        let mut ok = b"data".to_vec();
        ok.push(0);
        ok.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(&answer(buf(&ok), 5).unwrap().unwrap()[..], b"data");
        assert!(
            answer(buf(&ok), 6).is_err(),
            "an answer out of line breaks the stream"
        );
        let mut err = b"not here".to_vec();
        err.push(1);
        err.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(
            answer(buf(&err), 5).unwrap().unwrap_err(),
            Miss::Failed("not here".into())
        );
        let mut redirect = b"h3".to_vec();
        redirect.push(KIND_REDIRECT);
        redirect.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(
            answer(buf(&redirect), 5).unwrap().unwrap_err(),
            Miss::Redirect("h3".into())
        );
        let mut not_yet = vec![KIND_NOT_YET];
        not_yet.extend_from_slice(&5u32.to_be_bytes());
        assert_eq!(answer(buf(&not_yet), 5).unwrap().unwrap_err(), Miss::NotYet);
        assert!(answer(buf(&[1, 2]), 0).is_err());
    }

    #[test]
    fn addresses_from_multiaddrs() {
        assert_eq!(
            ip_of("/ip4/10.0.0.2/tcp/9000"),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(ip_of("/ip6/::1/tcp/9000"), Some("::1".parse().unwrap()));
        assert_eq!(ip_of("/dns4/x/tcp/1"), None);
    }
}
