//! The serving side: grants handed out over the mesh, the listener, and
//! one thread per proven connection.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mm_overlay::wire;
use mm_store::{ChunkBuf, Engine, Miss};
use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::handshake;
use super::keyed::{Identity, Members};
use super::reader::FdReader;
use super::record::{
    bad, Sealer, KIND_BITS, KIND_CHUNK, KIND_FAILED, KIND_GONE, KIND_NOT_YET, KIND_REDIRECT,
};
use super::*;
use crate::{Error, Result};

struct Ticket {
    secret: [u8; 32],
    host: String,
    issued: Instant,
}

/// Connections by remote IP that have not proven a ticket yet, and data
/// connections served by node: a count each, and its cap.
struct Counts<K: std::hash::Hash + Eq>(Mutex<HashMap<K, usize>>);

impl<K: std::hash::Hash + Eq> Default for Counts<K> {
    fn default() -> Self {
        Counts(Mutex::new(HashMap::new()))
    }
}

impl<K: std::hash::Hash + Eq + Clone> Counts<K> {
    /// One more for `k`, unless it has `max`: a guard that counts it down.
    fn take(self: &Arc<Self>, k: K, max: usize) -> Option<Counted<K>> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(k.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Counted(self.clone(), k))
    }
}

struct Counted<K: std::hash::Hash + Eq>(Arc<Counts<K>>, K);

