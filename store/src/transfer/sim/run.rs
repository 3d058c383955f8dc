//! The simulation's clock and its end: setting a scenario up, the event
//! loop, the meters, and the report.

use super::*;

impl<'a> Sim<'a> {
    pub(super) fn new(sc: &'a Scenario) -> Sim<'a> {
        let n = sc.chunks;
        let hosts_n = sc.pullers + 1;
        let mut rng = StdRng::seed_from_u64(sc.seed);
        // Roles by a shuffle, so no name is special: the first dying, then
        // slow, then sites in turn.
        let mut order: Vec<usize> = (1..hosts_n).collect();
        order.shuffle(&mut rng);
        let dying = (sc.pullers as f64 * sc.dying).round() as usize;
        let slow = (sc.pullers as f64 * sc.slow).round() as usize;
        let ideal = ns(Duration::from_secs_f64(sc.ideal()));
        let mut hosts: Vec<Host> = (0..hosts_n)
            .map(|_| Host {
                site: 0,
                slow: false,
                start: 0,
                die_at: None,
                died: None,
                done_at: None,
                first_at: None,
                ledger: None,
                store: Vec::new(),
                log: Vec::new(),
                pull: None,
                ticking: false,
                last_step: 0,
            })
            .collect();
        for (k, &h) in order.iter().enumerate() {
            if k < dying {
                let (a, b) = sc.die_between;
                let f = rng.gen_range(a..b.max(a + 1e-9));
                hosts[h].die_at = Some((ideal as f64 * f) as u64);
            } else if k < dying + slow {
                hosts[h].slow = true;
            }
        }
        let mut order: Vec<usize> = (1..hosts_n).collect();
        order.shuffle(&mut rng);
        for (k, &h) in order.iter().enumerate() {
            hosts[h].site = k % sc.sites.max(1);
        }
        let spread = ns(sc.start_spread);
        for h in hosts.iter_mut().skip(1) {
            h.start = if spread > 0 {
                rng.gen_range(0..spread)
            } else {
                0
            };
        }
        hosts[0].ledger = Some(Ledger::new(&[]));
        hosts[0].store = (0..n).map(content).collect();
        let names: Vec<String> = (0..hosts_n).map(|h| format!("h{h:05}")).collect();
        let mut links = Vec::new();
        for h in &hosts {
            let cap = if h.slow {
                sc.cap * sc.slow_factor
            } else {
                sc.cap
            };
            for _ in 0..2 {
                links.push(Link {
                    cap,
                    sum: 0.0,
                    flows: Vec::new(),
                });
            }
        }
        let sites = sc.sites.max(1);
        for _ in 0..sites * sites {
            links.push(Link {
                cap: sc.site_link.unwrap_or(f64::INFINITY),
                sum: 0.0,
                flows: Vec::new(),
            });
        }
        let mut sim = Sim {
            sc,
            t: &sc.tuning,
            n,
            base: Instant::now(),
            now: 0,
            seq: 0,
            events: BinaryHeap::new(),
            ends: Ends::default(),
            names,
            hosts,
            conns: Vec::new(),
            conn_of: HashMap::new(),
            out_conns: vec![Vec::new(); hosts_n],
            in_conns: vec![Vec::new(); hosts_n],
            links,
            scratch: Vec::new(),
            pulling: sc.pullers,
            any_dead: false,
            slots: sc.tuning.send_slots as u32,
            peer_slots: if sc.peer_slots {
                sc.tuning.peer_send_slots as u32
            } else {
                0
            },
            slots_used: vec![0; hosts_n],
            slot_wait: vec![VecDeque::new(); hosts_n],
            origin_chunks: 0,
            wasted: 0,
            corrupt: 0,
            total_rate: 0.0,
            stats: Stats {
                origin_bytes: vec![0.0; SLICES + 1],
                down_bytes: vec![0.0; SLICES + 1],
                across_bytes: vec![0.0; SLICES + 1],
                back_bytes: vec![0.0; SLICES + 1],
                useful_bytes: vec![0.0; SLICES + 1],
                ..Stats::default()
            },
            cost: Cost::default(),
            trace: 0xcbf2_9ce4_8422_2325,
        };
        for p in 1..hosts_n {
            let seed = rng.gen::<u64>();
            let site = sim.hosts[p].site;
            let far = match sc.say_site {
                true => (0..hosts_n)
                    .filter(|&q| sim.hosts[q].site != site)
                    .map(|q| sim.names[q].clone())
                    .collect(),
                false => HashSet::new(),
            };
            sim.hosts[p].pull = Some(Box::new(Pull {
                have: vec![0u8; n.div_ceil(8)],
                got: 0,
                writing: HashSet::new(),
                inflight: HashMap::new(),
                hints: Hints::default(),
                sources: BTreeMap::new(),
                rtts: HashMap::new(),
                far,
                rng: StdRng::seed_from_u64(seed),
                gone_turn: 0,
                last_have: 0,
                polling: vec![false; hosts_n],
                last_refresh: None,
                refreshing: false,
                pace: pace::RefreshPace::new(sc.tuning.refresh_every),
                retry_wait: sc.tuning.retry_first,
                retired: BTreeMap::new(),
                seed: rng.gen(),
            }));
            sim.hosts[p].store = vec![NONE; n];
            let start = sim.hosts[p].start;
            sim.push(start, Ev::Start(p as u32));
            if let Some(t) = sim.hosts[p].die_at {
                sim.push(t, Ev::Die(p as u32));
            }
        }
        sim
    }

    pub(super) fn push(&mut self, t: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Item {
            t,
            seq: self.seq,
            ev,
        });
    }

