//! Fault tests with real processes: SIGKILL of a downloader half way (it
//! resumes after a restart and transfers only what is missing), SIGKILL and
//! restart of the tracker during a swarm fetch (the fetch completes and the
//! lists are whole again), and slow or silent connections that must not
//! hold anyone else up. Every test checks the bytes on disk.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn api(p: &Proc) -> Result<String> {
    Ok(p.api.clone().ok_or("no API URL printed")?)
}

fn status(p: &Proc) -> Result<Value> {
    Ok(get(&format!("{}/api/status", api(p)?))?.1)
}

fn download(p: &Proc, id: u64) -> Result<Value> {
    Ok(get(&format!("{}/api/downloads/{id}", api(p)?))?.1)
}

/// Polls `f` every 50 ms until it returns `Some`, failing after `limit`.
fn until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if start.elapsed() > limit {
            return Err(format!("{what}: not reached within {limit:?}").into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn publish(p: &Proc, path: &Path, name: &str) -> Result {
    let (status, v) = post(
        &format!("{}/api/publish", api(p)?),
        json!({"path": path, "name": name}),
    )?;
    if status != 201 {
        return Err(format!("publish {name}: {v}").into());
    }
    Ok(())
}

fn set_delay(p: &Proc, seconds: f64) -> Result {
    let (status, v) = post(
        &format!("{}/api/delay", api(p)?),
        json!({ "seconds": seconds }),
    )?;
    if status != 200 {
        return Err(format!("delay: {v}").into());
    }
    Ok(())
}

fn start_fetch(p: &Proc, name: &str) -> Result<u64> {
    let (status, v) = post(&format!("{}/api/fetch", api(p)?), json!({ "name": name }))?;
    if status != 201 {
        return Err(format!("fetch {name}: {v}").into());
    }
    v["id"].as_u64().ok_or_else(|| "no id".into())
}

fn uploaded(p: &Proc) -> Result<u64> {
    status(p)?["uploaded_bytes"]
        .as_u64()
        .ok_or_else(|| "no uploaded_bytes".into())
}

#[test]
fn a_downloader_killed_half_way_resumes_and_fetches_only_the_rest() -> Result {
    let net = Net::new()?;
    let (seeder, _) = net.peer("seeder")?;
    let size = 64 * CHUNK; // 4 MiB, 64 chunks
    let data = random_file(&net.path("video.bin"), size)?;
    publish(&seeder, &net.path("video.bin"), "video.bin")?;
    set_delay(&seeder, 0.03)?;

    let repo = net.path("leech");
    let (mut leech, _) = Proc::peer("leech", &net.join, &repo)?;
    let id = start_fetch(&leech, "video.bin")?;
    until(Duration::from_secs(30), "half the chunks verified", || {
        let d = download(&leech, id)?;
        Ok((d["chunks_done"].as_u64().unwrap_or(0) >= 32).then_some(()))
    })?;
    leech.kill(); // SIGKILL: no goodbye, no final save
    let before = uploaded(&seeder)?;

    let (leech, _) = Proc::peer("leech again", &net.join, &repo)?;
    let d = until(
        Duration::from_secs(30),
        "the resumed download is done",
        || {
            let d = download(&leech, id)?;
            Ok((d["state"] != "running").then_some(d))
        },
    )?;
    assert_eq!(d["state"], "done", "{d}");
    let dest = repo.join("downloads").join("video.bin");
    assert_eq!(std::fs::read(&dest)?, data, "bytes after resume");
    let after = uploaded(&seeder)? - before;
    let share = after as f64 / size as f64;
    eprintln!(
        "resume after SIGKILL: {after} of {size} bytes sent again ({:.1}%)",
        share * 100.0
    );
    assert!(
        share <= 0.55,
        "{:.1}% of the file was transferred after the restart",
        share * 100.0
    );
    Ok(())
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[test]
fn tracker_killed_and_restarted_during_a_swarm_fetch() -> Result {
    let dir = tempfile::tempdir()?;
    let taddr = format!("127.0.0.1:{}", free_port()?);
    // The restarted tracker reads the same network secret from its data.
    let tdata = dir.path().join("tracker");
    let (mut tracker, _) = Proc::tracker_at(&taddr, &tdata)?;
    let join = tracker.join.clone().ok_or("no join token")?;
    let (a, _) = Proc::peer("a", &join, &dir.path().join("a"))?;
    let (b, _) = Proc::peer("b", &join, &dir.path().join("b"))?;
    let (c, _) = Proc::peer("c", &join, &dir.path().join("c"))?;
    let size = 48 * CHUNK;
    let data = random_file(&dir.path().join("iso.bin"), size)?;
    std::fs::write(dir.path().join("copy.bin"), &data)?;
    publish(&a, &dir.path().join("iso.bin"), "iso.bin")?;
    publish(&b, &dir.path().join("copy.bin"), "copy.bin")?;
    set_delay(&a, 0.05)?;
    set_delay(&b, 0.05)?;
    let id = start_fetch(&c, "iso.bin")?;
    until(Duration::from_secs(20), "some chunks verified", || {
        let d = download(&c, id)?;
        Ok((d["chunks_done"].as_u64().unwrap_or(0) >= 8).then_some(()))
    })?;

    tracker.kill();
    let killed = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let (tracker, _) = Proc::tracker_at(&taddr, &tdata)?;
    assert_eq!(tracker.join.as_deref(), Some(join.as_str()), "same secret");
    let tapi = api(&tracker)?;

    // The peers find the new tracker by themselves and re-announce.
    let whole = until(Duration::from_secs(10), "lists whole again", || {
        let (_, peers) = get(&format!("{tapi}/api/peers"))?;
        let (_, files) = get(&format!("{tapi}/api/files"))?;
        let n_peers = peers["peers"].as_array().map_or(0, Vec::len);
        let names: Vec<&str> = files["files"]
            .as_array()
            .map(|f| f.iter().filter_map(|f| f["name"].as_str()).collect())
            .unwrap_or_default();
        let sources = files["files"]
            .as_array()
            .and_then(|f| f.iter().find(|f| f["name"] == "iso.bin"))
            .and_then(|f| f["sources"].as_u64())
            .unwrap_or(0);
        Ok((n_peers == 3
            && names.contains(&"iso.bin")
            && names.contains(&"copy.bin")
            && sources == 3)
            .then(|| killed.elapsed()))
    })?;
    eprintln!(
        "tracker restart: lists whole {:.2} s after the kill",
        whole.as_secs_f64()
    );

    let d = until(Duration::from_secs(30), "the fetch ends", || {
        let d = download(&c, id)?;
        Ok((d["state"] != "running").then_some(d))
    })?;
    assert_eq!(d["state"], "done", "{d}");
    let dest = dir.path().join("c").join("downloads").join("iso.bin");
    assert_eq!(std::fs::read(dest)?, data);
    // The chunk map is whole too: c is a seeder now.
    let (_, chunks) = get(&format!("{tapi}/api/chunks"))?;
    let holders = chunks["contents"][0]["holders"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(holders, 3, "{chunks}");
    drop((a, b));
    Ok(())
}

#[test]
fn slow_and_silent_connections_do_not_hold_up_anyone() -> Result {
    let net = Net::new()?;
    let (a, a_addr) = net.peer("a")?;
    let (b, _) = net.peer("b")?;
    let data = random_file(&net.path("f.bin"), 3 * CHUNK + 1)?;
    publish(&a, &net.path("f.bin"), "f.bin")?;
    let addrs: Vec<SocketAddr> = vec![a_addr, net.taddr];
    // Many idle connections, and slow-loris ones that send a hello one byte
    // at a time, against the peer and the tracker.
    let mut idle = Vec::new();
    for addr in &addrs {
        for _ in 0..50 {
            idle.push(TcpStream::connect(addr)?);
        }
    }
    let mut slow: Vec<TcpStream> = Vec::new();
    for addr in &addrs {
        for _ in 0..5 {
            slow.push(TcpStream::connect(addr)?);
        }
    }
    for s in &mut slow {
        let _ = s.write_all(b"P");
    }
    let id = start_fetch(&b, "f.bin")?;
    let d = until(Duration::from_secs(10), "the fetch ends", || {
        let d = download(&b, id)?;
        Ok((d["state"] != "running").then_some(d))
    })?;
    assert_eq!(d["state"], "done", "{d}");
    let dest = net.path("b").join("downloads").join("f.bin");
    assert_eq!(std::fs::read(dest)?, data);
    // The tracker still answers its shell and API.
    let (code, _) = get(&format!("{}/api/peers", api(&net.tracker)?))?;
    assert_eq!(code, 200);
    Ok(())
}

#[test]
fn the_http_api_closes_slow_loris_connections_and_keeps_serving() -> Result {
    use std::io::Read;
    let net = Net::new()?;
    let (a, _) = net.peer("a")?;
    let base = api(&a)?;
    let hostport = base.trim_start_matches("http://").to_string();
    let mut loris = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&hostport)?;
        s.write_all(b"GET /api/status HTTP/1.1\r\nHost: x\r\n")?;
        loris.push(s);
    }
    let (code, _) = get(&format!("{base}/api/status"))?;
    assert_eq!(code, 200, "served while slow clients wait");
    let started = Instant::now();
    for s in &mut loris {
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "a connection without complete headers is closed");
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(20), "closed after {waited:?}");
    let (code, _) = get(&format!("{base}/api/status"))?;
    assert_eq!(code, 200);
    Ok(())
}
