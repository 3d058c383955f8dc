//! What a complete holder remembers of one file's pullers, so that its
//! uplink (which every puller shares) sends each chunk about once.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::Instant;

use super::Tuning;

/// What a holder does with a request for a run of chunks.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Portion {
    /// Sends this many of the run's chunks (at least the first).
    Send(u32),
    /// Points the asker at this puller, which was sent the first chunk.
    Redirect(String),
}

/// How long a puller told of as unreached has at least to ask again before
/// the holder forgets it ([`Ledger::told_gone`]); twice the time between
/// its last two asks, if longer (in a big swarm a puller asks its holder
/// about once a second). The simulator, 300 hosts with 5% dying, before
/// it measured gaps as the engine does (session 24): 1.048 of size/cap
/// with 300 ms, 1.086 with 500, 1.061 forgetting at once (1.188 never
/// told); as the engine does, 1.061.
pub(super) const QUIET: std::time::Duration = std::time::Duration::from_millis(300);

/// A puller told of as unreached that has not asked for this long, and
/// for twice its longest gap between asks lately, is forgotten at once
/// (see [`Ledger::told_gone`]).
const OVERDUE: std::time::Duration = std::time::Duration::from_millis(50);

/// See [`Ledger::still_asking`].
const STILL_ASKING: std::time::Duration = std::time::Duration::from_secs(1);

/// Per file: who got each chunk first, who was already sent elsewhere, and
/// when each puller last asked.
#[derive(Default)]
pub(super) struct Ledger {
    pub(super) root: Vec<u8>,
    first: HashMap<u32, (String, Instant)>,
    redirected: HashMap<(u32, String), Instant>,
    pub(super) active: HashMap<String, Instant>,
    /// The time between each puller's last two asks, and the longest of
    /// its gaps lately (halved at each shorter one: a puller with two
    /// requests in hand asks in pairs, the second a moment after the
    /// first).
    gaps: HashMap<String, (std::time::Duration, std::time::Duration)>,
    /// Pullers another could not reach, until when they have to ask
    /// (cleared when they do).
    suspects: HashMap<String, Instant>,
    /// Those forgotten for it, not yet logged.
    forgotten: Vec<String>,
    pruned: Option<Instant>,
}

impl Ledger {
    /// A new ledger for the version `root` of a file.
    pub(super) fn new(root: &[u8]) -> Ledger {
        Ledger {
            root: root.to_vec(),
            ..Ledger::default()
        }
    }

    /// Whom to point `from` at for chunk `index`, if anyone; else records
    /// that `from` gets it.
    /// `alone`: no other puller is still asking ([`Ledger::still_asking`]),
    /// so nobody is pointed at.
    fn decide(
        &mut self,
        t: &Tuning,
        from: &str,
        index: u32,
        now: Instant,
        alone: bool,
    ) -> Option<String> {
        self.asks(from, now);
        self.forget_suspects(now);
        // Old entries say nothing any more (a redirect is remembered longer
        // than a puller waits on it, so a pointed-at puller still gets the
        // chunk from here in the end): keep the ledger small.
        if self.pruned.is_none_or(|at| now - at >= t.sent_fresh) {
            self.first.retain(|_, (_, sent)| now - *sent < t.sent_fresh);
            self.redirected.retain(|_, at| now - *at < t.sent_fresh);
            self.active.retain(|_, at| now - *at < t.puller_active);
            self.active.insert(from.to_string(), now);
            let active = &self.active;
            self.suspects.retain(|p, _| active.contains_key(p));
            self.gaps.retain(|p, _| active.contains_key(p));
            self.pruned = Some(now);
        }
        match self.first.get(&index) {
            // Sent recently to a puller that is still at work: point there,
            // once per chunk and puller.
            Some((first, sent)) if first != from && now - *sent < t.sent_fresh => {
                let asking = self
                    .active
                    .get(first)
                    .is_some_and(|at| now - *at < t.puller_active);
                // Alone, the asker has this uplink to itself: the chunk goes
                // as soon from here, and the one it was sent to (a
                // puller that stopped asking) may be gone, or at another
                // site, where the asker would not follow.
                if !asking || alone {
                    // Finished, or dead: nobody to point at, and whoever
                    // gets it now is the one to point the next at (else
                    // every later asker would be sent it from here).
                    self.first.insert(index, (from.to_string(), now));
                    return None;
                }
                match self.redirected.entry((index, from.to_string())) {
                    Entry::Occupied(_) => None,
                    Entry::Vacant(v) => {
                        v.insert(now);
                        Some(first.clone())
                    }
                }
            }
            Some((first, _)) if first == from => None,
            // Never sent, or sent a while ago (that puller may have finished
            // and deleted it since): a new round.
            _ => {
                self.first.insert(index, (from.to_string(), now));
                None
            }
        }
    }

