//! Bringing a peer back from its repository database at start-up, and
//! resuming downloads.
//!
//! - A publication is restored only if its file still has the size and
//!   modification time it was hashed at; otherwise it is withdrawn (the
//!   tracker never hears of it again) with a log line.
//! - A finished download whose file is in place is served again.
//! - An unfinished download keeps only the chunks of its part file that
//!   still match the manifest (they are re-hashed: nothing on disk is
//!   trusted), and a download that was running when the peer stopped
//!   resumes by itself; it picks up sources once the tracker answers.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use p2pfs_proto::message::Holder;
use p2pfs_proto::{Bitfield, Manifest};
use tracing::{info, warn};

use crate::download::{self, DownloadHandle, DownloadSpec, DownloadState};
use crate::error::PeerError;
use crate::handle::{open_part, PeerInner, Publication};
use crate::repo::{DownloadRow, RowState, Stamp};
use crate::store::{Holding, HoldingKind};

/// Restores publications and downloads from the database.
pub(crate) async fn restore(inner: &Arc<PeerInner>) {
    match inner.db.publications() {
        Ok(rows) => {
            for row in rows {
                restore_publication(inner, row);
            }
        }
        Err(e) => warn!(error = %e, "cannot read the publications"),
    }
    match inner.db.downloads() {
        Ok(rows) => {
            for row in rows {
                restore_download(inner, row).await;
            }
        }
        Err(e) => warn!(error = %e, "cannot read the downloads"),
    }
}

fn restore_publication(inner: &PeerInner, row: crate::repo::PublicationRow) {
    let withdraw = |why: &str| {
        warn!(name = %row.name, path = %row.path.display(), reason = why, "publication withdrawn");
        if let Err(e) = inner.db.remove_publication(&row.name) {
            warn!(error = %e, "cannot forget a withdrawn publication");
        }
    };
    match Stamp::of(&row.path) {
        Ok(now) if now == row.stamp => {}
        Ok(_) => return withdraw("the file changed on disk since it was published"),
        Err(_) => return withdraw("the file is gone"),
    }
    let manifest = match inner.db.manifest(&row.content_id) {
        Ok(Some(m)) => Arc::new(m),
        _ => return withdraw("its manifest is missing from the repository"),
    };
    let Ok(file) = std::fs::File::open(&row.path) else {
        return withdraw("the file cannot be opened");
    };
    let chunks = manifest.chunk_count();
    let holding = Holding::new(
        manifest.clone(),
        file,
        row.path.clone(),
        Bitfield::full(chunks),
        HoldingKind::Published {
            name: row.name.clone(),
        },
        Some(row.stamp),
    );
    inner.store.insert_complete(row.content_id, holding);
    inner
        .publications
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Publication {
            name: row.name,
            path: row.path,
            content_id: row.content_id,
            size: manifest.size,
            chunks,
        });
}

async fn restore_download(inner: &Arc<PeerInner>, row: DownloadRow) {
    let manifest = match inner.db.manifest(&row.content_id) {
        Ok(Some(m)) => Arc::new(m),
        _ => {
            warn!(id = row.id, name = %row.name, "forgetting a download whose manifest is missing");
            let _ = inner.db.remove_download(row.id);
            return;
        }
    };
    match row.state {
        RowState::Done => {
            let full = Bitfield::full(manifest.chunk_count());
            if let Ok(file) = std::fs::File::open(&row.dest) {
                match Stamp::of_file(&file) {
                    Ok(stamp) if stamp.size == manifest.size => {
                        let holding = Holding::new(
                            manifest.clone(),
                            file,
                            row.dest.clone(),
                            full.clone(),
                            HoldingKind::Download {
                                name: row.name.clone(),
                            },
                            Some(stamp),
                        );
                        inner.store.insert_complete(row.content_id, holding);
                    }
                    _ => {
                        info!(path = %row.dest.display(), "a fetched file changed on disk; not serving it")
                    }
                }
            }
            inner.put_download(download::finished(
                &row,
                &manifest,
                DownloadState::Done,
                full,
            ));
        }
        RowState::Running => {
            if let Err(e) = resume_row(inner, row.clone(), Vec::new()).await {
                warn!(id = row.id, error = %e, "cannot resume a download");
                let have = row.have.clone();
                let state = DownloadState::Failed(e.to_string());
                let _ = inner.db.set_download_state(
                    row.id,
                    RowState::Failed,
                    Some(&e.to_string()),
                    &have,
                );
                inner.put_download(download::finished(&row, &manifest, state, have));
            }
        }
        RowState::Failed | RowState::Cancelled => {
            let have = match holding_for(inner, &row, &manifest).await {
                Ok(h) => h.have(),
                Err(_) => Bitfield::new(manifest.chunk_count()),
            };
            let state = if row.state == RowState::Failed {
                DownloadState::Failed(row.error.clone().unwrap_or_default())
            } else {
                DownloadState::Cancelled
            };
            inner.put_download(download::finished(&row, &manifest, state, have));
        }
    }
}

