//! The pulling side: one connection per serving node, opened on demand,
//! requests pipelined by a task, answers read by a thread; and the nodes to
//! reach another way for a while.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mm_overlay::{wire, Overlay};
use mm_store::{Asker, ChunkBuf, Miss, Reply};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use super::handshake;
use super::keyed::Identity;
use super::reader::FdReader;
use super::record::{answer, bad};
use super::*;
use crate::proto::Request;

/// A request waiting for its answer, in line.
struct Waiting {
    index: u32,
    reply: oneshot::Sender<Reply>,
}

struct Job {
    req: Vec<u8>,
    waiting: Waiting,
}

/// One open client connection.
struct Conn {
    tx: mpsc::Sender<Job>,
    dead: Arc<AtomicBool>,
    /// The socket, to see whether the server closed it while it was idle.
    peek: std::net::TcpStream,
}

/// Whether the other end closed `s` with nothing left unread before its
/// end: a connection the server let go while it sat idle (the node
/// restarted, say), which a request would find out only by its answer
/// failing, and the chunk would go elsewhere.
fn peer_closed(s: &std::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: a non-blocking peek of one byte into a buffer we own, on a
    // descriptor `s` owns; nothing is consumed.
    let n = unsafe {
        libc::recv(
            std::os::fd::AsRawFd::as_raw_fd(s),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

/// One serving node's connection, opened on demand; its lock is held while
/// one is being set up, so a burst of requests opens one connection, and a
/// slow setup for one node holds up no other.
type Slot = Arc<tokio::sync::Mutex<Option<Conn>>>;

/// The pulling side: one connection per serving node, opened on demand.
pub(crate) struct DataClient {
    overlay: Overlay,
    conns: Mutex<HashMap<String, Slot>>,
    /// Per node: the round trip of its data channel handshake.
    rtts: Mutex<HashMap<String, Duration>>,
    fallback: Fallback,
    /// This node's static key, for keyed hellos.
    identity: Arc<Identity>,
}

/// Why a chunk did not come over the data channel.
pub(crate) enum DataError {
    /// No data connection can be had for now (logged): use another way.
    Setup,
    /// The server's answer to this request, or a broken connection.
    Miss(Miss),
}

impl DataClient {
    pub(crate) fn new(overlay: Overlay, identity: Arc<Identity>) -> DataClient {
        DataClient {
            overlay,
            identity,
            conns: Mutex::new(HashMap::new()),
            rtts: Mutex::new(HashMap::new()),
            fallback: Fallback::default(),
        }
    }

    pub(crate) fn rtt(&self, host: &str) -> Option<Duration> {
        self.rtts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .copied()
    }

    pub(crate) async fn chunk(
        &self,
        host: &str,
        name: String,
        root: Vec<u8>,
        index: u32,
        count: u32,
        asker: Asker,
    ) -> Result<Reply, DataError> {
        let req = wire::encode(&DataReq {
            name,
            root,
            index,
            count,
            seen: asker.seen,
            progress: asker.progress,
            gone: asker.gone,
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
                        // A broken connection is no answer from the server:
                        // its chunks go another way.
                        Ok(Reply {
                            chunks: Err(m @ Miss::Lost(_)),
                            ..
                        }) => Err(DataError::Miss(m)),
                        Ok(r) => Ok(r),
                        Err(_) => Err(lost("data connection closed".into())),
                    };
                }
                Err(mpsc::error::SendError(j)) => job = j,
            }
        }
        Err(lost("data connection keeps closing".into()))
    }

    /// `host`'s have-bitfield for that version: a request for no chunks on
    /// the data connection, which a puller has open to the pullers it
    /// takes from anyway. (Over libp2p, each poll was a stream of its own,
    /// negotiated on both sides, through each node's one swarm task.)
    pub(crate) async fn have(
        &self,
        host: &str,
        name: String,
        root: Vec<u8>,
    ) -> Result<Vec<u8>, DataError> {
        match self
            .chunk(host, name, root, 0, 0, Asker::default())
            .await?
            .chunks
        {
            Ok(bits) => Ok(bits.to_vec()),
            Err(m) => Err(DataError::Miss(m)),
        }
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
            if !c.dead.load(Ordering::SeqCst) && !c.tx.is_closed() && !peer_closed(&c.peek) {
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
            Err(Failed::Unreached(why)) => {
                debug!("no grant from {host}: {why}");
                Err(DataError::Miss(Miss::Failed(why)))
            }
            Err(Failed::Setup(why, off)) => {
                self.fallback.note(host, &why, off);
                Err(DataError::Setup)
            }
        }
    }

    /// A new connection, or why not: with a keyed hello if the node
    /// announces a key, else (or if that fails) with a grant.
    async fn open(&self, host: &str) -> Result<Conn, Failed> {
        let failed = |why: String| Failed::Setup(why, false);
        let snap = self
            .overlay
            .snapshot()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let node = snap.nodes.get(host);
        let mut ips: Vec<IpAddr> = node
            .map(|n| n.addrs.iter().filter_map(|a| ip_of(a)).collect())
            .unwrap_or_default();
        ips.sort_unstable();
        ips.dedup();
        // Another host's loopback address is this host: try it last.
        ips.sort_by_key(|ip| ip.is_loopback());
        if ips.is_empty() {
            return Err(failed(format!("no address known for {host}")));
        }
        let keyed = node
            .and_then(|n| n.data.as_ref())
            .and_then(|d| Some((d.port, <[u8; 32]>::try_from(&d.key[..]).ok()?)));
        if let Some((port, key)) = keyed {
            match self
                .connect(host, &ips, port, || {
                    handshake::keyed_hello(&self.identity, &key)
                })
                .await
            {
                Ok(conn) => return Ok(conn),
                // No address took a TCP connection: a grant would lead
                // to the same addresses (a dead node, a closed port).
                Err(e) if !e.reached => return Err(failed(e.why)),
                // It may not know this node yet: a grant proves who asks
                // over the mesh instead.
                Err(e) => debug!(
                    "no keyed data connection to {host} ({}); asking for a grant",
                    e.why
                ),
            }
        }
        let body = tokio::time::timeout(
            GRANT_TIMEOUT,
            self.overlay.direct(host, wire::encode(&Request::Data)),
        )
        .await
        .map_err(|_| Failed::Unreached(format!("{host} did not grant a data connection in time")))?
        .map_err(|e| Failed::Unreached(e.to_string()))?;
        let grant = wire::decode::<Option<Grant>>(&body)
            .map_err(|e| failed(e.to_string()))?
            .ok_or_else(|| Failed::Setup(format!("{host} grants no data connection"), true))?;
        let secret: [u8; 32] = match (grant.ticket.len(), grant.key[..].try_into()) {
            (16, Ok(k)) => k,
            _ => {
                return Err(failed(format!(
                    "{host} sent a malformed data channel grant"
                )))
            }
        };
        self.connect(host, &ips, grant.port, || {
            let (hs, hello) = handshake::hello(&secret)?;
            let mut first = grant.ticket.clone();
            first.extend_from_slice(&(hello.len() as u16).to_be_bytes());
            first.extend_from_slice(&hello);
            Ok((hs, first))
        })
        .await
        .map_err(|e| failed(e.why))
    }

    /// A connection to `port` at the first of `ips` that takes the hello
    /// `hello` makes (one per try), or why none did.
    async fn connect(
        &self,
        host: &str,
        ips: &[IpAddr],
        port: u16,
        hello: impl Fn() -> Result<(snow::HandshakeState, Vec<u8>), snow::Error>,
    ) -> Result<Conn, NoConn> {
        let mut last = String::new();
        let mut reached = false;
        for ip in ips {
            let addr = SocketAddr::new(*ip, port);
            let stream = match tokio::time::timeout(SETUP_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
                Err(_) => {
                    last = format!("{addr}: timed out");
                    continue;
                }
            };
            reached = true;
            // Made only for an address that took the connection: a keyed
            // hello costs Diffie-Hellman, and uses up one of its counts.
            let (hs, first) = hello().map_err(|e| NoConn {
                why: format!("handshake: {e}"),
                reached,
            })?;
            match tokio::time::timeout(SETUP_TIMEOUT, handshake(stream, hs, first)).await {
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
        Err(NoConn {
            why: format!("no data connection to {host} ({last})"),
            reached,
        })
    }
}

/// Why [`DataClient::connect`] opened no connection.
struct NoConn {
    why: String,
    /// Some address took the TCP connection: the node's data port is
    /// there, and a grant may do what the hello did not.
    reached: bool,
}

/// Why no data connection was opened.
enum Failed {
    /// The grant, a direct request, got no answer: the node cannot be
    /// reached directly for now (it is dead, or its inbound cap closed the
    /// connection the request dialled). A chunk over the mesh connection
    /// would be a direct request too, no likelier to arrive: the request
    /// fails, and the source is asked again after a growing wait (and
    /// dropped after a few in a row, as a dead node must be).
    Unreached(String),
    /// A grant (or none) and no connection from it: chunks go over the
    /// mesh connection for a while; `true` when the node has the channel
    /// off (as opposed to a setup that failed this time).
    Setup(String, bool),
}

/// The connection broke: not the answer to this request.
fn lost(e: String) -> DataError {
    DataError::Miss(Miss::Lost(e))
}

pub(crate) fn ip_of(multiaddr: &str) -> Option<IpAddr> {
    let mut parts = multiaddr.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("ip4" | "ip6"), Some(ip)) => ip.parse().ok(),
        _ => None,
    }
}

/// Opens a data connection on `stream` with the hello `first` (of the
/// handshake `hs`); returns it with the hello's round trip.
async fn handshake(
    stream: TcpStream,
    hs: snow::HandshakeState,
    first: Vec<u8>,
) -> std::io::Result<(Conn, Duration)> {
    let addr = stream.peer_addr()?;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let noise = |e: snow::Error| bad(format!("handshake: {e}"));
    let sent = Instant::now();
    wr.write_all(&first).await?;
    let mut len = [0u8; 2];
    rd.read_exact(&mut len).await?;
    let len = u16::from_be_bytes(len) as usize;
    if len > handshake::MESSAGE {
        return Err(bad(format!("a handshake message of {len} bytes")));
    }
    let mut reply = vec![0u8; len];
    rd.read_exact(&mut reply).await?;
    let (mut sealer, mut opener) = handshake::finish(hs, &reply).map_err(noise)?;
    if &opener.open(&mut rd, ACK.len()).await?[..] != ACK {
        return Err(bad("a wrong acknowledgement".into()));
    }
    let rtt = sent.elapsed();
    // From here on tokio only writes: the reader is a thread (below) with a
    // descriptor of its own, and the writing one is registered for
    // writability alone, so arriving data does not wake tokio's driver.
    let stream = rd.reunite(wr).map_err(|e| bad(e.to_string()))?.into_std()?;
    let reading = stream.try_clone()?;
    let peek = stream.try_clone()?;
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
                    .send(Err(Miss::Lost("data connection lost".into())).into());
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
                Err(e) => (Err(Miss::Lost(e)).into(), true),
            };
            let _ = w.reply.send(r);
            if fatal {
                rdead.0.store(true, Ordering::SeqCst);
                // The rest in line will never be answered on this stream.
                line_rx.close();
                while let Some(w) = line_rx.blocking_recv() {
                    let _ = w
                        .reply
                        .send(Err(Miss::Lost("data connection lost".into())).into());
                }
                return;
            }
        }
    };
    std::thread::Builder::new()
        .name("mm-data-rx".into())
        .spawn(reader)?;
    Ok((Conn { tx, dead, peek }, rtt))
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

