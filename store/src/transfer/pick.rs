//! The choice of the next request: which chunk, from which source, how many
//! in a row. A pure function over a [`View`] of one transfer, so the policy
//! is unit-tested (and simulated) without a network; the pull loop asks it
//! again after each request it makes.
//!
//! - Rarest chunk first (among a random sample of [`SAMPLE`] missing ones,
//!   so the cost per request stays flat however large the file), random
//!   among equals.
//! - From the source that has it and is a puller itself (to spare the
//!   original holder's uplink), then the least busy, then the fastest.
//! - From a complete holder while no other puller can serve, the chunk's
//!   missing neighbours in its aligned run of [`MAX_RUN`] too.
//! - Once every missing chunk is asked for, the last ones a second time
//!   from another source (endgame).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::Rng;

use super::bits::bit;
use super::source::SourceStat;
use super::{MAX_WRITING, PER_FILE};
use crate::manifest::MAX_RUN;

/// Candidate chunks looked at per request.
pub(crate) const SAMPLE: usize = 64;

/// What earlier answers told the puller.
#[derive(Default)]
pub(crate) struct Hints {
    /// Chunk -> the puller a holder sent it to instead, and when.
    pub(crate) promised: HashMap<usize, (String, Instant)>,
    /// Chunk -> not to be asked for again before then (a puller did not
    /// have it yet).
    pub(crate) not_before: HashMap<usize, Instant>,
}

/// One transfer as the picker sees it.
pub(crate) struct View<'a> {
    /// Chunks in the file.
    pub(crate) chunks: usize,
    /// What is here already (verified and written).
    pub(crate) have: &'a [u8],
    /// Received, being verified and written.
    pub(crate) writing: &'a HashSet<usize>,
    /// Chunk -> the sources it is asked of now.
    pub(crate) inflight: &'a HashMap<usize, HashSet<String>>,
    pub(crate) sources: &'a BTreeMap<String, SourceStat>,
    pub(crate) hints: &'a Hints,
    /// Round trips to the sources that have one measured.
    pub(crate) rtts: &'a HashMap<String, Duration>,
    /// The sources that said they are at another site than this node's.
    pub(crate) far: &'a HashSet<String>,
    pub(crate) now: Instant,
}

/// A request to make: chunks `first..first + count` of `host`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ask {
    pub(crate) host: String,
    pub(crate) first: usize,
    pub(crate) count: usize,
    /// The chosen chunk is already asked of another source.
    pub(crate) endgame: bool,
}

impl View<'_> {
    /// Whether `h` can give chunk `i`. A chunk another puller was sent for
    /// us is that puller's to give, for a while: not the holder's again
    /// (unless that puller has been dropped, or is no longer tracked: it
    /// finished and deleted the file, say; or it failed a request since its
    /// last chunk, or the connection to it broke: it is likely dead. Then
    /// the holder serves it after all). The loop has dropped promises that
    /// are over.
    fn has(&self, h: &str, s: &SourceStat, i: usize) -> bool {
        has_given(self.promise(i), h, s, i)
    }

    /// The live puller chunk `i` is promised from, if any: what
    /// [`View::has`] looks up, once per chunk rather than per source.
    fn promise(&self, i: usize) -> Option<&str> {
        if self.hints.promised.is_empty() {
            return None;
        }
        match self.hints.promised.get(&i) {
            Some((to, _))
                if self
                    .sources
                    .get(to)
                    .is_some_and(|t| !t.dropped && !t.broken()) =>
            {
                Some(to)
            }
            _ => None,
        }
    }

    fn cap(&self, h: &str, s: &SourceStat, swarming: bool) -> usize {
        s.cap(swarming, self.rtts.get(h).copied())
    }

    /// Missing here, not on its way to disk, and not held back.
    fn wanted(&self, i: usize) -> bool {
        !bit(self.have, i) && !self.writing.contains(&i) && !self.hints.not_before.contains_key(&i)
    }
}

