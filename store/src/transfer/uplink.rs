//! A node's uplink: answers go out a few at a time. When a thousand
//! pullers start at once, each asks the holder first; sent all together,
//! their answers share the uplink, and each chunk arrives whole (and can be
//! passed on) only after a thousand chunk-times. A few at a time, each is
//! whole within a few, and the swarm takes it from there (the simulator:
//! 1,000 hosts, last done 1.29 -> 1.06 of size / cap with 32 slots; see
//! `Scenario::send_slots`). The throughput is the same: the uplink is as
//! busy either way.
//!
//! An answer keeps its slot for as long as it would take with the uplink
//! shared by all the slots ([`hold_for`], from the rate the uplink is seen
//! to send at), and no longer: one that goes slower is held back by its
//! receiver (whose downlink other senders share, in a swarm), not by this
//! uplink, and keeping its slot would leave the uplink idle.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The rate an uplink is seen to send at is measured over this long: long
/// enough that an answer written into an empty socket buffer at once does
/// not pass for the wire's speed.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// An answer keeps its slot at least this long: shorter than a scheduler's
/// time slice, a hold would only cost wakeups.
const HOLD_LEAST: Duration = Duration::from_millis(1);

/// Slots for answers being sent.
pub(super) struct Uplink {
    max: usize,
    /// The longest an answer keeps its slot (`Tuning::slot_hold`): until
    /// the uplink's rate is known, and if it is slow.
    hold_most: Duration,
    slots: Mutex<Slots>,
    rate: Mutex<Rate>,
}

/// Slots taken, and the answers waiting for one, by rank then arrival,
/// each woken on its own: a freed slot wakes only the first in line (a
/// holder has hundreds of connections waiting at a big swarm's start).
#[derive(Default)]
struct Slots {
    used: usize,
    waiting: BTreeMap<(u16, u64), Arc<Condvar>>,
    arrived: u64,
}

impl Slots {
    /// Wakes the first in line if a slot is free for it.
    fn wake_first(&self, max: usize) {
        if self.used < max {
            if let Some((_, first)) = self.waiting.first_key_value() {
                first.notify_one();
            }
        }
    }
}

/// Bytes sent in the current window, and the best rate seen.
struct Rate {
    since: Instant,
    bytes: u64,
    /// Bytes a second; 0 until a window is over.
    best: f64,
}

impl Rate {
    /// Counts `n` bytes sent at `now`. A window's rate replaces the best
    /// when higher; a lower one wears the best down by a quarter, so that
    /// an uplink shared with other traffic is not expected to be as fast
    /// as it once was, while an idle spell (no demand) costs little.
    fn sent(&mut self, n: usize, now: Instant) {
        self.bytes += n as u64;
        let over = now.saturating_duration_since(self.since);
        if over >= RATE_WINDOW {
            let r = self.bytes as f64 / over.as_secs_f64();
            self.best = r.max(self.best * 0.75);
            self.since = now;
            self.bytes = 0;
        }
    }
}

/// How long an answer of `bytes` keeps one of `slots` send slots on an
/// uplink that sends `rate` bytes a second (0: not known yet): as long as
/// it takes when the slots share the uplink evenly, between
/// [`HOLD_LEAST`] and `most`. The simulator uses it too, with each host's
/// uplink capacity for the rate.
pub(crate) fn hold_for(rate: f64, slots: usize, bytes: usize, most: Duration) -> Duration {
    if rate <= 0.0 || slots == 0 {
        return most;
    }
    let even = bytes as f64 * slots as f64 / rate;
    Duration::from_secs_f64(even.min(most.as_secs_f64())).max(HOLD_LEAST.min(most))
}

/// One answer's place on the uplink, given back when dropped (or at
/// [`SendSlot::release`]); it also counts what the answer sends, slot or
/// not, towards the uplink's rate.
pub struct SendSlot {
    up: Option<Arc<Uplink>>,
    held: bool,
    busy: bool,
}

impl SendSlot {
    /// Whether more than half the slots were taken (or none was free in
    /// time): only then is it worth keeping the answer out of the socket
    /// buffer until it is on the wire, which costs a lone puller's
    /// transfer more wakeups for the same bytes.
    pub fn busy(&self) -> bool {
        self.busy
    }

    /// Whether it is a slot: not when none came free within the patience
    /// (nor with no limit), and the answer goes without one.
    pub fn held(&self) -> bool {
        self.held
    }

    /// How long an answer of `bytes` keeps this slot at most (see
    /// [`hold_for`]).
    pub fn hold(&self, bytes: usize) -> Duration {
        match &self.up {
            Some(up) => {
                let rate = up.rate.lock().unwrap_or_else(|e| e.into_inner()).best;
                hold_for(rate, up.max, bytes, up.hold_most)
            }
            None => Duration::ZERO,
        }
    }

