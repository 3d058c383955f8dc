//! The transfer engine's picker in a simulated swarm: one holder, up to
//! 1,000 pullers, the real `pick::next` and ledger on a virtual clock
//! (`mm_store::transfer::sim`). Prints a markdown table, one row per
//! scenario, then what each run did over time.
//! `cargo bench -p mm-store --bench swarm`.
//!
//! The scenarios are the (100 hosts; N hosts; N with 5% dying; N
//! with 5% slow; two sites of N/2 joined by a link of twice a host's cap),
//! but N is 100 and the file 1 GiB unless MM_SIM_HOSTS and MM_SIM_GIB say
//! otherwise. Each puller tracks the engine's default peer set (24 other
//! pullers, 8 complete holders, and whoever it is busy with: see
//! `transfer::peers`); MM_SIM_PEERS=K tracks K other pullers instead.
//!
//! MM_SIM_SEED changes the seed, MM_SIM_ONLY (scenario numbers, `1,3`) picks
//! scenarios, MM_SIM_THREADS runs that many at once (2), MM_SIM_PROGRESS
//! prints progress every 10 s, MM_SIM_HOLD_MS sets `Tuning::hold`, and
//! MM_SIM_PEER_SLOTS=K pullers' send slots (`Tuning::peer_send_slots`, not
//! modelled unless set), MM_SIM_SLOTS=K `Tuning::send_slots` (0: a holder sends all its answers
//! at once, as before), MM_SIM_TELL_GONE=0 keeps pullers from telling the
//! holder of pullers they could not reach (`Scenario::tell_gone`),
//! MM_SIM_SAY_SITE=0 keeps the two sites' hosts from saying their site (they do, as
//! `mm serve --site` makes them: `Scenario::say_site`), and
//! MM_SIM_MBIT every host's link each way (1000):
//! `MM_SIM_MBIT=200 MM_SIM_HOSTS=15 MM_SIM_GIB=0.25` is the files bench's
//! 15-puller B2 without TCP.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use mm_store::manifest::CHUNK_SIZE;
use mm_store::transfer::sim::{self, Cost, Report, Scenario};

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn chunks(gib: f64) -> usize {
    ((gib * (1u64 << 30) as f64) / CHUNK_SIZE as f64)
        .round()
        .max(1.0) as usize
}

fn ratio(t: Option<f64>, ideal: f64) -> String {
    t.map_or("not all".into(), |t| format!("{:.3}", t / ideal))
}

fn main() {
    let seed = env("MM_SIM_SEED").unwrap_or(1);
    let hosts = env("MM_SIM_HOSTS").unwrap_or(100);
    let gib: f64 = env("MM_SIM_GIB").unwrap_or(1.0);
    let only: Option<Vec<usize>> = std::env::var("MM_SIM_ONLY")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect());
    let threads = env("MM_SIM_THREADS").unwrap_or(2usize).max(1);
    let mbit: f64 = env("MM_SIM_MBIT").unwrap_or(1000.0);
    let cap = mbit * 1e6 / 8.0;

    let big = chunks(gib);
    let mut all = vec![
        Scenario::new(&format!("100 hosts, {gib} GiB"), 100, chunks(gib)),
        Scenario::new(&format!("{hosts} hosts, {gib} GiB"), hosts, big),
        Scenario {
            dying: 0.05,
            ..Scenario::new(&format!("{hosts} hosts, 5% dying"), hosts, big)
        },
        Scenario {
            slow: 0.05,
            ..Scenario::new(&format!("{hosts} hosts, 5% slow (1/10)"), hosts, big)
        },
        Scenario {
            sites: 2,
            site_link: Some(2.0 * cap),
            say_site: true,
            ..Scenario::new(&format!("2 sites of {}, 2x link", hosts / 2), hosts, big)
        },
    ];
    let progress = std::env::var_os("MM_SIM_PROGRESS").is_some();
    let peers: Option<usize> = env("MM_SIM_PEERS");
    for s in &mut all {
        s.seed = seed;
        s.cap = cap;
        s.progress = progress;
        if let Some(k) = peers {
            s.tuning.peers.pullers = k;
        }
        if let Some(k) = env::<usize>("MM_SIM_SLOTS") {
            s.tuning.send_slots = k;
        }
        if let Some(v) = env::<u8>("MM_SIM_TELL_GONE") {
            s.tell_gone = v != 0;
        }
        if let Some(v) = env::<u8>("MM_SIM_SAY_SITE") {
            s.say_site = v != 0;
        }
        if let Some(ms) = env::<u64>("MM_SIM_HOLD_MS") {
            s.tuning.hold = std::time::Duration::from_millis(ms);
        }
        // MM_SIM_PEER_SLOTS=K: pullers send K answers at a time, to the
        // furthest behind first, as the engine does (0: all at once).
        if let Some(k) = env::<usize>("MM_SIM_PEER_SLOTS") {
            s.peer_slots = k > 0;
            s.tuning.peer_send_slots = k;
        }
    }
    let picked: Vec<(usize, Scenario)> = all
        .into_iter()
        .enumerate()
        .map(|(i, s)| (i + 1, s))
        .filter(|(i, _)| only.as_ref().is_none_or(|o| o.contains(i)))
        // With 100 hosts the second is the first again.
        .filter(|(i, _)| *i != 2 || hosts != 100 || only.is_some())
        .collect();

    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<(usize, Report, Cost)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.min(picked.len()) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some((k, sc)) = picked.get(i) else { break };
                let (r, c) = sim::run(sc);
                eprintln!(
                    "{k}. {}: done in {:.1} s wall ({:.1} s picking, {} picks)",
                    sc.name,
                    c.wall.as_secs_f64(),
                    c.picking.as_secs_f64(),
                    r.stats.picks
                );
                out.lock().unwrap().push((*k, r, c));
            });
        }
    });
    let mut out = out.into_inner().unwrap();
    out.sort_by_key(|(k, _, _)| *k);

    let limits = mm_store::transfer::Tuning::default().peers;
    let policy = format!(
        "{} other pullers and {} complete holders, and those it is busy with",
        peers.unwrap_or(limits.pullers),
        limits.holders
    );
    println!(
        "seed {seed}; each puller tracks {policy}; times are over size / per-host cap \
         ({mbit} Mbit/s each way)\n"
    );
    println!(
        "| # | scenario | chunks | last live done | p50 | last fast | origin chunks / chunk | \
         wasted % | dead | wall s | picking s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (k, r, c) in &out {
        let wasted = r.wasted_chunks as f64 / (r.chunks as f64 * r.pullers as f64) * 100.0;
        println!(
            "| {k} | {} | {} | {} | {} | {} | {:.3} | {:.2} | {} | {:.1} | {:.1} |",
            r.name,
            r.chunks,
            ratio(r.last, r.ideal),
            ratio(r.p50, r.ideal),
            ratio(r.last_fast, r.ideal),
            r.origin_chunks as f64 / r.chunks as f64,
            wasted,
            r.dead,
            c.wall.as_secs_f64(),
            c.picking.as_secs_f64(),
        );
    }
    println!();
    for (k, r, c) in &out {
        detail(*k, r, c);
    }
}

