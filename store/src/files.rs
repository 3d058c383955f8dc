//! The files directory, `<base>/files`. This is the only code that turns a
//! file name (which may have come over the wire) into a path: absolute
//! names, `..`, and symlinks that lead outside the directory are refused.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use crate::{Error, Result};

/// In-progress transfers live here, hidden from listings and never served.
pub const PARTIAL_DIR: &str = ".mm-partial";

/// The record `tar:` keeps beside a tarball it unpacked (`.NAME.mm-tar`).
pub fn tar_marker(tarball: &str) -> String {
    format!(".{tarball}.mm-tar")
}

/// Where `tar:` unpacks a tarball before it renames the whole into place.
pub fn tar_staging(tarball: &str) -> String {
    format!(".{tarball}.mm-unpacking-{}", std::process::id())
}

/// Whether a file name (a last component) is mm's own bookkeeping, which
/// is never listed, expanded or served: the records and staging
/// directories of `tar:`.
pub fn is_bookkeeping(file_name: &str) -> bool {
    file_name.starts_with('.')
        && (file_name.ends_with(".mm-tar") || file_name.contains(".mm-unpacking-"))
}

#[derive(Debug, Clone)]
pub struct FilesDir {
    root: PathBuf,
    /// The root, open, for opening names beneath it.
    dir: Arc<OwnedFd>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Path relative to the files directory, with `/` separators.
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    pub modified: SystemTime,
}

