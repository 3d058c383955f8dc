//! A hostile peer against real nodes on loopback: a small libp2p client of
//! our own that holds the cluster key (a member gone bad, or its stolen
//! key) and skips identify, lies about its name, opens streams and stalls,
//! floods connections and grants, and sends junk to every port. After each
//! attack the node is alive, its memory and descriptors bounded, and
//! honest nodes are still served.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{wait_for, Node};
use futures::StreamExt;
use libp2p::core::transport::upgrade::Version;
use libp2p::core::Transport;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, pnet, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use mm_overlay::wire::{Direct, DirectReply};

const LONG: Duration = Duration::from_secs(120);

/// A request that is never finished: `len` bytes of junk, then a byte
/// every half second and never a close, so the node waits for the rest.
/// The trickle is how the hostile side learns that the node cut the stream:
/// a write to a reset stream fails, and the request ends as a failure.
#[derive(Clone, Default)]
struct Stall;

impl request_response::Codec for Stall {
    type Protocol = StreamProtocol;
    type Request = usize;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, _: &mut T) -> std::io::Result<usize>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        futures::future::pending().await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> std::io::Result<Vec<u8>>
    where
        T: futures::AsyncRead + Unpin + Send,
    {
        use futures::AsyncReadExt;
        let mut v = Vec::new();
        io.take(1 << 20).read_to_end(&mut v).await?;
        Ok(v)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        len: usize,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        use futures::AsyncWriteExt;
        let junk = vec![0x9fu8; 16 << 10];
        let mut sent = 0;
        while sent < len {
            let n = junk.len().min(len - sent);
            io.write_all(&junk[..n]).await?;
            sent += n;
        }
        io.flush().await?;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            io.write_all(&[0x9f]).await?;
            io.flush().await?;
        }
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> std::io::Result<()>
    where
        T: futures::AsyncWrite + Unpin + Send,
    {
        Ok(())
    }
}

#[derive(NetworkBehaviour)]
struct Hostile {
    // Answers pings like a node, so that only its silence on identify
    // can be held against it.
    ping: libp2p::ping::Behaviour,
    identify: Toggle<identify::Behaviour>,
    routed: request_response::Behaviour<Stall>,
    direct: request_response::Behaviour<Stall>,
    /// Well-formed direct requests, as a node sends them.
    asks: request_response::cbor::Behaviour<Direct, DirectReply>,
}

/// A peer with the cluster key in `key_file`; `name` is what it tells
/// identify (None: it never identifies itself).
fn hostile(key_file: &std::path::Path, name: Option<&str>) -> Swarm<Hostile> {
    let text = std::fs::read_to_string(key_file).unwrap();
    let psk: pnet::PreSharedKey = text.trim_start().parse().unwrap();
    let cfg = || {
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(3600))
            .with_max_concurrent_streams(1024)
    };
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            let mut mux = yamux::Config::default();
            mux.set_max_num_streams(1024);
            tcp::tokio::Transport::new(tcp::Config::default())
                .and_then(move |s, _| pnet::PnetConfig::new(psk).handshake(s))
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key).unwrap())
                .multiplex(mux)
                .boxed()
        })
        .unwrap()
        .with_behaviour(|key| Hostile {
            ping: libp2p::ping::Behaviour::new(libp2p::ping::Config::new()),
            identify: name
                .map(|n| {
                    identify::Behaviour::new(
                        identify::Config::new("/mm/mm/2".into(), key.public())
                            .with_agent_version(format!("mm/0.1.0 {n}")),
                    )
                })
                .into(),
            routed: request_response::Behaviour::with_codec(
                Stall,
                [(StreamProtocol::new("/mm/route/2"), ProtocolSupport::Full)],
                cfg(),
            ),
            direct: request_response::Behaviour::with_codec(
                Stall,
                [(StreamProtocol::new("/mm/direct/2"), ProtocolSupport::Full)],
                cfg(),
            ),
            asks: request_response::cbor::Behaviour::new(
                [(
                    StreamProtocol::new("/mm/direct/2"),
                    ProtocolSupport::Outbound,
                )],
                cfg(),
            ),
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build()
}

/// What the hostile peer saw while it was driven.
#[derive(Default, Debug)]
struct Seen {
    established: Vec<PeerId>,
    closed: usize,
    /// Requests that ended in failure: the node cut their streams. Request
    /// ids count per swarm, so each carries the index of its swarm.
    failed: HashSet<(usize, Proto, OutboundRequestId)>,
    /// Answers to well-formed direct requests: granted or refused.
    answers: Vec<Result<(), String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Proto {
    Routed,
    Direct,
}

/// Drives `swarm` until `dur` has passed.
async fn drive_for(i: usize, swarm: &mut Swarm<Hostile>, dur: Duration) -> Seen {
    let mut seen = Seen::default();
    let end = tokio::time::sleep(dur);
    tokio::pin!(end);
    loop {
        tokio::select! {
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    seen.established.push(peer_id)
                }
                SwarmEvent::ConnectionClosed { .. } => seen.closed += 1,
                SwarmEvent::Behaviour(HostileEvent::Routed(
                    request_response::Event::OutboundFailure { request_id, .. },
                )) => {
                    seen.failed.insert((i, Proto::Routed, request_id));
                }
                SwarmEvent::Behaviour(HostileEvent::Direct(
                    request_response::Event::OutboundFailure { request_id, .. },
                )) => {
                    seen.failed.insert((i, Proto::Direct, request_id));
                }
                SwarmEvent::Behaviour(HostileEvent::Asks(request_response::Event::Message {
                    message: request_response::Message::Response { response, .. },
                    ..
                })) => seen
                    .answers
                    .push(response.result.map(|_| ()).map_err(|e| format!("{e:?}"))),
                SwarmEvent::Behaviour(HostileEvent::Asks(
                    request_response::Event::OutboundFailure { error, .. },
                )) => seen.answers.push(Err(format!("failed: {error}"))),
                _ => {}
            },
            _ = &mut end => break,
        }
    }
    seen
}

