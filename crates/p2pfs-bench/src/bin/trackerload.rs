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
//!    request. The fill peers keep heartbeating meanwhile. This closed loop
//!    measures the most requests/s; its latency is mostly queueing (with
//!    `conns × depth` requests always out, the mean latency is that number
//!    divided by the rate).
//! 3. **Open loop**, once per rate in `--rates`: fresh `--conns`
//!    connections send `--batch` requests at a time (one write) on a fixed
//!    schedule, together `rate` requests/s, for `--rate-secs` seconds after
//!    a 1 s warm-up, whatever the replies do (as `wrk2` does). Latency is
//!    timed from the scheduled send, so a tracker that falls behind shows
//!    it, and also from the write. A batch stands for a peer that sends its
//!    updates together (a location and the chunks it verified since).
//!
//! The generator runs on `--threads` threads (default 1).
//!
//! Prints one JSON object: requests/s, p50/p99/max latency in ms, errors,
//! and `open`: one object per rate, with the worst latency of each 100 ms
//! of the phase (`timeline_max_ms`).
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
    rates: Vec<f64>,
    rate_secs: f64,
    threads: usize,
    batch: usize,
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
        rates: Vec::new(),
        rate_secs: 5.0,
        threads: 1,
        batch: 1,
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
            "--rates" => {
                a.rates = val()?
                    .split(',')
                    .map(|r| {
                        r.trim()
                            .parse::<f64>()
                            .context("--rates R1,R2,… (requests/s)")
                    })
                    .collect::<Result<_>>()?;
            }
            "--rate-secs" => a.rate_secs = val()?.parse()?,
            "--threads" => a.threads = val()?.parse()?,
            "--batch" => a.batch = val()?.parse()?,
            "-h" | "--help" => {
                println!(
                    "usage: trackerload (--join TOKEN | --insecure --tracker IP:PORT) [--peers N] [--files N] [--conns N] [--depth N] [--secs S] [--rates R1,R2,…] [--rate-secs S] [--batch N] [--threads N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    a.tracker = tracker.context("--tracker or --join is required")?;
    a.security = secure.context("--join TOKEN or --insecure is required")?;
    if a.conns == 0 || a.peers == 0 || a.depth == 0 || a.threads == 0 || a.batch == 0 {
        bail!("--peers, --conns, --depth, --batch and --threads must be positive");
    }
    if a.rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) || a.rate_secs <= 0.0 {
        bail!("--rates and --rate-secs must be positive");
    }
    Ok(a)
}

/// Connects peer number `i` from its own loopback source address and runs
/// the handshake.
async fn greeted(i: usize, a: &Args) -> Result<p2pfs_proto::secure::Stream> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i / 2000) as u8);
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = socket
        .connect(a.tracker)
        .await
        .with_context(|| format!("peer {i}: connect from {src}"))?;
    connect_stream(stream, a.tracker, Role::Peer, Role::Tracker, &a.security)
        .await
        .with_context(|| format!("peer {i}: handshake"))
}

/// Peer number `i` as a request/reply client.
async fn connect(i: usize, a: &Args) -> Result<RpcClient> {
    Ok(RpcClient::start(greeted(i, a).await?, a.tracker))
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

/// Heartbeats every fill peer once a second until `stop`, spread evenly
/// over the second in 200 slices of 5 ms (real peers heartbeat at random
/// phases; bursts of thousands would show up as latency spikes).
fn heartbeats(idle: Vec<RpcClient>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    const SLICES: usize = 200;
    tokio::spawn(async move {
        let mut sent = 0u64;
        let slice = idle.len().div_ceil(SLICES).max(1);
        let mut tick = tokio::time::interval(Duration::from_secs(1) / SLICES as u32);
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
    /// From the write (closed loop) or the scheduled send (open loop).
    latencies_us: Vec<u32>,
    /// Open loop: from the write that carried the request.
    service_us: Vec<u32>,
    errors: u64,
    /// Open loop: requests still unanswered when the connection gave up.
    unanswered: u64,
    /// Open loop: the worst latency of the requests scheduled in each
    /// [`TIMELINE_STEP`] of the measured time, so a tail can be placed in
    /// time (one stall, or spread over the run).
    timeline_us: Vec<u32>,
}

/// Width of one step of an open-loop phase's latency timeline.
const TIMELINE_STEP: Duration = Duration::from_millis(100);

type Reader = tokio_util::codec::FramedRead<p2pfs_proto::secure::ReadHalf, p2pfs_proto::FrameCodec>;
type Writer = p2pfs_proto::conn::FrameWriter<p2pfs_proto::secure::WriteHalf>;

/// Connects load peer number `i` and registers it; the tracker answers in
/// order, so the caller matches replies to requests by counting.
async fn load_conn(i: usize, a: &Args) -> Result<(Reader, Writer)> {
    use futures::StreamExt;
    use p2pfs_proto::conn::FrameWriter;
    use p2pfs_proto::{Frame, FrameCodec};
    let (r, w) = greeted(i, a).await?.into_split();
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
        })) => Ok((reader, writer)),
        other => bail!("load peer {i}: register answered {other:?}"),
    }
}

