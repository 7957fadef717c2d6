//! The tracker's shell commands: parse, call [`TrackerHandle`], format.

use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use clap::Parser;
use p2pfs_tracker::TrackerHandle;

use crate::fmt::{count, size, table};
use crate::{resolve, Outcome};

/// Tracker shell commands.
#[derive(Debug, Parser)]
#[command(multicall = true, about = None, help_template = "{subcommands}")]
struct Line {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Start serving on IP PORT (e.g. `start 0.0.0.0 7000`)
    Start { ip: String, port: u16 },
    /// List online peers: address, id, files published and held, connected since
    #[command(name = "list_peers")]
    ListPeers,
    /// Ping the peer at IP PORT and print the round-trip time
    Ping { ip: String, port: u16 },
    /// List the files published by the peer at IP PORT
    Discover { ip: String, port: u16 },
    /// List every file: name, publisher, size, chunks, sources
    #[command(name = "list_files")]
    ListFiles,
    /// Show which peer holds which chunks of every file
    #[command(name = "list_chunkinfo")]
    ListChunkinfo,
    /// Stop the tracker and leave the shell
    Exit,
}

/// Runs one tracker command line.
pub(crate) async fn run_line(tracker: &TrackerHandle, words: Vec<String>) -> Outcome {
    let line = match Line::try_parse_from(words) {
        Ok(l) => l,
        Err(e) => return Outcome::usage(e),
    };
    match line.cmd {
        Cmd::Start { ip, port } => match resolve(&ip, port) {
            Err(e) => Outcome::fail(e),
            Ok(addr) => match tracker.start(addr).await {
                Ok(bound) => Outcome::ok(format!(
                    "tracker serving on {bound}\n{}",
                    crate::secrets::join_line(tracker)
                )),
                Err(e) => Outcome::fail(e.to_string()),
            },
        },
        Cmd::ListPeers => Outcome::ok(list_peers(tracker)),
        Cmd::Ping { ip, port } => match resolve(&ip, port) {
            Err(e) => Outcome::fail(e),
            Ok(addr) => match tracker.ping(addr).await {
                Ok(rtt) => Outcome::ok(format!(
                    "pong from {addr}: rtt {:.3} ms",
                    rtt.as_secs_f64() * 1000.0
                )),
                Err(e) => Outcome::fail(format!("ping failed: {e}")),
            },
        },
        Cmd::Discover { ip, port } => match resolve(&ip, port) {
            Err(e) => Outcome::fail(e),
            Ok(addr) => match tracker.discover(addr) {
                Ok((peer_id, files)) => Outcome::ok(discover_table(addr, &peer_id.short(), &files)),
                Err(e) => Outcome::fail(e.to_string()),
            },
        },
        Cmd::ListFiles => Outcome::ok(files_table(&tracker.files())),
        Cmd::ListChunkinfo => Outcome::ok(chunkinfo(&tracker.chunk_info())),
        Cmd::Exit => Outcome::exit(),
    }
}

fn list_peers(tracker: &TrackerHandle) -> String {
    let peers = tracker.peers();
    if peers.is_empty() {
        return "no peers online".into();
    }
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                p.addr.to_string(),
                p.peer_id.short(),
                p.published.to_string(),
                p.holding.to_string(),
                format!("{}s ago", now.saturating_sub(p.connected_since)),
            ]
        })
        .collect();
    format!(
        "{} online\n{}",
        count(peers.len() as u64, "peer"),
        table(
            &["ADDRESS", "PEER ID", "PUBLISHED", "HOLDING", "CONNECTED"],
            &rows
        )
    )
}

/// Formats a `discover` answer (shared with the peer shell).
pub(crate) fn discover_table(
    addr: SocketAddr,
    peer: &str,
    files: &[p2pfs_proto::message::PublishedInfo],
) -> String {
    if files.is_empty() {
        return format!("peer {addr} ({peer}) has published no files");
    }
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                size(f.size),
                f.chunks.to_string(),
                f.local_path.clone(),
                addr.to_string(),
            ]
        })
        .collect();
    format!(
        "peer {addr} ({peer}) publishes {}\n{}",
        count(files.len() as u64, "file"),
        table(&["NAME", "SIZE", "CHUNKS", "PATH", "ADDRESS"], &rows)
    )
}

/// Formats a file list (shared with the peer shell).
pub(crate) fn files_table(files: &[p2pfs_proto::message::FileInfo]) -> String {
    if files.is_empty() {
        return "no files published".into();
    }
    let rows: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            let publisher = if f.publisher_online {
                f.publisher.to_string()
            } else {
                format!("{} (offline)", f.publisher)
            };
            vec![
                f.name.clone(),
                publisher,
                size(f.size),
                f.chunks.to_string(),
                f.sources.to_string(),
                f.seeders.to_string(),
            ]
        })
        .collect();
    table(
        &["NAME", "PUBLISHER", "SIZE", "CHUNKS", "SOURCES", "SEEDERS"],
        &rows,
    )
}

fn chunkinfo(infos: &[p2pfs_proto::message::ChunkInfo]) -> String {
    if infos.is_empty() {
        return "no files published".into();
    }
    let mut out = Vec::new();
    for info in infos {
        let names: Vec<String> = info
            .names
            .iter()
            .map(|(n, a)| format!("'{n}' by {a}"))
            .collect();
        out.push(format!(
            "{} [{} chunks, content {}]",
            names.join(", "),
            info.chunks,
            info.content_id.short()
        ));
        for h in &info.holders {
            let have = h.have.count_ones();
            out.push(format!(
                "  {:<21} {:>5}/{:<5} [{}] {}",
                h.addr.to_string(),
                have,
                info.chunks,
                h.have.bar(40),
                if have == info.chunks {
                    "all".to_string()
                } else {
                    h.have.ranges()
                }
            ));
        }
    }
    out.join("\n")
}