fn drive(rt: &tokio::runtime::Runtime, swarm: &mut Swarm<Hostile>, dur: Duration) -> Seen {
    rt.block_on(drive_for(0, swarm, dur))
}

/// Drives every swarm at once for `dur`, and joins what they saw.
fn drive_all(
    rt: &tokio::runtime::Runtime,
    swarms: &mut Vec<Swarm<Hostile>>,
    dur: Duration,
) -> Seen {
    let tasks: Vec<_> = swarms
        .drain(..)
        .enumerate()
        .map(|(i, mut h)| {
            rt.spawn(async move {
                let seen = drive_for(i, &mut h, dur).await;
                (h, seen)
            })
        })
        .collect();
    let mut all = Seen::default();
    for t in tasks {
        let (h, seen) = rt.block_on(t).unwrap();
        swarms.push(h);
        all.established.extend(seen.established);
        all.closed += seen.closed;
        all.failed.extend(seen.failed);
    }
    all
}

fn node(name: &str, extra: &[&str]) -> Node {
    let key = common::cluster_key().display().to_string();
    let mut args = vec!["--psk-file", &key];
    args.extend_from_slice(extra);
    Node::local(name, &args)
}

fn addr(n: &Node) -> Multiaddr {
    format!("/ip4/127.0.0.1/tcp/{}", n.port()).parse().unwrap()
}

fn fds(n: &Node) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", n.pid().unwrap()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The node still answers, and still serves an honest node a file.
fn still_serves(victim: &Node, honest: &Node, name: &str) {
    let t = Instant::now();
    victim.mm(&["mesh", "status"]);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "mesh status took {:?}",
        t.elapsed()
    );
    let data = mm_store::mem::content(8 << 20, name.len() as u64);
    let p = victim.base().join("files").join(name);
    std::fs::write(&p, &data).unwrap();
    honest.mm(&["file", "get", name, "wait"]);
    assert_eq!(
        std::fs::read(honest.base().join("files").join(name)).unwrap(),
        data
    );
}

