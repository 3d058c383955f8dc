//! A deterministic swarm: one complete holder and N pullers on a virtual
//! clock, each puller keeping the pull loop's books around the real
//! [`pick::next`], complete holders answering through the real [`Ledger`].
//! It is here to see what the picker does at a scale no lab has (1,000
//! hosts, deaths, slow hosts, a thin link between sites), and to keep the
//! swarm's promises tested: every live puller gets every chunk, nothing
//! corrupt, the holder sends each chunk about once.
//!
//! The model, where it is simpler than the engine:
//! - One event at a time from a heap ordered by (time, sequence), one seed
//!   for every random choice, maps iterated only in key order: a seed is a
//!   run. `Instant`s handed to the engine's code are `base + t`, only ever
//!   compared and subtracted.
//! - Latencies are one way, per site pair; a request costs one, its answer
//!   another, and a source's round trip (for the picker) is both, known from
//!   its first answer on (the engine learns it from the handshake).
//! - Each (sender, receiver) pair is one connection whose requests are
//!   answered in order, one at a time, as a data connection's thread does:
//!   read the request, decide (have-bits, or the ledger), send. Only what is
//!   sending is a flow; a miss is answered at once and costs no bandwidth.
//! - A flow is limited by the sender's uplink, the receiver's downlink and
//!   the site link it crosses (one per direction). Rates are max-min fair
//!   per link, lazily: when a flow starts or ends, each of its links is
//!   re-divided by water-filling, each flow there bounded by what its other
//!   links have left. A flow slowed down there frees capacity further away,
//!   which is taken up when those links next see a flow start or end (every
//!   few milliseconds). No link ever carries more than its capacity. Plain
//!   equal shares would leave a receiver's downlink idle whenever one of its
//!   flows is held back by a busy sender, which is most of a swarm's time.
//! - A puller's news (the chunks it got since the asker last heard) goes
//!   with each of its answers, as of when the answer is read, as the data
//!   channel sends it. Have polls and "who holds it" answers cost a round
//!   trip and no bandwidth (their volume is counted: see
//!   [`Stats::poll_bytes`]), and carry the bitfield as of half-way.
//!   Writing is instant unless [`Scenario::write_delay`] says otherwise.
//! - A dying host stops at once: what it was asked before it died fails
//!   with [`Miss::Lost`] after [`Scenario::dead_timeout`] (the connection
//!   broke), later requests with [`Miss::Failed`] after as long (no new
//!   connection can be had). Have polls to it fail as long after; the "who
//!   holds it" question waits as long for it while anyone is dead.
//! - A puller that is done holds the file: it serves through a ledger of
//!   its own from then on, as the engine does once the file is in place.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::bits::{bit, clear_bit, set_bit};
use super::ledger::{Ledger, Portion};
use super::pick::{self, Hints};
use super::source::SourceStat;
use super::{Miss, News, Tuning, MAX_NEWS, MAX_WRITING, PER_FILE};
use crate::manifest::{CHUNK_SIZE, MAX_RUN};

/// The pull loop wakes at least this often (its `select!` sleeps 100 ms).
const TICK: u64 = 100_000_000;
/// Progress is recorded in slices of a tenth of the ideal time, this many
/// (and one for all that comes after).
const SLICES: usize = 30;
/// No chunk here.
const NONE: u32 = u32::MAX;

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

fn secs(t: u64) -> f64 {
    t as f64 / 1e9
}

/// What chunk `i` holds: a puller checks every chunk it receives against
/// it, as the engine checks a chunk's hash.
fn content(i: usize) -> u32 {
    (i as u32).wrapping_mul(0x9E37_79B9).rotate_left(7) ^ 0xA5A5_A5A5
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub seed: u64,
    pub pullers: usize,
    pub chunks: usize,
    /// Every host's uplink and downlink, bytes per second.
    pub cap: f64,
    /// Fraction of the pullers with `slow_factor` times the links.
    pub slow: f64,
    pub slow_factor: f64,
    /// Fraction of the pullers that die, each at a time drawn uniformly in
    /// `die_between` (fractions of the ideal time, size / cap).
    pub dying: f64,
    pub die_between: (f64, f64),
    pub dead_timeout: Duration,
    /// Pullers are spread evenly over this many sites; the holder is in
    /// site 0.
    pub sites: usize,
    /// One-way latencies.
    pub in_site: Duration,
    pub across: Duration,
    /// The link between each pair of sites, each way, shared by every flow
    /// crossing it; none: only the hosts' own links limit.
    pub site_link: Option<f64>,
    /// Which other pullers a puller is told of: all that have started
    /// (what the engine learns from the mesh), or at most this many of
    /// them, chosen at random once. A puller still learns of any puller a
    /// holder points it at.
    pub known: Option<usize>,
    pub write_delay: Duration,
    /// Pullers start at times drawn uniformly in 0..start_spread.
    pub start_spread: Duration,
    pub tuning: Tuning,
    /// Prints a line to stderr every 10 s of wall time: long runs are long.
    pub progress: bool,
    /// Given up at this many times the ideal time, or after a minute if
    /// that is later (a small file takes the engine's waits, not its size).
    pub limit: f64,
}

impl Scenario {
    /// `pullers` on one site pull `chunks` at 1 Gbit/s each way.
    pub fn new(name: &str, pullers: usize, chunks: usize) -> Scenario {
        Scenario {
            name: name.into(),
            seed: 1,
            pullers,
            chunks,
            cap: 125e6,
            slow: 0.0,
            slow_factor: 0.1,
            dying: 0.0,
            die_between: (0.1, 0.9),
            dead_timeout: Duration::from_secs(1),
            sites: 1,
            in_site: Duration::from_micros(200),
            across: Duration::from_millis(20),
            site_link: None,
            known: None,
            write_delay: Duration::ZERO,
            start_spread: Duration::ZERO,
            tuning: Tuning::default(),
            progress: false,
            limit: 30.0,
        }
    }

    /// The file's size over one host's link, in seconds: no pull of it can
    /// be faster.
    pub fn ideal(&self) -> f64 {
        self.chunks as f64 * CHUNK_SIZE as f64 / self.cap
    }
}

/// What a run gave. Equal for equal scenarios: it holds nothing of the
/// machine it ran on (that is in [`Cost`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub name: String,
    pub seed: u64,
    pub pullers: usize,
    pub chunks: usize,
    /// Seconds: size / cap.
    pub ideal: f64,
    /// Pullers alive at the end, and those of them done.
    pub live: usize,
    pub done: usize,
    pub dead: usize,
    /// Seconds until the last live puller was done, if all were.
    pub last: Option<f64>,
    /// The same, leaving out the slow pullers.
    pub last_fast: Option<f64>,
    /// The median live puller's time, if at least half were done.
    pub p50: Option<f64>,
    /// Chunks the original holder sent (whole).
    pub origin_chunks: u64,
    /// Chunks received that were here or being written already.
    pub wasted_chunks: u64,
    /// Chunks received with the wrong content.
    pub corrupt: u64,
    /// Done pullers whose copy differs from the file anywhere.
    pub bad_copies: usize,
    pub stats: Stats,
    /// A hash of every event in order: two runs that differ anywhere differ
    /// here.
    pub trace: u64,
}

