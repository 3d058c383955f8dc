//! `mm`: `mm serve` runs a node; `mm keygen` prints a cluster key; any other
//! `mm COMMAND...` is sent to the local node, and its answer printed. With no
//! command, an interactive shell.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod complete;
mod dots;
mod progress;
mod render;

use clap::Parser;
use mm_node::control::Client;
use render::{render, render_json, Flags, Mode, Op};

#[derive(Parser)]
#[command(
    name = "mm",
    version,
    about = "Drive an mm cluster: `mm serve` starts a node, `mm help` lists the commands",
    override_usage = "mm [--base DIR] [--json] [COMMAND...]\n       mm serve [OPTIONS]\n       mm keygen",
    after_help = "Options go before the command: `mm --base /tmp/mm-n1 mesh status`.\n\
                  Environment: MM_BASE sets the base directory (--base wins)."
)]
struct Cli {
    /// The node's base directory (its control socket is BASE/mm.sock)
    /// [default: $MM_BASE, else /tmp/mm].
    #[arg(long)]
    base: Option<PathBuf>,
    /// Print answers as a JSON array, one object per responding host.
    #[arg(long)]
    json: bool,
    /// The command for the node; none opens an interactive shell.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Parser)]
#[command(name = "mm serve", about = "Run an mm node in the foreground")]
struct Serve {
    /// Holds the control socket, the metadata database, the node key and files/
    /// [default: mm's --base, else $MM_BASE, else /tmp/mm].
    #[arg(long)]
    base: Option<PathBuf>,
    /// Node name, unique in the mesh [default: the hostname].
    #[arg(long)]
    name: Option<String>,
    /// TCP port for the overlay (0 picks a free one).
    #[arg(long, default_value_t = 9000)]
    port: u16,
    /// Address to bind [default: 0.0.0.0 with a cluster key or --insecure,
    /// else 127.0.0.1].
    #[arg(long)]
    listen: Option<IpAddr>,
    /// Direct peers to keep [default: 3, or the value last set by `mesh degree`].
    #[arg(long)]
    degree: Option<usize>,
    /// Nodes in another context ignore each other.
    #[arg(long, default_value = "mm")]
    context: String,
    /// Cluster key in swarm.key format (see `mm keygen`); only nodes with the same key join.
    /// Without one, a node stays on loopback unless --insecure.
    #[arg(long)]
    psk_file: Option<PathBuf>,
    /// Run without a cluster key on the network: anyone who can reach the
    /// ports can join and run every command. Only on a trusted network.
    #[arg(long)]
    insecure: bool,
    /// Static peer (MULTIADDR or HOST:PORT), dialled at start; repeatable.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Let other nodes run `shell` and `background` here, through `mesh
    /// send` and `ns run` (from the local control socket they always run).
    #[arg(long)]
    allow_shell: bool,
    /// CA certificates (PEM) to trust for `https://` words, beside the
    /// usual web roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Turn off mDNS discovery (only --peer and `mesh dial` connect).
    #[arg(long)]
    no_mdns: bool,
    /// TCP port for file chunks (the data channel) [default: --port + 1 if
    /// free, else any free port].
    #[arg(long)]
    data_port: Option<u16>,
    /// Serve no data channel: other nodes fetch this node's chunks over the
    /// overlay connection (slower; one port fewer to open).
    #[arg(long)]
    no_data_channel: bool,
    /// The Open vSwitch database socket, such as unix:/run/ovs/db.sock
    /// [default: the system's].
    #[arg(long, value_name = "unix:PATH")]
    ovs_db: Option<String>,
    /// The datapath for bridges mm creates: system (the kernel's) or netdev
    /// (userspace) [default: system where it works, else netdev].
    #[arg(long, value_parser = ["system", "netdev"])]
    ovs_datapath: Option<String>,
    /// QEMU's accelerator for the VMs here: kvm:tcg (KVM where it opens,
    /// else TCG), kvm, or tcg, for a host whose KVM hangs Linux guests (as
    /// nested KVM can) [default: kvm:tcg].
    #[arg(long, value_parser = ["kvm:tcg", "kvm", "tcg"])]
    accel: Option<String>,
    /// The site this node is at (a name, such as a building or a data
    /// centre), when the cluster spans sites joined by thinner links than
    /// their own: a file pulled at several sites then crosses between
    /// them fewer times. Names are compared exactly (`North` is not
    /// `north`). Without the flag the node says no site, and counts as at
    /// every site.
    #[arg(long)]
    site: Option<String>,
}

/// The base when neither `--base` nor `MM_BASE` names one.
const DEFAULT_BASE: &str = "/tmp/mm";

/// The message for a wait that Ctrl-C ended: the pull is the node's.
const STOPPED_WAITING: &str =
    "stopped waiting; the transfer goes on in the background (see file status)";

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if cli.command.first().map(String::as_str) != Some("serve") {
        // Clap hands everything after the first command word to the
        // command: an `mm` option there would silently not apply.
        // Clap takes the first word it does not know as the command's.
        if let Some(opt) = unknown_option(&cli.command) {
            eprintln!(
                "mm: unknown option {opt}: mm takes --base DIR and --json before the command (mm --help)"
            );
            return ExitCode::from(2);
        }
        if let Some(opt) = misplaced_option(&cli.command) {
            eprintln!(
                "mm: {opt} is an mm option: put it before the command, as in `{}`",
                options_first(&cli.command)
            );
            return ExitCode::from(2);
        }
    }
    cli.base = Some(base_dir(cli.base.take(), std::env::var_os("MM_BASE")));
    match cli.command.first().map(String::as_str) {
        Some("serve") => serve(&cli),
        Some("keygen") if cli.command.len() == 1 => {
            print!("{}", mm_overlay::new_psk());
            ExitCode::SUCCESS
        }
        _ => client(cli),
    }
}

