//! Which sources a puller keeps track of. The mesh answers "who holds it"
//! with every holder and every other puller; in a swarm of a thousand, a
//! puller that tracked them all would poll a thousand bitfields ten times a
//! second and weigh a thousand sources for every request. Like a BitTorrent
//! client, each puller keeps a few: its own stable random choice of the
//! other pullers (so that, over the swarm, the choices form a random graph,
//! which stays connected), a few complete holders, and whoever it is busy
//! with. A pure function, shared by the pull loop and the simulator.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use super::pick::Hints;
use super::source::SourceStat;

/// How many sources of each kind a puller tracks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLimits {
    /// Other pullers (partial sources).
    pub pullers: usize,
    /// Complete holders. Pulling from every holder in parallel is what
    /// makes a pull from a few holders fast; past a few, another adds
    /// nothing but bookkeeping (late in a big swarm, most hosts are).
    pub holders: usize,
}

/// A host that answered a refresh with the file: whole or in part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offer {
    pub(crate) host: String,
    pub(crate) complete: bool,
}

/// `host`'s place in the order of the puller whose choice is `seed`: the
/// same for the whole transfer (a refresh does not reshuffle the peers),
/// different from one puller to the next.
pub(crate) fn rank(seed: u64, host: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in host.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    // FNV alone leaves names that differ in their last letter close
    // together; a finaliser spreads them.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The hosts to track after a refresh, among the live sources tracked now
/// and the hosts `offered` (which the caller has already cleared of
/// sources banned for bad data). For each kind, within its limit: first
/// the sources a request or a promised chunk waits on (always, even past
/// the limit: their answers are due), then those tracked now (a good peer
/// is not swapped for a new one), then the new, each group in the
/// puller's own order. A source that died or was dropped leaves a place
/// that the next refresh fills.
pub(crate) fn choose(
    seed: u64,
    sources: &BTreeMap<String, SourceStat>,
    hints: &Hints,
    offered: &[Offer],
    limits: PeerLimits,
    rtts: &HashMap<String, Duration>,
    said_far: &HashSet<String>,
) -> HashSet<String> {
    let mut far = far_hosts(rtts);
    far.extend(said_far.iter().map(String::as_str));
    let promised: HashSet<&str> = hints.promised.values().map(|(h, _)| h.as_str()).collect();
    // (kind is complete, group, at another site, rank, host): a complete
    // holder that says it is at another site comes after those at this
    // one (with one of those the puller keeps to its site). Not a puller:
    // a site with no complete holder yet takes the file across through
    // the other site's pullers it tracks, at most a quarter of them.
    let mut all: Vec<(bool, u8, bool, u64, &str)> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for o in offered {
        if !seen.insert(o.host.as_str()) {
            continue;
        }
        let group = match sources.get(&o.host) {
            Some(s) if !s.dropped => {
                if s.inflight > 0 || promised.contains(o.host.as_str()) {
                    0
                } else {
                    1
                }
            }
            _ => 2,
        };
        let away = o.complete && said_far.contains(&o.host);
        all.push((o.complete, group, away, rank(seed, &o.host), &o.host));
    }
    // Tracked sources that did not answer this time keep their places: a
    // busy host may be slow to answer, and is benched if it fails. Not one
    // that also failed us, or broke the connection, since its last chunk:
    // most likely it is gone (dead, or out of the mesh), and its last
    // bitfield would go on drawing requests that time out, in place of a
    // live peer.
    for (h, s) in sources {
        if s.dropped || !seen.insert(h.as_str()) {
            continue;
        }
        if s.inflight == 0 && s.broken() {
            continue;
        }
        let group = if s.inflight > 0 || promised.contains(h.as_str()) {
            0
        } else {
            1
        };
        let away = s.complete && said_far.contains(h);
        all.push((s.complete, group, away, rank(seed, h), h));
    }
    all.sort_unstable_by_key(|&(c, g, a, r, _)| (c, g, a, r));
    let mut keep = HashSet::new();
    let (mut pullers, mut holders, mut far_pullers) = (0, 0, 0);
    for (complete, group, _, _, h) in all {
        let (n, most) = if complete {
            (&mut holders, limits.holders)
        } else {
            (&mut pullers, limits.pullers)
        };
        if group != 0 && *n >= most {
            continue;
        }
        // A far puller past its share goes even with requests in hand
        // (their answers still count, see `stat`): it is asked as often as
        // any, and every chunk it sends crosses the thin link. Not one a
        // promised chunk is due from.
        if !complete && far.contains(h) && !promised.contains(h) {
            if far_pullers >= (limits.pullers / FAR_SHARE).max(1) {
                continue;
            }
            far_pullers += 1;
        }
        *n += 1;
        keep.insert(h.to_string());
    }
    keep
}

/// At most one in this many of the pullers tracked is far (see
/// [`far_hosts`]), and at least one: enough to carry the file across a
/// thin link to a site, not so many that most of each puller's chunks
/// cross it.
const FAR_SHARE: usize = 4;

/// A round trip this long or longer is never near, whatever the others.
const FAR_FLOOR: Duration = Duration::from_millis(2);

/// The hosts measured to be far: at another site, behind a thin link, as
/// their round trip says (more than 4 times the nearest's, and more than
/// [`FAR_FLOOR`]: on one LAN every round trip is well under it, and the
/// nearest one's noise does not count).
fn far_hosts(rtts: &HashMap<String, Duration>) -> HashSet<&str> {
    let Some(nearest) = rtts.values().min().copied() else {
        return HashSet::new();
    };
    let limit = FAR_FLOOR.max(4 * nearest);
    rtts.iter()
        .filter(|(_, r)| **r > limit)
        .map(|(h, _)| h.as_str())
        .collect()
}

/// `host`'s record if it has one, tracked or retired. An answer from a
/// source retired with requests in hand (a far puller past its share, see
/// [`choose`]) must still take them off its count: else, kept again at a
/// later refresh, it comes back with requests it will never answer
/// counted against its room (a source allowed one in flight is never
/// asked again), and shows as stalled.
pub(crate) fn record<'a>(
    sources: &'a mut BTreeMap<String, SourceStat>,
    retired: &'a mut BTreeMap<String, SourceStat>,
    host: &str,
) -> Option<&'a mut SourceStat> {
    if sources.contains_key(host) {
        sources.get_mut(host)
    } else {
        retired.get_mut(host)
    }
}

