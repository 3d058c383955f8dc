//! How often a puller asks the mesh again who holds the file (pure;
//! shared with `sim/`).

use std::collections::BTreeMap;
use std::time::Duration;

use super::peers::Offer;
use super::source::SourceStat;

/// When a puller asks the mesh again who holds the file, while it has
/// sources to pull from. Each refresh asks every node, so a swarm's
/// refreshes grow with the square of its size (1,000 pullers every 2 s:
/// half a million routed requests a second); once they keep finding the
/// same hosts, they are spaced out, up to `Tuning::refresh_most`. One that
/// finds a new host, or a puller now whole, brings back
/// `Tuning::refresh_every`, as does a source dropped since the last (its
/// place is to fill).
#[derive(Debug, Clone)]
pub(crate) struct RefreshPace {
    wait: Duration,
    /// What the last refresh found ([`offer_digest`]).
    found: Option<u64>,
    /// Sources dropped, as of the last refresh.
    dropped: usize,
}

impl RefreshPace {
    pub(crate) fn new(first: Duration) -> RefreshPace {
        RefreshPace {
            wait: first,
            found: None,
            dropped: 0,
        }
    }

    /// The wait after the last refresh, with `sources` as they are now.
    pub(crate) fn wait(&self, sources: &BTreeMap<String, SourceStat>, first: Duration) -> Duration {
        if dropped(sources) > self.dropped {
            first
        } else {
            self.wait
        }
    }

    /// A refresh found what `found` digests ([`offer_digest`]), and left
    /// `sources` as they are now.
    pub(crate) fn refreshed(
        &mut self,
        found: u64,
        sources: &BTreeMap<String, SourceStat>,
        first: Duration,
        most: Duration,
    ) {
        self.wait = if self.found == Some(found) {
            (self.wait * 2).clamp(first, most.max(first))
        } else {
            first
        };
        self.found = Some(found);
        self.dropped = dropped(sources);
    }
}

fn dropped(sources: &BTreeMap<String, SourceStat>) -> usize {
    sources.values().filter(|s| s.dropped).count()
}

/// The hosts offered and which were whole, in any order: equal for the
/// same answer (have-bits aside: those change with every chunk, and each
/// source's come with its answers and polls anyway).
pub(crate) fn offer_digest(offered: &[(Offer, Vec<u8>)]) -> u64 {
    let mut keys: Vec<(&str, bool)> = offered
        .iter()
        .map(|(o, _)| (o.host.as_str(), o.complete))
        .collect();
    keys.sort_unstable();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (host, complete) in keys {
        for b in host.bytes().chain([0, u8::from(complete)]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_that_find_the_same_hosts_are_spaced_out_and_news_brings_them_back() {
        let (first, most) = (Duration::from_secs(2), Duration::from_secs(30));
        let offer = |h: &str, complete: bool| {
            let o = Offer {
                host: h.into(),
                complete,
            };
            (o, vec![0u8; 4])
        };
        // Sources with `n` of them dropped.
        let with_dropped = |n: usize| -> BTreeMap<String, SourceStat> {
            (0..3)
                .map(|i| {
                    let s = SourceStat {
                        dropped: i < n,
                        ..SourceStat::default()
                    };
                    (format!("s{i}"), s)
                })
                .collect()
        };
        let (none, one) = (with_dropped(0), with_dropped(1));
        let mut pace = RefreshPace::new(first);
        let found = |pace: &mut RefreshPace, o: &[(Offer, Vec<u8>)], s| {
            pace.refreshed(offer_digest(o), s, first, most);
        };
        let a = vec![offer("h1", true), offer("h2", false)];
        found(&mut pace, &a, &none);
        assert_eq!(pace.wait(&none, first), first, "the first answer is news");
        // The same hosts, in another order, with other have-bits.
        let mut b = vec![offer("h2", false), offer("h1", true)];
        b[0].1 = vec![0xff; 4];
        let mut waits = Vec::new();
        for _ in 0..5 {
            found(&mut pace, &b, &none);
            waits.push(pace.wait(&none, first).as_secs());
        }
        assert_eq!(waits, [4, 8, 16, 30, 30]);
        assert_eq!(pace.wait(&one, first), first, "a source dropped since");
        // A puller now whole is news; so is a new host.
        found(&mut pace, &[offer("h2", true), offer("h1", true)], &one);
        assert_eq!(pace.wait(&one, first), first);
        found(&mut pace, &[offer("h2", true), offer("h1", true)], &one);
        assert_eq!(pace.wait(&one, first), 2 * first);
        let c = [offer("h2", true), offer("h1", true), offer("h3", false)];
        found(&mut pace, &c, &one);
        assert_eq!(pace.wait(&one, first), first);
        // No answer at all, twice: nothing new either.
        found(&mut pace, &[], &none);
        found(&mut pace, &[], &none);
        assert_eq!(pace.wait(&none, first), 2 * first);
    }
}
