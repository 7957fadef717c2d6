//! Large transfer buffers shared by every connection of a process.
//!
//! A connection needs a large buffer only while bulk data flows through it.
//! Kept per connection, those buffers grow a peer's memory with its
//! connection count: with about 100 connections, a peer in a crowd of
//! downloaders touched about 50 MiB, most of it idle, and the first touch
//! of each page (a fault and a page clear) cost about a sixth of the
//! crowd's CPU time. So a connection takes a buffer from a pool when bulk
//! data starts and gives it back as soon as it holds nothing; the next
//! connection to need one gets memory that is already mapped, and most
//! likely still in the CPU cache.

use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};

/// Idle chunk buffers kept for the whole process: enough for a download's
/// chunks being verified and written (4 + 8 of 256 KiB) and a seeder's
/// chunks read ahead, with some to spare.
const CHUNK_POOL_KEEP: usize = 32;
/// Largest buffer kept idle, so that the pool holds at most 8 MiB. Only
/// files over 16 GiB have larger chunks; theirs are freed.
const CHUNK_POOL_MAX: usize = crate::limits::BULK_CHUNK_SIZE as usize;
/// Room of every new chunk buffer, and the least a kept one has: a buffer
/// taken for a short chunk (a file's last) is kept for the next full one
/// rather than freed when it comes back too small.
const CHUNK_POOL_MIN: usize = crate::limits::MIN_CHUNK_SIZE as usize;
static CHUNK_POOL: Pool<Vec<u8>> = Pool::new(CHUNK_POOL_KEEP);

/// A chunk's bytes in a buffer from a process-wide pool, to which it goes
/// back when dropped.
///
/// A new buffer per chunk is not free with glibc's allocator: it trims
/// freed chunk buffers back to the system when they are freed on another
/// thread than the one that took them, and the first touch of each page of
/// the next buffer faults. A downloader of 1 GiB took 30,000–125,000 page
/// faults, about a fifth of its system time; a seeder reading on its reader
/// threads 10,000–40,000. Pooled, a transfer reuses a few buffers that are
/// mapped already.
pub struct ChunkBuf {
    buf: Vec<u8>,
    pool: &'static Pool<Vec<u8>>,
}

impl ChunkBuf {
    /// A buffer of exactly `len` bytes. A reused buffer holds old bytes
    /// (zeroed only past what it held before), to be overwritten.
    pub fn take(len: usize) -> Self {
        Self::take_from(&CHUNK_POOL, len)
    }

    pub(crate) fn take_from(pool: &'static Pool<Vec<u8>>, len: usize) -> Self {
        Self {
            buf: pool.take_len(len, CHUNK_POOL_MIN),
            pool,
        }
    }

    /// The bytes as [`Bytes`], without a copy; the buffer goes back to the
    /// pool when the last clone of them is dropped.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl Deref for ChunkBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf
    }
}

impl DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }
}

impl AsRef<[u8]> for ChunkBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl std::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkBuf({} bytes)", self.buf.len())
    }
}

impl PartialEq for ChunkBuf {
    fn eq(&self, other: &Self) -> bool {
        self.buf == other.buf
    }
}

impl Drop for ChunkBuf {
    fn drop(&mut self) {
        if (CHUNK_POOL_MIN..=CHUNK_POOL_MAX).contains(&self.buf.capacity()) {
            self.pool.give_vec(std::mem::take(&mut self.buf));
        }
    }
}

/// A pool of buffers of one size. At most `keep` idle buffers are kept;
/// more are freed.
pub(crate) struct Pool<T> {
    idle: Mutex<Vec<T>>,
    keep: usize,
}

