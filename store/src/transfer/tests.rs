//! The engine in one process, over the in-memory mesh ([`crate::mem`]):
//! several sources, a corrupt one, a failing one, a stalled one, resuming
//! from a partial file, and the holder's ledger.

use std::sync::Arc;
use std::time::Duration;

use super::durable::Persisted;
use super::*;
use crate::manifest::CHUNK_SIZE;
use crate::mem::{content, Faults, Hub};
use crate::{FilesDir, Local, Meta};

struct TestNode {
    name: String,
    _dir: tempfile::TempDir,
    local: Arc<Local>,
    engine: Arc<Engine>,
}

/// Short waits, so that tests take milliseconds where a node takes seconds.
fn fast() -> Tuning {
    Tuning {
        have_every: Duration::from_millis(20),
        refresh_every: Duration::from_millis(200),
        retry_first: Duration::from_millis(50),
        retry_max: Duration::from_millis(200),
        persist_every: Duration::from_millis(20),
        promise: Duration::from_millis(500),
        not_yet_wait: Duration::from_millis(20),
        lost_wait: Duration::from_millis(50),
        fail_wait: Duration::from_millis(5),
        max_fails: 3,
        ..Tuning::default()
    }
}

fn node_at(hub: &Arc<Hub>, name: &str, dir: tempfile::TempDir) -> TestNode {
    let files = FilesDir::open(&dir.path().join("files")).unwrap();
    let meta = open_meta(&dir.path().join("meta.db"));
    let local = Arc::new(Local::new(files, meta));
    let engine = Engine::with_tuning(local.clone(), hub.net(name), fast());
    hub.join(name, &engine);
    TestNode {
        name: name.to_string(),
        _dir: dir,
        local,
        engine,
    }
}

