//! From the mesh's answers to "who holds it": the versions of each name and
//! their holders, the operator's choice among them, and the errors that say
//! why nothing can be fetched.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use tracing::warn;

use super::{selects, Held, HolderAnswers, Select};
use crate::files::{is_bookkeeping, FilesDir};
use crate::fmt::fmt_time;
use crate::manifest::Manifest;
use crate::Error;

/// Name -> whole-file hash (hex) -> that version's manifest and holders.
pub(super) type Versions = BTreeMap<String, BTreeMap<String, (Manifest, Vec<(String, Held)>)>>;

/// Sorts the answers into versions. Offers of names that were not asked
/// for, of `tar:`'s bookkeeping (no honest node serves it), or with a bad
/// manifest, are dropped; hosts that did not answer usably are returned
/// apart, as `host (why)`.
pub(super) fn versions(pattern: &str, answers: HolderAnswers) -> (Versions, Vec<String>) {
    let mut found: Versions = BTreeMap::new();
    let mut silent = Vec::new();
    for (host, res) in answers {
        let list = match res {
            Ok(list) => list,
            Err(e) => {
                silent.push(format!("{host} ({e})"));
                continue;
            }
        };
        for mut h in list {
            // Use the name as we would write it, and only what was asked for.
            match FilesDir::clean(&h.name) {
                Ok(n)
                    if selects(pattern, &n)
                        && !n.split('/').any(is_bookkeeping)
                        && h.manifest.check().is_ok() =>
                {
                    h.name = n
                }
                _ => {
                    warn!(
                        "{host} offered a bad or unasked-for file {:?}: ignored",
                        h.name
                    );
                    continue;
                }
            }
            let v = found.entry(h.name.clone()).or_default();
            let e = v
                .entry(h.manifest.root_hex())
                .or_insert_with(|| (h.manifest.clone(), Vec::new()));
            e.1.push((host.clone(), h));
        }
    }
    (found, silent)
}

/// Keeps only the versions the operator chose: those whose hash starts
/// with `hash`, those that `from` holds whole.
/// Every host that holds a whole copy of something in `found`, sorted.
pub(super) fn whole_holders(found: &Versions) -> Vec<String> {
    let mut hosts: Vec<String> = found
        .values()
        .flat_map(|v| v.values())
        .flat_map(|(_, holders)| holders.iter())
        .filter(|(_, held)| held.partial.is_none())
        .map(|(h, _)| h.clone())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

pub(super) fn choose(found: &mut Versions, sel: &Select) {
    for versions in found.values_mut() {
        if let Some(h) = &sel.hash {
            versions.retain(|root, _| root.starts_with(&h.to_lowercase()));
        }
        if let Some(f) = &sel.from {
            versions.retain(|_, (_, holders)| {
                holders
                    .iter()
                    .any(|(host, held)| host == f && held.partial.is_none())
            });
        }
    }
    found.retain(|_, v| !v.is_empty());
}

/// Every name held in more than one version, each version with its hash,
/// size, mtime and holders.
pub(super) fn conflicts(found: &Versions) -> Option<String> {
    let conflicts: Vec<String> = found
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(name, v)| {
            let mut s = format!("{name}: {} different versions:", v.len());
            for (root, (m, holders)) in v {
                let mut hosts: Vec<&str> = holders.iter().map(|(h, _)| h.as_str()).collect();
                hosts.sort();
                let mtime = SystemTime::UNIX_EPOCH + Duration::from_nanos(m.mtime_ns.max(0) as u64);
                s.push_str(&format!(
                    "\n  hash {root} size {} mtime {} on {}",
                    m.size,
                    fmt_time(mtime),
                    hosts.join(",")
                ));
            }
            s
        })
        .collect();
    (!conflicts.is_empty()).then(|| conflicts.join("\n"))
}

/// Why nothing can be fetched for `pattern`.
/// Nothing to fetch: why, and where it is if the selection was the reason
/// (`holders`: who holds a whole copy of any version).
pub(super) fn no_holder(
    pattern: &str,
    asked: usize,
    sel: &Select,
    silent: &[String],
    holders: &[String],
) -> Error {
    let mut e = match (&sel.from, &sel.hash) {
        (Some(f), None) if !holders.is_empty() => {
            format!(
                "{pattern}: {f} does not hold it; held by {}",
                holders.join(", ")
            )
        }
        (_, Some(h)) if !holders.is_empty() => format!(
            "{pattern}: no version with hash {h}{}; other versions are held by {} (see \
             `file list mesh {pattern}`)",
            sel.from
                .as_ref()
                .map(|f| format!(" on {f}"))
                .unwrap_or_default(),
            holders.join(", ")
        ),
        _ if asked == 0 => format!("{pattern}: not here, and no other node is in the mesh"),
        _ => format!(
            "{pattern}: no node holds it (asked {asked} other node{})",
            if asked == 1 { "" } else { "s" }
        ),
    };
    if !silent.is_empty() {
        e.push_str(&format!("; no usable answer from {}", silent.join(", ")));
    }
    Error::NoHolder(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A holder that offers `tar:`'s records or staging (never served by
    /// an honest one) is not believed: a record fetched here would tell
    /// `tar:` what was unpacked, and into what.
    #[test]
    fn bookkeeping_names_offered_by_a_holder_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"h ../../etc\n").unwrap();
        let f = std::fs::File::open(&p).unwrap();
        let m = Manifest::build(&f, &f.metadata().unwrap(), crate::manifest::CHUNK_SIZE).unwrap();
        let held = |name: &str| Held {
            name: name.into(),
            manifest: m.clone(),
            partial: None,
        };
        let offers = vec![
            held("img/.pkg.tar.mm-tar"),
            held(".pkg.tar.mm-unpacking-7/pkg/x"),
            held("img/a.iso"),
        ];
        for pattern in ["img", "*", ".*"] {
            let (found, _) = versions(pattern, vec![("evil".into(), Ok(offers.clone()))]);
            let names: Vec<&String> = found.keys().collect();
            assert!(
                names.iter().all(|n| !n.contains(".mm-")),
                "{pattern}: {names:?}"
            );
        }
    }

    #[test]
    fn no_holder_counts_the_nodes_asked_in_words() {
        let say = |asked| no_holder("a.iso", asked, &Select::default(), &[], &[]).to_string();
        assert!(
            say(1).contains("no node holds it (asked 1 other node)"),
            "{}",
            say(1)
        );
        assert!(say(3).contains("(asked 3 other nodes)"), "{}", say(3));
        assert!(
            say(0).ends_with("a.iso: not here, and no other node is in the mesh"),
            "{}",
            say(0)
        );
        let silent = no_holder(
            "a.iso",
            2,
            &Select::default(),
            &["h2 (timed out)".into()],
            &[],
        );
        assert!(
            silent
                .to_string()
                .ends_with("; no usable answer from h2 (timed out)"),
            "{silent}"
        );
    }
}
