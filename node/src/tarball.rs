//! `tar:` words (issue 11): a tarball (`.tar`, `.tar.gz`, `.tgz`) unpacked
//! next to itself, once per content, into its single top-level directory.
//!
//! Everything in an archive is hostile until checked: an entry's path
//! must stay beneath the target (no `..`, no absolute path), a link must
//! point inside it, and only files, directories and links are made (no
//! device nodes, FIFOs, setuid bits). Entries are unpacked into a staging
//! directory beside the target, renamed into place only when the whole
//! archive unpacked: a failure leaves nothing under the final name.
//!
//! The reader is astral-tokio-tar, the maintained fork of tokio-tar (whose
//! last release mis-parses PAX headers, CVE-2025-62518).

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use futures::StreamExt;
use tokio::io::{AsyncBufRead, AsyncRead, BufReader};

use crate::{Error, Result};

/// Most entries one archive may hold: a bound on the work a tarball asks.
const MAX_ENTRIES: usize = 1_000_000;

fn bad(tarball: &Path, why: impl std::fmt::Display) -> Error {
    Error::Refused(format!("{}: {why}", tarball.display()))
}

/// The BLAKE3 hash of the tarball's bytes: what "already unpacked" is
/// keyed on.
fn hash(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().to_hex().to_string())
}

/// Unpacks `tarball` next to itself, unless that was done for this
/// content already, and returns the path of its single top-level
/// directory.
pub(crate) async fn unpack(tarball: &Path) -> Result<PathBuf> {
    let dir = tarball
        .parent()
        .ok_or_else(|| bad(tarball, "has no directory"))?
        .to_path_buf();
    let stem = tarball
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| bad(tarball, "is not a UTF-8 name"))?
        .to_string();
    // `.NAME.mm-tar`: which content was unpacked, into what, and what it
    // unpacked.
    let marker = dir.join(mm_store::files::tar_marker(&stem));
    let (t, d, m) = (tarball.to_path_buf(), dir.clone(), marker.clone());
    let (sum, done) = tokio::task::spawn_blocking(move || -> Result<_> {
        let sum = hash(&t)?;
        let done = unpacked(&d, &m, &sum);
        Ok((sum, done))
    })
    .await??;
    if let Some(done) = done {
        return Ok(done);
    }
    let staging = dir.join(mm_store::files::tar_staging(&stem));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)
        .map_err(|e| Error::io(format!("cannot create {}", staging.display()), e))?;
    let unpacked = unpack_into(tarball, &staging).await;
    let placed = match unpacked {
        Ok(top) => {
            let (t, d, st) = (tarball.to_path_buf(), dir.clone(), staging.clone());
            tokio::task::spawn_blocking(move || place(&t, &d, &st, &top, &marker, &sum)).await?
        }
        Err(e) => Err(e),
    };
    let _ = std::fs::remove_dir_all(&staging);
    placed
}

/// The directory the record `marker` says this content (`sum`) was
/// unpacked into, if everything it unpacked is still there (a record of
/// an older build lists nothing): a delete since, by a name or a glob, has
/// it unpacked again. Blocking.
fn unpacked(dir: &Path, marker: &Path, sum: &str) -> Option<PathBuf> {
    // Read a line at a time: a record lists every path of its archive,
    // which may be a million of them.
    let mut r = std::io::BufReader::new(std::fs::File::open(marker).ok()?);
    let mut line = String::new();
    if !record_line(&mut r, &mut line)? {
        return None;
    }
    let (h, top) = line.split_once(' ')?;
    // Only a name beside the record, as `place` writes it: a record that
    // came with an archive's contents could name any other directory.
    let mut parts = Path::new(top).components();
    if !matches!(
        (parts.next(), parts.next()),
        (Some(Component::Normal(_)), None)
    ) {
        return None;
    }
    let done = dir.join(top);
    if h != sum || !done.is_dir() {
        return None;
    }
    while record_line(&mut r, &mut line)? {
        done.join(&line).symlink_metadata().ok()?;
    }
    Some(done)
}

/// The next line of a record into `line`, without its newline: false at
/// the end, None if it cannot be read or is longer than any path.
fn record_line(r: &mut impl std::io::BufRead, line: &mut String) -> Option<bool> {
    use std::io::BufRead;
    line.clear();
    let n = r.take(RECORD_LINE).read_line(line).ok()?;
    if n == 0 {
        return Some(false);
    }
    line.pop().filter(|c| *c == '\n').map(|_| true)
}

