//! The peer's shell commands: parse, call [`PeerHandle`], format.

use std::path::PathBuf;

use clap::Parser;
use p2pfs_peer::{DownloadState, PeerHandle};

use crate::fmt::{count, progress_line, size, table};
use crate::tracker_shell::{discover_table, files_table};
use crate::{resolve, Outcome};

#[derive(Debug, Parser)]
#[command(multicall = true, about = None, help_template = "{subcommands}")]
struct Line {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Connect to the tracker at IP PORT
    Connect { ip: String, port: u16 },
    /// Publish the local file LNAME under the name FNAME
    #[command(after_help = "Example: publish \"./my notes.txt\" \"notes ü.txt\"")]
    Publish { lname: PathBuf, fname: String },
    /// Fetch FNAME into DESTINATION (default: the repository's downloads folder),
    /// from every holder, or only from the peer at PEER_IP PEER_PORT
    #[command(
        after_help = "Examples:\n  fetch a.iso\n  fetch a.iso /tmp/a.iso\n  fetch a.iso 10.0.0.5 7001\n  fetch a.iso /tmp/a.iso 10.0.0.5 7001"
    )]
    Fetch {
        fname: String,
        #[arg(
            num_args = 0..=3,
            value_name = "DESTINATION | PEER_IP PEER_PORT",
            help = "[DESTINATION] [PEER_IP PEER_PORT]"
        )]
        rest: Vec<String>,
    },
    /// List every file in the network
    #[command(name = "list_files")]
    ListFiles,
    /// List the files published by the peer at IP PORT
    Discover { ip: String, port: u16 },
    /// Wait SECONDS (may be fractional) before answering each chunk request
    #[command(name = "set_delay")]
    SetDelay {
        /// Seconds to wait; 0 answers at once
        // A negative value is parsed, so that the range check can name it.
        #[arg(allow_negative_numbers = true)]
        seconds: f64,
    },
    /// Show downloads with their progress
    Downloads,
    /// Cancel download ID (verified chunks stay on disk)
    Cancel { id: u64 },
    /// Resume a cancelled, failed or interrupted download ID from its verified chunks
    Resume { id: u64 },
    /// Wait until every running download has finished (for scripts)
    Wait,
    /// Show this peer's address, tracker and published files
    Status,
    /// Leave the network (the tracker is told) and quit
    Exit,
}

/// Runs one peer command line.
pub(crate) async fn run_line(peer: &PeerHandle, words: Vec<String>) -> Outcome {
    let line = match Line::try_parse_from(words) {
        Ok(l) => l,
        Err(e) => return Outcome::usage(e),
    };
    match line.cmd {
        Cmd::Connect { ip, port } => match resolve(&ip, port) {
            Err(e) => Outcome::fail(e),
            Ok(addr) => match peer.connect(addr).await {
                Ok(adv) => Outcome::ok(format!(
                    "connected to tracker {addr}; other peers reach this peer at {adv}"
                )),
                Err(e) => Outcome::fail(e.to_string()),
            },
        },
        Cmd::Publish { lname, fname } => {
            let started = std::time::Instant::now();
            match peer.publish(&lname, &fname).await {
                Ok(p) => Outcome::ok(format!(
                    "published '{}' ({}, {}) from {} in {:.2}s",
                    p.name,
                    size(p.size),
                    count(p.chunks, "chunk"),
                    p.path.display(),
                    started.elapsed().as_secs_f64()
                )),
                Err(e) => Outcome::fail(format!("publish refused: {e}")),
            }
        }
        Cmd::Fetch { fname, rest } => fetch(peer, fname, rest).await,
        Cmd::ListFiles => match peer.files().await {
            Ok(files) => Outcome::ok(files_table(&files)),
            Err(e) => Outcome::fail(e.to_string()),
        },
        Cmd::Discover { ip, port } => match resolve(&ip, port) {
            Err(e) => Outcome::fail(e),
            Ok(addr) => match peer.discover(addr).await {
                Ok((id, files)) => Outcome::ok(discover_table(addr, &id.short(), &files)),
                Err(e) => Outcome::fail(e.to_string()),
            },
        },
        Cmd::SetDelay { seconds } => match peer.set_delay(seconds) {
            Ok(_) => Outcome::ok(format!("chunk requests are now answered after {seconds} s")),
            Err(e) => Outcome::fail(e.to_string()),
        },
        Cmd::Downloads => Outcome::ok(downloads(peer)),
        Cmd::Cancel { id } => match peer.download(id) {
            Some(d) if !d.snapshot().state.is_finished() => {
                d.cancel();
                Outcome::ok(format!("cancelling download #{id}"))
            }
            Some(_) => Outcome::fail(format!("download #{id} has already finished")),
            None => Outcome::fail(format!("no download #{id}; see 'downloads'")),
        },
        Cmd::Resume { id } => match peer.resume(id).await {
            Ok(d) => {
                let p = d.snapshot();
                Outcome::ok(format!(
                    "resuming download #{id} '{}': {} of {} chunks already verified",
                    d.name, p.chunks_done, p.chunks_total
                ))
            }
            Err(e) => Outcome::fail(e.to_string()),
        },
        Cmd::Wait => {
            let mut failed = false;
            for d in peer.downloads() {
                failed |= d.wait().await != DownloadState::Done;
            }
            if failed {
                Outcome::fail("some downloads did not complete; see 'downloads'".into())
            } else {
                Outcome::ok("all downloads finished".into())
            }
        }
        Cmd::Status => Outcome::ok(status(peer)),
        Cmd::Exit => Outcome::exit(),
    }
}

