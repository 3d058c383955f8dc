//! The data channel's handshake: Noise `NNpsk0`, keyed by the secret the
//! grant carried. The client's first message proves it holds the secret
//! (its tag is made with it), so the server checks a connection before it
//! spends anything on it: the ticket is used up, a serving thread started
//! and an answer sent only once that message reads right. Fresh ephemeral
//! keys on both sides give each connection keys of its own; the record
//! layer (AES-256-GCM, `record.rs`) takes them from the handshake's split.
//!
//! On the wire: the client sends the ticket (16 bytes), then the message
//! (`[u16 BE length][message]`); the server answers with its message, the
//! same way, then the sealed acknowledgement record.
//!
//! A client that knows the server's static key from its announcement
//! (`keyed.rs`) needs no grant: it sends [`MARK`] where the ticket would
//! be, then a Noise `IKpsk2` first message (its own static key, and a
//! count that is never sent twice), then a MAC of all that keyed by the
//! cluster key and the server's static key. The server checks the MAC
//! first (a hash), then the message (two Diffie-Hellman operations), finds
//! the member the client's static key belongs to, and answers as above.
//! No ticket is ever [`MARK`]: the server never issues it.

use snow::{Builder, HandshakeState};

use super::keyed::Identity;
use super::record::Sealer;

const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";
/// A handshake message of this pattern, with its empty payload: an
/// ephemeral key and a tag.
pub(super) const MESSAGE: usize = 32 + 16;

fn builder(secret: &[u8; 32]) -> Result<Builder<'_>, snow::Error> {
    Builder::new(PATTERN.parse().expect("a valid Noise pattern")).psk(0, secret)
}

/// The keyed handshake: the client knows the server's static key; the
/// server learns the client's.
pub(super) const KEYED: &str = "Noise_IKpsk2_25519_ChaChaPoly_SHA256";
/// In place of a ticket: a keyed hello follows.
pub(super) const MARK: [u8; 16] = *b"mm keyed hello 1";
/// The keyed first message: an ephemeral key, the sealed static key, and
/// the sealed count.
pub(super) const KEYED_MESSAGE: usize = 32 + (32 + 16) + (8 + 16);
/// The MAC after a keyed hello: a keyed BLAKE3 hash, whose `==` takes
/// the same time wherever the bytes differ.
pub(super) const MAC: usize = 32;

fn mac(key: &[u8; 32], hello: &[u8]) -> blake3::Hash {
    blake3::keyed_hash(key, hello)
}

/// The client's keyed hello to the server whose static key is `server`,
/// all of it as it goes on the wire, and its half-done handshake.
pub(super) fn keyed_hello(
    me: &Identity,
    server: &[u8; 32],
) -> Result<(HandshakeState, Vec<u8>), snow::Error> {
    let mut hs = Builder::new(KEYED.parse().expect("a valid Noise pattern"))
        .local_private_key(me.private())?
        .remote_public_key(server)?
        .psk(2, me.psk())?
        .build_initiator()?;
    let mut msg = [0u8; KEYED_MESSAGE];
    let n = hs.write_message(&me.count().to_be_bytes(), &mut msg)?;
    let mut wire = MARK.to_vec();
    wire.extend_from_slice(&(n as u16).to_be_bytes());
    wire.extend_from_slice(&msg[..n]);
    let tag = mac(&me.mac_key(server), &wire);
    wire.extend_from_slice(tag.as_bytes());
    Ok((hs, wire))
}

/// What a keyed hello proved: the client's static key, and its count.
pub(super) struct Proven {
    pub(super) hs: HandshakeState,
    pub(super) key: [u8; 32],
    pub(super) count: u64,
}

/// The server: checks a keyed hello (`MARK`, length, message and MAC, as
/// read). Anyone without the cluster key and this server's static key is
/// refused on the MAC.
pub(super) fn keyed_check(me: &Identity, hello: &[u8]) -> Result<Proven, snow::Error> {
    let refused = || snow::Error::Decrypt;
    if hello.len() < MARK.len() + 2 + MAC {
        return Err(refused());
    }
    let (signed, tag) = hello.split_at(hello.len() - MAC);
    let tag: [u8; MAC] = tag.try_into().map_err(|_| refused())?;
    if mac(&me.mac_key(&me.public), signed) != blake3::Hash::from_bytes(tag) {
        return Err(refused());
    }
    let mut hs = Builder::new(KEYED.parse().expect("a valid Noise pattern"))
        .local_private_key(me.private())?
        .psk(2, me.psk())?
        .build_responder()?;
    let mut payload = [0u8; KEYED_MESSAGE];
    let n = hs.read_message(&signed[MARK.len() + 2..], &mut payload)?;
    let count: [u8; 8] = payload[..n].try_into().map_err(|_| refused())?;
    let key: [u8; 32] = hs
        .get_remote_static()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(refused)?;
    Ok(Proven {
        hs,
        key,
        count: u64::from_be_bytes(count),
    })
}

/// Both directions' record keys, from a finished handshake.
fn split(mut hs: HandshakeState, initiator: bool) -> (Sealer, Sealer) {
    let (i2r, r2i) = hs.dangerously_get_raw_split();
    let to_server = Sealer::new(&i2r, b"client to server");
    let to_client = Sealer::new(&r2i, b"server to client");
    // (sealer, opener) for the side that asks.
    if initiator {
        (to_server, to_client)
    } else {
        (to_client, to_server)
    }
}

