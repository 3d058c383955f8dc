//! Words that fetch themselves (issue 11): what `file:NAME` becomes on the
//! node that runs the command. The command layer decides which words of
//! which commands are rewritten; this is how one is.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use crate::{Error, Node, Result};

/// Whether `w` is a word that fetches itself.
pub(crate) fn fetches(w: &str) -> bool {
    w.starts_with("file:")
        || w.starts_with("tar:")
        || w.starts_with("http://")
        || w.starts_with("https://")
}

/// What `w` is on this node: `file:NAME` and `tar:NAME` the local paths
/// they resolve to (a `file:` glob, every file it matches: several
/// words), any other word itself.
/// `local`: the command came from this host (the control socket), not
/// from the mesh.
pub(crate) async fn word(node: &Arc<Node>, w: &str, local: bool) -> Result<Vec<String>> {
    if let Some(pattern) = w.strip_prefix("file:") {
        if mm_store::files::has_magic(pattern) {
            return glob(node, pattern).await;
        }
        return Ok(vec![file(node, pattern).await?]);
    }
    if let Some(name) = w.strip_prefix("tar:") {
        return Ok(vec![tar(node, name, local).await?]);
    }
    if w.starts_with("http://") || w.starts_with("https://") {
        return Ok(vec![url(node, w).await?]);
    }
    Ok(vec![w.to_string()])
}

/// `file:images/*.qcow2`: every file the mesh holds that matches, fetched,
/// as one word each, sorted (minimega #1480 takes the glob as one name).
async fn glob(node: &Arc<Node>, pattern: &str) -> Result<Vec<String>> {
    // Fetches what is not here (all the matches the mesh holds).
    fetch(node, pattern).await?;
    let files = &node.files.local.files;
    let names = files.expand(pattern)?;
    if names.is_empty() {
        return Err(Error::NotFound(format!("{pattern} matches no file")));
    }
    // Every match is here now: only their backing files may be missing,
    // and asking the mesh for each match again would cost a round each.
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let path = files.resolve(&n)?;
        out.push(with_backing(node, &n, path).await?);
    }
    Ok(out)
}

/// `tar:NAME`: the tarball NAME of the files directory (fetched if it is
/// not here), or, for a `local` command, a tarball elsewhere on this node
/// named by its absolute path, unpacked next to itself; its single
/// top-level directory.
pub(crate) async fn tar(node: &Arc<Node>, name: &str, local: bool) -> Result<String> {
    if name.is_empty() {
        return Err(Error::usage("a tar: word needs a name: tar:NAME"));
    }
    let path = match outside_tarball(name, node.files.local.files.root(), local) {
        Some(p) => p,
        None => fetch(node, name).await?,
    };
    Ok(crate::tarball::unpack(&path).await?.display().to_string())
}

/// The tarball `name` names outside the files directory `root`, if it
/// does and may. Only the operator here may: unpacking writes beside the
/// tarball, and a member of the mesh writes only beneath `root`.
fn outside_tarball(name: &str, root: &Path, local: bool) -> Option<PathBuf> {
    let outside = Path::new(name);
    (local && outside.is_absolute() && outside.is_file() && !outside.starts_with(root))
        .then(|| outside.to_path_buf())
}

/// `http(s)://HOST/PATH`: the files directory's PATH. From the mesh if a
/// node holds it (this one included); else downloaded once, by the node
/// the mesh chooses for the URL (every node that asks at once asks that
/// one), and then fetched from it through iomeshage. If the chosen node
/// cannot be reached, this one downloads it.
pub(crate) async fn url(node: &Arc<Node>, url: &str) -> Result<String> {
    let name = crate::web::name_of(url)?;
    match fetch(node, &name).await {
        Ok(p) => return Ok(p.display().to_string()),
        Err(e) if e.is_not_here() || e.is_no_holder() => {}
        Err(e) => return Err(e),
    }
    let s = node.settle().await?;
    let chosen = downloader(&s.nodes.keys().cloned().collect::<Vec<_>>(), url);
    if chosen != node.name {
        let body = mm_overlay::wire::encode(&crate::proto::Request::Download {
            url: url.to_string(),
        });
        let asked = node
            .overlay
            .send(vec![chosen.clone()], body, crate::NO_LIMIT)
            .await?;
        match asked.into_iter().next().map(|(_, r)| r) {
            Some(Ok(_)) => return Ok(fetch(node, &name).await?.display().to_string()),
            // Its download failed: so would ours.
            Some(Err(mm_overlay::Error::Remote(why))) => {
                return Err(Error::Refused(format!(
                    "{chosen}, which downloads it for the mesh, could not: {why}"
                )))
            }
            Some(Err(e)) => {
                tracing::info!("{url}: {chosen} cannot download it for us ({e}); downloading here")
            }
            None => {}
        }
    }
    Ok(download_here(node, url).await?.display().to_string())
}

