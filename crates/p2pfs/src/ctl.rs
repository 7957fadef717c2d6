//! `p2pfs ctl`: non-interactive commands for scripts, sent to a running
//! daemon's HTTP API. Tables by default, `--json` for machines.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::fmt::{count, rate, size, table};

/// Talk to a running tracker or peer through its HTTP API.
#[derive(Debug, Args)]
#[command(
    after_help = "The API address is printed by `p2pfs tracker` and `p2pfs peer` at start-up.\n\nExamples:\n  p2pfs ctl --api http://127.0.0.1:8080 publish ./a.iso a.iso\n  p2pfs ctl --api http://127.0.0.1:8081 fetch a.iso --wait\n  P2PFS_API=http://127.0.0.1:8080 p2pfs ctl --json files"
)]
pub(crate) struct CtlArgs {
    /// The daemon's API URL, e.g. http://127.0.0.1:8080
    #[arg(long, env = "P2PFS_API", value_name = "URL")]
    api: String,
    /// The API's access token (needed when the daemon serves its API beyond
    /// loopback, or was given --http-token)
    #[arg(
        long,
        global = true,
        env = "P2PFS_HTTP_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print the API's JSON answers instead of tables
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Show the daemon's role and state
    Status,
    /// Tracker: start serving peers on IP:PORT
    Start {
        /// Address, e.g. 0.0.0.0:7000
        addr: String,
    },
    /// Tracker: list online peers
    Peers,
    /// Tracker: measure the round-trip time to a peer
    Ping {
        /// The peer's address, IP:PORT
        addr: String,
    },
    /// Files a peer publishes (tracker or peer)
    Discover {
        /// The peer's address, IP:PORT
        addr: String,
    },
    /// Every file in the network (tracker or peer)
    Files,
    /// Tracker: who holds which chunks; with a content id, the per-chunk counts
    Chunks {
        /// A content id (64 hex digits)
        content_id: Option<String>,
    },
    /// Peer: connect to a tracker
    Connect {
        /// The tracker's address, IP:PORT
        addr: String,
    },
    /// Peer: publish a local file under a name
    Publish {
        /// Path of a local file
        path: std::path::PathBuf,
        /// The name to publish it under
        name: String,
    },
    /// Peer: fetch a file from the network
    Fetch {
        /// The published name
        name: String,
        /// Destination file or folder (default: the repository's downloads folder)
        #[arg(long)]
        dest: Option<std::path::PathBuf>,
        /// Fetch only from this peer, IP:PORT
        #[arg(long, value_name = "IP:PORT")]
        from: Option<String>,
        /// Wait until it is done, with a progress bar; fail if it fails
        #[arg(long)]
        wait: bool,
    },
    /// Peer: list downloads
    Downloads,
    /// Peer: wait for a download to end (progress bar); fail if it fails
    Wait {
        /// Download id
        id: u64,
    },
    /// Peer: cancel a download (verified chunks are kept)
    Cancel {
        /// Download id
        id: u64,
    },
    /// Peer: resume a cancelled, failed or interrupted download
    Resume {
        /// Download id
        id: u64,
        /// Wait until it is done, with a progress bar; fail if it fails
        #[arg(long)]
        wait: bool,
    },
    /// Peer: published and fetched files
    Repo,
    /// Peer: delay every chunk answer by this many seconds
    SetDelay {
        /// Seconds, 0 to 3600
        seconds: f64,
    },
    /// Stop the daemon
    Exit,
}

/// A failure to report: the daemon's error or a transport problem.
struct Failure(String);

type CtlResult = Result<Option<String>, Failure>;

struct Api {
    base: String,
    agent: ureq::Agent,
    /// `Bearer TOKEN`, when a token was given.
    auth: Option<String>,
}