/// `host`'s record, tracked or retired: a chunk from a source retired
/// meanwhile still counts for it, and so does a bad one.
pub(crate) fn stat<'a>(
    sources: &'a mut BTreeMap<String, SourceStat>,
    retired: &'a mut BTreeMap<String, SourceStat>,
    host: &str,
) -> &'a mut SourceStat {
    if !sources.contains_key(host) {
        if let Some(s) = retired.get_mut(host) {
            return s;
        }
    }
    sources.entry(host.to_string()).or_default()
}

/// Tracks `host` (again, if it was retired), as when a holder points the
/// puller at it.
pub(crate) fn track<'a>(
    sources: &'a mut BTreeMap<String, SourceStat>,
    retired: &mut BTreeMap<String, SourceStat>,
    host: &str,
) -> &'a mut SourceStat {
    if let Some(s) = retired.remove(host) {
        sources.insert(host.to_string(), s);
    }
    sources.entry(host.to_string()).or_default()
}

/// `host` asked this node for chunks or have-bits of the file: it pulls the
/// file too. Tracked from now on (its bitfield comes with the next poll)
/// if it is new and there is room for another puller. Without this, a
/// puller heard of the others only from refreshes and redirects: the
/// first refresh, at the start, finds only the pullers that had started
/// before it, and the next comes `Tuning::refresh_every` later; in a
/// 15-puller bench, a puller's first chunks from the holder were asked of
/// it by one other puller in its first 1.5 s while the rest waited for them
/// elsewhere. A host tracked or retired before is left to the refreshes'
/// choice ([`choose`]). Whether it was tracked.
pub(crate) fn asked_by(
    sources: &mut BTreeMap<String, SourceStat>,
    retired: &BTreeMap<String, SourceStat>,
    host: &str,
    limits: PeerLimits,
) -> bool {
    if sources.contains_key(host) || retired.contains_key(host) || !room_for_puller(sources, limits)
    {
        return false;
    }
    sources.insert(host.to_string(), SourceStat::default());
    true
}