/// Request number `n`: even ones locate a random name, odd ones register
/// chunk 0 of a random content.
fn request(n: u32, a: &Args, contents: &[ContentId]) -> Message {
    let f = rand::rng().random_range(0..a.files);
    if n.is_multiple_of(2) {
        Message::RequestFileLocation {
            name: name(f),
            publisher: None,
        }
    } else {
        Message::RequestChunkRegister {
            content_id: contents[f],
            indexes: vec![0],
        }
    }
}

/// Counts a reply into `t`; false when it is an error.
fn expected(msg: &Message, t: &mut Tally) -> bool {
    if matches!(msg, Message::ReplyFileLocation { .. } | Message::Ok) {
        return true;
    }
    if t.errors == 0 {
        eprintln!("first error: {msg:?}");
    }
    t.errors += 1;
    false
}

fn as_us(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// Closed loop on load connection `i`: batches of `depth` requests, each
/// reply timed from the batch's write. No per-request task or channel, so
/// the generator spends little CPU per request.
async fn closed_loop(
    i: usize,
    a: Arc<Args>,
    contents: Arc<Vec<ContentId>>,
    measure_from: Instant,
    stop: Arc<AtomicBool>,
) -> Result<Tally> {
    use futures::StreamExt;
    use p2pfs_proto::Frame;
    let (mut reader, mut writer) = load_conn(i, &a).await?;
    let mut t = Tally::default();
    let mut n: u32 = 0;
    // Batches: `depth` requests in one write, then their `depth` replies
    // (which the tracker also answers in one write), like a pipelining
    // client such as `redis-benchmark -P`.
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..a.depth {
            n = n.wrapping_add(1);
            writer.queue_control(n, &request(n, &a, &contents))?;
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
            if expected(&msg, &mut t) {
                t.latencies_us.push(as_us(started.elapsed()));
            }
        }
    }
    Ok(t)
}

/// Open loop on load connection `i`: `--batch` requests in one write every
/// `interval` from a random phase, until `end`, whatever the replies do. Replies to requests
/// scheduled from `measure_from` on are timed from their schedule and from
/// their write. Waits at most `DRAIN` after `end` for the last replies.
/// Returns the connection too, for [`open_phase`] to close.
async fn open_loop(
    i: usize,
    a: Arc<Args>,
    contents: Arc<Vec<ContentId>>,
    interval: Duration,
    start: Instant,
    measure_from: Instant,
    end: Instant,
) -> Result<(Tally, Reader, Writer)> {
    use futures::StreamExt;
    use p2pfs_proto::Frame;
    use std::collections::VecDeque;
    const DRAIN: Duration = Duration::from_secs(5);
    let (mut reader, mut writer) = load_conn(i, &a).await?;
    let mut t = Tally::default();
    let mut n: u32 = 0;
    // (scheduled, written) per request out, oldest first.
    let mut out: VecDeque<(Instant, Instant)> = VecDeque::new();
    let mut next = start.max(Instant::now()) + interval.mul_f64(rand::rng().random::<f64>());
    loop {
        if next >= end && out.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            frame = reader.next() => {
                let msg = match frame {
                    Some(Ok(Frame::Control { msg, .. })) => msg,
                    other => bail!("load peer {i}: connection ended: {other:?}"),
                };
                let now = Instant::now();
                let Some((scheduled, written)) = out.pop_front() else {
                    bail!("load peer {i}: a reply to no request");
                };
                if scheduled >= measure_from && expected(&msg, &mut t) {
                    let us = as_us(now - scheduled);
                    t.latencies_us.push(us);
                    t.service_us.push(as_us(now - written));
                    let step = ((scheduled - measure_from).as_nanos()
                        / TIMELINE_STEP.as_nanos()) as usize;
                    if t.timeline_us.len() <= step {
                        t.timeline_us.resize(step + 1, 0);
                    }
                    t.timeline_us[step] = t.timeline_us[step].max(us);
                }
            }
            () = tokio::time::sleep_until(next.into()), if next < end => {
                let now = Instant::now();
                let mut due = Vec::new();
                while next <= now && next < end {
                    for _ in 0..a.batch {
                        n = n.wrapping_add(1);
                        writer.queue_control(n, &request(n, &a, &contents))?;
                        due.push(next);
                    }
                    next += interval;
                }
                writer.flush().await?;
                let written = Instant::now();
                out.extend(due.into_iter().map(|s| (s, written)));
            }
            () = tokio::time::sleep_until((end + DRAIN).into()), if next >= end => {
                t.unanswered = out.iter().filter(|(s, _)| *s >= measure_from).count() as u64;
                break;
            }
        }
    }
    Ok((t, reader, writer))
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Collects the tallies of finished load tasks.
async fn gather(tasks: Vec<tokio::task::JoinHandle<Result<Tally>>>) -> Result<Tally> {
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await??;
        all.latencies_us.extend(t.latencies_us);
        all.service_us.extend(t.service_us);
        all.errors += t.errors;
        all.unanswered += t.unanswered;
        if all.timeline_us.len() < t.timeline_us.len() {
            all.timeline_us.resize(t.timeline_us.len(), 0);
        }
        for (a, b) in all.timeline_us.iter_mut().zip(&t.timeline_us) {
            *a = (*a).max(*b);
        }
    }
    all.latencies_us.sort_unstable();
    all.service_us.sort_unstable();
    Ok(all)
}

