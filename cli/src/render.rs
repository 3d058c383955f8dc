//! Answers as minimega prints them: tables merged across hosts, free-form
//! text, `E: host: message` lines, or JSON.

use mm_node::Response;

/// How answers are shown: minicli's flags, set for one command by a dot
/// prefix (`.headers false vm info`) or for the rest of the shell or
/// script by the dot command alone (`.headers false`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Flags {
    /// The host column, and `host: ` before text from several hosts.
    pub(crate) annotate: bool,
    pub(crate) headers: bool,
    /// Rows by their first column, numbers as numbers.
    pub(crate) sort: bool,
    /// The same text from several hosts once, as `n[1-3]: text`.
    pub(crate) compress: bool,
    pub(crate) mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Table,
    Csv,
    Json,
}

impl Default for Flags {
    /// minicli's defaults.
    fn default() -> Flags {
        Flags {
            annotate: true,
            headers: true,
            sort: true,
            compress: true,
            mode: Mode::Table,
        }
    }
}

/// Renders answers the way minimega prints them: tables merged across hosts
/// with a leading `host` column and sorted rows, free-form responses prefixed
/// by their host when several hosts answered. Errors are returned apart, as
/// `E: host: message` lines for stderr.
pub(crate) fn render(responses: &[Response], f: &Flags) -> (String, Vec<String>) {
    let shown: Vec<Response> = responses.iter().map(defang).collect();
    let responses = &shown[..];
    let mut out = String::new();
    let mut errors = Vec::new();
    // As minimega: several answers, errors among them, name their hosts;
    // one text beside an error would not say whose it is.
    let multi = responses.len() > 1;
    // Group tables with the same header, in order of first appearance.
    let mut groups: Vec<(&Vec<String>, Vec<Vec<String>>)> = Vec::new();
    let mut texts = Vec::new();
    for r in responses {
        if !r.error.is_empty() {
            errors.push(format!("E: {}: {}", r.host, r.error));
        }
        if !r.header.is_empty() {
            let rows = r.tabular.iter().map(|row| {
                let mut v = Vec::new();
                if f.annotate {
                    v.push(r.host.clone());
                }
                v.extend(row.iter().cloned());
                v
            });
            match groups.iter_mut().find(|(h, _)| *h == &r.header) {
                Some((_, g)) => g.extend(rows),
                None => groups.push((&r.header, rows.collect())),
            }
        } else if !r.response.is_empty() {
            texts.push(r);
        }
    }
    for (header, mut rows) in groups {
        if f.sort {
            rows.sort_by(|a, b| by_cells(a, b));
        }
        let mut full = Vec::new();
        if f.annotate {
            full.push("host".to_string());
        }
        full.extend(header.iter().cloned());
        if !out.is_empty() && f.mode == Mode::Table {
            out.push('\n');
        }
        let head = f.headers.then_some(&full[..]);
        match f.mode {
            Mode::Csv => out.push_str(&csv(head, &rows)),
            _ => out.push_str(&table(head, full.len(), &rows)),
        }
    }
    texts.sort_by(|a, b| a.host.cmp(&b.host));
    // The same text from several hosts: once, under their names.
    let mut shown: Vec<(Vec<String>, &str)> = Vec::new();
    for r in texts {
        match shown
            .iter_mut()
            .find(|(_, t)| f.compress && *t == r.response.as_str())
        {
            Some((hosts, _)) => hosts.push(r.host.clone()),
            None => shown.push((vec![r.host.clone()], &r.response)),
        }
    }
    for (hosts, text) in shown {
        if multi && f.annotate {
            let who = mm_node::compress_hosts(&hosts);
            for line in text.lines() {
                out.push_str(&format!("{who}: {line}\n"));
            }
        } else {
            out.push_str(text);
            if !text.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    (out, errors)
}

/// minicli's row order: cell by cell, as numbers where both are.
fn by_cells(a: &[String], b: &[String]) -> std::cmp::Ordering {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return match (x.parse::<i64>(), y.parse::<i64>()) {
                (Ok(i), Ok(j)) => i.cmp(&j),
                _ => x.cmp(y),
            };
        }
    }
    a.len().cmp(&b.len())
}

