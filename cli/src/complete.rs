//! Tab completion in the shell: a `file:` word completes across the mesh,
//! directory by directory, from the names any node holds (`file list
//! mesh DIR` asked of the local node, over a connection of its own).

use std::path::PathBuf;
use std::time::Duration;

use mm_node::control::Client;
use rustyline::completion::{Completer, Pair};
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Context, Helper};

/// How long a completion may wait for the mesh: a Tab must not hang.
const ASK_FOR: Duration = Duration::from_secs(3);

pub(crate) struct MeshFiles {
    pub(crate) rt: tokio::runtime::Handle,
    pub(crate) base: PathBuf,
}

impl MeshFiles {
    /// Every name under `dir` ("" for all) that some node holds.
    fn names(&self, dir: &str) -> Vec<String> {
        let mut argv: Vec<String> = ["file", "list", "mesh"].map(String::from).to_vec();
        if !dir.is_empty() {
            argv.push(dir.to_string());
        }
        let base = self.base.clone();
        let answer = self.rt.block_on(async move {
            tokio::time::timeout(ASK_FOR, async {
                Client::connect(&base).await.ok()?.run(&argv).await.ok()
            })
            .await
            .ok()
            .flatten()
        });
        let mut out = Vec::new();
        for r in answer.unwrap_or_default() {
            let (Some(d), Some(n)) = (
                r.header.iter().position(|h| h == "dir"),
                r.header.iter().position(|h| h == "name"),
            ) else {
                continue;
            };
            for row in &r.tabular {
                if let (Some(is_dir), Some(name)) = (row.get(d), row.get(n)) {
                    let mut name = name.clone();
                    if !is_dir.is_empty() {
                        name.push('/');
                    }
                    out.push(name);
                }
            }
        }
        out
    }
}

/// What `typed` may complete to, one directory level at a time: of
/// `names` (directories end in `/`), those that start with it, cut after
/// the first `/` past the directory being typed in.
pub(crate) fn next_level(names: &[String], typed: &str) -> Vec<String> {
    let dir_len = typed.rfind('/').map_or(0, |i| i + 1);
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with(typed) && n.as_str() != typed)
        .map(|n| match n[dir_len..].find('/') {
            Some(i) => n[..dir_len + i + 1].to_string(),
            None => n.clone(),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

impl Completer for MeshFiles {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _ctx: &Context<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let Some(typed) = before[start..].strip_prefix("file:") else {
            return Ok((pos, Vec::new()));
        };
        let dir = typed.rfind('/').map_or("", |i| &typed[..i]);
        let found = next_level(&self.names(dir), typed);
        Ok((
            start,
            found
                .into_iter()
                .map(|n| Pair {
                    display: n.clone(),
                    replacement: format!("file:{n}"),
                })
                .collect(),
        ))
    }
}

impl Hinter for MeshFiles {
    type Hint = String;
}
impl Highlighter for MeshFiles {}
impl Validator for MeshFiles {}
impl Helper for MeshFiles {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completion_goes_one_directory_at_a_time() {
        let names: Vec<String> = [
            "images/",
            "images/a.img",
            "images/sub/",
            "images/sub/b.img",
            "iso/",
            "notes.txt",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(next_level(&names, "i"), ["images/", "iso/"]);
        assert_eq!(
            next_level(&names, "images/"),
            ["images/a.img", "images/sub/"]
        );
        assert_eq!(next_level(&names, "images/s"), ["images/sub/"]);
        assert_eq!(next_level(&names, "images/sub/"), ["images/sub/b.img"]);
        assert!(next_level(&names, "x").is_empty());
    }
}
