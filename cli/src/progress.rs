//! Progress bars for `file get ... wait` on a terminal: one line per
//! transfer, never wider than the terminal (a line that wraps leaves a
//! stale copy at each redraw), fed by the node's typed transfer status on
//! a second connection.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use mm_node::control::Client;
use mm_node::proto::TransferStatus;
use mm_store::fmt::human;

/// The bars while they show; [`Bars::stop`] clears them.
pub(crate) struct Bars {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _quiet: Option<NoEcho>,
}

/// The terminal does not echo what is typed while the bars show: the echo
/// of Ctrl-C (`^C`) moves the cursor under the bars, and clearing them
/// from there leaves the first one behind. Restored on drop.
struct NoEcho(libc::termios);

impl NoEcho {
    fn new() -> Option<NoEcho> {
        // SAFETY: tcgetattr/tcsetattr on standard input, with a termios
        // that tcgetattr filled.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !(libc::ECHO | libc::ECHOCTL);
            (libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) == 0).then_some(NoEcho(saved))
        }
    }
}

impl Drop for NoEcho {
    fn drop(&mut self) {
        // SAFETY: as in `new`, with the settings read there.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0) };
    }
}

impl Bars {
    /// Starts showing the node's transfers, if stderr is a terminal.
    pub(crate) fn start(rt: &tokio::runtime::Runtime, base: PathBuf) -> Option<Bars> {
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            return None;
        }
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let _quiet = NoEcho::new();
        let task = rt.spawn(show(base, stopped));
        Some(Bars { stop, task, _quiet })
    }

    /// Clears the bars, so what is printed next starts on a clean line.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn show(base: PathBuf, mut stopped: tokio::sync::oneshot::Receiver<()>) {
    let Ok(mut c) = Client::connect(&base).await else {
        return;
    };
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            _ = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        let Ok(ts) = c.transfers().await else { break };
        // A transfer that ended leaves the screen.
        order.retain(|n| {
            let live = ts.iter().any(|t| &t.name == n);
            if !live {
                if let Some(b) = bars.remove(n) {
                    b.finish_and_clear();
                    multi.remove(&b);
                }
            }
            live
        });
        let width = console::Term::stderr()
            .size_checked()
            .map_or(80, |(_, w)| w as usize);
        let name_w = ts.iter().map(|t| t.name.chars().count()).max().unwrap_or(0);
        for t in &ts {
            let b = bars.entry(t.name.clone()).or_insert_with(|| {
                order.push(t.name.clone());
                multi.add(ProgressBar::new(t.size))
            });
            let l = layout(t, width, name_w);
            // The style carries the bar's width, which follows the terminal's.
            b.set_style(style(l.bar));
            b.set_length(t.size);
            b.set_position(t.bytes_done);
            b.set_prefix(l.name);
            b.set_message(l.info);
            // Each of those may draw, at most 20 times a second: the first
            // drew with the rest not yet set (a new bar without its name,
            // the percentage a poll behind the bar). One frame with all.
            b.force_draw();
        }
    }
    for b in bars.values() {
        b.finish_and_clear();
    }
    let _ = multi.clear();
}

/// One transfer's line, cut to fit `width` columns.
struct Line {
    /// Columns of the bar itself, 0 for none.
    bar: usize,
    name: String,
    info: String,
}

/// `name [#####     ] 45% 1.2 MiB/8.0 MiB 3.1 MiB/s eta 3s`, narrowed to
/// fit: the name shortened in the middle first (down to a few characters),
/// then the bar, then the details cut at the end. The last column stays
/// free: a line that fills it wraps on some terminals.
fn layout(t: &TransferStatus, width: usize, name_w: usize) -> Line {
    let room = width.saturating_sub(1);
    let info = info(t);
    let info_w = info.chars().count();
    // The bar narrows before the name gets shorter than this.
    const NAME: usize = 24;
    const MIN_NAME: usize = 12;
    let mut bar = 20;
    // prefix + " [" + bar + "] " + info
    let want = name_w.min(NAME);
    while bar > 0 && want + bar + 4 + info_w > room {
        bar = if bar > 10 { 10 } else { 0 };
    }
    let fixed = if bar > 0 { bar + 4 } else { 1 } + info_w;
    let name_room = room.saturating_sub(fixed).max(MIN_NAME.min(room));
    let name_w = name_w.min(name_room);
    let name = format!("{:<name_w$}", shorten(&t.name, name_w));
    let info_room = room.saturating_sub(name_w + if bar > 0 { bar + 4 } else { 1 });
    let info: String = info.chars().take(info_room).collect();
    Line { bar, name, info }
}