impl FilesDir {
    pub fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join(PARTIAL_DIR))
            .map_err(|e| Error::io("cannot create", root, e))?;
        let root = root
            .canonicalize()
            .map_err(|e| Error::io("cannot resolve", root, e))?;
        let c = CString::new(root.as_os_str().as_bytes())
            .map_err(|_| Error::BadName(format!("{}: a NUL in the path", root.display())))?;
        // SAFETY: a NUL-terminated path; the descriptor is checked and owned.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(Error::io(
                "cannot open",
                &root,
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a new descriptor of ours.
        let dir = Arc::new(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(Self { root, dir })
    }

    /// Opens `name` (a name from anywhere, the wire included) beneath the
    /// files directory, with `flags` (`O_RDONLY`, `O_WRONLY | O_DIRECT`,
    /// ...). The kernel resolves it and refuses any step outside, through
    /// `..` or a symlink, as it goes (`openat2` with `RESOLVE_BENEATH`):
    /// nothing can swap a link in between a check and the open. Where the
    /// kernel has no `openat2`, the path is checked as [`FilesDir::resolve`]
    /// does and its last part opened without following a link.
    pub fn open_file(&self, name: &str, flags: i32) -> Result<File> {
        let clean = Self::clean(name)?;
        self.open_beneath(&clean, flags, 0, libc::RESOLVE_BENEATH)
            .map_err(|e| self.open_error(name, e))
    }

    /// Opens a transfer's partial file (`.mm-partial/NAME`), never through a
    /// symlink; `create` makes it (mode 0600) if it is missing.
    pub fn open_partial(&self, file: &str, flags: i32, create: bool) -> Result<File> {
        let rel = format!("{PARTIAL_DIR}/{file}");
        let (flags, mode) = if create {
            (flags | libc::O_CREAT, 0o600)
        } else {
            (flags, 0)
        };
        self.open_beneath(
            &rel,
            flags,
            mode,
            libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
        )
        .map_err(|e| self.open_error(&rel, e))
    }

    /// The directory `name` is in, open (`O_PATH`), beneath the root.
    pub fn open_parent(&self, name: &str) -> Result<(File, String)> {
        let (dir, base) = split_parent(&Self::clean(name)?);
        Ok((self.open_dir(&dir, libc::O_PATH)?, base))
    }

    /// Directory `dir` (a clean name, or "."), opened beneath the root.
    fn open_dir(&self, dir: &str, flags: libc::c_int) -> Result<File> {
        self.open_beneath(dir, flags | libc::O_DIRECTORY, 0, libc::RESOLVE_BENEATH)
            .map_err(|e| self.open_error(dir, e))
    }

    /// Moves the partial file `partial` into place as `name`, creating the
    /// directories it needs, never over a file that is there already
    /// (`RENAME_NOREPLACE`: `AlreadyExists`), and never outside the files
    /// directory (both ends are directories opened beneath it). Then syncs
    /// the directory, so the new name survives a crash.
    pub fn place(&self, partial: &str, name: &str) -> Result<()> {
        let clean = Self::clean(name)?;
        // `tar:` trusts its records to say what it unpacked, and where:
        // nothing from the mesh or the web may plant one.
        if clean.split('/').any(is_bookkeeping) {
            return Err(Error::BadName(format!(
                "{name:?}: a name of mm's own bookkeeping, never fetched"
            )));
        }
        if let Some((dir, _)) = clean.rsplit_once('/') {
            let path = self.resolve_path(dir)?;
            std::fs::create_dir_all(&path).map_err(|e| Error::io("creating", &path, e))?;
        }
        let from = self
            .open_beneath(
                PARTIAL_DIR,
                libc::O_RDONLY | libc::O_DIRECTORY,
                0,
                libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS,
            )
            .map_err(|e| self.open_error(PARTIAL_DIR, e))?;
        let (dir, base) = split_parent(&clean);
        let to = self.open_dir(&dir, libc::O_RDONLY)?;
        let c = |s: &str| {
            CString::new(s).map_err(|_| Error::BadName(format!("invalid file name {s:?}")))
        };
        let (a, b) = (c(partial)?, c(&base)?);
        // SAFETY: two directory descriptors we hold and two NUL-terminated
        // names that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                from.as_raw_fd(),
                a.as_ptr(),
                to.as_raw_fd(),
                b.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                return Err(Error::Exists(format!(
                    "{name} appeared here while it was being fetched; not overwritten"
                )));
            }
            return Err(Error::io("moving into place", name, e));
        }
        let _ = to.sync_all();
        Ok(())
    }

    fn open_error(&self, name: &str, e: std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::EXDEV) => Error::BadName(format!(
                "file name {name:?} leads outside the files directory"
            )),
            Some(libc::ELOOP) => Error::BadName(format!("{name:?} is a symlink here")),
            Some(libc::ENOENT) => Error::NotHere { name: name.into() },
            _ => Error::io("cannot open", name, e),
        }
    }

    fn open_beneath(
        &self,
        rel: &str,
        flags: i32,
        mode: u32,
        resolve: u64,
    ) -> std::io::Result<File> {
        let invalid = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
        let flags = flags | libc::O_CLOEXEC;
        if !has_openat2() {
            return self.open_checked(rel, flags, mode, resolve);
        }
        let c = CString::new(rel).map_err(|_| invalid())?;
        // EAGAIN: a rename raced the lookup; the kernel asks to try again.
        let mut tries = 0;
        let r = loop {
            match openat2(self.dir.as_raw_fd(), &c, flags, mode, resolve) {
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && tries < 8 => tries += 1,
                r => break r,
            }
        };
        match r {
            // An absolute symlink, which RESOLVE_BENEATH never follows:
            // where it leads is checked, and that path then opened with no
            // symlink at all on the way, so none can be swapped in.
            Err(e)
                if e.raw_os_error() == Some(libc::EXDEV)
                    && resolve & libc::RESOLVE_NO_SYMLINKS == 0 =>
            {
                let real = self.real_path(rel).ok_or(e)?;
                let inside = real.strip_prefix(&self.root).unwrap_or(&real);
                let inside = if inside.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    inside
                };
                let c = CString::new(inside.as_os_str().as_bytes()).map_err(|_| invalid())?;
                let strict = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
                openat2(self.dir.as_raw_fd(), &c, flags, mode, strict)
            }
            r => r,
        }
    }

    /// Where `rel` really is, if that is inside the root: symlinks
    /// followed, as far as the path exists (a file not there yet: the real
    /// path of its directory, and its name).
    fn real_path(&self, rel: &str) -> Option<PathBuf> {
        let path = self.resolve_path(rel).ok()?;
        let mut existing = path.as_path();
        let mut rest = Vec::new();
        while !existing.exists() {
            rest.push(existing.file_name()?.to_owned());
            existing = existing.parent()?;
        }
        let mut real = existing.canonicalize().ok()?;
        for part in rest.iter().rev() {
            real.push(part);
        }
        real.starts_with(&self.root).then_some(real)
    }

    /// Without `openat2` (Linux before 5.6, or a seccomp filter that
    /// refuses it): the path is checked as [`FilesDir::resolve`] does, and
    /// the real path it leads to opened, its last part without following a
    /// link (one swapped in after the check is refused, not followed).
    fn open_checked(
        &self,
        rel: &str,
        flags: i32,
        mode: u32,
        resolve: u64,
    ) -> std::io::Result<File> {
        let outside = || std::io::Error::from_raw_os_error(libc::EXDEV);
        let path = self.resolve_path(rel).map_err(|_| outside())?;
        if resolve & libc::RESOLVE_NO_SYMLINKS != 0 {
            if let Ok(m) = std::fs::symlink_metadata(&path) {
                if m.file_type().is_symlink() {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
            }
        }
        let real = match path.canonicalize() {
            Ok(r) if r.starts_with(&self.root) => r,
            Ok(_) => return Err(outside()),
            Err(_) => path,
        };
        let p = CString::new(real.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        // SAFETY: a NUL-terminated path; the descriptor is checked and owned.
        let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_NOFOLLOW, mode) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor of ours.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn partial_dir(&self) -> PathBuf {
        self.root.join(PARTIAL_DIR)
    }

    /// Normalises a file name: relative, no `..`, no empty or `.` parts.
    pub fn clean(name: &str) -> Result<String> {
        let bad = |why: String| Err(Error::BadName(why));
        // Control and format characters (bidi overrides, zero-width ones):
        // no use in a file name, and a hazard on the operator's terminal,
        // where they can make one name look like another.
        if name.chars().any(|c| c.is_control() || is_format(c)) {
            return bad(format!("invalid file name {name:?}"));
        }
        let p = Path::new(name);
        let mut parts = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(s) => match s.to_str() {
                    Some(s) => parts.push(s.to_string()),
                    None => return bad(format!("file name {name:?} is not UTF-8")),
                },
                Component::CurDir => {}
                Component::ParentDir => {
                    return bad(format!("file name {name:?} may not contain '..'"))
                }
                // minimega's scripts write `/images/big`: the root is the
                // files directory's.
                Component::RootDir => {}
                Component::Prefix(_) => {
                    return bad(format!(
                        "file name {name:?} must be relative to the files directory"
                    ))
                }
            }
        }
        if parts.first().is_some_and(|p| p == PARTIAL_DIR) {
            return bad(format!(
                "{PARTIAL_DIR} is reserved for transfers in progress"
            ));
        }
        Ok(parts.join("/"))
    }

    /// The path of `name`, checked to stay inside the directory even
    /// through symlinks. The file need not exist.
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        let clean = Self::clean(name)?;
        self.resolve_path(&clean)
    }

    /// [`FilesDir::resolve`] of a name already cleaned (or made here).
    fn resolve_path(&self, clean: &str) -> Result<PathBuf> {
        let name = clean;
        let path = self.root.join(clean);
        // Canonicalise the longest existing prefix: a symlink anywhere along
        // the way must still land inside the root.
        let mut existing = path.as_path();
        while !existing.exists() {
            match existing.parent() {
                Some(p) => existing = p,
                None => break,
            }
        }
        let real = existing
            .canonicalize()
            .map_err(|e| Error::io("cannot resolve", name, e))?;
        if !real.starts_with(&self.root) {
            return Err(Error::BadName(format!(
                "file name {name:?} leads outside the files directory"
            )));
        }
        Ok(path)
    }

    /// Entries under `dir` ("" for the top), sorted by name.
    pub fn list(&self, dir: &str, recursive: bool) -> Result<Vec<Entry>> {
        let start = self.resolve(dir)?;
        let meta = std::fs::metadata(&start).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotHere { name: dir.into() },
            _ => Error::io("", dir, e),
        })?;
        if !meta.is_dir() {
            return Ok(vec![self.entry(&start, &meta)]);
        }
        let mut out = Vec::new();
        self.walk(&start, recursive, &mut out)?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn entry(&self, path: &Path, meta: &std::fs::Metadata) -> Entry {
        Entry {
            name: self.rel(path),
            is_dir: meta.is_dir(),
            size: meta.len(),
            modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }

    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    fn walk(&self, dir: &Path, recursive: bool, out: &mut Vec<Entry>) -> Result<()> {
        let rd = std::fs::read_dir(dir).map_err(|e| Error::io("", self.rel(dir), e))?;
        for e in rd.flatten() {
            let path = e.path();
            if path == self.partial_dir() || e.file_name().to_str().is_some_and(is_bookkeeping) {
                continue;
            }
            // Follow symlinks only when they stay inside the directory.
            let Ok(real) = path.canonicalize() else {
                continue;
            };
            if !real.starts_with(&self.root) {
                continue;
            }
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            out.push(self.entry(&path, &meta));
            if recursive && meta.is_dir() && !e.file_type().is_ok_and(|t| t.is_symlink()) {
                self.walk(&path, true, out)?;
            }
        }
        Ok(())
    }

    /// The regular files a name stands for: a glob's matches, everything
    /// under a directory, or the file itself. Sorted; empty if none.
    pub fn expand(&self, pattern: &str) -> Result<Vec<String>> {
        let clean = Self::clean(pattern)?;
        if clean.split('/').any(is_bookkeeping) {
            return Ok(Vec::new());
        }
        let all = if clean.is_empty() || !has_magic(&clean) {
            let path = self.resolve(&clean)?;
            match std::fs::metadata(&path) {
                Ok(m) if m.is_dir() => self.list(&clean, true)?,
                Ok(m) => vec![self.entry(&path, &m)],
                Err(_) => Vec::new(),
            }
        } else {
            self.list("", true)?
                .into_iter()
                .filter(|e| glob_match(&clean, &e.name))
                .flat_map(|e| {
                    if e.is_dir {
                        self.list(&e.name, true).unwrap_or_default()
                    } else {
                        vec![e]
                    }
                })
                .collect()
        };
        let mut names: Vec<String> = all
            .into_iter()
            .filter(|e| !e.is_dir)
            .map(|e| e.name)
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
}

/// Unicode's format characters (general category Cf): invisible, and some
/// reorder what follows them.
pub fn is_format(c: char) -> bool {
    matches!(c as u32,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// Whether this kernel takes `openat2`, asked once: an old kernel answers
/// ENOSYS, a seccomp filter that predates the call ENOSYS or EPERM.
fn has_openat2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let dot = CString::new(".").expect("no NUL");
        let r = openat2(
            libc::AT_FDCWD,
            &dot,
            libc::O_PATH | libc::O_CLOEXEC,
            0,
            libc::RESOLVE_BENEATH,
        );
        !matches!(r, Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM)))
    })
}

