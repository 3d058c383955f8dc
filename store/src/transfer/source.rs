//! What a puller knows of each source of a file: what it has, what it is
//! asked for, how fast it delivers, and how it has behaved.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::job::SourceRow;
use super::{News, IN_FLIGHT_TIME, PER_HOLDER_SWARMING, PER_SOURCE};
use crate::manifest::CHUNK_SIZE;

#[derive(Debug, Clone, Default)]
pub(super) struct SourceStat {
    pub(super) complete: bool,
    pub(super) have: Vec<u8>,
    pub(super) inflight: usize,
    pub(super) served: u64,
    pub(super) bad: u32,
    pub(super) fails: u32,
    /// Connections that broke under its requests since its last chunk.
    pub(super) lost: u32,
    /// Chunks a complete holder pointed us elsewhere for, not to be asked
    /// of it again before then (see [`super::peers::redirected`]).
    pub(super) held: HashMap<usize, Instant>,
    pub(super) benched_until: Option<Instant>,
    /// What this source delivers to us, in bytes per second, smoothed:
    /// measured between answers while it had requests in hand.
    pub(super) rate: f64,
    /// Since when the source has been working for us without a break, and
    /// the bytes it delivered since.
    pub(super) busy_since: Option<Instant>,
    pub(super) busy_bytes: u64,
    pub(super) dropped: bool,
    /// Since when it has had requests in hand and not answered one.
    pub(super) waiting_since: Option<Instant>,
    /// Entries of its log of chunks heard so far (a puller's news).
    pub(super) seen: u32,
    /// When its progress was last heard of: news or its bitfield.
    pub(super) heard: Option<Instant>,
}

/// Drops the holds on chunks that are over.
pub(super) fn release(sources: &mut BTreeMap<String, SourceStat>, now: Instant) {
    for s in sources.values_mut() {
        if !s.held.is_empty() {
            s.held.retain(|_, until| *until > now);
        }
    }
}

impl SourceStat {
    /// Whether it failed a request, or broke the connection, since its last
    /// chunk: most likely it is gone (dead, or out of the mesh).
    pub(super) fn broken(&self) -> bool {
        self.fails > 0 || self.lost > 0
    }

    /// Whether this source is held back from giving chunk `i`.
    pub(super) fn holds_back(&self, i: usize) -> bool {
        !self.held.is_empty() && self.held.contains_key(&i)
    }

    /// This source's part, for `file status` and the completion line.
    pub(super) fn row(&self, host: &str) -> SourceRow {
        SourceRow {
            host: host.to_string(),
            served: self.served,
            bad: self.bad,
            failing: self.fails,
            dropped: self.dropped,
            stalled: self
                .waiting_since
                .is_some_and(|t| t.elapsed() >= super::job::STALLED),
        }
    }

    /// `host:chunks`, then `(bad N)`, and `(dropped)` or `(failing N)`
    /// (requests failed in a row; it is asked again after a pause, and
    /// dropped after a few) where they apply.
    pub(super) fn label(&self, host: &str) -> String {
        self.row(host).label()
    }

    /// Books an answer (`bytes` of chunk, 0 for a miss) for the rate. Rates
    /// come from at least two chunks or 20 ms of work: answers that were
    /// pipelined arrive back to back, and one of them alone says nothing.
    pub(super) fn measure(&mut self, bytes: u64) {
        self.measure_at(bytes, Instant::now());
    }

    /// [`SourceStat::measure`] at `now`: the simulator's clock is virtual.
    pub(super) fn measure_at(&mut self, bytes: u64, now: Instant) {
        self.busy_bytes += bytes;
        if let Some(since) = self.busy_since {
            let took = now - since;
            if self.busy_bytes >= 2 * CHUNK_SIZE
                || (self.busy_bytes > 0 && took >= Duration::from_millis(20))
            {
                let r = self.busy_bytes as f64 / took.as_secs_f64().max(1e-6);
                self.rate = if self.rate == 0.0 {
                    r
                } else {
                    0.7 * self.rate + 0.3 * r
                };
                self.busy_since = Some(now);
                self.busy_bytes = 0;
            }
        }
        if self.inflight == 0 {
            self.busy_since = None;
            self.busy_bytes = 0;
        }
    }

