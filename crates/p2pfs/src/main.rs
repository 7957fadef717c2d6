//! `p2pfs`: one binary for the tracker, the peer and an all-local demo.
//!
//! - `main.rs`: command-line parsing, logging, the shell loops.
//! - [`console`]: line input (rustyline or a pipe) and output above the prompt.
//! - [`tracker_shell`] / [`peer_shell`]: the shells' commands.
//! - [`demo`]: a tracker and three peers in one process.
//! - [`ctl`]: script-friendly commands sent to a daemon's HTTP API.
//! - [`fmt`]: tables, sizes, progress lines.

/// `println!` for the binary's own output, without its panic when stdout
/// is closed: after `p2pfs demo | head` the rest of the output is simply not
/// wanted, and a daemon whose stdout went away keeps serving.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod console;
mod ctl;
mod demo;
mod fmt;
mod peer_shell;
mod secrets;
mod tracker_shell;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use console::{Console, Input};
use p2pfs_peer::{PeerConfig, PeerEvent, PeerHandle};
use p2pfs_tracker::TrackerHandle;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Peer-to-peer file sharing: a tracker that knows who holds what, and
/// peers that publish, serve and fetch files in a swarm.
#[derive(Debug, Parser)]
#[command(name = "p2pfs", version, propagate_version = true)]
#[command(
    after_help = "Try `p2pfs demo` for a tracker and three peers on this machine.\nLogs go to stderr; set RUST_LOG=debug for more."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a tracker, with its command shell
    #[command(
        after_help = "Shell commands: start ip port, list_peers, ping ip port, discover ip port,\nlist_files, list_chunkinfo, exit, help [command]\n\nThe network is private: on first start the tracker creates a network secret\nin DIR/network.secret and, once serving, prints the command peers join with.\n\nExamples:\n  p2pfs tracker --listen 0.0.0.0:7000\n  p2pfs tracker            (then: start 0.0.0.0 7000)"
    )]
    Tracker {
        /// Serve at once on this address (otherwise use the shell's `start ip port`)
        #[arg(long, value_name = "IP:PORT")]
        listen: Option<SocketAddr>,
        /// Data folder: keeps the network secret
        #[arg(long, value_name = "DIR", default_value = "p2pfs-tracker")]
        data: PathBuf,
        #[command(flatten)]
        secret: secrets::SecretArgs,
        /// No shell: serve until SIGINT, SIGTERM or `POST /api/exit` (needs
        /// --listen, or the web UI to start it)
        #[arg(long)]
        no_shell: bool,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Run a peer, with its command shell
    #[command(
        after_help = "Shell commands: connect ip port, publish lname fname,\nfetch fname [destination] [peerIP peerPort], list_files, discover ip port,\nset_delay seconds, downloads, cancel id, wait, status, exit, help [command]\n\nThe first start needs the network's secret: the join token the tracker prints\n(or --secret-file). The peer keeps it in REPO/network.secret for later starts.\n\nExamples:\n  p2pfs peer --join p2pfs1:SECRET@192.168.1.5:7000 --repo ./alice\n  p2pfs peer --tracker 192.168.1.5:7000 --repo ./alice     (later starts)"
    )]
    Peer {
        /// Join a network: the token the tracker prints (tracker address and
        /// network secret)
        #[arg(long, value_name = "TOKEN", env = "P2PFS_JOIN", hide_env_values = true)]
        join: Option<String>,
        /// Connect to this tracker at start (default: the join token's); a
        /// host name works too (HOST:PORT)
        #[arg(long, value_name = "IP:PORT", value_parser = host_port)]
        tracker: Option<SocketAddr>,
        /// Listen for chunk requests here (port 0 picks a free port)
        #[arg(long, value_name = "IP:PORT", default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// Repository folder: its database and the default download folder
        #[arg(long, value_name = "DIR", default_value = "p2pfs-repo")]
        repo: PathBuf,
        /// Only let fetches write under these folders (and the repository's
        /// downloads folder); repeatable. Default: anywhere but the
        /// repository's own files
        #[arg(long, value_name = "DIR")]
        allow_dest: Vec<PathBuf>,
        /// No shell: serve until SIGINT, SIGTERM or `POST /api/exit`
        #[arg(long)]
        no_shell: bool,
        #[command(flatten)]
        secret: secrets::SecretArgs,
        #[command(flatten)]
        http: HttpArgs,
    },
    /// Start a tracker and three peers on loopback, share a sample file
    /// across them, and open a shell on the last peer
    Demo {
        /// Size of the sample file in MiB
        #[arg(long, default_value_t = 32)]
        size_mib: u64,
        /// Run the demo and exit instead of opening a shell
        #[arg(long)]
        no_shell: bool,
        /// Do not serve the daemons' web UIs and HTTP APIs (by default they
        /// are served on loopback, on free ports)
        #[arg(long)]
        no_http: bool,
    },
    /// Send one command to a running daemon's HTTP API (for scripts)
    Ctl(ctl::CtlArgs),
}