/// Longer than any path the kernel takes (`PATH_MAX`), with the hash.
const RECORD_LINE: u64 = 8192;

/// Moves the staged top directory into place, over one this node unpacked
/// from the same tarball before, never over anything else.
fn place(
    tarball: &Path,
    dir: &Path,
    staging: &Path,
    top: &str,
    marker: &Path,
    sum: &str,
) -> Result<PathBuf> {
    let target = dir.join(top);
    if target.symlink_metadata().is_ok() {
        let ours = std::fs::read_to_string(marker)
            .ok()
            .and_then(|t| {
                t.lines()
                    .next()
                    .and_then(|l| l.split_once(' ').map(|(_, d)| d == top))
            })
            .unwrap_or(false);
        if !ours {
            return Err(bad(
                tarball,
                format!(
                    "{} is there already and was not unpacked from it; move it away first",
                    target.display()
                ),
            ));
        }
        std::fs::remove_dir_all(&target)
            .map_err(|e| Error::io(format!("cannot replace {}", target.display()), e))?;
    }
    // The marker first: a crash before the rename leaves a marker with no
    // directory, which unpacks again.
    // Written as it is walked: an archive may hold a million paths.
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(marker)?);
        writeln!(w, "{sum} {top}")?;
        entries(&staging.join(top), Path::new(""), &mut |p| {
            // A name the record cannot hold as a line goes unchecked,
            // rather than never matching (and unpacking on every use).
            match p.to_str().filter(|p| !p.contains('\n')) {
                Some(p) => writeln!(w, "{p}"),
                None => Ok(()),
            }
        })?;
        w.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    };
    write().map_err(|e| Error::io(format!("cannot write {}", marker.display()), e))?;
    std::fs::rename(staging.join(top), &target)
        .map_err(|e| Error::io(format!("cannot place {}", target.display()), e))?;
    Ok(target)
}

/// Each file, directory and link under `dir` (links not followed), as a
/// path relative to it prefixed with `rel`, to `each`.
fn entries(
    dir: &Path,
    rel: &Path,
    each: &mut dyn FnMut(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let here = rel.join(e.file_name());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            entries(&e.path(), &here, each)?;
        }
        each(&here)?;
    }
    Ok(())
}

/// An entry's path, checked: relative, no `..`, not empty.
fn entry_path(tarball: &Path, p: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(bad(
                    tarball,
                    format!("entry {} has '..' in its path", p.display()),
                ))
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(bad(
                    tarball,
                    format!("entry {} has an absolute path", p.display()),
                ))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(bad(tarball, format!("entry {:?} has an empty path", p)));
    }
    Ok(out)
}