impl Api {
    fn new(base: &str, token: Option<&str>) -> Result<Self, Failure> {
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") {
            return Err(Failure(format!(
                "--api must be an http:// URL such as http://127.0.0.1:8080, not '{base}'"
            )));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        Ok(Self {
            base,
            agent,
            auth: token.map(|t| format!("Bearer {}", t.trim())),
        })
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let auth = self.auth.as_deref().unwrap_or("");
        let response = match (method, body) {
            ("GET", _) if auth.is_empty() => self.agent.get(&url).call(),
            ("GET", _) => self.agent.get(&url).header("authorization", auth).call(),
            (_, body) => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("content-type", "application/json");
                if !auth.is_empty() {
                    req = req.header("authorization", auth);
                }
                req.send(body.unwrap_or_else(|| json!({})).to_string())
            }
        };
        let mut response = response.map_err(|e| {
            let why = match &e {
                ureq::Error::Io(io) => p2pfs_peer::handle::describe_io(io),
                e => e.to_string(),
            };
            Failure(format!(
                "cannot reach the p2pfs API at {}: {why} (is the daemon running? it prints its API address at start-up)",
                self.base
            ))
        })?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Failure(format!("cannot read the answer from {url}: {e}")))?;
        let value: Value = serde_json::from_str(&text).map_err(|_| {
            Failure(format!(
                "{url} did not answer with JSON (HTTP {status}); is it a p2pfs API?"
            ))
        })?;
        if status.is_success() {
            Ok(value)
        } else {
            let message = value["error"]["message"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {status}"));
            Err(Failure(message))
        }
    }

    fn get(&self, path: &str) -> Result<Value, Failure> {
        self.call("GET", path, None)
    }

    fn post(&self, path: &str, body: Value) -> Result<Value, Failure> {
        self.call("POST", path, Some(body))
    }
}