/// Where the time went, for finding what limits the swarm.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    pub events: u64,
    /// Calls of [`pick::next`], and the requests they gave.
    pub picks: u64,
    pub asks: u64,
    pub endgame_asks: u64,
    pub origin_asks: u64,
    /// Why `schedule` stopped asking: the per-file or writing limit; no
    /// source with room; sources with room, but nothing to ask of them.
    pub stop_full: u64,
    pub stop_no_room: u64,
    pub stop_nothing: u64,
    pub not_yet: u64,
    pub redirects: u64,
    /// Promises (redirects) that ran out before the chunk came.
    pub promises_expired: u64,
    pub lost: u64,
    pub failed: u64,
    pub have_polls: u64,
    /// Bytes the have polls would have moved (a bitfield each).
    pub poll_bytes: u64,
    /// Per tenth of the ideal time ([`SLICES`] of them, and one for all
    /// that comes after): bytes the holder's uplink carried, bytes all downlinks
    /// carried, and useful bytes the pullers wrote.
    pub origin_bytes: Vec<f64>,
    pub down_bytes: Vec<f64>,
    pub useful_bytes: Vec<f64>,
    /// Seconds until each puller's first chunk, averaged.
    pub first_chunk: f64,
    /// Seconds until a tenth, half, and nine tenths of the live pullers
    /// were done.
    pub done_10: Option<f64>,
    pub done_90: Option<f64>,
    /// Virtual seconds simulated.
    pub end: f64,
}

/// What a run cost the machine.
#[derive(Debug, Clone, Default)]
pub struct Cost {
    pub wall: Duration,
    /// Inside [`pick::next`].
    pub picking: Duration,
    /// Applying have polls and refreshes to the pullers' views.
    pub views: Duration,
}

/// Simulates `sc` to the end: every live puller done, or the time limit.
pub fn run(sc: &Scenario) -> (Report, Cost) {
    let wall = Instant::now();
    let mut sim = Sim::new(sc);
    sim.run();
    let mut cost = sim.cost.clone();
    cost.wall = wall.elapsed();
    (sim.report(), cost)
}

struct Host {
    site: usize,
    slow: bool,
    start: u64,
    die_at: Option<u64>,
    died: Option<u64>,
    done_at: Option<u64>,
    first_at: Option<u64>,
    /// A complete holder: the origin, or a puller that is done.
    ledger: Option<Ledger>,
    /// Each chunk's content as it got here (`NONE` while missing).
    store: Vec<u32>,
    /// Each chunk as it got here, and when: the puller's news, and what
    /// takes a bitfield back to the moment it was asked for.
    log: Vec<(u64, u32)>,
    pull: Option<Box<Pull>>,
    /// A tick is queued for it.
    ticking: bool,
    last_step: u64,
}

/// One puller's loop state, as in `pull.rs`.
struct Pull {
    have: Vec<u8>,
    got: usize,
    writing: HashSet<usize>,
    inflight: HashMap<usize, HashSet<String>>,
    hints: Hints,
    sources: BTreeMap<String, SourceStat>,
    rtts: HashMap<String, Duration>,
    rng: StdRng,
    last_have: u64,
    /// Per host: a have poll is out.
    polling: Vec<bool>,
    last_refresh: Option<u64>,
    refreshing: bool,
    retry_wait: Duration,
    /// Of the [`Scenario::known`] policy: the pullers it may be told of.
    admit: Option<Vec<bool>>,
}

struct Req {
    first: u32,
    count: u32,
    sent: u64,
    /// Log entries of the source the asker has heard, if it asked for news.
    seen: Option<u32>,
}

/// The answer being sent on a connection.
struct Sending {
    req: Req,
    k: usize,
    tags: [u32; MAX_RUN],
    news: Option<News>,
}

/// What a (sender, receiver) pair has in hand; while sending, it is a flow.
struct Conn {
    from: u32,
    to: u32,
    links: [u32; 3],
    nlinks: usize,
    /// Its place in each link's list while it flows.
    pos: [u32; 3],
    queue: VecDeque<Req>,
    sending: Option<Sending>,
    flowing: bool,
    rate: f64,
    /// Bytes left of the answer, as of `at`.
    left: f64,
    at: u64,
}

struct Link {
    cap: f64,
    sum: f64,
    flows: Vec<u32>,
}

enum Ans {
    Data { k: usize, tags: [u32; MAX_RUN] },
    Miss(Miss),
}

enum Ev {
    Start(u32),
    /// A request reaches `to`.
    Arrive {
        to: u32,
        from: u32,
        first: u32,
        count: u32,
        sent: u64,
        seen: Option<u32>,
    },
    /// An answer reaches `to`.
    Reply {
        to: u32,
        from: u32,
        first: u32,
        count: u32,
        ans: Ans,
        news: Option<News>,
    },
    Written {
        p: u32,
        from: u32,
        idx: u32,
        tag: u32,
    },
    Have {
        p: u32,
        sent: u64,
        targets: Vec<u32>,
    },
    Refresh {
        p: u32,
        sent: u64,
    },
    Tick(u32),
    Die(u32),
}

struct Item {
    t: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Item) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Item) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    // Reversed: the heap's top is the earliest.
    fn cmp(&self, o: &Item) -> Ordering {
        (o.t, o.seq).cmp(&(self.t, self.seq))
    }
}

/// When each flow ends, by connection: an indexed heap, so a new rate moves
/// its flow's end instead of leaving a stale one behind.
#[derive(Default)]
struct Ends {
    heap: Vec<(u64, u32)>,
    at: Vec<u32>,
}

impl Ends {
    fn set(&mut self, c: u32, t: u64) {
        let c_ = c as usize;
        if self.at.len() <= c_ {
            self.at.resize(c_ + 1, NONE);
        }
        if self.at[c_] == NONE {
            self.heap.push((t, c));
            self.at[c_] = (self.heap.len() - 1) as u32;
            self.up(self.heap.len() - 1);
        } else {
            let i = self.at[c_] as usize;
            let old = self.heap[i].0;
            self.heap[i].0 = t;
            if t < old {
                self.up(i);
            } else {
                self.down(i);
            }
        }
    }

    fn remove(&mut self, c: u32) {
        let Some(&i) = self.at.get(c as usize) else {
            return;
        };
        if i == NONE {
            return;
        }
        let i = i as usize;
        self.at[c as usize] = NONE;
        let last = self.heap.pop().expect("an entry");
        if i < self.heap.len() {
            self.heap[i] = last;
            self.at[last.1 as usize] = i as u32;
            self.up(i);
            let j = self.at[last.1 as usize] as usize;
            self.down(j);
        }
    }

    fn peek(&self) -> Option<(u64, u32)> {
        self.heap.first().copied()
    }

    fn swap(&mut self, i: usize, j: usize) {
        self.heap.swap(i, j);
        self.at[self.heap[i].1 as usize] = i as u32;
        self.at[self.heap[j].1 as usize] = j as u32;
    }