/// The command's first word, if it looks like an option: no command
/// starts with `-`.
fn unknown_option(command: &[String]) -> Option<&str> {
    command
        .first()
        .map(String::as_str)
        .filter(|w| w.len() > 1 && w.starts_with('-'))
}

/// The first word of the command that is one of `mm`'s own options.
fn misplaced_option(command: &[String]) -> Option<&'static str> {
    command.iter().skip(1).find_map(|w| {
        ["--base", "--json"]
            .into_iter()
            .find(|o| w == o || w.strip_prefix(o).is_some_and(|r| r.starts_with('=')))
    })
}

/// The command line with `mm`'s options (and `--base`'s value) moved in
/// front of the command, as the operator meant it.
fn options_first(command: &[String]) -> String {
    let (mut front, mut rest) = (vec!["mm".to_string()], Vec::new());
    let mut words = command.iter();
    while let Some(w) = words.next() {
        if w == "--base" {
            front.push(w.clone());
            front.extend(words.next().cloned());
        } else if w == "--json" || w.starts_with("--base=") {
            front.push(w.clone());
        } else {
            rest.push(w.clone());
        }
    }
    front.extend(rest);
    front.join(" ")
}

/// `--base`, else `MM_BASE` (when set and not empty), else the default.
fn base_dir(flag: Option<PathBuf>, env: Option<std::ffi::OsString>) -> PathBuf {
    flag.or_else(|| env.filter(|e| !e.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn serve(cli: &Cli) -> ExitCode {
    let mut args = vec!["mm serve".to_string()];
    args.extend(cli.command[1..].iter().cloned());
    let s = Serve::parse_from(args);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p_gossipsub=warn,libp2p_mdns=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // `mm --base X serve` and `mm serve --base X` both work.
    let base = s.base.unwrap_or_else(|| cli.base());
    let name = s.name.unwrap_or_else(hostname);
    if let Err(e) = mm_overlay::check_name(&name) {
        eprintln!("mm serve: {e} (set one with --name)");
        return ExitCode::from(2);
    }
    if let Some(Err(e)) = s.site.as_deref().map(mm_overlay::check_site) {
        eprintln!("mm serve: --site: {e}");
        return ExitCode::from(2);
    }
    if s.degree.is_some_and(|d| d > mm_overlay::MAX_DEGREE) {
        eprintln!(
            "mm serve: --degree must be at most {}",
            mm_overlay::MAX_DEGREE
        );
        return ExitCode::from(2);
    }
    let opts = mm_node::Options {
        base,
        name,
        port: s.port,
        listen: s.listen,
        insecure: s.insecure,
        allow_shell: s.allow_shell,
        ca_file: s.ca_file,
        degree: s.degree,
        context: s.context,
        psk_file: s.psk_file,
        peers: s.peers,
        mdns: !s.no_mdns,
        ovs_db: s.ovs_db,
        ovs_datapath: s.ovs_datapath,
        accel: s.accel.unwrap_or_else(|| "kvm:tcg".into()),
        site: s.site,
        data_port: match (s.no_data_channel, s.data_port) {
            (true, _) => mm_node::DataPort::Off,
            (false, Some(p)) => mm_node::DataPort::Fixed(p),
            (false, None) if s.port == 0 => mm_node::DataPort::Fixed(0),
            (false, None) => mm_node::DataPort::Preferred(s.port.wrapping_add(1)),
        },
    };
    match runtime().block_on(mm_node::serve(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mm serve: {e}");
            ExitCode::from(1)
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

impl Cli {
    fn base(&self) -> PathBuf {
        self.base
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BASE))
    }
}

fn client(cli: Cli) -> ExitCode {
    let base = cli.base();
    // Help is the grammar's: it needs no node (and a node's `help` answer
    // is the same text, at 80 columns).
    if cli.command.first().is_some_and(|w| w == "help") && !cli.json {
        return local_help(&cli.command[1..]);
    }
    let rt = runtime();
    let mut conn = match rt.block_on(Client::connect(&base)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mm: {e}");
            return ExitCode::from(2);
        }
    };
    let mut flags = Flags::default();
    if cli.json {
        flags.mode = Mode::Json;
    }
    if cli.command.is_empty() {
        return if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            shell(&rt, conn, &base, flags)
        } else {
            script(&rt, &mut conn, &base, flags)
        };
    }
    match run_line(&rt, &mut conn, &base, &cli.command, &mut flags, false) {
        Outcome::Done(code) => code,
        Outcome::Interrupted => ExitCode::from(130),
        Outcome::Lost(e) => {
            eprintln!("mm: {e}");
            ExitCode::from(2)
        }
    }
}

/// Prints `help WORDS...` as the node would answer it, at the width of
/// the terminal (80 columns when stdout is not one).
fn local_help(words: &[String]) -> ExitCode {
    let width = std::io::IsTerminal::is_terminal(&std::io::stdout())
        .then(|| console::Term::stdout().size_checked())
        .flatten()
        .map(|(_, w)| w as usize);
    match mm_node::help(words, width) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("E: {e}");
            ExitCode::from(1)
        }
    }
}

