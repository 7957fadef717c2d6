//! Building a manifest: chunking and hashing a file on all cores.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use p2pfs_proto::types::{chunk_count, chunk_size_for, hash_chunk};
use p2pfs_proto::Manifest;
use rayon::prelude::*;

/// Chunks and hashes `path` (blocking; run it on a blocking thread).
/// Chunks are hashed in parallel, each thread reading its own chunks with
/// positional reads, so memory stays at one chunk buffer per thread.
///
/// # Errors
/// IO errors; `InvalidData` if the file shrinks while being read.
pub fn build_manifest(path: &Path) -> std::io::Result<Manifest> {
    manifest_of(&File::open(path)?)
}

/// [`build_manifest`] of an open file.
///
/// # Errors
/// As [`build_manifest`].
pub fn manifest_of(file: &File) -> std::io::Result<Manifest> {
    let size = file.metadata()?.len();
    let chunk_size = chunk_size_for(size);
    let n = chunk_count(size, chunk_size);
    let hashes = (0..n)
        .into_par_iter()
        .map_init(
            || vec![0u8; chunk_size as usize],
            |buf, i| {
                let offset = i * u64::from(chunk_size);
                let len = (size - offset).min(u64::from(chunk_size)) as usize;
                file.read_exact_at(&mut buf[..len], offset)?;
                Ok(hash_chunk(&buf[..len]))
            },
        )
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(Manifest {
        size,
        chunk_size,
        hashes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn manifest_of_a_small_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let m = build_manifest(f.path()).unwrap();
        m.validate().unwrap();
        assert_eq!(m.size, 600_000);
        // 64 KiB chunks: 9 whole and one of 10,176 bytes.
        assert_eq!(m.chunk_size, p2pfs_proto::limits::MIN_CHUNK_SIZE);
        assert_eq!(m.hashes.len(), 10);
        let (off, len) = m.chunk_range(9).unwrap();
        assert_eq!(len, 600_000 - 9 * 65_536);
        assert_eq!(
            m.hashes[9],
            hash_chunk(&data[off as usize..off as usize + len as usize])
        );
    }

    #[test]
    fn manifest_of_an_empty_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let m = build_manifest(f.path()).unwrap();
        assert_eq!(m.size, 0);
        assert!(m.hashes.is_empty());
        m.validate().unwrap();
    }
}
