//! Where a daemon's network secret comes from, and the secret file on disk.
//!
//! - Tracker: `--insecure`, else `--secret-file`, else `$P2PFS_SECRET`, else
//!   `DATA/network.secret`, created with a fresh random secret on first start.
//! - Peer: `--insecure`, else the secret of `--join TOKEN`, `--secret-file`
//!   or `$P2PFS_SECRET`, which is then kept in `REPO/network.secret` so that
//!   a restart needs only `--tracker` (or nothing); else that kept secret.
//!
//! Secret files are text (the secret's 43 base64url characters), mode 0600.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use p2pfs_proto::{JoinToken, NetworkSecret, Security};

/// Name of the secret file in a tracker's data folder or a peer's repository.
pub(crate) const SECRET_FILE: &str = "network.secret";

/// Environment variable holding a secret (or a join token).
pub(crate) const SECRET_ENV: &str = "P2PFS_SECRET";

/// Environment variable choosing the cipher a node proposes on the
/// connections it opens: `aes-gcm` (the default, fastest with AES hardware)
/// or `chacha-poly` (for CPUs without it). A node accepts either.
pub(crate) const CIPHER_ENV: &str = "P2PFS_CIPHER";

/// Printed when a daemon starts with `--insecure`.
pub(crate) const INSECURE_WARNING: &str = "warning: --insecure: connections are neither authenticated nor encrypted; anyone who can reach this node can list, join and fetch";

/// Security options shared by both daemons.
#[derive(Debug, clap::Args)]
pub(crate) struct SecretArgs {
    /// Read the network secret from this file (instead of the default)
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub(crate) secret_file: Option<PathBuf>,
    /// No authentication, no encryption: only for a trusted, closed network.
    /// Every node of the network must use it
    #[arg(long)]
    pub(crate) insecure: bool,
}

/// Reads a secret file (a bare secret, or a join token).
pub(crate) fn read_file(path: &Path) -> anyhow::Result<NetworkSecret> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the network secret from {}", path.display()))?;
    parse(&text).with_context(|| format!("{} holds no valid network secret", path.display()))
}

/// A secret from text: a bare secret or a join token.
pub(crate) fn parse(text: &str) -> anyhow::Result<NetworkSecret> {
    let text = text.trim();
    if text.starts_with("p2pfs1:") {
        Ok(JoinToken::from_text(text)?.secret)
    } else {
        Ok(NetworkSecret::from_text(text)?)
    }
}

/// Writes `secret` to `path` with mode 0600 (replacing the file atomically).
pub(crate) fn write_file(path: &Path, secret: &NetworkSecret) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = path.with_extension("secret.tmp");
    // A fresh file (never an old one, nor a symlink planted there), so that
    // its mode is really 0600.
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", tmp.display()))?;
    }
    writeln!(f, "{}", secret.to_text())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Noise with `secret` and the cipher `$P2PFS_CIPHER` asks for.
fn noise(secret: NetworkSecret) -> anyhow::Result<Security> {
    let suite = match std::env::var(CIPHER_ENV).as_deref() {
        Err(_) | Ok("" | "aes-gcm") => p2pfs_proto::secure::Suite::AesGcm,
        Ok("chacha-poly") => p2pfs_proto::secure::Suite::ChaChaPoly,
        Ok(other) => bail!("${CIPHER_ENV} is '{other}'; use aes-gcm or chacha-poly"),
    };
    Ok(Security::Noise { secret, suite })
}

fn from_env() -> anyhow::Result<Option<NetworkSecret>> {
    match std::env::var(SECRET_ENV) {
        Ok(v) if !v.trim().is_empty() => parse(&v)
            .map(Some)
            .with_context(|| format!("${SECRET_ENV} holds no valid network secret")),
        _ => Ok(None),
    }
}

