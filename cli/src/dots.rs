//! minicli's dot commands, at the front of a line: `.columns`, `.filter`,
//! `.annotate`, `.headers`, `.sort`, `.compress`, `.csv`, `.json`. Each is
//! a prefix for one command (`.columns name,state vm info`), and the flags
//! alone (`.headers false`) set the mode for the rest of the shell, script
//! or `read` file. They shape what is shown, so the client applies them,
//! after the answers of every host are in.

use crate::render::{Filter, Flags, Mode, Op};

/// A line, its dot commands taken off.
#[derive(Debug, PartialEq)]
pub(crate) enum Line {
    /// Dot commands alone: they changed the session's flags; or one asked
    /// for its current value, which is this text.
    Session(Option<String>),
    /// A command, with the flags and reshaping it is shown with.
    Command {
        argv: Vec<String>,
        ops: Vec<Op>,
        flags: Flags,
    },
}

const FLAGS: &[&str] = &[
    ".annotate",
    ".headers",
    ".sort",
    ".compress",
    ".csv",
    ".json",
];

fn flag(f: &Flags, name: &str) -> bool {
    match name {
        ".annotate" => f.annotate,
        ".headers" => f.headers,
        ".sort" => f.sort,
        ".compress" => f.compress,
        ".csv" => f.mode == Mode::Csv,
        _ => f.mode == Mode::Json,
    }
}

fn set(f: &mut Flags, name: &str, on: bool) {
    let mode = |f: &mut Flags, m: Mode| {
        if on {
            f.mode = m;
        } else if f.mode == m {
            f.mode = Mode::Table;
        }
    };
    match name {
        ".annotate" => f.annotate = on,
        ".headers" => f.headers = on,
        ".sort" => f.sort = on,
        ".compress" => f.compress = on,
        ".csv" => mode(f, Mode::Csv),
        _ => mode(f, Mode::Json),
    }
}

/// How many words of `argv` are a command that wraps another, which dot
/// commands may follow as in minicli (`namespace foo .columns name vm
/// info`): `namespace NAME`, `ns run`, `mesh send HOSTS`; 0 if none.
fn wrapper(argv: &[String]) -> usize {
    let w: Vec<&str> = argv.iter().take(3).map(String::as_str).collect();
    match w.as_slice() {
        ["namespace", name, ..] if !name.starts_with('.') => 2,
        ["ns", "run", ..] => 2,
        ["mesh", "send", hosts, ..] if !hosts.starts_with('.') => 3,
        _ => 0,
    }
}

/// Takes the dot commands off the front of `argv`, and off the front of
/// the command each wrapper carries (they shape the one answer the client
/// shows, so where they stood makes no difference); those alone change
/// `session`.
pub(crate) fn parse(argv: &[String], session: &mut Flags) -> Result<Line, String> {
    let mut flags = session.clone();
    let mut ops = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    let mut i = 0;
    loop {
        match dots(argv, i, session, &mut flags, &mut ops)? {
            Taken::Session(line) => return Ok(line),
            Taken::Upto(next) => i = next,
        }
        let w = wrapper(&argv[i..]);
        if w == 0 {
            break;
        }
        kept.extend_from_slice(&argv[i..i + w]);
        i += w;
    }
    kept.extend_from_slice(&argv[i..]);
    Ok(Line::Command {
        argv: kept,
        ops,
        flags,
    })
}

enum Taken {
    Session(Line),
    /// Where the words after the dot commands start.
    Upto(usize),
}