/// sled's flusher can hold the database's lock for a moment after the
/// last handle is dropped (a new process, as after a real restart, never
/// meets it): open again until it lets go.
fn open_meta(path: &std::path::Path) -> Meta {
    let start = std::time::Instant::now();
    loop {
        match Meta::open(path) {
            Ok(m) => return m,
            Err(e) if start.elapsed() > Duration::from_secs(5) => panic!("{e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn node(hub: &Arc<Hub>, name: &str) -> TestNode {
    node_at(hub, name, tempfile::tempdir().unwrap())
}

/// Each chunk `name` sends takes `ms` on its uplink: transfers last long
/// enough for every source to have its part.
fn uplink(hub: &Hub, name: &str, ms: u64) {
    hub.set_faults(
        name,
        Faults {
            per_chunk: Duration::from_millis(ms),
            ..Faults::default()
        },
    );
}

impl TestNode {
    fn put(&self, name: &str, data: &[u8]) {
        let p = self.local.files.root().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    fn read(&self, name: &str) -> Option<Vec<u8>> {
        std::fs::read(self.local.files.root().join(name)).ok()
    }

    /// `file get NAME wait`, bounded: a regression fails, never hangs.
    async fn get(&self, name: &str) -> Result<()> {
        let run = async {
            let pending = self.engine.get(name, &Select::default()).await?;
            self.engine.wait(pending).await
        };
        tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .unwrap_or_else(|_| panic!("{}: get {name} still running after 60 s", self.name))
    }

    /// The status row of the last transfer of `name` that ended.
    fn ended(&self, name: &str) -> Status {
        self.engine
            .status(true)
            .into_iter()
            .rfind(|s| s.name == name && !s.phase.starts_with("pulling"))
            .unwrap_or_else(|| panic!("{}: no ended transfer of {name}", self.name))
    }

    fn served_by(&self, name: &str, host: &str) -> SourceRow {
        self.ended(name)
            .sources
            .into_iter()
            .find(|s| s.host == host)
            .unwrap_or_else(|| panic!("{host} is no source of {name}"))
    }

    fn partial_files(&self) -> usize {
        std::fs::read_dir(self.local.files.partial_dir())
            .unwrap()
            .count()
    }
}

const N: usize = 32;

fn file() -> Vec<u8> {
    // Not a whole number of chunks: the last one is short.
    content(N * CHUNK_SIZE as usize - 1000, 7)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_holder_serves_and_the_copy_is_identical() {
    let hub = Hub::new();
    let holders: Vec<TestNode> = ["a", "b", "c"].iter().map(|n| node(&hub, n)).collect();
    let data = file();
    for h in &holders {
        h.put("img/disk.qcow2", &data);
        uplink(&hub, &h.name, 5);
    }
    let p = node(&hub, "p");
    p.get("img/disk.qcow2").await.unwrap();
    assert_eq!(p.read("img/disk.qcow2").unwrap(), data);
    let row = p.ended("img/disk.qcow2");
    assert_eq!(row.phase, "done");
    assert_eq!(row.sources.iter().map(|s| s.served).sum::<u64>(), N as u64);
    for h in ["a", "b", "c"] {
        assert!(
            p.served_by("img/disk.qcow2", h).served > 0,
            "{h} served nothing: {row:?}"
        );
    }
    assert_eq!(p.partial_files(), 0);
    // Already here: nothing to fetch.
    assert!(p
        .engine
        .get("img/disk.qcow2", &Select::default())
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_source_is_dropped_and_nothing_bad_is_written() {
    let hub = Hub::new();
    let (good, bad) = (node(&hub, "good"), node(&hub, "bad"));
    let data = file();
    good.put("f", &data);
    bad.put("f", &data);
    // Hashed while sound, then it serves flipped bytes under the same hash.
    bad.engine.held("f").unwrap();
    hub.set_faults(
        "bad",
        Faults {
            corrupt: true,
            ..Faults::default()
        },
    );
    uplink(&hub, "good", 10);
    let p = node(&hub, "p");
    p.get("f").await.unwrap();
    assert_eq!(p.read("f").unwrap(), data, "a bad chunk was written");
    let b = p.served_by("f", "bad");
    assert_eq!(b.served, 0, "{b:?}");
    assert!(b.bad >= 1 && b.dropped, "{b:?}");
    assert_eq!(p.served_by("f", "good").served, N as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_is_dropped_and_the_others_finish() {
    let hub = Hub::new();
    let (good, dead) = (node(&hub, "good"), node(&hub, "dead"));
    let data = file();
    good.put("f", &data);
    dead.put("f", &data);
    dead.engine.held("f").unwrap();
    hub.set_faults(
        "dead",
        Faults {
            failing: true,
            ..Faults::default()
        },
    );
    // Slow enough for the failing one to be tried a few times.
    uplink(&hub, "good", 10);
    let p = node(&hub, "p");
    p.get("f").await.unwrap();
    assert_eq!(p.read("f").unwrap(), data);
    let d = p.served_by("f", "dead");
    assert!(d.served == 0 && d.dropped, "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endgame_finishes_what_a_stalled_source_holds_back() {
    let hub = Hub::new();
    let (good, stuck) = (node(&hub, "good"), node(&hub, "stuck"));
    let data = file();
    good.put("f", &data);
    stuck.put("f", &data);
    // Found as a holder, but what is asked of it never comes back: only
    // asking again elsewhere ends the transfer.
    hub.set_faults(
        "stuck",
        Faults {
            hangs: true,
            ..Faults::default()
        },
    );
    let p = node(&hub, "p");
    p.get("f").await.unwrap();
    assert_eq!(p.read("f").unwrap(), data);
    assert_eq!(p.served_by("f", "stuck").served, 0);
}

/// A partial file as a killed run left it: `marked` chunks recorded as
/// here, and the file as `mangle` leaves it.
async fn resume_from(marked: usize, mangle: impl FnOnce(&std::path::Path)) -> (TestNode, u64) {
    let hub = Hub::new();
    let h = node(&hub, "h");
    let data = file();
    h.put("f", &data);
    let m = h.local.manifest("f").unwrap().unwrap();
    // The puller's directory, written as the engine would have.
    let dir = tempfile::tempdir().unwrap();
    {
        let files = FilesDir::open(&dir.path().join("files")).unwrap();
        let meta = Meta::open(&dir.path().join("meta.db")).unwrap();
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
        let p = Persisted {
            manifest: m.clone(),
            have: vec![0u8; N.div_ceil(8)],
        };
        meta.put("transfers", "f", &p).unwrap();
        meta.put("transfer-have", "f", &serde_bytes::ByteBuf::from(have))
            .unwrap();
        meta.flush().unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pullers_serve_each_other_and_the_holder_sends_each_chunk_about_once() {
    let hub = Hub::new();
    let h = node(&hub, "h");
    let data = content(64 * CHUNK_SIZE as usize, 3);
    h.put("f", &data);
    h.engine.held("f").unwrap();
    // The holder's uplink is what the pullers share: 4 ms a chunk.
    uplink(&hub, "h", 4);
    let pullers: Vec<TestNode> = ["p1", "p2", "p3"].iter().map(|n| node(&hub, n)).collect();
    let gets = pullers.iter().map(|p| p.get("f"));
    for r in futures::future::join_all(gets).await {
        r.unwrap();
    }
    for p in &pullers {
        assert_eq!(p.read("f").unwrap(), data, "{} differs", p.name);
        let from_others: u64 = p
            .ended("f")
            .sources
            .iter()
            .filter(|s| s.host != "h")
            .map(|s| s.served)
            .sum();
        assert!(from_others > 0, "{} took nothing from the others", p.name);
    }
    let sent = hub.sent("h");
    assert!(sent <= 64 + 4, "the holder sent {sent} chunks for 64");
}
