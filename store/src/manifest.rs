//! Manifests: what a file is, chunk by chunk.
//!
//! A chunk's hash is the BLAKE3 chaining value of that chunk as a subtree of
//! the whole file's BLAKE3 tree (chunks are a power of two long, so each is a
//! complete subtree). Merging the chunk hashes gives the true whole-file
//! BLAKE3 hash, so a puller checks every chunk on arrival and the manifest's
//! whole-file hash against its chunk list, without reading the file again.
//! A file of one chunk (or none) has the whole-file hash as its chunk hash.

use std::fs::File;
use std::io::Read;

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode,
};
use serde::{Deserialize, Serialize};

/// 256 KiB: the unit that is hashed, verified, recorded as had, and passed
/// on by a puller. Small, so that a young swarm has pieces to trade soon
/// (with 1 MiB chunks, 7 pullers waited half a second for their first); a
/// request still moves up to [`MAX_RUN`] of them at once, so a fast pull
/// from one holder costs what 1 MiB chunks cost. See docs/benchmarks.md.
pub const CHUNK_SIZE: u64 = 256 << 10;
/// Consecutive chunks one request may ask for, answered in one record.
pub const MAX_RUN: usize = 4;

pub type Hash = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub size: u64,
    /// Permission bits (mode & 0o7777).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub chunk_size: u64,
    /// Every chunk's hash, 32 bytes each, concatenated.
    #[serde(with = "serde_bytes")]
    pub chunks: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub root: Vec<u8>,
}

pub fn hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

impl Manifest {
    pub fn chunk_count(&self) -> usize {
        self.chunks.len() / 32
    }

    pub fn chunk_hash(&self, i: usize) -> &[u8] {
        &self.chunks[i * 32..i * 32 + 32]
    }

    /// Byte offset and length of chunk `i`.
    pub fn chunk_range(&self, i: usize) -> (u64, u64) {
        let off = i as u64 * self.chunk_size;
        (off, self.chunk_size.min(self.size - off))
    }

    /// Byte offset and length of chunks `i..i + count` (clipped at the
    /// end of the file).
    pub fn run_range(&self, i: usize, count: usize) -> (u64, u64) {
        let off = i as u64 * self.chunk_size;
        let end = ((i + count) as u64 * self.chunk_size).min(self.size);
        (off, end.saturating_sub(off))
    }

    pub fn root_hex(&self) -> String {
        hex(&self.root)
    }

    pub fn verify_chunk(&self, i: usize, data: &[u8]) -> bool {
        i < self.chunk_count()
            && data.len() as u64 == self.chunk_range(i).1
            && chunk_hash(i, data, self.size, self.chunk_size)[..] == *self.chunk_hash(i)
    }

    /// Checks that the manifest is self-consistent: chunk count matches the
    /// size, and the chunk hashes merge to the whole-file hash.
    pub fn check(&self) -> crate::Result<()> {
        let cs = self.chunk_size;
        // Chunk indexes mean the same bytes on every node only with one
        // chunk size; the hash alone does not say which was used.
        if cs != CHUNK_SIZE {
            return Err(crate::Error::BadManifest(format!(
                "chunk size {cs}, not {CHUNK_SIZE}"
            )));
        }
        self.check_tree().map_err(crate::Error::BadManifest)
    }

    /// The size and hash consistency part of [`Self::check`], for any
    /// power-of-two chunk size.
    fn check_tree(&self) -> Result<(), String> {
        let cs = self.chunk_size;
        if cs < 1024 || !cs.is_power_of_two() {
            return Err(format!("bad chunk size {cs}"));
        }
        if !self.chunks.len().is_multiple_of(32) || self.root.len() != 32 {
            return Err("bad hash lengths".into());
        }
        if self.chunk_count() as u64 != self.size.div_ceil(cs) {
            return Err("chunk count does not match the size".into());
        }
        let hashes: Vec<Hash> = self
            .chunks
            .chunks_exact(32)
            .map(|c| c.try_into().expect("32 bytes"))
            .collect();
        if root_of(&hashes, self.size, cs)[..] != self.root[..] {
            return Err("chunk hashes do not match the file hash".into());
        }
        Ok(())
    }

    /// Hashes a file, reading it once. `meta` is the metadata the caller
    /// saw, so the manifest describes exactly that version.
    pub fn build(
        file: &File,
        meta: &std::fs::Metadata,
        chunk_size: u64,
    ) -> std::io::Result<Manifest> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let size = meta.len();
        let mut f = file;
        let mut hashes = Vec::with_capacity(size.div_ceil(chunk_size) as usize);
        let mut buf = vec![0u8; chunk_size as usize];
        let mut i = 0usize;
        let mut done = 0u64;
        while done < size {
            let want = chunk_size.min(size - done) as usize;
            f.read_exact(&mut buf[..want]).map_err(|e| {
                std::io::Error::new(e.kind(), format!("changed while hashing: {e}"))
            })?;
            hashes.push(chunk_hash(i, &buf[..want], size, chunk_size));
            done += want as u64;
            i += 1;
        }
        let root = root_of(&hashes, size, chunk_size);
        Ok(Manifest {
            size,
            mode: meta.permissions().mode() & 0o7777,
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            chunk_size,
            chunks: hashes.concat(),
            root: root.to_vec(),
        })
    }
}