    /// `from` asks at `now`: at work, whatever was said of it.
    fn asks(&mut self, from: &str, now: Instant) {
        // Every request comes here: no new key unless it is a new puller.
        match self.active.get_mut(from) {
            Some(at) => {
                let gap = now.saturating_duration_since(*at);
                *at = now;
                match self.gaps.get_mut(from) {
                    Some((last, slow)) => {
                        *last = gap;
                        *slow = gap.max(*slow / 2);
                    }
                    None => {
                        self.gaps.insert(from.to_string(), (gap, gap));
                    }
                }
            }
            None => {
                self.active.insert(from.to_string(), now);
            }
        }
        if !self.suspects.is_empty() {
            self.suspects.remove(from);
        }
    }

    /// `from` could not reach the pullers `gone`: each that does not ask
    /// here itself soon (see [`QUIET`]) is not pointed at again until it
    /// asks again; one already quiet for longer than its own pace
    /// ([`OVERDUE`]) is forgotten at once. One that asks often is alive,
    /// whatever a peer of it says (a dial it refused, say; or a hostile
    /// member's word), and stays; a dead one is forgotten that long after
    /// the first word of it. Only the first [`super::MAX_GONE`] names are
    /// read.
    pub(super) fn told_gone(&mut self, t: &Tuning, from: &str, gone: &[String], now: Instant) {
        // Asking, it is at work itself (the decision on its request, which
        // follows, counts the ask: counted here too, its gap would be 0).
        self.suspects.remove(from);
        for g in gone.iter().take(super::MAX_GONE) {
            let Some(&last) = self.active.get(g) else {
                continue;
            };
            let (gap, slow) = self.gaps.get(g).copied().unwrap_or_default();
            if now.saturating_duration_since(last) >= OVERDUE.max(2 * slow) {
                // Quiet for longer than its own pace already: it had its
                // chance to show it is alive (a puller that finished and
                // deleted the file, or died, was pointed at for QUIET
                // more: a 64 MiB pull right after one made 514 requests
                // for 256 chunks, now 69-108).
                self.suspects.insert(g.clone(), now);
            } else if !self.suspects.contains_key(g) {
                let wait = QUIET.max(2 * gap).min(t.puller_active);
                self.suspects.insert(g.clone(), now + wait);
            }
        }
        self.forget_suspects(now);
    }

    /// Forgets the suspects whose time to ask is over.
    fn forget_suspects(&mut self, now: Instant) {
        if self.suspects.is_empty() {
            return;
        }
        let (active, forgotten) = (&mut self.active, &mut self.forgotten);
        self.suspects.retain(|p, until| {
            let over = now >= *until;
            if over && active.remove(p).is_some() {
                forgotten.push(p.clone());
            }
            !over
        });
    }