fn csv(header: Option<&[String]>, rows: &[Vec<String>]) -> String {
    let field = |c: &String| {
        if c.contains([',', '"', '\n']) {
            format!("\"{}\"", c.replace('"', "\"\""))
        } else {
            c.clone()
        }
    };
    let mut out = String::new();
    for row in header.into_iter().chain(rows.iter().map(|r| &r[..])) {
        out.push_str(&row.iter().map(field).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}

/// The dot commands that reshape answers before they are shown:
/// `.filter` and `.columns`, applied innermost first, as minicli does.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Filter(Filter),
    Columns(Vec<String>),
}

/// `.filter COL=VAL`, `COL!=VAL`, `COL~VAL` (substring), `COL!~VAL`;
/// case-insensitive. A value that is a list or a map (`[..]`, `{..}`)
/// matches by substring.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Filter {
    col: String,
    val: String,
    negate: bool,
    fuzzy: bool,
}

impl Filter {
    pub(crate) fn parse(s: &str) -> Result<Filter, String> {
        for (sep, negate, fuzzy) in [
            ("!~", true, true),
            ("~", false, true),
            ("!=", true, false),
            ("=", false, false),
        ] {
            if let Some((c, v)) = s.split_once(sep) {
                if c.is_empty() || c.contains(['=', '~', '!']) {
                    break;
                }
                return Ok(Filter {
                    col: c.to_lowercase(),
                    val: v.to_lowercase(),
                    negate,
                    fuzzy,
                });
            }
        }
        Err(format!(
            "invalid filter `{s}`: COLUMN=VALUE, COLUMN!=VALUE, COLUMN~SUBSTRING or COLUMN!~SUBSTRING"
        ))
    }

    fn matches(&self, v: &str) -> bool {
        let v = v.to_lowercase();
        let fuzzy = self.fuzzy
            || (v.starts_with('[') && v.ends_with(']'))
            || (v.starts_with('{') && v.ends_with('}'));
        let hit = v == self.val || (fuzzy && v.contains(&self.val));
        hit != self.negate
    }
}

