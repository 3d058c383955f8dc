//! VLAN aliases (`LAN`, `DMZ`): each namespace's table, and the pure
//! allocation of free ids across all of them, as minimega allocates: the
//! first id from the namespace's next that no namespace has aliased or
//! used literally, and (for a namespace on the default range) outside the
//! ranges other namespaces reserved. So two namespaces never share a VLAN
//! on a bridge by accident.
//!
//! Ranges here are inclusive (`101-4095`); minimega's max is exclusive.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The default range, inclusive.
pub(crate) const MIN: u16 = 101;
pub(crate) const MAX: u16 = 4095;

/// One namespace's VLANs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Table {
    pub(crate) aliases: BTreeMap<String, u16>,
    /// Ids used literally (`vm config net 105`) or by `vlans blacklist`:
    /// never allocated, in any namespace.
    pub(crate) blacklist: BTreeSet<u16>,
    /// `vlans range MIN MAX`; None: the default.
    pub(crate) range: Option<(u16, u16)>,
    /// Where the next allocation starts looking.
    pub(crate) next: Option<u16>,
}

impl Table {
    pub(crate) fn range(&self) -> (u16, u16) {
        self.range.unwrap_or((MIN, MAX))
    }

    pub(crate) fn show_range(&self) -> String {
        let (a, b) = self.range();
        format!("{a}-{b}")
    }
}

/// A VLAN id as a word names it: 1 to 4095.
pub(crate) fn parse_id(w: &str) -> Result<Option<u16>> {
    let Ok(n) = w.parse::<i64>() else {
        return Ok(None);
    };
    match n {
        0 => Err(Error::usage(
            "VLAN 0 would leave the port untagged, a trunk that sees every VLAN; use a VLAN \
             from 1 to 4095 (bridge trunk makes a trunk)",
        )),
        1..=4095 => Ok(Some(n as u16)),
        _ => Err(Error::Usage(format!(
            "invalid VLAN {n}: a VLAN is from 1 to 4095"
        ))),
    }
}

/// An alias: what a word may call a VLAN.
pub(crate) fn check_alias(a: &str) -> Result<()> {
    let ok = !a.is_empty()
        && a.len() <= 64
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "invalid VLAN alias `{a}`: 1 to 64 letters, digits, '-', '_' and '.'"
        )))
    }
}

fn used(all: &BTreeMap<String, Table>, id: u16) -> Option<(&str, String)> {
    for (ns, t) in all {
        if let Some((a, _)) = t.aliases.iter().find(|(_, v)| **v == id) {
            return Some((ns, a.clone()));
        }
    }
    None
}

fn blacklisted(all: &BTreeMap<String, Table>, id: u16) -> bool {
    all.values().any(|t| t.blacklist.contains(&id))
}

/// What `word` is in namespace `ns`: a literal id (blacklisted from then
/// on) or an alias, which is allocated if it is new. `other//ALIAS` is an
/// alias of namespace `other`. Changes `all` only on success.
pub(crate) fn lookup(
    all: &mut BTreeMap<String, Table>,
    ns: &str,
    word: &str,
) -> Result<(u16, Option<String>)> {
    if let Some(id) = parse_id(word)? {
        all.entry(ns.to_string()).or_default().blacklist.insert(id);
        return Ok((id, None));
    }
    let (ns, alias) = match word.split_once("//") {
        Some((n, a)) => (n, a),
        None => (ns, word),
    };
    check_alias(alias)?;
    if let Some(id) = all.get(ns).and_then(|t| t.aliases.get(alias)) {
        return Ok((*id, Some(word.to_string())));
    }
    let id = allocate(all, ns)?;
    let t = all.entry(ns.to_string()).or_default();
    t.aliases.insert(alias.to_string(), id);
    t.next = Some(id.saturating_add(1));
    Ok((id, Some(word.to_string())))
}

/// The id `ns`'s next new alias gets; None when its range is full.
pub(crate) fn next_free(all: &BTreeMap<String, Table>, ns: &str) -> Option<u16> {
    allocate(all, ns).ok()
}

/// The first free id for `ns`.
fn allocate(all: &BTreeMap<String, Table>, ns: &str) -> Result<u16> {
    let t = all.get(ns).cloned().unwrap_or_default();
    let (lo, hi) = t.range();
    let start = t.next.filter(|n| (lo..=hi).contains(n)).unwrap_or(lo);
    let others: Vec<(u16, u16)> = all
        .iter()
        .filter(|(n, _)| *n != ns)
        .filter_map(|(_, t)| t.range)
        .collect();
    let free = |id: u16| {
        used(all, id).is_none()
            && !blacklisted(all, id)
            && (t.range.is_some() || !others.iter().any(|(a, b)| (*a..=*b).contains(&id)))
    };
    // From next to the end, then from the start (ids freed by clear vlans).
    (start..=hi)
        .chain(lo..start)
        .find(|id| free(*id))
        .ok_or_else(|| {
            Error::Refused(format!(
                "out of VLANs: every id of {ns}'s range {lo}-{hi} is taken"
            ))
        })
}

