//! Swarm integration tests: a real tracker and several real peers in one
//! process, talking over real sockets and writing real files.
//!
//! Every test runs under an overall time limit so a hang fails instead of
//! blocking the suite.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use p2pfs_peer::{DownloadState, PeerConfig, PeerError, PeerHandle};
use p2pfs_proto::conn::{accept, encode_hello, split};
use p2pfs_proto::limits::{MAGIC, MIN_CHUNK_SIZE, PROTOCOL_VERSION};
use p2pfs_proto::{Frame, Manifest, Message, NetworkSecret, PeerId, Role, RpcClient, Security};
use p2pfs_tracker::TrackerHandle;
use rand::{RngCore, SeedableRng};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const CHUNK: usize = MIN_CHUNK_SIZE as usize;

// ---------------------------------------------------------------- helpers

/// What a plain (`--insecure`) client sends first: the preamble asking for
/// plain mode, then its hello.
fn plain_open(role: Role) -> Vec<u8> {
    let mut v = MAGIC.to_vec();
    v.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&encode_hello(role));
    v
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().expect("address")
}

/// Runs a test body under an overall time limit.
async fn within<F: Future>(secs: u64, body: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs} s"))
}

/// `len` reproducible pseudo-random bytes.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Polls `f` every 20 ms until it returns `Some`, failing after `limit`.
async fn eventually<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "{what}: not true after {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn part_of(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".part");
    PathBuf::from(s)
}

/// The file at `path` holds exactly `expected`, and its `.part` is gone.
fn assert_file(path: &Path, expected: &[u8]) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(got.len(), expected.len(), "size of {}", path.display());
    if let Some(i) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{} differs from the original at byte {i}", path.display());
    }
    assert!(
        !part_of(path).exists(),
        "{} is still there",
        part_of(path).display()
    );
}

/// No `.part` file is left in `folder` (also catches shortened part names).
fn assert_no_parts(folder: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(folder)
        .expect("read the folder")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "part files left: {leftovers:?}");
}

/// A tracker plus the temporary folders of everything started against it.
struct Swarm {
    tracker: TrackerHandle,
    addr: SocketAddr,
    dirs: Vec<TempDir>,
    /// The network's security, shared by the tracker and every peer.
    security: Security,
}

impl Swarm {
    /// A swarm with its own network secret.
    async fn new() -> Self {
        Self::with(Security::secret(NetworkSecret::generate())).await
    }

    async fn with(security: Security) -> Self {
        let tracker = TrackerHandle::new(security.clone());
        let addr = tracker.start(localhost()).await.expect("tracker starts");
        Self {
            tracker,
            addr,
            dirs: Vec::new(),
            security,
        }
    }

    /// A fresh temporary folder that lives as long as the swarm.
    fn tempdir(&mut self) -> PathBuf {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_path_buf();
        self.dirs.push(dir);
        path
    }

    /// A started peer that is not connected to the tracker.
    async fn offline_peer(&mut self) -> PeerHandle {
        self.offline_peer_with(
            p2pfs_peer::server::SERVE_MEMORY_KIB,
            p2pfs_peer::download::VERIFYING_KIB,
        )
        .await
    }

    /// A started peer that is not connected to the tracker, with a
    /// read-ahead budget of `read_ahead_kib` and a verifying budget of
    /// `verifying_kib`.
    async fn offline_peer_with(&mut self, read_ahead_kib: u32, verifying_kib: u32) -> PeerHandle {
        self.offline_peer_config(
            read_ahead_kib,
            verifying_kib,
            p2pfs_peer::download::MAX_SOURCES,
        )
        .await
    }

    /// [`Swarm::offline_peer_with`], with at most `max_sources` sources
    /// per download.
    async fn offline_peer_config(
        &mut self,
        read_ahead_kib: u32,
        verifying_kib: u32,
        max_sources: usize,
    ) -> PeerHandle {
        let repo = self.tempdir().join("repo");
        PeerHandle::start(PeerConfig {
            repo,
            listen: localhost(),
            allowed_dests: Vec::new(),
            security: self.security.clone(),
            read_ahead_kib,
            verifying_kib,
            max_sources,
        })
        .await
        .expect("peer starts")
    }

    /// A started peer connected to the tracker.
    async fn peer(&mut self) -> PeerHandle {
        let peer = self.offline_peer().await;
        let advertised = peer.connect(self.addr).await.expect("peer connects");
        assert_eq!(advertised, peer.listen_addr());
        peer
    }

    /// `n` connected peers, each publishing its own copy of `data` as
    /// `{prefix}-{i}.bin` and answering each chunk request after `delay`
    /// seconds.
    async fn seeders_of(
        &mut self,
        n: usize,
        data: &[u8],
        prefix: &str,
        delay: f64,
    ) -> Vec<PeerHandle> {
        let mut seeders = Vec::new();
        for i in 0..n {
            let seeder = self.peer().await;
            let path = self.tempdir().join(format!("copy-{i}.bin"));
            std::fs::write(&path, data).expect("write");
            seeder
                .publish(&path, &format!("{prefix}-{i}.bin"))
                .await
                .expect("publish");
            seeder.set_delay(delay).unwrap();
            seeders.push(seeder);
        }
        seeders
    }

    /// Writes `len` random bytes to a new file called `name` in its own folder.
    fn file(&mut self, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
        let data = random_bytes(len, seed);
        let path = self.tempdir().join(name);
        std::fs::write(&path, &data).expect("write source file");
        (path, data)
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        self.tracker.shutdown();
    }
}

/// Fetches `name` into the default folder, waits, and checks the bytes.
async fn fetch_ok(peer: &PeerHandle, name: &str, from: Option<SocketAddr>, expected: &[u8]) {
    let dl = peer
        .fetch(name, None, from)
        .await
        .unwrap_or_else(|e| panic!("fetch '{name}': {e}"));
    assert_eq!(dl.wait().await, DownloadState::Done, "download of '{name}'");
    assert_eq!(dl.dest, peer.repo().join("downloads").join(name));
    assert_file(&dl.dest, expected);
    let p = dl.snapshot();
    assert_eq!(p.bytes_done, expected.len() as u64);
    assert_eq!(p.chunks_done, p.chunks_total);
}

