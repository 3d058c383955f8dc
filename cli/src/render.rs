//! Answers as minimega prints them: tables merged across hosts, free-form
//! text, `E: host: message` lines, or JSON.

use mm_node::Response;

/// Renders answers the way minimega prints them: tables merged across hosts
/// with a leading `host` column and sorted rows, free-form responses prefixed
/// by their host when several hosts answered. Errors are returned apart, as
/// `E: host: message` lines for stderr.
pub(crate) fn render(responses: &[Response]) -> (String, Vec<String>) {
    let shown: Vec<Response> = responses.iter().map(defang).collect();
    let responses = &shown[..];
    let mut out = String::new();
    let mut errors = Vec::new();
    let multi = responses.iter().filter(|r| r.error.is_empty()).count() > 1;
    // Group tables with the same header, in order of first appearance.
    let mut groups: Vec<(&Vec<String>, Vec<Vec<String>>)> = Vec::new();
    let mut texts = Vec::new();
    for r in responses {
        if !r.error.is_empty() {
            errors.push(format!("E: {}: {}", r.host, r.error));
        }
        if !r.header.is_empty() {
            let rows = r.tabular.iter().map(|row| {
                let mut v = vec![r.host.clone()];
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
        rows.sort();
        let mut full = vec!["host".to_string()];
        full.extend(header.iter().cloned());
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&table(&full, &rows));
    }
    texts.sort_by(|a, b| a.host.cmp(&b.host));
    for r in texts {
        if multi {
            for line in r.response.lines() {
                out.push_str(&format!("{}: {line}\n", r.host));
            }
        } else {
            out.push_str(&r.response);
            if !r.response.ends_with('\n') {
                out.push('\n');
            }
        }
    }
    (out, errors)
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

fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
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
    let mut out = line(header);
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
        let (out, errs) = render(&rs);
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
        let (out, errs) = render(&rs);
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
    fn text_is_prefixed_only_when_several_hosts_answer() {
        let one = vec![Response::text("a", "3")];
        assert_eq!(render(&one).0, "3\n");
        let two = vec![Response::text("b", "x\ny"), Response::text("a", "3")];
        assert_eq!(render(&two).0, "a: 3\nb: x\nb: y\n");
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