/// A command that waits for transfers of this node: `file get ... wait`,
/// or one whose `file:`, `tar:` or `http(s)://` words the node fetches before
/// running it (not the
/// `file` commands, which take bare names, nor `mesh send`, whose targets
/// fetch for themselves).
fn is_blocking_get(argv: &[String]) -> bool {
    let get_wait = argv.len() >= 3
        && argv[0] == "file"
        && argv[1] == "get"
        && argv.last().is_some_and(|w| w == "wait");
    let fetches = !matches!(
        argv.first().map(String::as_str),
        None | Some("file" | "mesh")
    ) && argv.iter().any(|w| {
        ["file:", "tar:", "http://", "https://"]
            .iter()
            .any(|p| w.starts_with(p))
    });
    get_wait || fetches
}

fn print_answer(rs: &[mm_node::Response], flags: &Flags) -> ExitCode {
    let failed = rs.iter().any(|r| !r.error.is_empty());
    if flags.mode == Mode::Json {
        println!("{}", render_json(rs));
    } else {
        let (out, errors) = render(rs, flags);
        print!("{out}");
        for e in errors {
            eprintln!("{e}");
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// A script on standard input: one command per line, no prompt and no
/// history (a script's lines are not the operator's). Exits 1 if any line
/// failed, 2 if the node went away, 130 on Ctrl-C.
fn script(
    rt: &tokio::runtime::Runtime,
    conn: &mut Client,
    base: &Path,
    mut flags: Flags,
) -> ExitCode {
    use std::io::BufRead;
    let mut failed = false;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let argv = match split_line(&line) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("E: {e}");
                failed = true;
                continue;
            }
        };
        if argv.is_empty() {
            continue;
        }
        if argv == ["exit"] || argv == ["quit"] {
            break;
        }
        match run_line(rt, conn, base, &argv, &mut flags, false) {
            Outcome::Done(code) => failed |= code != ExitCode::SUCCESS,
            Outcome::Interrupted => return ExitCode::from(130),
            Outcome::Lost(e) => {
                eprintln!("mm: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// One line of the shell, a script, a `read` file or the command line:
/// its dot commands, `read`, or a command for the node.
fn run_line(
    rt: &tokio::runtime::Runtime,
    conn: &mut Client,
    base: &Path,
    argv: &[String],
    session: &mut Flags,
    in_read: bool,
) -> Outcome {
    let (argv, ops, flags) = match dots::parse(argv, session) {
        Ok(dots::Line::Session(text)) => {
            if let Some(t) = text {
                println!("{t}");
            }
            return Outcome::Done(ExitCode::SUCCESS);
        }
        Ok(dots::Line::Command { argv, ops, flags }) => (argv, ops, flags),
        Err(e) => {
            eprintln!("E: {e}");
            return Outcome::Done(ExitCode::from(1));
        }
    };
    if argv.first().is_some_and(|w| w == "read") {
        if in_read {
            eprintln!("E: cannot run nested `read` commands");
            return Outcome::Done(ExitCode::from(1));
        }
        return read_file(rt, conn, base, &argv, session);
    }
    one_command(rt, conn, base, &argv, &ops, flags)
}

/// `read FILE [check,continue]`: the file's lines, one command each, as if
/// typed; `#` starts a comment. Stops at the first line that fails, unless
/// `continue`; `check` only checks that each line is a command.
fn read_file(
    rt: &tokio::runtime::Runtime,
    conn: &mut Client,
    base: &Path,
    argv: &[String],
    session: &mut Flags,
) -> Outcome {
    let fail = |msg: String| {
        eprintln!("E: {msg}");
        Outcome::Done(ExitCode::from(1))
    };
    let (file, mode) = match argv {
        [_, f] => (f, None),
        [_, f, m] if m == "check" || m == "continue" => (f, Some(m.as_str())),
        _ => return fail("usage: read <file> [check,continue]".into()),
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(format!("read: cannot read {file}: {e}")),
    };
    let mut failed = false;
    for (n, line) in text.lines().enumerate() {
        let at = format!("{file}:{}", n + 1);
        let words = match split_line(line) {
            Ok(w) if w.is_empty() => continue,
            Ok(w) => w,
            Err(e) => return fail(format!("{at}: {e}")),
        };
        if mode == Some("check") {
            let mut scratch = session.clone();
            let checked = match dots::parse(&words, &mut scratch) {
                Ok(dots::Line::Command { argv, .. }) if argv[0] == "read" => {
                    Err("cannot run nested `read` commands".to_string())
                }
                Ok(dots::Line::Command { argv, .. }) => mm_node::check_command(&argv),
                Ok(dots::Line::Session(_)) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = checked {
                eprintln!("E: {at}: {e}");
                failed = true;
            }
            continue;
        }
        match run_line(rt, conn, base, &words, session, true) {
            Outcome::Done(code) if code != ExitCode::SUCCESS => {
                failed = true;
                if mode != Some("continue") {
                    return fail(format!("read: stopped at {at}: {line}"));
                }
            }
            Outcome::Done(_) => {}
            other => return other,
        }
    }
    Outcome::Done(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// How one command of the shell or a script ended.
enum Outcome {
    Done(ExitCode),
    /// Ctrl-C: the answer was not waited for (and the connection, which
    /// would still deliver it, must not be used again).
    Interrupted,
    /// The connection to the node broke.
    Lost(mm_node::Error),
}

/// Runs one command from the shell or a script: `help` here, the rest on
/// the node, with bars for a `file get ... wait`; Ctrl-C stops the wait.
fn one_command(
    rt: &tokio::runtime::Runtime,
    conn: &mut Client,
    base: &Path,
    argv: &[String],
    ops: &[Op],
    mut flags: Flags,
) -> Outcome {
    if argv[0] == "help" && flags.mode != Mode::Json {
        return Outcome::Done(local_help(&argv[1..]));
    }
    let waiting = is_blocking_get(argv);
    let bars = waiting
        .then(|| progress::Bars::start(rt, base.to_path_buf()))
        .flatten();
    let answer = rt.block_on(async {
        tokio::select! {
            a = conn.run(argv) => Some(a),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    if let Some(b) = bars {
        rt.block_on(b.stop());
    }
    match answer {
        Some(Ok(mut rs)) => match render::reshape(&mut rs, ops, &mut flags) {
            Ok(()) => Outcome::Done(print_answer(&rs, &flags)),
            Err(e) => {
                eprintln!("E: {e}");
                Outcome::Done(ExitCode::from(1))
            }
        },
        Some(Err(e)) => Outcome::Lost(e),
        None if waiting => {
            eprintln!("mm: {STOPPED_WAITING}");
            Outcome::Interrupted
        }
        None => {
            eprintln!("mm: stopped waiting for the answer; the command may still run on the node");
            Outcome::Interrupted
        }
    }
}

/// How long the shell tries to reach its node again after losing it (a
/// restart takes a second or two).
const RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// The interactive shell, with history in `~/.mm_history`. A node that
/// restarts is reached again; nothing is re-run by itself.
fn shell(
    rt: &tokio::runtime::Runtime,
    mut conn: Client,
    base: &Path,
    mut flags: Flags,
) -> ExitCode {
    // As bash does: Tab completes what is common and lists the rest (the
    // default cycles through the candidates, so a second Tab undoes the
    // first when there is only one).
    let config = rustyline::Config::builder()
        .completion_type(rustyline::CompletionType::List)
        .build();
    let mut ed =
        match rustyline::Editor::<complete::MeshFiles, rustyline::history::DefaultHistory>::with_config(config) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("mm: cannot start the shell: {e}");
                return ExitCode::from(1);
            }
        };
    ed.set_helper(Some(complete::MeshFiles {
        rt: rt.handle().clone(),
        base: base.to_path_buf(),
    }));
    let history = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".mm_history"));
    if let Some(h) = &history {
        let _ = ed.load_history(h);
    }
    let mut status = ExitCode::SUCCESS;
    loop {
        let line = match ed.readline("mm$ ") {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        };
        let argv = match split_line(&line) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("E: {e}");
                continue;
            }
        };
        if argv.is_empty() {
            continue;
        }
        let _ = ed.add_history_entry(line.as_str());
        if argv == ["exit"] || argv == ["quit"] {
            break;
        }
        let lost = match run_line(rt, &mut conn, base, &argv, &mut flags, false) {
            Outcome::Done(code) => {
                status = code;
                None
            }
            // The old connection would hand this answer to the next
            // command: take a new one.
            Outcome::Interrupted => Some(None),
            Outcome::Lost(e) => Some(Some(e)),
        };
        if let Some(e) = lost {
            if let Some(e) = &e {
                eprintln!("mm: {e}");
            }
            match rt.block_on(reconnect(base, e.is_some())) {
                Some(c) => conn = c,
                None => {
                    status = ExitCode::from(2);
                    break;
                }
            }
        }
    }
    if let Some(h) = &history {
        let _ = ed.save_history(h);
    }
    status
}

/// A new connection to the node, retried for [`RECONNECT_FOR`] (saying
/// so when `loud`); Ctrl-C gives up.
async fn reconnect(base: &Path, loud: bool) -> Option<Client> {
    let start = std::time::Instant::now();
    let mut said = false;
    loop {
        match Client::connect(base).await {
            Ok(c) => {
                if loud {
                    eprintln!("mm: reconnected to the node at {}", base.display());
                }
                return Some(c);
            }
            Err(e) if start.elapsed() > RECONNECT_FOR => {
                eprintln!("mm: {e}");
                eprintln!("mm: gave up after {}s", RECONNECT_FOR.as_secs());
                return None;
            }
            Err(_) => {}
        }
        if loud && !said {
            eprintln!(
                "mm: reconnecting to the node at {} (Ctrl-C gives up)...",
                base.display()
            );
            said = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => return None,
        }
    }
}

/// Splits a shell line into words: whitespace separates, single and double
/// quotes group, backslash escapes.
fn split_line(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') | (None, '\\') => match chars.next() {
                Some(n) => {
                    cur.push(n);
                    in_word = true;
                }
                None => return Err("line ends with a backslash".into()),
            },
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            // A comment, as in sh: `#` where a word would start.
            (None, '#') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::split_line;

    #[test]
    fn misplaced_options_move_in_front() {
        let w = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(
            super::options_first(&w("mesh status --base n1 --json")),
            "mm --base n1 --json mesh status"
        );
        assert_eq!(
            super::options_first(&w("mesh send all --base=/x host")),
            "mm --base=/x mesh send all host"
        );
        assert_eq!(
            super::misplaced_option(&w("mesh status --json")),
            Some("--json")
        );
        assert_eq!(
            super::unknown_option(&w("--bogus mesh status")),
            Some("--bogus")
        );
        assert_eq!(super::unknown_option(&w("-x")), Some("-x"));
        assert_eq!(super::unknown_option(&w("mesh send all -x")), None);
        assert_eq!(super::unknown_option(&w(".columns name host")), None);
        assert_eq!(super::misplaced_option(&w("file get --basement")), None);
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            split_line("  mesh   status ").unwrap(),
            vec!["mesh", "status"]
        );
        assert_eq!(
            split_line(r#"file get "a b" 'c d' e\ f """#).unwrap(),
            vec!["file", "get", "a b", "c d", "e f", ""]
        );
        assert!(split_line("echo 'x").is_err());
    }
}
