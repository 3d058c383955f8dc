//! The one command grammar, in minimega's pattern notation. Commands from
//! the CLI, the interactive shell and `mesh send` are all parsed here.
//!
//! Pattern items: `word` a literal; `<name>` a required value; `[name]` an
//! optional value; `<a,b>` / `[a,b]` a required / optional choice of
//! literals; `<name>...` one or more values; `(command)` a nested command
//! (the rest of the line).

use std::collections::{HashMap, HashSet};

use super::Spec;
use crate::{Error, Result};

/// A command line as a spec's pattern matched it.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Call {
    pub(crate) id: &'static str,
    pub(crate) strings: HashMap<String, String>,
    pub(crate) bools: HashSet<String>,
    pub(crate) lists: HashMap<String, Vec<String>>,
    /// The nested command of a `(command)` item.
    pub(crate) sub: Vec<String>,
    /// A word was abbreviated (`vm inf`): an exact match of another
    /// command wins over this one.
    inexact: bool,
}

impl Call {
    pub(crate) fn arg(&self, name: &str) -> Option<&str> {
        self.strings.get(name).map(String::as_str)
    }

    pub(crate) fn has(&self, word: &str) -> bool {
        self.bools.contains(word)
    }
}

#[derive(Debug, Clone)]
enum Item {
    Lit(String),
    Value { name: String, optional: bool },
    Choice { words: Vec<String>, optional: bool },
    List { name: String, optional: bool },
    Sub,
}

fn compile(pattern: &str) -> Vec<Item> {
    pattern
        .split_whitespace()
        .map(|w| {
            let (body, list) = match w.strip_suffix("...") {
                Some(b) => (b, true),
                None => (w, false),
            };
            let (inner, optional) =
                if let Some(x) = body.strip_prefix('<').and_then(|x| x.strip_suffix('>')) {
                    (x, false)
                } else if let Some(x) = body.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
                    (x, true)
                } else if body.starts_with('(') && body.ends_with(')') {
                    return Item::Sub;
                } else {
                    return Item::Lit(body.to_string());
                };
            if list {
                Item::List {
                    name: inner.to_string(),
                    optional,
                }
            } else if inner.contains(',') {
                Item::Choice {
                    words: inner
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                    optional,
                }
            } else {
                Item::Value {
                    name: inner.to_string(),
                    optional,
                }
            }
        })
        .collect()
}

fn matches(items: &[Item], args: &[String], call: &mut Call) -> bool {
    let Some((first, rest)) = items.split_first() else {
        return args.is_empty();
    };
    match first {
        Item::Lit(w) => {
            let Some(a) = args.first() else {
                return false;
            };
            let exact = a == w;
            if !exact && (a.is_empty() || !w.starts_with(a.as_str())) {
                return false;
            }
            let ok = matches(rest, &args[1..], call);
            call.inexact |= ok && !exact;
            ok
        }
        Item::Value { name, optional } => {
            if let Some(a) = args.first() {
                let mut trial = Call::default();
                if matches(rest, &args[1..], &mut trial) {
                    merge(call, trial);
                    call.strings.insert(name.clone(), a.clone());
                    return true;
                }
            }
            *optional && matches(rest, args, call)
        }
        Item::Choice { words, optional } => {
            if let Some(word) = args.first().and_then(|a| choose(words, a)) {
                let mut trial = Call::default();
                if matches(rest, &args[1..], &mut trial) {
                    merge(call, trial);
                    call.inexact |= word != args[0];
                    call.bools.insert(word.to_string());
                    return true;
                }
            }
            *optional && matches(rest, args, call)
        }
        Item::List { name, optional } => {
            if args.is_empty() && !optional {
                return false;
            }
            call.lists.insert(name.clone(), args.to_vec());
            true
        }
        Item::Sub => {
            if args.is_empty() {
                return false;
            }
            call.sub = args.to_vec();
            true
        }
    }
}

/// The word of a choice that `a` is, or abbreviates and no other does.
fn choose<'a>(words: &'a [String], a: &str) -> Option<&'a str> {
    if let Some(w) = words.iter().find(|w| *w == a) {
        return Some(w);
    }
    let mut prefixed = words.iter().filter(|w| !a.is_empty() && w.starts_with(a));
    match (prefixed.next(), prefixed.next()) {
        (Some(w), None) => Some(w),
        _ => None,
    }
}

fn merge(into: &mut Call, from: Call) {
    into.inexact |= from.inexact;
    into.strings.extend(from.strings);
    into.bools.extend(from.bools);
    into.lists.extend(from.lists);
    if !from.sub.is_empty() {
        into.sub = from.sub;
    }
}