/// Requests that stall are cut off: one larger than its protocol takes as
/// soon as it passes the limit, the rest once all the stalled ones together
/// pass the node's read budget, and every one at its read deadline. The
/// hostile side sees each cut as a failed request (its next write meets a
/// reset), so the test counts what the node still holds, byte for byte.
#[test]
fn stalled_streams_are_cut_at_the_size_limit_the_budget_and_the_deadline() {
    const BUDGET: usize = 32 << 20;
    let victim = node("victim", &[]);
    let honest = node("honest", &["--peer", &victim.addr()]);
    victim.wait_size(2, LONG);
    let before = victim.rss_kib().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in = rt.enter();
    // Four members gone bad, identified, so their streams are read.
    let mut bad: Vec<Swarm<Hostile>> = (0..4)
        .map(|i| hostile(&common::cluster_key(), Some(&format!("mallory{i}"))))
        .collect();
    let mut ids = Vec::new();
    for h in &mut bad {
        h.dial(addr(&victim)).unwrap();
        let seen = drive(&rt, h, Duration::from_secs(2));
        ids.push(*seen.established.first().expect("connected to the victim"));
    }

    // Over the size limit (256 KiB routed, 64 KiB direct): cut long before
    // the 10 s deadline, though the budget has room for both.
    let big = (
        bad[0].behaviour_mut().routed.send_request(&ids[0], 2 << 20),
        bad[0]
            .behaviour_mut()
            .direct
            .send_request(&ids[0], 900 << 10),
    );
    let seen = drive(&rt, &mut bad[0], Duration::from_secs(5));
    assert!(
        seen.failed.contains(&(0, Proto::Routed, big.0))
            && seen.failed.contains(&(0, Proto::Direct, big.1)),
        "requests over the size limit were not cut: {:?}",
        seen.failed
    );

    // Under the size limit, far over the budget all together: 4 x 120 x
    // (250 + 60) KiB is 145 MiB. (120 of each keeps a connection under its
    // 256 streams, so the stream cap is not what cuts them.)
    let mut sizes = HashMap::new();
    for (i, (h, id)) in bad.iter_mut().zip(&ids).enumerate() {
        for _ in 0..120 {
            let r = h.behaviour_mut().routed.send_request(id, 250 << 10);
            sizes.insert((i, Proto::Routed, r), 250usize << 10);
            let d = h.behaviour_mut().direct.send_request(id, 60 << 10);
            sizes.insert((i, Proto::Direct, d), 60usize << 10);
        }
    }
    // Short of the 10 s deadline, long enough for every request to arrive.
    let mut seen = drive_all(&rt, &mut bad, Duration::from_secs(6));
    let during = victim.rss_kib().unwrap();
    let held = |seen: &Seen| -> usize {
        sizes
            .iter()
            .filter(|(k, _)| !seen.failed.contains(k))
            .map(|(_, n)| n)
            .sum()
    };
    let held_now = held(&seen);
    eprintln!(
        "{} of {} requests cut, {} KiB held; RSS {before} KiB before, {during} KiB during",
        seen.failed.len(),
        sizes.len(),
        held_now >> 10
    );
    // Each live request holds all its bytes (and a trickle of a few more).
    assert!(
        held_now <= BUDGET + sizes.len() * 64,
        "the node holds {held_now} bytes of stalled requests, over its {BUDGET} budget"
    );
    // And the budget went to requests, not to nothing: the attack was read.
    assert!(
        held_now >= BUDGET / 4,
        "only {held_now} bytes held: were the requests read?"
    );
    // The process as a whole: the budget, the multiplexers' windows, slack.
    assert!(
        during < before + 128 * 1024,
        "RSS grew from {before} KiB to {during} KiB"
    );

    // Past the deadline, every stalled request is gone.
    let later = drive_all(&rt, &mut bad, Duration::from_secs(20));
    seen.failed.extend(later.failed);
    assert_eq!(
        held(&seen),
        0,
        "stalled requests outlived the read deadline"
    );
    still_serves(&victim, &honest, "after-stall.bin");
}

#[test]
fn a_peer_that_never_identifies_is_not_answered_and_is_dropped() {
    let victim = node("victim", &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in = rt.enter();
    let mut h = hostile(&common::cluster_key(), None);
    h.dial(addr(&victim)).unwrap();
    let seen = drive(&rt, &mut h, Duration::from_secs(5));
    // Connected, and not taken for a peer.
    assert_eq!(seen.closed, 0, "{seen:?}");
    assert_eq!(victim.status("peers"), "0");
    let seen = drive(&rt, &mut h, Duration::from_secs(9));
    assert!(
        seen.closed > 0,
        "the node kept a peer that never identified itself: {seen:?}"
    );
    assert_eq!(victim.status("peers"), "0");
    wait_for("the log line", LONG, || {
        victim.log().contains("no identity within").then_some(())
    });
}

#[test]
fn a_peer_that_takes_a_name_in_use_is_refused() {
    let victim = node("victim", &[]);
    let honest = node("honest", &["--peer", &victim.addr()]);
    victim.wait_size(2, LONG);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in = rt.enter();
    let mut h = hostile(&common::cluster_key(), Some("honest"));
    h.dial(addr(&victim)).unwrap();
    drive(&rt, &mut h, Duration::from_secs(4));
    wait_for("the refusal", LONG, || {
        let log = victim.log();
        (log.contains("it is named 'honest', which") && log.contains("names must be unique"))
            .then_some(())
    });
    // The real one is still the one the mesh knows.
    assert_eq!(victim.size(), 2);
    let ans = victim.json(&["mesh", "send", "honest", "version"]);
    assert_eq!(ans[0]["error"], "", "{ans:?}");
    drop(honest);
}

/// The data channel's port, from the node's log.
fn data_port(n: &Node) -> u16 {
    wait_for("the data channel", LONG, || {
        let log = n.log();
        let at = log.find("data channel on port ")? + "data channel on port ".len();
        log[at..].split_whitespace().next()?.parse().ok()
    })
}

/// A connection to `port` on this host from 127.0.0.2, which the node's
/// per-address caps count apart from the honest nodes on 127.0.0.1.
async fn from_elsewhere(port: u16) -> Option<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().ok()?;
    sock.bind("127.0.0.2:0".parse().unwrap()).ok()?;
    sock.connect(([127, 0, 0, 1], port).into()).await.ok()
}