/// [`View::has`], with chunk `i`'s promise looked up already.
fn has_given(promise: Option<&str>, h: &str, s: &SourceStat, i: usize) -> bool {
    match promise {
        Some(to) => to == h || (!s.complete && bit(&s.have, i)),
        None => (s.complete && !s.holds_back(i)) || bit(&s.have, i),
    }
}

/// Whether `h` is among the sources a chunk is asked of (one or two of
/// them: comparing is cheaper than hashing).
fn among(asked: Option<&HashSet<String>>, h: &str) -> bool {
    asked.is_some_and(|set| set.iter().any(|x| x == h))
}

/// Whether one of the `ready` sources can give chunk `i` and was not asked
/// for it yet.
fn ready_for(v: &View, ready: &[(&String, &SourceStat)], i: usize) -> bool {
    let promise = v.promise(i);
    let asked = v.inflight.get(&i);
    ready
        .iter()
        .any(|(h, s)| has_given(promise, h, s, i) && !among(asked, h))
}

/// The next request to make, or `None` when nothing should be asked now
/// (limits reached, no source ready, or nothing a ready source can give).
pub(crate) fn next(v: &View, rng: &mut impl Rng) -> Option<Ask> {
    let n = v.chunks;
    // Chunks waiting to be written count too: they hold memory.
    let total: usize = v.inflight.values().map(|s| s.len()).sum::<usize>() + v.writing.len();
    if total >= PER_FILE || v.writing.len() >= MAX_WRITING {
        return None;
    }
    // While other pullers can serve, ask less of the original holders:
    // their uplink is what every puller shares.
    let swarming = v.sources.values().any(|s| !s.complete && !s.dropped);
    let keep = super::sites::keeps_to_site(v.sources, v.far, v.now);
    let ready: Vec<(&String, &SourceStat)> = v
        .sources
        .iter()
        .filter(|(h, s)| {
            if keep && s.complete && v.far.contains(*h) {
                return false;
            }
            // Room for a whole run from a complete holder, where the cap
            // allows one: one chunk asked whenever one came back would
            // split every later request into single chunks.
            let cap = v.cap(h, s, swarming);
            let need = if s.complete && !swarming {
                cap.min(MAX_RUN)
            } else {
                1
            };
            !s.dropped && s.inflight + need <= cap && s.benched_until.is_none_or(|t| t <= v.now)
        })
        .collect();
    if ready.is_empty() {
        return None;
    }
    // A sample of the missing chunks a ready source can give, from a random
    // starting point, found 64 chunks at a time: this runs after every
    // event of every transfer, and a file has tens of thousands of chunks.
    let start = rng.gen_range(0..n.max(1));
    let cand = candidates(v, &ready);
    let (mut fresh, mut dup) = (Vec::new(), Vec::new());
    let any_fresh = cand.any_fresh;
    for i in cand.from(start) {
        match v.inflight.get(&i) {
            None => {
                fresh.push(i);
                if fresh.len() >= SAMPLE {
                    break;
                }
            }
            Some(set) if set.len() < 2 => dup.push(i),
            Some(_) => {}
        }
    }
    // Endgame only once every missing chunk has been asked for.
    let (pool, endgame) = match (fresh.is_empty(), any_fresh) {
        (false, _) => (fresh, false),
        (true, false) => (dup, true),
        (true, true) => return None,
    };
    // Rarest first, over all live sources (the sample holds only chunks
    // some ready source can give).
    // Sources at another site do not count: chunks none at this site has
    // come out equal, and pullers at a site bring them across in a random
    // order rather than all the same one at once.
    let live: Vec<(&String, &SourceStat)> = v
        .sources
        .iter()
        .filter(|(h, s)| !s.dropped && !v.far.contains(*h))
        .collect();
    let mut best: Vec<(usize, usize)> = pool
        .iter()
        .map(|&i| {
            let promise = v.promise(i);
            let rarity = live
                .iter()
                .filter(|(h, s)| has_given(promise, h, s, i))
                .count();
            (rarity, i)
        })
        .collect();
    if best.is_empty() {
        return None;
    }
    best.shuffle(rng);
    best.sort_by_key(|(r, _)| *r);
    let idx = best[0].1;
    let (promise, asked) = (v.promise(idx), v.inflight.get(&idx));
    let host = ready
        .iter()
        .filter(|(h, s)| has_given(promise, h, s, idx) && !among(asked, h))
        .min_by(|(_, sa), (_, sb)| {
            // Partial holders first (spares the original holder's uplink),
            // then the least busy, then the fastest.
            (sa.complete, sa.inflight)
                .cmp(&(sb.complete, sb.inflight))
                .then(
                    sb.rate
                        .partial_cmp(&sa.rate)
                        .unwrap_or(std::cmp::Ordering::Equal),
                )
        })
        .map(|(h, _)| (*h).clone())
        .expect("a ready holder");
    // From a complete holder, with it its neighbours in the same run of
    // `MAX_RUN` that nobody was asked for yet, within the holder's room:
    // one request, one record, one write. Not while other pullers can serve
    // (the holder would send one chunk of the run, and the rest would wait
    // for nothing): pullers trade single chunks, which a swarm spreads
    // faster, and each puller's uplink is shared by all the others.
    let (mut lo, mut hi) = (idx, idx + 1);
    let s = &v.sources[&host];
    if !endgame && !swarming && s.complete {
        let room = v.cap(&host, s, swarming).saturating_sub(s.inflight).max(1);
        let wanted = |i: usize| v.wanted(i) && !v.inflight.contains_key(&i) && v.has(&host, s, i);
        let first = idx - idx % MAX_RUN;
        let end = (first + MAX_RUN).min(n);
        while hi < end && hi - lo < room && wanted(hi) {
            hi += 1;
        }
        while lo > first && hi - lo < room && wanted(lo - 1) {
            lo -= 1;
        }
    }
    Some(Ask {
        host,
        first: lo,
        count: hi - lo,
        endgame,
    })
}

