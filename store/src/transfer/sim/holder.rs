//! The serving side: connections answered in order, a complete holder
//! through the real [`Ledger`], a puller from its have-bits, with its news.

use super::*;

impl Sim<'_> {
    // ---- the serving side ----

    pub(super) fn conn(&mut self, from: u32, to: u32) -> u32 {
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
            pending: None,
            has_slot: false,
            slot_gen: 0,
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

    pub(super) fn arrive(&mut self, q: u32, p: u32, req: Req) {
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
    pub(super) fn serve_next(&mut self, c: u32) {
        if self.conns[c as usize].pending.is_some() {
            return; // waits for a send slot, requests behind it too
        }
        loop {
            let Some(req) = self.conns[c as usize].queue.pop_front() else {
                self.end_flow(c);
                return;
            };
            let (q, p) = (self.conns[c as usize].from, self.conns[c as usize].to);
            let decided = self.decide(q, p, &req);
            let news = req.asker.seen.and_then(|seen| self.news(q, seen));
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
                    let slots = self.slots_of(q);
                    if slots > 0 && !self.conns[c as usize].has_slot {
                        if self.slots_used[q as usize] >= slots {
                            if self.hosts[q as usize].ledger.is_none() {
                                self.stats.peer_slot_waits += 1;
                            }
                            self.conns[c as usize].pending = Some(Sending { req, k, tags, news });
                            self.slot_wait[q as usize].push_back(c);
                            self.end_flow(c);
                            return;
                        }
                        self.slots_used[q as usize] += 1;
                        self.give_slot(c, k);
                    }
                    self.begin_send(c, Sending { req, k, tags, news });
                    return;
                }
            }
        }
    }

    /// What `q` sends `p` for `req`, as `Engine::read_run`: a holder asks
    /// its ledger, a puller sends what it has of the run.
    pub(super) fn decide(
        &mut self,
        q: u32,
        p: u32,
        req: &Req,
    ) -> Result<(usize, [u32; MAX_RUN]), Miss> {
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
            // As `Engine::told_gone`: only when some are named.
            if !req.asker.gone.is_empty() {
                l.told_gone(t, from, &req.asker.gone, now);
            }
            let portion = l.decide_run(t, from, first as u32, count as u32, now);
            l.take_forgotten();
            match portion {
                Portion::Send(k) => k as usize,
                Portion::Redirect(to) => {
                    let late = self.now.saturating_sub(2 * ns(self.sc.dead_timeout));
                    if self.hosts[Self::id(&to) as usize]
                        .died
                        .is_some_and(|d| d < late)
                    {
                        self.stats.late_redirects += 1;
                    }
                    return Err(Miss::Redirect(to));
                }
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
    pub(super) fn news(&self, q: u32, seen: u32) -> Option<News> {
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
    pub(super) fn sent(&mut self, c: u32) {
        let conn = &mut self.conns[c as usize];
        conn.left = 0.0;
        conn.at = self.now;
        let s = conn.sending.take().expect("a flow sends something");
        let (q, p) = (conn.from, conn.to);
        if q == 0 {
            self.origin_chunks += s.k as u64;
        }
        if self.hosts[q as usize].site != self.hosts[p as usize].site {
            let kind = match (q, self.hosts[q as usize].ledger.is_some()) {
                (0, _) => 0,
                (_, true) => 1,
                _ => 2,
            };
            self.stats.cross[kind] += s.k as u64;
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
        self.release_slot(c);
        self.serve_next(c);
    }

    /// `c` sends `s` from now on: its flow, or the next answer of it.
    fn begin_send(&mut self, c: u32, s: Sending) {
        let conn = &mut self.conns[c as usize];
        conn.left = (s.k as u64 * CHUNK_SIZE) as f64;
        conn.sending = Some(s);
        conn.at = self.now;
        if conn.flowing {
            self.reschedule(c);
        } else {
            self.start_flow(c);
        }
    }

    /// `c` has a send slot now for an answer of `k` chunks, until it is
    /// sent or its hold is over (a slow receiver would keep it from the
    /// others: the server writes in pieces, and lets go of it then). The
    /// hold is the server's ([`uplink::hold_for`]), at the rate the
    /// server measures once its uplink is busy: the uplink's capacity.
    fn give_slot(&mut self, c: u32, k: usize) {
        let from = self.conns[c as usize].from as usize;
        let up = self.links[2 * from].cap;
        let hold = uplink::hold_for(
            up,
            self.slots_of(from as u32) as usize,
            k * CHUNK_SIZE as usize,
            self.t.slot_hold,
        );
        let conn = &mut self.conns[c as usize];
        conn.has_slot = true;
        conn.slot_gen += 1;
        let gen = conn.slot_gen;
        let due = self.now + ns(hold);
        self.push(due, Ev::SlotDue { c, gen });
    }

    /// Gives `c`'s send slot, if it has one, to the next connection waiting.
    pub(super) fn release_slot(&mut self, c: u32) {
        if !self.conns[c as usize].has_slot {
            return;
        }
        self.conns[c as usize].has_slot = false;
        let q = self.conns[c as usize].from as usize;
        self.slots_used[q] -= 1;
        // Those that no longer wait (their receiver died) leave the line.
        let conns = &self.conns;
        self.slot_wait[q].retain(|w| conns[*w as usize].pending.is_some());
        // A holder's answers go in turn; a puller's to the furthest behind
        // first, then in turn (`Uplink::take`).
        let next = if self.hosts[q].ledger.is_some() {
            self.slot_wait[q].pop_front()
        } else {
            let rank = |w: &u32| {
                let s = self.conns[*w as usize].pending.as_ref();
                s.and_then(|s| s.req.asker.progress).unwrap_or(u16::MAX)
            };
            let at =
                (0..self.slot_wait[q].len()).min_by_key(|i| (rank(&self.slot_wait[q][*i]), *i));
            at.and_then(|i| self.slot_wait[q].remove(i))
        };
        if let Some(w) = next {
            let s = self.conns[w as usize]
                .pending
                .take()
                .expect("a waiting answer");
            self.slots_used[q] += 1;
            self.give_slot(w, s.k);
            self.begin_send(w, s);
        }
    }

    /// Send slots of host `q` now: a complete holder's, or a puller's.
    fn slots_of(&self, q: u32) -> u32 {
        if self.hosts[q as usize].ledger.is_some() {
            self.slots
        } else {
            self.peer_slots
        }
    }
}
