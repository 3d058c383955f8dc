//! The pullers: each keeps the pull loop's books around the real
//! [`pick::next`], as `pull.rs` does.

use super::*;

impl Sim<'_> {
    // ---- the pullers ----

    pub(super) fn start(&mut self, p: u32) {
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
        self.learn(p, &started, self.now, false);
        self.step(p);
    }

    /// One turn of the pull loop, after each of its events.
    pub(super) fn step(&mut self, p: u32) {
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
        super::super::source::release(&mut st.sources, now);
        self.schedule(p, &mut st);
        self.hosts[p as usize].pull = Some(st);
        let h = &mut self.hosts[p as usize];
        h.last_step = self.now;
        if !h.ticking {
            h.ticking = true;
            self.push(self.now + TICK, Ev::Tick(p));
        }
    }

    pub(super) fn tick(&mut self, p: u32) {
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
    pub(super) fn schedule(&mut self, p: u32, st: &mut Pull) {
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
                far: &st.far,
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
            let gone = if self.sc.tell_gone {
                peers::gone_for(&st.sources, &ask.host, &mut st.gone_turn)
            } else {
                Vec::new()
            };
            let news = !sites::leaves_alone(&st.sources, &st.far, &ask.host, now);
            let s = st
                .sources
                .get_mut(&ask.host)
                .expect("a source the picker chose");
            if s.inflight == 0 {
                s.busy_since = Some(now);
                s.waiting_since = Some(now);
            }
            s.inflight += count;
            let asker = Asker {
                seen: (!s.complete && news).then_some(s.seen),
                progress: Some(Asker::progress_of(st.got as u64, self.n as u64)),
                gone,
            };
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
                    asker,
                },
            );
        }
    }

    /// Why the picker gave nothing, from outside: the limits it checks
    /// first, then whether any source had room.
    pub(super) fn why_stopped(&mut self, st: &Pull, now: Instant) {
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
    pub(super) fn reply(
        &mut self,
        p: u32,
        q: u32,
        first: u32,
        count: u32,
        ans: Ans,
        news: Option<News>,
    ) {
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
        let far = sites::leaves_alone(&st.sources, &st.far, host, now);
        if let Some(s) = peers::record(&mut st.sources, &mut st.retired, host) {
            s.inflight = s.inflight.saturating_sub(count);
            s.waiting_since = (s.inflight > 0).then_some(now);
            s.measure_at(bytes, now);
            if let Some(news) = &news {
                if !far {
                    s.hear(news, self.n, now);
                }
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
            Ans::Miss(Miss::Redirect(to)) if !sites::follows(&st.sources, &st.far, &to, now) => {
                self.stats.redirects += 1;
            }
            Ans::Miss(Miss::Redirect(to)) => {
                self.stats.redirects += 1;
                peers::redirected(
                    &mut st.sources,
                    &mut st.retired,
                    &mut st.hints,
                    host,
                    to,
                    idx,
                    now,
                    t.peers,
                    t.hold,
                );
            }
            Ans::Miss(Miss::Lost(_)) => {
                self.stats.lost += 1;
                let s = peers::stat(&mut st.sources, &mut st.retired, host);
                s.lost += 1;
                s.benched_until = Some(now + t.lost_wait);
            }
            Ans::Miss(miss @ (Miss::Failed(_) | Miss::Gone(_))) => {
                self.stats.failed += 1;
                let s = peers::stat(&mut st.sources, &mut st.retired, host);
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
    pub(super) fn take(
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
    pub(super) fn written(&mut self, st: &mut Pull, p: u32, q: u32, i: usize, tag: u32) {
        st.writing.remove(&i);
        let host = &self.names[q as usize];
        if tag != content(i) {
            self.corrupt += 1;
            let s = peers::stat(&mut st.sources, &mut st.retired, host);
            s.bad += 1;
            if s.bad >= self.t.max_bad {
                s.dropped = true;
            }
            return;
        }
        set_bit(&mut st.have, i);
        st.got += 1;
        let s = peers::stat(&mut st.sources, &mut st.retired, host);
        s.served += 1;
        s.fails = 0;
        s.lost = 0;
        let slice = self.slice();
        self.stats.useful_bytes[slice] += CHUNK_SIZE as f64;
        let h = &mut self.hosts[p as usize];
        h.store[i] = tag;
        h.log.push((self.now, i as u32));
        h.first_at.get_or_insert(self.now);
    }

    /// Done: the file is in place, and served through a ledger of its own.
    pub(super) fn finish(&mut self, p: u32) {
        let h = &mut self.hosts[p as usize];
        h.pull = None;
        h.done_at = Some(self.now);
        h.ledger = Some(Ledger::new(&[]));
        self.pulling -= 1;
    }

    /// Other pullers' have-bits every `have_every`, as
    /// `Pull::poll_partial_sources`; answers come back together per delay.
    pub(super) fn poll(&mut self, p: u32) {
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
        let keeps = sites::keeps_to_site(&st.sources, &st.far, self.inst(self.now));
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
            } else if keeps {
                st.polling[q as usize] = false;
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

    pub(super) fn have(&mut self, p: u32, sent: u64, targets: Vec<u32>) {
        let Some(mut st) = self.hosts[p as usize].pull.take() else {
            return;
        };
        if self.hosts[p as usize].died.is_some() {
            return;
        }
        let t0 = Instant::now();
        let bytes = self.n.div_ceil(8) as u64;
        let now = self.inst(self.now);
        let keeps = sites::keeps_to_site(&st.sources, &st.far, self.inst(self.now));
        // Targets are in the sources' (name) order: one walk over both.
        let mut it = st.sources.iter_mut();
        let mut cur = it.next();
        for q in targets {
            st.polling[q as usize] = false;
            let snap = sent + self.lat(p, q);
            // A dead host answers nothing.
            let Some(bits) = self.bits_at(q, snap) else {
                continue;
            };
            let name = &self.names[q as usize];
            if keeps && st.far.contains(name) {
                continue;
            }
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
    /// taken off again): every bit once it was done, as `Engine::have_bits`
    /// answers; none if it was dead.
    pub(super) fn bits_at(&self, q: u32, snap: u64) -> Option<Vec<u8>> {
        let h = &self.hosts[q as usize];
        if h.died.is_some_and(|d| d <= snap) {
            return None;
        }
        if h.done_at.is_some_and(|d| d <= snap) {
            return Some(all_bits(self.n));
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
    pub(super) fn start_refresh(&mut self, p: u32) {
        let sent = self.now;
        let Some(st) = self.hosts[p as usize].pull.as_mut() else {
            return;
        };
        let usable = st.sources.values().any(|s| !s.dropped);
        let every = ns(if usable {
            st.pace.wait(&st.sources, self.t.refresh_every)
        } else {
            st.retry_wait
        });
        if st.refreshing || st.last_refresh.is_some_and(|t| sent - t < every) {
            return;
        }
        st.refreshing = true;
        self.stats.refreshes += 1;
        let delay = if self.any_dead {
            ns(self.sc.dead_timeout)
        } else if self.sc.sites > 1 {
            2 * ns(self.sc.across)
        } else {
            2 * ns(self.sc.in_site)
        };
        self.push(sent + delay, Ev::Refresh { p, sent });
    }

    pub(super) fn refresh(&mut self, p: u32, sent: u64) {
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
        self.learn(p, &answering, sent, true);
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
    /// as of the moment it answered, pullers through the policy. `refresh`:
    /// a refresh's answer, which paces the next (what `get` found at the
    /// start does not, as in the engine).
    pub(super) fn learn(&mut self, p: u32, answering: &[u32], sent: u64, refresh: bool) {
        let t0 = Instant::now();
        let Some(mut st) = self.hosts[p as usize].pull.take() else {
            return;
        };
        let mut offered = Vec::new();
        for &q in answering {
            let snap = sent + self.lat(p, q);
            let hq = &self.hosts[q as usize];
            if hq.died.is_some_and(|d| d <= snap) {
                continue;
            }
            let complete = hq.done_at.is_some_and(|d| d <= snap);
            let bits = if complete {
                None
            } else {
                self.bits_at(q, snap)
            };
            let host = self.names[q as usize].clone();
            offered.push((peers::Offer { host, complete }, bits.unwrap_or_default()));
        }
        let found = refresh.then(|| pace::offer_digest(&offered));
        peers::refresh(
            st.seed,
            &mut st.sources,
            &mut st.retired,
            &st.hints,
            offered,
            self.t.peers,
            self.t.max_bad,
            &st.rtts,
            sites::Sites {
                far: &st.far,
                now: self.inst(self.now),
            },
        );
        // As `Pull::on_refresh`: pointers to a complete holder at another
        // site are not taken while it keeps to its own.
        let now = self.inst(self.now);
        let (sources, far) = (&st.sources, &st.far);
        st.hints
            .promised
            .retain(|_, (to, _)| sites::follows(sources, far, to, now));
        if let Some(found) = found {
            let t = self.t;
            st.pace
                .refreshed(found, &st.sources, t.refresh_every, t.refresh_most);
        }
        self.hosts[p as usize].pull = Some(st);
        self.cost.views += t0.elapsed();
    }

    pub(super) fn die(&mut self, q: u32) {
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
            self.conns[c as usize].pending = None;
            self.end_flow(c);
            self.release_slot(c);
        }
    }
}
