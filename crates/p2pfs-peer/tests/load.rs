//! Load: one seeder and 200 downloaders of the same file, all started at
//! once, in one process over real sockets and files. Every downloader must
//! end with the right bytes, and the tracker must keep answering meanwhile.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2pfs_peer::{DownloadState, PeerConfig, PeerHandle};
use p2pfs_proto::limits::MIN_CHUNK_SIZE;
use p2pfs_tracker::TrackerHandle;
use rand::{RngCore, SeedableRng};

const DOWNLOADERS: usize = 200;

/// The test network's security: one fixed secret for every node.
fn net() -> p2pfs_proto::Security {
    p2pfs_proto::Security::secret(p2pfs_proto::NetworkSecret::from_bytes([7; 32]))
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_seeder_serves_200_concurrent_downloaders() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerHandle::new(net());
    let taddr = tracker.start(localhost()).await.unwrap();
    let mut data = vec![0u8; 8 * MIN_CHUNK_SIZE as usize + 100];
    rand::rngs::StdRng::seed_from_u64(9).fill_bytes(&mut data);
    let path = dir.path().join("popular.bin");
    std::fs::write(&path, &data).unwrap();

    let start_peer = |name: String| {
        let repo = dir.path().join(name);
        async move {
            let p = PeerHandle::start(PeerConfig {
                repo,
                listen: localhost(),
                allowed_dests: Vec::new(),
                security: net(),
                read_ahead_kib: p2pfs_peer::server::SERVE_MEMORY_KIB,
                verifying_kib: p2pfs_peer::download::VERIFYING_KIB,
                max_sources: p2pfs_peer::download::MAX_SOURCES,
            })
            .await
            .expect("peer starts");
            p.connect(taddr).await.expect("peer connects");
            p
        }
    };
    let seeder = start_peer("seeder".into()).await;
    seeder.publish(&path, "popular.bin").await.unwrap();
    let probe = start_peer("probe".into()).await;

    // All along, the tracker keeps answering another peer's requests.
    let answered = Arc::new(AtomicU64::new(0));
    let prober = {
        let answered = answered.clone();
        let probe = probe.clone();
        tokio::spawn(async move {
            loop {
                let files = probe.files().await.expect("the tracker answers under load");
                assert_eq!(files.len(), 1);
                answered.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let mut joins = Vec::new();
    for i in 0..DOWNLOADERS {
        let peer = start_peer(format!("d{i}")).await;
        joins.push(tokio::spawn(async move {
            let d = peer
                .fetch("popular.bin", None, None)
                .await
                .expect("fetch starts");
            let state = tokio::time::timeout(Duration::from_secs(120), d.wait())
                .await
                .expect("download ends in time");
            (peer, d, state)
        }));
    }

    let mut peers = Vec::new();
    for j in joins {
        let (peer, d, state) = j.await.expect("download task");
        assert_eq!(state, DownloadState::Done, "downloader {}", d.id);
        let got = std::fs::read(&d.dest).expect("fetched file");
        assert!(got == data, "{} has the wrong bytes", d.dest.display());
        peers.push(peer);
    }
    assert!(!prober.is_finished(), "the tracker probe failed");
    prober.abort();
    assert!(answered.load(Ordering::Relaxed) > 0);
    let (uploaded, _) = seeder.stats().uploaded();
    eprintln!(
        "{DOWNLOADERS} downloaders done in {:.1} s; the seeder uploaded {:.1} copies; {} tracker probes answered",
        started.elapsed().as_secs_f64(),
        uploaded as f64 / data.len() as f64,
        answered.load(Ordering::Relaxed)
    );
    let files = tracker.files();
    assert_eq!(files[0].seeders as usize, DOWNLOADERS + 1);
    for p in peers.iter().chain([&seeder, &probe]) {
        p.shutdown().await;
    }
    tracker.shutdown();
}
