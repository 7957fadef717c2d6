//! Black-box tests: the real `p2pfs` binary as separate tracker and peer
//! processes on loopback, driven through their shells over pipes.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn publish_and_multi_source_fetch_across_processes() -> Result {
    let mut net = Net::new()?;
    let (mut a, a_addr) = net.peer("a")?;
    let (mut b, _) = net.peer("b")?;
    let (mut c, c_addr) = net.peer("c")?;
    // Not a multiple of the chunk size; name with a space and a non-ASCII letter.
    let data = random_file(&net.path("my notes.txt"), 3 * CHUNK + 12_345)?;
    std::fs::write(net.path("copy.bin"), &data)?;
    a.run(
        &format!(
            "publish {} \"notes ü.txt\"",
            quoted(&net.path("my notes.txt"))
        ),
        "published 'notes ü.txt'",
    )?;
    b.run(
        &format!("publish {} same.bin", quoted(&net.path("copy.bin"))),
        "published 'same.bin'",
    )?;
    let listing = net.tracker.run("list_files", "notes ü.txt")?;
    assert!(listing.contains(&a_addr.to_string()), "{listing}");
    net.tracker.expect("same.bin")?; // the rest of that table
    c.run("fetch \"notes ü.txt\"", "fetching 'notes ü.txt'")?;
    c.run("wait", "all downloads finished")?;
    let got = std::fs::read(net.path("c/downloads/notes ü.txt"))?;
    assert_eq!(got, data, "fetched bytes differ");
    assert!(!net.path("c/downloads/notes ü.txt.part").exists());
    // The downloader is now a source: three holders of the same content.
    let row = net.tracker.run("list_files", "same.bin")?;
    assert!(
        row.split_whitespace().any(|w| w == "3"),
        "sources should be 3: {row}"
    );
    net.tracker.send("list_chunkinfo")?;
    let holder = net.tracker.expect(&c_addr.to_string())?;
    assert!(holder.contains("all"), "{holder}");
    // Empty file.
    std::fs::write(net.path("empty"), b"")?;
    a.run(
        &format!("publish {} empty.txt", quoted(&net.path("empty"))),
        "published 'empty.txt'",
    )?;
    c.run(
        &format!("fetch empty.txt {}", quoted(&net.path("empty-copy"))),
        "fetching 'empty.txt'",
    )?;
    c.run("wait", "all downloads finished")?;
    assert_eq!(std::fs::read(net.path("empty-copy"))?.len(), 0);
    // Discover through the tracker and through a peer.
    let d = net
        .tracker
        .run(&format!("discover {}", ip_port(a_addr)), "notes ü.txt")?;
    assert!(
        d.contains("my notes.txt"),
        "discover shows the local path: {d}"
    );
    b.run(&format!("discover {}", ip_port(a_addr)), "empty.txt")?;
    Ok(())
}

#[test]
fn every_refusal_has_a_clear_message() -> Result {
    let net = Net::new()?;
    let (mut a, a_addr) = net.peer("a")?;
    let (mut b, b_addr) = net.peer("b")?;
    random_file(&net.path("f1"), 1000)?;
    random_file(&net.path("f2"), 2000)?;
    let f1 = quoted(&net.path("f1"));
    let f2 = quoted(&net.path("f2"));
    a.run(&format!("publish {f1} doc"), "published 'doc'")?;
    a.run(
        &format!("publish {f2} doc"),
        "already published a file named 'doc'",
    )?;
    a.run(
        &format!("publish {f1} other"),
        "is already published as 'doc'",
    )?;
    a.run(&format!("publish {f2} a/b"), "path separator")?;
    a.run(&format!("publish {f2} \"\""), "the name is empty")?;
    a.run(
        &format!("publish {f2} {}", "x".repeat(300)),
        "longer than 255",
    )?;
    a.run(
        &format!("publish {} x", quoted(&net.path("missing"))),
        "no such file",
    )?;
    a.run(
        &format!("publish {} x", quoted(net.dir.path())),
        "not a regular file",
    )?;
    a.run("fetch doc", "your own published file")?;
    let started = Instant::now();
    b.run("fetch nothing-here", "no file named 'nothing-here'")?;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "unknown name answered in {:?}",
        started.elapsed()
    );
    std::fs::write(net.path("exists"), b"x")?;
    b.run(
        &format!("fetch doc {}", quoted(&net.path("exists"))),
        "already exists",
    )?;
    // Same name from two publishers: ambiguous until one is named.
    b.run(&format!("publish {f2} doc"), "published 'doc'")?;
    let (mut c, _) = net.peer("c")?;
    let amb = c.run("fetch doc", "several peers")?;
    assert!(
        amb.contains(&a_addr.to_string()) && amb.contains(&b_addr.to_string()),
        "{amb}"
    );
    c.run(&format!("fetch doc {}", ip_port(b_addr)), "fetching 'doc'")?;
    c.run("wait", "all downloads finished")?;
    assert_eq!(
        std::fs::read(net.path("c/downloads/doc"))?,
        std::fs::read(net.path("f2"))?
    );
    // Shell quality: unknown commands and bad arguments get usage, help works.
    c.run("frobnicate", "unrecognized subcommand")?;
    c.run("connect 127.0.0.1 notaport", "invalid value")?;
    c.run("help publish", "Usage: publish <LNAME> <FNAME>")?;
    c.run("set_delay -1", "the delay must be between 0 and")?;
    // A tracker address where nothing listens: said in words, no errno.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let refused = c.run(
        &format!("connect 127.0.0.1 {}", closed.port()),
        "connection refused",
    )?;
    assert!(!refused.contains("os error"), "{refused}");
    Ok(())
}

