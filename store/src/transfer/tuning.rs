//! The engine's timing constants in one place, so that tests can shorten
//! them instead of waiting real seconds. The defaults are what a node runs
//! with; each says why it is what it is.

use std::time::Duration;

use super::peers::PeerLimits;

#[derive(Debug, Clone)]
pub struct Tuning {
    /// How often the have-bitfields of other pullers are polled: the sooner
    /// a puller sees what the others have, the more it takes from them
    /// instead of the holder.
    pub have_every: Duration,
    /// How often the holder list is refreshed while sources are usable, at
    /// first and whenever a refresh finds something new.
    pub refresh_every: Duration,
    /// How far apart refreshes that keep finding the same hosts are spaced
    /// at most (see `pace::RefreshPace`): each asks every node of the
    /// mesh.
    pub refresh_most: Duration,
    /// With no usable source: the first wait before asking the mesh again,
    /// doubling up to `retry_max`.
    pub retry_first: Duration,
    pub retry_max: Duration,
    /// Have-bits are recorded at least this often while chunks land (and
    /// every [`super::SYNC_EVERY`] chunks). A restart re-fetches at most
    /// what arrived in this window.
    pub persist_every: Duration,
    /// How long a puller waits for a chunk another puller was sent, before
    /// it asks the holder itself.
    pub promise: Duration,
    /// A holder that pointed us at a puller we do not track is not asked
    /// for that chunk again before this: long enough for the pullers we
    /// track to get it (a few hops of polls), short enough that a chunk
    /// none of them gets is not waited for long.
    pub hold: Duration,
    /// A complete holder sends at most this many answers at once (see
    /// `uplink.rs`): enough to keep the uplink busy, few enough that each
    /// answer is whole soon (the simulator: 8 left the uplink idle a tenth
    /// of the time at 300 hosts, 32 did not). 0: no limit.
    pub send_slots: usize,
    /// A puller sends at most this many answers to other pullers at once.
    /// Its uplink is shared by every other puller: sent to all at once,
    /// each stream crawls at a fraction of the link, and TCP cuts a slow
    /// stream into small packets (about a millisecond of its rate each),
    /// each of which costs both ends. The 15-puller bench sent 7 KiB
    /// packets with no limit, 13 KiB with 2, and used a fifth less CPU per
    /// GiB. With 1 (session 19, 6 rounds against 2, alternately): 14-15
    /// KiB packets against 10-12, 5.61 CPU-s per GiB against 6.21, and
    /// the last puller done at 1.237 of size/cap against 1.280; one
    /// stream at the uplink's whole rate is what the hold (see
    /// `slot_hold`) keeps busy, and two only split it. 0: no limit.
    pub peer_send_slots: usize,
    /// How long an answer waits for a send slot before it goes anyway.
    pub slot_patience: Duration,
    /// How long an answer holds its slot at most: one to a receiver that
    /// takes long (behind a thin link to another site, or a downlink other
    /// senders share) goes on without it, and does not keep the uplink from
    /// the others. An answer holds it for as long as it would take with
    /// the uplink shared evenly by the slots, at the rate the uplink is
    /// seen to send (see `uplink.rs`); this is the most, and the hold
    /// until that rate is known. Longer than 32 answers sharing a 1 Gbit/s
    /// uplink take (about 70 ms). The 15-puller bench, with a fixed 100 ms
    /// for pullers' 2 slots too: their uplinks 78-81% busy; with the
    /// measured hold (21 ms there), 85-86%.
    pub slot_hold: Duration,
    /// A puller that does not have a chunk yet is asked again after this.
    pub not_yet_wait: Duration,
    /// A source whose connection broke is asked again after this.
    pub lost_wait: Duration,
    /// A source whose request failed is asked again after this, doubling
    /// with each failure in a row (up to 64 times).
    pub fail_wait: Duration,
    /// Failures in a row after which a source is dropped.
    pub max_fails: u32,
    /// Bad chunks after which a source is dropped for the transfer.
    pub max_bad: u32,
    /// A holder forgets a file's pullers this long after the last one asked.
    pub ledger_idle: Duration,
    /// A puller that asked for a chunk this recently may still be pulling:
    /// other pullers can be pointed at it. The most: one that asked often
    /// and stopped counts for a second after its last ask, or four of its
    /// gaps between asks (`ledger::Ledger::still_asking`).
    pub puller_active: Duration,
    /// A chunk sent to one puller this recently is not sent to another.
    pub sent_fresh: Duration,
    /// The sources a puller tracks at most (see [`super::peers`]): a few
    /// dozen other pullers are enough to swarm at the links' speed (the
    /// simulator measured it at 1,000 hosts), and each costs a bitfield
    /// poll ten times a second and a place in every choice.
    pub peers: PeerLimits,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            have_every: Duration::from_millis(100),
            refresh_every: Duration::from_secs(2),
            refresh_most: Duration::from_secs(30),
            retry_first: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            persist_every: Duration::from_millis(250),
            promise: Duration::from_secs(3),
            hold: Duration::from_secs(2),
            send_slots: 32,
            peer_send_slots: 1,
            slot_patience: Duration::from_secs(2),
            slot_hold: Duration::from_millis(100),
            not_yet_wait: Duration::from_millis(150),
            lost_wait: Duration::from_millis(500),
            fail_wait: Duration::from_millis(500),
            max_fails: 5,
            max_bad: 3,
            ledger_idle: Duration::from_secs(60),
            puller_active: Duration::from_secs(5),
            sent_fresh: Duration::from_secs(10),
            peers: PeerLimits {
                pullers: 24,
                holders: 8,
            },
        }
    }
}