    /// Counts `n` bytes of the answer as sent (written to the socket).
    pub fn sent(&self, n: usize) {
        if let Some(up) = &self.up {
            let mut rate = up.rate.lock().unwrap_or_else(|e| e.into_inner());
            rate.sent(n, Instant::now());
        }
    }

    /// Gives the slot back before the answer is sent: its hold is over.
    pub fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            if let Some(up) = &self.up {
                let mut slots = up.slots.lock().unwrap_or_else(|e| e.into_inner());
                slots.used -= 1;
                slots.wake_first(up.max);
            }
        }
    }
}

impl Uplink {
    pub(super) fn new(max: usize, hold_most: Duration) -> Arc<Uplink> {
        Arc::new(Uplink {
            max,
            hold_most,
            slots: Mutex::new(Slots::default()),
            rate: Mutex::new(Rate {
                since: Instant::now(),
                bytes: 0,
                best: 0.0,
            }),
        })
    }

    /// A slot, once one is free and no answer of a lower `rank` (then
    /// none that came earlier) waits for one; or after `patience`, none
    /// (the answer goes anyway): a peer that stops reading holds its slot
    /// until the write times out, and must not hold up every other answer
    /// that long. Blocking.
    pub(super) fn take(self: &Arc<Self>, patience: Duration, rank: u16) -> SendSlot {
        if self.max == 0 {
            return SendSlot {
                up: None,
                held: false,
                busy: false,
            };
        }
        let until = Instant::now() + patience;
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.used < self.max && slots.waiting.is_empty() {
            return self.given(&mut slots);
        }
        let me = (rank, slots.arrived);
        slots.arrived += 1;
        let woken = Arc::new(Condvar::new());
        slots.waiting.insert(me, woken.clone());
        loop {
            let first = slots.waiting.first_key_value().map(|(k, _)| *k);
            if slots.used < self.max && first == Some(me) {
                slots.waiting.remove(&me);
                let slot = self.given(&mut slots);
                // Another slot may be free for the next in line.
                slots.wake_first(self.max);
                return slot;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                slots.waiting.remove(&me);
                // The first in line may be another now.
                slots.wake_first(self.max);
                return SendSlot {
                    up: Some(self.clone()),
                    held: false,
                    busy: true,
                };
            }
            slots = match woken.wait_timeout(slots, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }

    fn given(self: &Arc<Self>, slots: &mut Slots) -> SendSlot {
        slots.used += 1;
        SendSlot {
            up: Some(self.clone()),
            held: true,
            busy: slots.used > self.max / 2,
        }
    }

    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.slots.lock().unwrap().waiting.len()
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        self.slots.lock().unwrap().used
    }
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn at_most_the_slots_send_at_once_and_all_send_in_the_end() {
        let up = Uplink::new(3, Duration::from_millis(100));
        let (now, most, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let threads: Vec<_> = (0..12)
            .map(|i| {
                let (up, now, most, done) = (up.clone(), now.clone(), most.clone(), done.clone());
                std::thread::spawn(move || {
                    // Ranks of every kind in line: each freed slot wakes
                    // only the first, and none is left waiting.
                    let slot = up.take(Duration::from_secs(60), (i * 7 % 5) as u16);
                    assert!(slot.held(), "waited until a slot was free");
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(5));
                    now.fetch_sub(1, Ordering::SeqCst);
                    done.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 12);
        assert!(most.load(Ordering::SeqCst) <= 3);
        assert_eq!(up.used(), 0, "every slot given back");
    }

    #[test]
    fn a_freed_slot_goes_to_the_waiter_furthest_behind_then_the_first_come() {
        let up = Uplink::new(1, Duration::from_millis(100));
        let held = up.take(Duration::ZERO, 0);
        let order = Arc::new(Mutex::new(Vec::new()));
        // Ranks in the order they come: the 40 twice, the second later.
        let waiters: Vec<_> = [
            (40u16, "40 first"),
            (90, "90"),
            (10, "10"),
            (40, "40 second"),
        ]
        .into_iter()
        .enumerate()
        .map(|(k, (rank, label))| {
            let (mine, order) = (up.clone(), order.clone());
            let t = std::thread::spawn(move || {
                let slot = mine.take(Duration::from_secs(60), rank);
                assert!(slot.held());
                order.lock().unwrap().push(label);
            });
            // Each is waiting before the next comes.
            while up.slots.lock().unwrap().waiting.len() < k + 1 {
                std::thread::yield_now();
            }
            t
        })
        .collect();
        drop(held);
        for t in waiters {
            t.join().unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            ["10", "40 first", "40 second", "90"],
            "lowest rank first, then the order they came in"
        );
        assert_eq!(up.used(), 0);
        assert!(up.slots.lock().unwrap().waiting.is_empty());
    }

    #[test]
    fn a_waiter_that_gives_up_does_not_block_the_ones_behind_it() {
        let up = Uplink::new(1, Duration::from_millis(100));
        let held = up.take(Duration::ZERO, 0);
        // The first in rank gives up after its patience...
        let early = {
            let up = up.clone();
            std::thread::spawn(move || up.take(Duration::from_millis(30), 0).held())
        };
        while up.slots.lock().unwrap().waiting.is_empty() {
            std::thread::yield_now();
        }
        let later = {
            let up = up.clone();
            std::thread::spawn(move || up.take(Duration::from_secs(60), 5).held())
        };
        assert!(!early.join().unwrap(), "gave up: sent without a slot");
        // ...and the one behind it takes the slot once it is free.
        drop(held);
        assert!(later.join().unwrap());
        assert_eq!(up.used(), 0);
    }

    #[test]
    fn a_held_slot_holds_up_the_next_only_as_long_as_its_patience() {
        let up = Uplink::new(1, Duration::from_millis(100));
        let held = up.take(Duration::ZERO, 0);
        assert!(held.held() && held.busy(), "one of one is more than half");
        let late = up.take(Duration::from_millis(20), 0);
        assert!(!late.held(), "no slot after waiting: sent anyway");
        assert!(late.busy());
        drop(late);
        assert_eq!(up.used(), 1, "a slot never taken is not given back");
        drop(held);
        assert!(up.take(Duration::ZERO, 0).held());
        assert!(
            !Uplink::new(0, Duration::ZERO)
                .take(Duration::ZERO, 0)
                .held(),
            "no limit"
        );
        assert!(!Uplink::new(0, Duration::ZERO)
            .take(Duration::ZERO, 0)
            .busy());
        let four = Uplink::new(4, Duration::from_millis(100));
        let (a, b, c) = (
            four.take(Duration::ZERO, 0),
            four.take(Duration::ZERO, 0),
            four.take(Duration::ZERO, 0),
        );
        assert_eq!((a.busy(), b.busy(), c.busy()), (false, false, true));
    }

    #[test]
    fn an_answer_holds_its_slot_as_long_as_an_even_share_of_the_uplink_takes() {
        let most = Duration::from_millis(100);
        let chunk = 256 << 10;
        // 2 slots of a 200 Mbit/s uplink: a chunk at half of it.
        let two = hold_for(25e6, 2, chunk, most);
        assert!(
            two > Duration::from_millis(20) && two < Duration::from_millis(22),
            "{two:?}"
        );
        // 32 slots of a 1 Gbit/s uplink: about 70 ms (the old fixed hold
        // was set just above that).
        let many = hold_for(125e6, 32, chunk, most);
        assert!(many > Duration::from_millis(60) && many < most, "{many:?}");
        assert_eq!(hold_for(0.0, 2, chunk, most), most, "rate not known yet");
        assert_eq!(hold_for(1e6, 32, chunk, most), most, "a slow uplink");
        assert_eq!(hold_for(100e9, 2, chunk, most), HOLD_LEAST, "a fast one");
        assert_eq!(hold_for(100e9, 2, chunk, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_uplink_rate_is_the_best_window_worn_down_by_slower_ones() {
        let t0 = Instant::now();
        let mut r = Rate {
            since: t0,
            bytes: 0,
            best: 0.0,
        };
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Written at once into an empty socket buffer: not a rate yet.
        r.sent(4 << 20, at(10));
        assert_eq!(r.best, 0.0);
        r.sent(21 << 20, at(1000));
        assert!((r.best - (25u64 << 20) as f64).abs() < 1.0, "{}", r.best);
        // A window at a fifth of it (an idle spell, or a shared link).
        r.sent(5 << 20, at(2000));
        assert!((r.best - 0.75 * (25u64 << 20) as f64).abs() < 1.0);
        // A faster one replaces it.
        r.sent(30 << 20, at(3000));
        assert!((r.best - (30u64 << 20) as f64).abs() < 1.0);
    }

    #[test]
    fn a_released_slot_is_free_at_once_and_not_given_back_twice() {
        let up = Uplink::new(1, Duration::from_millis(100));
        let mut a = up.take(Duration::ZERO, 0);
        assert!(a.held());
        a.release();
        assert!(!a.held());
        assert_eq!(up.used(), 0);
        let b = up.take(Duration::ZERO, 0);
        assert!(b.held(), "the released slot");
        drop(a);
        assert_eq!(up.used(), 1, "b's, still");
        // What an answer sends counts towards the rate, slot or not.
        a = up.take(Duration::ZERO, 0);
        assert!(!a.held());
        a.sent(1000);
        assert_eq!(up.rate.lock().unwrap().bytes, 1000);
    }
}