/// The chunks worth asking for now, as a bitfield of 64-bit words.
struct Candidates {
    words: Vec<u64>,
    n: usize,
    /// Some chunk is wanted and asked of nobody (whether or not a ready
    /// source has it).
    any_fresh: bool,
}

impl Candidates {
    /// The set chunks from `start` on, wrapping around.
    fn from(&self, start: usize) -> impl Iterator<Item = usize> + '_ {
        let n = self.n;
        let ones = move |w: usize| {
            let mut word = self.words[w];
            std::iter::from_fn(move || {
                (word != 0).then(|| {
                    let b = word.trailing_zeros() as usize;
                    word &= word - 1;
                    w * 64 + b
                })
            })
        };
        let nw = self.words.len();
        let sw = start / 64;
        // Every word once from `start`'s, and that one again for the bits
        // below `start`.
        let rounds = if nw == 0 { 0 } else { nw + 1 };
        (0..rounds)
            .flat_map(move |k| ones((sw + k) % nw).map(move |i| (k, i)))
            .filter(move |&(k, i)| {
                // The first word from `start`, the same word again at the
                // end below it.
                if k == 0 {
                    i >= start
                } else if k == nw {
                    i < start
                } else {
                    true
                }
            })
            .map(|(_, i)| i)
            .filter(move |&i| i < n)
    }
}

/// 64 chunks of a bitfield, as one word (missing bytes read as zero).
fn word(bits: &[u8], w: usize) -> u64 {
    let mut b = [0u8; 8];
    let at = (w * 8).min(bits.len());
    let end = (at + 8).min(bits.len());
    b[..end - at].copy_from_slice(&bits[at..end]);
    u64::from_le_bytes(b)
}

fn set(words: &mut [u64], i: usize, on: bool) {
    if on {
        words[i / 64] |= 1 << (i % 64);
    } else {
        words[i / 64] &= !(1 << (i % 64));
    }
}

