//! A complete holder's uplink: answers go out a few at a time. When a
//! thousand pullers start at once, each asks the holder first; sent all
//! together, their answers share the uplink, and each chunk arrives whole
//! (and can be passed on) only after a thousand chunk-times. A few at a
//! time, each is whole within a few, and the swarm takes it from there
//! (the simulator: 1,000 hosts, last done 1.29 -> 1.06 of size / cap with
//! 32 slots; see `Scenario::send_slots`). The throughput is the same: the
//! uplink is as busy either way.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Slots for answers being sent.
pub(super) struct Uplink {
    max: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// One answer's place on the uplink, given back when dropped.
pub struct SendSlot {
    up: Option<Arc<Uplink>>,
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
        self.up.is_some()
    }
}

impl Uplink {
    pub(super) fn new(max: usize) -> Arc<Uplink> {
        Arc::new(Uplink {
            max,
            used: Mutex::new(0),
            freed: Condvar::new(),
        })
    }

    /// A slot, once one is free; or after `patience`, none (the answer
    /// goes anyway): a peer that stops reading holds its slot until the
    /// write times out, and must not hold up every other answer that long.
    /// Blocking.
    pub(super) fn take(self: &Arc<Self>, patience: Duration) -> SendSlot {
        if self.max == 0 {
            return SendSlot {
                up: None,
                busy: false,
            };
        }
        let until = Instant::now() + patience;
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= self.max {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return SendSlot {
                    up: None,
                    busy: true,
                };
            }
            used = match self.freed.wait_timeout(used, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        *used += 1;
        SendSlot {
            up: Some(self.clone()),
            busy: *used > self.max / 2,
        }
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        *self.used.lock().unwrap()
    }
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        if let Some(up) = self.up.take() {
            let mut used = up.used.lock().unwrap_or_else(|e| e.into_inner());
            *used -= 1;
            up.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn at_most_the_slots_send_at_once_and_all_send_in_the_end() {
        let up = Uplink::new(3);
        let (now, most, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicUsize::new(0)),
        );
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let (up, now, most, done) = (up.clone(), now.clone(), most.clone(), done.clone());
                std::thread::spawn(move || {
                    let _slot = up.take(Duration::from_secs(60));
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
    fn a_held_slot_holds_up_the_next_only_as_long_as_its_patience() {
        let up = Uplink::new(1);
        let held = up.take(Duration::ZERO);
        assert!(
            held.up.is_some() && held.busy(),
            "one of one is more than half"
        );
        let late = up.take(Duration::from_millis(20));
        assert!(late.up.is_none(), "no slot after waiting: sent anyway");
        assert!(late.busy());
        drop(late);
        assert_eq!(up.used(), 1, "a slot never taken is not given back");
        drop(held);
        assert!(up.take(Duration::ZERO).up.is_some());
        assert!(Uplink::new(0).take(Duration::ZERO).up.is_none(), "no limit");
        assert!(!Uplink::new(0).take(Duration::ZERO).busy());
        let four = Uplink::new(4);
        let (a, b, c) = (
            four.take(Duration::ZERO),
            four.take(Duration::ZERO),
            four.take(Duration::ZERO),
        );
        assert_eq!((a.busy(), b.busy(), c.busy()), (false, false, true));
    }
}