/// The honest node fetched from the victim over the data channel, the fast
/// path, not the overlay connection the puller falls back to.
fn took_the_fast_path(honest: &Node, victim: &Node) {
    assert!(
        !honest
            .log()
            .contains(&format!("no data channel to {}", victim.name)),
        "the honest node was pushed off the data channel:\n{}",
        honest.log()
    );
}

/// Silent connections and junk to both ports, from 127.0.0.2 (another
/// host, as far as the per-address caps go): the node's descriptors stay
/// bounded, it answers, and the honest node on 127.0.0.1 still gets its
/// file over the data channel.
#[test]
fn floods_of_connections_and_junk_leave_the_node_serving() {
    let victim = node("victim", &[]);
    let honest = node("honest", &["--peer", &victim.addr()]);
    victim.wait_size(2, LONG);
    let port: u16 = victim.port().parse().unwrap();
    let data_port = data_port(&victim);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let held = rt.block_on(async {
        let mut held = Vec::new();
        for i in 0..600u64 {
            let p = if i % 2 == 0 { port } else { data_port };
            if let Some(mut s) = from_elsewhere(p).await {
                if i % 3 == 0 {
                    use tokio::io::AsyncWriteExt;
                    let _ = s.write_all(&mm_store::mem::content(300, i)).await;
                }
                held.push(s);
            }
        }
        held
    });
    assert!(held.len() > 100, "only {} connections made", held.len());
    // The node never took more descriptors than it can have, and answers.
    assert!(fds(&victim) < 1000, "{} descriptors open", fds(&victim));
    still_serves(&victim, &honest, "after-flood.bin");
    took_the_fast_path(&honest, &victim);
    drop(held);
    // The warnings about refused connections are few.
    let log = victim.log();
    let warnings = log.matches("inbound connection").count() + log.matches("rejected").count();
    assert!(
        warnings < 50,
        "{warnings} warning lines for 600 connections"
    );
}

/// A member asks for data-channel grants as fast as it can, and opens
/// data connections that never prove they hold a key: it gets a few
/// grants, the rest are refused, and an honest node still gets its file
/// over the data channel.
#[test]
fn a_flood_of_grants_gets_a_few_and_leaves_honest_nodes_their_channel() {
    let victim = node("victim", &[]);
    let honest = node("honest", &["--peer", &victim.addr()]);
    victim.wait_size(2, LONG);
    let data_port = data_port(&victim);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in = rt.enter();
    let mut h = hostile(&common::cluster_key(), Some("mallory"));
    h.dial(addr(&victim)).unwrap();
    let seen = drive(&rt, &mut h, Duration::from_secs(2));
    let id = *seen.established.first().expect("connected to the victim");
    let ask = Direct {
        body: mm_overlay::wire::encode(&mm_node::proto::Request::Data),
    };
    // 200 at once: more streams than the node's 256 per connection would
    // have the multiplexer reset the connection, and test that instead.
    for _ in 0..200 {
        h.behaviour_mut().asks.send_request(&id, ask.clone());
    }
    let seen = drive(&rt, &mut h, Duration::from_secs(5));
    let granted = seen.answers.iter().filter(|a| a.is_ok()).count();
    let mut kinds: HashMap<&str, usize> = HashMap::new();
    for a in &seen.answers {
        *kinds
            .entry(a.as_ref().err().map_or("granted", |e| e.as_str()))
            .or_default() += 1;
    }
    eprintln!("answers: {kinds:?}");
    assert_eq!(seen.answers.len(), 200, "{kinds:?}");
    assert_eq!(
        kinds.get(r#"Remote("too many data connections being set up; try again")"#),
        Some(&(200 - granted)),
        "{kinds:?}"
    );
    assert!(
        (1..=8).contains(&granted),
        "{granted} grants for one node: {:?}",
        &seen.answers[..10.min(seen.answers.len())]
    );
    // Connections that never prove anything, held open.
    let silent: Vec<_> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..64 {
            v.extend(from_elsewhere(data_port).await);
        }
        v
    });
    still_serves(&victim, &honest, "after-grants.bin");
    took_the_fast_path(&honest, &victim);
    drop(silent);
}
