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

/// Takes the dot commands off the front of `argv`; those alone change
/// `session`.
pub(crate) fn parse(argv: &[String], session: &mut Flags) -> Result<Line, String> {
    let mut flags = session.clone();
    let mut ops = Vec::new();
    let mut i = 0;
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
                    return Ok(match val {
                        Some(on) => {
                            set(session, w, on);
                            Line::Session(None)
                        }
                        None => Line::Session(Some(flag(session, w).to_string())),
                    });
                }
                let Some(on) = val else {
                    return Err(format!("usage: {w} <true,false> COMMAND"));
                };
                set(&mut flags, w, on);
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
    Ok(Line::Command {
        argv: argv[i..].to_vec(),
        ops,
        flags,
    })
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
}