/// `openat2(2)`: the C library has no wrapper for it.
fn openat2(
    dir: RawFd,
    path: &CString,
    flags: i32,
    mode: u32,
    resolve: u64,
) -> std::io::Result<File> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: flags as u64,
        mode: mode as u64,
        resolve,
    };
    // SAFETY: the arguments are what openat2 takes: a directory descriptor,
    // a NUL-terminated path, and an open_how of the size given.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor of ours.
    Ok(unsafe { File::from_raw_fd(fd as RawFd) })
}

pub fn has_magic(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Shell-style matching, component by component: `*` and `?` never cross a
/// `/`, `[abc]`, `[a-z]` and `[!x]` match one character.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let n: Vec<&str> = name.split('/').collect();
    p.len() == n.len()
        && p.iter()
            .zip(&n)
            .all(|(p, n)| component_match(p.as_bytes(), n.as_bytes()))
}

/// One character class at the start of `p` (at its `[`): the length of the
/// class including brackets, and whether `c` is in it. `None` if the
/// bracket is not closed (then `[` is a plain character).
fn class(p: &[u8], c: u8) -> Option<(usize, bool)> {
    let close = p.iter().skip(1).position(|&x| x == b']')? + 1;
    let mut set = &p[1..close];
    let negate = set.first() == Some(&b'!');
    if negate {
        set = &set[1..];
    }
    let mut hit = false;
    let mut i = 0;
    while i < set.len() {
        if i + 2 < set.len() && set[i + 1] == b'-' {
            hit |= set[i] <= c && c <= set[i + 2];
            i += 3;
        } else {
            hit |= set[i] == c;
            i += 1;
        }
    }
    Some((close + 1, hit != negate))
}