    /// Whether `p`, which last asked `at`, is still pulling beside others,
    /// for [`Ledger::decide_run`]'s whole runs: it asked within
    /// [`STILL_ASKING`], or within four of its longest gaps between asks
    /// lately if longer, and no longer ago than `Tuning::puller_active`.
    /// A swarm's pullers stop asking when they are done; a lone puller
    /// right after was sent single chunks for 5 s, and pointed at them
    /// (the lab's sites test: 128 requests for 64 chunks, now 19).
    /// Pointers to a puller that stopped asking go on for `puller_active`
    /// while others pull: in a big swarm a live puller may not ask its
    /// holder for seconds (the simulator, 1,000 hosts, 5% dying: with
    /// this rule for pointers too, 1.380 of size/cap and 1.369 copies per
    /// chunk from the origin, against 1.108 and 1.098).
    fn still_asking(&self, t: &Tuning, p: &str, at: Instant, now: Instant) -> bool {
        let gap = self.gaps.get(p).map_or_else(Default::default, |g| g.1);
        now - at < STILL_ASKING.max(4 * gap).min(t.puller_active)
    }

    /// The pullers forgotten since the last call, to log.
    pub(super) fn take_forgotten(&mut self) -> Vec<String> {
        std::mem::take(&mut self.forgotten)
    }