    fn up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i] < self.heap[parent] {
                self.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut m = i;
            if l < self.heap.len() && self.heap[l] < self.heap[m] {
                m = l;
            }
            if r < self.heap.len() && self.heap[r] < self.heap[m] {
                m = r;
            }
            if m == i {
                break;
            }
            self.swap(i, m);
            i = m;
        }
    }
}

struct Sim<'a> {
    sc: &'a Scenario,
    t: &'a Tuning,
    n: usize,
    base: Instant,
    now: u64,
    seq: u64,
    events: BinaryHeap<Item>,
    ends: Ends,
    names: Vec<String>,
    hosts: Vec<Host>,
    conns: Vec<Conn>,
    conn_of: HashMap<(u32, u32), u32>,
    /// Per host: its connections as sender, and as receiver.
    out_conns: Vec<Vec<u32>>,
    in_conns: Vec<Vec<u32>>,
    links: Vec<Link>,
    scratch: Vec<(f64, u32)>,
    /// Pullers neither done nor dead.
    pulling: usize,
    any_dead: bool,
    origin_chunks: u64,
    wasted: u64,
    corrupt: u64,
    /// Of every flow, for the meters.
    total_rate: f64,
    stats: Stats,
    cost: Cost,
    trace: u64,
}

impl<'a> Sim<'a> {
    fn new(sc: &'a Scenario) -> Sim<'a> {
        let n = sc.chunks;
        let hosts_n = sc.pullers + 1;
        let mut rng = StdRng::seed_from_u64(sc.seed);
        // Roles by a shuffle, so no name is special: the first dying, then
        // slow, then sites in turn.
        let mut order: Vec<usize> = (1..hosts_n).collect();
        order.shuffle(&mut rng);
        let dying = (sc.pullers as f64 * sc.dying).round() as usize;
        let slow = (sc.pullers as f64 * sc.slow).round() as usize;
        let ideal = ns(Duration::from_secs_f64(sc.ideal()));
        let mut hosts: Vec<Host> = (0..hosts_n)
            .map(|_| Host {
                site: 0,
                slow: false,
                start: 0,
                die_at: None,
                died: None,
                done_at: None,
                first_at: None,
                ledger: None,
                store: Vec::new(),
                log: Vec::new(),
                pull: None,
                ticking: false,
                last_step: 0,
            })
            .collect();
        for (k, &h) in order.iter().enumerate() {
            if k < dying {
                let (a, b) = sc.die_between;
                let f = rng.gen_range(a..b.max(a + 1e-9));
                hosts[h].die_at = Some((ideal as f64 * f) as u64);
            } else if k < dying + slow {
                hosts[h].slow = true;
            }
        }
        let mut order: Vec<usize> = (1..hosts_n).collect();
        order.shuffle(&mut rng);
        for (k, &h) in order.iter().enumerate() {
            hosts[h].site = k % sc.sites.max(1);
        }
        let spread = ns(sc.start_spread);
        for h in hosts.iter_mut().skip(1) {
            h.start = if spread > 0 {
                rng.gen_range(0..spread)
            } else {
                0
            };
        }
        hosts[0].ledger = Some(Ledger::new(&[]));
        hosts[0].store = (0..n).map(content).collect();
        let names: Vec<String> = (0..hosts_n).map(|h| format!("h{h:05}")).collect();
        let mut links = Vec::new();
        for h in &hosts {
            let cap = if h.slow {
                sc.cap * sc.slow_factor
            } else {
                sc.cap
            };
            for _ in 0..2 {
                links.push(Link {
                    cap,
                    sum: 0.0,
                    flows: Vec::new(),
                });
            }
        }
        let sites = sc.sites.max(1);
        for _ in 0..sites * sites {
            links.push(Link {
                cap: sc.site_link.unwrap_or(f64::INFINITY),
                sum: 0.0,
                flows: Vec::new(),
            });
        }
        let mut sim = Sim {
            sc,
            t: &sc.tuning,
            n,
            base: Instant::now(),
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            ends: Ends::default(),
            names,
            hosts,
            conns: Vec::new(),
            conn_of: HashMap::new(),
            out_conns: vec![Vec::new(); hosts_n],
            in_conns: vec![Vec::new(); hosts_n],
            links,
            scratch: Vec::new(),
            pulling: sc.pullers,
            any_dead: false,
            origin_chunks: 0,
            wasted: 0,
            corrupt: 0,
            total_rate: 0.0,
            stats: Stats {
                origin_bytes: vec![0.0; SLICES + 1],
                down_bytes: vec![0.0; SLICES + 1],
                useful_bytes: vec![0.0; SLICES + 1],
                ..Stats::default()
            },
            cost: Cost::default(),
            trace: 0xcbf2_9ce4_8422_2325,
        };
        for p in 1..hosts_n {
            let seed = rng.gen::<u64>();
            let admit = sc.known.map(|k| {
                let mut others: Vec<usize> = (1..hosts_n).filter(|&q| q != p).collect();
                others.shuffle(&mut rng);
                let mut admit = vec![false; hosts_n];
                for &q in others.iter().take(k) {
                    admit[q] = true;
                }
                admit
            });
            sim.hosts[p].pull = Some(Box::new(Pull {
                have: vec![0u8; n.div_ceil(8)],
                got: 0,
                writing: HashSet::new(),
                inflight: HashMap::new(),
                hints: Hints::default(),
                sources: BTreeMap::new(),
                rtts: HashMap::new(),
                rng: StdRng::seed_from_u64(seed),
                last_have: 0,
                polling: vec![false; hosts_n],
                last_refresh: None,
                refreshing: false,
                retry_wait: sc.tuning.retry_first,
                admit,
            }));
            sim.hosts[p].store = vec![NONE; n];
            let start = sim.hosts[p].start;
            sim.push(start, Ev::Start(p as u32));
            if let Some(t) = sim.hosts[p].die_at {
                sim.push(t, Ev::Die(p as u32));
            }
        }
        sim
    }

    fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Item {
            t,
            seq: self.seq,
            ev,
        });
    }

    fn inst(&self, t: u64) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    fn lat(&self, a: u32, b: u32) -> u64 {
        if self.hosts[a as usize].site == self.hosts[b as usize].site {
            ns(self.sc.in_site)
        } else {
            ns(self.sc.across)
        }
    }

    fn id(name: &str) -> u32 {
        name[1..].parse().expect("a simulated host's name")
    }

    fn note(&mut self, x: u64) {
        self.trace = (self.trace ^ x).wrapping_mul(0x0100_0000_01b3);
    }

    /// Books what the holder's uplink and all downlinks carried from now
    /// until `to` (rates change only at events), slice by slice.
    fn meter(&mut self, to: u64) {
        let width = (self.sc.ideal() / 10.0 * 1e9).max(1.0);
        let (origin, down) = (self.links[0].sum, self.total_rate);
        let mut t = self.now;
        while t < to {
            let k = ((t as f64 / width) as usize).min(SLICES);
            let end = if k == SLICES {
                to
            } else {
                (((k + 1) as f64 * width).ceil() as u64).clamp(t + 1, to)
            };
            let dt = secs(end - t);
            self.stats.origin_bytes[k] += origin * dt;
            self.stats.down_bytes[k] += down * dt;
            t = end;
        }
    }

    /// A progress line, with the mean size of what the picker walks.
    fn show(&self, t: u64) {
        let (mut k, mut sources, mut inflight, mut promised) = (0, 0, 0, 0);
        for st in self.hosts.iter().filter_map(|h| h.pull.as_ref()) {
            k += 1;
            sources += st.sources.len();
            inflight += st.inflight.len();
            promised += st.hints.promised.len();
        }
        let k = k.max(1);
        eprintln!(
            "{}: {:.3} s simulated, {} pullers left, {} picks, {:.0} s picking, {:.0} s wall; \
             per puller: {} sources, {} chunks in flight, {} promised",
            self.sc.name,
            secs(t),
            self.pulling,
            self.stats.picks,
            self.cost.picking.as_secs_f64(),
            self.base.elapsed().as_secs_f64(),
            sources / k,
            inflight / k,
            promised / k,
        );
    }

    fn slice(&self) -> usize {
        let ideal = self.sc.ideal().max(1e-9);
        ((secs(self.now) / ideal * 10.0) as usize).min(SLICES)
    }

    fn run(&mut self) {
        let limit = (self.sc.ideal() * self.sc.limit).max(60.0);
        let limit = (limit * 1e9) as u64;
        let mut shown = Duration::from_secs(10);
        while self.pulling > 0 {
            let ev_t = self.events.peek().map(|i| i.t);
            let end = self.ends.peek();
            let flow_first = match (ev_t, end) {
                (None, None) => break,
                (Some(t), Some((e, _))) => e < t,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            let t = if flow_first {
                end.expect("a flow").0
            } else {
                ev_t.expect("an event")
            };
            if t > limit {
                break;
            }
            self.meter(t);
            if self.sc.progress
                && self.stats.events.is_multiple_of(256)
                && self.base.elapsed() >= shown
            {
                shown += Duration::from_secs(10);
                self.show(t);
            }
            self.now = t;
            self.stats.events += 1;
            if flow_first {
                let c = end.expect("a flow").1;
                self.note(t ^ (u64::from(c) << 40));
                self.sent(c);
                continue;
            }
            let item = self.events.pop().expect("an event");
            self.note(t ^ item.seq.rotate_left(17));
            match item.ev {
                Ev::Start(p) => self.start(p),
                Ev::Arrive {
                    to,
                    from,
                    first,
                    count,
                    sent,
                    seen,
                } => self.arrive(
                    to,
                    from,
                    Req {
                        first,
                        count,
                        sent,
                        seen,
                    },
                ),
                Ev::Reply {
                    to,
                    from,
                    first,
                    count,
                    ans,
                    news,
                } => self.reply(to, from, first, count, ans, news),
                Ev::Written { p, from, idx, tag } => {
                    if let Some(mut st) = self.hosts[p as usize].pull.take() {
                        self.written(&mut st, p, from, idx as usize, tag);
                        self.hosts[p as usize].pull = Some(st);
                        self.step(p);
                    }
                }
                Ev::Have { p, sent, targets } => self.have(p, sent, targets),
                Ev::Refresh { p, sent } => self.refresh(p, sent),
                Ev::Tick(p) => self.tick(p),
                Ev::Die(p) => self.die(p),
            }
        }
        self.stats.end = secs(self.now);
    }

    // ---- the pullers ----

    fn start(&mut self, p: u32) {
        let mut st = self.hosts[p as usize].pull.take().expect("a new puller");
        st.last_have = self.now;
        // What `get` found: the holder, and the pullers already at work.
        st.sources.insert(
            self.names[0].clone(),
            SourceStat {
                complete: true,
                ..SourceStat::default()
            },
        );
        let started: Vec<u32> = (1..self.hosts.len() as u32)
            .filter(|&q| q != p && self.hosts[q as usize].start < self.now)
            .collect();
        self.hosts[p as usize].pull = Some(st);
        self.learn(p, &started, self.now);
        self.step(p);
    }

    /// One turn of the pull loop, after each of its events.
    fn step(&mut self, p: u32) {
        let h = &self.hosts[p as usize];
        if h.died.is_some() || h.pull.is_none() {
            return;
        }
        if h.pull.as_ref().is_some_and(|st| st.got == self.n) {
            self.finish(p);
            return;
        }
        self.start_refresh(p);
        self.poll(p);
        let mut st = self.hosts[p as usize].pull.take().expect("a puller");
        let now = self.inst(self.now);
        let promise = self.t.promise;
        let mut expired = 0;
        let have = &st.have;
        st.hints.promised.retain(|i, (_, at)| {
            let keep = now - *at < promise;
            if !keep && !bit(have, *i) {
                expired += 1;
            }
            keep
        });
        self.stats.promises_expired += expired;
        st.hints.not_before.retain(|_, t| *t > now);
        self.schedule(p, &mut st);
        self.hosts[p as usize].pull = Some(st);
        let h = &mut self.hosts[p as usize];
        h.last_step = self.now;
        if !h.ticking {
            h.ticking = true;
            self.push(self.now + TICK, Ev::Tick(p));
        }
    }

    fn tick(&mut self, p: u32) {
        let h = &mut self.hosts[p as usize];
        h.ticking = false;
        if h.pull.is_none() || h.died.is_some() {
            return;
        }
        if self.now >= h.last_step + TICK {
            self.step(p);
        } else {
            h.ticking = true;
            let at = h.last_step + TICK;
            self.push(at, Ev::Tick(p));
        }
    }

    /// The requests [`pick::next`] chooses, booked as `Pull::schedule` does.
    fn schedule(&mut self, p: u32, st: &mut Pull) {
        let now = self.inst(self.now);
        loop {
            let view = pick::View {
                chunks: self.n,
                have: &st.have,
                writing: &st.writing,
                inflight: &st.inflight,
                sources: &st.sources,
                hints: &st.hints,
                rtts: &st.rtts,
                now,
            };
            let t0 = Instant::now();
            let ask = pick::next(&view, &mut st.rng);
            self.cost.picking += t0.elapsed();
            self.stats.picks += 1;
            let Some(ask) = ask else {
                self.why_stopped(st, now);
                return;
            };
            self.stats.asks += 1;
            self.stats.endgame_asks += u64::from(ask.endgame);
            let (lo, count) = (ask.first, ask.count);
            for i in lo..lo + count {
                st.inflight.entry(i).or_default().insert(ask.host.clone());
            }
            let s = st
                .sources
                .get_mut(&ask.host)
                .expect("a source the picker chose");
            if s.inflight == 0 {
                s.busy_since = Some(now);
                s.waiting_since = Some(now);
            }
            s.inflight += count;
            let seen = (!s.complete).then_some(s.seen);
            let q = Self::id(&ask.host);
            if q == 0 {
                self.stats.origin_asks += 1;
            }
            let at = self.now + self.lat(p, q);
            self.push(
                at,
                Ev::Arrive {
                    to: q,
                    from: p,
                    first: lo as u32,
                    count: count as u32,
                    sent: self.now,
                    seen,
                },
            );
        }
    }

    /// Why the picker gave nothing, from outside: the limits it checks
    /// first, then whether any source had room.
    fn why_stopped(&mut self, st: &Pull, now: Instant) {
        let total = st.inflight.values().map(|s| s.len()).sum::<usize>() + st.writing.len();
        if total >= PER_FILE || st.writing.len() >= MAX_WRITING {
            self.stats.stop_full += 1;
            return;
        }
        let swarming = st.sources.values().any(|s| !s.complete && !s.dropped);
        let room = st.sources.iter().any(|(h, s)| {
            let cap = s.cap(swarming, st.rtts.get(h).copied());
            let need = if s.complete && !swarming {
                cap.min(MAX_RUN)
            } else {
                1
            };
            !s.dropped && s.inflight + need <= cap && s.benched_until.is_none_or(|t| t <= now)
        });
        if room {
            self.stats.stop_nothing += 1;
        } else {
            self.stats.stop_no_room += 1;
        }
    }

    /// An answer, booked as `Pull::on_chunk` does.
    fn reply(&mut self, p: u32, q: u32, first: u32, count: u32, ans: Ans, news: Option<News>) {
        let h = &self.hosts[p as usize];
        if h.died.is_some() {
            return;
        }
        let Some(mut st) = self.hosts[p as usize].pull.take() else {
            // Done: what still comes is not needed (the engine's request
            // tasks outlive the loop).
            if let Ans::Data { k, .. } = ans {
                self.wasted += k as u64;
            }
            return;
        };
        let now = self.inst(self.now);
        let host = &self.names[q as usize];
        // Known from the connection's handshake: not for a host never
        // reached.
        let reached = !matches!(ans, Ans::Miss(Miss::Lost(_) | Miss::Failed(_)));
        if reached && !st.rtts.contains_key(host) {
            let rtt = Duration::from_nanos(2 * self.lat(p, q));
            st.rtts.insert(host.clone(), rtt);
        }
        let (idx, count) = (first as usize, count as usize);
        for i in idx..idx + count {
            if let Some(set) = st.inflight.get_mut(&i) {
                set.remove(host);
                if set.is_empty() {
                    st.inflight.remove(&i);
                }
            }
        }
        let bytes = match &ans {
            Ans::Data { k, .. } => *k as u64 * CHUNK_SIZE,
            Ans::Miss(_) => 0,
        };
        if let Some(s) = st.sources.get_mut(host) {
            s.inflight = s.inflight.saturating_sub(count);
            s.waiting_since = (s.inflight > 0).then_some(now);
            s.measure_at(bytes, now);
            if let Some(news) = &news {
                s.hear(news, self.n, now);
            }
        }
        let t = self.t;
        match ans {
            Ans::Data { k, tags } => self.take(&mut st, p, q, idx, count, k, &tags),
            Ans::Miss(Miss::NotYet) => {
                self.stats.not_yet += 1;
                if let Some(s) = st.sources.get_mut(host) {
                    if !s.complete && idx / 8 < s.have.len() {
                        clear_bit(&mut s.have, idx);
                    }
                }
                st.hints.not_before.insert(idx, now + t.not_yet_wait);
            }
            Ans::Miss(Miss::Redirect(to)) => {
                self.stats.redirects += 1;
                let s = st.sources.entry(to.clone()).or_default();
                if !s.dropped {
                    st.hints.promised.insert(idx, (to, now));
                }
            }
            Ans::Miss(Miss::Lost(_)) => {
                self.stats.lost += 1;
                let s = st.sources.entry(host.clone()).or_default();
                s.benched_until = Some(now + t.lost_wait);
            }
            Ans::Miss(miss @ (Miss::Failed(_) | Miss::Gone(_))) => {
                self.stats.failed += 1;
                let s = st.sources.entry(host.clone()).or_default();
                s.fails += 1;
                s.benched_until = Some(now + t.fail_wait * (1u32 << s.fails.min(6)));
                if matches!(miss, Miss::Gone(_)) || s.fails >= t.max_fails {
                    s.dropped = true;
                }
            }
        }
        self.hosts[p as usize].pull = Some(st);
        self.step(p);
    }

    /// The chunks of an answer, as `Pull::take` and the write check them.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &mut self,
        st: &mut Pull,
        p: u32,
        q: u32,
        idx: usize,
        count: usize,
        k: usize,
        tags: &[u32; MAX_RUN],
    ) {
        for (j, &tag) in tags.iter().enumerate().take(k.min(count)) {
            let i = idx + j;
            if bit(&st.have, i) || st.writing.contains(&i) {
                self.wasted += 1;
                continue;
            }
            st.writing.insert(i);
            let delay = ns(self.sc.write_delay);
            if delay == 0 {
                self.written(st, p, q, i, tag);
            } else {
                self.push(
                    self.now + delay,
                    Ev::Written {
                        p,
                        from: q,
                        idx: i as u32,
                        tag,
                    },
                );
            }
        }
    }

    /// A chunk verified and written, or found bad: `Pull::written`.
    fn written(&mut self, st: &mut Pull, p: u32, q: u32, i: usize, tag: u32) {
        st.writing.remove(&i);
        let host = &self.names[q as usize];
        if tag != content(i) {
            self.corrupt += 1;
            let s = st.sources.entry(host.clone()).or_default();
            s.bad += 1;
            if s.bad >= self.t.max_bad {
                s.dropped = true;
            }
            return;
        }
        set_bit(&mut st.have, i);
        st.got += 1;
        let s = st.sources.entry(host.clone()).or_default();
        s.served += 1;
        s.fails = 0;
        let slice = self.slice();
        self.stats.useful_bytes[slice] += CHUNK_SIZE as f64;
        let h = &mut self.hosts[p as usize];
        h.store[i] = tag;
        h.log.push((self.now, i as u32));
        h.first_at.get_or_insert(self.now);
    }

    /// Done: the file is in place, and served through a ledger of its own.
    fn finish(&mut self, p: u32) {
        let h = &mut self.hosts[p as usize];
        h.pull = None;
        h.done_at = Some(self.now);
        h.ledger = Some(Ledger::new(&[]));
        self.pulling -= 1;
    }

    /// Other pullers' have-bits every `have_every`, as
    /// `Pull::poll_partial_sources`; answers come back together per delay.
    fn poll(&mut self, p: u32) {
        let every = ns(self.t.have_every);
        let Some(mut st) = self.hosts[p as usize].pull.take() else {
            return;
        };
        if self.now - st.last_have < every {
            self.hosts[p as usize].pull = Some(st);
            return;
        }
        st.last_have = self.now;
        let now = self.inst(self.now);
        let (mut near, mut far, mut silent) = (Vec::new(), Vec::new(), Vec::new());
        for (h, s) in &st.sources {
            // A source asked lately sends news with its answers.
            let quiet = s.inflight == 0 && s.heard.is_none_or(|t| now - t >= self.t.have_every);
            if s.complete || s.dropped || !quiet {
                continue;
            }
            let q = Self::id(h);
            if st.polling[q as usize] {
                continue;
            }
            st.polling[q as usize] = true;
            if self.hosts[q as usize].died.is_some() {
                silent.push(q);
            } else if self.hosts[q as usize].site == self.hosts[p as usize].site {
                near.push(q);
            } else {
                far.push(q);
            }
        }
        self.hosts[p as usize].pull = Some(st);
        let sent = self.now;
        let groups = [
            (near, 2 * ns(self.sc.in_site)),
            (far, 2 * ns(self.sc.across)),
            (silent, ns(self.sc.dead_timeout)),
        ];
        for (targets, delay) in groups {
            if !targets.is_empty() {
                self.stats.have_polls += targets.len() as u64;
                self.push(sent + delay, Ev::Have { p, sent, targets });
            }
        }
    }

    fn have(&mut self, p: u32, sent: u64, targets: Vec<u32>) {
        let Some(mut st) = self.hosts[p as usize].pull.take() else {
            return;
        };
        if self.hosts[p as usize].died.is_some() {
            return;
        }
        let t0 = Instant::now();
        let bytes = self.n.div_ceil(8) as u64;
        let now = self.inst(self.now);
        // Targets are in the sources' (name) order: one walk over both.
        let mut it = st.sources.iter_mut();
        let mut cur = it.next();
        for q in targets {
            st.polling[q as usize] = false;
            let snap = sent + self.lat(p, q);
            // A dead host answers nothing; one that is done is no longer
            // pulling, and answers an error.
            let Some(bits) = self.bits_at(q, snap) else {
                continue;
            };
            let name = &self.names[q as usize];
            while let Some((h, _)) = &cur {
                if *h < name {
                    cur = it.next();
                } else {
                    break;
                }
            }
            if let Some((h, s)) = &mut cur {
                if *h == name && !s.complete {
                    self.stats.poll_bytes += bytes;
                    s.have = bits;
                    s.heard = Some(now);
                }
            }
        }
        self.hosts[p as usize].pull = Some(st);
        self.cost.views += t0.elapsed();
        self.step(p);
    }

    /// Puller `q`'s bitfield at `snap` (just past: what landed since is
    /// taken off again), or none if it was no longer pulling then.
    fn bits_at(&self, q: u32, snap: u64) -> Option<Vec<u8>> {
        let h = &self.hosts[q as usize];
        if h.died.is_some_and(|d| d <= snap) || h.done_at.is_some_and(|d| d <= snap) {
            return None;
        }
        let mut bits = h.pull.as_ref()?.have.clone();
        for &(t, i) in h.log.iter().rev() {
            if t <= snap {
                break;
            }
            clear_bit(&mut bits, i as usize);
        }
        Some(bits)
    }

    /// Asks who holds the file, as `Pull::start_refresh`.
    fn start_refresh(&mut self, p: u32) {
        let sent = self.now;
        let Some(st) = self.hosts[p as usize].pull.as_mut() else {
            return;
        };
        let usable = st.sources.values().any(|s| !s.dropped);
        let every = ns(if usable {
            self.t.refresh_every
        } else {
            st.retry_wait
        });
        if st.refreshing || st.last_refresh.is_some_and(|t| sent - t < every) {
            return;
        }
        st.refreshing = true;
        let delay = if self.any_dead {
            ns(self.sc.dead_timeout)
        } else if self.sc.sites > 1 {
            2 * ns(self.sc.across)
        } else {
            2 * ns(self.sc.in_site)
        };
        self.push(sent + delay, Ev::Refresh { p, sent });
    }

    fn refresh(&mut self, p: u32, sent: u64) {
        let Some(st) = self.hosts[p as usize].pull.as_mut() else {
            return;
        };
        st.refreshing = false;
        st.last_refresh = Some(self.now);
        let answering: Vec<u32> = (1..self.hosts.len() as u32)
            .filter(|&q| {
                let h = &self.hosts[q as usize];
                q != p && h.start <= sent && h.died.is_none_or(|d| d > sent)
            })
            .collect();
        self.learn(p, &answering, sent);
        let t = self.t;
        if let Some(st) = self.hosts[p as usize].pull.as_mut() {
            st.retry_wait = if st.sources.values().any(|s| !s.dropped) {
                t.retry_first
            } else {
                (st.retry_wait * 2).min(t.retry_max)
            };
        }
        self.step(p);
    }

    /// What "who holds it" answered, as `Pull::apply_refresh`: each host
    /// as of the moment it answered, pullers through the policy.
    fn learn(&mut self, p: u32, answering: &[u32], sent: u64) {
        let t0 = Instant::now();
        let Some(mut st) = self.hosts[p as usize].pull.take() else {
            return;
        };
        for &q in answering {
            let name = &self.names[q as usize];
            let admitted = st.admit.as_ref().is_none_or(|a| a[q as usize]);
            if !admitted && !st.sources.contains_key(name) {
                continue;
            }
            let snap = sent + self.lat(p, q);
            let hq = &self.hosts[q as usize];
            if hq.died.is_some_and(|d| d <= snap) {
                continue;
            }
            let done = hq.done_at.is_some_and(|d| d <= snap);
            let bits = if done { None } else { self.bits_at(q, snap) };
            let s = st.sources.entry(name.clone()).or_default();
            s.complete = done;
            s.have = bits.unwrap_or_default();
            if s.dropped && s.bad < self.t.max_bad {
                s.dropped = false;
                s.fails = 0;
                s.benched_until = None;
            }
        }
        self.hosts[p as usize].pull = Some(st);
        self.cost.views += t0.elapsed();
    }

    fn die(&mut self, q: u32) {
        let h = &mut self.hosts[q as usize];
        h.died = Some(self.now);
        self.any_dead = true;
        if h.pull.take().is_some() {
            self.pulling -= 1;
        }
        let lost = self.now + ns(self.sc.dead_timeout);
        for c in self.out_conns[q as usize].clone() {
            let to = self.conns[c as usize].to;
            let mut reqs: Vec<Req> = self.conns[c as usize].queue.drain(..).collect();
            if let Some(s) = self.conns[c as usize].sending.take() {
                reqs.insert(0, s.req);
            }
            for r in reqs {
                self.push(
                    lost,
                    Ev::Reply {
                        to,
                        from: q,
                        first: r.first,
                        count: r.count,
                        ans: Ans::Miss(Miss::Lost("connection lost".into())),
                        news: None,
                    },
                );
            }
            self.end_flow(c);
        }
        for c in self.in_conns[q as usize].clone() {
            self.conns[c as usize].queue.clear();
            self.conns[c as usize].sending = None;
            self.end_flow(c);
        }
    }

    // ---- the serving side ----

    fn conn(&mut self, from: u32, to: u32) -> u32 {
        if let Some(&c) = self.conn_of.get(&(from, to)) {
            return c;
        }
        let c = self.conns.len() as u32;
        let (sa, sb) = (self.hosts[from as usize].site, self.hosts[to as usize].site);
        let mut links = [2 * from, 2 * to + 1, 0];
        let mut nlinks = 2;
        if sa != sb && self.sc.site_link.is_some() {
            links[2] = (2 * self.hosts.len() + sa * self.sc.sites.max(1) + sb) as u32;
            nlinks = 3;
        }
        self.conns.push(Conn {
            from,
            to,
            links,
            nlinks,
            pos: [0; 3],
            queue: VecDeque::new(),
            sending: None,
            flowing: false,
            rate: 0.0,
            left: 0.0,
            at: 0,
        });
        self.conn_of.insert((from, to), c);
        self.out_conns[from as usize].push(c);
        self.in_conns[to as usize].push(c);
        c
    }

    fn arrive(&mut self, q: u32, p: u32, req: Req) {
        if self.hosts[p as usize].died.is_some() {
            return; // its connections are closed
        }
        if let Some(died) = self.hosts[q as usize].died {
            let timeout = ns(self.sc.dead_timeout);
            let (at, miss) = if req.sent < died {
                (died + timeout, Miss::Lost("connection lost".into()))
            } else {
                (req.sent + timeout, Miss::Failed("unreachable".into()))
            };
            self.push(
                at.max(self.now),
                Ev::Reply {
                    to: p,
                    from: q,
                    first: req.first,
                    count: req.count,
                    ans: Ans::Miss(miss),
                    news: None,
                },
            );
            return;
        }
        let c = self.conn(q, p);
        self.conns[c as usize].queue.push_back(req);
        if !self.conns[c as usize].flowing {
            self.serve_next(c);
        }
    }

    /// The next request on a connection: misses go back at once, the first
    /// with data to send becomes the flow.
    fn serve_next(&mut self, c: u32) {
        loop {
            let Some(req) = self.conns[c as usize].queue.pop_front() else {
                self.end_flow(c);
                return;
            };
            let (q, p) = (self.conns[c as usize].from, self.conns[c as usize].to);
            let decided = self.decide(q, p, &req);
            let news = req.seen.and_then(|seen| self.news(q, seen));
            match decided {
                Err(miss) => {
                    let at = self.now + self.lat(q, p);
                    self.push(
                        at,
                        Ev::Reply {
                            to: p,
                            from: q,
                            first: req.first,
                            count: req.count,
                            ans: Ans::Miss(miss),
                            news,
                        },
                    );
                }
                Ok((k, tags)) => {
                    let conn = &mut self.conns[c as usize];
                    conn.sending = Some(Sending { req, k, tags, news });
                    conn.left = (k as u64 * CHUNK_SIZE) as f64;
                    conn.at = self.now;
                    if conn.flowing {
                        self.reschedule(c);
                    } else {
                        self.start_flow(c);
                    }
                    return;
                }
            }
        }
    }

    /// What `q` sends `p` for `req`, as `Engine::read_run`: a holder asks
    /// its ledger, a puller sends what it has of the run.
    fn decide(&mut self, q: u32, p: u32, req: &Req) -> Result<(usize, [u32; MAX_RUN]), Miss> {
        let n = self.n;
        let first = req.first as usize;
        let count = (req.count as usize).clamp(1, MAX_RUN);
        let now = self.inst(self.now);
        let idle = self.t.ledger_idle;
        let t = self.t;
        let from = &self.names[p as usize];
        let h = &mut self.hosts[q as usize];
        let k = if let Some(l) = h.ledger.as_mut() {
            // A holder forgets a file's pullers once none has asked for a
            // while (`Engine::portion`).
            if !l.active.values().any(|at| now - *at < idle) {
                *l = Ledger::new(&[]);
            }
            let count = count.min(n - first);
            match l.decide_run(t, from, first as u32, count as u32, now) {
                Portion::Send(k) => k as usize,
                Portion::Redirect(to) => return Err(Miss::Redirect(to)),
            }
        } else {
            let k = (first..(first + count).min(n))
                .take_while(|&i| h.store[i] != NONE)
                .count();
            if k == 0 {
                return Err(Miss::NotYet);
            }
            k
        };
        let mut tags = [NONE; MAX_RUN];
        for (j, tag) in tags.iter_mut().enumerate().take(k) {
            *tag = h.store[first + j];
        }
        Ok((k, tags))
    }

    /// What `Engine::news` says for a puller that heard `seen` entries of
    /// `q`'s log: none unless `q` is still pulling.
    fn news(&self, q: u32, seen: u32) -> Option<News> {
        let h = &self.hosts[q as usize];
        h.pull.as_ref()?;
        let from = if seen as usize > h.log.len() {
            0
        } else {
            seen as usize
        };
        let end = (from + MAX_NEWS).min(h.log.len());
        Some(News {
            from: from as u32,
            chunks: h.log[from..end].iter().map(|&(_, i)| i).collect(),
        })
    }

    /// An answer has left the sender.
    fn sent(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        conn.left = 0.0;
        conn.at = self.now;
        let s = conn.sending.take().expect("a flow sends something");
        let (q, p) = (conn.from, conn.to);
        if q == 0 {
            self.origin_chunks += s.k as u64;
        }
        let at = self.now + self.lat(q, p);
        self.push(
            at,
            Ev::Reply {
                to: p,
                from: q,
                first: s.req.first,
                count: s.req.count,
                ans: Ans::Data {
                    k: s.k,
                    tags: s.tags,
                },
                news: s.news,
            },
        );
        // Keeps flowing if another answer is due, at the same rate.
        self.ends.remove(c);
        self.serve_next(c);
    }

    // ---- bandwidth ----

    fn advance(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        let dt = secs(self.now - conn.at);
        conn.left = (conn.left - conn.rate * dt).max(0.0);
        conn.at = self.now;
    }

    fn reschedule(&mut self, c: u32) {
        let conn = &self.conns[c as usize];
        // Under a byte a second a flow is starved, not slow: it waits for a
        // refill instead of an end centuries away.
        if conn.rate >= 1.0 {
            let t = self.now + (conn.left / conn.rate * 1e9).ceil() as u64;
            self.ends.set(c, t);
        } else {
            self.ends.remove(c);
        }
    }

    fn start_flow(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        conn.flowing = true;
        conn.rate = 0.0;
        let (links, nl) = (conn.links, conn.nlinks);
        for (k, &l) in links.iter().enumerate().take(nl) {
            let flows = &mut self.links[l as usize].flows;
            self.conns[c as usize].pos[k] = flows.len() as u32;
            flows.push(c);
        }
        for &l in links.iter().take(nl) {
            self.refill(l);
        }
        // Its own end, if no refill gave it a rate yet.
        self.reschedule(c);
    }

    fn end_flow(&mut self, c: u32) {
        if !self.conns[c as usize].flowing {
            return;
        }
        self.ends.remove(c);
        let conn = &mut self.conns[c as usize];
        conn.flowing = false;
        let (links, nl, pos, rate) = (conn.links, conn.nlinks, conn.pos, conn.rate);
        conn.rate = 0.0;
        self.total_rate -= rate;
        for k in 0..nl {
            let link = &mut self.links[links[k] as usize];
            link.sum -= rate;
            let i = pos[k] as usize;
            link.flows.swap_remove(i);
            if let Some(&moved) = link.flows.get(i) {
                let m = &mut self.conns[moved as usize];
                let slot = (0..m.nlinks)
                    .find(|&j| m.links[j] == links[k])
                    .expect("a flow on its link");
                m.pos[slot] = i as u32;
            }
        }
        for &l in links.iter().take(nl) {
            self.refill(l);
        }
    }

    /// Re-divides link `l` among its flows by water-filling: the least
    /// bounded elsewhere first, each taking at most an equal share of what
    /// is left, and never more than its other links have spare.
    fn refill(&mut self, l: u32) {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        for i in 0..self.links[l as usize].flows.len() {
            let c = self.links[l as usize].flows[i];
            self.advance(c);
            let conn = &self.conns[c as usize];
            for &m in conn.links.iter().take(conn.nlinks) {
                if m != l {
                    self.links[m as usize].sum -= conn.rate;
                }
            }
            buf.push((0.0, c));
        }
        self.links[l as usize].sum = 0.0;
        for e in buf.iter_mut() {
            e.0 = self.spare(e.1, l);
        }
        buf.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut left = self.links[l as usize].cap;
        let k = buf.len();
        for (i, &(_, c)) in buf.iter().enumerate() {
            let share = left / (k - i) as f64;
            let r = self.spare(c, l).min(share).max(0.0);
            left = (left - r).max(0.0);
            let conn = &mut self.conns[c as usize];
            let old = conn.rate;
            conn.rate = r;
            self.total_rate += r - old;
            let (links, nl) = (conn.links, conn.nlinks);
            for &m in links.iter().take(nl) {
                self.links[m as usize].sum += r;
            }
            if r != old || self.ends.at.get(c as usize).is_none_or(|&a| a == NONE) {
                self.reschedule(c);
            }
        }
        self.scratch = buf;
    }

    /// What flow `c` could take beyond what others take on its links but
    /// `l`.
    fn spare(&self, c: u32, l: u32) -> f64 {
        let conn = &self.conns[c as usize];
        conn.links
            .iter()
            .take(conn.nlinks)
            .filter(|&&m| m != l)
            .map(|&m| {
                let link = &self.links[m as usize];
                (link.cap - link.sum).max(0.0)
            })
            .fold(f64::INFINITY, f64::min)
    }

    // ---- the end ----

    fn report(&self) -> Report {
        let sc = self.sc;
        let pullers = &self.hosts[1..];
        let live: Vec<&Host> = pullers.iter().filter(|h| h.died.is_none()).collect();
        let mut times: Vec<u64> = live.iter().filter_map(|h| h.done_at).collect();
        times.sort_unstable();
        let all = times.len() == live.len();
        let at = |f: f64| -> Option<f64> {
            let k = ((live.len() as f64 * f).ceil() as usize).max(1);
            times.get(k - 1).map(|&t| secs(t))
        };
        let fast: Vec<u64> = live
            .iter()
            .filter(|h| !h.slow)
            .filter_map(|h| h.done_at)
            .collect();
        let fast_all = fast.len() == live.iter().filter(|h| !h.slow).count();
        let bad_copies = live
            .iter()
            .filter(|h| h.done_at.is_some())
            .filter(|h| h.store.iter().enumerate().any(|(i, &c)| c != content(i)))
            .count();
        let firsts: Vec<u64> = pullers.iter().filter_map(|h| h.first_at).collect();
        let mut stats = self.stats.clone();
        stats.first_chunk =
            firsts.iter().map(|&t| secs(t)).sum::<f64>() / firsts.len().max(1) as f64;
        stats.done_10 = at(0.1);
        stats.done_90 = at(0.9);
        Report {
            name: sc.name.clone(),
            seed: sc.seed,
            pullers: sc.pullers,
            chunks: sc.chunks,
            ideal: sc.ideal(),
            live: live.len(),
            done: times.len(),
            dead: pullers.len() - live.len(),
            last: all.then(|| times.last().map(|&t| secs(t))).flatten(),
            last_fast: fast_all
                .then(|| fast.iter().max().map(|&t| secs(t)))
                .flatten(),
            p50: at(0.5),
            origin_chunks: self.origin_chunks,
            wasted_chunks: self.wasted,
            corrupt: self.corrupt,
            bad_copies,
            stats,
            trace: self.trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(name: &str) -> Scenario {
        Scenario::new(name, 20, 128)
    }

    fn check_complete(r: &Report) {
        assert_eq!(r.done, r.live, "{r:#?}");
        assert!(r.last.is_some(), "{r:#?}");
        assert_eq!(r.corrupt, 0, "{r:#?}");
        assert_eq!(r.bad_copies, 0, "{r:#?}");
    }

    #[test]
    fn sim_every_puller_gets_every_chunk_and_the_holder_sends_each_about_once() {
        let sc = small("plain");
        let (r, _) = run(&sc);
        check_complete(&r);
        assert_eq!(r.live, 20);
        let per_chunk = r.origin_chunks as f64 / r.chunks as f64;
        assert!((1.0..=1.1).contains(&per_chunk), "{per_chunk}: {r:#?}");
        // Nothing is faster than one host's link.
        assert!(r.last.unwrap() >= r.ideal, "{r:#?}");
    }

    #[test]
    fn sim_the_same_seed_gives_the_same_run_and_another_seed_another() {
        let sc = small("seed");
        let (a, _) = run(&sc);
        let (b, _) = run(&sc);
        assert_eq!(a, b);
        let (c, _) = run(&Scenario { seed: 2, ..sc });
        assert_ne!(a.trace, c.trace);
        check_complete(&c);
    }

    #[test]
    fn sim_the_live_pullers_finish_when_some_die() {
        let sc = Scenario {
            dying: 0.25,
            ..small("dying")
        };
        let (r, _) = run(&sc);
        assert_eq!(r.dead, 5, "{r:#?}");
        assert_eq!(r.live, 15);
        check_complete(&r);
        assert!(r.stats.lost + r.stats.failed > 0, "{r:#?}");
    }

    #[test]
    fn sim_slow_pullers_a_thin_site_link_and_a_cap_on_known_pullers_still_finish() {
        let slow = Scenario {
            slow: 0.2,
            ..small("slow")
        };
        let (r, _) = run(&slow);
        check_complete(&r);
        // A slow puller's link is a tenth: no faster than that allows.
        assert!(r.last.unwrap() >= r.ideal / slow.slow_factor, "{r:#?}");
        assert!(r.last_fast.unwrap() < r.last.unwrap(), "{r:#?}");
        let sites = Scenario {
            sites: 2,
            site_link: Some(2.0 * 125e6),
            ..small("sites")
        };
        check_complete(&run(&sites).0);
        let known = Scenario {
            known: Some(4),
            write_delay: Duration::from_micros(500),
            ..small("known")
        };
        check_complete(&run(&known).0);
    }

    #[test]
    fn sim_flows_share_a_link_and_never_pass_its_capacity() {
        // Four pullers, one holder, no swarm to speak of (one chunk each):
        // the holder's uplink is what they share.
        let sc = Scenario::new("share", 4, 4);
        let mut sim = Sim::new(&sc);
        sim.run();
        for (i, l) in sim.links.iter().enumerate() {
            assert!(
                l.sum <= l.cap * (1.0 + 1e-9),
                "link {i}: {} > {}",
                l.sum,
                l.cap
            );
        }
        let r = sim.report();
        check_complete(&r);
    }
}
