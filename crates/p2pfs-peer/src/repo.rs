//! The peer's durable repository: an SQLite database (`p2pfs.db`, WAL mode)
//! in the repository folder. It keeps the stable peer id, manifests,
//! publications (with the size and modification time they were hashed at),
//! a manifest cache by path, size and modification time, and every download
//! with its destination and the bitfield of verified chunks.
//!
//! One peer at a time owns a repository: [`Repo::open`] takes an exclusive
//! lock on its `lock` file (holding the owner's pid) and keeps it until the
//! peer shuts down ([`Repo::release`]) or the process ends, so a second
//! peer started on the same folder is refused instead of sharing the peer
//! id and the database.
//!
//! Calls are short and synchronous; callers never hold the connection
//! across an await. The bitfield of a running download is saved on the
//! download's progress tick, so a crash loses at most the last few hundred
//! milliseconds of verified chunks, which a resumed download fetches again.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use p2pfs_proto::{Bitfield, ContentId, Manifest, PeerId};
use rusqlite::{params, Connection, OptionalExtension};

use crate::error::PeerError;

/// The database file inside the repository folder.
pub const DB_FILE: &str = "p2pfs.db";

/// The lock file inside the repository folder: locked by the peer that
/// owns the repository, and holding its pid.
pub const LOCK_FILE: &str = "lock";

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE manifests (
    content_id BLOB PRIMARY KEY,
    manifest   BLOB NOT NULL
);
CREATE TABLE hash_cache (
    path       TEXT PRIMARY KEY,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    content_id BLOB NOT NULL
);
CREATE TABLE publications (
    name       TEXT PRIMARY KEY,
    path       TEXT NOT NULL UNIQUE,
    content_id BLOB NOT NULL,
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL
);
CREATE TABLE downloads (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT NOT NULL,
    publisher  TEXT NOT NULL,
    content_id BLOB NOT NULL,
    dest       TEXT NOT NULL,
    part       TEXT NOT NULL,
    only_from  TEXT,
    state      TEXT NOT NULL,
    error      TEXT,
    have       BLOB NOT NULL
);
";

/// A file's size and modification time, to notice changes without hashing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

impl Stamp {
    /// The stamp of the file at `path`.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn of(path: &Path) -> std::io::Result<Stamp> {
        Ok(Self::from_meta(&std::fs::metadata(path)?))
    }

    /// The stamp of an open file.
    ///
    /// # Errors
    /// The metadata cannot be read.
    pub fn of_file(file: &std::fs::File) -> std::io::Result<Stamp> {
        Ok(Self::from_meta(&file.metadata()?))
    }

    fn from_meta(m: &std::fs::Metadata) -> Stamp {
        let mtime_ns = m
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Stamp {
            size: m.len(),
            mtime_ns,
        }
    }
}

/// A stored publication.
#[derive(Clone, Debug)]
pub struct PublicationRow {
    /// Published name.
    pub name: String,
    /// Absolute path.
    pub path: PathBuf,
    /// Content id.
    pub content_id: ContentId,
    /// The file's stamp when it was hashed.
    pub stamp: Stamp,
}

/// Where a stored download is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowState {
    /// Running (or interrupted by a crash: resume it).
    Running,
    /// Complete and in place.
    Done,
    /// Stopped by an error.
    Failed,
    /// Cancelled by the user.
    Cancelled,
}

impl RowState {
    fn as_str(self) -> &'static str {
        match self {
            RowState::Running => "running",
            RowState::Done => "done",
            RowState::Failed => "failed",
            RowState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> RowState {
        match s {
            "done" => RowState::Done,
            "failed" => RowState::Failed,
            "cancelled" => RowState::Cancelled,
            _ => RowState::Running,
        }
    }
}

/// A stored download.
#[derive(Clone, Debug)]
pub struct DownloadRow {
    /// Id (stable across restarts).
    pub id: u64,
    /// Published name.
    pub name: String,
    /// Publisher address as text.
    pub publisher: String,
    /// Content id.
    pub content_id: ContentId,
    /// Final path.
    pub dest: PathBuf,
    /// Part file path.
    pub part: PathBuf,
    /// Only this source, as text.
    pub only_from: Option<String>,
    /// State.
    pub state: RowState,
    /// Why it failed.
    pub error: Option<String>,
    /// Verified chunks.
    pub have: Bitfield,
}

/// The repository database. See the module docs.
#[derive(Debug)]
pub struct Repo {
    conn: Mutex<Connection>,
    path: PathBuf,
    /// The repository's lock, held until [`Repo::release`] or the drop.
    lock: Mutex<Option<File>>,
}

fn db_err(path: &Path) -> impl Fn(rusqlite::Error) -> PeerError + '_ {
    move |e| PeerError::Repository {
        path: path.to_path_buf(),
        why: e.to_string(),
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).unwrap_or_default()
}

fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Takes the repository's lock, or says which process holds it.
fn lock_repository(dir: &Path) -> Result<File, PeerError> {
    let path = dir.join(LOCK_FILE);
    let context = || format!("cannot lock the repository {}", dir.display());
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(PeerError::io(context()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            return Err(PeerError::RepositoryInUse {
                dir: dir.to_path_buf(),
                pid,
            });
        }
        Err(TryLockError::Error(e)) => return Err(PeerError::io(context())(e)),
    }
    // The pid is only for that message; failing to write it is harmless.
    let _ = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

impl Repo {
    /// Opens (creating if needed) the database in `dir`.
    ///
    /// # Errors
    /// Another process holds the repository, or the database cannot be
    /// opened, or was written by a newer p2pfs.
    pub fn open(dir: &Path) -> Result<Repo, PeerError> {
        let lock = lock_repository(dir)?;
        let path = dir.join(DB_FILE);
        let err = db_err(&path);
        let conn = Connection::open(&path).map_err(&err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(&err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(&err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(&err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(&err)?;
        if version > SCHEMA_VERSION {
            return Err(PeerError::Repository {
                path: path.clone(),
                why: format!(
                    "it was written by a newer p2pfs (schema {version}; this one knows {SCHEMA_VERSION})"
                ),
            });
        }
        if version == 0 {
            conn.execute_batch(&format!(
                "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(&err)?;
        }
        drop(err);
        Ok(Repo {
            conn: Mutex::new(conn),
            path,
            lock: Mutex::new(Some(lock)),
        })
    }

    /// Gives up the repository's lock, for a peer that has shut down: a
    /// new peer may then open the folder while this value lives on.
    pub fn release(&self) {
        drop(self.lock.lock().unwrap_or_else(|e| e.into_inner()).take());
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, PeerError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        f(&conn).map_err(db_err(&self.path))
    }

    /// The stable peer id: stored, imported from an older `peer_id` file,
    /// or made now.
    ///
    /// # Errors
    /// Database errors.
    pub fn peer_id(&self, legacy_file: &Path) -> Result<PeerId, PeerError> {
        let stored: Option<String> = self.with(|c| {
            c.query_row("SELECT value FROM meta WHERE key = 'peer_id'", [], |r| {
                r.get(0)
            })
            .optional()
        })?;
        if let Some(id) = stored.as_deref().and_then(PeerId::from_hex) {
            return Ok(id);
        }
        let id = std::fs::read_to_string(legacy_file)
            .ok()
            .and_then(|t| PeerId::from_hex(t.trim()))
            .unwrap_or_else(PeerId::random);
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('peer_id', ?1)",
                [id.to_string()],
            )
        })?;
        Ok(id)
    }

    /// Stores a manifest.
    ///
    /// # Errors
    /// Database errors.
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<ContentId, PeerError> {
        let cid = manifest.content_id();
        self.with(|c| {
            c.execute(
                "INSERT OR IGNORE INTO manifests (content_id, manifest) VALUES (?1, ?2)",
                params![cid.0.as_slice(), encode(manifest)],
            )
        })?;
        Ok(cid)
    }

    /// A stored manifest (checked against its content id).
    ///
    /// # Errors
    /// Database errors.
    pub fn manifest(&self, cid: &ContentId) -> Result<Option<Manifest>, PeerError> {
        let bytes: Option<Vec<u8>> = self.with(|c| {
            c.query_row(
                "SELECT manifest FROM manifests WHERE content_id = ?1",
                [cid.0.as_slice()],
                |r| r.get(0),
            )
            .optional()
        })?;
        Ok(bytes
            .and_then(|b| postcard::from_bytes::<Manifest>(&b).ok())
            .filter(|m| m.validate().is_ok() && m.content_id() == *cid))
    }

    /// The manifest hashed earlier for `path` at this stamp, if any and if
    /// it follows this build's chunk size rule (a manifest cached by a build
    /// with another rule would give the file another content id than other
    /// publishers of it get, so the file is hashed again).
    ///
    /// # Errors
    /// Database errors.
    pub fn cached_manifest(
        &self,
        path: &Path,
        stamp: Stamp,
    ) -> Result<Option<Manifest>, PeerError> {
        let cid: Option<Vec<u8>> = self.with(|c| {
            c.query_row(
                "SELECT content_id FROM hash_cache WHERE path = ?1 AND size = ?2 AND mtime_ns = ?3",
                params![path_text(path), stamp.size as i64, stamp.mtime_ns],
                |r| r.get(0),
            )
            .optional()
        })?;
        match cid.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()) {
            Some(id) => Ok(self
                .manifest(&ContentId(id))?
                .filter(|m| m.chunk_size == p2pfs_proto::types::chunk_size_for(m.size))),
            None => Ok(None),
        }
    }

    /// Remembers the manifest of `path` at `stamp`.
    ///
    /// # Errors
    /// Database errors.
    pub fn cache_manifest(
        &self,
        path: &Path,
        stamp: Stamp,
        manifest: &Manifest,
    ) -> Result<(), PeerError> {
        let cid = self.put_manifest(manifest)?;
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO hash_cache (path, size, mtime_ns, content_id) VALUES (?1, ?2, ?3, ?4)",
                params![path_text(path), stamp.size as i64, stamp.mtime_ns, cid.0.as_slice()],
            )
        })?;
        Ok(())
    }

    /// Stores a publication.
    ///
    /// # Errors
    /// Database errors.
    pub fn add_publication(&self, p: &PublicationRow) -> Result<(), PeerError> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO publications (name, path, content_id, size, mtime_ns) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    p.name,
                    path_text(&p.path),
                    p.content_id.0.as_slice(),
                    p.stamp.size as i64,
                    p.stamp.mtime_ns
                ],
            )
        })?;
        Ok(())
    }

    /// Forgets a publication.
    ///
    /// # Errors
    /// Database errors.
    pub fn remove_publication(&self, name: &str) -> Result<(), PeerError> {
        self.with(|c| c.execute("DELETE FROM publications WHERE name = ?1", [name]))?;
        Ok(())
    }

    /// Every stored publication, oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub fn publications(&self) -> Result<Vec<PublicationRow>, PeerError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT name, path, content_id, size, mtime_ns FROM publications ORDER BY rowid",
            )?;
            let rows = stmt.query_map([], |r| {
                let cid: Vec<u8> = r.get(2)?;
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    cid,
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (name, path, cid, size, mtime_ns) = row?;
                if let Ok(id) = <[u8; 32]>::try_from(cid.as_slice()) {
                    out.push(PublicationRow {
                        name,
                        path: PathBuf::from(path),
                        content_id: ContentId(id),
                        stamp: Stamp {
                            size: size as u64,
                            mtime_ns,
                        },
                    });
                }
            }
            Ok(out)
        })
    }

    /// Stores a new download and returns its id.
    ///
    /// # Errors
    /// Database errors.
    pub fn add_download(&self, d: &DownloadRow) -> Result<u64, PeerError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO downloads (name, publisher, content_id, dest, part, only_from, state, error, have)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    d.name,
                    d.publisher,
                    d.content_id.0.as_slice(),
                    path_text(&d.dest),
                    path_text(&d.part),
                    d.only_from,
                    d.state.as_str(),
                    d.error,
                    encode(&d.have)
                ],
            )?;
            Ok(c.last_insert_rowid() as u64)
        })
    }

    /// Saves a download's verified chunks.
    ///
    /// # Errors
    /// Database errors.
    pub fn save_have(&self, id: u64, have: &Bitfield) -> Result<(), PeerError> {
        self.with(|c| {
            c.execute(
                "UPDATE downloads SET have = ?2 WHERE id = ?1",
                params![id as i64, encode(have)],
            )
        })?;
        Ok(())
    }

    /// Saves a download's state (and bitfield).
    ///
    /// # Errors
    /// Database errors.
    pub fn set_download_state(
        &self,
        id: u64,
        state: RowState,
        error: Option<&str>,
        have: &Bitfield,
    ) -> Result<(), PeerError> {
        self.with(|c| {
            c.execute(
                "UPDATE downloads SET state = ?2, error = ?3, have = ?4 WHERE id = ?1",
                params![id as i64, state.as_str(), error, encode(have)],
            )
        })?;
        Ok(())
    }

    /// Forgets a download.
    ///
    /// # Errors
    /// Database errors.
    pub fn remove_download(&self, id: u64) -> Result<(), PeerError> {
        self.with(|c| c.execute("DELETE FROM downloads WHERE id = ?1", [id as i64]))?;
        Ok(())
    }

    /// Every stored download, oldest first.
    ///
    /// # Errors
    /// Database errors.
    pub fn downloads(&self) -> Result<Vec<DownloadRow>, PeerError> {
        self.with(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, publisher, content_id, dest, part, only_from, state, error, have
                 FROM downloads ORDER BY id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, Vec<u8>>(9)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, name, publisher, cid, dest, part, only_from, state, error, have) = row?;
                let Ok(cid) = <[u8; 32]>::try_from(cid.as_slice()) else {
                    continue;
                };
                let have: Bitfield = postcard::from_bytes(&have).unwrap_or_default();
                out.push(DownloadRow {
                    id: id as u64,
                    name,
                    publisher,
                    content_id: ContentId(cid),
                    dest: PathBuf::from(dest),
                    part: PathBuf::from(part),
                    only_from,
                    state: RowState::parse(&state),
                    error,
                    have,
                });
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2pfs_proto::limits::MIN_CHUNK_SIZE;

    fn manifest(seed: u8) -> Manifest {
        Manifest {
            size: 3 * u64::from(MIN_CHUNK_SIZE),
            chunk_size: MIN_CHUNK_SIZE,
            hashes: vec![[seed; 32]; 3],
        }
    }

    #[test]
    fn a_second_open_of_a_held_repository_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = Repo::open(dir.path()).unwrap();
        match Repo::open(dir.path()) {
            Err(PeerError::RepositoryInUse { dir: d, pid }) => {
                assert_eq!(d, dir.path());
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected RepositoryInUse, got {other:?}"),
        }
        first.release();
        let second = Repo::open(dir.path()).unwrap();
        drop(first);
        drop(second);
        Repo::open(dir.path()).unwrap();
    }

    #[test]
    fn everything_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("peer_id"), format!("{}\n", PeerId([7; 16]))).unwrap();
        let stamp = Stamp {
            size: 3,
            mtime_ns: 42,
        };
        {
            let repo = Repo::open(dir.path()).unwrap();
            assert_eq!(
                repo.peer_id(&dir.path().join("peer_id")).unwrap(),
                PeerId([7; 16])
            );
            let m = manifest(1);
            repo.cache_manifest(Path::new("/a"), stamp, &m).unwrap();
            repo.add_publication(&PublicationRow {
                name: "a".into(),
                path: "/a".into(),
                content_id: m.content_id(),
                stamp,
            })
            .unwrap();
            let mut have = Bitfield::new(3);
            have.set(1);
            let id = repo
                .add_download(&DownloadRow {
                    id: 0,
                    name: "b".into(),
                    publisher: "127.0.0.1:1".into(),
                    content_id: manifest(2).content_id(),
                    dest: "/d/b".into(),
                    part: "/d/b.part".into(),
                    only_from: None,
                    state: RowState::Running,
                    error: None,
                    have: Bitfield::new(3),
                })
                .unwrap();
            repo.save_have(id, &have).unwrap();
        }
        let repo = Repo::open(dir.path()).unwrap();
        std::fs::remove_file(dir.path().join("peer_id")).unwrap();
        assert_eq!(
            repo.peer_id(&dir.path().join("peer_id")).unwrap(),
            PeerId([7; 16])
        );
        assert_eq!(
            repo.cached_manifest(Path::new("/a"), stamp).unwrap(),
            Some(manifest(1))
        );
        let changed = Stamp {
            mtime_ns: 43,
            ..stamp
        };
        assert_eq!(
            repo.cached_manifest(Path::new("/a"), changed).unwrap(),
            None
        );
        // A manifest cached under another chunk size rule is not reused.
        let old_rule = Manifest {
            size: 600_000,
            chunk_size: 4 * MIN_CHUNK_SIZE,
            hashes: vec![[3; 32]; 3],
        };
        repo.cache_manifest(Path::new("/old"), stamp, &old_rule)
            .unwrap();
        assert_eq!(
            repo.cached_manifest(Path::new("/old"), stamp).unwrap(),
            None
        );
        let pubs = repo.publications().unwrap();
        assert_eq!((pubs.len(), pubs[0].stamp), (1, stamp));
        let d = &repo.downloads().unwrap()[0];
        assert_eq!(
            (d.state, d.have.count_ones(), d.have.get(1)),
            (RowState::Running, 1, true)
        );
        repo.set_download_state(d.id, RowState::Failed, Some("disk full"), &d.have)
            .unwrap();
        let d = &repo.downloads().unwrap()[0];
        assert_eq!(
            (d.state, d.error.as_deref()),
            (RowState::Failed, Some("disk full"))
        );
        repo.remove_publication("a").unwrap();
        repo.remove_download(d.id).unwrap();
        assert!(repo.publications().unwrap().is_empty());
        assert!(repo.downloads().unwrap().is_empty());
    }
}