/// The pullers to tell source `to` of with a request, if it is a complete
/// holder: those tracked that could not be reached since their last chunk,
/// at most [`super::MAX_GONE`]; when there are more, in turn, from `turn`
/// on (which each list that names some moves on). A holder points
/// askers at the puller it sent a chunk to for as long as that puller
/// keeps asking it (`Tuning::puller_active`); one that died would be
/// pointed at for that long, and every asker sent there would wait on it.
/// Told again with every request while it stays unreached: a holder
/// forgets only a puller that has not asked it for a while itself (see
/// `Ledger::told_gone`).
pub(crate) fn gone_for(
    sources: &BTreeMap<String, SourceStat>,
    to: &str,
    turn: &mut u64,
) -> Vec<String> {
    if !sources.get(to).is_some_and(|s| s.complete) {
        return Vec::new();
    }
    let broken: Vec<&String> = sources
        .iter()
        .filter(|(_, s)| !s.complete && s.broken())
        .map(|(h, _)| h)
        .collect();
    let n = broken.len();
    let from = if n > super::MAX_GONE {
        (*turn % n as u64) as usize
    } else {
        0
    };
    if n > 0 {
        *turn += super::MAX_GONE as u64;
    }
    (0..n.min(super::MAX_GONE))
        .map(|k| broken[(from + k) % n].clone())
        .collect()
}

/// Whether another puller may be tracked: those tracked and not dropped
/// are fewer than the limit.
fn room_for_puller(sources: &BTreeMap<String, SourceStat>, limits: PeerLimits) -> bool {
    let pullers = sources
        .values()
        .filter(|s| !s.complete && !s.dropped)
        .count();
    pullers < limits.pullers
}

/// Holder `from` pointed us at `to` for chunk `idx`. While there is room
/// for another puller, `to` is tracked from now on (its bitfield polled, at
/// least until the chunk is here), and the chunk is its to give for a
/// while, not a complete holder's. Past the limit it is not tracked: at the
/// end of a big swarm every chunk a puller lacks is pointed at another
/// puller, and it would track hundreds. Then the chunk is left to the
/// pullers tracked already, which hear of it soon, and `from` is not asked
/// for it again before `hold` is over.
#[allow(clippy::too_many_arguments)]
pub(crate) fn redirected(
    sources: &mut BTreeMap<String, SourceStat>,
    retired: &mut BTreeMap<String, SourceStat>,
    hints: &mut Hints,
    from: &str,
    to: String,
    idx: usize,
    now: std::time::Instant,
    limits: PeerLimits,
    hold: std::time::Duration,
) {
    if !sources.contains_key(&to) && !room_for_puller(sources, limits) {
        stat(sources, retired, from).held.insert(idx, now + hold);
        return;
    }
    if !track(sources, retired, &to).dropped {
        hints.promised.insert(idx, (to, now));
    }
}

