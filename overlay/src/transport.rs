//! The transport stack: TCP, then (with a cluster key) the libp2p
//! private-network handshake, then Noise and yamux.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{upgrade::Version, Boxed};
use libp2p::core::Transport;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::{identity::Keypair, noise, tcp, yamux, PeerId};

pub(crate) fn build(key: &Keypair, psk: Option<PreSharedKey>) -> Boxed<(PeerId, StreamMuxerBox)> {
    let noise = noise::Config::new(key).expect("noise config from an ed25519 key");
    let mut yamux = yamux::Config::default();
    // Many parallel requests on one connection (file chunks) must not stall
    // behind the default stream cap; the request-response protocols bound
    // what each may use (see net/behaviour.rs).
    yamux.set_max_num_streams(256);
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    // Only one path exists when keyed: every TCP connection goes through the
    // pnet handshake, so no dial can skip the key.
    match psk {
        Some(psk) => tcp
            .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(Duration::from_secs(20))
            .boxed(),
        None => tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux)
            .timeout(Duration::from_secs(20))
            .boxed(),
    }
}

/// Parses a cluster key in the IPFS `swarm.key` format.
pub fn parse_psk(text: &str) -> crate::Result<PreSharedKey> {
    use libp2p::pnet::KeyParseError as K;
    text.trim_start().parse::<PreSharedKey>().map_err(|e| {
        let why = match e {
            K::InvalidKeyFile => "it does not have the three lines of one".to_string(),
            K::InvalidKeyType => "its first line is not /key/swarm/psk/1.0.0/".to_string(),
            K::InvalidKeyEncoding => "its second line is not /base16/".to_string(),
            K::InvalidKeyLength => "its key is not 64 hex digits long".to_string(),
            K::InvalidKeyChar(_) => "its key has a character that is not a hex digit".to_string(),
        };
        crate::Error::Config(format!(
            "not a cluster key: {why}; expected three lines: /key/swarm/psk/1.0.0/, /base16/, \
             and 64 hex digits (`mm keygen` makes one)"
        ))
    })
}

/// The cluster key's 32 bytes, for what else must be keyed by it (the
/// data channel). libp2p hands them out only in a key file's text.
pub fn psk_bytes(psk: &PreSharedKey) -> [u8; 32] {
    let text = psk.to_key_file();
    let hex = text.lines().nth(2).unwrap_or_default();
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = hex
            .get(i * 2..i * 2 + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .expect("a key file libp2p wrote holds 64 hex digits");
    }
    out
}

/// A fresh random cluster key, in the `swarm.key` format.
pub fn new_psk() -> String {
    PreSharedKey::new(rand::random()).to_key_file()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_bad_ones_explain() {
        let k = new_psk();
        assert!(k.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"));
        let a = parse_psk(&k).unwrap();
        assert_eq!(
            a.fingerprint().to_string(),
            parse_psk(&k).unwrap().fingerprint().to_string()
        );
        let bytes: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        assert_eq!(psk_bytes(&PreSharedKey::new(bytes)), bytes);
        let err = parse_psk("/key/swarm/psk/1.0.0/\n/base16/\nabc\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("its key is not 64 hex digits long"), "{err}");
        let err = parse_psk("").unwrap_err().to_string();
        assert!(err.contains("does not have the three lines"), "{err}");
        let bad = format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", "g".repeat(64));
        let err = parse_psk(&bad).unwrap_err().to_string();
        assert!(
            err.contains("not a hex digit") && !err.contains("Invalid"),
            "{err}"
        );
    }
}
