//! The durable repository, in process with real sockets and files:
//! publications and downloads survive a restart, an interrupted or
//! cancelled download resumes from its verified chunks, and a published
//! file that changes on disk is withdrawn and never served wrong.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use p2pfs_peer::{DownloadState, PeerConfig, PeerHandle};
use p2pfs_proto::limits::MIN_CHUNK_SIZE;
use p2pfs_tracker::TrackerHandle;
use rand::{RngCore, SeedableRng};

const CHUNK: usize = MIN_CHUNK_SIZE as usize;

/// The test network's security: one fixed secret for every node.
fn net() -> p2pfs_proto::Security {
    p2pfs_proto::Security::secret(p2pfs_proto::NetworkSecret::from_bytes([7; 32]))
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

async fn peer(repo: &Path, tracker: SocketAddr) -> PeerHandle {
    let p = PeerHandle::start(PeerConfig {
        repo: repo.to_path_buf(),
        listen: localhost(),
        allowed_dests: Vec::new(),
        security: net(),
        read_ahead_kib: p2pfs_peer::server::SERVE_MEMORY_KIB,
        verifying_kib: p2pfs_peer::download::VERIFYING_KIB,
        max_sources: p2pfs_peer::download::MAX_SOURCES,
    })
    .await
    .expect("peer starts");
    p.connect(tracker).await.expect("peer connects");
    p
}

async fn until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not true after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn within<F: std::future::Future>(secs: u64, body: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publications_and_fetched_files_survive_a_restart() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let tracker = TrackerHandle::new(net());
        let taddr = tracker.start(localhost()).await.unwrap();
        let data = random_bytes(3 * CHUNK + 5, 1);
        let path = dir.path().join("a.bin");
        std::fs::write(&path, &data).unwrap();

        let a = peer(&dir.path().join("a"), taddr).await;
        let id_before = a.peer_id();
        a.publish(&path, "a.bin").await.unwrap();
        let b = peer(&dir.path().join("b"), taddr).await;
        let d = b.fetch("a.bin", None, None).await.unwrap();
        assert_eq!(d.wait().await, DownloadState::Done);
        b.shutdown().await;
        a.shutdown().await;
        until(Duration::from_secs(5), "both peers gone", || {
            tracker.peers().is_empty()
        })
        .await;
        assert!(tracker.files().is_empty());

        // Back with the same repositories: same id, same publication, and
        // the fetched copy is served again, without any command.
        let a = peer(&dir.path().join("a"), taddr).await;
        assert_eq!(a.peer_id(), id_before, "the peer id is stable");
        assert_eq!(a.publications().len(), 1);
        assert!(matches!(
            a.publish(&path, "other.bin").await,
            Err(p2pfs_peer::PeerError::PathTaken { .. })
        ));
        let b = peer(&dir.path().join("b"), taddr).await;
        let history = b.downloads();
        assert_eq!(history.len(), 1, "the finished download is remembered");
        assert_eq!(history[0].snapshot().state, DownloadState::Done);
        until(
            Duration::from_secs(5),
            "a.bin listed with 2 seeders",
            || {
                tracker
                    .files()
                    .first()
                    .is_some_and(|f| f.name == "a.bin" && f.seeders == 2)
            },
        )
        .await;

        // A third peer fetches only from the restored copy.
        let c = peer(&dir.path().join("c"), taddr).await;
        let d = c.fetch("a.bin", None, Some(b.listen_addr())).await.unwrap();
        assert_eq!(d.wait().await, DownloadState::Done);
        assert_eq!(std::fs::read(&d.dest).unwrap(), data);
        for p in [&a, &b, &c] {
            p.shutdown().await;
        }
        tracker.shutdown();
    })
    .await;
}

