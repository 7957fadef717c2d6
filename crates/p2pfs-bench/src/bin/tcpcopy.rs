//! `tcpcopy`: the raw TCP reference for the single-source fetch benchmark.
//!
//! ```text
//! tcpcopy recv LISTEN_ADDR OUT_FILE   # prints "listening on ADDR", accepts one
//!                                     # connection, writes everything it reads
//!                                     # into OUT_FILE, prints bytes and seconds
//! tcpcopy send ADDR IN_FILE           # connects and sends the whole file
//! ```
//!
//! Both sides use plain `read`/`write` with a 1 MiB buffer (no `sendfile`,
//! no hashing, no fsync), so this is what one TCP stream over loopback plus
//! one file read and one file write cost on this machine: the ceiling a
//! fetch that copies data into a file through a socket can reach.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use anyhow::{bail, Context, Result};

const BUF: usize = 1 << 20;

fn pump(mut from: impl Read, mut to: impl Write) -> Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    to.flush()?;
    Ok(total)
}

fn recv(listen: &str, out: &str) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let (stream, _) = listener.accept()?;
    let start = Instant::now();
    let file = File::create(out).with_context(|| format!("create {out}"))?;
    let n = pump(stream, file)?;
    let secs = start.elapsed().as_secs_f64();
    println!("received {n} bytes in {secs:.6} s");
    Ok(())
}

fn send(addr: &str, input: &str) -> Result<()> {
    let file = File::open(input).with_context(|| format!("open {input}"))?;
    let stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    let start = Instant::now();
    let n = pump(file, &stream)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let secs = start.elapsed().as_secs_f64();
    println!("sent {n} bytes in {secs:.6} s");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [mode, addr, file] if mode == "recv" => recv(addr, file),
        [mode, addr, file] if mode == "send" => send(addr, file),
        _ => bail!("usage: tcpcopy recv LISTEN_ADDR OUT_FILE | tcpcopy send ADDR IN_FILE"),
    }
}
