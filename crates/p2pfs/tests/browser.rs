//! The web UI in a real browser: Debian's headless Chromium driven through
//! chromedriver (WebDriver), against a tracker and two peers running as
//! processes. It publishes on one peer, sees the file on the tracker page
//! and on the other peer's page, fetches it with a click, waits for the
//! progress bar to reach 100%, checks the bytes on disk, and pings a peer
//! from the tracker page. Screenshots go to `target/tmp/screenshots/`.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them). Without
//! them the test is skipped with a message, except under CI (`CI` set),
//! where it fails.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{elements::Element, Client, ClientBuilder, Locator};

const UI_WAIT: Duration = Duration::from_secs(20);
const CHROME_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
];

struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

fn start_driver() -> Result<Option<Driver>> {
    let (Some(driver), Some(_)) = (find("chromedriver"), find("chromium")) else {
        if std::env::var_os("CI").is_some() {
            return Err("chromium and chromedriver are required under CI".into());
        }
        eprintln!(
            "SKIPPED: the browser test needs Debian's chromium and chromium-driver \
             (apt-get install chromium chromium-driver)"
        );
        return Ok(None);
    };
    // chromedriver picks its own port and prints it. Choosing one here
    // and passing it on raced with every other process binding port 0 (the
    // other browser test, its peers); the readiness probe could even
    // connect a socket to itself on that port, which then kept chromedriver
    // from listening there.
    let mut child = Command::new(driver)
        .arg("--port=0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("chromedriver has no stdout")?;
    let mut d = Driver { child, port: 0 };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Reads to the end, so chromedriver never blocks on a full pipe.
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::io::Result::ok)
        {
            if let Some(port) = line
                .strip_prefix("ChromeDriver was started successfully on port ")
                .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
            {
                let _ = tx.send(port);
            }
        }
    });
    d.port = rx
        .recv_timeout(UI_WAIT)
        .map_err(|_| "chromedriver did not say which port it listens on")?;
    Ok(Some(d))
}

async fn browser(driver: &Driver) -> Result<Client> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "args": CHROME_ARGS, "binary": find("chromium") }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    Ok(ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await?)
}