    /// How many chunks of the run `index..index + count` to send `from`
    /// (at least the first), or whom to point it at for the first. A run
    /// goes whole only to a lone puller: while others pull too, single
    /// chunks reach each of them sooner, to be passed on.
    pub(super) fn decide_run(
        &mut self,
        t: &Tuning,
        from: &str,
        index: u32,
        count: u32,
        now: Instant,
    ) -> Portion {
        let alone = self
            .active
            .iter()
            .all(|(p, at)| p == from || !self.still_asking(t, p, *at, now));
        if let Some(to) = self.decide(t, from, index, now, alone) {
            return Portion::Redirect(to);
        }
        if !alone {
            return Portion::Send(1);
        }
        // No other puller is asking: none has any of the run to pass on.
        for i in index + 1..index + count {
            self.first.insert(i, (from.to_string(), now));
        }
        Portion::Send(count.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_holder_sends_each_chunk_once_while_pullers_are_at_work() {
        let t = Tuning::default();
        let t0 = Instant::now();
        let mut l = Ledger::default();
        assert_eq!(
            l.decide(&t, "a", 7, t0, false),
            None,
            "the first asker gets it"
        );
        assert_eq!(
            l.decide(&t, "a", 7, t0, false),
            None,
            "and again, if it asks again"
        );
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            l.decide(&t, "b", 7, t1, false),
            Some("a".into()),
            "the next is pointed at a"
        );
        assert_eq!(
            l.decide(&t, "b", 7, t1, false),
            None,
            "but only once per chunk"
        );
        assert_eq!(l.decide(&t, "c", 7, t1, false), Some("a".into()));
        // A puller that stopped asking is nobody to point at.
        let later = t0 + t.puller_active + Duration::from_secs(1);
        assert_eq!(l.decide(&t, "d", 8, later, false), None);
        assert_eq!(
            l.decide(&t, "e", 7, later, false),
            None,
            "a is not active any more"
        );
        assert_eq!(
            l.decide(&t, "f", 7, later, false),
            Some("e".into()),
            "e got it in a's place"
        );
        // A chunk sent long ago starts a new round.
        let t2 = later + t.sent_fresh + Duration::from_secs(1);
        l.decide(&t, "a", 9, t2, false);
        assert_eq!(l.decide(&t, "g", 7, t2, false), None);
        assert_eq!(l.decide(&t, "h", 7, t2, false), Some("g".into()));
    }

    #[test]
    fn a_puller_told_gone_is_forgotten_only_if_it_does_not_ask_soon() {
        let t = Tuning::default();
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut l = Ledger::default();
        // a asks every 100 ms.
        assert_eq!(l.decide(&t, "a", 7, t0, false), None);
        assert_eq!(l.decide(&t, "a", 6, t0 + ms(100), false), None);
        let gone = ["a".to_string()];
        // Told of, but it asks again soon: alive, whoever says otherwise.
        l.told_gone(&t, "r", &gone, t0 + ms(150));
        assert_eq!(l.decide(&t, "b", 7, t0 + ms(200), false), Some("a".into()));
        assert_eq!(l.decide(&t, "a", 8, t0 + ms(300), false), None);
        assert_eq!(
            l.decide(&t, "b", 7, t0 + QUIET * 2, false),
            None,
            "b again: sent"
        );
        assert_eq!(
            l.decide(&t, "c", 7, t0 + QUIET * 2, false),
            Some("a".into())
        );
        assert!(l.take_forgotten().is_empty());
        // a asks 400 ms after that, then is told of right away, and is
        // silent since: forgotten after twice its last gap between asks
        // (800 ms, more than QUIET), and the next asker gets it in its
        // place.
        let asked = t0 + ms(700);
        assert_eq!(l.decide(&t, "a", 9, asked, false), None);
        let told = asked + ms(10);
        let wait = ms(800);
        assert!(wait > QUIET);
        l.told_gone(&t, "r", &gone, told);
        l.told_gone(&t, "r", &gone, told + ms(100));
        assert_eq!(
            l.decide(&t, "d", 7, told + wait - ms(1), false),
            Some("a".into())
        );
        assert!(l.take_forgotten().is_empty());
        assert_eq!(l.decide(&t, "e", 7, told + wait, false), None);
        assert_eq!(l.take_forgotten(), ["a"]);
        assert_eq!(l.decide(&t, "f", 7, told + wait, false), Some("e".into()));
        // It asks again: pointed at again.
        let back = told + wait * 2;
        assert_eq!(l.decide(&t, "a", 10, back, false), None);
        assert_eq!(l.decide(&t, "b", 10, back, false), Some("a".into()));
        // Only the first MAX_GONE names are read.
        let e_last: Vec<String> = ["w", "x", "y", "z", "e"].map(String::from).into();
        l.told_gone(&t, "r", &e_last, back);
        assert_eq!(l.decide(&t, "g", 7, back + QUIET, false), Some("e".into()));
        assert!(l.take_forgotten().is_empty());
    }

    #[test]
    fn a_puller_told_gone_that_is_overdue_by_its_own_pace_is_forgotten_at_once() {
        let t = Tuning::default();
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut l = Ledger::default();
        // a asks every 10 ms, and is sent chunk 7, then stops.
        for k in 0..5u32 {
            l.decide(&t, "a", 7 + k, t0 + ms(10) * k, false);
        }
        let last = t0 + ms(40);
        let gone = ["a".to_string()];
        // 30 ms on: not overdue (the least is OVERDUE), a suspect.
        l.told_gone(&t, "r", &gone, last + ms(30));
        assert_eq!(l.decide(&t, "b", 7, last + ms(31), false), Some("a".into()));
        assert!(l.take_forgotten().is_empty());
        // Told again once it is overdue: forgotten then, not QUIET after
        // the first word.
        l.told_gone(&t, "r", &gone, last + OVERDUE);
        assert_eq!(l.take_forgotten(), ["a"]);
        assert_eq!(l.decide(&t, "c", 8, last + OVERDUE, false), None);
        // One whose pace is slower is given twice its gap.
        let mut l = Ledger::default();
        for k in 0..3u32 {
            l.decide(&t, "d", k, t0 + ms(400) * k, false);
        }
        let last = t0 + ms(800);
        l.told_gone(&t, "r", &gone_of("d"), last + ms(700));
        assert!(
            l.take_forgotten().is_empty(),
            "asked 700 ms ago, gaps of 400"
        );
        l.told_gone(&t, "r", &gone_of("d"), last + ms(800));
        assert_eq!(l.take_forgotten(), ["d"]);
    }

    fn gone_of(p: &str) -> [String; 1] {
        [p.to_string()]
    }

    #[test]
    fn a_holder_sends_whole_runs_only_to_a_lone_puller() {
        let t = Tuning::default();
        let t0 = Instant::now();
        let mut l = Ledger::default();
        assert_eq!(
            l.decide_run(&t, "a", 8, 4, t0),
            Portion::Send(4),
            "alone: the whole run"
        );
        assert_eq!(l.decide_run(&t, "a", 12, 4, t0), Portion::Send(4));
        // A second puller: single chunks to both from now on, and chunks
        // a already has are pointed at a.
        assert_eq!(l.decide_run(&t, "b", 16, 4, t0), Portion::Send(1));
        assert_eq!(l.decide_run(&t, "a", 20, 4, t0), Portion::Send(1));
        assert_eq!(
            l.decide_run(&t, "b", 9, 4, t0),
            Portion::Redirect("a".into())
        );
        // A second after b's last ask, a is alone again, and its runs are
        // whole: 16, which went to b, too (b is done, or gone).
        let t1 = t0 + STILL_ASKING;
        assert_eq!(l.decide_run(&t, "a", 13, 4, t1), Portion::Send(4));
    }

    #[test]
    fn a_puller_that_asked_often_and_stopped_leaves_the_next_alone_soon() {
        let t = Tuning::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut l = Ledger::default();
        // b asks every 100 ms, a every 400 ms, then both stop.
        for k in 0..10u32 {
            if k % 4 == 0 {
                l.decide_run(&t, "a", 100 + k, 4, t0 + ms(100) * k);
            }
            l.decide_run(&t, "b", 4 * k, 4, t0 + ms(100) * k);
        }
        let (b_last, a_last) = (t0 + ms(900), t0 + ms(800));
        // c, new, right after: not alone.
        assert_eq!(
            l.decide_run(&t, "c", 200, 4, b_last + ms(500)),
            Portion::Send(1)
        );
        // A second after b's last ask, b counts no more; a's gaps were
        // 400 ms, so it counts until 1.6 s after its last.
        assert_eq!(
            l.decide_run(&t, "c", 204, 4, b_last + ms(1100)),
            Portion::Send(1)
        );
        assert_eq!(
            l.decide_run(&t, "c", 208, 4, a_last + ms(1700)),
            Portion::Send(4),
            "alone well before puller_active ({:?})",
            t.puller_active
        );
        // Nor is a lone asker pointed at b for what b was sent (b may be
        // gone, or at another site, where the asker would not follow).
        assert_eq!(
            l.decide_run(&t, "c", 4, 4, a_last + ms(1700)),
            Portion::Send(4),
            "4 went to b"
        );
        // One with two requests in hand asks in pairs, 800 ms apart: the
        // pairs' own gaps (none) do not make it count for less.
        let mut l = Ledger::default();
        for k in 0..3u32 {
            let at = t0 + ms(800) * k;
            l.decide_run(&t, "p", 8 * k, 4, at);
            l.decide_run(&t, "p", 8 * k + 4, 4, at + ms(1));
        }
        let p_last = t0 + ms(1601);
        assert_eq!(
            l.decide_run(&t, "q", 100, 4, p_last + ms(1500)),
            Portion::Send(1)
        );
        // A puller that asks once a second counts for 4 s after its last
        // ask, but none for longer than puller_active.
        let mut l = Ledger::default();
        let s = Duration::from_secs;
        for k in 0..3u32 {
            l.decide_run(&t, "d", 4 * k, 4, t0 + s(1) * k);
        }
        let d_last = t0 + s(2);
        assert_eq!(
            l.decide_run(&t, "e", 100, 4, d_last + ms(3900)),
            Portion::Send(1)
        );
        assert_eq!(
            l.decide_run(&t, "e", 104, 4, d_last + ms(4100)),
            Portion::Send(4)
        );
        let mut l = Ledger::default();
        l.decide_run(&t, "f", 0, 4, t0);
        l.decide_run(&t, "f", 4, 4, t0 + s(3));
        assert_eq!(
            l.decide_run(&t, "g", 100, 4, t0 + s(3) + t.puller_active - ms(100)),
            Portion::Send(1)
        );
        assert_eq!(
            l.decide_run(&t, "g", 104, 4, t0 + s(3) + t.puller_active),
            Portion::Send(4)
        );
    }
}