impl<K: std::hash::Hash + Eq> Drop for Counted<K> {
    fn drop(&mut self) {
        let mut m = (self.0).0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// The serving side: a listener, and the tickets handed out.
pub(crate) struct DataServer {
    port: u16,
    engine: Arc<Engine>,
    serving: Arc<tokio::sync::Semaphore>,
    /// Connections in their handshake, per remote IP.
    unproven_ip: Arc<Counts<IpAddr>>,
    /// Connections served, per node.
    served_to: Arc<Counts<String>>,
    /// The listener's task, aborted to stop serving.
    accepting: Mutex<Option<tokio::task::JoinHandle<()>>>,
    tickets: Mutex<HashMap<[u8; 16], Ticket>>,
    rng: SystemRandom,
    /// For keyed hellos: this node's static key, and whose keys to take.
    identity: Arc<Identity>,
    members: Members,
}

impl DataServer {
    /// Listens on `ip:port` (0 picks a free port) and serves from `engine`.
    pub(crate) async fn start(
        ip: IpAddr,
        port: u16,
        engine: Arc<Engine>,
        identity: Arc<Identity>,
        members: Members,
    ) -> Result<Arc<Self>> {
        let listener = TcpListener::bind(SocketAddr::new(ip, port))
            .await
            .map_err(|e| {
                Error::Startup(format!(
                    "data channel: cannot listen on {ip}:{port}: {e} (choose another port with \
                 --data-port)"
                ))
            })?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::io("data channel", e))?
            .port();
        let me = Arc::new(DataServer {
            port,
            engine,
            serving: Arc::new(tokio::sync::Semaphore::new(SERVING)),
            unproven_ip: Arc::default(),
            served_to: Arc::default(),
            accepting: Mutex::new(None),
            tickets: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
            identity,
            members,
        });
        let accepting = tokio::spawn(me.clone().accept(listener));
        *me.accepting.lock().unwrap_or_else(|e| e.into_inner()) = Some(accepting);
        Ok(me)
    }

    /// Closes the listener: no new data connections.
    pub(crate) fn stop(&self) {
        if let Some(t) = self
            .accepting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            t.abort();
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    fn tickets(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], Ticket>> {
        self.tickets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A one-time ticket and key for `host`, to be sent over Noise.
    pub(crate) fn grant(&self, host: &str) -> Result<Grant> {
        let mut ticket = handshake::MARK;
        let mut secret = [0u8; 32];
        // The mark of a keyed hello is no ticket.
        while ticket == handshake::MARK {
            self.rng
                .fill(&mut ticket)
                .and_then(|_| self.rng.fill(&mut secret))
                .map_err(|_| Error::Refused("no randomness for a data channel key".into()))?;
        }
        let mut tickets = self.tickets();
        tickets.retain(|_, t| t.issued.elapsed() < TICKET_TTL);
        if tickets.len() >= MAX_TICKETS
            || tickets.values().filter(|t| t.host == host).count() >= PER_NODE
        {
            return Err(Error::Refused(
                "too many data connections being set up; try again".into(),
            ));
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
                    let (Ok(permit), Some(per_ip)) = (
                        unproven.clone().try_acquire_owned(),
                        self.unproven_ip.take(addr.ip(), UNPROVEN_PER_IP),
                    ) else {
                        debug!("data connection from {addr} closed: too many without a ticket");
                        continue;
                    };
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.serve(stream, (permit, per_ip)).await {
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

    /// Reads the client's ticket and first handshake message, or its keyed
    /// hello, and checks them: the handshake to answer, and who the client
    /// is.
    async fn prove(
        &self,
        rd: &mut tokio::net::tcp::OwnedReadHalf,
    ) -> std::io::Result<(snow::HandshakeState, String)> {
        let mut head = [0u8; 18];
        rd.read_exact(&mut head).await?;
        let len = u16::from_be_bytes([head[16], head[17]]) as usize;
        if head[..16] == handshake::MARK {
            if len > handshake::KEYED_MESSAGE {
                return Err(bad(format!("a keyed hello of {len} bytes")));
            }
            let mut hello = head.to_vec();
            hello.resize(head.len() + len + handshake::MAC, 0);
            rd.read_exact(&mut hello[head.len()..]).await?;
            let p = handshake::keyed_check(&self.identity, &hello)
                .map_err(|_| bad("a keyed hello that does not check out".into()))?;
            let host = self.members.admit(&p.key, p.count).await.map_err(bad)?;
            return Ok((p.hs, host));
        }
        if len > handshake::MESSAGE {
            return Err(bad(format!("a handshake message of {len} bytes")));
        }
        let mut hello = vec![0u8; len];
        rd.read_exact(&mut hello).await?;
        let ticket: [u8; 16] = head[..16].try_into().expect("16 bytes");
        let (secret, host) = self
            .tickets()
            .get(&ticket)
            .filter(|t| t.issued.elapsed() < TICKET_TTL)
            .map(|t| (t.secret, t.host.clone()))
            .ok_or_else(|| bad("an unknown or expired ticket".into()))?;
        let hs = handshake::check(&secret, &hello)
            .map_err(|_| bad(format!("a handshake for {host} that does not check out")))?;
        // Proven. The ticket is used up now: a replayed first message finds
        // it gone.
        if self.tickets().remove(&ticket).is_none() {
            return Err(bad("a ticket used meanwhile".into()));
        }
        Ok((hs, host))
    }

    async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        unproven: (tokio::sync::OwnedSemaphorePermit, Counted<IpAddr>),
    ) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        // The ticket (or the mark of a keyed hello) and the client's
        // handshake message, in time; nothing is spent on the connection
        // before they check out.
        let (hs, host) = tokio::time::timeout(TICKET_WAIT, self.prove(&mut rd))
            .await
            .map_err(|_| bad("no ticket and handshake in time".into()))??;
        drop(unproven);
        let (Ok(serving), Some(per_node)) = (
            self.serving.clone().try_acquire_owned(),
            self.served_to.take(host.clone(), PER_NODE),
        ) else {
            return Err(bad(format!(
                "too many data connections are open already; {host} is refused"
            )));
        };
        let (reply, mut sealer, opener) =
            handshake::answer(hs).map_err(|e| bad(format!("handshake: {e}")))?;
        let mut first = (reply.len() as u16).to_be_bytes().to_vec();
        first.extend_from_slice(&reply);
        wr.write_all(&first).await?;
        let mut ack = ChunkBuf::with_capacity(4 + ACK.len() + TAG);
        ack.extend_from_slice(&[0u8; 4]);
        ack.extend_from_slice(ACK);
        sealer.seal(&mut ack, 0);
        wr.write_all(&ack).await?;
        debug!("data connection from {host} open");

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
                let _serving = (serving, per_node);
                if let Err(e) = serve_blocking(&engine, &host, stream, opener, sealer) {
                    debug!("data connection from {host}: {e}");
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
    use std::os::fd::AsRawFd;
    let mut rd = FdReader::new(stream.as_raw_fd(), SERVER_IDLE);
    let mut sealed = 0u64;
    let mut low_water = false;
    loop {
        // Enough under these keys: the client asks for a new grant, and
        // gets new keys, on its next request.
        if sealed >= KEY_BYTES {
            debug!("data connection from {from}: {sealed} bytes under its keys; closing it");
            return Ok(());
        }
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
        let req: DataReq = wire::decode(&plain).map_err(|e| bad(e.to_string()))?;
        let (record, data) = answer_record(engine, from, &req, &mut sealer);
        // A chunk from a file held whole waits for its turn on the uplink,
        // and, while the slots are in demand, holds it until the kernel has
        // all but the last of it on the wire (at most UNSENT left in the
        // socket buffer): else every answer sits in its socket's buffer at
        // once, and they all share the uplink as before.
        let slot = data.then(|| engine.send_slot(&req.name, &req.root, req.progress));
        let busy = slot.as_ref().is_some_and(|s| s.busy());
        if busy != low_water {
            low_water = busy;
            set_unsent_limit(&stream, if busy { UNSENT } else { 0 });
        }
        write_holding(&mut stream, &record[ANSWER_AT - 4..], slot)?;
        sealed += record.len() as u64;
    }
}

/// Writes `bytes`, holding `slot` until they are written or its hold is
/// over ([`mm_store::transfer::SendSlot::hold`]): an answer that goes
/// slower than the uplink's share for it is held back by its receiver
/// (behind a thin link, or a downlink other senders share), and leaves its
/// slot to another answer.
fn write_holding(
    stream: &mut std::net::TcpStream,
    bytes: &[u8],
    slot: Option<mm_store::transfer::SendSlot>,
) -> std::io::Result<()> {
    use std::io::{ErrorKind, Write};
    let Some(mut slot) = slot else {
        return stream.write_all(bytes);
    };
    let hold = slot.hold(bytes.len());
    // The hold is the write timeout while the slot is held: a write that
    // cannot go on in time gives the slot back, and the rest is written
    // under the connection's own timeout.
    let start = Instant::now();
    let mut timed = false;
    let mut at = 0;
    while at < bytes.len() {
        if slot.held() {
            let left = hold.saturating_sub(start.elapsed());
            if left.is_zero() {
                slot.release();
                continue;
            }
            stream.set_write_timeout(Some(left))?;
            timed = true;
        } else if std::mem::take(&mut timed) {
            stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
        }
        match stream.write(&bytes[at..]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                at += n;
                slot.sent(n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e)
                if slot.held()
                    && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                slot.release();
            }
            Err(e) => return Err(e),
        }
    }
    if timed {
        stream.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    }
    Ok(())
}

/// Unsent bytes a socket answering from a whole file keeps at most: a
/// blocking write returns once no more than this is left to send.
const UNSENT: u32 = 64 << 10;

/// `TCP_NOTSENT_LOWAT` (0: back to the system's default,
/// `net.ipv4.tcp_notsent_lowat`, no limit unless set): a failure only costs
/// the uplink's order.
fn set_unsent_limit(stream: &std::net::TcpStream, bytes: u32) {
    use std::os::fd::AsRawFd;
    let v = bytes as libc::c_int;
    // SAFETY: a valid socket, and an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        debug!("TCP_NOTSENT_LOWAT: {}", std::io::Error::last_os_error());
    }
}

/// The sealed answer to `req`: the chunk, or why not; and whether it is a
/// chunk.
fn answer_record(
    engine: &Engine,
    from: &str,
    req: &DataReq,
    sealer: &mut Sealer,
) -> (ChunkBuf, bool) {
    let mut record = ChunkBuf::with_capacity(ANSWER_AT + MAX_ANSWER + TAG);
    record.extend_from_slice(&[0u8; ANSWER_AT]);
    let read = if req.name.len() > MAX_NAME {
        Err(Miss::Failed("a name too long".into()))
    } else if req.count == 0 {
        // A have poll.
        match engine.have_bits(from, &req.name, &req.root) {
            Ok(bits) if bits.len() <= MAX_BITS => {
                record.extend_from_slice(&bits);
                Ok(())
            }
            Ok(_) => Err(Miss::Failed("a have-bitfield too large".into())),
            Err(e) => Err(e.into()),
        }
    } else {
        let (index, count) = (req.index as usize, req.count as usize);
        engine.told_gone(from, &req.name, &req.root, &req.gone);
        engine.read_chunk(from, &req.name, &req.root, index, count, &mut record)
    };
    let kind = match read {
        Ok(()) if req.count == 0 => KIND_BITS,
        Ok(()) => KIND_CHUNK,
        Err(miss) => {
            record.truncate(ANSWER_AT);
            let (kind, text) = match miss {
                Miss::NotYet => (KIND_NOT_YET, String::new()),
                Miss::Redirect(h) => (KIND_REDIRECT, h),
                Miss::Gone(e) => (KIND_GONE, e),
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
    let data = kind == KIND_CHUNK;
    // The news as of this answer, behind its body.
    let news = req
        .seen
        .and_then(|seen| engine.news(&req.name, &req.root, seen));
    let kind = match news {
        Some(n) => {
            for c in &n.chunks {
                record.extend_from_slice(&c.to_be_bytes());
            }
            record.extend_from_slice(&n.from.to_be_bytes());
            record.extend_from_slice(&(n.chunks.len() as u32).to_be_bytes());
            kind | WITH_NEWS
        }
        None => kind,
    };
    record.extend_from_slice(&[kind]);
    record.extend_from_slice(&req.index.to_be_bytes());
    sealer.seal(&mut record, ANSWER_AT - 4);
    (record, data)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Duration;

    /// A data server on loopback, serving an empty files directory.
    async fn server() -> (tempfile::TempDir, Arc<DataServer>) {
        let (dir, s, _) = keyed_server(Some([4; 32]), HashMap::new()).await;
        (dir, s)
    }

    /// The same, on a mesh keyed by `cluster`, taking keyed hellos from
    /// `members`; with its identity.
    pub(in crate::files::data) async fn keyed_server(
        cluster: Option<[u8; 32]>,
        members: HashMap<[u8; 32], String>,
    ) -> (tempfile::TempDir, Arc<DataServer>, Arc<Identity>) {
        let dir = tempfile::tempdir().unwrap();
        let files = mm_store::FilesDir::open(&dir.path().join("files")).unwrap();
        let meta = mm_store::Meta::open(&dir.path().join("meta.db")).unwrap();
        let local = Arc::new(mm_store::Local::new(files, meta));
        let hub = mm_store::mem::Hub::new();
        let engine = Engine::new(local, hub.net("h"));
        let id = Arc::new(Identity::new(cluster));
        let s = DataServer::start(
            "127.0.0.1".parse().unwrap(),
            0,
            engine,
            id.clone(),
            Members::fixed(members),
        )
        .await
        .unwrap();
        (dir, s, id)
    }

    /// Opens a connection with `hello` of `hs`: whether the server
    /// answered with its handshake and the acknowledgement.
    async fn opens(s: &DataServer, hs: snow::HandshakeState, hello: &[u8]) -> bool {
        let mut c = TcpStream::connect(("127.0.0.1", s.port())).await.unwrap();
        c.write_all(hello).await.unwrap();
        let went = async {
            let mut len = [0u8; 2];
            c.read_exact(&mut len).await?;
            let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
            c.read_exact(&mut reply).await?;
            let (_, mut opener) = handshake::finish(hs, &reply).map_err(|e| bad(e.to_string()))?;
            opener.open(&mut c, ACK.len()).await
        };
        match tokio::time::timeout(TICKET_WAIT + Duration::from_secs(3), went).await {
            Ok(Ok(ack)) => &ack[..] == ACK,
            Ok(Err(_)) => false,
            Err(_) => panic!("the server kept a refused connection open"),
        }
    }

    #[tokio::test]
    async fn a_member_opens_a_connection_with_its_key_and_nobody_else_does() {
        let cluster = Some([9u8; 32]);
        let member = Identity::new(cluster);
        let members = HashMap::from([(member.public, "p".to_string())]);
        let (_dir, s, server_id) = keyed_server(cluster, members).await;
        let hello = |id: &Identity| handshake::keyed_hello(id, &server_id.public).unwrap();
        // A member, by the key its announcement gave.
        let (hs, right) = hello(&member);
        assert!(opens(&s, hs, &right).await, "a member was refused");
        // The same hello again (seen on the wire): its count is used up,
        // and the server answers nothing.
        let got = answer_to(&s, &right, Duration::from_secs(5)).await;
        assert!(got.is_empty(), "{} bytes to a replayed hello", got.len());
        // Its next hello is taken.
        let (hs, next) = hello(&member);
        assert!(opens(&s, hs, &next).await, "a fresh hello was refused");
        // A node with the cluster key whose key no member announces.
        let (hs, stranger) = hello(&Identity::new(cluster));
        assert!(!opens(&s, hs, &stranger).await, "an unannounced key got in");
        // A member's key without the cluster key: refused on the MAC.
        let outsider = Identity::new(Some([8u8; 32]));
        let (hs, wrong) = hello(&outsider);
        assert!(!opens(&s, hs, &wrong).await, "the wrong cluster key got in");
        // A member's hello with a byte changed.
        let (hs, mut bent) = hello(&member);
        bent[40] ^= 1;
        assert!(!opens(&s, hs, &bent).await, "a changed hello got in");
        // The mark, then nonsense of the longest length a hello may have.
        let mut junk = handshake::MARK.to_vec();
        junk.extend_from_slice(&(handshake::KEYED_MESSAGE as u16).to_be_bytes());
        junk.extend_from_slice(&[7u8; handshake::KEYED_MESSAGE + handshake::MAC]);
        let got = answer_to(&s, &junk, Duration::from_secs(5)).await;
        assert!(got.is_empty(), "{} bytes to junk after the mark", got.len());
    }

    /// Everything the server sends on a connection after `hello`, until it
    /// closes it; fails if that takes longer than `limit`.
    async fn answer_to(s: &DataServer, hello: &[u8], limit: Duration) -> Vec<u8> {
        let mut c = TcpStream::connect(("127.0.0.1", s.port())).await.unwrap();
        c.write_all(hello).await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(limit, c.read_to_end(&mut got))
            .await
            .expect("the server kept the connection open")
            .ok();
        got
    }

    #[test]
    fn an_answer_lets_go_of_its_send_slot_once_its_hold_is_over() {
        let dir = tempfile::tempdir().unwrap();
        let files = mm_store::FilesDir::open(&dir.path().join("files")).unwrap();
        let meta = mm_store::Meta::open(&dir.path().join("meta.db")).unwrap();
        let local = Arc::new(mm_store::Local::new(files, meta));
        let one = mm_store::Tuning {
            send_slots: 1,
            slot_patience: Duration::from_secs(5),
            slot_hold: Duration::from_millis(50),
            ..mm_store::Tuning::default()
        };
        let engine = Engine::with_tuning(local, mm_store::mem::Hub::new().net("h"), one);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut rx, _) = listener.accept().unwrap();
        // A receiver that reads nothing until told: the answer (more than
        // the socket buffers hold) is still being written when its hold is
        // over.
        let body = vec![7u8; 64 << 20];
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            wait.recv().unwrap();
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut rx, &mut got).unwrap();
            got.len()
        });
        let engine2 = engine.clone();
        let writer = std::thread::spawn(move || {
            let slot = engine2.send_slot("f", b"root", None);
            assert!(slot.held());
            let slot = Some(slot);
            write_holding(&mut tx, &body, slot).unwrap();
        });
        // Another answer gets the only slot while the first is being
        // written (the reader has not read yet; without the hold, this
        // would wait out the patience and get none).
        std::thread::sleep(Duration::from_millis(20));
        let next = engine.send_slot("g", b"root", None);
        assert!(
            next.held(),
            "waited out the patience: the first kept its slot"
        );
        assert!(next.busy());
        go.send(()).unwrap();
        writer.join().unwrap();
        assert_eq!(reader.join().unwrap(), 64 << 20, "all of it");
    }

    /// A node holding `f` whole (2.5 chunks: the last byte of its
    /// bitfield is partly padding), and its version.
    fn holder_of_f() -> (tempfile::TempDir, Arc<Engine>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let files = mm_store::FilesDir::open(&dir.path().join("files")).unwrap();
        let meta = mm_store::Meta::open(&dir.path().join("meta.db")).unwrap();
        let size = mm_store::manifest::CHUNK_SIZE as usize * 5 / 2;
        std::fs::write(dir.path().join("files/f"), vec![3u8; size]).unwrap();
        let local = Arc::new(mm_store::Local::new(files, meta));
        let root = local.manifest("f").unwrap().unwrap().root;
        (
            dir,
            Engine::new(local, mm_store::mem::Hub::new().net("h")),
            root,
        )
    }

    /// `engine`'s answer to `req` from `from`, the request through the
    /// wire as a client sends it; and whether it is a chunk.
    fn answer_to_req(engine: &Engine, from: &str, req: &DataReq) -> (mm_store::Reply, bool) {
        let req: DataReq = wire::decode(&wire::encode(req)).unwrap();
        let (mut sealer, mut opener) = super::super::record::testing::pair();
        let (record, data) = answer_record(engine, from, &req, &mut sealer);
        let bytes = record[ANSWER_AT - 4..].to_vec();
        let plain = futures::executor::block_on(opener.open(&mut &bytes[..], MAX_ANSWER)).unwrap();
        (
            super::super::record::answer(plain, req.index).unwrap(),
            data,
        )
    }

    fn req(name: &str, root: &[u8], count: u32, gone: &[&str]) -> DataReq {
        DataReq {
            name: name.into(),
            root: root.to_vec(),
            index: 0,
            count,
            seen: None,
            progress: None,
            gone: gone.iter().map(|g| g.to_string()).collect(),
        }
    }

    /// A request for no chunks is a have poll: answered with the
    /// bitfield, and no send slot is taken for it.
    #[tokio::test]
    async fn a_request_for_no_chunks_is_answered_with_the_have_bits() {
        let (_dir, engine, root) = holder_of_f();
        let ask = |name: &str, root: &[u8]| answer_to_req(&engine, "p", &req(name, root, 0, &[]));
        let (reply, data) = ask("f", &root);
        assert!(!data, "a poll is no chunk: it takes no send slot");
        assert_eq!(&reply.chunks.unwrap()[..], &[0b0000_0111u8][..]);
        let (reply, _) = ask("f", b"another version");
        assert!(matches!(reply.chunks, Err(Miss::Failed(_))));
        let (reply, _) = ask("nothing", &root);
        assert!(matches!(reply.chunks, Err(Miss::Failed(_))));
    }

    /// A puller that could not reach the puller a holder pointed it at
    /// says so, and the holder stops pointing askers there unless that
    /// puller asks again soon; the first [`mm_store::MAX_GONE`] valid names
    /// count, and an older node's request, without them, is still
    /// understood.
    #[tokio::test]
    async fn a_puller_told_gone_is_not_pointed_at_until_it_asks_again() {
        let (_dir, engine, root) = holder_of_f();
        let chunk = |from: &str, index: u32, gone: &[&str]| {
            let ask = DataReq {
                index,
                ..req("f", &root, 1, gone)
            };
            let (reply, data) = answer_to_req(&engine, from, &ask);
            match reply.chunks {
                Ok(_) => {
                    assert!(data);
                    "sent".to_string()
                }
                Err(Miss::Redirect(to)) => to,
                Err(e) => panic!("{e:?}"),
            }
        };
        assert_eq!(chunk("a", 0, &[]), "sent");
        assert_eq!(chunk("b", 0, &[]), "a", "a got it first, and is at work");
        // Four others first: the fifth name is not read; nor is one that
        // is no node's name.
        let many = ["x1", "x2", "x3", "x4", "a"];
        assert_eq!(chunk("c", 0, &many), "a");
        assert_eq!(chunk("d", 0, &["not a name!", ""]), "a");
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(chunk("e", 0, &[]), "a", "quiet, but nobody said it is gone");
        // Told of, and quiet for longer than its own pace already (the
        // ledger's own timing, and the while one gets otherwise, are
        // tested in ledger.rs): forgotten.
        assert_eq!(
            chunk("f", 0, &["no name/", "a"]),
            "sent",
            "a is gone: f gets it"
        );
        assert_eq!(chunk("h", 0, &[]), "f", "and is pointed at next");
        // a, alive after all, asks again: it is pointed at once more.
        assert_eq!(chunk("a", 1, &[]), "sent");
        assert_eq!(chunk("b", 1, &[]), "a");
        // The decoder: the valid names among the first four entries; the
        // rest, thousands within the request's size, read past unkept.
        let decode = |gone: Vec<String>| {
            let bytes = wire::encode(&DataReq {
                gone,
                ..req("f", &root, 1, &[])
            });
            assert!(bytes.len() <= MAX_REQUEST, "{}", bytes.len());
            wire::decode::<DataReq>(&bytes).unwrap().gone
        };
        assert_eq!(decode(vec!["x1".into(); 20_000]), ["x1"; 4]);
        assert_eq!(decode(vec!["".into(), "a".into(), "b c".into()]), ["a"]);
        #[derive(serde::Serialize)]
        struct Odd<'a> {
            name: &'a str,
            #[serde(with = "serde_bytes")]
            root: &'a [u8],
            index: u32,
            count: u32,
            gone: (&'a str, u32),
        }
        let odd = wire::encode(&Odd {
            name: "f",
            root: &root,
            index: 0,
            count: 1,
            gone: ("a", 7),
        });
        assert!(
            wire::decode::<DataReq>(&odd).is_err(),
            "a name that is no string: a malformed request, refused"
        );
        // A node from before `gone` (and before `seen` and `progress`).
        #[derive(serde::Serialize)]
        struct Older<'a> {
            name: &'a str,
            #[serde(with = "serde_bytes")]
            root: &'a [u8],
            index: u32,
            count: u32,
            seen: Option<u32>,
            progress: Option<u16>,
        }
        let older = wire::encode(&Older {
            name: "f",
            root: &root,
            index: 0,
            count: 1,
            seen: Some(3),
            progress: Some(9),
        });
        let decoded: DataReq = wire::decode(&older).unwrap();
        assert!(decoded.gone.is_empty());
        assert_eq!((decoded.seen, decoded.progress), (Some(3), Some(9)));
    }

    #[tokio::test]
    async fn grants_are_capped_per_node() {
        let (_dir, s) = server().await;
        for _ in 0..PER_NODE {
            s.grant("p").unwrap();
        }
        assert!(s.grant("p").is_err(), "one node took more than its share");
        assert!(s.grant("q").is_ok(), "another node is still served");
    }

    #[tokio::test]
    async fn strangers_get_nothing_and_are_closed_soon() {
        let (_dir, s) = server().await;
        // A ticket nobody was granted.
        let got = answer_to(&s, &[7u8; 16], Duration::from_secs(5)).await;
        assert!(got.is_empty(), "{} bytes to a bogus ticket", got.len());
        // A client that says nothing at all.
        let got = answer_to(&s, &[], TICKET_WAIT + Duration::from_secs(3)).await;
        assert!(got.is_empty(), "{} bytes to a silent client", got.len());
        // A real ticket with a handshake that is not keyed by its secret:
        // refused, and the ticket not spent.
        let g = s.grant("p").unwrap();
        let secret: [u8; 32] = g.key[..].try_into().unwrap();
        let first = |secret: &[u8; 32]| {
            let (hs, hello) = handshake::hello(secret).unwrap();
            let mut m = g.ticket.clone();
            m.extend_from_slice(&(hello.len() as u16).to_be_bytes());
            m.extend_from_slice(&hello);
            (hs, m)
        };
        let (_, wrong) = first(&[1u8; 32]);
        let got = answer_to(&s, &wrong, Duration::from_secs(5)).await;
        assert!(got.is_empty(), "{} bytes to a wrong secret", got.len());
        // The right one opens one connection, and only one.
        let (hs, right) = first(&secret);
        let mut c = TcpStream::connect(("127.0.0.1", s.port())).await.unwrap();
        c.write_all(&right).await.unwrap();
        let mut len = [0u8; 2];
        c.read_exact(&mut len).await.unwrap();
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        c.read_exact(&mut reply).await.unwrap();
        let (_, mut opener) = handshake::finish(hs, &reply).unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(5), opener.open(&mut c, ACK.len()))
            .await
            .expect("no acknowledgement")
            .unwrap();
        assert_eq!(&ack[..], ACK);
        // Its first message again (a replay): the ticket is gone.
        let got = answer_to(&s, &right, Duration::from_secs(5)).await;
        assert!(
            got.is_empty(),
            "{} bytes to a replayed handshake",
            got.len()
        );
    }
}