/// `vlans add ALIAS ID`.
pub(crate) fn add(
    all: &mut BTreeMap<String, Table>,
    ns: &str,
    alias: &str,
    id: &str,
) -> Result<()> {
    check_alias(alias)?;
    let Some(id) = parse_id(id)? else {
        return Err(Error::Usage(format!("expected integer VLAN, not `{id}`")));
    };
    if all.get(ns).is_some_and(|t| t.aliases.contains_key(alias)) {
        return Err(Error::Usage(format!("alias already in use: {alias}")));
    }
    if let Some((n, a)) = used(all, id) {
        return Err(Error::Usage(format!(
            "vlan already in use: {id} is {a} in namespace {n}"
        )));
    }
    all.entry(ns.to_string())
        .or_default()
        .aliases
        .insert(alias.to_string(), id);
    Ok(())
}

/// `vlans range MIN MAX`.
pub(crate) fn set_range(
    all: &mut BTreeMap<String, Table>,
    ns: &str,
    min: &str,
    max: &str,
) -> Result<()> {
    let (Some(a), Some(b)) = (parse_id(min)?, parse_id(max)?) else {
        return Err(Error::usage("expected integer values for min/max"));
    };
    if b < a {
        return Err(Error::Usage(format!(
            "vlans range {a} {b}: the max is below the min"
        )));
    }
    for (n, t) in all.iter().filter(|(n, _)| *n != ns) {
        if let Some((x, y)) = t.range {
            if a <= y && x <= b {
                return Err(Error::Usage(format!(
                    "range overlaps with another namespace: {n} ({x}-{y})"
                )));
            }
        }
    }
    let t = all.entry(ns.to_string()).or_default();
    t.range = Some((a, b));
    t.next = Some(a);
    Ok(())
}

/// `clear vlans [PREFIX]`: the aliases (all, or those starting with
/// PREFIX); all of them also clears the blacklist and the range.
pub(crate) fn clear(t: &mut Table, prefix: Option<&str>) {
    match prefix {
        Some(p) => t.aliases.retain(|a, _| !a.starts_with(p)),
        None => *t = Table::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(all: &mut BTreeMap<String, Table>, ns: &str, w: &str) -> u16 {
        lookup(all, ns, w).unwrap().0
    }

    #[test]
    fn aliases_are_allocated_as_minimega_allocates_them() {
        let mut all = BTreeMap::new();
        // A literal id is used as is, and never allocated after.
        assert_eq!(lookup(&mut all, "mm", "101").unwrap(), (101, None));
        assert_eq!(id(&mut all, "mm", "A"), 102);
        assert_eq!(id(&mut all, "mm", "B"), 103);
        assert_eq!(id(&mut all, "mm", "A"), 102, "an alias has one id");
        // Namespaces never share an id; `vlans range`'s next says what a
        // new alias gets, past what the others took (foo's own counter
        // would say 101).
        assert_eq!(next_free(&all, "foo"), Some(104));
        assert_eq!(id(&mut all, "foo", "A"), 104);
        assert_eq!(id(&mut all, "bar", "A"), 105);
        assert_eq!(next_free(&all, "foo"), Some(106));
        // Another namespace's alias, by name.
        assert_eq!(
            lookup(&mut all, "bar", "foo//A").unwrap(),
            (104, Some("foo//A".into()))
        );
        set_range(&mut all, "foo", "120", "130").unwrap();
        assert_eq!(id(&mut all, "foo", "B"), 120);
        // The default range passes over ranges others reserved.
        set_range(&mut all, "baz", "106", "108").unwrap();
        assert_eq!(id(&mut all, "mm", "C"), 109);
        for (a, b, why) in [
            ("125", "140", "overlaps with another namespace: foo"),
            ("50", "40", "below the min"),
            ("x", "40", "expected integer"),
            ("0", "40", "VLAN 0"),
        ] {
            let e = set_range(&mut all, "bar", a, b).unwrap_err().to_string();
            assert!(e.contains(why), "{a} {b}: {e}");
        }
        for (w, why) in [("4096", "from 1 to 4095"), ("a,b", "invalid VLAN alias")] {
            let e = lookup(&mut all, "mm", w).unwrap_err().to_string();
            assert!(e.contains(why), "{w}: {e}");
        }
        // Exhaustion, and ids freed by clear vlans come back.
        set_range(&mut all, "tiny", "200", "201").unwrap();
        assert_eq!(id(&mut all, "tiny", "x"), 200);
        assert_eq!(id(&mut all, "tiny", "y"), 201);
        assert_eq!(next_free(&all, "tiny"), None);
        let e = lookup(&mut all, "tiny", "z").unwrap_err().to_string();
        assert!(e.contains("out of VLANs"), "{e}");
        clear(all.get_mut("tiny").unwrap(), Some("x"));
        assert_eq!(id(&mut all, "tiny", "z"), 200);
        // vlans add.
        add(&mut all, "mm", "D", "300").unwrap();
        assert_eq!(id(&mut all, "mm", "D"), 300);
        for (a, v, why) in [
            ("D", "301", "alias already in use"),
            ("E", "104", "vlan already in use: 104 is A in namespace foo"),
            ("E", "x", "expected integer VLAN"),
        ] {
            let e = add(&mut all, "mm", a, v).unwrap_err().to_string();
            assert!(e.contains(why), "{a} {v}: {e}");
        }
        // A blacklisted id is never allocated.
        all.get_mut("mm").unwrap().blacklist.insert(110);
        assert_eq!(id(&mut all, "mm", "F"), 111);
        clear(all.get_mut("mm").unwrap(), None);
        assert_eq!(all["mm"], Table::default());
    }
}
