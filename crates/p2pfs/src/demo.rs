//! `p2pfs demo`: a tracker and three peers on loopback in one process.
//! Peer 1 publishes a sample file, peer 2 fetches it from peer 1, peer 3
//! fetches it from both (a swarm), and the user lands in peer 3's shell,
//! where `tracker <command>` reaches the tracker.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use p2pfs_peer::{DownloadState, PeerConfig, PeerHandle};
use p2pfs_tracker::TrackerHandle;
use tokio_util::sync::CancellationToken;

use crate::fmt::{count, rate, size};

pub(crate) async fn run(size_mib: u64, no_shell: bool, http: bool) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("p2pfs-demo-")
        .tempdir()
        .context("cannot create a demo folder")?;
    // One network secret for the whole demo, kept in memory only.
    let security = p2pfs_proto::Security::secret(p2pfs_proto::NetworkSecret::generate());
    let tracker = TrackerHandle::new(security.clone());
    let taddr = tracker.start("127.0.0.1:0".parse()?).await?;
    let exit = CancellationToken::new();
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    // "  web UI URL" after a daemon's line, when the web UIs are on.
    let web_ui = |app: p2pfs_http::Router| {
        let exit = exit.clone();
        async move {
            anyhow::Ok(if http {
                format!(
                    "  web UI {}",
                    crate::start_http(loopback, None, app, exit).await?.0
                )
            } else {
                String::new()
            })
        }
    };
    let tracker_url = web_ui(p2pfs_http::tracker::router(
        p2pfs_http::tracker::TrackerApi {
            tracker: tracker.clone(),
            exit: exit.clone(),
        },
    ))
    .await?;
    outln!("network secret generated for this demo: every connection below is authenticated and encrypted");
    outln!("tracker      {taddr}{tracker_url}");
    let mut peers = Vec::new();
    for i in 1..=3 {
        let peer = PeerHandle::start(PeerConfig {
            repo: dir.path().join(format!("peer{i}")),
            listen: "127.0.0.1:0".parse()?,
            allowed_dests: Vec::new(),
            security: security.clone(),
            read_ahead_kib: p2pfs_peer::server::SERVE_MEMORY_KIB,
            verifying_kib: p2pfs_peer::download::VERIFYING_KIB,
            max_sources: p2pfs_peer::download::MAX_SOURCES,
        })
        .await?;
        peer.connect(taddr).await?;
        let url = web_ui(p2pfs_http::peer::router(p2pfs_http::peer::PeerApi {
            peer: peer.clone(),
            exit: exit.clone(),
        }))
        .await?;
        outln!(
            "peer {i}       {}{url}  (repository {})",
            peer.listen_addr(),
            peer.repo().display()
        );
        peers.push(peer);
    }
    let sample = dir.path().join("sample.bin");
    write_sample(&sample, size_mib * 1024 * 1024)?;
    let p = peers[0].publish(&sample, "sample.bin").await?;
    outln!(
        "\npeer 1 published 'sample.bin' ({}, {})",
        size(p.size),
        count(p.chunks, "chunk")
    );
    for (i, peer) in peers.iter().enumerate().skip(1) {
        let d = peer.fetch("sample.bin", None, None).await?;
        let state = d.wait().await;
        let snap = d.snapshot();
        anyhow::ensure!(
            state == DownloadState::Done,
            "peer {} could not fetch: {state:?}",
            i + 1
        );
        outln!(
            "peer {} fetched it in {:.2}s ({}) into {}",
            i + 1,
            snap.elapsed.as_secs_f64(),
            rate(snap.rate),
            d.dest.display()
        );
    }
    let same = same_bytes(&sample, &peers[2].repo().join("downloads/sample.bin"))
        .context("cannot compare the fetched copy with the sample")?;
    outln!("bytes identical: {same}\n");
    outln!("{}", crate::tracker_shell::files_table(&tracker.files()));
    if no_shell {
        for p in &peers {
            p.shutdown().await;
        }
        tracker.shutdown();
        exit.cancel();
        return Ok(if same {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    outln!(
        "\nYou are peer 3 ({}). A short tour:",
        peers[2].listen_addr()
    );
    outln!("{}", tour(&peers, &sample));
    if http {
        outln!(
            "Open the web UIs above in a browser: publish, fetch and watch the chunk map live.\n"
        );
    }
    let code = crate::peer_shell_session(&peers[2], Some(tracker.clone()), None, &exit).await;
    exit.cancel();
    for p in &peers {
        p.shutdown().await;
    }
    tracker.shutdown();
    Ok(code)
}

/// The demo's short tour: commands to try in peer 3's shell, each with
/// what it shows, the descriptions in one column.
fn tour(peers: &[PeerHandle], sample: &std::path::Path) -> String {
    let steps = [
        ("list_files".to_owned(), "every file in the network"),
        (
            format!("discover 127.0.0.1 {}", peers[0].listen_addr().port()),
            "what peer 1 publishes",
        ),
        (
            format!("publish {} mine.bin", sample.display()),
            "share a file of your own",
        ),
        (
            "tracker list_chunkinfo".to_owned(),
            "who holds which chunks (any tracker command works after `tracker`)",
        ),
        (
            format!("tracker ping 127.0.0.1 {}", peers[1].listen_addr().port()),
            "the tracker's round trip to peer 2",
        ),
        ("help".to_owned(), "every command; `help fetch` for one"),
        ("exit".to_owned(), "leave (the demo folder is removed)"),
    ];
    // A long command (the sample's path) gets its description on the next
    // line rather than pushing every description to the right.
    const WIDEST: usize = 30;
    let width = steps
        .iter()
        .map(|(c, _)| c.len())
        .filter(|&len| len <= WIDEST)
        .max()
        .unwrap_or(0);
    steps
        .iter()
        .map(|(command, what)| {
            if command.len() > width {
                format!("  {command}\n  {:width$}  {what}\n", "")
            } else {
                format!("  {command:<width$}  {what}\n")
            }
        })
        .collect()
}

/// Whether two files hold the same bytes, read a block at a time (the
/// sample can be as large as `--size-mib` says).
fn same_bytes(a: &std::path::Path, b: &std::path::Path) -> std::io::Result<bool> {
    use std::io::Read;
    let (mut a, mut b) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if a.metadata()?.len() != b.metadata()?.len() {
        return Ok(false);
    }
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x)?;
        if n == 0 {
            return Ok(true);
        }
        b.read_exact(&mut y[..n])?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
    }
}

fn write_sample(path: &std::path::Path, bytes: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).context("cannot write the sample file")?,
    );
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        rand::Rng::fill(&mut rand::rng(), &mut block[..]);
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_compares_contents_block_by_block() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &data)?;
        std::fs::write(&b, &data)?;
        assert!(same_bytes(&a, &b)?);
        let mut other = data.clone();
        other[2_500_000] ^= 1;
        std::fs::write(&b, &other)?;
        assert!(!same_bytes(&a, &b)?);
        std::fs::write(&b, &data[..data.len() - 1])?;
        assert!(!same_bytes(&a, &b)?);
        Ok(())
    }
}