/// What the swarm did over time and why the pullers stopped asking.
fn detail(k: usize, r: &Report, c: &Cost) {
    let s = &r.stats;
    // Tenths of the ideal time, as far as the run went.
    let cap = r.chunks as f64 * CHUNK_SIZE as f64 / 10.0;
    let tenths = ((s.end / r.ideal * 10.0).ceil() as usize).min(s.origin_bytes.len() - 1);
    let pct = |v: &[f64], over: f64| -> String {
        v[..tenths]
            .iter()
            .map(|&b| format!("{:.0}", b / over * 100.0))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "{k}. {} (ideal {:.1} s, simulated {:.1} s)",
        r.name, r.ideal, s.end
    );
    println!(
        "   done: 10% at {}, 50% at {}, 90% at {}, all at {} (x ideal); first chunk after {:.3} s on average",
        ratio(s.done_10, r.ideal),
        ratio(r.p50, r.ideal),
        ratio(s.done_90, r.ideal),
        ratio(r.last, r.ideal),
        s.first_chunk
    );
    println!(
        "   holder uplink busy, % per tenth of the ideal time: {}",
        pct(&s.origin_bytes, cap)
    );
    println!(
        "   pullers' downlinks busy, % per tenth: {}",
        pct(&s.down_bytes, cap * r.pullers as f64)
    );
    let across: f64 = s.across_bytes.iter().sum();
    if across > 0.0 {
        let size = r.chunks as f64 * CHUNK_SIZE as f64;
        let back: f64 = s.back_bytes.iter().sum();
        println!(
            "   between the sites: {:.2} copies of the file, {:.2} of them into the holder's site; % of a host's link per tenth: {}",
            across / size,
            back / size,
            pct(&s.across_bytes, cap)
        );
        let c = |k: usize| s.cross[k] as f64 / r.chunks as f64;
        println!(
            "   copies sent between sites by the origin {:.2}, by other complete holders {:.2}, by pullers {:.2}",
            c(0), c(1), c(2)
        );
    }
    println!(
        "   requests {} ({} to the holder, {} endgame); picks {}; stopped: full {} no room {} nothing to ask {}",
        s.asks, s.origin_asks, s.endgame_asks, s.picks, s.stop_full, s.stop_no_room, s.stop_nothing
    );
    println!(
        "   not yet {}, redirects {} ({} to a puller dead a while), promises expired {}, lost {}, failed {}; have polls {} ({:.1} MB/s per puller); \"who holds it\" {} times ({:.1} a puller, each asking every node)",
        s.not_yet,
        s.redirects,
        s.late_redirects,
        s.promises_expired,
        s.lost,
        s.failed,
        s.have_polls,
        s.poll_bytes as f64 / s.end.max(1e-9) / r.pullers as f64 / 1e6,
        s.refreshes,
        s.refreshes as f64 / r.pullers.max(1) as f64
    );
    println!(
        "   cost: {:.1} s wall, {:.1} s in pick::next ({:.1} us a call), {:.1} s applying views; {} events, trace {:016x}",
        c.wall.as_secs_f64(),
        c.picking.as_secs_f64(),
        c.picking.as_secs_f64() * 1e6 / s.picks.max(1) as f64,
        c.views.as_secs_f64(),
        s.events,
        r.trace
    );
}