/// Reads until the other side closes (EOF or reset), failing after `limit`.
async fn assert_closed(stream: &mut TcpStream, limit: Duration, what: &str) {
    let mut buf = vec![0u8; 64 * KIB];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: connection still open after {limit:?}"
    );
}

/// A peer that speaks the protocol but answers every chunk request with
/// garbage of the right length.
struct Liar {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Liar {
    /// Listens, registers with the tracker, publishes `manifest` as `name`
    /// and keeps heartbeating.
    async fn start(
        tracker: SocketAddr,
        security: &Security,
        manifest: Manifest,
        name: &str,
    ) -> Self {
        let listener = TcpListener::bind(localhost()).await.expect("liar binds");
        let addr = listener.local_addr().expect("liar address");
        let requests = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let (reqs, conns, m) = (requests.clone(), connections.clone(), manifest.clone());
        let sec = security.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::Relaxed);
                let (reqs, m, sec) = (reqs.clone(), m.clone(), sec.clone());
                tokio::spawn(async move {
                    let Ok((_, stream)) = accept(stream, Role::Peer, &sec).await else {
                        return;
                    };
                    let (mut reader, mut writer) = split(stream);
                    while let Some(Ok(frame)) = reader.next().await {
                        let Frame::Control {
                            id,
                            msg: Message::PeerRequestChunk { content_id, index },
                        } = frame
                        else {
                            continue;
                        };
                        reqs.fetch_add(1, Ordering::Relaxed);
                        let (_, len) = m.chunk_range(index).expect("index in range");
                        let garbage = random_bytes(len as usize, u64::from(index) + 99);
                        if writer
                            .send_chunk(id, &content_id, index, &garbage)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        let client = RpcClient::connect(tracker, Role::Peer, Role::Tracker, security)
            .await
            .expect("liar connects to the tracker");
        let reply = client
            .call(Message::RequestRegister {
                peer_id: PeerId::random(),
                listen: addr,
            })
            .await
            .expect("liar registers");
        assert_eq!(reply, Message::ReplyRegister { listen: addr });
        let reply = client
            .call(Message::RequestPublish {
                name: name.to_string(),
                local_path: "/nowhere/liar.bin".into(),
                manifest: manifest.clone(),
            })
            .await
            .expect("liar publishes");
        assert_eq!(
            reply,
            Message::ReplyPublish {
                content_id: manifest.content_id()
            }
        );
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                if client.call(Message::Heartbeat).await.is_err() {
                    return;
                }
            }
        });
        Self {
            addr,
            requests,
            connections,
            tasks: vec![server, heartbeat],
        }
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interesting_sizes_arrive_byte_exact() {
    within(90, async {
        let mut swarm = Swarm::new().await;
        let seeder = swarm.peer().await;
        let leecher = swarm.peer().await;
        let sizes = [
            0,
            1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * MIB + 300 * KIB + 7, // ~3.3 MiB, 14 chunks, short last chunk
        ];
        let mut files = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let name = format!("size-{len}.bin");
            let (path, data) = swarm.file(&name, len, i as u64);
            let publication = seeder.publish(&path, &name).await.expect("publish");
            assert_eq!(publication.size, len as u64);
            assert_eq!(publication.chunks as usize, len.div_ceil(CHUNK));
            files.push((name, data));
        }
        let listed = swarm.tracker.files();
        assert_eq!(listed.len(), sizes.len());
        for (name, data) in &files {
            let f = listed
                .iter()
                .find(|f| f.name == *name)
                .expect("listed by the tracker");
            assert_eq!(f.size, data.len() as u64);
            assert_eq!(f.chunks as usize, data.len().div_ceil(CHUNK));
            assert_eq!(f.publisher, seeder.listen_addr());
        }
        // All downloads at once, from one seeder.
        let mut downloads = Vec::new();
        for (name, _) in &files {
            downloads.push(leecher.fetch(name, None, None).await.expect("fetch"));
        }
        for (dl, (name, data)) in downloads.iter().zip(&files) {
            assert_eq!(dl.wait().await, DownloadState::Done, "download of {name}");
            assert_eq!(dl.dest, leecher.repo().join("downloads").join(name));
            assert_file(&dl.dest, data);
            let p = dl.snapshot();
            assert_eq!(p.bytes_done, data.len() as u64, "{name}");
            assert_eq!(p.bytes_total, data.len() as u64, "{name}");
            assert_eq!(
                p.chunks_total as usize,
                data.len().div_ceil(CHUNK),
                "{name}"
            );
            assert_eq!(p.chunks_done, p.chunks_total, "{name}");
        }
        assert_no_parts(&leecher.repo().join("downloads"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_spaces_and_non_ascii() {
    within(60, async {
        let mut swarm = Swarm::new().await;
        let seeder = swarm.peer().await;
        let leecher = swarm.peer().await;
        // The longest legal name: 255 bytes of UTF-8.
        let longest = format!("{}x", "ü".repeat(127));
        assert_eq!(longest.len(), 255);
        let names = [
            "notes ü.txt".to_string(),
            "日本語 ファイル.bin".to_string(),
            "emoji 🎉 and  two spaces".to_string(),
            "dots.in.the.middle..txt".to_string(),
            longest,
        ];
        let mut files = Vec::new();
        for (i, name) in names.iter().enumerate() {
            // The local file name differs from the published name.
            let (path, data) = swarm.file(&format!("local-{i}"), 5000 + i * 777, 40 + i as u64);
            seeder.publish(&path, name).await.expect("publish");
            files.push((name.clone(), data));
        }
        let mut listed: Vec<String> = leecher
            .files()
            .await
            .expect("files")
            .into_iter()
            .map(|f| f.name)
            .collect();
        listed.sort();
        let mut expected = names.to_vec();
        expected.sort();
        assert_eq!(listed, expected);
        let (id, published) = leecher
            .discover(seeder.listen_addr())
            .await
            .expect("discover");
        assert_eq!(id, seeder.peer_id());
        assert_eq!(published.len(), names.len());
        for (name, data) in &files {
            fetch_ok(&leecher, name, None, data).await;
            assert_no_parts(&leecher.repo().join("downloads"));
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_source_download_uses_several_seeders() {
    within(90, async {
        let mut swarm = Swarm::new().await;
        let len = 12 * MIB + 4321;
        let data = random_bytes(len, 7);
        // Slow enough that no single source can finish before the others join.
        let seeders = swarm.seeders_of(3, &data, "shared", 0.01).await;
        let info = swarm.tracker.chunk_info();
        assert_eq!(info.len(), 1, "identical bytes are one content");
        assert_eq!(info[0].holders.len(), 3);
        assert_eq!(info[0].names.len(), 3);
        let leecher = swarm.peer().await;
        fetch_ok(&leecher, "shared-0.bin", None, &data).await;
        let uploads: Vec<(u64, u64)> = seeders.iter().map(|s| s.stats().uploaded()).collect();
        let active = uploads.iter().filter(|(bytes, _)| *bytes > 0).count();
        assert!(active >= 2, "only one seeder uploaded: {uploads:?}");
        let total: u64 = uploads.iter().map(|(bytes, _)| bytes).sum();
        assert!(
            total >= len as u64,
            "seeders uploaded {total} bytes of {len}"
        );
    })
    .await;
}

/// With room for one chunk being verified, sources that receive chunks at
/// the same time wait for each other; the download still completes, byte
/// exact, from several of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_share_a_download_s_verifying_budget() {
    within(90, async {
        let mut swarm = Swarm::new().await;
        let len = 8 * MIB + 999;
        let data = random_bytes(len, 17);
        let seeders = swarm.seeders_of(3, &data, "budget", 0.002).await;
        // 1 KiB: less than one chunk, so one chunk at a time.
        let leecher = swarm
            .offline_peer_with(p2pfs_peer::server::SERVE_MEMORY_KIB, 1)
            .await;
        leecher.connect(swarm.addr).await.expect("peer connects");
        fetch_ok(&leecher, "budget-0.bin", None, &data).await;
        let uploads: Vec<(u64, u64)> = seeders.iter().map(|s| s.stats().uploaded()).collect();
        let active = uploads.iter().filter(|(bytes, _)| *bytes > 0).count();
        assert!(active >= 2, "only one seeder uploaded: {uploads:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_the_right_errors() {
    within(60, async {
        let mut swarm = Swarm::new().await;
        let a = swarm.peer().await;
        let b = swarm.peer().await;
        let c = swarm.peer().await;
        let (one, _) = swarm.file("one.txt", 1000, 1);
        let (two, _) = swarm.file("two.txt", 2000, 2);
        a.publish(&one, "one").await.expect("first publish");

        // The same name twice.
        let e = a.publish(&two, "one").await.unwrap_err();
        assert!(matches!(&e, PeerError::NameTaken(n) if n == "one"), "{e:?}");
        assert_eq!(e.code(), "name_taken");
        // The same path twice.
        let e = a.publish(&one, "uno").await.unwrap_err();
        assert!(
            matches!(&e, PeerError::PathTaken { name, .. } if name == "one"),
            "{e:?}"
        );
        assert_eq!(e.code(), "path_taken");

        // Bad names.
        let too_long = "x".repeat(256);
        let too_long_utf8 = "ü".repeat(128); // 256 bytes, 128 characters
        let bad_names = [
            "",
            "a/b",
            "/abs",
            "a\\b",
            "bell\u{7}",
            "new\nline",
            "nul\0",
            ".",
            "..",
            " leading",
            "trailing ",
            too_long.as_str(),
            too_long_utf8.as_str(),
        ];
        for bad in bad_names {
            let e = a.publish(&two, bad).await.unwrap_err();
            assert!(
                matches!(&e, PeerError::InvalidName { name, .. } if name == bad),
                "{bad:?}: {e:?}"
            );
            assert_eq!(e.code(), "invalid_name");
        }

        // A missing file and a folder.
        let scratch = swarm.tempdir();
        let e = a
            .publish(&scratch.join("missing.txt"), "missing")
            .await
            .unwrap_err();
        assert!(matches!(e, PeerError::BadLocalFile { .. }), "{e:?}");
        assert_eq!(e.code(), "bad_local_file");
        let e = a.publish(&scratch, "folder").await.unwrap_err();
        assert!(
            matches!(&e, PeerError::BadLocalFile { why, .. } if why.contains("not a regular file")),
            "{e:?}"
        );

        // No tracker connection.
        let offline = swarm.offline_peer().await;
        let e = offline.publish(&two, "two").await.unwrap_err();
        assert!(matches!(e, PeerError::NotConnected), "{e:?}");
        assert_eq!(e.code(), "not_connected");
        let e = offline.fetch("one", None, None).await.unwrap_err();
        assert_eq!(e.code(), "not_connected");
        assert!(offline.publications().is_empty());

        // Nothing refused left a trace.
        assert_eq!(a.publications().len(), 1);
        let files = swarm.tracker.files();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].name, "one");

        // Fetching one's own file.
        let e = a.fetch("one", None, None).await.unwrap_err();
        assert!(matches!(&e, PeerError::OwnFile(n) if n == "one"), "{e:?}");
        assert_eq!(e.code(), "own_file");

        // An existing destination, default and explicit; it stays untouched.
        let existing = b.repo().join("downloads").join("one");
        std::fs::write(&existing, b"keep me").expect("write");
        let e = b.fetch("one", None, None).await.unwrap_err();
        assert!(
            matches!(&e, PeerError::DestinationExists(p) if *p == existing),
            "{e:?}"
        );
        assert_eq!(e.code(), "destination_exists");
        let other = scratch.join("mine.txt");
        std::fs::write(&other, b"mine").expect("write");
        let e = b.fetch("one", Some(&other), None).await.unwrap_err();
        assert_eq!(e.code(), "destination_exists");
        assert_eq!(std::fs::read(&existing).expect("read"), b"keep me");
        assert_eq!(std::fs::read(&other).expect("read"), b"mine");
        assert!(b.downloads().is_empty());

        // An unknown name fails fast.
        let started = Instant::now();
        let e = b.fetch("no such file", None, None).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(e, PeerError::NotFound(_)), "{e:?}");
        assert_eq!(e.code(), "not_found");

        // One name, two publishers, different bytes.
        let (dup_a, data_a) = swarm.file("dup-a", 3000, 3);
        let (dup_b, data_b) = swarm.file("dup-b", 300_000, 4);
        a.publish(&dup_a, "dup").await.expect("a publishes dup");
        b.publish(&dup_b, "dup").await.expect("b publishes dup");
        let e = c.fetch("dup", None, None).await.unwrap_err();
        let PeerError::Ambiguous(msg) = &e else {
            panic!("expected Ambiguous, got {e:?}");
        };
        assert_eq!(e.code(), "ambiguous");
        assert!(msg.contains(&a.listen_addr().to_string()), "{msg}");
        assert!(msg.contains(&b.listen_addr().to_string()), "{msg}");
        assert!(!c.repo().join("downloads").join("dup.part").exists());
        // Naming the publisher picks its bytes.
        fetch_ok(&c, "dup", Some(b.listen_addr()), &data_b).await;
        let dest = scratch.join("dup from a");
        let dl = c
            .fetch("dup", Some(&dest), Some(a.listen_addr()))
            .await
            .expect("fetch from a");
        assert_eq!(dl.wait().await, DownloadState::Done);
        assert_file(&dest, &data_a);
        // Naming oneself as the source is refused.
        let e = c
            .fetch("dup", Some(&scratch), Some(c.listen_addr()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "refused", "{e:?}");
        // A publisher that did not publish the name.
        let e = c
            .fetch("one", Some(&scratch), Some(b.listen_addr()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "not_found", "{e:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_killed_mid_fetch_is_replaced() {
    within(90, async {
        let mut swarm = Swarm::new().await;
        let len = 8 * MIB + 999;
        let chunks = len.div_ceil(CHUNK) as u64;
        let (path, data) = swarm.file("big.bin", len, 5);
        let victim = swarm.peer().await;
        let survivor = swarm.peer().await;
        victim.publish(&path, "big-1.bin").await.expect("publish");
        survivor.publish(&path, "big-2.bin").await.expect("publish");
        victim.set_delay(0.02).unwrap();
        survivor.set_delay(0.02).unwrap();
        let leecher = swarm.peer().await;
        // Fetch under the victim's name: its publisher goes away mid-download.
        let dl = leecher.fetch("big-1.bin", None, None).await.expect("fetch");
        let (victim_at_kill, survivor_at_kill) =
            eventually(Duration::from_secs(10), "both seeders serving", || {
                let v = victim.stats().uploaded().1;
                let s = survivor.stats().uploaded().1;
                (v >= 2 && s >= 1).then_some((v, s))
            })
            .await;
        assert!(
            victim_at_kill + survivor_at_kill < chunks,
            "the download was nearly over before the kill"
        );
        victim.shutdown().await;
        assert_eq!(dl.wait().await, DownloadState::Done);
        assert_file(&dl.dest, &data);
        let victim_total = victim.stats().uploaded().1;
        let survivor_total = survivor.stats().uploaded().1;
        assert!(victim_total < chunks, "the victim served everything");
        assert!(
            survivor_total > survivor_at_kill,
            "the survivor served nothing after the kill"
        );
        assert!(
            victim_total + survivor_total >= chunks,
            "{victim_total} + {survivor_total} chunks served, {chunks} needed"
        );
        // The victim is gone from the tracker; its name stays while others hold the content.
        let peers = swarm.tracker.peers();
        assert!(peers.iter().all(|p| p.peer_id != victim.peer_id()));
    })
    .await;
}

/// A download at its cap of sources, whose sources hold nothing it still
/// needs, makes room for a holder that does: here a cancelled download
/// still serves its few chunks, the seeder leaves, and a downloader
/// allowed one source connects to that partial holder; when a new seeder
/// of the same bytes appears, it must drop the partial holder to finish,
/// rather than wait for the idle connection to be closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_at_its_source_cap_makes_room_for_a_holder_it_needs() {
    within(90, async {
        let mut swarm = Swarm::new().await;
        let len = 4 * MIB + 321;
        let chunks = len.div_ceil(CHUNK) as u32;
        let (path, data) = swarm.file("capped.bin", len, 17);
        let seeder = swarm.peer().await;
        seeder.publish(&path, "capped.bin").await.expect("publish");
        seeder.set_delay(0.05).unwrap();
        let partial = swarm.peer().await;
        let first = partial
            .fetch("capped.bin", None, None)
            .await
            .expect("fetch");
        eventually(
            Duration::from_secs(20),
            "a few chunks at the partial holder",
            || (first.snapshot().chunks_done >= 3).then_some(()),
        )
        .await;
        first.cancel();
        assert_eq!(first.wait().await, DownloadState::Cancelled);
        let held = first.snapshot().chunks_done;
        assert!(held < chunks, "the partial holder got the whole file");
        seeder.shutdown().await;

        let capped = swarm
            .offline_peer_config(
                p2pfs_peer::server::SERVE_MEMORY_KIB,
                p2pfs_peer::download::VERIFYING_KIB,
                1,
            )
            .await;
        capped.connect(swarm.addr).await.expect("connects");
        let got = capped.fetch("capped.bin", None, None).await.expect("fetch");
        eventually(
            Duration::from_secs(20),
            "the partial holder's chunks",
            || (got.snapshot().chunks_done == held).then_some(()),
        )
        .await;
        assert_eq!(got.snapshot().state, DownloadState::Running);

        let again = swarm.tempdir().join("again.bin");
        std::fs::write(&again, &data).expect("write");
        let seeder2 = swarm.peer().await;
        seeder2.publish(&again, "again.bin").await.expect("publish");
        // Well before the partial holder would close the idle connection
        // (after which the download would reconnect anyway).
        let limit = p2pfs_proto::limits::IDLE_TIMEOUT / 2;
        let end = tokio::time::timeout(limit, got.wait())
            .await
            .expect("the download made room for the new seeder");
        assert_eq!(end, DownloadState::Done);
        assert_file(&got.dest, &data);
        assert!(seeder2.stats().uploaded().1 >= u64::from(chunks - held));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupting_source_does_not_spoil_the_download() {
    within(90, async {
        let mut swarm = Swarm::new().await;
        let len = 8 * MIB + 12_345;
        let (path, data) = swarm.file("honest.bin", len, 6);
        let manifest = p2pfs_peer::hashing::build_manifest(&path).expect("manifest");
        let honest = swarm.peer().await;
        honest.publish(&path, "honest.bin").await.expect("publish");
        // Slow the honest seeder so the liar gets requests too.
        honest.set_delay(0.03).unwrap();
        let liar = Liar::start(
            swarm.addr,
            &swarm.security,
            manifest.clone(),
            "liar copy.bin",
        )
        .await;
        let info = swarm.tracker.chunk_info();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].content_id, manifest.content_id());
        assert!(info[0].holders.iter().any(|h| h.addr == liar.addr));
        assert_eq!(info[0].holders.len(), 2);

        let leecher = swarm.peer().await;
        fetch_ok(&leecher, "honest.bin", None, &data).await;
        assert!(
            liar.requests.load(Ordering::Relaxed) >= 1,
            "the liar was never asked, so the test proves nothing"
        );
        assert_eq!(
            liar.connections.load(Ordering::Relaxed),
            1,
            "a source that sent bad data was contacted again"
        );
        assert!(honest.stats().uploaded().0 >= len as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaders_become_sources() {
    within(60, async {
        let mut swarm = Swarm::new().await;
        let len = 2 * MIB + 17;
        let (path, data) = swarm.file("seed.bin", len, 8);
        let a = swarm.peer().await;
        let b = swarm.peer().await;
        let c = swarm.peer().await;
        let publication = a.publish(&path, "seed.bin").await.expect("publish");
        fetch_ok(&b, "seed.bin", None, &data).await;

        let tracker = swarm.tracker.clone();
        eventually(Duration::from_secs(3), "two sources listed", || {
            let files = tracker.files();
            (files.len() == 1 && files[0].sources == 2 && files[0].seeders == 2).then_some(())
        })
        .await;
        let info = tracker.chunk_info();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].content_id, publication.content_id);
        let holder = info[0]
            .holders
            .iter()
            .find(|h| h.peer_id == b.peer_id())
            .expect("b is a holder");
        assert_eq!(holder.addr, b.listen_addr());
        assert_eq!(holder.have.len(), publication.chunks);
        assert!(holder.have.is_full(), "{:?}", holder.have);
        let b_info = tracker
            .peers()
            .into_iter()
            .find(|p| p.peer_id == b.peer_id())
            .expect("b online");
        assert_eq!((b_info.published, b_info.holding), (0, 1));

        // The publisher leaves; the file stays available from b.
        let b_before = b.stats().uploaded().0;
        a.shutdown().await;
        eventually(Duration::from_secs(6), "a removed", || {
            tracker
                .peers()
                .iter()
                .all(|p| p.peer_id != a.peer_id())
                .then_some(())
        })
        .await;
        let files = tracker.files();
        assert_eq!(files.len(), 1);
        assert!(!files[0].publisher_online);
        assert_eq!(files[0].sources, 1);
        fetch_ok(&c, "seed.bin", None, &data).await;
        assert!(b.stats().uploaded().0 - b_before >= len as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_ports_does_not_hurt() {
    within(60, async {
        // Plain mode, so that garbage reaches the frame decoders; sealed
        // garbage is refused by the transport (see secure_* below).
        let mut swarm = Swarm::with(Security::Insecure).await;
        let seeder = swarm.peer().await;
        let leecher = swarm.peer().await;
        let (path, data) = swarm.file("after garbage.bin", MIB + 5, 9);
        seeder
            .publish(&path, "after garbage.bin")
            .await
            .expect("publish");
        let limit = Duration::from_secs(5);

        // Silent connections that never say hello; they stay open meanwhile.
        let mut silent = Vec::new();
        for target in [swarm.addr, seeder.listen_addr()] {
            silent.push(TcpStream::connect(target).await.expect("connect"));
        }

        for (target, what) in [(swarm.addr, "tracker"), (seeder.listen_addr(), "peer")] {
            // Random bytes.
            let mut s = TcpStream::connect(target).await.expect("connect");
            s.write_all(&random_bytes(4096, 10)).await.expect("write");
            assert_closed(&mut s, limit, &format!("{what}: random bytes")).await;

            // Right magic, wrong version.
            let mut s = TcpStream::connect(target).await.expect("connect");
            let mut hello = [0u8; 8];
            hello[..4].copy_from_slice(&MAGIC);
            hello[4..6].copy_from_slice(&99u16.to_be_bytes());
            s.write_all(&hello).await.expect("write");
            assert_closed(&mut s, limit, &format!("{what}: bad version")).await;

            // Unknown security mode.
            let mut s = TcpStream::connect(target).await.expect("connect");
            let mut open = plain_open(Role::Peer);
            open[6] = 77;
            s.write_all(&open).await.expect("write");
            assert_closed(&mut s, limit, &format!("{what}: bad mode")).await;

            // Right version, unknown role.
            let mut s = TcpStream::connect(target).await.expect("connect");
            let mut open = plain_open(Role::Peer);
            open[8 + 6] = 77;
            s.write_all(&open).await.expect("write");
            assert_closed(&mut s, limit, &format!("{what}: bad role")).await;

            // A valid hello, then a huge length prefix.
            let mut s = TcpStream::connect(target).await.expect("connect");
            s.write_all(&plain_open(Role::Peer)).await.expect("write");
            s.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 0, 0])
                .await
                .expect("write");
            assert_closed(&mut s, limit, &format!("{what}: huge length")).await;

            // A valid hello, then a control frame whose message does not decode.
            let mut s = TcpStream::connect(target).await.expect("connect");
            s.write_all(&plain_open(Role::Peer)).await.expect("write");
            s.write_all(&[0, 0, 0, 8, 1, 0, 0, 0, 1, 0xff, 0xff, 0xff])
                .await
                .expect("write");
            assert_closed(&mut s, limit, &format!("{what}: bad message")).await;

            // A valid hello, then an unknown frame kind.
            let mut s = TcpStream::connect(target).await.expect("connect");
            s.write_all(&plain_open(Role::Peer)).await.expect("write");
            s.write_all(&[0, 0, 0, 2, 9, 0]).await.expect("write");
            assert_closed(&mut s, limit, &format!("{what}: bad frame kind")).await;

            // A valid hello, then a chunk frame nobody asked for.
            let mut s = TcpStream::connect(target).await.expect("connect");
            s.write_all(&plain_open(Role::Peer)).await.expect("write");
            let mut frame = vec![0, 0, 0, 45, 2];
            frame.extend_from_slice(&[0u8; 44]);
            s.write_all(&frame).await.expect("write");
            assert_closed(&mut s, limit, &format!("{what}: chunk frame")).await;
        }
        // The tracker only talks to peers.
        let mut s = TcpStream::connect(swarm.addr).await.expect("connect");
        s.write_all(&plain_open(Role::Tracker))
            .await
            .expect("write");
        assert_closed(&mut s, limit, "tracker: tracker hello").await;

        // Everything still works.
        fetch_ok(&leecher, "after garbage.bin", None, &data).await;
        let files = swarm.tracker.files();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].sources, 2);
        assert_eq!(swarm.tracker.peers().len(), 2, "garbage registered a peer");
        assert_eq!(leecher.files().await.expect("files").len(), 1);
        assert!(swarm.tracker.ping(seeder.listen_addr()).await.is_ok());

        // The silent connections were closed by the hello timeout.
        for (i, s) in silent.iter_mut().enumerate() {
            assert_closed(s, limit, &format!("silent connection {i}")).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_ping() {
    within(30, async {
        let mut swarm = Swarm::new().await;
        let peer = swarm.peer().await;
        let rtt = swarm
            .tracker
            .ping(peer.listen_addr())
            .await
            .expect("ping a peer");
        assert!(rtt < Duration::from_secs(2), "{rtt:?}");
        // Pinging works more than once and on an unconnected peer too.
        let offline = swarm.offline_peer().await;
        swarm
            .tracker
            .ping(offline.listen_addr())
            .await
            .expect("ping an offline peer");
        swarm
            .tracker
            .ping(peer.listen_addr())
            .await
            .expect("ping again");

        let e = swarm.tracker.ping(swarm.addr).await.unwrap_err();
        assert!(
            matches!(e, p2pfs_tracker::TrackerError::PingSelf(_)),
            "{e:?}"
        );
        let wildcard = SocketAddr::from(([0, 0, 0, 0], swarm.addr.port()));
        assert!(swarm.tracker.ping(wildcard).await.is_err());

        // A closed port.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let started = Instant::now();
        let e = swarm.tracker.ping(closed).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_millis(2500), "{e}");
        assert!(
            matches!(e, p2pfs_tracker::TrackerError::Peer { .. }),
            "{e:?}"
        );

        // A port that accepts but never answers.
        let mute = TcpListener::bind(localhost()).await.expect("bind");
        let mute_addr = mute.local_addr().expect("addr");
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = mute.accept().await {
                held.push(s);
            }
        });
        let started = Instant::now();
        assert!(swarm.tracker.ping(mute_addr).await.is_err());
        assert!(started.elapsed() < Duration::from_millis(2500));

        // A peer that shut down.
        peer.shutdown().await;
        let addr = peer.listen_addr();
        let tracker = swarm.tracker.clone();
        let started = Instant::now();
        loop {
            if tracker.ping(addr).await.is_err() {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(3), "still answers");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_leave_are_forgotten() {
    within(60, async {
        let mut swarm = Swarm::new().await;
        let leaver = swarm.peer().await;
        let stayer = swarm.peer().await;
        let (p1, _) = swarm.file("only.txt", 10_000, 11);
        let (p2, _) = swarm.file("stays.txt", 20_000, 12);
        leaver.publish(&p1, "only.txt").await.expect("publish");
        stayer.publish(&p2, "stays.txt").await.expect("publish");
        assert_eq!(swarm.tracker.peers().len(), 2);
        assert_eq!(swarm.tracker.files().len(), 2);

        // A clean leave.
        leaver.shutdown().await;
        let tracker = swarm.tracker.clone();
        let id = leaver.peer_id();
        eventually(Duration::from_secs(6), "the leaver is forgotten", || {
            let gone = tracker.peers().iter().all(|p| p.peer_id != id);
            let files = tracker.files();
            (gone && files.iter().all(|f| f.name != "only.txt")).then_some(())
        })
        .await;
        let files = tracker.files();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "stays.txt");
        assert!(tracker.discover(leaver.listen_addr()).is_err());
        assert!(tracker
            .chunk_info()
            .iter()
            .all(|c| c.holders.iter().all(|h| h.peer_id != id)));
        let e = stayer.fetch("only.txt", None, None).await.unwrap_err();
        assert_eq!(e.code(), "not_found");

        // A peer that goes silent without leaving times out.
        let client = RpcClient::connect(swarm.addr, Role::Peer, Role::Tracker, &swarm.security)
            .await
            .expect("connect");
        let silent_id = PeerId::random();
        let silent_addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        client
            .call(Message::RequestRegister {
                peer_id: silent_id,
                listen: silent_addr,
            })
            .await
            .expect("register");
        let (p3, _) = swarm.file("silent.txt", 3000, 13);
        let manifest = p2pfs_peer::hashing::build_manifest(&p3).expect("manifest");
        client
            .call(Message::RequestPublish {
                name: "silent.txt".into(),
                local_path: p3.display().to_string(),
                manifest,
            })
            .await
            .expect("publish");
        assert_eq!(tracker.peers().len(), 2);
        let started = Instant::now();
        eventually(
            Duration::from_secs(7),
            "the silent peer is forgotten",
            || {
                let gone = tracker.peers().iter().all(|p| p.peer_id != silent_id);
                let files = tracker.files();
                (gone && files.iter().all(|f| f.name != "silent.txt")).then_some(())
            },
        )
        .await;
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "dropped a peer before its heartbeat timeout"
        );
        // The tracker also hung up on it.
        tokio::time::timeout(Duration::from_secs(2), client.closed())
            .await
            .expect("the tracker kept the silent connection open");
        // The stayer, which heartbeats, is still there.
        assert_eq!(tracker.peers().len(), 1);
        assert_eq!(tracker.files().len(), 1);
    })
    .await;
}

/// A raw downloader connection to a peer: asks for one chunk at a time.
/// Two connections that register one peer id (a reconnect, or a copied
/// repository): the newer counts, and the older one's requests are refused
/// rather than filed under the newer one's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_with_the_same_peer_id_takes_over() {
    within(30, async {
        let mut swarm = Swarm::new().await;
        let (path, _) = swarm.file("one.txt", 5000, 21);
        let manifest = p2pfs_peer::hashing::build_manifest(&path).expect("manifest");
        let id = PeerId::random();
        let mut clients = Vec::new();
        for port in [9001, 9002] {
            let client = RpcClient::connect(swarm.addr, Role::Peer, Role::Tracker, &swarm.security)
                .await
                .expect("connect");
            let listen: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            let reply = client
                .call(Message::RequestRegister {
                    peer_id: id,
                    listen,
                })
                .await
                .expect("register");
            assert_eq!(reply, Message::ReplyRegister { listen });
            clients.push(client);
        }
        let publish = |name: &str| Message::RequestPublish {
            name: name.into(),
            local_path: path.display().to_string(),
            manifest: manifest.clone(),
        };
        let e = match clients[0].call(publish("old.txt")).await {
            Err(p2pfs_proto::ProtoError::Remote(e)) => e,
            other => panic!("the older connection published: {other:?}"),
        };
        assert_eq!(e.code, p2pfs_proto::ErrorCode::NotRegistered);
        assert!(
            e.message
                .contains("another connection has registered as this peer")
                && e.message.contains("127.0.0.1:9002"),
            "{}",
            e.message
        );
        assert!(swarm.tracker.files().is_empty());
        let reply = clients[1].call(publish("new.txt")).await.expect("reply");
        assert!(matches!(reply, Message::ReplyPublish { .. }), "{reply:?}");
        let files = swarm.tracker.files();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "new.txt");
        // The older connection's end does not take the newer one's place.
        drop(clients.remove(0));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(swarm.tracker.peers().len(), 1);
        assert_eq!(swarm.tracker.files().len(), 1);
    })
    .await;
}

struct RawSource {
    reader: p2pfs_proto::frame_reader::FrameReader<p2pfs_proto::secure::ReadHalf>,
    writer: p2pfs_proto::conn::FrameWriter<p2pfs_proto::secure::WriteHalf>,
    next_id: u32,
}

/// What a peer answered to one chunk request.
#[derive(Debug, PartialEq)]
enum Answer {
    Chunk(u32),
    Deferred(Vec<u32>),
}

impl RawSource {
    async fn open(addr: SocketAddr, security: &Security) -> Self {
        let stream = p2pfs_proto::conn::connect(addr, Role::Peer, Role::Peer, security)
            .await
            .expect("connect to the seeder");
        let (reader, writer) = split(stream);
        Self {
            reader,
            writer,
            next_id: 1,
        }
    }

    async fn ask(&mut self, content_id: p2pfs_proto::ContentId, index: u32) -> Answer {
        let id = self.next_id;
        self.next_id += 1;
        self.writer
            .send_control(id, &Message::PeerRequestChunk { content_id, index })
            .await
            .expect("send the request");
        match self.reader.next().await.expect("a reply").expect("a frame") {
            Frame::Chunk {
                id: got, index: i, ..
            } if got == id => Answer::Chunk(i),
            Frame::Control {
                id: got,
                msg: Message::ReplyChunkDeferred { index: i, suggest },
            } if got == id && i == index => Answer::Deferred(suggest),
            other => panic!("unexpected reply to chunk {index}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_sends_each_chunk_once_before_any_twice() {
    within(60, async {
        let mut swarm = Swarm::new().await;
        let seeder = swarm.peer().await;
        let (path, _) = swarm.file("initial.bin", 4 * CHUNK, 21);
        let publication = seeder.publish(&path, "initial.bin").await.expect("publish");
        let cid = publication.content_id;
        let addr = seeder.listen_addr();
        let mut one = RawSource::open(addr, &swarm.security).await;
        let mut two = RawSource::open(addr, &swarm.security).await;

        assert_eq!(one.ask(cid, 0).await, Answer::Chunk(0));
        assert_eq!(
            one.ask(cid, 0).await,
            Answer::Chunk(0),
            "same connection again"
        );
        let sent = Instant::now();
        assert_eq!(
            two.ask(cid, 0).await,
            Answer::Deferred(Vec::new()),
            "a chunk that just went to another connection is deferred"
        );
        // Once the first downloader had time to pass it on, the seeder
        // suggests the chunks it sent to nobody.
        let grace = p2pfs_peer::spread::SPREAD_GRACE;
        tokio::time::sleep(grace + Duration::from_millis(100)).await;
        let mut three = RawSource::open(addr, &swarm.security).await;
        let Answer::Deferred(mut suggest) = three.ask(cid, 0).await else {
            panic!("chunk 0 went out twice while fresh chunks remain")
        };
        suggest.sort_unstable();
        assert_eq!(suggest, vec![1, 2, 3], "the chunks sent to nobody");
        assert!(sent.elapsed() >= grace);
        assert_eq!(three.ask(cid, 2).await, Answer::Chunk(2));
        // Asking again after a deferral does not get a second copy while
        // chunks 1 and 3 have gone to nobody.
        let Answer::Deferred(mut suggest) = two.ask(cid, 0).await else {
            panic!("chunk 0 went out twice while chunks 1 and 3 went to nobody")
        };
        suggest.sort_unstable();
        assert_eq!(suggest, vec![1, 3]);

        // Once every chunk went out, a connection that asks again after a
        // deferral (it could not get the chunk elsewhere) is served; others
        // are served a second copy only after its first downloader had time
        // to pass it on.
        drop(one);
        let mut four = RawSource::open(addr, &swarm.security).await;
        assert_eq!(four.ask(cid, 1).await, Answer::Chunk(1));
        assert_eq!(four.ask(cid, 3).await, Answer::Chunk(3));
        assert_eq!(two.ask(cid, 0).await, Answer::Chunk(0));
        let start = Instant::now();
        while four.ask(cid, 2).await != Answer::Chunk(2) {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "chunk 2 never served twice"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloading_peer_tells_its_subscribers_what_it_verifies() {
    within(60, async {
        let mut swarm = Swarm::new().await;
        let a = swarm.peer().await;
        let b = swarm.peer().await;
        let (path, data) = swarm.file("news.bin", 6 * CHUNK, 31);
        let publication = a.publish(&path, "news.bin").await.expect("publish");
        let cid = publication.content_id;
        // a answers one chunk at a time, 150 ms each, so b takes a while.
        a.set_delay(0.15).expect("set the delay");
        let dl = b.fetch("news.bin", None, None).await.expect("fetch");

        let stream =
            p2pfs_proto::conn::connect(b.listen_addr(), Role::Peer, Role::Peer, &swarm.security)
                .await
                .expect("connect to b");
        let (mut reader, mut writer) = split(stream);
        writer
            .send_control(7, &Message::PeerRequestHave { content_id: cid })
            .await
            .expect("subscribe");
        let mut counts = Vec::new();
        let mut replied = false;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), reader.next())
                .await
                .expect("news within 10 s")
                .expect("a frame")
                .expect("a valid frame");
            let Frame::Control {
                id,
                msg: Message::PeerHave { content_id, have },
            } = frame
            else {
                panic!("unexpected frame {frame:?}")
            };
            assert_eq!(content_id, cid);
            assert_eq!(have.len(), 6);
            // The reply (id 7) may come after the first news (id 0): its
            // snapshot is from when the request arrived.
            assert!(id == 0 || (id == 7 && !replied), "frame id {id}");
            if id == 7 {
                replied = true;
            } else {
                counts.push(have.count_ones());
            }
            if have.is_full() && replied {
                break;
            }
        }
        assert!(counts.windows(2).all(|w| w[0] < w[1]), "{counts:?}");
        assert!(counts.len() >= 2, "news came in steps: {counts:?}");
        assert_eq!(dl.wait().await, DownloadState::Done);
        assert_file(&dl.dest, &data);
        // Nothing more after the full bitfield.
        let more = tokio::time::timeout(Duration::from_millis(400), reader.next()).await;
        assert!(more.is_err(), "news after the full bitfield: {more:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_stop_reading_do_not_hold_the_upload_slots() {
    within(60, async {
        let mut swarm = Swarm::new().await;
        let seeder = swarm.peer().await;
        let stuck_count = p2pfs_peer::server::UPLOAD_SLOTS + 2;
        let (path, data) = swarm.file("slots.bin", 2 * stuck_count * CHUNK, 31);
        let publication = seeder.publish(&path, "slots.bin").await.expect("publish");
        let cid = publication.content_id;
        // Each asks for two chunks of its own and never reads a reply, so
        // its sends block with the socket full.
        let mut stuck = Vec::new();
        for k in 0..stuck_count {
            let mut raw = RawSource::open(seeder.listen_addr(), &swarm.security).await;
            for index in [2 * k, 2 * k + 1] {
                raw.writer
                    .queue_control(
                        raw.next_id,
                        &Message::PeerRequestChunk {
                            content_id: cid,
                            index: index as u32,
                        },
                    )
                    .expect("queue a request");
                raw.next_id += 1;
            }
            raw.writer.flush().await.expect("send the requests");
            stuck.push(raw);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Everyone else is still served.
        let downloader = swarm.peer().await;
        fetch_ok(&downloader, "slots.bin", None, &data).await;
        drop(stuck);
    })
    .await;
}

/// A seeder without read-ahead budget reads each chunk only when its turn to
/// be sent comes; with the default budget it reads a lone downloader's
/// chunks ahead. Both serve the right bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_are_read_ahead_or_at_their_turn() {
    within(60, async {
        let mut swarm = Swarm::new().await;
        for (k, budget) in [0, p2pfs_peer::server::SERVE_MEMORY_KIB]
            .into_iter()
            .enumerate()
        {
            let name = format!("turn{k}.bin");
            let (path, data) = swarm.file(&name, 6 * CHUNK + 123, 41 + k as u64);
            let seeder = swarm
                .offline_peer_with(budget, p2pfs_peer::download::VERIFYING_KIB)
                .await;
            seeder.connect(swarm.addr).await.expect("seeder connects");
            seeder.publish(&path, &name).await.expect("publish");
            let downloader = swarm.peer().await;
            fetch_ok(&downloader, &name, Some(seeder.listen_addr()), &data).await;
            let (_, served) = seeder.stats().uploaded();
            let at_turn = seeder.stats().chunks_read_at_turn();
            assert!(served >= 7, "{served} chunks served");
            if budget == 0 {
                assert_eq!(at_turn, served, "every chunk read at its turn");
            } else {
                assert_eq!(at_turn, 0, "every chunk read ahead");
            }
        }
    })
    .await;
}