/// `NAME [BAR] INFO` with a bar `bar` columns wide, or `NAME INFO`.
fn style(bar: usize) -> ProgressStyle {
    let template = if bar > 0 {
        format!("{{prefix}} [{{bar:{bar}}}] {{msg}}")
    } else {
        "{prefix} {msg}".to_string()
    };
    ProgressStyle::with_template(&template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("#>-")
}

/// What follows the bar: percentage and size, then the rate and eta
/// while it pulls, else its state (`stalled (no data for 7s)` when its
/// sources hang); failing and stalled sources, named. Fixed widths,
/// so the columns stay put from one redraw to the next.
fn info(t: &TransferStatus) -> String {
    let pct = (t.bytes_done * 100).checked_div(t.size).unwrap_or(100);
    let mut s = format!("{pct:>3}% of {:<10}", human(t.size as f64));
    if t.state == "pulling" {
        let eta = t
            .eta_secs
            .map_or_else(|| "-".to_string(), |e| format!("{e}s"));
        s.push_str(&format!(
            " {:>12} eta {eta:<5}",
            format!("{}/s", human(t.rate))
        ));
    } else {
        s.push(' ');
        s.push_str(&t.state);
    }
    let failing: Vec<&str> = t
        .sources
        .iter()
        .filter(|s| s.failing > 0 && !s.dropped)
        .map(|s| s.host.as_str())
        .collect();
    if !failing.is_empty() {
        s.push_str(&format!(" failing: {}", failing.join(",")));
    }
    let stalled: Vec<&str> = t
        .sources
        .iter()
        .filter(|s| s.stalled && s.failing == 0 && !s.dropped)
        .map(|s| s.host.as_str())
        .collect();
    if !stalled.is_empty() {
        s.push_str(&format!(" stalled: {}", stalled.join(",")));
    }
    s
}

/// `name` in at most `max` characters, cut in the middle: the start and
/// the end of a path (its directory and extension) say the most.
pub(crate) fn shorten(name: &str, max: usize) -> String {
    let n = name.chars().count();
    if n <= max {
        return name.to_string();
    }
    if max <= 1 {
        return "…".chars().take(max).collect();
    }
    let keep = max - 1;
    let head = keep / 2;
    let tail = keep - head;
    let mut s: String = name.chars().take(head).collect();
    s.push('…');
    s.extend(name.chars().skip(n - tail));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(name: &str, state: &str) -> TransferStatus {
        TransferStatus {
            name: name.into(),
            chunks_done: 10,
            chunks: 400,
            bytes_done: 10 << 18,
            size: 100 << 20,
            rate: 3.5e6,
            eta_secs: Some(29),
            state: state.into(),
            queued: false,
            sources: vec![],
        }
    }

    #[test]
    fn names_are_cut_in_the_middle() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("images/very-long-name.qcow2", 11), "image…qcow2");
        assert_eq!(
            shorten("images/very-long-name.qcow2", 11).chars().count(),
            11
        );
        assert_eq!(shorten("abc", 0), "");
    }

    #[test]
    fn every_line_fits_the_terminal() {
        let long = format!("images/{}/disk.qcow2", "x".repeat(150));
        for state in ["pulling", "waiting for holders (retry in 4s)", "queued"] {
            for width in [20, 40, 60, 80, 132, 300] {
                for name in ["a", "images/disk.qcow2", long.as_str()] {
                    let l = layout(&transfer(name, state), width, long.chars().count());
                    let drawn = l.name.chars().count()
                        + if l.bar > 0 { l.bar + 4 } else { 1 }
                        + l.info.chars().count();
                    assert!(drawn < width, "{width} {name}: {drawn}");
                }
            }
        }
        let l = layout(&transfer(&long, "pulling"), 80, long.chars().count());
        assert!(l.name.starts_with("images/x") && l.name.ends_with("x/disk.qcow2"));
        assert!(l.name.contains('…') && l.bar == 10, "{}", l.name);
        // The same columns whatever the numbers.
        let mut slow = transfer(&long, "pulling");
        (slow.rate, slow.eta_secs) = (0.0, None);
        let m = layout(&slow, 80, long.chars().count());
        assert_eq!((m.name, m.bar), (l.name, l.bar));
        let l = layout(&transfer("disk.qcow2", "pulling"), 80, 10);
        assert_eq!((l.name.as_str(), l.bar), ("disk.qcow2", 20));
        assert!(l.info.trim_end().ends_with("eta 29s"), "{}", l.info);
    }
}