    pub(super) fn inst(&self, t: u64) -> Instant {
        self.base + Duration::from_nanos(t)
    }

    pub(super) fn lat(&self, a: u32, b: u32) -> u64 {
        if self.hosts[a as usize].site == self.hosts[b as usize].site {
            ns(self.sc.in_site)
        } else {
            ns(self.sc.across)
        }
    }

    pub(super) fn id(name: &str) -> u32 {
        name[1..].parse().expect("a simulated host's name")
    }

    pub(super) fn note(&mut self, x: u64) {
        self.trace = (self.trace ^ x).wrapping_mul(0x0100_0000_01b3);
    }

    /// Books what the holder's uplink, all downlinks and the links between
    /// sites carried from now until `to` (rates change only at events),
    /// slice by slice.
    pub(super) fn meter(&mut self, to: u64) {
        let width = (self.sc.ideal() / 10.0 * 1e9).max(1.0);
        let (origin, down) = (self.links[0].sum, self.total_rate);
        let sites = self.sc.sites.max(1);
        let (mut across, mut back) = (0.0, 0.0);
        for (k, l) in self.links[2 * self.hosts.len()..].iter().enumerate() {
            across += l.sum;
            // Link `k` goes from site k / sites to site k % sites.
            if k % sites == 0 {
                back += l.sum;
            }
        }
        let mut t = self.now;
        while t < to {
            let k = ((t as f64 / width) as usize).min(SLICES);
            let end = if k == SLICES {
                to
            } else {
                (((k + 1) as f64 * width).ceil() as u64).clamp(t + 1, to)
            };
            let dt = secs(end - t);
            self.stats.origin_bytes[k] += origin * dt;
            self.stats.down_bytes[k] += down * dt;
            self.stats.across_bytes[k] += across * dt;
            self.stats.back_bytes[k] += back * dt;
            t = end;
        }
    }

    /// A progress line, with the mean size of what the picker walks.
    pub(super) fn show(&self, t: u64) {
        let (mut k, mut sources, mut inflight, mut promised) = (0, 0, 0, 0);
        for st in self.hosts.iter().filter_map(|h| h.pull.as_ref()) {
            k += 1;
            sources += st.sources.len();
            inflight += st.inflight.len();
            promised += st.hints.promised.len();
        }
        let k = k.max(1);
        eprintln!(
            "{}: {:.3} s simulated, {} pullers left, {} picks, {:.0} s picking, {:.0} s wall; \
             per puller: {} sources, {} chunks in flight, {} promised",
            self.sc.name,
            secs(t),
            self.pulling,
            self.stats.picks,
            self.cost.picking.as_secs_f64(),
            self.base.elapsed().as_secs_f64(),
            sources / k,
            inflight / k,
            promised / k,
        );
    }

    pub(super) fn slice(&self) -> usize {
        let ideal = self.sc.ideal().max(1e-9);
        ((secs(self.now) / ideal * 10.0) as usize).min(SLICES)
    }