/// The dot commands from `argv[i]` on, into `flags` and `ops`.
fn dots(
    argv: &[String],
    mut i: usize,
    session: &mut Flags,
    flags: &mut Flags,
    ops: &mut Vec<Op>,
) -> Result<Taken, String> {
    while let Some(w) = argv.get(i).filter(|w| w.starts_with('.')) {
        let w = w.as_str();
        match w {
            ".columns" | ".filter" => {
                let (Some(v), true) = (argv.get(i + 1), argv.len() > i + 2) else {
                    let what = if w == ".columns" { "COLUMNS" } else { "FILTER" };
                    return Err(format!("usage: {w} {what} COMMAND"));
                };
                ops.push(if w == ".columns" {
                    Op::Columns(
                        v.split(',')
                            .filter(|c| !c.is_empty())
                            .map(str::to_string)
                            .collect(),
                    )
                } else {
                    Op::Filter(Filter::parse(v)?)
                });
                i += 2;
            }
            _ if FLAGS.contains(&w) => {
                let val = match argv.get(i + 1).map(String::as_str) {
                    Some("true") => Some(true),
                    Some("false") => Some(false),
                    _ => None,
                };
                let next = i + 1 + usize::from(val.is_some());
                if next >= argv.len() {
                    if i > 0 {
                        return Err(format!(
                            "{}: a dot command alone sets the mode; with others before it, a \
                             command must follow",
                            argv.join(" ")
                        ));
                    }
                    return Ok(Taken::Session(match val {
                        Some(on) => {
                            set(session, w, on);
                            Line::Session(None)
                        }
                        None => Line::Session(Some(flag(session, w).to_string())),
                    }));
                }
                let Some(on) = val else {
                    return Err(format!("usage: {w} <true,false> COMMAND"));
                };
                set(flags, w, on);
                i = next;
            }
            _ => {
                return Err(format!(
                    "unknown dot command {w}; the dot commands: .columns, .filter, {}",
                    FLAGS.join(", ")
                ))
            }
        }
    }
    Ok(Taken::Upto(i))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn prefixes_apply_to_one_command_and_alone_to_the_session() {
        let mut s = Flags::default();
        let Line::Command { argv, ops, flags } = parse(
            &a(".columns name,state .filter state=running vm info"),
            &mut s,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(argv, a("vm info"));
        assert_eq!(ops.len(), 2);
        assert_eq!(flags, Flags::default());
        let Line::Command { flags, .. } =
            parse(&a(".headers false .csv true vm info"), &mut s).unwrap()
        else {
            panic!()
        };
        assert!(!flags.headers && flags.mode == Mode::Csv);
        assert_eq!(s, Flags::default(), "a prefix changed the session");
        assert_eq!(
            parse(&a(".headers false"), &mut s).unwrap(),
            Line::Session(None)
        );
        assert!(!s.headers);
        assert_eq!(
            parse(&a(".headers"), &mut s).unwrap(),
            Line::Session(Some("false".into()))
        );
        parse(&a(".json true"), &mut s).unwrap();
        parse(&a(".csv false"), &mut s).unwrap();
        assert_eq!(s.mode, Mode::Json, ".csv false turned off json");
        for (bad, why) in [
            (".columns name", "usage: .columns COLUMNS COMMAND"),
            (".filter nope vm info", "invalid filter"),
            (".headers vm info", "usage: .headers <true,false> COMMAND"),
            (".bogus vm info", "unknown dot command .bogus"),
            (".columns a,b .headers false", "a command must follow"),
        ] {
            let e = parse(&a(bad), &mut s).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    /// As in minicli, dot commands may also head the command a wrapper
    /// carries; the client shapes the one answer either way.
    #[test]
    fn dot_commands_may_follow_a_wrapper() {
        let mut s = Flags::default();
        let line = |w: &str, s: &mut Flags| match parse(&a(w), s).unwrap() {
            Line::Command { argv, ops, flags } => (argv.join(" "), ops.len(), flags),
            Line::Session(_) => panic!("{w}"),
        };
        let (argv, ops, _) = line("namespace bar .columns name,state vm info", &mut s);
        assert_eq!((argv.as_str(), ops), ("namespace bar vm info", 1));
        let (argv, ops, flags) = line(
            ".filter state=running mesh send all namespace foo .csv true .columns name vm info",
            &mut s,
        );
        assert_eq!(
            (argv.as_str(), ops),
            ("mesh send all namespace foo vm info", 2)
        );
        assert_eq!(flags.mode, Mode::Csv);
        let (argv, ops, _) = line("ns run .columns host,name vm info", &mut s);
        assert_eq!((argv.as_str(), ops), ("ns run vm info", 1));
        // Not after other words, and not alone after a wrapper.
        let (argv, ops, _) = line("vm info .columns name", &mut s);
        assert_eq!((argv.as_str(), ops), ("vm info .columns name", 0));
        let e = parse(&a("namespace bar .headers false"), &mut s).unwrap_err();
        assert!(e.contains("a command must follow"), "{e}");
        assert_eq!(s, Flags::default());
    }
}