/// Where a link at `at` (relative to the root) pointing to `to` leads,
/// relative to the root; None if it leads out.
fn link_target(at: &Path, to: &Path, symbolic: bool) -> Option<PathBuf> {
    if to.is_absolute() {
        return None;
    }
    // A symlink is read from its own directory, a hard link's name from
    // the archive's root.
    let mut parts: Vec<std::ffi::OsString> = if symbolic {
        at.parent()
            .map(|p| p.iter().map(|s| s.to_os_string()).collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    // The kernel reads `..` after a name from where that name leads: if
    // it is a link, that is not where its text says. Leading `..`s climb
    // real directories (an entry's parents are checked to be), so the
    // text holds for them; a symlink's `..` after a name is refused.
    let mut down = false;
    for c in to.components() {
        match c {
            Component::Normal(s) => {
                down = true;
                parts.push(s.to_os_string());
            }
            Component::CurDir => {}
            Component::ParentDir if symbolic && down => return None,
            Component::ParentDir => {
                parts.pop()?;
            }
            _ => return None,
        }
    }
    Some(parts.iter().collect())
}

fn decoder(tarball: &Path, file: tokio::fs::File) -> Result<Box<dyn AsyncRead + Unpin + Send>> {
    let name = tarball.to_string_lossy();
    let buffered = BufReader::new(file);
    if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
        Ok(Box::new(gunzip(buffered)))
    } else if name.ends_with(".tar") {
        Ok(Box::new(buffered))
    } else {
        Err(bad(tarball, "is not a .tar, .tar.gz or .tgz"))
    }
}

fn gunzip(r: impl AsyncBufRead + Unpin + Send + 'static) -> impl AsyncRead + Unpin + Send {
    async_compression::tokio::bufread::GzipDecoder::new(r)
}

/// Unpacks every entry beneath `root`; returns the one top-level entry's
/// name, which must be a directory.
async fn unpack_into(tarball: &Path, root: &Path) -> Result<String> {
    let file = tokio::fs::File::open(tarball)
        .await
        .map_err(|e| Error::io(format!("cannot open {}", tarball.display()), e))?;
    let mut archive = tokio_tar::Archive::new(decoder(tarball, file)?);
    let read_err = |e: std::io::Error| bad(tarball, format!("cannot read the archive: {e}"));
    let mut entries = archive.entries().map_err(read_err)?;
    let mut tops = std::collections::BTreeSet::new();
    let mut count = 0;
    while let Some(entry) = entries.next().await {
        let mut entry = entry.map_err(read_err)?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(bad(tarball, format!("more than {MAX_ENTRIES} entries")));
        }
        let raw = entry.path().map_err(read_err)?.into_owned();
        let rel = entry_path(tarball, &raw)?;
        let first = rel.iter().next().map(|s| s.to_string_lossy().into_owned());
        tops.extend(first);
        let dest = root.join(&rel);
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        // A path through a link made earlier could lead out: every parent
        // must be a real directory of ours.
        if let Some(parent) = rel.parent() {
            let mut at = root.to_path_buf();
            for c in parent.iter() {
                at.push(c);
                if let Ok(m) = at.symlink_metadata() {
                    if !m.is_dir() {
                        return Err(bad(
                            tarball,
                            format!("entry {} goes through a link or a file", raw.display()),
                        ));
                    }
                }
            }
            std::fs::create_dir_all(root.join(parent)).map_err(|e| {
                Error::io(format!("cannot create {}", root.join(parent).display()), e)
            })?;
        }
        if kind.is_dir() {
            std::fs::create_dir_all(&dest)
                .map_err(|e| Error::io(format!("cannot create {}", dest.display()), e))?;
            let _ = std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode | 0o700));
        } else if kind.is_file() || kind.is_contiguous() {
            let mut out = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&dest)
                .await
                .map_err(|e| Error::io(format!("cannot create {}", dest.display()), e))?;
            tokio::io::copy(&mut entry, &mut out)
                .await
                .map_err(|e| Error::io(format!("cannot write {}", dest.display()), e))?;
            let _ = std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode));
        } else if kind.is_symlink() || kind.is_hard_link() {
            let to = entry
                .link_name()
                .map_err(read_err)?
                .ok_or_else(|| bad(tarball, format!("link {} names no target", raw.display())))?
                .into_owned();
            let symbolic = kind.is_symlink();
            let Some(inside) = link_target(&rel, &to, symbolic) else {
                return Err(bad(
                    tarball,
                    format!(
                        "link {} points outside it, to {}",
                        raw.display(),
                        to.display()
                    ),
                ));
            };
            if symbolic {
                std::os::unix::fs::symlink(&to, &dest)
            } else {
                let src = root.join(&inside);
                // Only to a file this archive made, never through a link.
                match src.symlink_metadata() {
                    Ok(m) if m.is_file() => std::fs::hard_link(&src, &dest),
                    _ => {
                        return Err(bad(
                            tarball,
                            format!("hard link {} is not to a file of it", raw.display()),
                        ))
                    }
                }
            }
            .map_err(|e| Error::io(format!("cannot link {}", dest.display()), e))?;
        } else if kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink()
        {
            // Read by the archive reader itself.
        } else {
            return Err(bad(
                tarball,
                format!(
                    "entry {} is a {}: only files, directories and links are unpacked",
                    raw.display(),
                    if kind.is_character_special() || kind.is_block_special() {
                        "device node"
                    } else if kind.is_fifo() {
                        "FIFO"
                    } else {
                        "kind of entry mm does not unpack"
                    }
                ),
            ));
        }
    }
    let tops: Vec<String> = tops.into_iter().collect();
    match &tops[..] {
        [top] if root.join(top).symlink_metadata().is_ok_and(|m| m.is_dir()) => Ok(top.clone()),
        [top] => Err(bad(
            tarball,
            format!("its one top-level entry, {top}, is not a directory"),
        )),
        [] => Err(bad(tarball, "is empty")),
        many => Err(bad(
            tarball,
            format!(
                "has {} top-level entries ({}), not one directory",
                many.len(),
                many.join(", ")
            ),
        )),
    }
}