#[test]
fn fetch_completes_when_a_source_is_killed() -> Result {
    let mut net = Net::new()?;
    let (mut s1, s1_addr) = net.peer("s1")?;
    let (mut s2, _) = net.peer("s2")?;
    let (mut d, _) = net.peer("d")?;
    let data = random_file(&net.path("big"), 16 << 20)?;
    // Same content under two names: one swarm with two seeders.
    s1.run(
        &format!("publish {} big", quoted(&net.path("big"))),
        "published 'big'",
    )?;
    s2.run(
        &format!("publish {} big-copy", quoted(&net.path("big"))),
        "published 'big-copy'",
    )?;
    for s in [&mut s1, &mut s2] {
        s.run("set_delay 0.05", "answered after")?;
    }
    d.run("fetch big", "fetching 'big'")?;
    std::thread::sleep(Duration::from_millis(700));
    s1.kill(); // SIGKILL
    d.run("wait", "all downloads finished")?;
    assert_eq!(
        std::fs::read(net.path("d/downloads/big"))?,
        data,
        "bytes differ after a source died"
    );
    // The killed peer disappears from the tracker within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        net.tracker.send("list_peers")?;
        let line = net.tracker.expect(" online")?;
        if line.starts_with("2 ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "killed peer {s1_addr} still listed: {line}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(())
}

#[test]
fn garbage_on_every_port_does_not_stop_service() -> Result {
    let mut net = Net::new()?;
    let (mut a, a_addr) = net.peer("a")?;
    let (mut b, _) = net.peer("b")?;
    let data = random_file(&net.path("f"), 700_000)?;
    a.run(
        &format!("publish {} f", quoted(&net.path("f"))),
        "published 'f'",
    )?;
    let mut rng = rand::rng();
    for addr in [net.taddr, a_addr] {
        for attempt in 0..20 {
            if let Ok(mut s) = TcpStream::connect(addr) {
                let mut junk = vec![0u8; 64 + attempt * 97];
                rand::Rng::fill(&mut rng, &mut junk[..]);
                if attempt % 3 == 0 {
                    // A valid hello, then a huge length prefix.
                    junk = b"P2PF\x00\x01\x02\x00\xff\xff\xff\xf0\x01".to_vec();
                }
                let _ = s.write_all(&junk);
            }
        }
    }
    b.run("fetch f", "fetching 'f'")?;
    b.run("wait", "all downloads finished")?;
    assert_eq!(std::fs::read(net.path("b/downloads/f"))?, data);
    net.tracker.run("list_peers", "2 peers online")?;
    Ok(())
}

#[test]
fn tracker_ping_and_its_refusals() -> Result {
    let mut net = Net::new()?;
    let (_a, a_addr) = net.peer("a")?;
    net.tracker
        .run(&format!("ping {}", ip_port(a_addr)), "pong from")?;
    net.tracker
        .run(&format!("ping {}", ip_port(net.taddr)), "own address")?;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let started = Instant::now();
    net.tracker
        .run(&format!("ping {}", ip_port(closed)), "ping failed")?;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "dead address answered in {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn peer_keeps_serving_after_its_input_ends_and_leaves_on_exit() -> Result {
    let mut net = Net::new()?;
    let (mut a, a_addr) = net.peer("a")?;
    let (mut b, _) = net.peer("b")?;
    let data = random_file(&net.path("f"), 300_000)?;
    a.run(
        &format!("publish {} f", quoted(&net.path("f"))),
        "published 'f'",
    )?;
    a.stdin = None; // end of input: the daemon must keep serving
    std::thread::sleep(Duration::from_millis(300));
    b.run("fetch f", "fetching 'f'")?;
    b.run("wait", "all downloads finished")?;
    assert_eq!(std::fs::read(net.path("b/downloads/f"))?, data);
    b.send("exit")?;
    let status = b.child.wait()?;
    assert!(status.success());
    // `b` told the tracker it left; `a` is still online.
    net.tracker.run("list_peers", "1 peer online")?;
    net.tracker.run("list_files", &a_addr.to_string())?;
    Ok(())
}

#[test]
fn shell_cancel_keeps_chunks_and_resume_finishes() -> Result {
    let net = Net::new()?;
    let (mut a, _) = net.peer("a")?;
    let (mut b, _) = net.peer("b")?;
    let data = random_file(&net.path("slow.bin"), 40 * CHUNK)?;
    a.run(
        &format!("publish {} slow.bin", quoted(&net.path("slow.bin"))),
        "published 'slow.bin'",
    )?;
    a.run("set_delay 0.05", "answered after")?;
    b.run("fetch slow.bin", "fetching 'slow.bin'")?;
    std::thread::sleep(Duration::from_millis(600));
    b.run("cancel 1", "cancelling download #1")?;
    let line = b.expect("cancelled;")?;
    assert!(line.contains("resume 1"), "{line}");
    let line = b.run("resume 1", "resuming download #1")?;
    assert!(line.contains("already verified"), "{line}");
    // The end counts only what the resumed run fetched.
    let done = b.expect("fetched 'slow.bin'")?;
    assert!(done.contains("were verified before"), "{done}");
    b.run("wait", "all downloads finished")?;
    assert_eq!(std::fs::read(net.path("b/downloads/slow.bin"))?, data);
    Ok(())
}

/// Waits up to [`WAIT`] for `child` to exit; kills it if it does not.
fn exit_status(child: &mut std::process::Child) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the process did not exit".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn output_into_a_closed_pipe_is_dropped_without_a_panic() -> Result {
    // As in `p2pfs demo --no-shell | head -0`: stdout is closed before the
    // first line, so every line meets a broken pipe.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_p2pfs"))
        .args(["demo", "--no-shell", "--no-http", "--size-mib", "1"])
        .env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    drop(child.stdout.take());
    let mut stderr = String::new();
    let mut pipe = child.stderr.take().ok_or("no stderr")?;
    let reader = std::thread::spawn(move || {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        stderr
    });
    let status = exit_status(&mut child)?;
    let stderr = reader.join().map_err(|_| "stderr reader panicked")?;
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(status.success(), "{status}: {stderr}");
    Ok(())
}