fn literal_prefix(pattern: &str) -> Vec<&str> {
    pattern
        .split_whitespace()
        .take_while(|w| !w.starts_with(['<', '[', '(']))
        .collect()
}

/// The first spec whose pattern takes `argv`, and what it took.
pub(crate) fn parse(specs: &[&'static Spec], argv: &[String]) -> Result<(&'static Spec, Call)> {
    if argv.is_empty() {
        return Err(Error::usage("empty command; try `help`"));
    }
    // Words may be abbreviated, as in minimega: the first command that
    // takes the words as typed wins, else the one command that takes
    // them abbreviated; two are ambiguous.
    let mut abbreviated: Vec<(&'static Spec, Call, &str)> = Vec::new();
    for spec in specs {
        for p in spec.patterns {
            let mut call = Call {
                id: spec.id,
                ..Call::default()
            };
            if matches(&compile(p), argv, &mut call) {
                if !call.inexact {
                    return Ok((spec, call));
                }
                if !abbreviated.iter().any(|(s, _, _)| s.id == spec.id) {
                    abbreviated.push((spec, call, p));
                }
            }
        }
    }
    if abbreviated.len() == 1 {
        let (spec, call, _) = abbreviated.remove(0);
        return Ok((spec, call));
    }
    if abbreviated.len() > 1 {
        let could: Vec<&str> = abbreviated.iter().map(|(_, _, p)| *p).collect();
        return Err(Error::Usage(format!(
            "ambiguous command: {}; it could be:\n  {}",
            argv.join(" "),
            could.join("\n  ")
        )));
    }
    // No match: find the commands whose leading words match best, to say
    // whether the command is unknown or only its arguments are wrong.
    let mut best = 0;
    let mut near: Vec<&str> = Vec::new();
    for spec in specs {
        for p in spec.patterns {
            let lits = literal_prefix(p);
            let n = lits
                .iter()
                .zip(argv)
                .take_while(|(l, a)| **l == a.as_str())
                .count();
            if n == lits.len() && n > best {
                best = n;
                near.clear();
            }
            if n == lits.len() && n == best && n > 0 {
                near.push(p);
            }
        }
    }
    let line = argv.join(" ");
    if near.is_empty() {
        let known = specs.iter().any(|s| {
            s.patterns
                .iter()
                .any(|p| p.split_whitespace().next() == Some(argv[0].as_str()))
        });
        // `vm` alone: the start of commands, not a command.
        let starts = specs.iter().any(|s| {
            s.patterns.iter().any(|p| {
                let lits = literal_prefix(p);
                lits.len() > argv.len() && lits.iter().zip(argv).all(|(l, a)| *l == a.as_str())
            })
        });
        return Err(Error::Usage(if starts {
            format!("incomplete command: {line}; try `help {line}`")
        } else if known {
            format!("unknown command: {line}; try `help {}`", argv[0])
        } else {
            format!("unknown command: {}; try `help`", argv[0])
        }));
    }
    Err(Error::Usage(format!(
        "invalid arguments: {line}\nusage: {}",
        near.join("\nusage: ")
    )))
}

/// What the pattern notation means, at the top of the command list: the
/// patterns are minimega's, and read wrongly they look like shell syntax.
const NOTATION: &str = "Notation: a plain word is typed as is; <name> is a value you give, \
[name] an optional one; <a,b> is one of the words a or b, [a,b] one of them or neither, \
[a,] the word a or nothing; <name>... one or more values; (command) any command, to the \
end of the line.";

/// Patterns longer than this do not set the description column.
const LONG_PATTERN: usize = 44;

/// The width of the `help` command's answer: the node knows no terminal.
pub(crate) const HELP_WIDTH: usize = 80;

/// `help` and `help WORDS...`, wrapped to `width` columns.
pub(crate) fn help(specs: &[&'static Spec], words: &[String], width: usize) -> Result<String> {
    let chosen: Vec<&Spec> = specs
        .iter()
        .copied()
        .filter(|s| {
            s.patterns.iter().any(|p| {
                let pw: Vec<&str> = p.split_whitespace().collect();
                words.len() <= pw.len() && words.iter().zip(&pw).all(|(a, b)| a == b)
            })
        })
        .collect();
    if chosen.is_empty() {
        return Err(Error::Usage(format!(
            "no command named {}; try `help`",
            words.join(" ")
        )));
    }
    let mut out = String::new();
    if chosen.len() == 1 && !words.is_empty() {
        let s = chosen[0];
        out.push_str(&wrap("", s.short, width, 0));
        out.push('\n');
        for p in s.patterns {
            out.push_str(&wrap("usage: ", p, width, 7));
        }
        if !s.long.is_empty() {
            out.push('\n');
            out.push_str(&wrap("", s.long, width, 0));
        }
        return Ok(out);
    }
    if words.is_empty() {
        out.push_str(&wrap("", NOTATION, width, 0));
        out.push('\n');
    }
    // The description column: past the patterns, but not past a long
    // one (`vm config`'s), which gets a line of its own instead.
    let col = chosen
        .iter()
        .flat_map(|s| s.patterns.iter())
        .map(|p| p.len())
        .filter(|n| *n <= LONG_PATTERN)
        .max()
        .unwrap_or(0)
        + 2;
    for s in chosen {
        for (i, p) in s.patterns.iter().enumerate() {
            let d = if i == 0 { s.short } else { "" };
            if col + 20 <= width && p.len() + 2 > col {
                out.push_str(&wrap("", p, width, 4));
                if !d.is_empty() {
                    out.push_str(&wrap(&" ".repeat(col), d, width, col));
                }
            } else if col + 20 <= width {
                // The description in its column, continued beneath itself.
                out.push_str(&wrap(&format!("{p:col$}"), d, width, col));
            } else {
                // Too narrow for two columns: the description goes below.
                out.push_str(&wrap("", p, width, 4));
                if !d.is_empty() {
                    out.push_str(&wrap("    ", d, width, 4));
                }
            }
        }
    }
    Ok(out)
}

/// Fills `text` into lines of at most `width` columns after `first` (kept
/// as it is, padding and all), continuation lines indented by `indent`; a
/// word longer than a line keeps a line of its own. Each line ends with a
/// newline.
pub(crate) fn wrap(first: &str, text: &str, width: usize, indent: usize) -> String {
    let mut out = String::new();
    let mut line = first.to_string();
    let mut fresh = true;
    for w in text.split_whitespace() {
        let len = line.chars().count();
        if len > indent.max(first.chars().count()) && len + 1 + w.chars().count() > width {
            out.push_str(line.trim_end());
            out.push('\n');
            line = " ".repeat(indent);
            fresh = true;
        }
        if !fresh {
            line.push(' ');
        }
        line.push_str(w);
        fresh = false;
    }
    out.push_str(line.trim_end());
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use futures::FutureExt;

    static TABLE: &[Spec] = &[
        Spec {
            id: "degree",
            patterns: &["mesh degree [degree]"],
            short: "view or set the degree",
            long: "Long text.",
            run: |_, _| async { Ok(Vec::new()) }.boxed(),
        },
        Spec {
            id: "list",
            patterns: &["mesh list [all,peers]"],
            short: "list",
            long: "",
            run: |_, _| async { Ok(Vec::new()) }.boxed(),
        },
        Spec {
            id: "send",
            patterns: &["mesh send <hosts> (command)"],
            short: "send",
            long: "",
            run: |_, _| async { Ok(Vec::new()) }.boxed(),
        },
        Spec {
            id: "get",
            patterns: &["file get <name> [from] <host>", "file get <name>"],
            short: "get",
            long: "",
            run: |_, _| async { Ok(Vec::new()) }.boxed(),
        },
        Spec {
            id: "del",
            patterns: &["file delete <glob>..."],
            short: "del",
            long: "",
            run: |_, _| async { Ok(Vec::new()) }.boxed(),
        },
    ];

    fn specs() -> Vec<&'static Spec> {
        TABLE.iter().collect()
    }

    fn parse(specs: Vec<&'static Spec>, argv: &[String]) -> std::result::Result<Call, String> {
        super::parse(&specs, argv)
            .map(|(_, c)| c)
            .map_err(|e| e.to_string())
    }

    fn help(specs: Vec<&'static Spec>, words: &[String]) -> std::result::Result<String, String> {
        super::help(&specs, words, 80).map_err(|e| e.to_string())
    }

    fn a(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn optional_values_and_choices() {
        let c = parse(specs(), &a("mesh degree")).unwrap();
        assert_eq!((c.id, c.arg("degree")), ("degree", None));
        let c = parse(specs(), &a("mesh degree 4")).unwrap();
        assert_eq!(c.arg("degree"), Some("4"));
        let c = parse(specs(), &a("mesh list peers")).unwrap();
        assert!(c.has("peers") && !c.has("all"));
        assert!(parse(specs(), &a("mesh list bogus")).is_err());
    }

    #[test]
    fn nested_commands_and_lists_take_the_rest() {
        let c = parse(specs(), &a("mesh send n[1-3] mesh status")).unwrap();
        assert_eq!(c.arg("hosts"), Some("n[1-3]"));
        assert_eq!(c.sub, a("mesh status"));
        let c = parse(specs(), &a("file delete a b c")).unwrap();
        assert_eq!(c.lists["glob"], a("a b c"));
    }

    #[test]
    fn backtracks_over_optional_items() {
        let c = parse(specs(), &a("file get x from h1")).unwrap();
        assert_eq!((c.arg("name"), c.arg("host")), (Some("x"), Some("h1")));
        let c = parse(specs(), &a("file get x")).unwrap();
        assert_eq!(c.arg("name"), Some("x"));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let e = parse(specs(), &a("mesh degree 1 2")).unwrap_err();
        assert!(e.contains("usage: mesh degree [degree]"), "{e}");
        let e = parse(specs(), &a("mesh send")).unwrap_err();
        assert!(e.contains("usage: mesh send <hosts> (command)"), "{e}");
        let e = parse(specs(), &a("mesh")).unwrap_err();
        assert!(
            e.contains("incomplete command: mesh; try `help mesh`"),
            "{e}"
        );
        let e = parse(specs(), &a("mesh bogus")).unwrap_err();
        assert!(e.contains("unknown command: mesh bogus"), "{e}");
        let e = parse(specs(), &a("frobnicate")).unwrap_err();
        assert!(e.contains("unknown command: frobnicate; try `help`"), "{e}");
        assert!(parse(specs(), &[]).is_err());
    }

    #[test]
    fn words_may_be_abbreviated_where_only_one_command_fits() {
        let c = parse(specs(), &a("mesh deg 4")).unwrap();
        assert_eq!((c.id, c.arg("degree")), ("degree", Some("4")));
        let c = parse(specs(), &a("m l p")).unwrap();
        assert!(c.id == "list" && c.has("peers"), "{c:?}");
        // Values are never abbreviations: a host named `s` is a host.
        let c = parse(specs(), &a("mesh se s mesh status")).unwrap();
        assert_eq!(c.arg("hosts"), Some("s"));
        let real = crate::cmd::specs();
        // Two commands fit (degree, dial, dot): none runs.
        let e = super::parse(real, &a("mesh d 4"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("ambiguous command: mesh d 4"), "{e}");
        let (s, c) = super::parse(real, &a("vm conf mem 64")).unwrap();
        assert_eq!(
            (s.id, c.has("memory"), c.arg("value")),
            ("vm config", true, Some("64"))
        );
        let (s, _) = super::parse(real, &a("vm inf")).unwrap();
        assert_eq!(s.id, "vm info");
        // An exact command wins over an abbreviated one.
        let (s, _) = super::parse(real, &a("host")).unwrap();
        assert_eq!(s.id, "host");
        assert!(super::parse(real, &a("vm config co 1")).is_err());
    }

    #[test]
    fn help_lists_and_explains() {
        let all = help(specs(), &[]).unwrap();
        let line = all
            .lines()
            .find(|l| l.starts_with("mesh degree [degree]"))
            .unwrap();
        assert!(line.ends_with("  view or set the degree"), "{line}");
        let one = help(specs(), &a("mesh degree")).unwrap();
        assert!(one.contains("Long text."));
        assert!(help(specs(), &a("nope")).is_err());
        assert!(all.starts_with("Notation: "), "{all}");
        assert!(!one.contains("Notation"), "{one}");
    }

    #[test]
    fn help_fits_the_width() {
        let real = crate::cmd::specs();
        for width in [30, 50, 80, 120] {
            for words in [vec![], a("mesh"), a("file get"), a("mesh send")] {
                let text = super::help(real, &words, width).unwrap();
                for l in text.lines() {
                    // Only a single word longer than the width may pass it.
                    assert!(
                        l.chars().count() <= width || !l.trim().contains(' '),
                        "{width}: {l:?}"
                    );
                }
                // Nothing is lost: the same words as unwrapped.
                let words_of =
                    |t: &str| t.split_whitespace().map(str::to_string).collect::<Vec<_>>();
                assert_eq!(
                    words_of(&text),
                    words_of(&super::help(real, &words, usize::MAX).unwrap()),
                );
            }
        }
        // A description continues in its column.
        let list = super::help(real, &[], 80).unwrap();
        let lines: Vec<&str> = list.lines().collect();
        let i = lines
            .iter()
            .position(|l| l.starts_with("file get <name> [wait,] "))
            .unwrap();
        let col = lines[i].find("fetch").unwrap();
        assert!(lines[i + 1].starts_with(&" ".repeat(col)), "{list}");
        assert!(lines[i + 1].trim_end().ends_with("holds it"), "{list}");
    }
}
