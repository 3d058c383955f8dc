//! Host lists as minimega writes them: `node1,node2`, `node[1-8]`,
//! `kn[01-05,20]`, and the reverse (`mm[1-3],other`) for display.

use std::collections::BTreeMap;

use crate::{Error, Result};

/// Most names one range may expand to; a typo like `n[1-99999999]` should be
/// an error, not an allocation.
const MAX_HOSTS: usize = 65536;

pub(crate) fn expand(spec: &str) -> Result<Vec<String>> {
    let mut out = expand_list(spec).map_err(Error::Usage)?;
    let mut seen = std::collections::HashSet::new();
    out.retain(|h| seen.insert(h.clone()));
    Ok(out)
}

/// [`expand`] keeping names given twice, for lists where that is an error
/// the caller reports (VM names).
pub(crate) fn expand_all(spec: &str) -> Result<Vec<String>> {
    expand_list(spec).map_err(Error::Usage)
}

fn expand_list(spec: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in split_top(spec)? {
        if item.is_empty() {
            return Err(format!("malformed host list '{spec}': empty name"));
        }
        match item.find('[') {
            None => {
                if item.contains(']') {
                    return Err(format!("malformed host list '{spec}': unbalanced ']'"));
                }
                out.push(item.to_string());
                if out.len() > MAX_HOSTS {
                    return Err(format!("the list names more than {MAX_HOSTS} hosts"));
                }
            }
            Some(open) => {
                let close = item[open..]
                    .find(']')
                    .map(|i| i + open)
                    .ok_or_else(|| format!("malformed host list '{spec}': missing ']'"))?;
                let (prefix, inner, suffix) =
                    (&item[..open], &item[open + 1..close], &item[close + 1..]);
                if suffix.contains('[') || suffix.contains(']') {
                    return Err(format!(
                        "malformed host list '{spec}': one [range] per name"
                    ));
                }
                let budget = MAX_HOSTS.saturating_sub(out.len());
                for n in expand_range(inner, budget)
                    .map_err(|e| format!("malformed host list '{spec}': {e}"))?
                {
                    out.push(format!("{prefix}{n}{suffix}"));
                }
            }
        }
    }
    Ok(out)
}

/// Splits on commas outside brackets.
fn split_top(spec: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in spec.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&spec[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("malformed host list '{spec}': unbalanced brackets"));
        }
    }
    if depth != 0 {
        return Err(format!("malformed host list '{spec}': missing ']'"));
    }
    parts.push(&spec[start..]);
    Ok(parts)
}

/// `01-05,20` → `01 02 03 04 05 20`. A bound written with leading zeros sets
/// the width of every number in that part.
fn expand_range(inner: &str, budget: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in inner.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                Err(format!("'{part}' is not a number or a range like 1-8"))
            } else {
                s.parse::<u64>().map_err(|e| format!("'{s}': {e}"))
            }
        };
        let (lo, hi) = (parse(a)?, parse(b)?);
        if lo > hi {
            return Err(format!("range {part} runs backwards"));
        }
        if hi - lo >= budget.saturating_sub(out.len()) as u64 {
            return Err(format!("the list names more than {MAX_HOSTS} hosts"));
        }
        if a.len() > 20 || b.len() > 20 {
            return Err(format!("'{part}': numbers of at most 20 digits"));
        }
        let width = if a.starts_with('0') && a.len() > 1 {
            a.len()
        } else {
            0
        };
        for n in lo..=hi {
            out.push(format!("{n:0width$}"));
        }
    }
    Ok(out)
}

/// The reverse of [`expand`]: `mm1 mm2 mm3 x` → `mm[1-3],x`.
pub(crate) fn compress(names: &[String]) -> String {
    // Group by prefix and digit width (so 01 and 1 never merge).
    let mut groups: BTreeMap<(String, usize), Vec<u64>> = BTreeMap::new();
    let mut plain = Vec::new();
    for n in names {
        let digits = n.bytes().rev().take_while(|c| c.is_ascii_digit()).count();
        let (prefix, num) = n.split_at(n.len() - digits);
        match num.parse::<u64>() {
            Ok(v) if digits > 0 => {
                // A lone 0 is not zero-padding: vm-0 joins vm-1.
                let width = if num.starts_with('0') && digits > 1 {
                    digits
                } else {
                    0
                };
                groups
                    .entry((prefix.to_string(), width))
                    .or_default()
                    .push(v)
            }
            _ => plain.push(n.clone()),
        }
    }
    let mut parts: Vec<String> = plain;
    for ((prefix, width), mut nums) in groups {
        nums.sort();
        nums.dedup();
        if nums.len() == 1 {
            parts.push(format!("{prefix}{:0width$}", nums[0]));
            continue;
        }
        let mut runs = Vec::new();
        let mut i = 0;
        while i < nums.len() {
            let mut j = i;
            while j + 1 < nums.len() && nums[j + 1] == nums[j] + 1 {
                j += 1;
            }
            runs.push(if i == j {
                format!("{:0width$}", nums[i])
            } else {
                format!("{:0width$}-{:0width$}", nums[i], nums[j])
            });
            i = j + 1;
        }
        parts.push(format!("{prefix}[{}]", runs.join(",")));
    }
    parts.sort();
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn expands_minimega_ranges() {
        assert_eq!(expand("a").unwrap(), v(&["a"]));
        assert_eq!(expand("a,b").unwrap(), v(&["a", "b"]));
        assert_eq!(
            expand("node[1-3]").unwrap(),
            v(&["node1", "node2", "node3"])
        );
        assert_eq!(
            expand("kn[01-03,20]").unwrap(),
            v(&["kn01", "kn02", "kn03", "kn20"])
        );
        assert_eq!(
            expand("x,n[8-10]-eth").unwrap(),
            v(&["x", "n8-eth", "n9-eth", "n10-eth"])
        );
        assert_eq!(expand("a,a").unwrap(), v(&["a"]));
    }

    #[test]
    fn malformed_ranges_are_clear_errors() {
        for bad in [
            "n[1-3",
            "n1-3]",
            "n[a-b]",
            "n[3-1]",
            "n[]",
            "a,,b",
            "n[1-3][4]",
            "n[[1]]",
            "",
            "n[1-9999999]",
        ] {
            let e = expand(bad).unwrap_err().to_string();
            assert!(e.contains("host list") || e.contains("range"), "{bad}: {e}");
        }
    }

    #[test]
    fn no_list_names_more_than_the_cap() {
        // Names before a range used to leave it a budget that wrapped.
        let mut spec = vec!["a"; 70_000].join(",");
        spec.push_str(",x[1-100000]");
        let e = expand(&spec).unwrap_err().to_string();
        assert!(e.contains("more than 65536"), "{e}");
        let many: Vec<String> = (0..70_000).map(|i| format!("h{i}")).collect();
        assert!(expand(&many.join(",")).is_err());
        assert_eq!(expand("n[1-65536]").unwrap().len(), 65536);
    }

    #[test]
    fn compress_is_the_inverse() {
        let names = v(&["mm1", "mm2", "mm3", "mm5", "other", "kn01", "kn02"]);
        let c = compress(&names);
        assert_eq!(c, "kn[01-02],mm[1-3,5],other");
        let mut back = expand(&c).unwrap();
        back.sort();
        let mut orig = names.clone();
        orig.sort();
        assert_eq!(back, orig);
        // 0 is a number like any other, 00 a padded one.
        assert_eq!(compress(&v(&["vm-0", "vm-1", "vm-2"])), "vm-[0-2]");
        assert_eq!(compress(&v(&["a00", "a01", "a1"])), "a1,a[00-01]");
    }
}