/// Which nodes refused or could not be reached on the data channel, so that
/// chunks go the slower way for a while instead of failing: a minute for a
/// node with the channel off, a second after a failed setup.
#[derive(Default)]
struct Fallback(Mutex<HashMap<String, Instant>>);

impl Fallback {
    const OFF: Duration = Duration::from_secs(60);
    /// Short: the next setup may well work, and meanwhile a swarm's chunks
    /// would cross the mesh connection, at several times the CPU.
    const FAILED: Duration = Duration::from_secs(1);

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
    use crate::files::data::Identity;
    use std::sync::atomic::AtomicUsize;

    /// An overlay node on loopback that answers grant requests from
    /// `server`, counting them.
    async fn node(
        name: &str,
        peers: Vec<mm_overlay::Multiaddr>,
        server: Option<Arc<super::super::DataServer>>,
        grants: Arc<AtomicUsize>,
    ) -> Overlay {
        let (overlay, mut inbound) = mm_overlay::start(mm_overlay::Config {
            name: name.into(),
            context: "mm".into(),
            listen_ip: "127.0.0.1".parse().unwrap(),
            port: 0,
            degree: 1,
            keypair: mm_overlay::Keypair::generate_ed25519(),
            psk: None,
            peers,
            mdns: false,
            loopback_only: true,
            site: None,
            tuning: mm_overlay::Tuning::default(),
        })
        .await
        .unwrap();
        tokio::spawn(async move {
            while let Some(r) = inbound.recv().await {
                let grant = server.as_ref().map(|s| s.grant(&r.from).unwrap());
                grants.fetch_add(1, Ordering::SeqCst);
                let _ = r.reply.send(Ok(wire::encode(&grant)));
            }
        });
        overlay
    }

