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

use snow::{Builder, HandshakeState};

use super::record::Sealer;

const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_SHA256";
/// A handshake message of this pattern, with its empty payload: an
/// ephemeral key and a tag.
pub(super) const MESSAGE: usize = 32 + 16;

fn builder(secret: &[u8; 32]) -> Result<Builder<'_>, snow::Error> {
    Builder::new(PATTERN.parse().expect("a valid Noise pattern")).psk(0, secret)
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
        let mut r = record(b"request");
        c_seal.seal(&mut r, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = rt.block_on(s_open.open(&mut &r[..], 100)).unwrap();
        assert_eq!(&got[..], b"request");
        let mut r = record(b"answer");
        s_seal.seal(&mut r, 0);
        let got = rt.block_on(c_open.open(&mut &r[..], 100)).unwrap();
        assert_eq!(&got[..], b"answer");
        // Two connections on one secret do not share keys.
        let (c2, hi2) = hello(&secret).unwrap();
        let (reply2, _, _) = answer(check(&secret, &hi2).unwrap()).unwrap();
        let (_, mut c2_open) = finish(c2, &reply2).unwrap();
        let mut r = record(b"answer");
        let (_, mut s_seal1, _) = {
            let (c, h) = hello(&secret).unwrap();
            let _ = c;
            answer(check(&secret, &h).unwrap()).unwrap()
        };
        s_seal1.seal(&mut r, 0);
        assert!(rt.block_on(c2_open.open(&mut &r[..], 100)).is_err());
    }
}