/// Runs one `ctl` command (blocking; no async runtime needed).
pub(crate) fn run(args: CtlArgs) -> ExitCode {
    let result = Api::new(&args.api, args.token.as_deref())
        .and_then(|api| execute(&api, args.command, args.json));
    match result {
        Ok(Some(text)) => {
            outln!("{text}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn short(v: &Value, n: usize) -> String {
    s(v).chars().take(n).collect()
}

fn encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn execute(api: &Api, command: CtlCommand, as_json: bool) -> CtlResult {
    let show = |v: Value, render: &dyn Fn(&Value) -> String| {
        Ok(Some(if as_json { pretty(&v) } else { render(&v) }))
    };
    match command {
        CtlCommand::Status => show(api.get("/api/status")?, &status_text),
        CtlCommand::Start { addr } => {
            show(api.post("/api/start", json!({ "addr": addr }))?, &|v| {
                format!("tracker serving on {}", s(&v["listening"]))
            })
        }
        CtlCommand::Peers => show(api.get("/api/peers")?, &peers_table),
        CtlCommand::Ping { addr } => show(api.post("/api/ping", json!({ "addr": addr }))?, &|v| {
            format!(
                "{}: round trip {:.3} ms",
                s(&v["addr"]),
                v["rtt_ms"].as_f64().unwrap_or(0.0)
            )
        }),
        CtlCommand::Discover { addr } => show(
            api.get(&format!("/api/discover?addr={}", encode(&addr)))?,
            &discover_table,
        ),
        CtlCommand::Files => show(api.get("/api/files")?, &files_table),
        CtlCommand::Chunks { content_id: None } => show(api.get("/api/chunks")?, &chunks_table),
        CtlCommand::Chunks {
            content_id: Some(id),
        } => show(
            api.get(&format!("/api/chunks/{}", encode(&id)))?,
            &chunk_counts,
        ),
        CtlCommand::Connect { addr } => {
            show(api.post("/api/connect", json!({ "addr": addr }))?, &|v| {
                format!(
                    "connected to tracker {}; other peers reach this peer at {}",
                    s(&v["tracker"]),
                    s(&v["advertised"])
                )
            })
        }
        CtlCommand::Publish { path, name } => {
            // The daemon may run elsewhere in the file system: send an
            // absolute path.
            let path = std::path::absolute(&path).unwrap_or(path);
            let v = api.post(
                "/api/publish",
                json!({ "path": path.display().to_string(), "name": name }),
            )?;
            show(v, &|v| {
                format!(
                    "published '{}' ({}, {})",
                    s(&v["name"]),
                    size(u(&v["size"])),
                    count(u(&v["chunks"]), "chunk")
                )
            })
        }
        CtlCommand::Fetch {
            name,
            dest,
            from,
            wait,
        } => {
            let dest = dest.map(|d| std::path::absolute(&d).unwrap_or(d));
            let v = api.post(
                "/api/fetch",
                json!({
                    "name": name,
                    "dest": dest.map(|d| d.display().to_string()),
                    "from": from,
                }),
            )?;
            if wait {
                return wait_for(api, u(&v["id"]), as_json);
            }
            show(v, &|v| {
                format!(
                    "download #{} started: '{}' into {}",
                    u(&v["id"]),
                    s(&v["name"]),
                    s(&v["dest"])
                )
            })
        }
        CtlCommand::Downloads => show(api.get("/api/downloads")?, &downloads_table),
        CtlCommand::Wait { id } => wait_for(api, id, as_json),
        CtlCommand::Cancel { id } => show(
            api.post(&format!("/api/downloads/{id}/cancel"), json!({}))?,
            &|v| format!("download #{} is {}", u(&v["id"]), s(&v["state"])),
        ),
        CtlCommand::Resume { id, wait } => {
            let v = api.post(&format!("/api/downloads/{id}/resume"), json!({}))?;
            if wait {
                return wait_for(api, id, as_json);
            }
            show(v, &|v| {
                format!(
                    "download #{} resumed: {} of {} chunks already verified",
                    u(&v["id"]),
                    u(&v["chunks_done"]),
                    u(&v["chunks_total"])
                )
            })
        }
        CtlCommand::Repo => show(api.get("/api/repo")?, &repo_text),
        CtlCommand::SetDelay { seconds } => show(
            api.post("/api/delay", json!({ "seconds": seconds }))?,
            &|v| {
                format!(
                    "chunk requests are now answered after {} s",
                    v["delay_secs"].as_f64().unwrap_or(0.0)
                )
            },
        ),
        CtlCommand::Exit => show(api.post("/api/exit", json!({}))?, &|_| {
            "the daemon is stopping".to_string()
        }),
    }
}

/// Polls a download until it ends, drawing a progress bar on a terminal.
fn wait_for(api: &Api, id: u64, as_json: bool) -> CtlResult {
    let bar = if std::io::stderr().is_terminal() && !as_json {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let v = loop {
        let v = api.get(&format!("/api/downloads/{id}"))?;
        bar.set_length(u(&v["bytes_total"]));
        bar.set_position(u(&v["bytes_done"]));
        bar.set_message(format!("{} ({} sources)", s(&v["name"]), u(&v["sources"])));
        if v["state"] != "running" {
            break v;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    bar.finish_and_clear();
    let mut v = v;
    if let Some(map) = v.as_object_mut() {
        map.remove("have");
    }
    let text = if as_json {
        pretty(&v)
    } else {
        format!(
            "download #{id} '{}': {} ({} in {:.2} s, {}) -> {}",
            s(&v["name"]),
            s(&v["state"]),
            size(u(&v["bytes_total"])),
            v["elapsed_secs"].as_f64().unwrap_or(0.0),
            rate(v["rate"].as_f64().unwrap_or(0.0)),
            s(&v["dest"])
        )
    };
    match v["state"].as_str() {
        Some("done") => Ok(Some(text)),
        Some("failed") => Err(Failure(format!(
            "download #{id} '{}' failed: {}",
            s(&v["name"]),
            s(&v["error"])
        ))),
        _ => Err(Failure(format!(
            "download #{id} '{}' was {}",
            s(&v["name"]),
            s(&v["state"])
        ))),
    }
}

fn rows(v: &Value, key: &str) -> Vec<Value> {
    v[key].as_array().cloned().unwrap_or_default()
}

fn or_empty(t: String, n: usize, empty: &str) -> String {
    if n == 0 {
        empty.to_string()
    } else {
        t
    }
}

fn status_text(v: &Value) -> String {
    let keys: Vec<(&String, &Value)> = v
        .as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    keys.iter()
        .map(|(k, v)| format!("{k:<16}{}", s(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn peers_table(v: &Value) -> String {
    let peers = rows(v, "peers");
    let body: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            vec![
                s(&p["addr"]),
                short(&p["peer_id"], 8),
                u(&p["published"]).to_string(),
                u(&p["holding"]).to_string(),
            ]
        })
        .collect();
    or_empty(
        table(&["ADDRESS", "PEER", "PUBLISHED", "HOLDING"], &body),
        body.len(),
        "no peers online",
    )
}

fn files_table(v: &Value) -> String {
    let files = rows(v, "files");
    let body: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                s(&f["name"]),
                s(&f["publisher"]),
                size(u(&f["size"])),
                u(&f["chunks"]).to_string(),
                u(&f["sources"]).to_string(),
                u(&f["seeders"]).to_string(),
            ]
        })
        .collect();
    or_empty(
        table(
            &["NAME", "PUBLISHER", "SIZE", "CHUNKS", "SOURCES", "SEEDERS"],
            &body,
        ),
        body.len(),
        "no files published yet",
    )
}

fn discover_table(v: &Value) -> String {
    let files = rows(v, "files");
    let body: Vec<Vec<String>> = files
        .iter()
        .map(|f| {
            vec![
                s(&f["name"]),
                size(u(&f["size"])),
                u(&f["chunks"]).to_string(),
                s(&f["path"]),
            ]
        })
        .collect();
    let head = format!("peer {} ({})", s(&v["addr"]), short(&v["peer_id"], 8));
    or_empty(
        format!(
            "{head}\n{}",
            table(&["NAME", "SIZE", "CHUNKS", "PATH"], &body)
        ),
        body.len(),
        &format!("{head} publishes no files"),
    )
}

fn chunks_table(v: &Value) -> String {
    let contents = rows(v, "contents");
    let mut body = Vec::new();
    for c in &contents {
        let names: Vec<String> = rows(c, "names").iter().map(|n| s(&n["name"])).collect();
        for h in rows(c, "holders") {
            body.push(vec![
                names.join(", "),
                short(&c["content_id"], 12),
                s(&h["addr"]),
                format!("{}/{}", u(&h["have"]), u(&c["chunks"])),
            ]);
        }
    }
    or_empty(
        table(&["NAME", "CONTENT", "HOLDER", "CHUNKS"], &body),
        body.len(),
        "no chunks held",
    )
}

fn chunk_counts(v: &Value) -> String {
    let counts: Vec<String> = rows(v, "counts").iter().map(|c| u(c).to_string()).collect();
    format!(
        "content {} ({} chunks, {} holders)\nholders per chunk: {}",
        s(&v["content_id"]),
        u(&v["chunks"]),
        rows(v, "holders").len(),
        counts.join(" ")
    )
}

fn downloads_table(v: &Value) -> String {
    let downloads = rows(v, "downloads");
    let body: Vec<Vec<String>> = downloads
        .iter()
        .map(|d| {
            vec![
                u(&d["id"]).to_string(),
                s(&d["name"]),
                s(&d["state"]),
                format!("{:.0}%", d["percent"].as_f64().unwrap_or(0.0)),
                size(u(&d["bytes_total"])),
                rate(d["rate"].as_f64().unwrap_or(0.0)),
                s(&d["dest"]),
            ]
        })
        .collect();
    or_empty(
        table(
            &["ID", "NAME", "STATE", "DONE", "SIZE", "RATE", "DESTINATION"],
            &body,
        ),
        body.len(),
        "no downloads yet",
    )
}

fn repo_text(v: &Value) -> String {
    let published: Vec<Vec<String>> = rows(v, "published")
        .iter()
        .map(|p| vec![s(&p["name"]), size(u(&p["size"])), s(&p["path"])])
        .collect();
    let fetched: Vec<Vec<String>> = rows(v, "fetched")
        .iter()
        .map(|p| vec![s(&p["name"]), size(u(&p["size"])), s(&p["path"])])
        .collect();
    format!(
        "repository {}\n\npublished:\n{}\n\nfetched:\n{}",
        s(&v["path"]),
        or_empty(
            table(&["NAME", "SIZE", "PATH"], &published),
            published.len(),
            "(none)"
        ),
        or_empty(
            table(&["NAME", "SIZE", "PATH"], &fetched),
            fetched.len(),
            "(none)"
        ),
    )
}
