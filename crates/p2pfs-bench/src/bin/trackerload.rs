//! `trackerload`: a load generator for a p2pfs tracker (benchmark 6).
//!
//! 1. **Fill.** Opens `--peers` connections (spread over source addresses
//!    127.0.0.2, .3, … so the tracker's per-address cap does not apply), each
//!    registers as a peer and publishes its share of `--files` one-chunk
//!    files. Idle peers heartbeat so the tracker keeps them.
//! 2. **Load.** `--conns` more peers, one connection each, send batches of
//!    `--depth` pipelined requests for `--secs` seconds (after a 2 s warm-up),
//!    alternating `RequestFileLocation` (a random published name) and
//!    `RequestChunkRegister` (chunk 0 of a random file), and time every
//!    request. The fill peers keep heartbeating meanwhile.
//!
//! Prints one JSON object: requests/s, p50/p99/max latency in ms, errors.
//! The tracker's memory is read by the caller (`bench/run.py`).
//!
//! ```sh
//! trackerload --tracker 127.0.0.1:7000 --join p2pfs1:…@127.0.0.1:7000
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use p2pfs_proto::conn::{connect_stream, Role};
use p2pfs_proto::{ContentId, JoinToken, Manifest, Message, PeerId, RpcClient, Security};
use rand::Rng;
use tokio::net::TcpSocket;

struct Args {
    tracker: SocketAddr,
    security: Security,
    peers: usize,
    files: usize,
    conns: usize,
    depth: usize,
    secs: f64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        tracker: "127.0.0.1:7000".parse()?,
        security: Security::Insecure,
        peers: 10_000,
        files: 100_000,
        conns: 1_000,
        depth: 4,
        secs: 10.0,
    };
    let mut tracker = None;
    let mut secure = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--tracker" => tracker = Some(val()?.parse().context("--tracker IP:PORT")?),
            "--join" => {
                let t = JoinToken::from_text(&val()?)?;
                secure = Some(Security::secret(t.secret));
                if tracker.is_none() {
                    tracker = t.tracker.parse().ok();
                }
            }
            "--insecure" => secure = Some(Security::Insecure),
            "--peers" => a.peers = val()?.parse()?,
            "--files" => a.files = val()?.parse()?,
            "--conns" => a.conns = val()?.parse()?,
            "--depth" => a.depth = val()?.parse()?,
            "--secs" => a.secs = val()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "usage: trackerload (--join TOKEN | --insecure --tracker IP:PORT) [--peers N] [--files N] [--conns N] [--depth N] [--secs S]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    a.tracker = tracker.context("--tracker or --join is required")?;
    a.security = secure.context("--join TOKEN or --insecure is required")?;
    if a.conns == 0 || a.peers == 0 || a.depth == 0 {
        bail!("--peers, --conns and --depth must be positive");
    }
    Ok(a)
}

/// Connects peer number `i` from its own loopback source address.
async fn connect(i: usize, a: &Args) -> Result<RpcClient> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i / 2000) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = socket
        .connect(a.tracker)
        .await
        .with_context(|| format!("peer {i}: connect from {src}"))?;
    let stream = connect_stream(stream, a.tracker, Role::Peer, Role::Tracker, &a.security)
        .await
        .with_context(|| format!("peer {i}: handshake"))?;
    Ok(RpcClient::start(stream, a.tracker))
}

/// A one-chunk manifest unique to `file`.
fn manifest(file: usize) -> Manifest {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&(file as u64).to_be_bytes());
    Manifest {
        size: 1000 + file as u64 % 1000,
        chunk_size: p2pfs_proto::limits::MIN_CHUNK_SIZE,
        hashes: vec![hash],
    }
}

fn name(file: usize) -> String {
    format!("file-{file:06}.bin")
}

async fn fill(a: &Args) -> Result<(Vec<RpcClient>, Vec<ContentId>)> {
    let per_peer = a.files.div_ceil(a.peers);
    let mut clients = Vec::with_capacity(a.peers);
    let mut contents = vec![ContentId([0; 32]); a.files];
    // In waves, so connects and handshakes do not all pile up at once; the
    // peers of earlier waves heartbeat meanwhile, or the tracker drops them.
    let mut last_beat = Instant::now();
    for wave in (0..a.peers).collect::<Vec<_>>().chunks(500) {
        if last_beat.elapsed() > Duration::from_millis(1000) {
            for chunk in clients.chunks(1000) {
                let beats = chunk.iter().map(|c: &RpcClient| c.call(Message::Heartbeat));
                for r in futures::future::join_all(beats).await {
                    r.context("heartbeat during the fill")?;
                }
            }
            last_beat = Instant::now();
        }
        let tasks: Vec<_> = wave
            .iter()
            .map(|&i| async move {
                let c = connect(i, a).await?;
                let listen = SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8)),
                    7000,
                );
                let reply = c
                    .call(Message::RequestRegister {
                        peer_id: PeerId::random(),
                        listen,
                    })
                    .await?;
                if !matches!(reply, Message::ReplyRegister { .. }) {
                    bail!("peer {i}: register answered {}", reply.kind());
                }
                let mut published = Vec::new();
                for f in (i * per_peer..(i + 1) * per_peer).filter(|&f| f < a.files) {
                    let reply = c
                        .call(Message::RequestPublish {
                            name: name(f),
                            local_path: format!("/data/{}", name(f)),
                            manifest: manifest(f),
                        })
                        .await?;
                    match reply {
                        Message::ReplyPublish { content_id } => published.push((f, content_id)),
                        other => bail!("peer {i}: publish answered {}", other.kind()),
                    }
                }
                anyhow::Ok((c, published))
            })
            .collect();
        for r in futures::future::join_all(tasks).await {
            let (c, published) = r?;
            for (f, cid) in published {
                contents[f] = cid;
            }
            clients.push(c);
        }
    }
    Ok((clients, contents))
}

