//! Resuming after a stop: what is read back and verified is kept, the
//! rest fetched again, and a transfer that ended just before is not
//! resumed at all.

use std::sync::Arc;
use std::time::Duration;

use super::durable::Persisted;
use super::*;

/// A hub with node `h` holding `f`: the data and its manifest.
fn holder_of_f() -> (Arc<Hub>, TestNode, Vec<u8>, Manifest) {
    let hub = Hub::new();
    let h = node(&hub, "h");
    let data = file();
    h.put("f", &data);
    let m = h.local.manifest("f").unwrap().unwrap();
    (hub, h, data, m)
}

/// The files directory and metadata of a puller's base in `dir`.
fn puller_dir(dir: &tempfile::TempDir) -> (FilesDir, Meta) {
    let files = FilesDir::open(&dir.path().join("files")).unwrap();
    (files, Meta::open(&dir.path().join("meta.db")).unwrap())
}

/// `f` (version `m`) recorded as a transfer in progress with `have`, as
/// the engine records one, and on disk.
fn record_unfinished(meta: &Meta, m: &Manifest, have: Vec<u8>) {
    let p = Persisted {
        manifest: m.clone(),
        have: vec![0u8; N.div_ceil(8)],
    };
    meta.put("transfers", "f", &p).unwrap();
    meta.put("transfer-have", "f", &serde_bytes::ByteBuf::from(have))
        .unwrap();
    meta.flush().unwrap();
}

/// A partial file as a killed run left it: `marked` chunks recorded as
/// here, and the file as `mangle` leaves it.
async fn resume_from(marked: usize, mangle: impl FnOnce(&std::path::Path)) -> (TestNode, u64) {
    let (hub, _h, data, m) = holder_of_f();
    // The puller's directory, written as the engine would have.
    let dir = tempfile::tempdir().unwrap();
    {
        let (files, meta) = puller_dir(&dir);
        let before = Engine::with_tuning(
            Arc::new(Local::new(files, meta.clone())),
            hub.net("gone"),
            fast(),
        );
        let tmp = before.partial_path("f", &m);
        let mut part = data[..marked * CHUNK_SIZE as usize].to_vec();
        part.resize(data.len(), 0);
        std::fs::write(&tmp, &part).unwrap();
        mangle(&tmp);
        let mut have = vec![0u8; N.div_ceil(8)];
        for i in 0..marked {
            bits::set_bit(&mut have, i);
        }
        record_unfinished(&meta, &m, have);
    }
    let p = node_at(&hub, "p", dir);
    p.engine.resume();
    let done = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if p.read("f").is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "the resumed transfer did not finish");
    // The completion is recorded a moment after the rename.
    for _ in 0..500 {
        if p.engine.status(true).iter().any(|s| s.phase == "done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(p.read("f").unwrap(), data, "the resumed copy differs");
    let sent = hub.sent_to("h", "p");
    (p, sent)
}

/// Stopped between the move into place and the end of the record: the
/// file is whole under its name and no partial file is left. Nothing is
/// fetched again, no chunk "fails to verify", and the record goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_placed_just_before_a_stop_is_not_resumed() {
    let (hub, _h, data, m) = holder_of_f();
    let dir = tempfile::tempdir().unwrap();
    {
        let (files, meta) = puller_dir(&dir);
        std::fs::write(dir.path().join("files/f"), &data).unwrap();
        record_unfinished(&meta, &m, vec![0xffu8; N.div_ceil(8)]);
        drop(files);
    }
    let p = node_at(&hub, "p", dir);
    p.engine.resume();
    assert!(
        p.engine.status(true).is_empty(),
        "resumed: {:?}",
        p.engine.status(true)
    );
    assert!(p.engine.persisted().is_empty(), "the record stays");
    assert_eq!(p.read("f").unwrap(), data);
    assert_eq!(hub.sent_to("h", "p"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_keeps_what_verifies_and_fetches_only_the_rest() {
    let (p, sent) = resume_from(12, |_| {}).await;
    assert_eq!(p.ended("f").resumed, 12);
    assert_eq!(sent, (N - 12) as u64, "re-fetched more than was missing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_refetches_chunks_that_do_not_verify() {
    // Chunk 5 corrupted, the file cut after chunk 9: 5 and 10..12 are
    // recorded but not there.
    let (p, sent) = resume_from(12, |tmp| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(tmp).unwrap();
        f.write_all_at(b"XXXX", 5 * CHUNK_SIZE + 10).unwrap();
        f.set_len(10 * CHUNK_SIZE).unwrap();
    })
    .await;
    assert_eq!(p.ended("f").resumed, 9);
    assert_eq!(sent, (N - 9) as u64);
}

/// Counts the have-bits of the last record, and syncs for real.
#[derive(Default)]
struct LastRecord(std::sync::Mutex<usize>);

impl Disk for LastRecord {
    fn sync(&self, f: &std::fs::File) -> std::io::Result<()> {
        f.sync_data()
    }

    fn recording(&self, _name: &str, have: &[u8]) {
        *self.0.lock().unwrap() = super::bits::count_bits(have, have.len() * 8);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_recorded_when_no_chunk_comes_after_them() {
    let hub = Hub::new();
    let h = node(&hub, "h");
    let data = content(64 * CHUNK_SIZE as usize, 19);
    h.put("f", &data);
    let root = h.local.manifest("f").unwrap().unwrap().root;
    uplink(&hub, "h", 10);
    // A record at most every 300 ms: up to 30 chunks land in between.
    let rec = Arc::new(LastRecord::default());
    let tuning = Tuning {
        persist_every: Duration::from_millis(300),
        ..fast()
    };
    let p = node_tuned(&hub, "p", tempfile::tempdir().unwrap(), rec.clone(), tuning);
    let pulling = p.get_until("f", &root, 30).await;
    hub.set_faults(
        "h",
        Faults {
            hangs: true,
            ..Faults::default()
        },
    );
    // Requests already answered still land; then nothing does, and soon
    // after (a record's time and a loop tick) all are recorded. Before,
    // the last of them waited for a chunk that never came.
    let here = || {
        p.engine
            .status(false)
            .into_iter()
            .find(|s| s.name == "f")
            .map_or(0, |s| s.chunks_done)
    };
    let mut last = (here(), std::time::Instant::now());
    while last.1.elapsed() < Duration::from_millis(200) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if here() != last.0 {
            last = (here(), std::time::Instant::now());
        }
    }
    assert!(last.0 < 64, "the transfer did not stall");
    let t0 = std::time::Instant::now();
    while *rec.0.lock().unwrap() != here() && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *rec.0.lock().unwrap(),
        here(),
        "chunks here but not recorded"
    );
    pulling.abort();
}