/// One open-loop phase at `rate` requests/s over all load connections.
async fn open_phase(
    a: &Arc<Args>,
    contents: &Arc<Vec<ContentId>>,
    first_peer: usize,
    rate: f64,
) -> Result<serde_json::Value> {
    let interval = Duration::from_secs_f64((a.conns * a.batch) as f64 / rate);
    // Connections first (they take a while), then everyone starts together.
    let start = Instant::now() + Duration::from_millis(500 + a.conns as u64 * 2);
    let warmup = Duration::from_secs(1);
    let measure_from = start + warmup;
    let end = measure_from + Duration::from_secs_f64(a.rate_secs);
    // Each connection stays open until every connection of the phase is
    // done (failed ones included). A tracker forgets a departed peer's
    // chunk registrations; a thousand peers leaving one by one as they
    // finished, while others still waited for replies, kept the tracker
    // busy for the last 150-200 ms of every phase, and the phase's
    // latencies counted that as their own.
    let all_done = Arc::new(tokio::sync::Barrier::new(a.conns));
    let tasks: Vec<_> = (0..a.conns)
        .map(|k| {
            let run = open_loop(
                first_peer + k,
                a.clone(),
                contents.clone(),
                interval,
                start,
                measure_from,
                end,
            );
            let all_done = all_done.clone();
            tokio::spawn(async move {
                let r = run.await;
                all_done.wait().await;
                r.map(|(t, _reader, _writer)| t)
            })
        })
        .collect();
    let t = gather(tasks).await?;
    let measured = (end - measure_from).as_secs_f64();
    Ok(serde_json::json!({
        "rate": rate,
        "batch": a.batch,
        "answered_rps": t.latencies_us.len() as f64 / measured,
        "p50_ms": percentile(&t.latencies_us, 0.50),
        "p99_ms": percentile(&t.latencies_us, 0.99),
        "max_ms": percentile(&t.latencies_us, 1.0),
        "service_p50_ms": percentile(&t.service_us, 0.50),
        "service_p99_ms": percentile(&t.service_us, 0.99),
        "errors": t.errors,
        "unanswered": t.unanswered,
        "timeline_step_ms": TIMELINE_STEP.as_millis(),
        "timeline_max_ms": t.timeline_us.iter().map(|&us| f64::from(us) / 1000.0).collect::<Vec<_>>(),
    }))
}

fn main() -> Result<()> {
    let a = parse_args()?;
    // One thread by default: the generator shares the machine's cores with
    // the tracker it measures, and a second worker thread mostly added
    // wake-ups between the two (see BENCHMARKS.md, benchmark 6).
    let rt = if a.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(a.threads);
        b
    }
    .enable_all()
    .build()?;
    rt.block_on(run(a))
}

async fn run(a: Args) -> Result<()> {
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
    let closed_stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..a.conns)
        .map(|k| {
            tokio::spawn(closed_loop(
                a.peers + k,
                a.clone(),
                contents.clone(),
                measure_from,
                closed_stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(warmup + Duration::from_secs_f64(a.secs)).await;
    closed_stop.store(true, Ordering::Relaxed);
    let measured = measure_from.elapsed().as_secs_f64();
    let closed = gather(tasks).await?;
    let mut open = Vec::new();
    for (k, &rate) in a.rates.iter().enumerate() {
        let phase = open_phase(&a, &contents, a.peers + (k + 1) * a.conns, rate).await?;
        eprintln!("open loop: {phase}");
        open.push(phase);
    }
    stop.store(true, Ordering::Relaxed);
    let heartbeats = beats.await?;
    let all = closed.latencies_us;
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
        "errors": closed.errors,
        "heartbeats": heartbeats,
        "open": open,
    });
    println!("{out}");
    Ok(())
}