/// Where the HTTP API and web UI listen.
#[derive(Debug, clap::Args)]
struct HttpArgs {
    /// Serve the HTTP API and web UI here (port 0 picks a free port)
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:0")]
    http: SocketAddr,
    /// Do not serve the HTTP API and web UI
    #[arg(long, conflicts_with = "http")]
    no_http: bool,
    /// Access token the HTTP API requires. Without one, the API answers only
    /// on loopback; on any other address a token is generated and printed
    #[arg(
        long,
        value_name = "TOKEN",
        env = "P2PFS_HTTP_TOKEN",
        hide_env_values = true
    )]
    http_token: Option<String>,
}

impl HttpArgs {
    fn addr(&self) -> Option<(SocketAddr, Option<String>)> {
        (!self.no_http).then(|| (self.http, self.http_token.clone()))
    }
}

/// Binds the HTTP API and web UI at `addr` and serves `app` until `stop`,
/// requiring `token` (generated when `addr` is not loopback and none is
/// given). Returns the UI's URL and a line about the token, if any.
pub(crate) async fn start_http(
    addr: SocketAddr,
    token: Option<String>,
    app: p2pfs_http::Router,
    stop: CancellationToken,
) -> anyhow::Result<(String, Option<String>)> {
    use anyhow::Context;
    if token.as_ref().is_some_and(|t| t.trim().len() < 16) {
        anyhow::bail!("the HTTP access token must be at least 16 characters long");
    }
    let server = p2pfs_http::HttpServer::bind(addr)
        .await
        .with_context(|| format!("cannot serve the web UI on {addr}"))?;
    let (token, note) = match token {
        Some(t) => (Some(t.trim().to_string()), None),
        None if !addr.ip().is_loopback() => {
            let t = p2pfs_http::Access::generate_token();
            let note = format!(
                "the HTTP API on {addr} is reachable from other machines, so it needs this access token (the web UI asks for it once): {t}"
            );
            (Some(t), Some(note))
        }
        None => (None, None),
    };
    let url = server.url();
    server.spawn(app, p2pfs_http::Access { token }, stop);
    Ok((url, note))
}

/// The result of one shell command.
pub(crate) struct Outcome {
    text: String,
    failed: bool,
    exit: bool,
}

impl Outcome {
    pub(crate) fn ok(text: String) -> Self {
        Self {
            text,
            failed: false,
            exit: false,
        }
    }
    pub(crate) fn fail(text: String) -> Self {
        Self {
            text: format!("error: {text}"),
            failed: true,
            exit: false,
        }
    }
    pub(crate) fn exit() -> Self {
        Self {
            text: String::new(),
            failed: false,
            exit: true,
        }
    }
    pub(crate) fn usage(e: clap::Error) -> Self {
        use clap::error::ErrorKind;
        let text = e.render().to_string().trim_end().to_string();
        match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => Self {
                text,
                failed: false,
                exit: false,
            },
            _ => Self {
                text,
                failed: true,
                exit: false,
            },
        }
    }
}

