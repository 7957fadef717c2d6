//! Black-box tests of the HTTP API and `p2pfs ctl`: real tracker and peer
//! processes, real sockets, real files.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn ctl(api: &str, args: &[&str]) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_p2pfs"))
        .arg("ctl")
        .arg("--api")
        .arg(api)
        .args(args)
        .output()?)
}

fn api(p: &Proc) -> Result<String> {
    Ok(p.api.clone().ok_or("no API URL printed")?)
}

#[test]
fn publish_over_the_api_and_fetch_with_ctl_wait() -> Result {
    let mut net = Net::new()?;
    let (a, a_addr) = net.peer("a")?;
    let (b, _) = net.peer("b")?;
    let (ta, aa, ba) = (api(&net.tracker)?, api(&a)?, api(&b)?);
    let data = random_file(&net.path("data.bin"), 2 * CHUNK + 777)?;
    let path = net.path("data.bin").display().to_string();

    let (status, v) = post(
        &format!("{aa}/api/publish"),
        json!({"path": path, "name": "data.bin"}),
    )?;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["chunks"], 3);
    // The core's rules answer through the API with stable codes.
    let (status, v) = post(
        &format!("{aa}/api/publish"),
        json!({"path": path, "name": "other.bin"}),
    )?;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("path_taken"))
    );
    let (status, v) = post(
        &format!("{aa}/api/publish"),
        json!({"path": net.path("missing.bin"), "name": "x"}),
    )?;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("bad_local_file"))
    );
    let (status, v) = post(
        &format!("{aa}/api/publish"),
        json!({"path": path, "name": "../evil"}),
    )?;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_name"))
    );

    // The tracker and the other peer see it; the publisher sees it as its own.
    let (_, v) = get(&format!("{ta}/api/files"))?;
    assert_eq!(v["files"][0]["name"], "data.bin");
    assert_eq!(v["files"][0]["publisher"], a_addr.to_string());
    let (_, v) = get(&format!("{ba}/api/files"))?;
    assert_eq!(v["files"][0]["own"], false);
    let (_, v) = get(&format!("{aa}/api/files"))?;
    assert_eq!(v["files"][0]["own"], true);
    let (status, v) = post(&format!("{aa}/api/fetch"), json!({"name": "data.bin"}))?;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("own_file"))
    );

    // `ctl fetch --wait` blocks until the verified file is in place.
    let out = ctl(&ba, &["fetch", "data.bin", "--wait"])?;
    assert!(
        out.status.success(),
        "ctl fetch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("done"));
    let (_, status) = get(&format!("{ba}/api/status"))?;
    let repo = status["repo"].as_str().ok_or("no repo")?;
    assert_eq!(std::fs::read(format!("{repo}/downloads/data.bin"))?, data);
    let (_, v) = get(&format!("{ba}/api/downloads/1"))?;
    assert_eq!(
        (v["state"].as_str(), v["have"].as_str()),
        (Some("done"), Some("111"))
    );
    let (_, v) = get(&format!("{ba}/api/repo"))?;
    assert_eq!(v["fetched"][0]["name"], "data.bin");

    // Failures exit non-zero with the daemon's message.
    let out = ctl(&ba, &["fetch", "no-such-file", "--wait"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-file"));
    let out = ctl(&ba, &["fetch", "data.bin"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));

    // Tables by default, JSON on request.
    let out = ctl(&ta, &["peers"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("ADDRESS") && text.contains(&a_addr.to_string()),
        "{text}"
    );
    let out = ctl(&ta, &["--json", "files"])?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["files"][0]["seeders"], 2);

    // Tracker ping through the API, and its refusal of itself.
    let (status, v) = post(
        &format!("{ta}/api/ping"),
        json!({"addr": a_addr.to_string()}),
    )?;
    assert_eq!(status, 200, "{v}");
    assert!(v["rtt_ms"].as_f64().ok_or("no rtt")? > 0.0);
    let (status, v) = post(
        &format!("{ta}/api/ping"),
        json!({"addr": net.taddr.to_string()}),
    )?;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("ping_self"))
    );
    drop(net.tracker.child.stdin.take());
    Ok(())
}

/// Method, URL, content type, body, expected status, expected code.
type Case<'a> = (&'a str, String, &'a str, &'a [u8], u16, &'a str);