/// A column by its name or a prefix of it that only it has.
fn find_column(header: &[String], col: &str) -> Result<usize, String> {
    if let Some(i) = header.iter().position(|h| h.to_lowercase() == col) {
        return Ok(i);
    }
    let mut found = header
        .iter()
        .enumerate()
        .filter(|(_, h)| h.to_lowercase().starts_with(col));
    match (found.next(), found.next()) {
        (Some((i, _)), None) => Ok(i),
        (Some(_), Some(_)) => Err(format!("ambiguous column `{col}`")),
        // Every answer can be shaped by the host that gave it as well.
        _ => Err(format!(
            "no such column `{col}`; this table has {}",
            std::iter::once("host")
                .chain(header.iter().map(String::as_str).filter(|h| *h != "host"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Applies `ops` (outermost first, as typed) to the answers. A `host`
/// column named in `.columns` becomes a real column, placed where it was
/// named; the flags then show no second one.
pub(crate) fn reshape(rs: &mut Vec<Response>, ops: &[Op], f: &mut Flags) -> Result<(), String> {
    for op in ops.iter().rev() {
        match op {
            Op::Filter(flt) if flt.col == "host" => rs.retain(|r| flt.matches(&r.host)),
            Op::Filter(flt) => {
                for r in rs.iter_mut().filter(|r| !r.header.is_empty()) {
                    let i = find_column(&r.header, &flt.col)?;
                    r.tabular
                        .retain(|row| row.get(i).is_some_and(|c| flt.matches(c)));
                }
            }
            Op::Columns(cols) => {
                for r in rs.iter_mut().filter(|r| !r.header.is_empty()) {
                    let mut header = Vec::new();
                    let mut pick: Vec<Option<usize>> = Vec::new();
                    for c in cols {
                        let c = c.to_lowercase();
                        if c == "host" {
                            header.push("host".to_string());
                            pick.push(None);
                            continue;
                        }
                        let i = find_column(&r.header, &c)?;
                        header.push(r.header[i].clone());
                        pick.push(Some(i));
                    }
                    r.tabular = r
                        .tabular
                        .iter()
                        .map(|row| {
                            pick.iter()
                                .map(|p| match p {
                                    Some(i) => row.get(*i).cloned().unwrap_or_default(),
                                    None => r.host.clone(),
                                })
                                .collect()
                        })
                        .collect();
                    r.header = header;
                }
                if cols.iter().any(|c| c.eq_ignore_ascii_case("host")) {
                    f.annotate = false;
                }
            }
        }
    }
    Ok(())
}

/// An answer as it may reach a terminal: what other nodes sent can hold
/// escape sequences that move the cursor or rewrite the screen, and bidi or
/// zero-width characters that make one text look like another. Those are
/// shown as `\u{..}`; line breaks survive in free text and errors only.
fn defang(r: &Response) -> Response {
    fn esc(s: &str, lines: bool) -> String {
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            let keep = (lines && (c == '\n' || c == '\t'))
                || !(c.is_control() || mm_store::files::is_format(c));
            if keep {
                out.push(c);
            } else {
                out.push_str(&format!("\\u{{{:x}}}", c as u32));
            }
        }
        out
    }
    let cells = |v: &[String]| v.iter().map(|c| esc(c, false)).collect::<Vec<_>>();
    Response {
        host: esc(&r.host, false),
        header: cells(&r.header),
        tabular: r.tabular.iter().map(|row| cells(row)).collect(),
        response: esc(&r.response, true),
        error: esc(&r.error, true),
        kind: r.kind,
    }
}

fn table(header: Option<&[String]>, cols: usize, rows: &[Vec<String>]) -> String {
    let mut width = vec![0; cols];
    for row in header.into_iter().chain(rows.iter().map(|r| &r[..])) {
        for (i, c) in row.iter().enumerate().take(cols) {
            width[i] = width[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, w) in width.iter().enumerate() {
            let c = cells.get(i).map(String::as_str).unwrap_or("");
            if i > 0 {
                s.push_str(" | ");
            }
            s.push_str(c);
            if i + 1 < cols {
                s.push_str(&" ".repeat(w - c.chars().count()));
            }
        }
        s.push('\n');
        s
    };
    let mut out = header.map(line).unwrap_or_default();
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// `--json` output: one object per responding host, with the fields the
/// documentation promises (an error's kind is for nodes, not scripts).
pub(crate) fn render_json(responses: &[Response]) -> String {
    let shown: Vec<Response> = responses
        .iter()
        .map(|r| Response {
            kind: None,
            ..r.clone()
        })
        .collect();
    serde_json::to_string_pretty(&shown).unwrap_or_else(|_| "[]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tables_merge_across_hosts_sorted_with_host_column() {
        let h = &["size", "degree"];
        let rs = vec![
            Response::table("node2", h, vec![row(&["10", "3"])]),
            Response::table("node1", h, vec![row(&["10", "3"])]),
            Response::error("node9", "timed out"),
        ];
        let (out, errs) = render(&rs, &Flags::default());
        assert_eq!(
            out,
            "host  | size | degree\nnode1 | 10   | 3\nnode2 | 10   | 3\n"
        );
        assert_eq!(errs, vec!["E: node9: timed out"]);
    }

    #[test]
    fn what_other_nodes_send_cannot_drive_the_terminal() {
        let rs = vec![
            Response::text("a", "\x1b[2J\x1b[Hok\nline two"),
            Response::table("b", &["x"], vec![row(&["evil\u{202e}txt.exe", "\x07"])]),
            Response::error("c\x1b]0;title\x07", "bad\r\x1b[1A"),
        ];
        let (out, errs) = render(&rs, &Flags::default());
        assert!(
            !out.contains('\x1b') && !out.contains('\u{202e}'),
            "{out:?}"
        );
        assert!(
            out.contains("\\u{1b}[2J") && out.contains("line two"),
            "{out:?}"
        );
        assert!(out.contains("evil\\u{202e}txt.exe"), "{out:?}");
        assert!(
            !errs[0].contains('\x1b') && !errs[0].contains('\r'),
            "{errs:?}"
        );
    }

    #[test]
    fn text_is_prefixed_only_when_several_hosts_answer_or_fail() {
        let d = Flags::default();
        let one = vec![Response::text("a", "3")];
        assert_eq!(render(&one, &d).0, "3\n");
        let two = vec![Response::text("b", "x\ny"), Response::text("a", "3")];
        assert_eq!(render(&two, &d).0, "a: 3\nb: x\nb: y\n");
        // An answer beside another host's error says whose it is.
        let and_error = vec![
            Response::text("n2", "mm 0.1.0"),
            Response::error("n3", "no such host"),
        ];
        let (out, errs) = render(&and_error, &d);
        assert_eq!(out, "n2: mm 0.1.0\n");
        assert_eq!(errs, ["E: n3: no such host"]);
    }

    fn vms() -> Vec<Response> {
        let h = &["id", "name", "state"];
        vec![
            Response::table("n2", h, vec![row(&["10", "b", "RUNNING"])]),
            Response::table(
                "n1",
                h,
                vec![row(&["9", "a", "PAUSED"]), row(&["2", "c", "RUNNING"])],
            ),
        ]
    }

    fn shaped(ops: &[Op], f: &Flags) -> Result<String, String> {
        let mut rs = vms();
        let mut f = f.clone();
        reshape(&mut rs, ops, &mut f)?;
        Ok(render(&rs, &f).0)
    }

    #[test]
    fn dot_commands_shape_the_merged_table() {
        let d = Flags::default();
        let cols = |c: &str| Op::Columns(c.split(',').map(str::to_string).collect());
        let filter = |s: &str| Op::Filter(Filter::parse(s).unwrap());
        // Rows sort by host, then numbers as numbers.
        assert_eq!(
            shaped(&[], &d).unwrap(),
            "host | id | name | state\nn1   | 2  | c    | RUNNING\nn1   | 9  | a    | PAUSED\nn2   | 10 | b    | RUNNING\n"
        );
        // A named host column goes where it is named, and only there.
        assert_eq!(
            shaped(&[cols("name,host")], &d).unwrap(),
            "name | host\na    | n1\nb    | n2\nc    | n1\n"
        );
        // Prefixes name columns; filters ignore case; innermost first.
        assert_eq!(
            shaped(&[cols("na"), filter("state=running")], &d).unwrap(),
            "host | name\nn1   | c\nn2   | b\n"
        );
        assert_eq!(
            shaped(&[filter("state!~run")], &d).unwrap(),
            "host | id | name | state\nn1   | 9  | a    | PAUSED\n"
        );
        assert_eq!(
            shaped(&[filter("host=n2"), cols("name")], &d).unwrap(),
            "host | name\nn2   | b\n"
        );
        let e = shaped(&[filter("state=x"), cols("name")], &d).unwrap_err();
        assert_eq!(e, "no such column `state`; this table has host, name");
        assert!(shaped(&[cols("s,n")], &d).is_ok());
        assert_eq!(
            shaped(&[cols("nope")], &d).unwrap_err(),
            "no such column `nope`; this table has host, id, name, state"
        );
        let f = Flags {
            annotate: false,
            headers: false,
            sort: false,
            mode: Mode::Csv,
            ..Flags::default()
        };
        assert_eq!(
            shaped(&[cols("name,state")], &f).unwrap(),
            "b,RUNNING\na,PAUSED\nc,RUNNING\n"
        );
        // The same text from several hosts, once.
        let texts = vec![
            Response::text("n1", "mm 1.0"),
            Response::text("n2", "mm 1.0"),
            Response::text("n3", "mm 0.9"),
        ];
        assert_eq!(render(&texts, &d).0, "n[1-2]: mm 1.0\nn3: mm 0.9\n");
        let loose = Flags {
            compress: false,
            ..Flags::default()
        };
        assert_eq!(
            render(&texts, &loose).0,
            "n1: mm 1.0\nn2: mm 1.0\nn3: mm 0.9\n"
        );
    }

    #[test]
    fn json_has_every_field() {
        let j = render_json(&[Response::table("a", &["x"], vec![row(&["1"])])]);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        let o = &v[0];
        for k in ["host", "header", "tabular", "response", "error"] {
            assert!(o.get(k).is_some(), "missing {k}");
        }
        assert_eq!(o["tabular"][0][0], "1");
    }
}