/// Wildcard matching that backtracks only to the last `*`, so a pattern
/// from the wire cannot make it explode (time O(pattern x name)).
fn component_match(p: &[u8], n: &[u8]) -> bool {
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class(&p[pi..], n[ni]) {
                Some((len, true)) => Some(len),
                Some((_, false)) => None,
                None => (n[ni] == b'[').then_some(1),
            },
            Some(&c) => (c == n[ni]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                pi += len;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                // Let the last `*` swallow one more character and retry.
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A clean name's directory ("." at the top) and last component.
fn split_parent(clean: &str) -> (String, String) {
    match clean.rsplit_once('/') {
        Some((d, b)) => (d.to_string(), b.to_string()),
        None => (".".to_string(), clean.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, FilesDir) {
        let t = tempfile::tempdir().unwrap();
        let f = FilesDir::open(&t.path().join("files")).unwrap();
        for p in [
            "a.iso",
            "b.iso",
            "img/x.qcow2",
            "img/sub/y.qcow2",
            "notes.txt",
        ] {
            let path = f.root().join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, p).unwrap();
        }
        (t, f)
    }

    #[test]
    fn names_cannot_escape() {
        let (t, f) = setup();
        for bad in [
            "/../x",
            "../x",
            "a/../../x",
            ".mm-partial/1",
            "a\0b",
            "\u{1}redirect x",
            "a\nb",
            "evil\u{202e}gpj.exe",
            "zero\u{200b}width",
            "\u{feff}bom",
        ] {
            assert!(f.resolve(bad).is_err(), "{bad} accepted");
        }
        std::os::unix::fs::symlink(t.path(), f.root().join("out")).unwrap();
        let e = f.resolve("out/secret").unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        std::os::unix::fs::symlink(f.root().join("img"), f.root().join("in")).unwrap();
        assert!(f.resolve("in/x.qcow2").is_ok());
        assert_eq!(FilesDir::clean("./img//x.qcow2").unwrap(), "img/x.qcow2");
        // A leading `/` is the files directory's root, as in minimega.
        assert_eq!(FilesDir::clean("/img/x.qcow2").unwrap(), "img/x.qcow2");
        assert_eq!(
            f.resolve("/etc/passwd").unwrap(),
            f.root().join("etc/passwd")
        );
        // Opening goes no further: not through the link out, nor through one
        // swapped in for a directory after a check.
        std::fs::write(t.path().join("secret"), b"s").unwrap();
        let e = f
            .open_file("out/secret", libc::O_RDONLY)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outside"), "{e}");
        assert!(f.open_file("in/x.qcow2", libc::O_RDONLY).is_ok());
        // A name not there yet, through that link, is not here; not outside.
        let e = f.open_file("in/new.qcow2", libc::O_RDONLY).unwrap_err();
        assert!(e.is_not_here(), "{e}");
        std::os::unix::fs::symlink(t.path().join("secret"), f.partial_dir().join("p.part"))
            .unwrap();
        assert!(f.open_partial("p.part", libc::O_RDWR, true).is_err());
        // Listings skip the escaping link.
        let names: Vec<String> = f
            .list("", true)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(!names.iter().any(|n| n.starts_with("out")), "{names:?}");
    }

    /// Random names: never a panic, and what is taken never climbs out.
    #[test]
    fn random_names_are_clean_or_refused() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let parts = [
            "a",
            "..",
            ".",
            "/",
            "//",
            "b c",
            "\u{202e}",
            "\0",
            "\n",
            "*",
            "[",
            "é",
            ".mm-partial",
        ];
        for _ in 0..20000 {
            let n = rng.gen_range(0..8);
            let name: String = (0..n)
                .map(|_| parts[rng.gen_range(0..parts.len())])
                .collect();
            if let Ok(c) = FilesDir::clean(&name) {
                assert!(
                    !c.split('/')
                        .any(|p| p == ".." || p.is_empty() && !c.is_empty()),
                    "{name:?} -> {c:?}"
                );
                assert!(
                    !c.starts_with('/') && c.split('/').next() != Some(PARTIAL_DIR),
                    "{name:?} -> {c:?}"
                );
                assert!(
                    !c.chars().any(|ch| ch.is_control() || is_format(ch)),
                    "{name:?}"
                );
            }
            let _ = glob_match(&name, "a/b");
        }
    }

    #[test]
    fn globs_directories_and_files_expand() {
        let (_t, f) = setup();
        assert_eq!(f.expand("*.iso").unwrap(), vec!["a.iso", "b.iso"]);
        assert_eq!(
            f.expand("img").unwrap(),
            vec!["img/sub/y.qcow2", "img/x.qcow2"]
        );
        assert_eq!(f.expand("img/*.qcow2").unwrap(), vec!["img/x.qcow2"]);
        assert_eq!(f.expand("[ab].iso").unwrap(), vec!["a.iso", "b.iso"]);
        assert_eq!(f.expand("[!a].iso").unwrap(), vec!["b.iso"]);
        assert_eq!(f.expand("notes.txt").unwrap(), vec!["notes.txt"]);
        assert!(f.expand("missing").unwrap().is_empty());
        assert!(!f
            .expand("")
            .unwrap()
            .iter()
            .any(|n| n.starts_with(PARTIAL_DIR)));
    }

    /// `tar:`'s records and staging are not files to list, get or serve.
    #[test]
    fn bookkeeping_is_neither_listed_nor_expanded() {
        let (_t, f) = setup();
        let root = f.root().to_path_buf();
        std::fs::write(root.join("img").join(tar_marker("t.tgz")), "h d").unwrap();
        std::fs::create_dir(root.join(tar_staging("t.tgz"))).unwrap();
        std::fs::write(root.join(tar_staging("t.tgz")).join("x"), "x").unwrap();
        let marker = format!("img/{}", tar_marker("t.tgz"));
        assert!(f.expand(&marker).unwrap().is_empty());
        let staged = format!("{}/x", tar_staging("t.tgz"));
        assert!(f.expand(&staged).unwrap().is_empty());
        assert!(f.expand("img/.*").unwrap().is_empty());
        let all = f.expand("").unwrap();
        assert!(!all.iter().any(|n| n.contains(".mm-")), "{all:?}");
        let listed = f.list("img", true).unwrap();
        assert!(
            !listed.iter().any(|e| e.name.contains(".mm-")),
            "{listed:?}"
        );
    }

    /// Neither a transfer nor a download can plant a `tar:` record.
    #[test]
    fn bookkeeping_is_never_placed() {
        let (_t, f) = setup();
        for name in [
            format!("img/{}", tar_marker("t.tgz")),
            format!("{}/x", tar_staging("t.tgz")),
        ] {
            f.open_partial("p", libc::O_RDWR, true).unwrap();
            let e = f.place("p", &name).unwrap_err();
            assert!(matches!(e, Error::BadName(_)), "{name}: {e}");
            assert!(f.root().join(&name).symlink_metadata().is_err(), "{name}");
        }
    }

    #[test]
    fn listing_marks_directories() {
        let (_t, f) = setup();
        let top = f.list("", false).unwrap();
        let names: Vec<(&str, bool)> = top.iter().map(|e| (e.name.as_str(), e.is_dir)).collect();
        assert_eq!(
            names,
            vec![
                ("a.iso", false),
                ("b.iso", false),
                ("img", true),
                ("notes.txt", false)
            ]
        );
        assert_eq!(f.list("img", true).unwrap().len(), 3);
    }
}