#[test]
fn closing_the_terminal_ends_the_demo_like_exit() -> Result {
    use std::io::Read;
    use std::os::fd::OwnedFd;
    use std::process::Stdio;

    // The demo's shell on a terminal of its own, so that it is interactive.
    let pty = nix::pty::openpty(None, None)?;
    let mut child = {
        let slave: OwnedFd = pty.slave;
        std::process::Command::new(env!("CARGO_BIN_EXE_p2pfs"))
            .args(["demo", "--no-http", "--size-mib", "1"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave))
            .spawn()?
    };
    let mut master = std::fs::File::from(pty.master);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with an error once the demo and its terminal are gone.
        while let Ok(n @ 1..) = master.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + WAIT;
    while !seen.contains("peer>") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(bytes) => seen.push_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => {
                let _ = child.kill();
                return Err(format!("no shell prompt; the demo wrote: {seen}").into());
            }
        }
    }
    let start = seen.find("(repository ").ok_or("no repository line")? + "(repository ".len();
    let end = seen[start..].find("/peer1").ok_or("no peer folder")? + start;
    let folder = std::path::PathBuf::from(&seen[start..end]);
    assert!(folder.is_dir(), "{}", folder.display());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id())?),
        nix::sys::signal::Signal::SIGHUP,
    )?;
    let status = exit_status(&mut child)?;
    assert!(status.success(), "{status}");
    assert!(!folder.exists(), "{} is left behind", folder.display());
    Ok(())
}

#[test]
fn a_port_in_use_is_reported_once_in_words() -> Result {
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = taken.local_addr()?.to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pfs"))
        .args([
            "tracker",
            "--insecure",
            "--no-shell",
            "--no-http",
            "--listen",
            &addr,
        ])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .ok_or_else(|| format!("no error line in: {stderr}"))?;
    assert_eq!(
        error,
        format!("error: cannot listen on {addr}: address already in use")
    );
    Ok(())
}

#[test]
fn a_peer_reaches_its_tracker_by_host_name() -> Result {
    let net = Net::new()?;
    let by_name = format!("localhost:{}", net.taddr.port());
    let (mut p, _) = Proc::peer_with(
        "named",
        &["--join", &net.join, "--tracker", &by_name],
        &net.path("named"),
    )?;
    p.run("list_files", "no files")?;
    Ok(())
}

#[test]
fn a_second_peer_on_the_same_repository_is_refused() -> Result {
    let net = Net::new()?;
    let repo = net.path("shared");
    let (mut first, _) = Proc::peer("first", &net.join, &repo)?;
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_p2pfs"))
        .args([
            "peer",
            "--join",
            &net.join,
            "--no-shell",
            "--no-http",
            "--repo",
        ])
        .arg(&repo)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // A second peer that starts would serve until killed.
    let status = exit_status(&mut second)?;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().ok_or("no stderr")?, &mut stderr)?;
    assert!(!status.success(), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .ok_or_else(|| format!("no error line in: {stderr}"))?;
    assert!(
        error.contains("is in use by another p2pfs peer (pid ")
            && error.contains("give this one its own --repo"),
        "{error}"
    );
    // The first peer is untouched: still registered, so it can publish.
    let file = net.path("a.txt");
    std::fs::write(&file, b"still mine")?;
    first.run(&format!("publish {} a.txt", quoted(&file)), "published")?;
    Ok(())
}