/// Which of the chunks `claimed` the file at `path` really holds (blocking).
fn verify_part(path: &Path, manifest: &Manifest, claimed: &Bitfield) -> Bitfield {
    let mut have = Bitfield::new(manifest.chunk_count());
    let Ok(file) = std::fs::File::open(path) else {
        return have;
    };
    if claimed.len() != manifest.chunk_count() {
        return have;
    }
    let mut buf = Vec::new();
    for i in claimed.ones() {
        let Some((offset, len)) = manifest.chunk_range(i) else {
            continue;
        };
        buf.resize(len as usize, 0);
        if file.read_exact_at(&mut buf, offset).is_ok()
            && manifest.chunk_hash(i) == Some(&p2pfs_proto::types::hash_chunk(&buf))
        {
            have.set(i);
        }
    }
    have
}

/// The holding an unfinished download writes into: the one in the store
/// (after a cancel in this session), or its part file re-verified.
async fn holding_for(
    inner: &PeerInner,
    row: &DownloadRow,
    manifest: &Arc<Manifest>,
) -> Result<Arc<Holding>, PeerError> {
    if let Some(h) = inner.store.get(&row.content_id) {
        if matches!(h.kind, HoldingKind::Download { .. }) && h.path() == row.part {
            return Ok(h);
        }
    }
    let (part, m, claimed) = (row.part.clone(), manifest.clone(), row.have.clone());
    let have = tokio::task::spawn_blocking(move || verify_part(&part, &m, &claimed))
        .await
        .unwrap_or_default();
    if have.count_ones() < row.have.count_ones() {
        warn!(
            path = %row.part.display(),
            claimed = row.have.count_ones(),
            verified = have.count_ones(),
            "some recorded chunks did not verify; they will be fetched again"
        );
    }
    let holding = open_part(&row.part, manifest.clone(), &row.name, Some(have))?;
    Ok(inner.store.insert(row.content_id, holding))
}

/// Starts (again) the download of `row` with its verified chunks.
pub(crate) async fn resume_row(
    inner: &Arc<PeerInner>,
    row: DownloadRow,
    holders: Vec<Holder>,
) -> Result<Arc<DownloadHandle>, PeerError> {
    let manifest = inner
        .db
        .manifest(&row.content_id)?
        .map(Arc::new)
        .ok_or_else(|| PeerError::CannotResume("its manifest is missing".into()))?;
    let holding = holding_for(inner, &row, &manifest).await?;
    // Best effort: without the space, the download runs on a sparse file
    // and stops with "the disk is full" if it fills, keeping its chunks.
    if let Err(e) = crate::handle::allocate_part(&holding).await {
        warn!(path = %row.part.display(), error = %crate::handle::describe_io(&e), "cannot allocate the rest of a resumed download's part file");
    }
    let have = holding.have();
    inner
        .db
        .set_download_state(row.id, RowState::Running, None, &have)?;
    let publisher: SocketAddr = row
        .publisher
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let spec = DownloadSpec {
        id: row.id,
        name: row.name.clone(),
        publisher,
        content_id: row.content_id,
        manifest,
        dest: row.dest.clone(),
        part: row.part.clone(),
        holding,
        holders,
        only: row.only_from.as_deref().and_then(|a| a.parse().ok()),
    };
    let handle = download::spawn(inner.clone(), spec);
    inner.put_download(handle.clone());
    Ok(handle)
}