    pub(super) fn run(&mut self) {
        let limit = (self.sc.ideal() * self.sc.limit).max(60.0);
        let limit = (limit * 1e9) as u64;
        let mut shown = Duration::from_secs(10);
        while self.pulling > 0 {
            let ev_t = self.events.peek().map(|i| i.t);
            let end = self.ends.peek();
            let flow_first = match (ev_t, end) {
                (None, None) => break,
                (Some(t), Some((e, _))) => e < t,
                (None, Some(_)) => true,
                (Some(_), None) => false,
            };
            let t = if flow_first {
                end.expect("a flow").0
            } else {
                ev_t.expect("an event")
            };
            if t > limit {
                break;
            }
            self.meter(t);
            if self.sc.progress
                && self.stats.events.is_multiple_of(256)
                && self.base.elapsed() >= shown
            {
                shown += Duration::from_secs(10);
                self.show(t);
            }
            self.now = t;
            self.stats.events += 1;
            if flow_first {
                let c = end.expect("a flow").1;
                self.note(t ^ (u64::from(c) << 40));
                self.sent(c);
                continue;
            }
            let item = self.events.pop().expect("an event");
            self.note(t ^ item.seq.rotate_left(17));
            match item.ev {
                Ev::Start(p) => self.start(p),
                Ev::Arrive {
                    to,
                    from,
                    first,
                    count,
                    sent,
                    asker,
                } => self.arrive(
                    to,
                    from,
                    Req {
                        first,
                        count,
                        sent,
                        asker,
                    },
                ),
                Ev::Reply {
                    to,
                    from,
                    first,
                    count,
                    ans,
                    news,
                } => self.reply(to, from, first, count, ans, news),
                Ev::Written { p, from, idx, tag } => {
                    if let Some(mut st) = self.hosts[p as usize].pull.take() {
                        self.written(&mut st, p, from, idx as usize, tag);
                        self.hosts[p as usize].pull = Some(st);
                        self.step(p);
                    }
                }
                Ev::Have { p, sent, targets } => self.have(p, sent, targets),
                Ev::Refresh { p, sent } => self.refresh(p, sent),
                Ev::Tick(p) => self.tick(p),
                Ev::Die(p) => self.die(p),
                Ev::SlotDue { c, gen } => {
                    if self.conns[c as usize].has_slot && self.conns[c as usize].slot_gen == gen {
                        self.release_slot(c);
                    }
                }
            }
        }
        self.stats.end = secs(self.now);
    }
    // ---- the end ----

    pub(super) fn report(&self) -> Report {
        let sc = self.sc;
        let pullers = &self.hosts[1..];
        let live: Vec<&Host> = pullers.iter().filter(|h| h.died.is_none()).collect();
        let mut times: Vec<u64> = live.iter().filter_map(|h| h.done_at).collect();
        times.sort_unstable();
        let all = times.len() == live.len();
        let at = |f: f64| -> Option<f64> {
            let k = ((live.len() as f64 * f).ceil() as usize).max(1);
            times.get(k - 1).map(|&t| secs(t))
        };
        let fast: Vec<u64> = live
            .iter()
            .filter(|h| !h.slow)
            .filter_map(|h| h.done_at)
            .collect();
        let fast_all = fast.len() == live.iter().filter(|h| !h.slow).count();
        let bad_copies = live
            .iter()
            .filter(|h| h.done_at.is_some())
            .filter(|h| h.store.iter().enumerate().any(|(i, &c)| c != content(i)))
            .count();
        let firsts: Vec<u64> = pullers.iter().filter_map(|h| h.first_at).collect();
        let mut stats = self.stats.clone();
        stats.first_chunk =
            firsts.iter().map(|&t| secs(t)).sum::<f64>() / firsts.len().max(1) as f64;
        stats.done_10 = at(0.1);
        stats.done_90 = at(0.9);
        Report {
            name: sc.name.clone(),
            seed: sc.seed,
            pullers: sc.pullers,
            chunks: sc.chunks,
            ideal: sc.ideal(),
            live: live.len(),
            done: times.len(),
            dead: pullers.len() - live.len(),
            last: all.then(|| times.last().map(|&t| secs(t))).flatten(),
            last_fast: fast_all
                .then(|| fast.iter().max().map(|&t| secs(t)))
                .flatten(),
            p50: at(0.5),
            origin_chunks: self.origin_chunks,
            wasted_chunks: self.wasted,
            corrupt: self.corrupt,
            bad_copies,
            stats,
            trace: self.trace,
        }
    }
}
