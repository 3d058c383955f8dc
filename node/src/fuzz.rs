//! Random and mutated input into every decoder and parser of the node: the
//! messages between nodes, the control socket's requests, the data
//! channel's records and answers, the grammar and host lists. Never a
//! panic; the size limits always hold.

use rand::{Rng, SeedableRng};

use crate::cmd::{grammar, hosts, specs};
use crate::proto::{ChunkAnswer, ControlRequest, Request, Response};

fn junk(rng: &mut impl Rng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..max);
    (0..n).map(|_| rng.gen()).collect()
}

fn mutate(valid: &[u8], rng: &mut impl Rng) -> Vec<u8> {
    let mut m = valid.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..3) {
            0 if !m.is_empty() => {
                let i = rng.gen_range(0..m.len());
                m[i] = rng.gen();
            }
            1 => m.truncate(rng.gen_range(0..=m.len())),
            _ => {
                let i = rng.gen_range(0..=m.len());
                m.insert(i, rng.gen());
            }
        }
    }
    m
}

#[test]
fn messages_between_nodes() {
    use mm_overlay::wire::{decode, encode};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let valid = [
        encode(&Request::Command {
            argv: vec!["mesh".into(), "status".into()],
            namespace: Some("foo".into()),
        }),
        encode(&Request::Chunk {
            name: "img/a.qcow2".into(),
            root: vec![7; 32],
            index: 3,
            count: 4,
        }),
        encode(&vec![Response::table("a", &["x"], vec![vec!["1".into()]])]),
        encode(&ChunkAnswer::Err(mm_store::Miss::Redirect("h2".into()))),
    ];
    for v in &valid {
        for _ in 0..500 {
            let m = mutate(v, &mut rng);
            let _ = decode::<Request>(&m);
            let _ = decode::<Vec<Response>>(&m);
            let _ = decode::<ChunkAnswer>(&m);
            let _ = decode::<Vec<mm_store::Held>>(&m);
        }
    }
    for _ in 0..2000 {
        let m = junk(&mut rng, 200);
        let _ = decode::<Request>(&m);
        let _ = decode::<Vec<mm_store::Held>>(&m);
    }
}

#[test]
fn control_socket_requests() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    let valid = br#"{"argv":["file","get","x","wait"],"cwd":"/tmp"}"#;
    for _ in 0..3000 {
        let m = mutate(valid, &mut rng);
        let _ = serde_json::from_slice::<ControlRequest>(&m);
        let _ = serde_json::from_slice::<ControlRequest>(&junk(&mut rng, 100));
    }
}

#[test]
fn the_grammar_and_host_lists() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let words = [
        "mesh", "send", "all", "file", "get", "list", "mesh", "status", "wait", "from", "hash",
        "help", "host", "n[1-3]", "[", "]", "-", ",", "a,b", "x[01-99]", "", "degree", "9",
    ];
    for _ in 0..5000 {
        let n = rng.gen_range(0..8);
        let argv: Vec<String> = (0..n)
            .map(|_| words[rng.gen_range(0..words.len())].to_string())
            .collect();
        let _ = grammar::parse(specs(), &argv);
        let _ = grammar::help(specs(), &argv, rng.gen_range(0..120));
    }
    let pieces = [
        "a", "b", ",", "[", "]", "-", "0", "1", "9", "01", "99999", "x",
    ];
    for _ in 0..20000 {
        let n = rng.gen_range(0..12);
        let spec: String = (0..n)
            .map(|_| pieces[rng.gen_range(0..pieces.len())])
            .collect();
        if let Ok(hosts) = hosts::expand(&spec) {
            assert!(hosts.len() <= 65536, "{spec}: {} hosts", hosts.len());
        }
    }
}

#[test]
fn data_channel_records_and_answers() {
    crate::files::data::fuzz_records(&mut rand::rngs::StdRng::seed_from_u64(4));
}
