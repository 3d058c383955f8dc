//! The files directory, `<base>/files`. This is the only code that turns a
//! file name (which may have come over the wire) into a path: absolute
//! names, `..`, and symlinks that lead outside the directory are refused.

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use crate::{Error, Result};

/// In-progress transfers live here, hidden from listings and never served.
pub const PARTIAL_DIR: &str = ".mm-partial";

#[derive(Debug, Clone)]
pub struct FilesDir {
    root: PathBuf,
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
        Ok(Self { root })
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
        // Control characters: no use in a file name, and a hazard on the
        // operator's terminal.
        if name.chars().any(char::is_control) {
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
                Component::RootDir | Component::Prefix(_) => {
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
        let path = self.root.join(&clean);
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
            if path == self.partial_dir() {
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
            "/etc/passwd",
            "../x",
            "a/../../x",
            ".mm-partial/1",
            "a\0b",
            "\u{1}redirect x",
            "a\nb",
        ] {
            assert!(f.resolve(bad).is_err(), "{bad} accepted");
        }
        std::os::unix::fs::symlink(t.path(), f.root().join("out")).unwrap();
        let e = f.resolve("out/secret").unwrap_err().to_string();
        assert!(e.contains("outside"), "{e}");
        std::os::unix::fs::symlink(f.root().join("img"), f.root().join("in")).unwrap();
        assert!(f.resolve("in/x.qcow2").is_ok());
        assert_eq!(FilesDir::clean("./img//x.qcow2").unwrap(), "img/x.qcow2");
        // Listings skip the escaping link.
        let names: Vec<String> = f
            .list("", true)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(!names.iter().any(|n| n.starts_with("out")), "{names:?}");
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