impl<T> Pool<T> {
    pub(crate) const fn new(keep: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            keep,
        }
    }

    fn pop(&self) -> Option<T> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn push(&self, buf: T) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.keep {
            idle.push(buf);
        }
    }

    /// Idle buffers held now.
    #[cfg(test)]
    pub(crate) fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Pool<Vec<u8>> {
    /// A buffer of exactly `len` initialised bytes (zeroed only when it is
    /// new; otherwise it holds old data to be overwritten).
    pub(crate) fn take_vec(&self, len: usize) -> Vec<u8> {
        match self.pop() {
            Some(v) if v.len() == len => v,
            _ => vec![0; len],
        }
    }

    /// A buffer of exactly `len` bytes from an idle one with room enough,
    /// whatever its length (buffers of chunks of different sizes, such as
    /// a file's shorter last chunk, share one pool). Bytes past what an
    /// idle buffer held before are zeroed; the rest hold old data.
    ///
    /// A new buffer has room for at least `min_room` bytes.
    pub(crate) fn take_len(&self, len: usize, min_room: usize) -> Vec<u8> {
        match self.pop() {
            Some(mut v) if v.capacity() >= len => {
                v.resize(len, 0);
                v
            }
            _ => {
                let mut v = Vec::with_capacity(len.max(min_room));
                v.resize(len, 0);
                v
            }
        }
    }

    /// Returns a buffer taken with [`take_vec`](Self::take_vec) or
    /// [`take_len`](Self::take_len).
    pub(crate) fn give_vec(&self, v: Vec<u8>) {
        self.push(v);
    }
}

impl Pool<BytesMut> {
    /// An empty buffer with room for at least `cap` bytes.
    pub(crate) fn take_bytes(&self, cap: usize) -> BytesMut {
        match self.pop() {
            Some(mut b) => {
                b.clear();
                b.reserve(cap);
                b
            }
            None => BytesMut::with_capacity(cap),
        }
    }

    /// Returns an empty buffer taken with [`take_bytes`](Self::take_bytes).
    /// Its storage must not be shared (never `split` it): a later
    /// [`take_bytes`](Self::take_bytes) reclaims all of it.
    pub(crate) fn give_bytes(&self, b: BytesMut) {
        if b.is_empty() {
            self.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;

    #[test]
    fn vec_buffers_are_reused_up_to_the_limit() {
        let pool: Pool<Vec<u8>> = Pool::new(2);
        let a = pool.take_vec(1000);
        assert_eq!(a.len(), 1000);
        let ptr = a.as_ptr();
        pool.give_vec(a);
        let b = pool.take_vec(1000);
        assert_eq!(b.as_ptr(), ptr, "the idle buffer is handed out again");
        let c = pool.take_vec(1000);
        let d = pool.take_vec(1000);
        pool.give_vec(b);
        pool.give_vec(c);
        pool.give_vec(d);
        assert_eq!(pool.idle(), 2, "no more than `keep` idle buffers");
        // A buffer of another size is not handed out for this one.
        let pool: Pool<Vec<u8>> = Pool::new(2);
        pool.give_vec(vec![1; 10]);
        assert_eq!(pool.take_vec(20), vec![0; 20]);
    }

    #[test]
    fn chunk_buffers_are_kept_up_to_the_bulk_chunk_size() {
        static POOL: Pool<Vec<u8>> = Pool::new(4);
        drop(ChunkBuf::take_from(&POOL, CHUNK_POOL_MAX));
        assert_eq!(POOL.idle(), 1);
        let big = ChunkBuf::take_from(&POOL, CHUNK_POOL_MAX + 1);
        assert_eq!(POOL.idle(), 0, "the small one is dropped for a larger need");
        drop(big);
        assert_eq!(POOL.idle(), 0, "larger buffers are not kept");
        // A short chunk's buffer has room for a full one, and is kept.
        let mut small = ChunkBuf::take_from(&POOL, 10);
        small.copy_from_slice(b"0123456789");
        drop(small);
        assert_eq!(POOL.idle(), 1);
        let shorter = ChunkBuf::take_from(&POOL, 8);
        assert_eq!(&shorter[..], b"01234567", "reused as it is");
        drop(shorter);
        let again = ChunkBuf::take_from(&POOL, CHUNK_POOL_MIN);
        assert_eq!(&again[..10], b"01234567\0\0", "grown back with zeros");
        assert_eq!(POOL.idle(), 0);
    }

    #[test]
    fn bytes_buffers_come_back_empty_with_room() {
        let pool: Pool<BytesMut> = Pool::new(4);
        let mut a = pool.take_bytes(4096);
        let ptr = a.as_ptr();
        a.extend_from_slice(b"hello");
        // Not empty: not kept.
        pool.give_bytes(a.clone());
        assert_eq!(pool.idle(), 0);
        a.advance(5);
        pool.give_bytes(a);
        assert_eq!(pool.idle(), 1);
        let b = pool.take_bytes(4096);
        assert!(b.is_empty() && b.capacity() >= 4096);
        assert_eq!(b.as_ptr(), ptr, "the whole storage is reclaimed");
    }
}
