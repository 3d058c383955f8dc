//! `mm`: `mm serve` runs a node; `mm keygen` prints a cluster key; any other
//! `mm COMMAND...` is sent to the local node, and its answer printed. With no
//! command, an interactive shell.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

mod render;

use clap::Parser;
use mm_node::control::Client;
use render::{render, render_json};

#[derive(Parser)]
#[command(
    name = "mm",
    version,
    about = "Drive an mm cluster: `mm serve` starts a node, `mm help` lists the commands",
    override_usage = "mm [--base DIR] [--json] [COMMAND...]\n       mm serve [OPTIONS]\n       mm keygen"
)]
struct Cli {
    /// The node's base directory (its control socket is BASE/mm.sock).
    #[arg(long, default_value = "/tmp/mm")]
    base: PathBuf,
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
    /// [default: /tmp/mm].
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.first().map(String::as_str) {
        Some("serve") => serve(&cli),
        Some("keygen") if cli.command.len() == 1 => {
            print!("{}", mm_overlay::new_psk());
            ExitCode::SUCCESS
        }
        _ => client(cli),
    }
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
    let base = s.base.unwrap_or_else(|| cli.base.clone());
    let name = s.name.unwrap_or_else(hostname);
    if let Err(e) = mm_overlay::check_name(&name) {
        eprintln!("mm serve: {e} (set one with --name)");
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
        degree: s.degree,
        context: s.context,
        psk_file: s.psk_file,
        peers: s.peers,
        mdns: !s.no_mdns,
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

fn client(cli: Cli) -> ExitCode {
    let rt = runtime();
    let mut conn = match rt.block_on(Client::connect(&cli.base)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mm: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.command.is_empty() {
        return shell(&rt, &mut conn, cli.json);
    }
    let progress = (is_blocking_get(&cli.command)
        && std::io::IsTerminal::is_terminal(&std::io::stderr()))
    .then(|| rt.spawn(progress_bar(cli.base.clone())));
    let answer = rt.block_on(conn.run(&cli.command));
    if let Some(p) = progress {
        p.abort();
        eprint!("\r\x1b[K");
    }
    match answer {
        Ok(rs) => print_answer(&rs, cli.json),
        Err(e) => {
            eprintln!("mm: {e}");
            ExitCode::from(2)
        }
    }
}

fn is_blocking_get(argv: &[String]) -> bool {
    argv.len() >= 3
        && argv[0] == "file"
        && argv[1] == "get"
        && argv.last().is_some_and(|w| w == "wait")
}

/// While a `file get ... wait` runs, shows its transfers' progress on a
/// second connection to the node.
async fn progress_bar(base: PathBuf) {
    let Ok(mut c) = Client::connect(&base).await else {
        return;
    };
    let status = vec!["file".to_string(), "status".to_string()];
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let Ok(rs) = c.run(&status).await else {
            return;
        };
        let Some(r) = rs.first() else { continue };
        let col = |name: &str| r.header.iter().position(|h| h == name);
        let (Some(f), Some(done), Some(bytes), Some(rate), Some(eta)) = (
            col("filename"),
            col("completed"),
            col("bytes"),
            col("rate"),
            col("eta"),
        ) else {
            continue;
        };
        let line: Vec<String> = r
            .tabular
            .iter()
            .map(|row| {
                let (d, t) = row[done].split_once('/').unwrap_or(("0", "1"));
                let frac =
                    d.parse::<f64>().unwrap_or(0.0) / t.parse::<f64>().unwrap_or(1.0).max(1.0);
                let filled = (frac * 20.0) as usize;
                format!(
                    "{} [{}{}] {} {} eta {}",
                    row[f],
                    "#".repeat(filled),
                    " ".repeat(20 - filled.min(20)),
                    row[bytes],
                    row[rate],
                    row[eta]
                )
            })
            .collect();
        eprint!("\r\x1b[K{}", line.join(" | "));
    }
}

fn print_answer(rs: &[mm_node::Response], json: bool) -> ExitCode {
    let failed = rs.iter().any(|r| !r.error.is_empty());
    if json {
        println!("{}", render_json(rs));
    } else {
        let (out, errors) = render(rs);
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

fn shell(rt: &tokio::runtime::Runtime, conn: &mut Client, json: bool) -> ExitCode {
    let mut ed = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("mm: cannot start the shell: {e}");
            return ExitCode::from(1);
        }
    };
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
        match rt.block_on(conn.run(&argv)) {
            Ok(rs) => status = print_answer(&rs, json),
            Err(e) => {
                eprintln!("mm: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(h) = &history {
        let _ = ed.save_history(h);
    }
    status
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