    /// A node that dials `holder` (which announces `data`), once it has
    /// seen that announcement.
    async fn puller_seeing(holder: &Overlay, data: mm_overlay::DataInfo) -> Overlay {
        holder.set_data(Some(data)).await.unwrap();
        let at = holder.snapshot().await.unwrap().listen[0].parse().unwrap();
        let puller = node("puller", vec![at], None, Arc::default()).await;
        for _ in 0..300 {
            let snap = puller.snapshot().await.unwrap();
            if snap.nodes.get("holder").is_some_and(|n| n.data.is_some()) {
                return puller;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the puller never saw the holder's data key");
    }

    /// A holder that knows the puller's key lets it in with a keyed hello
    /// and no grant; one that does not know it yet (its announcement has
    /// not arrived) refuses the hello, and the puller gets a grant and its
    /// connection all the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_holder_that_does_not_know_the_puller_yet_is_asked_for_a_grant() {
        for knows in [true, false] {
            let puller_id = Arc::new(Identity::new(None));
            let members = if knows {
                HashMap::from([(puller_id.public, "puller".to_string())])
            } else {
                HashMap::new()
            };
            let (_dir, server, holder_id) =
                super::super::server::tests::keyed_server(None, members).await;
            let grants = Arc::new(AtomicUsize::new(0));
            let holder = node("holder", vec![], Some(server.clone()), grants.clone()).await;
            let data = mm_overlay::DataInfo {
                port: server.port(),
                key: holder_id.public.to_vec(),
            };
            let puller = puller_seeing(&holder, data).await;
            let client = DataClient::new(puller.clone(), puller_id);
            // A have poll for a file the holder lacks: its answer (a miss
            // from the server) comes over a data connection.
            match client.have("holder", "nothing".into(), vec![1; 32]).await {
                Err(DataError::Miss(Miss::Failed(e))) => assert!(!e.is_empty()),
                Err(DataError::Miss(m)) => panic!("no answer from the server: {m:?}"),
                Err(DataError::Setup) => panic!("no data connection (knows: {knows})"),
                Ok(_) => panic!("bits for a file the holder lacks"),
            }
            assert!(client.rtt("holder").is_some(), "no data connection");
            let asked = grants.load(Ordering::SeqCst);
            assert_eq!(asked, usize::from(!knows), "grants asked (knows: {knows})");
        }
    }

    /// A connection the other end closed is seen as closed, one with an
    /// answer still unread (or none yet) is not.
    #[test]
    fn a_connection_the_server_closed_is_seen_as_closed() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        assert!(!peer_closed(&c), "open, nothing sent");
        s.write_all(b"answer").unwrap();
        drop(s);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!peer_closed(&c), "an answer still to read");
        let mut buf = [0u8; 6];
        std::io::Read::read_exact(&mut &c, &mut buf).unwrap();
        assert!(peer_closed(&c), "read, and closed");
    }

    /// A data port nobody listens on: the keyed hello fails without a
    /// TCP connection, and no grant is asked for (it would lead to the
    /// same closed port).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_data_port_is_not_asked_for_a_grant() {
        let grants = Arc::new(AtomicUsize::new(0));
        let holder = node("holder", vec![], None, grants.clone()).await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let data = mm_overlay::DataInfo {
            port,
            key: Identity::new(None).public.to_vec(),
        };
        let puller = puller_seeing(&holder, data).await;
        let client = DataClient::new(puller.clone(), Arc::new(Identity::new(None)));
        let got = client.have("holder", "f".into(), vec![1; 32]).await;
        assert!(matches!(got, Err(DataError::Setup)), "a connection?");
        assert_eq!(grants.load(Ordering::SeqCst), 0, "a grant was asked for");
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