/// A ustar archive written by hand, for tests: entries a well-behaved
/// writer would never make are the point.
#[cfg(test)]
pub(crate) mod raw {
    /// (path, type flag, link target, content)
    pub(crate) fn tar(entries: &[(&str, u8, &str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (path, flag, link, data) in entries {
            let mut h = [0u8; 512];
            h[..path.len()].copy_from_slice(path.as_bytes());
            h[100..107].copy_from_slice(b"0000644");
            h[108..115].copy_from_slice(b"0000000");
            h[116..123].copy_from_slice(b"0000000");
            h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
            h[136..147].copy_from_slice(b"00000000000");
            h[156] = *flag;
            h[157..157 + link.len()].copy_from_slice(link.as_bytes());
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|b| *b as u32).sum();
            h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::raw::tar;
    use super::*;

    async fn try_unpack(
        dir: &Path,
        name: &str,
        bytes: &[u8],
    ) -> std::result::Result<PathBuf, String> {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        unpack(&p).await.map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn one_top_directory_unpacks_once_per_content() {
        let dir = tempfile::tempdir().unwrap();
        let good = tar(&[
            ("pkg/", b'5', "", b""),
            ("pkg/bin/run", b'0', "", b"#!/bin/sh\n"),
            ("pkg/lib", b'2', "bin/run", b""),
            ("pkg/again", b'1', "pkg/bin/run", b""),
        ]);
        let top = try_unpack(dir.path(), "pkg.tar", &good).await.unwrap();
        assert_eq!(top, dir.path().join("pkg"));
        assert_eq!(std::fs::read(top.join("bin/run")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(std::fs::read(top.join("again")).unwrap(), b"#!/bin/sh\n");
        assert_eq!(
            std::fs::read_link(top.join("lib")).unwrap(),
            Path::new("bin/run")
        );
        // Once per content: a file added since stays; new content unpacks anew.
        std::fs::write(top.join("mine"), b"x").unwrap();
        assert_eq!(try_unpack(dir.path(), "pkg.tar", &good).await.unwrap(), top);
        assert!(top.join("mine").exists(), "unpacked twice");
        // Something it unpacked deleted since: unpacked again.
        std::fs::remove_file(top.join("bin/run")).unwrap();
        std::fs::remove_file(top.join("mine")).unwrap();
        std::fs::write(top.join("mine2"), b"x").unwrap();
        assert_eq!(try_unpack(dir.path(), "pkg.tar", &good).await.unwrap(), top);
        assert_eq!(std::fs::read(top.join("bin/run")).unwrap(), b"#!/bin/sh\n");
        assert!(!top.join("mine2").exists(), "unpacked anew, as a whole");
        let newer = tar(&[("pkg/", b'5', "", b""), ("pkg/v2", b'0', "", b"2")]);
        try_unpack(dir.path(), "pkg.tar", &newer).await.unwrap();
        assert!(top.join("v2").exists() && !top.join("mine").exists());
        // Another tarball with the same top: refused, nothing changed.
        let e = try_unpack(dir.path(), "other.tar", &newer)
            .await
            .unwrap_err();
        assert!(
            e.contains("is there already and was not unpacked from it"),
            "{e}"
        );
        assert!(top.join("v2").exists());
        // gzip, by its name.
        let gz_dir = tempfile::tempdir().unwrap();
        let top = try_unpack(gz_dir.path(), "pkg.tgz", &gzip(&good))
            .await
            .unwrap();
        assert_eq!(std::fs::read(top.join("bin/run")).unwrap(), b"#!/bin/sh\n");
        // Not ours at all: refused too.
        std::fs::create_dir(dir.path().join("theirs")).unwrap();
        let t = tar(&[("theirs/", b'5', "", b"")]);
        let e = try_unpack(dir.path(), "t.tar", &t).await.unwrap_err();
        assert!(e.contains("was not unpacked from it"), "{e}");
    }

    #[tokio::test]
    async fn hostile_archives_are_refused_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for (name, entries, why) in [
            (
                "two.tar",
                vec![("a/", b'5', "", &b""[..]), ("b/", b'5', "", b"")],
                "has 2 top-level entries (a, b), not one directory",
            ),
            (
                "dotdot.tar",
                vec![("x/../../evil", b'0', "", b"e")],
                "has '..' in its path",
            ),
            (
                "abs.tar",
                vec![("/tmp/evil", b'0', "", b"e")],
                "has an absolute path",
            ),
            (
                "sym.tar",
                vec![("x/", b'5', "", b""), ("x/out", b'2', "../../etc", b"")],
                "points outside it",
            ),
            (
                "symabs.tar",
                vec![("x/", b'5', "", b""), ("x/out", b'2', "/etc/passwd", b"")],
                "points outside it",
            ),
            (
                "through.tar",
                vec![
                    ("x/", b'5', "", b""),
                    ("x/d", b'2', ".", b""),
                    ("x/d/f", b'0', "", b"f"),
                ],
                "goes through a link",
            ),
            (
                "hard.tar",
                vec![("x/", b'5', "", b""), ("x/h", b'1', "../etc/passwd", b"")],
                "points outside it",
            ),
            (
                "dev.tar",
                vec![("x/", b'5', "", b""), ("x/null", b'3', "", b"")],
                "is a device node",
            ),
            (
                "file.tar",
                vec![("lone", b'0', "", b"f")],
                "is not a directory",
            ),
        ] {
            let bytes = tar(&entries);
            let e = try_unpack(dir.path(), name, &bytes).await.unwrap_err();
            assert!(e.contains(why), "{name}: {e}");
        }
        // Nothing but the tarballs is left: no top, no staging.
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".tar"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
        let e = try_unpack(dir.path(), "x.zip", b"PK").await.unwrap_err();
        assert!(e.contains("is not a .tar, .tar.gz or .tgz"), "{e}");
    }

    /// A symlink's `..` after a name that is itself a link climbs from
    /// where that link leads, not from its name: checked by its text, a
    /// chain of such links led out of the files directory, and a hard
    /// link through them made a file outside a file of the archive.
    #[tokio::test]
    async fn links_through_links_do_not_lead_out() {
        let t = tempfile::tempdir().unwrap();
        let outer = t.path().join("outer");
        let files = outer.join("files");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(outer.join("secret"), b"s").unwrap();
        let bytes = tar(&[
            ("pkg/", b'5', "", b""),
            ("pkg/a/", b'5', "", b""),
            // The staging directory, two up from pkg/a: inside, as text.
            ("pkg/a/up", b'2', "../..", b""),
            // pkg/a/up/../.. as text; the staging's parent's parent, as
            // the kernel reads it.
            ("pkg/esc", b'2', "a/up/../..", b""),
            ("pkg/h", b'1', "pkg/esc/secret", b""),
        ]);
        let e = try_unpack(&files, "pkg.tar", &bytes).await.unwrap_err();
        assert!(e.contains("points outside it"), "{e}");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(outer.join("secret")).unwrap().nlink(), 1);
        assert!(!files.join("pkg").exists());
    }

    /// A record names the directory beside it that it was unpacked into:
    /// one that names any other place (a record that came with another
    /// archive's contents) is not believed.
    #[tokio::test]
    async fn a_record_naming_another_place_is_not_believed() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("files");
        std::fs::create_dir_all(t.path().join("elsewhere")).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        let bytes = tar(&[("pkg/", b'5', "", b""), ("pkg/f", b'0', "", b"f")]);
        std::fs::write(dir.join("pkg.tar"), &bytes).unwrap();
        let sum = hash(&dir.join("pkg.tar")).unwrap();
        let marker = dir.join(mm_store::files::tar_marker("pkg.tar"));
        let abs = t.path().join("elsewhere");
        for top in ["../elsewhere", abs.to_str().unwrap(), "", "."] {
            std::fs::write(&marker, format!("{sum} {top}\n")).unwrap();
            assert_eq!(unpacked(&dir, &marker, &sum), None, "{top}");
        }
        // Read a line at a time, none longer than a path can be.
        std::fs::create_dir(dir.join("pkg")).unwrap();
        std::fs::write(&marker, format!("{sum} pkg\n.\n")).unwrap();
        assert_eq!(unpacked(&dir, &marker, &sum), Some(dir.join("pkg")));
        let long = "x/".repeat(RECORD_LINE as usize);
        std::fs::write(&marker, format!("{sum} pkg\n{long}\n")).unwrap();
        assert_eq!(unpacked(&dir, &marker, &sum), None);
        std::fs::remove_dir(dir.join("pkg")).unwrap();
        let got = try_unpack(&dir, "pkg.tar", &bytes).await.unwrap();
        assert_eq!(got, dir.join("pkg"));
    }

    /// gzip, with async-compression's encoder.
    fn gzip(data: &[u8]) -> Vec<u8> {
        let data = data.to_vec();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async move {
                use tokio::io::AsyncWriteExt;
                let mut enc = async_compression::tokio::write::GzipEncoder::new(Vec::new());
                enc.write_all(&data).await.unwrap();
                enc.shutdown().await.unwrap();
                enc.into_inner()
            })
        })
        .join()
        .unwrap()
    }
}
