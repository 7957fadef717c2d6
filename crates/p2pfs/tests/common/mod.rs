//! Shared by the black-box tests: real `p2pfs` processes (tracker and
//! peers) on loopback, their shells on pipes, their HTTP APIs on port 0.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

pub const WAIT: Duration = Duration::from_secs(20);

/// A `p2pfs` process with its shell on a pipe.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    name: String,
    /// The HTTP API's base URL (no trailing slash), when it printed one.
    pub api: Option<String>,
    /// A tracker's join token, once it printed one.
    pub join: Option<String>,
    /// A folder that lives as long as the process (a tracker's data).
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Result<Proc> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_p2pfs"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout)
                .lines()
                .map_while(std::result::Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: Vec::new(),
            name: name.into(),
            api: None,
            join: None,
            _dir: None,
        })
    }

    /// A tracker on a free loopback port, with a new network secret in a
    /// data folder of its own.
    pub fn tracker() -> Result<(Proc, SocketAddr)> {
        let dir = tempfile::tempdir()?;
        let (mut p, addr) = Proc::tracker_at("127.0.0.1:0", dir.path())?;
        p._dir = Some(dir);
        Ok((p, addr))
    }

    /// A tracker serving on `addr` (port 0 picks one) with its data (and
    /// network secret) in `data`. Its join token goes into `join`.
    pub fn tracker_at(addr: &str, data: &Path) -> Result<(Proc, SocketAddr)> {
        let d = data.to_string_lossy().to_string();
        let mut p = Proc::spawn("tracker", &["tracker", "--listen", addr, "--data", &d])?;
        let line = p.expect("tracker serving on")?;
        let addr = line.rsplit(' ').next().ok_or("no address")?.parse()?;
        let join = p.expect("peers join with:")?;
        p.join = Some(join.rsplit(' ').next().ok_or("no token")?.to_string());
        p.read_api()?;
        Ok((p, addr))
    }

    /// A peer that joins with `join` (a tracker's token) and keeps its
    /// repository in `repo`.
    pub fn peer(name: &str, join: &str, repo: &Path) -> Result<(Proc, SocketAddr)> {
        Proc::peer_with(name, &["--join", join], repo)
    }

    /// A peer on loopback keeping its repository in `repo`, with `how` to
    /// reach its network (`--join TOKEN`, or `--insecure --tracker ADDR`);
    /// returns once it is connected.
    pub fn peer_with(name: &str, how: &[&str], repo: &Path) -> Result<(Proc, SocketAddr)> {
        let r = repo.to_string_lossy().to_string();
        let mut args = vec!["peer", "--listen", "127.0.0.1:0", "--repo", &r];
        args.extend_from_slice(how);
        let mut p = Proc::spawn(name, &args)?;
        let line = p.expect("listening on")?;
        let addr = line.split(' ').nth(4).ok_or("no address")?.parse()?;
        p.read_api()?;
        p.expect("connected to tracker")?;
        Ok((p, addr))
    }

    /// Reads the "web UI and API on URL" line into `api`.
    pub fn read_api(&mut self) -> Result<String> {
        let line = self.expect("web UI and API on")?;
        let url = line
            .rsplit(' ')
            .next()
            .ok_or("no URL")?
            .trim_end_matches('/')
            .to_string();
        self.api = Some(url.clone());
        Ok(url)
    }

    pub fn send(&mut self, line: &str) -> Result {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn expect(&mut self, needle: &str) -> Result<String> {
        self.expect_within(needle, WAIT)
    }

    pub fn expect_within(&mut self, needle: &str, limit: Duration) -> Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Ok(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: no line with {needle:?} within {limit:?}; saw {:#?}",
                        self.name, self.seen
                    )
                    .into())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "{}: exited before printing {needle:?}; saw {:#?}",
                        self.name, self.seen
                    )
                    .into())
                }
            }
        }
    }

    /// Sends a command and returns the output line containing `needle`.
    pub fn run(&mut self, line: &str, needle: &str) -> Result<String> {
        self.send(line)?;
        self.expect(needle)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Chunk size of the test files: every file under 256 MiB is split into
/// chunks of `MIN_CHUNK_SIZE` (64 KiB).
pub const CHUNK: usize = p2pfs_proto::limits::MIN_CHUNK_SIZE as usize;

pub fn random_file(path: &Path, len: usize) -> Result<Vec<u8>> {
    let mut data = vec![0u8; len];
    rand::Rng::fill(&mut rand::rng(), &mut data[..]);
    std::fs::write(path, &data)?;
    Ok(data)
}

pub fn quoted(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

pub fn ip_port(a: SocketAddr) -> String {
    format!("{} {}", a.ip(), a.port())
}

pub struct Net {
    pub dir: tempfile::TempDir,
    pub tracker: Proc,
    pub taddr: SocketAddr,
    /// The tracker's join token.
    pub join: String,
}

impl Net {
    pub fn new() -> Result<Net> {
        let (tracker, taddr) = Proc::tracker()?;
        let join = tracker.join.clone().ok_or("no join token")?;
        Ok(Net {
            dir: tempfile::tempdir()?,
            tracker,
            taddr,
            join,
        })
    }

    pub fn peer(&self, name: &str) -> Result<(Proc, SocketAddr)> {
        Proc::peer(name, &self.join, &self.dir.path().join(name))
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

// ------------------------------------------------------------ HTTP API

use serde_json::Value;

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into()
}

/// Sends a request with a raw body and content type; returns status and JSON.
pub fn call(method: &str, url: &str, content_type: &str, body: &[u8]) -> Result<(u16, Value)> {
    let a = agent();
    let mut resp = match method {
        "GET" => a.get(url).call()?,
        "PUT" => a.put(url).header("content-type", content_type).send(body)?,
        _ => a
            .post(url)
            .header("content-type", content_type)
            .send(body)?,
    };
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string()?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{method} {url}: not JSON ({e}): {text:?}"))?;
    Ok((status, v))
}

pub fn get(url: &str) -> Result<(u16, Value)> {
    call("GET", url, "", b"")
}

pub fn post(url: &str, body: Value) -> Result<(u16, Value)> {
    call("POST", url, "application/json", body.to_string().as_bytes())
}