/// Waits for an element matching `css` whose text satisfies `ok`.
async fn wait_text(
    c: &Client,
    css: &str,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> Result<Element> {
    let deadline = Instant::now() + UI_WAIT;
    let mut last = String::new();
    loop {
        if let Ok(found) = c.find_all(Locator::Css(css)).await {
            for e in found {
                if let Ok(t) = e.text().await {
                    if ok(&t) {
                        return Ok(e);
                    }
                    last = t;
                }
            }
        }
        if Instant::now() > deadline {
            let url = c
                .current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default();
            return Err(format!(
                "{url}: no {css} with {what} within {UI_WAIT:?} (last text {last:?})"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(c: &Client, css: &str) -> Result<Element> {
    wait_text(c, css, "any text", |_| true).await
}

async fn type_into(c: &Client, css: &str, text: &str) -> Result {
    let e = wait_for(c, css).await?;
    e.clear().await?;
    e.send_keys(text).await?;
    Ok(())
}

async fn screenshot(c: &Client, dir: &Path, name: &str) -> Result {
    let png = c.screenshot().await?;
    std::fs::write(dir.join(format!("{name}.png")), png)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_fetch_and_ping_in_a_real_browser() -> Result {
    let Some(driver) = start_driver()? else {
        return Ok(());
    };
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots)?;
    let net = Net::new()?;
    let (a, a_addr) = net.peer("alice")?;
    let (b, _) = net.peer("bob")?;
    let tracker_url = net.tracker.api.clone().ok_or("no tracker URL")?;
    let alice_url = a.api.clone().ok_or("no alice URL")?;
    let bob_url = b.api.clone().ok_or("no bob URL")?;
    let data = random_file(&net.path("holiday photos.bin"), 5 * CHUNK + 4321)?;
    let c = browser(&driver).await?;
    let result = async {
        // Alice publishes through her page.
        c.goto(&alice_url).await?;
        let path = net.path("holiday photos.bin").display().to_string();
        type_into(&c, "#publish-path", &path).await?;
        type_into(&c, "#publish-name", "photos.bin").await?;
        wait_for(&c, "#publish-submit").await?.click().await?;
        wait_text(&c, "#repo-published", "photos.bin", |t| {
            t.contains("photos.bin")
        })
        .await?;
        // A refusal is shown inline.
        type_into(&c, "#publish-path", &path).await?;
        type_into(&c, "#publish-name", "again.bin").await?;
        wait_for(&c, "#publish-submit").await?.click().await?;
        wait_text(&c, "#publish-error", "the refusal", |t| {
            t.contains("already published")
        })
        .await?;
        screenshot(&c, &shots, "peer-alice-published").await?;

        // The tracker page lists it.
        c.goto(&tracker_url).await?;
        wait_for(&c, "#files tr[data-name=\"photos.bin\"]").await?;

        // Bob sees it on his page and fetches it with a click.
        c.goto(&bob_url).await?;
        let button = wait_for(
            &c,
            "#network-files tr[data-name=\"photos.bin\"] button.fetch-btn",
        )
        .await?;
        button.click().await?;
        wait_text(&c, "#downloads .download .percent", "100%", |t| {
            t.trim() == "100%"
        })
        .await?;
        wait_text(&c, "#downloads .download .state", "done", |t| {
            t.to_lowercase().contains("done")
        })
        .await?;
        let progress = wait_for(&c, "#downloads .download progress").await?;
        assert_eq!(progress.attr("value").await?.as_deref(), Some("100"));
        screenshot(&c, &shots, "peer-bob-fetched").await?;
        let fetched = wait_text(&c, "#repo-fetched", "photos.bin", |t| {
            t.contains("photos.bin")
        })
        .await?;
        assert!(fetched.text().await?.contains("photos.bin"));
        // Held now: the row offers no Fetch that could only be refused.
        wait_for(
            &c,
            "#network-files tr[data-name=\"photos.bin\"] .action .have-tag",
        )
        .await?;
        assert!(c
            .find_all(Locator::Css(
                "#network-files tr[data-name=\"photos.bin\"] button.fetch-btn"
            ))
            .await?
            .is_empty());

        // The tracker page pings Alice and shows the chunk map.
        c.goto(&tracker_url).await?;
        let row = format!("#peers tr[data-addr=\"{a_addr}\"]");
        wait_for(&c, &format!("{row} button.ping-btn"))
            .await?
            .click()
            .await?;
        wait_text(&c, &format!("{row} .rtt"), "an RTT in ms", |t| {
            t.contains("ms")
        })
        .await?;
        // Both peers hold every chunk now: the map shows count 2.
        let deadline = Instant::now() + UI_WAIT;
        loop {
            let cells = c.find_all(Locator::Css("#chunkmap .cell")).await?;
            let mut twos = 0;
            for cell in &cells {
                if cell.attr("data-count").await?.as_deref() == Some("2") {
                    twos += 1;
                }
            }
            if !cells.is_empty() && twos == cells.len() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("chunk map: {twos} of {} cells at 2", cells.len()).into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        screenshot(&c, &shots, "tracker-desktop").await?;

        // Phone width.
        c.set_window_size(390, 844).await?;
        c.goto(&tracker_url).await?;
        wait_for(&c, "#files tr[data-name=\"photos.bin\"]").await?;
        screenshot(&c, &shots, "tracker-phone").await?;
        c.goto(&bob_url).await?;
        wait_text(&c, "#downloads .download .state", "done", |t| {
            t.to_lowercase().contains("done")
        })
        .await?;
        screenshot(&c, &shots, "peer-phone").await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    if result.is_err() {
        let _ = screenshot(&c, &shots, "failure").await;
    }
    let _ = c.close().await;
    result?;

    let repo = net.path("bob").join("downloads").join("photos.bin");
    assert_eq!(std::fs::read(&repo)?, data, "fetched bytes differ");
    eprintln!("screenshots in {}", shots.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_the_access_token_once() -> Result {
    let Some(driver) = start_driver()? else {
        return Ok(());
    };
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&shots)?;
    let net = Net::new()?;
    // An API on every address needs a token: the daemon generates one.
    let repo = net.path("carol").to_string_lossy().to_string();
    let mut p = Proc::spawn(
        "carol",
        &[
            "peer",
            "--join",
            &net.join,
            "--repo",
            &repo,
            "--http",
            "0.0.0.0:0",
        ],
    )?;
    let url = p.read_api()?;
    let note = p.expect("needs this access token")?;
    let token = note.rsplit(' ').next().ok_or("no token")?.to_string();
    let c = browser(&driver).await?;
    let result = async {
        c.goto(&url).await?;
        wait_for(&c, "#token-card").await?;
        screenshot(&c, &shots, "token-asked").await?;
        // A wrong token is refused and asked again.
        type_into(&c, "#token-input", "not-the-token").await?;
        wait_for(&c, "#token-form button[type=submit]")
            .await?
            .click()
            .await?;
        wait_text(&c, "#token-card .form-error", "the refusal", |t| {
            t.contains("refused")
        })
        .await?;
        // The right one opens the page, live updates included.
        type_into(&c, "#token-input", &token).await?;
        wait_for(&c, "#token-form button[type=submit]")
            .await?
            .click()
            .await?;
        wait_for(&c, "#publish-path").await?;
        wait_text(&c, "#status", "the status", |t| t.contains("connected to")).await?;
        // Kept for the session: a reload does not ask again.
        c.refresh().await?;
        wait_for(&c, "#publish-path").await?;
        assert!(c.find(Locator::Css("#token-card")).await.is_err());
        screenshot(&c, &shots, "token-accepted").await?;
        Result::Ok(())
    }
    .await;
    c.close().await?;
    result
}
