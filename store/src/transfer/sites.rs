//! Which sources a puller leaves alone when nodes say their site (`mm
//! serve --site`): pure, shared with `sim/`.

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use super::job::STALLED;
use super::source::SourceStat;

/// The nodes a puller knows to be at another site than its own
/// ([`super::Net::far`]), and the time, for [`super::peers::refresh`].
pub(crate) struct Sites<'a> {
    pub(crate) far: &'a HashSet<String>,
    pub(crate) now: Instant,
}

/// Whether a puller leaves the sources at other sites (`far`) alone: it
/// tracks a complete holder at its own site (or one that says none) that
/// serves it (not dropped, no request failed or connection broken since
/// its last chunk, no request left unanswered for [`STALLED`]: else a
/// holder that hangs would hold the whole transfer). Then it asks their
/// pullers only for the chunks a holder pointed it at them for (the loop
/// keeps no bitfield of theirs), and their complete holders not at all: a
/// chunk crosses between sites once, to a puller there that passes it on,
/// instead of once for each puller that wants it.
pub(crate) fn keeps_to_site(
    sources: &BTreeMap<String, SourceStat>,
    far: &HashSet<String>,
    now: Instant,
) -> bool {
    !far.is_empty()
        && sources.iter().any(|(h, s)| {
            s.complete
                && !s.dropped
                && !s.broken()
                && s.waiting_since.is_none_or(|t| now - t < STALLED)
                && !far.contains(h)
        })
}

/// Whether `host` is a source at another site that the puller leaves
/// alone now ([`keeps_to_site`]): its bitfield not polled, its news not
/// asked for nor heard.
pub(crate) fn leaves_alone(
    sources: &BTreeMap<String, SourceStat>,
    far: &HashSet<String>,
    host: &str,
    now: Instant,
) -> bool {
    far.contains(host) && keeps_to_site(sources, far, now)
}

/// Whether a holder's pointer to `to` is taken: not to a complete holder
/// at another site while [`keeps_to_site`] (a node that finished and still
/// asked its holder lately; that holder sends the chunk when asked again).
pub(crate) fn follows(
    sources: &BTreeMap<String, SourceStat>,
    far: &HashSet<String>,
    to: &str,
    now: Instant,
) -> bool {
    !(sources.get(to).is_some_and(|s| s.complete) && leaves_alone(sources, far, to, now))
}

/// While [`keeps_to_site`], what the pullers at other sites have is not
/// asked of them, so not kept either: their bitfields are emptied (and no
/// longer polled, nor updated from their news).
pub(crate) fn forget_far_bits(
    sources: &mut BTreeMap<String, SourceStat>,
    far: &HashSet<String>,
    now: Instant,
) {
    if !keeps_to_site(sources, far, now) {
        return;
    }
    for (h, s) in sources.iter_mut() {
        if !s.complete && far.contains(h) {
            s.have.fill(0);
        }
    }
}
