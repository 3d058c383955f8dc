//! The overlay's timing constants in one place, so that tests can shorten
//! them instead of waiting real seconds. The defaults are what a node runs
//! with.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Tuning {
    /// How often a node announces itself. Announcements must be periodic:
    /// gossipsub drops what is published before subscriptions are exchanged.
    pub announce_every: Duration,
    /// A node silent for this long has left the mesh (several announcements
    /// missed, not one).
    pub expire_after: Duration,
    /// How long the reachable set must stay unchanged before islands are
    /// bridged: long enough for announcements to have spread.
    pub settle: Duration,
    /// How long a refused peer is left alone before its identity is
    /// checked again.
    pub refuse_for: Duration,
    /// A refused peer's connection is closed this long after, so that it
    /// too learns our identity and can log why.
    pub refuse_close_after: Duration,
    /// A connected peer must identify itself within this, or it is closed
    /// (and it is not answered until it has).
    pub identify_within: Duration,
    /// After `mesh hangup`, the peer is not dialled again for this long.
    pub hangup_hold: Duration,
    /// A failed dial is retried after 2 s, doubling, at most this.
    pub backoff_max: Duration,
    /// A `--peer` not reached is dialled again after 2 s, doubling, at
    /// most this.
    pub static_retry_max: Duration,
    /// A connection dialled only to carry direct requests (a data channel
    /// grant, say) is closed once it has carried none for this long, unless
    /// the node needs it to reach its degree.
    pub transient_idle: Duration,
    /// The degree policy runs this often.
    pub maintain_every: Duration,
    /// Deadlines of routed requests and due announcements are checked
    /// this often.
    pub tick: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            announce_every: Duration::from_secs(2),
            expire_after: Duration::from_secs(9),
            settle: Duration::from_secs(3),
            refuse_for: Duration::from_secs(60),
            refuse_close_after: Duration::from_secs(2),
            identify_within: Duration::from_secs(10),
            hangup_hold: Duration::from_secs(30),
            backoff_max: Duration::from_secs(60),
            static_retry_max: Duration::from_secs(30),
            transient_idle: Duration::from_secs(2),
            maintain_every: Duration::from_secs(1),
            tick: Duration::from_millis(250),
        }
    }
}
