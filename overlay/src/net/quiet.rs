//! Failed inbound connections, logged without flooding the log.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// Rate-limits warnings about failed inbound connections: the first from a
/// remote IP, then one every ten minutes, with a count of the ones held back
/// (a node with another key retries every few seconds for as long as both
/// run).
#[derive(Default)]
pub(super) struct Quiet(HashMap<std::net::IpAddr, (Instant, u32)>);

impl Quiet {
    const EVERY: Duration = Duration::from_secs(600);

    /// `Some(held back since the last one)` if this one may be logged.
    pub(super) fn allow(&mut self, addr: &Multiaddr, now: Instant) -> Option<u32> {
        let ip = addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        })?;
        if self.0.len() > 4096 {
            self.0
                .retain(|_, (t, _)| now.duration_since(*t) < Self::EVERY);
        }
        match self.0.get_mut(&ip) {
            Some((t, held)) if now.duration_since(*t) < Self::EVERY => {
                *held += 1;
                None
            }
            _ => {
                let held = self.0.insert(ip, (now, 0)).map_or(0, |(_, h)| h);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_inbound_connections_are_logged_once_then_every_ten_minutes() {
        let mut q = Quiet::default();
        let a: Multiaddr = "/ip4/10.0.0.1/tcp/5000".parse().unwrap();
        let other_port: Multiaddr = "/ip4/10.0.0.1/tcp/5001".parse().unwrap();
        let b: Multiaddr = "/ip4/10.0.0.2/tcp/5000".parse().unwrap();
        let t = Instant::now();
        assert_eq!(q.allow(&a, t), Some(0));
        assert_eq!(q.allow(&b, t), Some(0), "another address is its own");
        // A node retrying every few seconds, from new ports, for 9 minutes.
        for i in 1..=180 {
            let at = t + Duration::from_secs(3 * i);
            assert_eq!(
                q.allow(&other_port, at),
                None,
                "logged again after {}s",
                3 * i
            );
        }
        assert_eq!(q.allow(&a, t + Duration::from_secs(601)), Some(180));
    }
}