/// Applies one refresh's `offered` hosts (each with its have-bits, empty
/// for a complete holder): tracks those [`choose`] keeps, with their
/// progress, re-admitting those that had been dropped or retired unless
/// they sent bad data `max_bad` times, and retires the rest.
#[allow(clippy::too_many_arguments)]
pub(crate) fn refresh(
    seed: u64,
    sources: &mut BTreeMap<String, SourceStat>,
    retired: &mut BTreeMap<String, SourceStat>,
    hints: &Hints,
    offered: Vec<(Offer, Vec<u8>)>,
    limits: PeerLimits,
    max_bad: u32,
    rtts: &HashMap<String, Duration>,
    sites: super::sites::Sites,
) {
    let banned = |s: Option<&SourceStat>| s.is_some_and(|s| s.bad >= max_bad);
    let offered: Vec<(Offer, Vec<u8>)> = offered
        .into_iter()
        .filter(|(o, _)| !banned(sources.get(&o.host)) && !banned(retired.get(&o.host)))
        .collect();
    let offers: Vec<Offer> = offered.iter().map(|(o, _)| o.clone()).collect();
    let keep = choose(seed, sources, hints, &offers, limits, rtts, sites.far);
    for (o, have) in offered {
        if !keep.contains(&o.host) {
            continue;
        }
        let s = track(sources, retired, &o.host);
        s.complete = o.complete;
        s.have = have;
        // It answered: whatever broke before, it is there now.
        s.lost = 0;
        if s.dropped {
            s.dropped = false;
            s.fails = 0;
            s.benched_until = None;
        }
    }
    let gone: Vec<String> = sources
        .keys()
        .filter(|h| !keep.contains(*h))
        .cloned()
        .collect();
    for h in gone {
        if let Some(s) = sources.remove(&h) {
            retired.insert(h, s);
        }
    }
    super::sites::forget_far_bits(sources, sites.far, sites.now);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::sites::Sites;
    use std::time::Instant;

    const LIMITS: PeerLimits = PeerLimits {
        pullers: 3,
        holders: 2,
    };

    fn offers(names: &[&str], complete: bool) -> Vec<Offer> {
        names
            .iter()
            .map(|h| Offer {
                host: h.to_string(),
                complete,
            })
            .collect()
    }

    static NO_FAR: std::sync::LazyLock<HashSet<String>> = std::sync::LazyLock::new(HashSet::new);

    /// No site said anywhere.
    fn no_sites() -> Sites<'static> {
        Sites {
            far: &NO_FAR,
            now: std::time::Instant::now(),
        }
    }

    /// [`choose`] with the usual limits, no round trips and no sites.
    fn choose_plain(
        seed: u64,
        sources: &BTreeMap<String, SourceStat>,
        hints: &Hints,
        offered: &[Offer],
    ) -> HashSet<String> {
        choose(
            seed,
            sources,
            hints,
            offered,
            LIMITS,
            &HashMap::new(),
            &HashSet::new(),
        )
    }

    /// A first choice: nothing tracked, nothing promised, no round trips.
    fn fresh(seed: u64, offered: &[Offer]) -> HashSet<String> {
        choose_plain(seed, &BTreeMap::new(), &Hints::default(), offered)
    }

    fn many(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i}")).collect()
    }

    #[test]
    fn a_puller_keeps_a_few_of_many_pullers_and_a_few_holders() {
        let names = many(100);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut offered = offers(&refs, false);
        offered.extend(offers(&["h1", "h2", "h3"], true));
        let keep = fresh(7, &offered);
        let holders = keep.iter().filter(|h| h.starts_with('h')).count();
        assert_eq!((keep.len() - holders, holders), (3, 2), "{keep:?}");
        // The same puller chooses the same again; another chooses others.
        let again = fresh(7, &offered);
        assert_eq!(keep, again);
        let other = fresh(8, &offered);
        assert_ne!(keep, other);
    }

    #[test]
    fn tracked_peers_stay_and_a_dead_ones_place_is_filled() {
        let names = many(50);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let offered = offers(&refs, false);
        let hints = Hints::default();
        let first = choose_plain(1, &BTreeMap::new(), &hints, &offered);
        let mut sources: BTreeMap<String, SourceStat> = first
            .iter()
            .map(|h| (h.clone(), SourceStat::default()))
            .collect();
        // Pullers that were not tracked and rank ahead do not displace the
        // tracked ones: seed 2 would choose others from scratch.
        let kept = choose_plain(2, &sources, &hints, &offered);
        assert_eq!(kept, first);
        // One dies: dropped, and silent since, it gives up its place to a
        // new one.
        let dead = first.iter().next().unwrap().clone();
        sources.get_mut(&dead).unwrap().dropped = true;
        let alive: Vec<Offer> = offered.into_iter().filter(|o| o.host != dead).collect();
        let after = choose_plain(2, &sources, &hints, &alive);
        assert_eq!(after.len(), 3);
        assert!(!after.contains(&dead));
        assert_eq!(after.intersection(&first).count(), 2);
    }

    #[test]
    fn a_source_with_requests_or_a_promise_is_kept_past_the_limit() {
        let names = many(10);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let offered = offers(&refs, false);
        let mut sources = BTreeMap::new();
        let mut hints = Hints::default();
        for (i, h) in names.iter().enumerate().take(5) {
            let mut s = SourceStat::default();
            if i % 2 == 0 {
                s.inflight = 1;
            } else {
                hints.promised.insert(i, (h.clone(), Instant::now()));
            }
            sources.insert(h.clone(), s);
        }
        let keep = choose_plain(3, &sources, &hints, &offered);
        let busy: HashSet<String> = names[..5].iter().cloned().collect();
        assert_eq!(keep, busy);
    }

    #[test]
    fn a_tracked_source_that_did_not_answer_keeps_its_place() {
        let mut sources = BTreeMap::new();
        sources.insert("quiet".to_string(), SourceStat::default());
        let keep = choose(
            4,
            &sources,
            &Hints::default(),
            &offers(&["a", "b", "c", "d"], false),
            LIMITS,
            &HashMap::new(),
            &HashSet::new(),
        );
        assert!(keep.contains("quiet"));
        assert_eq!(keep.len(), 3);
    }

    #[test]
    fn a_puller_that_asks_is_tracked_if_new_and_while_there_is_room() {
        let limits = PeerLimits {
            pullers: 2,
            holders: 1,
        };
        let mut sources = BTreeMap::new();
        let mut retired = BTreeMap::new();
        sources.insert(
            "holder".to_string(),
            SourceStat {
                complete: true,
                ..SourceStat::default()
            },
        );
        retired.insert("old".to_string(), SourceStat::default());
        assert!(asked_by(&mut sources, &retired, "a", limits));
        let a = &sources["a"];
        assert!(!a.complete && a.have.is_empty(), "a puller of unknown bits");
        assert!(!asked_by(&mut sources, &retired, "a", limits), "twice");
        assert!(
            !asked_by(&mut sources, &retired, "old", limits),
            "retired: the refreshes' choice"
        );
        assert!(asked_by(&mut sources, &retired, "b", limits));
        assert!(!asked_by(&mut sources, &retired, "c", limits), "no room");
        assert!(!sources.contains_key("c") && !sources.contains_key("old"));
        // A dropped puller's place counts as free (as for redirects).
        sources.get_mut("a").unwrap().dropped = true;
        assert!(asked_by(&mut sources, &retired, "c", limits));
    }

    #[test]
    fn a_redirect_tracks_its_puller_only_while_there_is_room() {
        let (mut sources, mut retired, mut hints) =
            (BTreeMap::new(), BTreeMap::new(), Hints::default());
        let complete = SourceStat {
            complete: true,
            ..SourceStat::default()
        };
        sources.insert("h".to_string(), complete);
        let now = Instant::now();
        let hold = std::time::Duration::from_secs(1);
        let mut point =
            |sources: &mut BTreeMap<String, SourceStat>, hints: &mut Hints, to: &str, idx| {
                redirected(
                    sources,
                    &mut retired,
                    hints,
                    "h",
                    to.into(),
                    idx,
                    now,
                    LIMITS,
                    hold,
                )
            };
        // Room for three pullers: each is tracked, and owes its chunk.
        for (i, to) in ["a", "b", "c"].iter().enumerate() {
            point(&mut sources, &mut hints, to, i);
            assert!(sources.contains_key(*to));
            assert_eq!(hints.promised.get(&i).map(|(h, _)| h.as_str()), Some(*to));
        }
        // A fourth is not: the holder is held back from that chunk instead.
        point(&mut sources, &mut hints, "d", 3);
        assert!(!sources.contains_key("d") && !hints.promised.contains_key(&3));
        assert_eq!(sources["h"].held.get(&3), Some(&(now + hold)));
        // A tracked one still owes what it is pointed at.
        point(&mut sources, &mut hints, "a", 4);
        assert_eq!(hints.promised.get(&4).map(|(h, _)| h.as_str()), Some("a"));
        assert!(!sources["h"].holds_back(4));
    }

    #[test]
    fn few_of_the_pullers_tracked_are_far() {
        let names = many(8);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let offered = offers(&refs, false);
        let ms = Duration::from_millis;
        let mut rtts: HashMap<String, Duration> =
            names.iter().map(|h| (h.clone(), ms(40))).collect();
        rtts.insert("p6".into(), Duration::from_micros(400));
        rtts.insert("p7".into(), Duration::from_micros(400));
        let hints = Hints::default();
        let keep = choose(
            5,
            &BTreeMap::new(),
            &hints,
            &offered,
            LIMITS,
            &rtts,
            &HashSet::new(),
        );
        assert!(keep.contains("p6") && keep.contains("p7"), "{keep:?}");
        assert_eq!(keep.len(), 3, "one far: {keep:?}");
        // Far ones tracked with requests in hand go too, past the share;
        // one a promised chunk is due from stays.
        let mut sources = BTreeMap::new();
        for h in ["p0", "p1", "p2"] {
            let s = SourceStat {
                inflight: 1,
                ..SourceStat::default()
            };
            sources.insert(h.to_string(), s);
        }
        let mut hints = Hints::default();
        hints.promised.insert(9, ("p2".into(), Instant::now()));
        let keep = choose(
            5,
            &sources,
            &hints,
            &offered,
            LIMITS,
            &rtts,
            &HashSet::new(),
        );
        let far: Vec<&String> = keep.iter().filter(|h| rtts[*h] == ms(40)).collect();
        assert_eq!(far.len(), 2, "{keep:?}");
        assert!(keep.contains("p2"));
        // On one LAN, nobody is far, however the round trips vary.
        let lan: HashMap<String, Duration> = names
            .iter()
            .enumerate()
            .map(|(i, h)| (h.clone(), Duration::from_micros(50 + 200 * i as u64)))
            .collect();
        assert_eq!(
            choose(
                5,
                &BTreeMap::new(),
                &Hints::default(),
                &offered,
                LIMITS,
                &lan,
                &HashSet::new(),
            )
            .len(),
            3
        );
        assert!(far_hosts(&lan).is_empty());
    }

    #[test]
    fn pullers_that_could_not_be_reached_are_told_a_holder_a_few_at_a_time() {
        let mut sources = BTreeMap::new();
        for h in ["holder", "ok", "p1", "p2", "p3", "p4", "p5"] {
            sources.insert(h.to_string(), SourceStat::default());
        }
        let holder = sources.get_mut("holder").unwrap();
        holder.complete = true;
        holder.fails = 1;
        for (i, h) in ["p1", "p2", "p3", "p4", "p5"].iter().enumerate() {
            let s = sources.get_mut(*h).unwrap();
            if i % 2 == 0 {
                s.lost = 1;
            } else {
                s.fails = 1;
            }
        }
        let mut turn = 0;
        assert!(
            gone_for(&sources, "p1", &mut turn).is_empty(),
            "only to a holder"
        );
        assert_eq!(turn, 0);
        assert_eq!(
            gone_for(&sources, "holder", &mut turn),
            ["p1", "p2", "p3", "p4"]
        );
        // More than a request says: each in turn.
        assert_eq!(
            gone_for(&sources, "holder", &mut turn),
            ["p5", "p1", "p2", "p3"]
        );
        assert_eq!(
            gone_for(&sources, "holder", &mut turn),
            ["p4", "p5", "p1", "p2"]
        );
        // A chunk from one: reached, not told of any more.
        let p2 = sources.get_mut("p2").unwrap();
        (p2.fails, p2.lost) = (0, 0);
        let mut turn = 0;
        assert_eq!(
            gone_for(&sources, "holder", &mut turn),
            ["p1", "p3", "p4", "p5"]
        );
    }

    #[test]
    fn a_silent_source_whose_connection_broke_gives_up_its_place() {
        let mut sources = BTreeMap::new();
        let mut hints = Hints::default();
        for h in ["lost", "failed", "busy"] {
            sources.insert(h.to_string(), SourceStat::default());
        }
        sources.get_mut("lost").unwrap().lost = 1;
        sources.get_mut("failed").unwrap().fails = 2;
        // Still asked for something: kept until that answers (or fails).
        let busy = sources.get_mut("busy").unwrap();
        busy.lost = 1;
        busy.inflight = 1;
        // A promise from a peer that is likely gone pins nothing.
        hints.promised.insert(0, ("lost".into(), Instant::now()));
        let answered = offers(&["a", "b", "c", "d"], false);
        let keep = choose_plain(4, &sources, &hints, &answered);
        assert!(
            !keep.contains("lost") && !keep.contains("failed"),
            "{keep:?}"
        );
        assert!(keep.contains("busy"));
        assert_eq!(keep.len(), 3);
        // Once it answers a refresh again, it is a peer like any other.
        let mut retired = BTreeMap::new();
        let back = offers(&["lost"], false);
        refresh(
            4,
            &mut sources,
            &mut retired,
            &hints,
            back.into_iter().map(|o| (o, vec![0u8])).collect(),
            LIMITS,
            3,
            &HashMap::new(),
            no_sites(),
        );
        assert_eq!(sources.get("lost").map(|s| s.lost), Some(0));
    }

    #[test]
    fn a_far_puller_retired_with_a_request_in_hand_comes_back_without_it() {
        let names = many(8);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let with_bits = |o: Offer| (o, vec![0u8; 1]);
        let offered = || offers(&refs, false).into_iter().map(with_bits).collect();
        let far: HashMap<String, Duration> = names
            .iter()
            .map(|h| (h.clone(), Duration::from_millis(40)))
            .chain([("p7".to_string(), Duration::from_micros(400))])
            .collect();
        // All far but p7, each asked for one chunk: past the far share, some
        // go with their requests in hand.
        let (mut sources, mut retired) = (BTreeMap::new(), BTreeMap::new());
        for h in &names {
            let s = SourceStat {
                inflight: 1,
                ..SourceStat::default()
            };
            sources.insert(h.clone(), s);
        }
        let hints = Hints::default();
        let apply = |sources: &mut BTreeMap<String, SourceStat>,
                     retired: &mut BTreeMap<String, SourceStat>,
                     rtts: &HashMap<String, Duration>| {
            refresh(
                5,
                sources,
                retired,
                &hints,
                offered(),
                LIMITS,
                3,
                rtts,
                no_sites(),
            );
        };
        apply(&mut sources, &mut retired, &far);
        let gone = retired.keys().next().expect("a far one retired").clone();
        assert_eq!(retired[&gone].inflight, 1);
        // Not tracked: the lookup the pull loop had found no record for
        // its answer.
        assert!(!sources.contains_key(&gone));
        // Its answer comes: it is taken off the retired record's count.
        let s = record(&mut sources, &mut retired, &gone).expect("its record");
        s.inflight -= 1;
        assert!(record(&mut sources, &mut retired, "nobody").is_none());
        // Near after all (a round trip measured again, say): tracked again
        // with the retired record, so with nothing in flight that would
        // never be answered.
        let near: HashMap<String, Duration> = names
            .iter()
            .map(|h| (h.clone(), Duration::from_micros(400)))
            .collect();
        for s in sources.values_mut() {
            s.inflight = 0;
        }
        apply(&mut sources, &mut retired, &near);
        let back = sources.get(&gone).or(retired.get(&gone)).unwrap();
        assert_eq!(back.inflight, 0);
    }
}