/// The client's first message, and its half-done handshake.
pub(super) fn hello(secret: &[u8; 32]) -> Result<(HandshakeState, Vec<u8>), snow::Error> {
    let mut hs = builder(secret)?.build_initiator()?;
    let mut msg = vec![0u8; MESSAGE];
    let n = hs.write_message(&[], &mut msg)?;
    msg.truncate(n);
    Ok((hs, msg))
}

/// The client, with the server's answer: (sealer, opener).
pub(super) fn finish(
    mut hs: HandshakeState,
    reply: &[u8],
) -> Result<(Sealer, Sealer), snow::Error> {
    let mut payload = [0u8; MESSAGE];
    hs.read_message(reply, &mut payload)?;
    Ok(split(hs, true))
}

/// The server: checks the client's first message against the secret.
/// Fails, having spent nothing, unless the client holds it.
pub(super) fn check(secret: &[u8; 32], hello: &[u8]) -> Result<HandshakeState, snow::Error> {
    let mut hs = builder(secret)?.build_responder()?;
    let mut payload = [0u8; MESSAGE];
    hs.read_message(hello, &mut payload)?;
    Ok(hs)
}

/// The server's answer, and its (sealer, opener).
pub(super) fn answer(mut hs: HandshakeState) -> Result<(Vec<u8>, Sealer, Sealer), snow::Error> {
    let mut msg = vec![0u8; MESSAGE];
    let n = hs.write_message(&[], &mut msg)?;
    msg.truncate(n);
    let (sealer, opener) = split(hs, false);
    Ok((msg, sealer, opener))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::data::record::testing::record;

    /// Seals `what` with `seal` and opens it with `open`: whether it comes
    /// out whole.
    fn carries(seal: &mut Sealer, open: &mut Sealer, what: &[u8]) -> bool {
        let mut r = record(what);
        seal.seal(&mut r, 0);
        futures::executor::block_on(open.open(&mut &r[..], 100)).is_ok_and(|got| &got[..] == what)
    }

    #[test]
    fn a_keyed_hello_proves_the_clients_key_to_a_server_with_the_cluster_key() {
        let cluster = Some([1u8; 32]);
        let (client, server) = (Identity::new(cluster), Identity::new(cluster));
        let (hs, hi) = keyed_hello(&client, &server.public).unwrap();
        assert_eq!(hi.len(), MARK.len() + 2 + KEYED_MESSAGE + MAC);
        let p = keyed_check(&server, &hi).unwrap();
        assert_eq!(p.key, client.public, "the server learns who asks");
        // Each hello has a count of its own, higher than the last.
        let (_, hi2) = keyed_hello(&client, &server.public).unwrap();
        assert!(keyed_check(&server, &hi2).unwrap().count > p.count);
        let (reply, mut s_seal, mut s_open) = answer(p.hs).unwrap();
        let (mut c_seal, mut c_open) = finish(hs, &reply).unwrap();
        assert!(carries(&mut c_seal, &mut s_open, b"request"));
        assert!(carries(&mut s_seal, &mut c_open, b"answer"));
        // Another cluster key, or none: refused.
        for other in [Some([2u8; 32]), None] {
            let (_, hi) = keyed_hello(&Identity::new(other), &server.public).unwrap();
            assert!(keyed_check(&server, &hi).is_err());
        }
        // A hello meant for another server: refused.
        let (_, hi) = keyed_hello(&client, &Identity::new(cluster).public).unwrap();
        assert!(keyed_check(&server, &hi).is_err());
        // Cut short, or any byte changed: refused.
        assert!(keyed_check(&server, &hi2[..hi2.len() - 1]).is_err());
        for at in [0, 17, 30, 100, hi2.len() - 1] {
            let mut bent = hi2.clone();
            bent[at] ^= 0x40;
            assert!(keyed_check(&server, &bent).is_err(), "byte {at}");
        }
    }

    #[test]
    fn only_the_holder_of_the_secret_gets_through() {
        let secret = [7u8; 32];
        let (client, hi) = hello(&secret).unwrap();
        assert_eq!(hi.len(), MESSAGE);
        // The wrong secret: refused on the first message.
        assert!(check(&[8u8; 32], &hi).is_err());
        assert!(check(&secret, &[0u8; MESSAGE]).is_err(), "garbage");
        let server = check(&secret, &hi).unwrap();
        let (reply, mut s_seal, mut s_open) = answer(server).unwrap();
        let (mut c_seal, mut c_open) = finish(client, &reply).unwrap();
        // Each side opens what the other seals, in both directions.
        assert!(carries(&mut c_seal, &mut s_open, b"request"));
        assert!(carries(&mut s_seal, &mut c_open, b"answer"));
        // Two connections on one secret do not share keys.
        let (c2, hi2) = hello(&secret).unwrap();
        let (reply2, _, _) = answer(check(&secret, &hi2).unwrap()).unwrap();
        let (_, mut c2_open) = finish(c2, &reply2).unwrap();
        let (_, mut s_seal1, _) = {
            let (_, h) = hello(&secret).unwrap();
            answer(check(&secret, &h).unwrap()).unwrap()
        };
        assert!(!carries(&mut s_seal1, &mut c2_open, b"answer"));
    }
}