/// Resolves an `ip port` pair (host names allowed) to a socket address.
pub(crate) fn resolve(ip: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = ip.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (ip, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(SocketAddr::is_ipv4))
        .ok_or_else(|| format!("'{ip}' is not an IP address or a known host name"))
}

/// Parses `IP:PORT` or `HOST:PORT` (the host name resolved now, as the
/// shells' `connect` does).
fn host_port(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("'{text}' is not IP:PORT or HOST:PORT (e.g. 10.0.0.1:7000)"))?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("'{port}' is not a port number (0-65535)"))?;
    resolve(host, port)
}

fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

/// How often (in task polls) a tracker's worker threads look at the
/// runtime's global queue.
const TRACKER_GLOBAL_QUEUE_INTERVAL: u32 = 15;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = match cli.command {
        Command::Tracker { no_shell, .. } | Command::Peer { no_shell, .. } => !no_shell,
        Command::Demo { .. } => true,
        Command::Ctl(args) => return ctl::run(args),
    };
    init_logging(if quiet { "warn" } else { "info" });
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if matches!(cli.command, Command::Tracker { .. }) {
        // A tracker serves thousands of connections whose tasks overflow a
        // worker's local queue into the global one. Tokio's default looks
        // there rarely when tasks are short, and those connections waited:
        // checking every 15 polls cut the tracker's p99 under 200,000
        // requests/s offered from 50 to 13 ms (medians of 5 runs;
        // BENCHMARKS.md, benchmark 6).
        builder.global_queue_interval(TRACKER_GLOBAL_QUEUE_INTERVAL);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Tracker {
                listen,
                data,
                secret,
                no_shell,
                http,
            } => {
                let security = secrets::tracker(&secret, &data)?;
                run_tracker(listen, security, no_shell, http.addr()).await
            }
            Command::Peer {
                join,
                tracker,
                listen,
                repo,
                allow_dest,
                no_shell,
                secret,
                http,
            } => {
                let (security, token_tracker) = secrets::peer(&secret, join.as_deref(), &repo)?;
                let tracker = match (tracker, token_tracker) {
                    (Some(t), _) => Some(t),
                    (None, Some(t)) => Some(
                        t.to_socket_addrs()
                            .ok()
                            .and_then(|mut a| a.next())
                            .ok_or_else(|| {
                                anyhow::anyhow!("cannot resolve the join token's tracker '{t}'")
                            })?,
                    ),
                    (None, None) => None,
                };
                let config = PeerConfig {
                    repo,
                    listen,
                    allowed_dests: allow_dest,
                    security,
                    read_ahead_kib: p2pfs_peer::server::SERVE_MEMORY_KIB,
                    verifying_kib: p2pfs_peer::download::VERIFYING_KIB,
                    max_sources: p2pfs_peer::download::MAX_SOURCES,
                };
                run_peer(tracker, config, no_shell, http.addr()).await
            }
            Command::Demo {
                size_mib,
                no_shell,
                no_http,
            } => demo::run(size_mib, no_shell, !no_http).await,
            // Handled above, without a runtime; kept for completeness.
            Command::Ctl(args) => Ok(ctl::run(args)),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes, as `{:#}` prints them, in words (no "os error
/// N") and without a cause that the text before already says: p2pfs's
/// errors word their cause in their own message ("cannot listen on
/// 1.2.3.4:80: cannot assign requested address"), and `{:#}` would repeat
/// it.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = p2pfs_proto::error_words(&cause.to_string());
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves on SIGHUP: the terminal went away. Only an interactive shell
/// listens for it, so that a daemon started under `nohup` keeps running.
async fn hangup_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut hup) = signal(SignalKind::hangup()) {
            hup.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await;
}

async fn run_tracker(
    listen: Option<SocketAddr>,
    security: p2pfs_proto::Security,
    no_shell: bool,
    http: Option<(SocketAddr, Option<String>)>,
) -> anyhow::Result<ExitCode> {
    if no_shell && listen.is_none() && http.is_none() {
        anyhow::bail!("--no-shell needs --listen IP:PORT (or the web UI, to start it from there)");
    }
    if security.is_insecure() {
        outln!("{}", secrets::INSECURE_WARNING);
    }
    let tracker = TrackerHandle::new(security);
    if let Some(addr) = listen {
        let bound = tracker.start(addr).await?;
        outln!("tracker serving on {bound}");
        outln!("{}", secrets::join_line(&tracker));
    }
    let exit = CancellationToken::new();
    if let Some((addr, token)) = http {
        let app = p2pfs_http::tracker::router(p2pfs_http::tracker::TrackerApi {
            tracker: tracker.clone(),
            exit: exit.clone(),
        });
        let (url, note) = start_http(addr, token, app, exit.clone()).await?;
        outln!("web UI and API on {url}");
        if let Some(n) = note {
            outln!("{n}");
        }
    }
    if no_shell {
        tokio::select! {
            () = shutdown_signal() => {}
            () = exit.cancelled() => {}
        }
        tracker.shutdown();
        exit.cancel();
        return Ok(ExitCode::SUCCESS);
    }
    if listen.is_none() {
        outln!(
            "tracker not serving yet: type `start IP PORT` (e.g. `start 0.0.0.0 7000`), or `help`"
        );
    }
    let (console, rx) = Console::start("tracker> ".into(), None);
    let code = shell_loop(&console, rx, &exit, |words| {
        let tracker = tracker.clone();
        async move { tracker_shell::run_line(&tracker, words).await }
    })
    .await;
    tracker.shutdown();
    exit.cancel();
    Ok(code)
}

async fn run_peer(
    tracker: Option<SocketAddr>,
    config: PeerConfig,
    no_shell: bool,
    http: Option<(SocketAddr, Option<String>)>,
) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    if config.security.is_insecure() {
        outln!("{}", secrets::INSECURE_WARNING);
    }
    let peer = PeerHandle::start(config)
        .await
        .context("cannot start the peer")?;
    outln!(
        "peer {} listening on {} (repository {})",
        peer.peer_id().short(),
        peer.listen_addr(),
        peer.repo().display()
    );
    let exit = CancellationToken::new();
    if let Some((addr, token)) = http {
        let app = p2pfs_http::peer::router(p2pfs_http::peer::PeerApi {
            peer: peer.clone(),
            exit: exit.clone(),
        });
        let (url, note) = start_http(addr, token, app, exit.clone()).await?;
        outln!("web UI and API on {url}");
        if let Some(n) = note {
            outln!("{n}");
        }
    }
    if let Some(t) = tracker {
        match peer.connect(t).await {
            Ok(adv) => outln!("connected to tracker {t}; other peers reach this peer at {adv}"),
            Err(e) if no_shell => return Err(e).context("cannot connect to the tracker"),
            Err(e) => outln!("error: {e} (use `connect IP PORT` to try again)"),
        }
    } else if !no_shell {
        outln!("not connected: type `connect IP PORT`, or `help`");
    }
    if no_shell {
        tokio::select! {
            () = shutdown_signal() => {}
            () = exit.cancelled() => {}
        }
        peer.shutdown().await;
        exit.cancel();
        return Ok(ExitCode::SUCCESS);
    }
    let history = dirs_history(peer.repo());
    let code = peer_shell_session(&peer, None, history, &exit).await;
    peer.shutdown().await;
    exit.cancel();
    Ok(code)
}