#[test]
fn malformed_requests_get_clear_4xx_json_errors() -> Result {
    let net = Net::new()?;
    let (a, _) = net.peer("a")?;
    let aa = api(&a)?;
    let ta = api(&net.tracker)?;
    let publish = format!("{aa}/api/publish");
    let huge = vec![b' '; 200 * 1024];
    let cases: Vec<Case> = vec![
        (
            "POST",
            publish.clone(),
            "application/json",
            b"{\"path\": ",
            400,
            "bad_request",
        ),
        (
            "POST",
            publish.clone(),
            "application/json",
            b"not json",
            400,
            "bad_request",
        ),
        (
            "POST",
            publish.clone(),
            "application/json",
            b"{\"path\":\"x\"}",
            400,
            "bad_request",
        ),
        (
            "POST",
            publish.clone(),
            "application/json",
            b"{\"path\":\"x\",\"name\":\"y\",\"extra\":1}",
            400,
            "bad_request",
        ),
        (
            "POST",
            publish.clone(),
            "application/json",
            b"{\"path\":1,\"name\":\"y\"}",
            400,
            "bad_request",
        ),
        (
            "POST",
            publish.clone(),
            "application/json",
            b"[]",
            400,
            "bad_request",
        ),
        (
            "POST",
            publish.clone(),
            "text/plain",
            b"{\"path\":\"x\",\"name\":\"y\"}",
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            publish.clone(),
            "application/json",
            &huge,
            413,
            "body_too_large",
        ),
        ("GET", publish, "", b"", 405, "method_not_allowed"),
        (
            "PUT",
            format!("{aa}/api/status"),
            "application/json",
            b"{}",
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            format!("{aa}/api/nothing-here"),
            "",
            b"",
            404,
            "no_such_route",
        ),
        (
            "GET",
            format!("{aa}/api/downloads/42"),
            "",
            b"",
            404,
            "no_such_download",
        ),
        (
            "GET",
            format!("{aa}/api/downloads/x%00y"),
            "",
            b"",
            404,
            "no_such_download",
        ),
        (
            "POST",
            format!("{aa}/api/delay"),
            "application/json",
            b"{\"seconds\":-5}",
            400,
            "bad_delay",
        ),
        (
            "POST",
            format!("{aa}/api/delay"),
            "application/json",
            b"{\"seconds\":1e300}",
            400,
            "bad_delay",
        ),
        (
            "POST",
            format!("{aa}/api/connect"),
            "application/json",
            b"{\"addr\":\"nonsense\"}",
            400,
            "bad_address",
        ),
        (
            "POST",
            format!("{aa}/api/fetch"),
            "application/json",
            b"{\"name\":\"none\",\"from\":\"1.2.3\"}",
            400,
            "bad_address",
        ),
        (
            "GET",
            format!("{ta}/api/discover"),
            "",
            b"",
            400,
            "bad_request",
        ),
        (
            "GET",
            format!("{ta}/api/discover?addr=10.0.0.1:1"),
            "",
            b"",
            404,
            "unknown_peer",
        ),
        (
            "GET",
            format!("{ta}/api/chunks/zz"),
            "",
            b"",
            400,
            "bad_request",
        ),
        (
            "POST",
            format!("{ta}/api/start"),
            "application/json",
            b"{\"addr\":\"127.0.0.1:0\"}",
            409,
            "already_started",
        ),
        (
            "POST",
            format!("{ta}/api/exit"),
            "application/json",
            b"{\"now\":true}",
            400,
            "bad_request",
        ),
    ];
    for (method, url, ct, body, want_status, want_code) in cases {
        let (status, v) = call(method, &url, ct, body)?;
        let what = format!(
            "{method} {url} {:?}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
        assert_eq!(status, want_status, "{what}: {v}");
        assert_eq!(v["error"]["code"], want_code, "{what}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or("");
        assert!(
            !message.is_empty() && !message.contains("os error"),
            "{what}: {v}"
        );
    }
    // Still serving afterwards.
    let (status, v) = get(&format!("{aa}/api/status"))?;
    assert_eq!((status, v["role"].as_str()), (200, Some("peer")));
    Ok(())
}

/// Reads a raw HTTP response until `needle` appears or `limit` passes.
fn read_until(stream: &mut TcpStream, needle: &str, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
        let text = String::from_utf8_lossy(&seen).to_string();
        if text.contains(needle) {
            return Ok(text);
        }
    }
    Err(format!(
        "no {needle:?} within {limit:?}; got {:?}",
        String::from_utf8_lossy(&seen)
    )
    .into())
}

fn open_events(base: &str) -> Result<TcpStream> {
    let hostport = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(hostport)?;
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nHost: {hostport}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    Ok(s)
}

#[test]
fn live_events_and_exit_over_the_api() -> Result {
    let net = Net::new()?;
    let ta = api(&net.tracker)?;
    let mut tracker_events = open_events(&ta)?;
    read_until(
        &mut tracker_events,
        "event: changed",
        Duration::from_secs(5),
    )?;
    let (a, _) = net.peer("a")?;
    let (mut b, b_addr) = net.peer("b")?;
    // A peer joining is pushed to the tracker page.
    read_until(
        &mut tracker_events,
        "event: changed",
        Duration::from_secs(5),
    )?;

    let aa = api(&a)?;
    let ba = api(&b)?;
    random_file(&net.path("f.bin"), 600_000)?;
    let (status, _) = post(
        &format!("{aa}/api/publish"),
        json!({"path": net.path("f.bin"), "name": "f.bin"}),
    )?;
    assert_eq!(status, 201);
    let mut peer_events = open_events(&ba)?;
    read_until(&mut peer_events, "event: downloads", Duration::from_secs(5))?;
    let (status, v) = post(&format!("{ba}/api/fetch"), json!({"name": "f.bin"}))?;
    assert_eq!(status, 201, "{v}");
    let text = read_until(&mut peer_events, "event: ended", Duration::from_secs(10))?;
    assert!(text.contains("\"state\":\"done\""), "{text}");

    // Exit over the API: the process ends and the tracker drops the peer.
    let (status, _) = post(&format!("{ba}/api/exit"), json!({}))?;
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if b.child.try_wait()?.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "peer b did not exit after POST /api/exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = get(&format!("{ta}/api/peers"))?;
        let listed = v["peers"]
            .as_array()
            .ok_or("no peers")?
            .iter()
            .any(|p| p["addr"] == b_addr.to_string());
        if !listed {
            break;
        }
        assert!(Instant::now() < deadline, "the tracker still lists peer b");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