    /// Requests to keep in flight: what the source delivers in two round
    /// trips plus [`IN_FLIGHT_TIME`], at least one; two until it is
    /// measured, or when its round trip is unknown. Deep queues at a shared
    /// source (a puller's uplink serves every other puller) only delay each
    /// chunk and make every puller's choices stale. The cap grows while
    /// requests come back faster than that window: two round trips keep a
    /// distant source growing even when a chunk takes longer to send than
    /// the 50 ms.
    pub(super) fn cap(&self, swarming: bool, rtt: Option<Duration>) -> usize {
        let window = IN_FLIGHT_TIME + 2 * rtt.unwrap_or_default();
        let by_rate = if self.rate > 0.0 {
            (self.rate * window.as_secs_f64() / CHUNK_SIZE as f64).ceil() as usize
        } else {
            2
        };
        let most = if self.complete && swarming {
            PER_HOLDER_SWARMING
        } else {
            PER_SOURCE
        };
        let least = if rtt.is_some() { 1 } else { 2 };
        by_rate.clamp(least.min(most), most)
    }
}

impl SourceStat {
    /// Takes a puller's news of a file of `chunks` chunks: those it got
    /// since we last heard. Entries past the file are ignored.
    pub(super) fn hear(&mut self, news: &News, chunks: usize, now: Instant) {
        if self.complete {
            return;
        }
        if news.from > self.seen {
            return; // a gap: not what was asked for
        }
        // A source first heard of in a redirect has no bitfield yet.
        self.have.resize(chunks.div_ceil(8), 0);
        let skip = (self.seen - news.from) as usize;
        for &i in news.chunks.iter().skip(skip) {
            if (i as usize) < chunks {
                self.have[i as usize / 8] |= 1 << (i % 8);
            }
        }
        self.seen = self.seen.max(news.from + news.chunks.len() as u32);
        self.heard = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_in_flight_cover_the_round_trip_but_no_queue() {
        let chunk = CHUNK_SIZE as f64;
        // A distant source on a fast link: each request takes the round
        // trip plus its transfer, so what we measure is cap x chunk / that.
        // The cap must grow to the link, not settle at one per round trip.
        let (rtt, link) = (Duration::from_millis(50), 1e9);
        let mut s = SourceStat::default();
        let mut cap = s.cap(false, Some(rtt));
        for _ in 0..20 {
            let latency = rtt.as_secs_f64() + chunk / link;
            s.rate = (cap as f64 * chunk / latency).min(link);
            cap = s.cap(false, Some(rtt));
        }
        assert_eq!(cap, PER_SOURCE, "stuck at {cap} in flight");
        // A puller's uplink shared by six others, next door: about 4 MB/s
        // each. One in flight keeps it busy; more only queue there.
        let s = SourceStat {
            rate: 4e6,
            ..SourceStat::default()
        };
        assert_eq!(s.cap(false, Some(Duration::from_micros(200))), 1);
        // Unmeasured: two, to measure.
        assert_eq!(SourceStat::default().cap(false, None), 2);
    }

    #[test]
    fn news_adds_what_follows_on_and_nothing_else() {
        let now = Instant::now();
        // First heard of in a redirect: no bitfield yet.
        let mut s = SourceStat::default();
        let news = |from, chunks: &[u32]| News {
            from,
            chunks: chunks.to_vec(),
        };
        s.hear(&news(0, &[3, 9, 500]), 12, now);
        assert_eq!(s.have, vec![0b1000, 0b10], "3 and 9; 500 is past the file");
        assert_eq!(s.seen, 3);
        // Overlapping news: only the new entries count, once.
        s.hear(&news(2, &[500, 0]), 12, now);
        assert_eq!((s.have[0], s.seen), (0b1001, 4));
        // A gap (news from further on than we heard): ignored.
        s.hear(&news(9, &[1]), 12, now);
        assert_eq!((s.have[0], s.seen), (0b1001, 4));
        // A complete holder has no news to take.
        let mut c = SourceStat {
            complete: true,
            ..SourceStat::default()
        };
        c.hear(&news(0, &[1]), 12, now);
        assert!(c.have.is_empty() && c.seen == 0);
    }
}
