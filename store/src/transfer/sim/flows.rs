//! Bandwidth: flows on max-min fair links, and when each ends.

use super::*;

/// When each flow ends, by connection: an indexed heap, so a new rate moves
/// its flow's end instead of leaving a stale one behind.
#[derive(Default)]
pub(super) struct Ends {
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

    pub(super) fn remove(&mut self, c: u32) {
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

    pub(super) fn peek(&self) -> Option<(u64, u32)> {
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

impl Sim<'_> {
    // ---- bandwidth ----

    pub(super) fn advance(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        let dt = secs(self.now - conn.at);
        conn.left = (conn.left - conn.rate * dt).max(0.0);
        conn.at = self.now;
    }

    pub(super) fn reschedule(&mut self, c: u32) {
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

    pub(super) fn start_flow(&mut self, c: u32) {
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

    pub(super) fn end_flow(&mut self, c: u32) {
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
    pub(super) fn refill(&mut self, l: u32) {
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
    pub(super) fn spare(&self, c: u32, l: u32) -> f64 {
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
}