/// The tracker's security: see the module docs.
pub(crate) fn tracker(args: &SecretArgs, data: &Path) -> anyhow::Result<Security> {
    if args.insecure {
        return Ok(Security::Insecure);
    }
    if let Some(f) = &args.secret_file {
        return noise(read_file(f)?);
    }
    if let Some(s) = from_env()? {
        return noise(s);
    }
    let path = data.join(SECRET_FILE);
    if path.exists() {
        return noise(read_file(&path)?);
    }
    let secret = NetworkSecret::generate();
    write_file(&path, &secret)?;
    outln!(
        "created a new network secret in {} (keep it private)",
        path.display()
    );
    noise(secret)
}

/// The peer's security and the tracker from its join token, if any.
pub(crate) fn peer(
    args: &SecretArgs,
    join: Option<&str>,
    repo: &Path,
) -> anyhow::Result<(Security, Option<String>)> {
    if args.insecure {
        if join.is_some() {
            bail!("--join and --insecure do not go together: a join token carries a secret");
        }
        return Ok((Security::Insecure, None));
    }
    let path = repo.join(SECRET_FILE);
    let (given, tracker) = match join {
        Some(t) => {
            let token = JoinToken::from_text(t).context("cannot use the join token")?;
            (Some(token.secret), Some(token.tracker))
        }
        None => match &args.secret_file {
            Some(f) => (Some(read_file(f)?), None),
            None => (from_env()?, None),
        },
    };
    if let Some(secret) = given {
        let kept = path
            .exists()
            .then(|| read_file(&path))
            .transpose()
            .ok()
            .flatten();
        if kept.as_ref() != Some(&secret) {
            if kept.is_some() {
                outln!(
                    "replacing the network secret kept in {} (this peer joins another network)",
                    path.display()
                );
            }
            write_file(&path, &secret)?;
        }
        return Ok((noise(secret)?, tracker));
    }
    if path.exists() {
        return Ok((noise(read_file(&path)?)?, None));
    }
    bail!(
        "this peer has no network secret yet. Start it with --join TOKEN (the tracker prints the \
         command at start), or --tracker IP:PORT --secret-file FILE; --insecure runs without \
         encryption"
    )
}

/// The line a tracker prints so peers can join.
pub(crate) fn join_line(tracker: &p2pfs_tracker::TrackerHandle) -> String {
    match (tracker.join_token(), tracker.local_addr()) {
        (Some(t), _) => format!(
            "peers join with:  p2pfs peer --join {}\n(or with the token in $P2PFS_JOIN, which keeps it out of the process list)",
            t.to_text()
        ),
        (None, Some(bound)) => format!("peers join with:  p2pfs peer --insecure --tracker {bound}"),
        (None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_creates_a_private_secret_once_and_peers_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let none = SecretArgs {
            secret_file: None,
            insecure: false,
        };
        let Security::Noise { secret: first, .. } = tracker(&none, dir.path()).unwrap() else {
            panic!("secure by default")
        };
        let path = dir.path().join(SECRET_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let Security::Noise { secret: again, .. } = tracker(&none, dir.path()).unwrap() else {
            panic!()
        };
        assert_eq!(first, again);
        // A leftover temporary file with a loose mode does not loosen it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let tmp = path.with_extension("secret.tmp");
            std::fs::write(&tmp, "old").unwrap();
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
            write_file(&path, &first).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let repo = dir.path().join("repo");
        assert!(peer(&none, None, &repo).is_err(), "no secret, no start");
        let token = JoinToken {
            secret: first.clone(),
            tracker: "127.0.0.1:7000".into(),
        }
        .to_text();
        let (sec, t) = peer(&none, Some(&token), &repo).unwrap();
        assert_eq!(t.as_deref(), Some("127.0.0.1:7000"));
        assert!(!sec.is_insecure());
        let (Security::Noise { secret: kept, .. }, None) = peer(&none, None, &repo).unwrap() else {
            panic!("the secret is kept")
        };
        assert_eq!(kept, first);
        assert!(peer(&none, Some("p2pfs1:nope@x:1"), &repo).is_err());
    }
}