async fn fetch(peer: &PeerHandle, fname: String, rest: Vec<String>) -> Outcome {
    let (dest, from) = match rest.as_slice() {
        [] => (None, None),
        [d] => (Some(PathBuf::from(d)), None),
        [ip, port] if port.parse::<u16>().is_ok() && ip.parse::<std::net::IpAddr>().is_ok() => {
            match resolve(ip, port.parse().unwrap_or(0)) {
                Ok(a) => (None, Some(a)),
                Err(e) => return Outcome::fail(e),
            }
        }
        [_, _] => {
            return Outcome::fail(
                "fetch takes FNAME [DESTINATION] [PEER_IP PEER_PORT]; the last two words are not an IP and a port"
                    .into(),
            )
        }
        [d, ip, port] => match port.parse::<u16>().map_err(|_| format!("'{port}' is not a port")).and_then(|p| resolve(ip, p)) {
            Ok(a) => (Some(PathBuf::from(d)), Some(a)),
            Err(e) => return Outcome::fail(e),
        },
        _ => return Outcome::fail("too many arguments; see 'help fetch'".into()),
    };
    match peer.fetch(&fname, dest.as_deref(), from).await {
        Ok(d) => {
            let p = d.snapshot();
            Outcome::ok(format!(
                "fetching '{}' ({}, {}) into {} as download #{}",
                d.name,
                size(p.bytes_total),
                count(p.chunks_total, "chunk"),
                d.dest.display(),
                d.id
            ))
        }
        Err(e) => Outcome::fail(format!("fetch refused: {e}")),
    }
}

fn downloads(peer: &PeerHandle) -> String {
    let all = peer.downloads();
    if all.is_empty() {
        return "no downloads yet".into();
    }
    all.iter()
        .map(|d| progress_line(d.id, &d.name, &d.snapshot(), 30))
        .collect::<Vec<_>>()
        .join("\n")
}

fn status(peer: &PeerHandle) -> String {
    let mut out = vec![
        format!("peer id     {}", peer.peer_id()),
        format!("listening   {}", peer.listen_addr()),
        format!("repository  {}", peer.repo().display()),
        match (peer.tracker_addr(), peer.advertised_addr()) {
            (Some(t), Some(a)) => format!("tracker     {t} (others reach this peer at {a})"),
            _ => "tracker     not connected".into(),
        },
        format!("delay       {} s", peer.delay().as_secs_f64()),
        format!(
            "uploaded    {} in {} chunks",
            size(peer.stats().uploaded().0),
            peer.stats().uploaded().1
        ),
    ];
    let pubs = peer.publications();
    if !pubs.is_empty() {
        let rows: Vec<Vec<String>> = pubs
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    size(p.size),
                    p.chunks.to_string(),
                    p.path.display().to_string(),
                ]
            })
            .collect();
        out.push(table(&["PUBLISHED", "SIZE", "CHUNKS", "PATH"], &rows));
    }
    out.join("\n")
}

/// Text for a download that ended, for the event printer.
pub(crate) fn ended(peer: &PeerHandle, id: u64, name: &str, state: &DownloadState) -> String {
    let Some(d) = peer.download(id) else {
        return format!("download #{id} '{name}' ended");
    };
    let p = d.snapshot();
    match state {
        DownloadState::Done if p.bytes_at_start > 0 => format!(
            "fetched '{name}' into {} ({} in {:.2}s, {}; the other {} were verified before)",
            d.dest.display(),
            size(p.bytes_total.saturating_sub(p.bytes_at_start)),
            p.elapsed.as_secs_f64(),
            crate::fmt::rate(p.rate),
            size(p.bytes_at_start),
        ),
        DownloadState::Done => format!(
            "fetched '{name}' into {} ({} in {:.2}s, {})",
            d.dest.display(),
            size(p.bytes_total),
            p.elapsed.as_secs_f64(),
            crate::fmt::rate(p.rate)
        ),
        DownloadState::Failed(why) => format!("fetch of '{name}' failed: {why}"),
        DownloadState::Cancelled => {
            format!(
                "fetch of '{name}' cancelled; {} chunks kept (`resume {id}` continues it)",
                p.chunks_done
            )
        }
        DownloadState::Running => String::new(),
    }
}