/// Fetches half of a slowly served file, stops the downloader (`stop`),
/// then lets `restart` bring the download back; checks that the seeder
/// uploaded little more than the file once in all.
async fn interrupted_download_resumes(cancel_instead_of_restart: bool) {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerHandle::new(net());
    let taddr = tracker.start(localhost()).await.unwrap();
    let chunks = 40;
    let data = random_bytes(chunks * CHUNK, 2);
    let path = dir.path().join("big.bin");
    std::fs::write(&path, &data).unwrap();
    let seeder = peer(&dir.path().join("seed"), taddr).await;
    seeder.publish(&path, "big.bin").await.unwrap();
    seeder.set_delay(0.02).unwrap();

    let repo = dir.path().join("leech");
    let leech = peer(&repo, taddr).await;
    let d = leech.fetch("big.bin", None, None).await.unwrap();
    let id = d.id;
    let mut progress = d.progress.clone();
    let half = chunks as u32 / 2;
    while progress.borrow_and_update().chunks_done < half {
        progress.changed().await.unwrap();
    }
    let leech = if cancel_instead_of_restart {
        d.cancel();
        assert_eq!(d.wait().await, DownloadState::Cancelled);
        let kept = leech.download(id).unwrap().snapshot().chunks_done;
        assert!(kept >= half, "verified chunks are kept ({kept})");
        leech.resume(id).await.unwrap();
        leech
    } else {
        leech.shutdown().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The download resumes by itself at start-up.
        peer(&repo, taddr).await
    };
    let d = leech.download(id).expect("same download id");
    let first = d.snapshot().chunks_done;
    assert!(first >= half - 1, "resumed from {first} verified chunks");
    assert_eq!(d.wait().await, DownloadState::Done);
    assert_eq!(std::fs::read(&d.dest).unwrap(), data);
    let (uploaded, _) = seeder.stats().uploaded();
    // Requests in flight when stopped may be sent twice, nothing more.
    assert!(
        uploaded <= (data.len() + 20 * CHUNK) as u64,
        "the seeder uploaded {uploaded} bytes for a {}-byte file",
        data.len()
    );
    leech.shutdown().await;
    seeder.shutdown().await;
    tracker.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_stopped_by_a_restart_resumes_by_itself() {
    within(60, interrupted_download_resumes(false)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_download_resumes_on_request() {
    within(60, interrupted_download_resumes(true)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_file_changed_on_disk_is_withdrawn_not_served() {
    within(60, async {
        let dir = tempfile::tempdir().unwrap();
        let tracker = TrackerHandle::new(net());
        let taddr = tracker.start(localhost()).await.unwrap();
        let a = peer(&dir.path().join("a"), taddr).await;
        let b = peer(&dir.path().join("b"), taddr).await;

        // Changed in place, same size, modification time put back. Its
        // ctime has settled when it is published, so the publish's hashes
        // count as checks and serving would not hash its chunks again: the
        // change of ctime must tell.
        let sneaky = dir.path().join("sneaky.bin");
        std::fs::write(&sneaky, random_bytes(4 * CHUNK, 3)).unwrap();
        tokio::time::sleep(p2pfs_peer::store::CTIME_SETTLED * 2).await;
        a.publish(&sneaky, "sneaky.bin").await.unwrap();
        let mtime = std::fs::metadata(&sneaky).unwrap().modified().unwrap();
        let other = random_bytes(4 * CHUNK, 4);
        std::fs::write(&sneaky, &other).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&sneaky)
            .unwrap()
            .set_modified(mtime)
            .unwrap();

        // Changed visibly: size differs.
        let grown = dir.path().join("grown.bin");
        std::fs::write(&grown, random_bytes(2 * CHUNK, 5)).unwrap();
        a.publish(&grown, "grown.bin").await.unwrap();
        std::fs::write(&grown, random_bytes(3 * CHUNK, 6)).unwrap();

        for name in ["sneaky.bin", "grown.bin"] {
            let d = b.fetch(name, None, None).await.unwrap();
            let state = d.wait().await;
            assert!(
                matches!(state, DownloadState::Failed(_)),
                "{name}: {state:?}"
            );
            assert!(!d.dest.exists(), "{name}: nothing wrong lands in place");
        }
        until(
            Duration::from_secs(5),
            "both withdrawn at the tracker",
            || tracker.files().is_empty(),
        )
        .await;
        assert!(a.publications().is_empty());
        // A restart does not bring them back.
        a.shutdown().await;
        let a = peer(&dir.path().join("a"), taddr).await;
        assert!(a.publications().is_empty());
        a.shutdown().await;
        b.shutdown().await;
        tracker.shutdown();
    })
    .await;
}

/// Mounts a 1 MiB tmpfs at a fresh folder; `None` without the privilege.
fn small_disk(dir: &Path) -> Option<std::path::PathBuf> {
    let mnt = dir.join("small-disk");
    std::fs::create_dir_all(&mnt).ok()?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(mnt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_larger_than_the_free_space_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mnt) = small_disk(dir.path()) else {
        eprintln!("SKIPPED: mounting a small tmpfs needs root");
        return;
    };
    let result = tokio::time::timeout(Duration::from_secs(60), async {
        let tracker = TrackerHandle::new(net());
        let taddr = tracker.start(localhost()).await.unwrap();
        let a = peer(&dir.path().join("a"), taddr).await;
        let b = peer(&dir.path().join("b"), taddr).await;
        let big = random_bytes(48 * CHUNK, 7);
        std::fs::write(dir.path().join("big.bin"), &big).unwrap();
        let small = random_bytes(2 * CHUNK, 8);
        std::fs::write(dir.path().join("small.bin"), &small).unwrap();
        a.publish(&dir.path().join("big.bin"), "big.bin")
            .await
            .unwrap();
        a.publish(&dir.path().join("small.bin"), "small.bin")
            .await
            .unwrap();

        // 3 MiB into a 1 MiB disk: the space is allocated before any chunk
        // is asked for, so the fetch fails at once and leaves nothing.
        let err = b
            .fetch("big.bin", Some(&mnt), None)
            .await
            .expect_err("a fetch that cannot fit must fail");
        assert!(err.to_string().contains("disk is full"), "{err}");
        assert_eq!(
            std::fs::read_dir(&mnt).unwrap().count(),
            0,
            "no part file left"
        );
        // Everything else keeps working: another fetch, and serving.
        let d2 = b.fetch("small.bin", None, None).await.unwrap();
        assert_eq!(d2.wait().await, DownloadState::Done);
        assert_eq!(std::fs::read(&d2.dest).unwrap(), small);
        let c = peer(&dir.path().join("c"), taddr).await;
        let d3 = c
            .fetch("small.bin", None, Some(b.listen_addr()))
            .await
            .unwrap();
        assert_eq!(d3.wait().await, DownloadState::Done);
        for p in [&a, &b, &c] {
            p.shutdown().await;
        }
        tracker.shutdown();
    })
    .await;
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    result.expect("test finished in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_outside_the_allowed_places_are_refused_untouched() {
    within(30, async {
        let dir = tempfile::tempdir().unwrap();
        let tracker = TrackerHandle::new(net());
        let taddr = tracker.start(localhost()).await.unwrap();
        let a = peer(&dir.path().join("a"), taddr).await;
        std::fs::write(dir.path().join("f.bin"), random_bytes(CHUNK, 9)).unwrap();
        a.publish(&dir.path().join("f.bin"), "f.bin").await.unwrap();
        let inbox = dir.path().join("inbox");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&inbox).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let b = PeerHandle::start(PeerConfig {
            repo: dir.path().join("b"),
            listen: localhost(),
            allowed_dests: vec![inbox.clone()],
            security: net(),
            read_ahead_kib: p2pfs_peer::server::SERVE_MEMORY_KIB,
            verifying_kib: p2pfs_peer::download::VERIFYING_KIB,
            max_sources: p2pfs_peer::download::MAX_SOURCES,
        })
        .await
        .unwrap();
        b.connect(taddr).await.unwrap();
        let before: Vec<_> = std::fs::read_dir(dir.path().join("b")).unwrap().collect();
        for bad in [
            elsewhere.join("f.bin"),
            inbox.join("..").join("elsewhere").join("f.bin"),
            dir.path().join("b").join("p2pfs.db-new"),
            inbox.join("missing").join(".."),
        ] {
            let e = b.fetch("f.bin", Some(&bad), None).await.unwrap_err();
            assert_eq!(e.code(), "bad_destination", "{}: {e}", bad.display());
        }
        assert!(
            std::fs::read_dir(&elsewhere).unwrap().next().is_none(),
            "nothing written"
        );
        let after: Vec<_> = std::fs::read_dir(dir.path().join("b")).unwrap().collect();
        assert_eq!(
            before.len(),
            after.len(),
            "nothing written in the repository"
        );
        let d = b.fetch("f.bin", Some(&inbox), None).await.unwrap();
        assert_eq!(d.wait().await, DownloadState::Done);
        assert!(inbox.join("f.bin").exists());
        a.shutdown().await;
        b.shutdown().await;
        tracker.shutdown();
    })
    .await;
}
