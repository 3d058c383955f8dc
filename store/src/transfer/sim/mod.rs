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
//!   A complete holder sends at most `Tuning::send_slots` answers at a
//!   time, the others waiting their turn, as the data channel's server
//!   does (`uplink.rs`). A puller's own send slots (and its answers to the
//!   furthest behind first) only with [`Scenario::peer_slots`]; otherwise
//!   its answers all go at once.
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

use super::bits::{all_bits, bit, clear_bit, set_bit};
use super::ledger::{Ledger, Portion};
use super::peers;
use super::pick::{self, Hints};
use super::source::SourceStat;
use super::uplink;
use super::{pace, sites};
use super::{Asker, Miss, News, Tuning, MAX_NEWS, MAX_WRITING, PER_FILE};
use crate::manifest::{CHUNK_SIZE, MAX_RUN};

mod flows;
mod holder;
mod puller;
mod run;
#[cfg(test)]
mod tests;

use flows::Ends;

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
    pub write_delay: Duration,
    /// Pullers start at times drawn uniformly in 0..start_spread.
    pub start_spread: Duration,
    pub tuning: Tuning,
    /// Prints a line to stderr every 10 s of wall time: long runs are long.
    pub progress: bool,
    /// Given up at this many times the ideal time, or after a minute if
    /// that is later (a small file takes the engine's waits, not its size).
    pub limit: f64,
    /// Pullers send `Tuning::peer_send_slots` answers at a time, to the
    /// furthest behind first, each holding its slot as the data channel's
    /// server does; otherwise all of a puller's answers flow at once.
    pub peer_slots: bool,
    /// Pullers tell a complete holder which pullers they could not reach
    /// ([`crate::Asker::gone`]), as the engine does; off, the holder
    /// knows a puller is gone only once it stops asking
    /// (`Tuning::puller_active`).
    pub tell_gone: bool,
    /// Hosts say their site, as `mm serve --site` does: a puller counts
    /// only its own site's sources for rarity, and leaves the pullers at
    /// other sites alone (but for chunks a holder points it at them for)
    /// while it tracks a complete holder at its own.
    pub say_site: bool,
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
            write_delay: Duration::ZERO,
            start_spread: Duration::ZERO,
            tuning: Tuning::default(),
            progress: false,
            limit: 30.0,
            peer_slots: false,
            tell_gone: true,
            say_site: false,
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
    /// Answers of pullers that waited for one of their send slots
    /// ([`Scenario::peer_slots`]).
    pub peer_slot_waits: u64,
    /// Why `schedule` stopped asking: the per-file or writing limit; no
    /// source with room; sources with room, but nothing to ask of them.
    pub stop_full: u64,
    pub stop_no_room: u64,
    pub stop_nothing: u64,
    pub not_yet: u64,
    pub redirects: u64,
    /// Redirects to a puller dead for longer than twice
    /// [`Scenario::dead_timeout`]: by then its peers know.
    pub late_redirects: u64,
    /// Chunks sent between sites: by the origin, by other complete
    /// holders, by pullers.
    pub cross: [u64; 3],
    /// Promises (redirects) that ran out before the chunk came.
    pub promises_expired: u64,
    pub lost: u64,
    pub failed: u64,
    pub have_polls: u64,
    /// Bytes the have polls would have moved (a bitfield each).
    pub poll_bytes: u64,
    /// "Who holds it" questions: each asks every other node.
    pub refreshes: u64,
    /// Per tenth of the ideal time ([`SLICES`] of them, and one for all
    /// that comes after): bytes the holder's uplink carried, bytes all downlinks
    /// carried, and useful bytes the pullers wrote.
    pub origin_bytes: Vec<f64>,
    pub down_bytes: Vec<f64>,
    /// Bytes the links between sites carried, all of them together, and
    /// of those the links into the holder's site.
    pub across_bytes: Vec<f64>,
    pub back_bytes: Vec<f64>,
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
    /// Where the next list of unreached pullers starts (`peers::gone_for`).
    gone_turn: u64,
    have: Vec<u8>,
    got: usize,
    writing: HashSet<usize>,
    inflight: HashMap<usize, HashSet<String>>,
    hints: Hints,
    sources: BTreeMap<String, SourceStat>,
    rtts: HashMap<String, Duration>,
    /// The hosts at other sites, if sites are said.
    far: HashSet<String>,
    rng: StdRng,
    last_have: u64,
    /// Per host: a have poll is out.
    polling: Vec<bool>,
    last_refresh: Option<u64>,
    refreshing: bool,
    /// As `Pull::pace`.
    pace: pace::RefreshPace,
    retry_wait: Duration,
    /// Sources no longer tracked, as `JobState::retired`.
    retired: BTreeMap<String, SourceStat>,
    /// Its own order of the other pullers, as `Pull::seed`.
    seed: u64,
}

struct Req {
    first: u32,
    count: u32,
    sent: u64,
    /// What the asker said besides which chunks: the log entries of the
    /// source it has heard, and how far along it was.
    asker: Asker,
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
    /// Decided, waiting for one of the holder's send slots.
    pending: Option<Sending>,
    has_slot: bool,
    /// Slots given to it so far.
    slot_gen: u32,
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
        asker: Asker,
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
    /// A connection's send slot is due back (`Tuning::slot_hold`), if it
    /// still holds the one it was given then.
    SlotDue {
        c: u32,
        gen: u32,
    },
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
    /// Send slots per complete holder and per puller (0: no limit), those
    /// in use, and the connections waiting for one.
    slots: u32,
    peer_slots: u32,
    slots_used: Vec<u32>,
    slot_wait: Vec<VecDeque<u32>>,
    origin_chunks: u64,
    wasted: u64,
    corrupt: u64,
    /// Of every flow, for the meters.
    total_rate: f64,
    stats: Stats,
    cost: Cost,
    trace: u64,
}