fn dirs_history(repo: &std::path::Path) -> Option<PathBuf> {
    Some(repo.join("shell_history"))
}

/// Runs a peer shell (optionally with `tracker ...` commands for the demo).
pub(crate) async fn peer_shell_session(
    peer: &PeerHandle,
    tracker: Option<TrackerHandle>,
    history: Option<PathBuf>,
    exit: &CancellationToken,
) -> ExitCode {
    let (console, rx) = Console::start("peer> ".into(), history);
    let events = tokio::spawn(print_events(peer.clone(), console.clone()));
    let bars = tokio::spawn(draw_progress(peer.clone(), console.clone()));
    let code = shell_loop(&console, rx, exit, |mut words| {
        let peer = peer.clone();
        let tracker = tracker.clone();
        async move {
            match (&tracker, words.first().map(String::as_str)) {
                (Some(t), Some("tracker")) => {
                    words.remove(0);
                    if words.is_empty() {
                        words.push("help".into());
                    }
                    tracker_shell::run_line(t, words).await
                }
                _ => peer_shell::run_line(&peer, words).await,
            }
        }
    })
    .await;
    events.abort();
    bars.abort();
    code
}

async fn print_events(peer: PeerHandle, console: Console) {
    let mut rx = peer.subscribe();
    loop {
        let text = match rx.recv().await {
            Ok(PeerEvent::DownloadEnded { id, name, state }) => {
                peer_shell::ended(&peer, id, &name, &state)
            }
            Ok(PeerEvent::TrackerLost(a)) => {
                format!("warning: lost the connection to tracker {a}; reconnecting")
            }
            Ok(PeerEvent::TrackerReconnected(a)) => format!("reconnected to tracker {a}"),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        if !text.is_empty() {
            console.print(&text);
        }
    }
}

async fn draw_progress(peer: PeerHandle, console: Console) {
    if !console.interactive() {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        let lines: Vec<String> = peer
            .downloads()
            .iter()
            .filter(|d| !d.snapshot().state.is_finished())
            .map(|d| fmt::progress_line(d.id, &d.name, &d.snapshot(), 24))
            .collect();
        console.draw_bars(&lines);
    }
}

/// Reads commands until `exit`, end of input on a terminal, a signal, or
/// `stop` (the HTTP API's exit). From a pipe, end of input leaves the daemon
/// serving until a signal or `stop`.
async fn shell_loop<F, Fut>(
    console: &Console,
    mut rx: mpsc::Receiver<Input>,
    stop: &CancellationToken,
    mut run: F,
) -> ExitCode
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let mut failed = false;
    loop {
        let input = tokio::select! {
            i = rx.recv() => i.unwrap_or(Input::Eof),
            () = shutdown_signal() => break,
            // Closing the terminal ends the shell like `exit`: the daemon
            // leaves the tracker, and the demo removes its folder.
            () = hangup_signal(), if console.interactive() => break,
            () = stop.cancelled() => {
                console.print("exit requested from the web UI or API");
                break;
            }
        };
        match input {
            Input::Line(line, ack) => {
                let outcome = match console::split_words(&line) {
                    Ok(words) if words.is_empty() => None,
                    Ok(words) => Some(run(words).await),
                    Err(e) => Some(Outcome::fail(e)),
                };
                let mut exit = false;
                if let Some(o) = outcome {
                    failed |= o.failed;
                    exit = o.exit;
                    if !o.text.is_empty() {
                        console.print(&o.text);
                    }
                }
                let _ = ack.send(());
                if exit {
                    break;
                }
            }
            Input::Interrupted => console.print("(type `exit` to quit)"),
            Input::Eof if console.interactive() => break,
            Input::Eof => {
                tokio::select! {
                    () = shutdown_signal() => {}
                    () = stop.cancelled() => {}
                }
                break;
            }
        }
    }
    if failed && !console.interactive() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_addresses_take_an_ip_or_a_host_name() {
        assert_eq!(
            host_port("10.0.0.1:7000"),
            Ok(SocketAddr::from(([10, 0, 0, 1], 7000)))
        );
        assert_eq!(
            host_port("localhost:7000"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 7000)))
        );
        assert!(host_port("localhost").unwrap_err().contains("HOST:PORT"));
        assert!(host_port("localhost:http")
            .unwrap_err()
            .contains("not a port number"));
    }
}