/// Wanted chunks (missing, not on their way to disk, not held back) that
/// some ready source can give and was not asked for: what the loop over
/// chunks with [`View::has`] and [`among`] would find, word by
/// word, with the few chunks that are promised or asked already checked
/// one by one.
fn candidates(v: &View, ready: &[(&String, &SourceStat)]) -> Candidates {
    let n = v.chunks;
    let nw = n.div_ceil(64);
    let mut want: Vec<u64> = (0..nw).map(|w| !word(v.have, w)).collect();
    if !n.is_multiple_of(64) {
        if let Some(last) = want.last_mut() {
            *last &= (1u64 << (n % 64)) - 1;
        }
    }
    for &i in v.writing.iter().chain(v.hints.not_before.keys()) {
        if i < n {
            set(&mut want, i, false);
        }
    }
    let mut any_fresh = false;
    let mut asked = vec![0u64; nw];
    for &i in v.inflight.keys() {
        if i < n {
            set(&mut asked, i, true);
        }
    }
    for w in 0..nw {
        any_fresh |= want[w] & !asked[w] != 0;
    }
    // What the ready sources have, ignoring promises and asks.
    let mut avail = vec![0u64; nw];
    for (_, s) in ready {
        if s.complete {
            avail.iter_mut().for_each(|a| *a = u64::MAX);
            break;
        }
        // Whole words straight from the bytes; the tail through `word`.
        let whole = s.have.chunks_exact(8);
        let full = whole.len().min(avail.len());
        for (a, b) in avail.iter_mut().zip(whole) {
            *a |= u64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        for (w, a) in avail.iter_mut().enumerate().skip(full) {
            *a |= word(&s.have, w);
        }
    }
    // Promised, held back and asked chunks: exactly.
    let held = ready.iter().flat_map(|(_, s)| s.held.keys());
    for &i in v.hints.promised.keys().chain(held).chain(v.inflight.keys()) {
        if i < n {
            set(&mut avail, i, ready_for(v, ready, i));
        }
    }
    let words = want.iter().zip(&avail).map(|(w, a)| w & a).collect();
    Candidates {
        words,
        n,
        any_fresh,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::bits::set_bit;
    use rand::SeedableRng;

    /// A transfer of `n` chunks with the given sources, nothing asked yet.
    struct T {
        n: usize,
        have: Vec<u8>,
        writing: HashSet<usize>,
        inflight: HashMap<usize, HashSet<String>>,
        sources: BTreeMap<String, SourceStat>,
        hints: Hints,
        rtts: HashMap<String, Duration>,
        far: HashSet<String>,
        now: Instant,
    }

    fn complete() -> SourceStat {
        SourceStat {
            complete: true,
            ..SourceStat::default()
        }
    }

    fn partial(n: usize, chunks: &[usize]) -> SourceStat {
        let mut have = vec![0u8; n.div_ceil(8)];
        for &i in chunks {
            set_bit(&mut have, i);
        }
        SourceStat {
            have,
            ..SourceStat::default()
        }
    }

    impl T {
        fn new(n: usize, sources: &[(&str, SourceStat)]) -> T {
            T {
                n,
                have: vec![0u8; n.div_ceil(8)],
                writing: HashSet::new(),
                inflight: HashMap::new(),
                sources: sources
                    .iter()
                    .map(|(h, s)| (h.to_string(), s.clone()))
                    .collect(),
                hints: Hints::default(),
                rtts: HashMap::new(),
                far: HashSet::new(),
                now: Instant::now(),
            }
        }

        fn next(&self, seed: u64) -> Option<Ask> {
            let v = View {
                chunks: self.n,
                have: &self.have,
                writing: &self.writing,
                inflight: &self.inflight,
                sources: &self.sources,
                hints: &self.hints,
                rtts: &self.rtts,
                far: &self.far,
                now: self.now,
            };
            next(&v, &mut rand::rngs::StdRng::seed_from_u64(seed))
        }

        /// Books an ask as the pull loop does.
        fn apply(&mut self, a: &Ask) {
            for i in a.first..a.first + a.count {
                self.inflight.entry(i).or_default().insert(a.host.clone());
            }
            self.sources.get_mut(&a.host).unwrap().inflight += a.count;
        }
    }

    /// The picker before its scan went word by word: the new one must
    /// choose exactly as it did.
    fn next_reference(v: &View, rng: &mut impl Rng) -> Option<Ask> {
        let n = v.chunks;
        // Chunks waiting to be written count too: they hold memory.
        let total: usize = v.inflight.values().map(|s| s.len()).sum::<usize>() + v.writing.len();
        if total >= PER_FILE || v.writing.len() >= MAX_WRITING {
            return None;
        }
        // While other pullers can serve, ask less of the original holders:
        // their uplink is what every puller shares.
        let swarming = v.sources.values().any(|s| !s.complete && !s.dropped);
        let ready: Vec<&String> = v
            .sources
            .iter()
            .filter(|(h, s)| {
                // Room for a whole run from a complete holder, where the cap
                // allows one: one chunk asked whenever one came back would
                // split every later request into single chunks.
                let cap = v.cap(h, s, swarming);
                let need = if s.complete && !swarming {
                    cap.min(MAX_RUN)
                } else {
                    1
                };
                !s.dropped && s.inflight + need <= cap && s.benched_until.is_none_or(|t| t <= v.now)
            })
            .map(|(h, _)| h)
            .collect();
        if ready.is_empty() {
            return None;
        }
        // A sample of the missing chunks a ready source can give, from a random
        // starting point.
        let start = rng.gen_range(0..n.max(1));
        let (mut fresh, mut dup) = (Vec::new(), Vec::new());
        let mut any_fresh = false;
        for k in 0..n {
            let i = (start + k) % n;
            if !v.wanted(i) {
                continue;
            }
            let asked = v.inflight.get(&i);
            any_fresh |= asked.is_none();
            let ready_holder = ready
                .iter()
                .any(|h| v.has(h, &v.sources[*h], i) && !among(v.inflight.get(&i), h));
            if !ready_holder {
                continue;
            }
            match asked {
                None => {
                    fresh.push(i);
                    if fresh.len() >= SAMPLE {
                        break;
                    }
                }
                Some(set) if set.len() < 2 => dup.push(i),
                Some(_) => {}
            }
        }
        // Endgame only once every missing chunk has been asked for.
        let (pool, endgame) = match (fresh.is_empty(), any_fresh) {
            (false, _) => (fresh, false),
            (true, false) => (dup, true),
            (true, true) => return None,
        };
        // Rarest first, over all live sources (the sample holds only chunks
        // some ready source can give).
        let mut best: Vec<(usize, usize)> = pool
            .iter()
            .map(|&i| {
                let rarity = v
                    .sources
                    .iter()
                    .filter(|(h, s)| !s.dropped && v.has(h, s, i))
                    .count();
                (rarity, i)
            })
            .collect();
        if best.is_empty() {
            return None;
        }
        best.shuffle(rng);
        best.sort_by_key(|(r, _)| *r);
        let idx = best[0].1;
        let host = ready
            .iter()
            .filter(|h| v.has(h, &v.sources[**h], idx) && !among(v.inflight.get(&idx), h))
            .min_by(|a, b| {
                let (sa, sb) = (&v.sources[**a], &v.sources[**b]);
                // Partial holders first (spares the original holder's uplink),
                // then the least busy, then the fastest.
                (sa.complete, sa.inflight)
                    .cmp(&(sb.complete, sb.inflight))
                    .then(
                        sb.rate
                            .partial_cmp(&sa.rate)
                            .unwrap_or(std::cmp::Ordering::Equal),
                    )
            })
            .map(|h| (*h).clone())
            .expect("a ready holder");
        // From a complete holder, with it its neighbours in the same run of
        // `MAX_RUN` that nobody was asked for yet, within the holder's room:
        // one request, one record, one write. Not while other pullers can serve
        // (the holder would send one chunk of the run, and the rest would wait
        // for nothing): pullers trade single chunks, which a swarm spreads
        // faster, and each puller's uplink is shared by all the others.
        let (mut lo, mut hi) = (idx, idx + 1);
        let s = &v.sources[&host];
        if !endgame && !swarming && s.complete {
            let room = v.cap(&host, s, swarming).saturating_sub(s.inflight).max(1);
            let wanted =
                |i: usize| v.wanted(i) && !v.inflight.contains_key(&i) && v.has(&host, s, i);
            let first = idx - idx % MAX_RUN;
            let end = (first + MAX_RUN).min(n);
            while hi < end && hi - lo < room && wanted(hi) {
                hi += 1;
            }
            while lo > first && hi - lo < room && wanted(lo - 1) {
                lo -= 1;
            }
        }
        Some(Ask {
            host,
            first: lo,
            count: hi - lo,
            endgame,
        })
    }

    #[test]
    fn the_word_scan_chooses_as_the_chunk_by_chunk_scan_did() {
        use rand::SeedableRng;
        let mut r = rand::rngs::StdRng::seed_from_u64(42);
        for case in 0..600u64 {
            // Some files of many words, and some nearly done: the scan
            // stops early in the one, and goes round the whole file in the
            // other.
            let n = if case % 3 == 0 {
                r.gen_range(0..3000)
            } else {
                r.gen_range(0..300)
            };
            let done = [0.3, 0.3, 0.9, 0.995][case as usize % 4];
            let srcs = r.gen_range(1..6);
            let mut sources = Vec::new();
            for k in 0..srcs {
                let chunks: Vec<usize> = (0..n).filter(|_| r.gen_bool(0.4)).collect();
                let mut s = if r.gen_bool(0.2) {
                    complete()
                } else {
                    partial(n, &chunks)
                };
                s.inflight = r.gen_range(0..3);
                s.dropped = r.gen_bool(0.1);
                if r.gen_bool(0.3) {
                    for _ in 0..r.gen_range(0..4) {
                        s.held.insert(r.gen_range(0..n.max(1)), Instant::now());
                    }
                }
                sources.push((format!("s{k}"), s));
            }
            let named: Vec<(&str, SourceStat)> = sources
                .iter()
                .map(|(h, s)| (h.as_str(), s.clone()))
                .collect();
            let mut t = T::new(n, &named);
            for i in 0..n {
                if r.gen_bool(done) {
                    set_bit(&mut t.have, i);
                    continue;
                }
                match r.gen_range(0..10) {
                    0..=2 => set_bit(&mut t.have, i),
                    3 => {
                        t.writing.insert(i);
                    }
                    4 => {
                        t.hints.not_before.insert(i, t.now);
                    }
                    5 => {
                        let h = format!("s{}", r.gen_range(0..srcs));
                        t.hints.promised.insert(i, (h, t.now));
                    }
                    6 | 7 => {
                        let set = t.inflight.entry(i).or_default();
                        for _ in 0..r.gen_range(1..3) {
                            set.insert(format!("s{}", r.gen_range(0..srcs)));
                        }
                    }
                    _ => {}
                }
            }
            for seed in 0..5 {
                let v = View {
                    chunks: t.n,
                    have: &t.have,
                    writing: &t.writing,
                    inflight: &t.inflight,
                    sources: &t.sources,
                    hints: &t.hints,
                    rtts: &t.rtts,
                    far: &HashSet::new(),
                    now: t.now,
                };
                let new = next(&v, &mut rand::rngs::StdRng::seed_from_u64(seed));
                let old = next_reference(&v, &mut rand::rngs::StdRng::seed_from_u64(seed));
                assert_eq!(new, old, "case {case}, seed {seed}, {n} chunks");
            }
        }
    }

    #[test]
    fn a_lone_complete_holder_is_asked_for_aligned_runs() {
        // Measured and fast, next door: room for whole runs.
        let fast = SourceStat {
            rate: 1e9,
            ..complete()
        };
        let mut t = T::new(16, &[("h", fast)]);
        t.rtts.insert("h".into(), Duration::from_micros(200));
        for seed in 0..20 {
            let a = t.next(seed).unwrap();
            assert_eq!(a.count, MAX_RUN, "{a:?}");
            assert_eq!(a.first % MAX_RUN, 0, "{a:?}");
            assert!(!a.endgame);
        }
        // Unmeasured, it has room for two chunks: a run of two.
        let t = T::new(16, &[("h", complete())]);
        let a = t.next(1).unwrap();
        assert_eq!(a.count, 2, "{a:?}");
    }

    #[test]
    fn the_rarest_chunk_comes_first_and_from_a_puller() {
        // Chunk 3 is only on the holder; every other chunk is also on the
        // puller p. p is asked first, for single chunks, never for 3.
        let n = 8;
        let others: Vec<usize> = (0..n).filter(|i| *i != 3).collect();
        let t = T::new(n, &[("h", complete()), ("p", partial(n, &others))]);
        for seed in 0..50 {
            let a = t.next(seed).unwrap();
            // 3 is the rarest (one holder): only h can give it.
            assert_eq!((a.host.as_str(), a.first, a.count), ("h", 3, 1), "{a:?}");
        }
        // With 3 here already, the rest come from p, one at a time.
        let mut t = t;
        set_bit(&mut t.have, 3);
        for seed in 0..50 {
            let a = t.next(seed).unwrap();
            assert_eq!((a.host.as_str(), a.count), ("p", 1), "{a:?}");
        }
    }

    #[test]
    fn a_promised_chunk_is_asked_only_of_the_puller_it_went_to() {
        let n = 4;
        let mut t = T::new(n, &[("h", complete()), ("p", partial(n, &[]))]);
        for i in 0..n {
            t.hints.promised.insert(i, ("p".into(), t.now));
        }
        for seed in 0..20 {
            let a = t.next(seed).unwrap();
            assert_eq!(a.host, "p", "{a:?}");
        }
        // Once a request to p failed, or its connection broke, the holder
        // serves them (p is asked again after its pause, for what it has).
        for (fails, lost) in [(1, 0), (0, 1)] {
            let p = t.sources.get_mut("p").unwrap();
            (p.fails, p.lost) = (fails, lost);
            assert_eq!(t.next(1).unwrap().host, "h", "fails {fails}, lost {lost}");
        }
        // A holder that pointed us at a puller we do not track is held back
        // from that chunk, for a while, and only from that one.
        let mut t = T::new(n, &[("h", complete()), ("p", partial(n, &[1]))]);
        t.sources.get_mut("h").unwrap().held.insert(0, t.now);
        for seed in 0..20 {
            let a = t.next(seed).unwrap();
            assert!(a.first != 0 || a.host != "h", "{a:?}");
        }
        set_bit(&mut t.have, 1);
        set_bit(&mut t.have, 2);
        set_bit(&mut t.have, 3);
        assert_eq!(t.next(1), None, "only chunk 0 is left, and h is held back");
        // And once p is dropped.
        let mut t = T::new(n, &[("h", complete()), ("p", partial(n, &[]))]);
        for i in 0..n {
            t.hints.promised.insert(i, ("p".into(), t.now));
        }
        let p = t.sources.get_mut("p").unwrap();
        (p.fails, p.lost, p.dropped) = (0, 0, true);
        assert_eq!(t.next(1).unwrap().host, "h");
    }

    #[test]
    fn sources_at_other_sites_count_for_nothing_but_what_they_alone_bring() {
        // Chunk 0 is on one puller here, chunk 1 on three at another site.
        let n = 2;
        let srcs = [
            ("near", partial(n, &[0])),
            ("f1", partial(n, &[1])),
            ("f2", partial(n, &[1])),
            ("f3", partial(n, &[1])),
        ];
        let mut t = T::new(n, &srcs);
        for seed in 0..20 {
            assert_eq!(t.next(seed).unwrap().first, 0, "the rarest over all");
        }
        t.far = ["f1", "f2", "f3"].map(String::from).into();
        for seed in 0..20 {
            assert_eq!(t.next(seed).unwrap().first, 1, "none here has it");
        }
        // With a complete holder here, a complete holder at the other site
        // is not asked, and its pullers only for what we were pointed at
        // them for (the loop keeps none of their bitfields then).
        let busy = SourceStat {
            inflight: crate::transfer::PER_HOLDER_SWARMING,
            ..complete()
        };
        let srcs = [("h", busy), ("fh", complete()), ("fp", partial(n, &[]))];
        let mut t = T::new(n, &srcs);
        assert_eq!(t.next(1).unwrap().host, "fh", "no sites said");
        t.far = ["fh", "fp"].map(String::from).into();
        assert_eq!(t.next(1), None, "h is busy, and fh at the other site");
        t.hints.promised.insert(1, ("fp".into(), t.now));
        let a = t.next(1).unwrap();
        assert_eq!((a.host.as_str(), a.first), ("fp", 1));
        // A holder's pointer is taken to the other site's puller, not to
        // its complete holder (that would wait out the promise).
        use crate::transfer::sites::{follows, keeps_to_site};
        assert!(follows(&t.sources, &t.far, "fp", t.now));
        assert!(!follows(&t.sources, &t.far, "fh", t.now));
        assert!(follows(&t.sources, &t.far, "h", t.now));
        // Without a complete holder here, the other site's is asked.
        t.sources.remove("h");
        assert!(!keeps_to_site(&t.sources, &t.far, t.now));
        assert!(follows(&t.sources, &t.far, "fh", t.now));
        assert_eq!(t.next(1).unwrap().host, "fh");
    }

    #[test]
    fn endgame_only_once_everything_is_asked() {
        let n = 2;
        let mut t = T::new(n, &[("a", partial(n, &[0, 1])), ("b", partial(n, &[0, 1]))]);
        let first = t.next(7).unwrap();
        assert!(!first.endgame);
        t.apply(&first);
        let second = t.next(7).unwrap();
        assert!(!second.endgame);
        assert_ne!(second.first, first.first, "a fresh chunk before any repeat");
        t.apply(&second);
        // Everything is asked for: the next ask repeats one, elsewhere.
        let third = t.next(7).unwrap();
        assert!(third.endgame, "{third:?}");
        assert!(!t.inflight[&third.first].contains(&third.host));
        t.apply(&third);
        let fourth = t.next(7).unwrap();
        t.apply(&fourth);
        // Each chunk is now asked of both: nothing more to ask.
        assert_eq!(t.next(7), None);
    }

    #[test]
    fn no_ask_beyond_the_limits_or_of_unusable_sources() {
        let n = 64;
        let mut t = T::new(n, &[("h", complete())]);
        t.sources.get_mut("h").unwrap().benched_until = Some(t.now + Duration::from_secs(1));
        assert_eq!(t.next(1), None, "benched");
        t.sources.get_mut("h").unwrap().benched_until = None;
        t.sources.get_mut("h").unwrap().dropped = true;
        assert_eq!(t.next(1), None, "dropped");
        t.sources.get_mut("h").unwrap().dropped = false;
        t.writing = (0..MAX_WRITING).collect();
        assert_eq!(t.next(1), None, "too much waiting for the disk");
        t.writing.clear();
        // A source is never asked beyond its cap.
        let mut asked = 0;
        while let Some(a) = t.next(asked as u64) {
            t.apply(&a);
            asked += a.count;
            assert!(asked <= 64);
        }
        let s = &t.sources["h"];
        assert!(s.inflight <= s.cap(false, None), "{}", s.inflight);
    }

    #[test]
    fn nothing_is_asked_that_is_here_or_held_back() {
        let n = 8;
        let mut t = T::new(n, &[("h", complete())]);
        for i in 0..n {
            if i != 5 {
                set_bit(&mut t.have, i);
            }
        }
        t.hints.not_before.insert(5, t.now + Duration::from_secs(1));
        assert_eq!(t.next(3), None);
        t.hints.not_before.clear();
        let a = t.next(3).unwrap();
        assert_eq!((a.first, a.count), (5, 1));
    }
}
