//! A cap on inbound connections still in their handshake, per remote IP.
//! Anyone who can reach the port can open one; without a cap, 1,100 silent
//! connections took every descriptor of a node (its control socket stopped
//! accepting, and `mesh status` took 17 s).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

/// Too many inbound connections from one address are in their handshake.
#[derive(Debug)]
pub(crate) struct TooManyFromIp(IpAddr);

impl std::fmt::Display for TooManyFromIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "too many connections from {} in their handshake", self.0)
    }
}

impl std::error::Error for TooManyFromIp {}

pub(crate) struct PerIp {
    max: usize,
    pending: HashMap<ConnectionId, IpAddr>,
    count: HashMap<IpAddr, usize>,
}

impl PerIp {
    pub(crate) fn new(max: usize) -> PerIp {
        PerIp {
            max,
            pending: HashMap::new(),
            count: HashMap::new(),
        }
    }

    fn done(&mut self, id: ConnectionId) {
        if let Some(ip) = self.pending.remove(&id) {
            if let Some(n) = self.count.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.count.remove(&ip);
                }
            }
        }
    }
}

fn ip_of(a: &Multiaddr) -> Option<IpAddr> {
    a.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for PerIp {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote) else {
            return Ok(());
        };
        let n = self.count.entry(ip).or_insert(0);
        if *n >= self.max {
            return Err(ConnectionDenied::new(TooManyFromIp(ip)));
        }
        *n += 1;
        self.pending.insert(id, ip);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.done(id);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        if let FromSwarm::ListenFailure(f) = event {
            self.done(f.connection_id);
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_from_one_address_are_capped_and_released() {
        let mut b = PerIp::new(2);
        let (local, a, other): (Multiaddr, Multiaddr, Multiaddr) = (
            "/ip4/10.0.0.1/tcp/9000".parse().unwrap(),
            "/ip4/10.0.0.2/tcp/5000".parse().unwrap(),
            "/ip4/10.0.0.3/tcp/5000".parse().unwrap(),
        );
        let ids: Vec<ConnectionId> = (0..4)
            .map(|_| ConnectionId::new_unchecked(rand::random()))
            .collect();
        assert!(b
            .handle_pending_inbound_connection(ids[0], &local, &a)
            .is_ok());
        assert!(b
            .handle_pending_inbound_connection(ids[1], &local, &a)
            .is_ok());
        assert!(b
            .handle_pending_inbound_connection(ids[2], &local, &a)
            .is_err());
        assert!(b
            .handle_pending_inbound_connection(ids[3], &local, &other)
            .is_ok());
        // One finishes its handshake: room for another.
        let _ = b.handle_established_inbound_connection(ids[0], PeerId::random(), &local, &a);
        assert!(b
            .handle_pending_inbound_connection(ids[2], &local, &a)
            .is_ok());
    }
}