/// Heartbeats every fill peer once a second until `stop`, spread over the
/// second in ten slices (real peers heartbeat at random phases).
fn heartbeats(idle: Vec<RpcClient>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut sent = 0u64;
        let slice = idle.len().div_ceil(10).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut slices = idle.chunks(slice).cycle();
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let Some(part) = slices.next() else { break };
            // Not awaited in line: under load a reply can take a while, and
            // a peer silent for 4 s is dropped.
            for c in part {
                let c = c.clone();
                tokio::spawn(async move {
                    let _ = c.call(Message::Heartbeat).await;
                });
            }
            sent += part.len() as u64;
        }
        sent
    })
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

/// One load connection: a peer of its own (number `i`) that sends batches
/// of `depth` requests and times each reply from the batch's write (the
/// tracker answers in order). No per-request task or channel, so the
/// generator spends little CPU per request.
async fn load(
    i: usize,
    a: Arc<Args>,
    contents: Arc<Vec<ContentId>>,
    measure_from: Instant,
    stop: Arc<AtomicBool>,
) -> Result<Tally> {
    use futures::StreamExt;
    use p2pfs_proto::conn::FrameWriter;
    use p2pfs_proto::{Frame, FrameCodec};
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i / 2000) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = socket.connect(a.tracker).await?;
    let stream = connect_stream(stream, a.tracker, Role::Peer, Role::Tracker, &a.security).await?;
    let (r, w) = stream.into_split();
    let mut reader = tokio_util::codec::FramedRead::with_capacity(r, FrameCodec, 8192);
    let mut writer = FrameWriter::new(w);
    let listen = SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(11, (i >> 16) as u8, (i >> 8) as u8, i as u8)),
        7000,
    );
    writer
        .send_control(
            0,
            &Message::RequestRegister {
                peer_id: PeerId::random(),
                listen,
            },
        )
        .await?;
    match reader.next().await {
        Some(Ok(Frame::Control {
            msg: Message::ReplyRegister { .. },
            ..
        })) => {}
        other => bail!("load peer {i}: register answered {other:?}"),
    }
    let mut t = Tally::default();
    let mut n: u32 = 0;
    // Batches: `depth` requests in one write, then their `depth` replies
    // (which the tracker also answers in one write), like a pipelining
    // client such as `redis-benchmark -P`.
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..a.depth {
            let f = rand::rng().random_range(0..a.files);
            let msg = if n.is_multiple_of(2) {
                Message::RequestFileLocation {
                    name: name(f),
                    publisher: None,
                }
            } else {
                Message::RequestChunkRegister {
                    content_id: contents[f],
                    indexes: vec![0],
                }
            };
            n = n.wrapping_add(1);
            writer.queue_control(n, &msg)?;
        }
        let started = Instant::now();
        writer.flush().await?;
        for _ in 0..a.depth {
            let msg = match reader.next().await {
                Some(Ok(Frame::Control { msg, .. })) => msg,
                other => bail!("load peer {i}: connection ended: {other:?}"),
            };
            if started < measure_from || stop.load(Ordering::Relaxed) {
                continue;
            }
            if matches!(msg, Message::ReplyFileLocation { .. } | Message::Ok) {
                let us = started.elapsed().as_micros();
                t.latencies_us.push(us.min(u128::from(u32::MAX)) as u32);
            } else {
                if t.errors == 0 {
                    eprintln!("first error: {msg:?}");
                }
                t.errors += 1;
            }
        }
    }
    Ok(t)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = parse_args()?;
    let t0 = Instant::now();
    let (clients, contents) = fill(&a).await?;
    let fill_secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "filled: {} peers, {} files in {fill_secs:.1} s",
        clients.len(),
        contents.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let beats = heartbeats(clients, stop.clone());
    let contents = Arc::new(contents);
    let warmup = Duration::from_secs(2);
    let measure_from = Instant::now() + warmup;
    let a = Arc::new(a);
    let tasks: Vec<_> = (0..a.conns)
        .map(|k| {
            tokio::spawn(load(
                a.peers + k,
                a.clone(),
                contents.clone(),
                measure_from,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(warmup + Duration::from_secs_f64(a.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let measured = measure_from.elapsed().as_secs_f64();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let tally = t.await??;
        all.extend(tally.latencies_us);
        errors += tally.errors;
    }
    let heartbeats = beats.await?;
    all.sort_unstable();
    let requests = all.len();
    let out = serde_json::json!({
        "peers": a.peers,
        "files": a.files,
        "conns": a.conns,
        "depth": a.depth,
        "secure": !a.security.is_insecure(),
        "fill_secs": fill_secs,
        "secs": measured,
        "requests": requests,
        "rps": requests as f64 / measured,
        "p50_ms": percentile(&all, 0.50),
        "p99_ms": percentile(&all, 0.99),
        "max_ms": percentile(&all, 1.0),
        "errors": errors,
        "heartbeats": heartbeats,
    });
    println!("{out}");
    Ok(())
}