/// The node that downloads `url` for the mesh: the same for every node
/// that sees the same mesh.
fn downloader(nodes: &[String], url: &str) -> String {
    let mut sorted = nodes.to_vec();
    sorted.sort();
    let h = blake3::hash(url.as_bytes());
    let n = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default());
    sorted
        .get((n % sorted.len().max(1) as u64) as usize)
        .cloned()
        .unwrap_or_default()
}

/// Downloads `url` into the files directory here, unless it is there
/// already; one download per URL at a time.
pub(crate) async fn download_here(node: &Arc<Node>, url: &str) -> Result<PathBuf> {
    let name = crate::web::name_of(url)?;
    let files = &node.files.local.files;
    let _one = node.web.lock(url).await;
    let path = files.resolve(&name)?;
    if path.exists() {
        return Ok(path);
    }
    let partial = format!("web-{}", &blake3::hash(url.as_bytes()).to_hex()[..16]);
    let f = files.open_partial(&partial, libc::O_RDWR | libc::O_TRUNC, true)?;
    let mut f = tokio::fs::File::from_std(f);
    let got = node.web.download(url, &mut f).await;
    drop(f);
    let placed = got.and_then(|n| {
        files.place(&partial, &name)?;
        tracing::info!("{url}: downloaded {n} bytes into {name}");
        Ok(())
    });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(files.partial_dir().join(&partial));
        return Err(e);
    }
    Ok(path)
}

/// How deep a chain of qcow2 backing files is followed.
const MAX_BACKING: usize = 16;

/// The local path of the files directory's NAME, fetched through
/// iomeshage (and waited for) unless it is here; a qcow2 image's backing
/// files, named relative to it, come too.
pub(crate) async fn file(node: &Arc<Node>, name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::usage("a file: word needs a name: file:NAME"));
    }
    let path = fetch(node, name).await?;
    with_backing(node, name, path).await
}

/// `path` (the image `name`, here already), once the qcow2 backing files
/// it names relative to itself are here too.
pub(crate) async fn with_backing(node: &Arc<Node>, name: &str, path: PathBuf) -> Result<String> {
    let files = &node.files.local.files;
    let mut image = path.clone();
    for _ in 0..MAX_BACKING {
        let Some(beside) = backing_beside(files.root(), &image)? else {
            return Ok(path.display().to_string());
        };
        image = fetch(node, &beside).await?;
    }
    Err(Error::Refused(format!(
        "{name}: a chain of more than {MAX_BACKING} backing files"
    )))
}

/// The names of the backing files of the image `name` in the files
/// directory `root`, all here, nearest first. Blocking.
pub(crate) fn backing_here(root: &Path, name: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut image = root.join(name);
    while let Some(beside) = backing_beside(root, &image)? {
        if out.len() == MAX_BACKING {
            return Err(Error::Refused(format!(
                "{name}: a chain of more than {MAX_BACKING} backing files"
            )));
        }
        image = root.join(&beside);
        out.push(beside);
    }
    Ok(out)
}

/// The files directory's name for the backing file `image` (a path under
/// `root`) names relative to itself; None if it names none, or an
/// absolute path, which QEMU opens as it is.
fn backing_beside(root: &Path, image: &Path) -> Result<Option<String>> {
    let Some(backing) = qcow2_backing(image)? else {
        return Ok(None);
    };
    if Path::new(&backing).is_absolute() {
        return Ok(None);
    }
    // The name is the image's author's, not the operator's: fetched as a
    // glob, it would pull every file of the mesh that it matches.
    if mm_store::files::has_magic(&backing) {
        return Err(Error::Refused(format!(
            "{}: its backing file {backing:?} is not one file's name",
            image.display()
        )));
    }
    let rel = image.strip_prefix(root).map_err(|_| {
        Error::NotFound(format!(
            "{} is outside the files directory",
            image.display()
        ))
    })?;
    normalize(&rel.parent().unwrap_or(Path::new("")).join(&backing))
        .map(Some)
        .ok_or_else(|| {
            Error::Refused(format!(
                "{}: its backing file {backing} is outside the files directory",
                rel.display()
            ))
        })
}

async fn fetch(node: &Arc<Node>, name: &str) -> Result<PathBuf> {
    let pending = node.get_file(name, &mm_store::Select::default()).await?;
    if !pending.is_empty() {
        node.files.engine.wait(pending).await?;
    }
    let files = &node.files.local.files;
    if mm_store::files::has_magic(name) {
        return Ok(files.root().to_path_buf());
    }
    Ok(files.resolve(name)?)
}