/// The hash of chunk `i` of a file of `size` bytes.
pub fn chunk_hash(i: usize, data: &[u8], size: u64, chunk_size: u64) -> Hash {
    if size <= chunk_size {
        return *blake3::hash(data).as_bytes();
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(i as u64 * chunk_size);
    h.update(data);
    h.finalize_non_root()
}

fn root_of(hashes: &[Hash], size: u64, chunk_size: u64) -> Hash {
    match hashes.len() {
        0 => *blake3::hash(b"").as_bytes(),
        1 => hashes[0],
        _ => merge(hashes, size, chunk_size, true),
    }
}

fn merge(cvs: &[Hash], len: u64, cs: u64, root: bool) -> Hash {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left_len = left_subtree_len(len);
    let k = (left_len / cs) as usize;
    let l = merge(&cvs[..k], left_len, cs, false);
    let r = merge(&cvs[k..], len - left_len, cs, false);
    if root {
        *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes()
    } else {
        merge_subtrees_non_root(&l, &r, Mode::Hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Manifests from the wire, mangled: decoding and checking never panic,
    /// and no mangled one passes the check.
    #[test]
    fn mangled_manifests_are_refused() {
        use rand::{Rng, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, vec![5u8; 700_000]).unwrap();
        let m = Manifest::build(
            &File::open(&p).unwrap(),
            &std::fs::metadata(&p).unwrap(),
            CHUNK_SIZE,
        )
        .unwrap();
        let bytes = cbor4ii::serde::to_vec(Vec::new(), &m).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(6);
        for _ in 0..3000 {
            let mut b = bytes.clone();
            let i = rng.gen_range(0..b.len());
            b[i] ^= rng.gen_range(1..=255u8);
            if let Ok(x) = cbor4ii::serde::from_slice::<Manifest>(&b) {
                // (A size off by a few bytes within the last chunk keeps
                // the tree consistent; that chunk then never verifies.)
                if x.chunks != m.chunks || x.root != m.root {
                    assert!(x.check().is_err(), "a mangled manifest checks out");
                }
            }
        }
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn manifest_of(bytes: &[u8], cs: u64) -> Manifest {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, bytes).unwrap();
        Manifest::build(
            &File::open(&p).unwrap(),
            &std::fs::metadata(&p).unwrap(),
            cs,
        )
        .unwrap()
    }

    #[test]
    fn whole_file_hash_is_plain_blake3_for_every_shape() {
        for cs in [1024u64, 4096] {
            for n in [
                0,
                1,
                1023,
                1024,
                1025,
                4095,
                4096,
                4097,
                8192,
                3 * 4096 + 5,
                7 * 4096,
                9 * 4096 + 1,
            ] {
                let d = data(n);
                let m = manifest_of(&d, cs);
                assert_eq!(
                    m.root,
                    blake3::hash(&d).as_bytes().to_vec(),
                    "n={n} cs={cs}"
                );
                assert_eq!(m.chunk_count() as u64, (n as u64).div_ceil(cs));
                m.check_tree().unwrap();
                for i in 0..m.chunk_count() {
                    let (off, len) = m.chunk_range(i);
                    let chunk = &d[off as usize..(off + len) as usize];
                    assert!(m.verify_chunk(i, chunk), "n={n} chunk {i}");
                }
            }
        }
    }

    #[test]
    fn a_flipped_byte_or_a_forged_list_is_caught() {
        let d = data(5 * 1024 + 7);
        let m = manifest_of(&d, 1024);
        let mut bad = d[1024..2048].to_vec();
        bad[10] ^= 1;
        assert!(!m.verify_chunk(1, &bad));
        assert!(
            !m.verify_chunk(1, &d[1024..2047]),
            "a short chunk must fail"
        );
        assert!(!m.verify_chunk(99, &d[..1024]));
        let mut forged = m.clone();
        forged.chunks[40] ^= 1;
        assert!(forged.check_tree().is_err());
        let mut wrong_size = m.clone();
        wrong_size.size += 4096;
        assert!(wrong_size.check_tree().is_err());
        assert!(
            m.check().is_err(),
            "1 KiB chunks are not this build's chunk size"
        );
    }

    #[test]
    fn mode_and_mtime_are_recorded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, b"hi").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o751)).unwrap();
        let m = Manifest::build(
            &File::open(&p).unwrap(),
            &std::fs::metadata(&p).unwrap(),
            CHUNK_SIZE,
        )
        .unwrap();
        assert_eq!(m.mode, 0o751);
        assert!(m.mtime_ns > 0);
        assert_eq!(m.size, 2);
    }
}