/// `a/./b/../c` to `a/c`; None if it climbs above its start.
fn normalize(p: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// The backing file a qcow2 image names, if it is one and names one: the
/// header's offset (bytes 8..16) and length (16..20) of the name.
pub(crate) fn qcow2_backing(path: &Path) -> Result<Option<String>> {
    let io = |e| Error::io(format!("cannot read {}", path.display()), e);
    if path.is_dir() {
        return Ok(None);
    }
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut head = [0u8; 20];
    if f.read_exact(&mut head).is_err() || &head[..4] != b"QFI\xfb" {
        return Ok(None);
    }
    let offset = u64::from_be_bytes(head[8..16].try_into().unwrap_or_default());
    let len = u32::from_be_bytes(head[16..20].try_into().unwrap_or_default()) as usize;
    if offset == 0 || len == 0 {
        return Ok(None);
    }
    // QEMU's own limit on the name.
    if len > 1023 {
        return Err(Error::Refused(format!(
            "{}: a backing file name of {len} bytes",
            path.display()
        )));
    }
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(offset)).map_err(io)?;
    let mut name = vec![0u8; len];
    f.read_exact(&mut name).map_err(io)?;
    String::from_utf8(name).map(Some).map_err(|_| {
        Error::Refused(format!(
            "{}: a backing file name that is not UTF-8",
            path.display()
        ))
    })
}

/// A qcow2 (version 2) header naming `backing`, for tests: all a reader of
/// backing files looks at.
#[cfg(test)]
pub(crate) fn qcow2_header(backing: Option<&str>) -> Vec<u8> {
    let mut h = vec![0u8; 72];
    h[..4].copy_from_slice(b"QFI\xfb");
    h[4..8].copy_from_slice(&2u32.to_be_bytes());
    if let Some(b) = backing {
        h[8..16].copy_from_slice(&72u64.to_be_bytes());
        h[16..20].copy_from_slice(&(b.len() as u32).to_be_bytes());
        h.extend_from_slice(b.as_bytes());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head lists an image's backing chain for hosts to fetch: names
    /// relative to each image, nearest first; an absolute one ends it; one
    /// that leads out of the files directory is refused.
    #[test]
    fn a_backing_chain_is_listed_by_its_names_in_the_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("img/layer")).unwrap();
        std::fs::write(
            root.join("img/base.qcow2"),
            qcow2_header(Some("/abs/x.qcow2")),
        )
        .unwrap();
        std::fs::write(
            root.join("img/layer/mid.qcow2"),
            qcow2_header(Some("../base.qcow2")),
        )
        .unwrap();
        std::fs::write(
            root.join("img/layer/top.qcow2"),
            qcow2_header(Some("mid.qcow2")),
        )
        .unwrap();
        std::fs::write(root.join("raw.img"), b"raw").unwrap();
        assert_eq!(
            backing_here(root, "img/layer/top.qcow2").unwrap(),
            ["img/layer/mid.qcow2", "img/base.qcow2"]
        );
        assert!(backing_here(root, "raw.img").unwrap().is_empty());
        std::fs::write(root.join("evil.qcow2"), qcow2_header(Some("../../etc/x"))).unwrap();
        let e = backing_here(root, "evil.qcow2").unwrap_err().to_string();
        assert!(e.contains("outside the files directory"), "{e}");
        // A glob would have `file:` fetch every file of the mesh it matches.
        for glob in ["*", "img/*.qcow2", "[a-z]", "disk?"] {
            std::fs::write(root.join("glob.qcow2"), qcow2_header(Some(glob))).unwrap();
            let e = backing_here(root, "glob.qcow2").unwrap_err().to_string();
            assert!(e.contains("not one file's name"), "{glob}: {e}");
        }
        std::fs::write(root.join("loop.qcow2"), qcow2_header(Some("loop.qcow2"))).unwrap();
        let e = backing_here(root, "loop.qcow2").unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
    }

    /// A command from the mesh never unpacks a tarball outside the files
    /// directory: its absolute name is a name in the files directory.
    #[test]
    fn only_a_local_command_names_a_tarball_outside_the_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("files");
        std::fs::create_dir(&root).unwrap();
        let t = dir.path().join("x.tar");
        std::fs::write(&t, b"").unwrap();
        let name = t.to_str().unwrap();
        assert_eq!(outside_tarball(name, &root, true), Some(t.clone()));
        assert_eq!(outside_tarball(name, &root, false), None);
        std::fs::write(root.join("y.tar"), b"").unwrap();
        let inside = root.join("y.tar");
        assert_eq!(outside_tarball(inside.to_str().unwrap(), &root, true), None);
    }

    #[test]
    fn backing_files_are_read_from_the_qcow2_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("top.qcow2");
        std::fs::write(&p, qcow2_header(Some("../base/disk.qcow2"))).unwrap();
        assert_eq!(
            qcow2_backing(&p).unwrap().as_deref(),
            Some("../base/disk.qcow2")
        );
        std::fs::write(&p, qcow2_header(None)).unwrap();
        assert_eq!(qcow2_backing(&p).unwrap(), None);
        std::fs::write(&p, b"not an image at all").unwrap();
        assert_eq!(qcow2_backing(&p).unwrap(), None);
        assert_eq!(normalize(Path::new("a/b/../c")).as_deref(), Some("a/c"));
        assert_eq!(normalize(Path::new("a/../../c")), None);
    }
}
