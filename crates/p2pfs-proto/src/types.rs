//! Identities and content descriptions shared by every role: peer ids,
//! content ids, manifests and chunk bitfields.

use std::fmt;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::limits::{
    BULK_CHUNK_SIZE, MAX_CHUNKS, MAX_CHUNK_SIZE, MAX_FILE_SIZE, MIN_CHUNK_SIZE, TARGET_CHUNKS,
};
use crate::ProtoError;

fn hex(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

/// Stable random identity of a peer, kept in its repository.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId(pub [u8; 16]);

impl PeerId {
    /// A fresh random peer id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Short form for tables: the first 8 hex digits.
    pub fn short(&self) -> String {
        self.to_string()[..8].to_string()
    }

    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        parse_hex::<16>(s).map(Self)
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

/// BLAKE3 hash of one chunk.
pub type ChunkHash = [u8; 32];

/// Identity of a file's content: BLAKE3 over its manifest. Two peers that
/// publish identical bytes serve one swarm.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContentId(pub [u8; 32]);

impl ContentId {
    /// Short form for tables: the first 12 hex digits.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_string()
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        parse_hex::<32>(s).map(Self)
    }
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl fmt::Display for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        hex(&self.0, f)
    }
}

impl fmt::Debug for ContentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentId({self})")
    }
}

/// What a publisher computes once per file: its size, chunk size and the
/// BLAKE3 hash of every chunk. Downloaders check every chunk against it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes; every chunk but the last has exactly this size.
    pub chunk_size: u32,
    /// One hash per chunk, in order.
    pub hashes: Vec<ChunkHash>,
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("size", &self.size)
            .field("chunk_size", &self.chunk_size)
            .field("chunks", &self.hashes.len())
            .finish()
    }
}

/// Chunk size for a file of `size` bytes: the smallest power of two at least
/// [`MIN_CHUNK_SIZE`] that splits the file into at most [`TARGET_CHUNKS`]
/// chunks, but no larger than [`BULK_CHUNK_SIZE`] until the count would pass
/// [`MAX_CHUNKS`].
pub fn chunk_size_for(size: u64) -> u32 {
    let mut chunk = MIN_CHUNK_SIZE;
    while chunk < BULK_CHUNK_SIZE && size.div_ceil(u64::from(chunk)) > u64::from(TARGET_CHUNKS) {
        chunk *= 2;
    }
    while chunk < MAX_CHUNK_SIZE && size.div_ceil(u64::from(chunk)) > u64::from(MAX_CHUNKS) {
        chunk *= 2;
    }
    chunk
}

/// Number of chunks of a file of `size` bytes split into `chunk_size` pieces.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    if chunk_size == 0 {
        return 0;
    }
    size.div_ceil(u64::from(chunk_size))
}

impl Manifest {
    /// Checks sizes and counts against the protocol limits.
    ///
    /// # Errors
    /// [`ProtoError::InvalidManifest`] naming the first broken rule.
    pub fn validate(&self) -> Result<(), ProtoError> {
        let bad = |why: &str| Err(ProtoError::InvalidManifest(why.to_string()));
        if self.size > MAX_FILE_SIZE {
            return bad("file larger than the protocol limit");
        }
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return bad("chunk size out of range");
        }
        if chunk_count(self.size, self.chunk_size) != self.hashes.len() as u64 {
            return bad("hash count does not match size and chunk size");
        }
        if self.hashes.len() > MAX_CHUNKS as usize {
            return bad("too many chunks");
        }
        Ok(())
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        // validate() bounds this by MAX_CHUNKS.
        u32::try_from(self.hashes.len()).unwrap_or(u32::MAX)
    }

    /// Byte offset and length of chunk `index`, or `None` when out of range.
    pub fn chunk_range(&self, index: u32) -> Option<(u64, u32)> {
        if index >= self.chunk_count() {
            return None;
        }
        let offset = u64::from(index) * u64::from(self.chunk_size);
        let len = (self.size - offset).min(u64::from(self.chunk_size));
        Some((offset, len as u32))
    }

    /// The expected hash of chunk `index`.
    pub fn chunk_hash(&self, index: u32) -> Option<&ChunkHash> {
        self.hashes.get(index as usize)
    }

    /// The content id: BLAKE3 over a domain tag, size, chunk size and hashes.
    pub fn content_id(&self) -> ContentId {
        let mut h = blake3::Hasher::new();
        h.update(b"p2pfs-manifest-v1");
        h.update(&self.size.to_be_bytes());
        h.update(&self.chunk_size.to_be_bytes());
        for hash in &self.hashes {
            h.update(hash);
        }
        ContentId(*h.finalize().as_bytes())
    }
}

/// Hash of one chunk's bytes, as stored in a manifest.
pub fn hash_chunk(data: &[u8]) -> ChunkHash {
    *blake3::hash(data).as_bytes()
}

/// A set of chunk indexes as a bitfield (bit `i` of byte `i / 8`, most
/// significant bit first, as in BitTorrent).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Bitfield {
    len: u32,
    #[serde(with = "bits_serde")]
    bits: Bits,
}

/// A bitfield's bytes: up to 128 chunks in place, in the 24 bytes a `Vec`
/// takes. The tracker reads the bitfield of every holder it lists in a
/// location reply; behind a pointer, each was a cache miss (BENCHMARKS.md,
/// benchmark 6).
type Bits = SmallVec<[u8; 16]>;

/// The bytes as one byte string: for postcard the same encoding as a
/// sequence of `u8` (a varint length, then the bytes), written and read in
/// one piece instead of byte by byte.
mod bits_serde {
    use std::fmt;

    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    use super::Bits;

    pub(super) fn serialize<S: Serializer>(bits: &Bits, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bits)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bits, D::Error> {
        d.deserialize_bytes(BitsVisitor)
    }

    struct BitsVisitor;

    impl<'de> Visitor<'de> for BitsVisitor {
        type Value = Bits;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("the bytes of a bitfield")
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bits, E> {
            Ok(Bits::from_slice(v))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bits, A::Error> {
            // A claimed length reserves at most 4 KiB before bytes arrive.
            let mut bits = Bits::new();
            bits.reserve(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                bits.push(b);
            }
            Ok(bits)
        }
    }
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.count_ones(), self.len)
    }
}

impl Bitfield {
    /// An empty bitfield of `len` chunks.
    pub fn new(len: u32) -> Self {
        Self {
            len,
            bits: smallvec::smallvec![0; (len as usize).div_ceil(8)],
        }
    }

    /// A full bitfield of `len` chunks.
    pub fn full(len: u32) -> Self {
        let mut b = Self::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Number of chunks described.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// The bits as stored: bit `i` in byte `i / 8`, most significant first.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// True when it describes zero chunks.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Checks the byte length against the chunk count and that padding bits are clear.
    ///
    /// # Errors
    /// [`ProtoError::InvalidBitfield`].
    pub fn validate(&self) -> Result<(), ProtoError> {
        if self.len > MAX_CHUNKS || self.bits.len() != (self.len as usize).div_ceil(8) {
            return Err(ProtoError::InvalidBitfield);
        }
        let tail = self.len % 8;
        if tail != 0 {
            let last = self.bits.last().copied().unwrap_or(0);
            if last & (0xff >> tail) != 0 {
                return Err(ProtoError::InvalidBitfield);
            }
        }
        Ok(())
    }

    /// Whether chunk `i` is set; out-of-range indexes are not.
    pub fn get(&self, i: u32) -> bool {
        i < self.len && self.bits[(i / 8) as usize] & (0x80 >> (i % 8)) != 0
    }

    /// Sets chunk `i`; returns false (and does nothing) when out of range.
    pub fn set(&mut self, i: u32) -> bool {
        if i >= self.len {
            return false;
        }
        self.bits[(i / 8) as usize] |= 0x80 >> (i % 8);
        true
    }

    /// Number of set chunks.
    pub fn count_ones(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    /// True when every chunk is set.
    pub fn is_full(&self) -> bool {
        self.count_ones() == self.len
    }

    /// Iterates over the set indexes, skipping empty bytes.
    pub fn ones(&self) -> impl Iterator<Item = u32> + '_ {
        Self::set_bits(self.bits.iter().copied(), self.len)
    }

    /// Iterates over the indexes set here and not in `other` (all set
    /// indexes when the lengths differ).
    pub fn ones_not_in<'a>(&'a self, other: &'a Bitfield) -> impl Iterator<Item = u32> + 'a {
        let same = other.len == self.len;
        Self::set_bits(
            self.bits.iter().enumerate().map(move |(k, &b)| {
                if same {
                    b & !other.bits.get(k).copied().unwrap_or(0)
                } else {
                    b
                }
            }),
            self.len,
        )
    }

    /// The positions below `len` of the set bits of a byte sequence, most
    /// significant bit first.
    fn set_bits(bytes: impl Iterator<Item = u8>, len: u32) -> impl Iterator<Item = u32> {
        bytes
            .enumerate()
            .flat_map(|(k, mut b)| {
                std::iter::from_fn(move || {
                    if b == 0 {
                        return None;
                    }
                    let bit = b.leading_zeros();
                    b &= !(0x80 >> bit);
                    Some(k as u32 * 8 + bit)
                })
            })
            .take_while(move |&i| i < len)
    }

    /// Merges another bitfield of the same length into this one.
    pub fn union_with(&mut self, other: &Bitfield) {
        if other.len == self.len {
            for (a, b) in self.bits.iter_mut().zip(&other.bits) {
                *a |= *b;
            }
        }
    }

    /// Set indexes as compact ranges, e.g. `0-99,120,200-255`.
    pub fn ranges(&self) -> String {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.len {
            if self.get(i) {
                let start = i;
                while i + 1 < self.len && self.get(i + 1) {
                    i += 1;
                }
                out.push(if start == i {
                    format!("{start}")
                } else {
                    format!("{start}-{i}")
                });
            }
            i += 1;
        }
        if out.is_empty() {
            "-".to_string()
        } else {
            out.join(",")
        }
    }

    /// A bar of `width` cells: `#` fully held, `+` partly, `.` none.
    pub fn bar(&self, width: usize) -> String {
        if self.len == 0 {
            return String::new();
        }
        let width = width.min(self.len as usize).max(1);
        (0..width)
            .map(|cell| {
                let lo = (cell as u64 * u64::from(self.len) / width as u64) as u32;
                let hi = (((cell as u64 + 1) * u64::from(self.len)) / width as u64) as u32;
                let hi = hi.max(lo + 1);
                let have = (lo..hi).filter(|&i| self.get(i)).count() as u32;
                if have == hi - lo {
                    '#'
                } else if have > 0 {
                    '+'
                } else {
                    '.'
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_grows_to_bound_chunk_count() {
        const MIB: u64 = 1 << 20;
        assert_eq!(chunk_size_for(0), MIN_CHUNK_SIZE);
        assert_eq!(chunk_size_for(64 * MIB), MIN_CHUNK_SIZE);
        assert_eq!(chunk_size_for(256 * MIB), MIN_CHUNK_SIZE);
        assert_eq!(chunk_size_for(256 * MIB + 1), 2 * MIN_CHUNK_SIZE);
        assert_eq!(chunk_size_for(1024 * MIB), BULK_CHUNK_SIZE);
        assert_eq!(chunk_size_for(16 * 1024 * MIB), BULK_CHUNK_SIZE);
        assert_eq!(chunk_size_for(16 * 1024 * MIB + 1), 2 * BULK_CHUNK_SIZE);
        for size in [1, 5 * MIB, 300 * MIB, 5 * 1024 * MIB] {
            let c = chunk_size_for(size);
            assert!(c == MIN_CHUNK_SIZE || chunk_count(size, c / 2) > u64::from(TARGET_CHUNKS));
            assert!(chunk_count(size, c) <= u64::from(TARGET_CHUNKS) || c == BULK_CHUNK_SIZE);
        }
        let huge = 100 * (1u64 << 30);
        let c = chunk_size_for(huge);
        assert!(chunk_count(huge, c) <= u64::from(MAX_CHUNKS));
        assert!(chunk_count(huge, c / 2) > u64::from(MAX_CHUNKS));
    }

    #[test]
    fn chunk_ranges_cover_the_file() {
        let m = Manifest {
            size: 600_000,
            chunk_size: BULK_CHUNK_SIZE,
            hashes: vec![[0; 32]; 3],
        };
        m.validate().unwrap();
        assert_eq!(m.chunk_range(0), Some((0, BULK_CHUNK_SIZE)));
        assert_eq!(m.chunk_range(2), Some((2 * 262_144, 600_000 - 2 * 262_144)));
        assert_eq!(m.chunk_range(3), None);
    }

    #[test]
    fn manifest_validation_rejects_bad_counts() {
        let m = Manifest {
            size: 600_000,
            chunk_size: BULK_CHUNK_SIZE,
            hashes: vec![[0; 32]; 2],
        };
        assert!(m.validate().is_err());
        let m = Manifest {
            size: 0,
            chunk_size: 7,
            hashes: vec![],
        };
        assert!(m.validate().is_err());
        // Version 4: 64 KiB chunks are valid, smaller ones are not.
        let m = Manifest {
            size: 65_536 + 1,
            chunk_size: 65_536,
            hashes: vec![[0; 32]; 2],
        };
        m.validate().unwrap();
        let m = Manifest {
            size: 32_768,
            chunk_size: 32_768,
            hashes: vec![[0; 32]; 1],
        };
        assert!(m.validate().is_err());
    }

    #[test]
    fn bitfield_basics() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0) && b.set(1) && b.set(2) && b.set(7) && b.set(9));
        assert!(!b.set(10));
        assert_eq!(b.count_ones(), 5);
        assert_eq!(b.ranges(), "0-2,7,9");
        assert_eq!(b.bar(10), "###....#.#");
        b.validate().unwrap();
        assert!(Bitfield::full(9).is_full());
        let bad = Bitfield {
            len: 9,
            bits: smallvec::smallvec![0, 0x01],
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn set_indexes_match_bit_by_bit() {
        let mut a = Bitfield::new(37);
        let mut b = Bitfield::new(37);
        for i in (0..37).filter(|i| i % 3 == 0 || i % 7 == 1) {
            a.set(i);
        }
        for i in (0..37).filter(|i| i % 2 == 0) {
            b.set(i);
        }
        let naive: Vec<u32> = (0..37).filter(|&i| a.get(i)).collect();
        assert_eq!(a.ones().collect::<Vec<_>>(), naive);
        let naive: Vec<u32> = (0..37).filter(|&i| a.get(i) && !b.get(i)).collect();
        assert_eq!(a.ones_not_in(&b).collect::<Vec<_>>(), naive);
        assert_eq!(a.ones_not_in(&Bitfield::new(5)).count(), a.ones().count());
        assert_eq!(Bitfield::full(37).ones().count(), 37);
        assert_eq!(Bitfield::new(0).ones().count(), 0);
        // Bits past the length (not valid on the wire) are not reported.
        let padded = Bitfield {
            len: 9,
            bits: smallvec::smallvec![0, 0xff],
        };
        assert_eq!(padded.ones().collect::<Vec<_>>(), vec![8]);
    }

    /// Bitfields stored by earlier versions (a peer's repository keeps them
    /// postcard-encoded) read back, and new ones encode the same way, in
    /// place or spilled to the heap.
    #[test]
    fn bitfield_encoding_matches_the_vec_encoding() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Before {
            len: u32,
            bits: Vec<u8>,
        }
        for len in [0u32, 1, 7, 9, 128, 129, 1000] {
            let mut b = Bitfield::new(len);
            for i in (0..len).filter(|i| i % 3 != 1) {
                b.set(i);
            }
            let before = Before {
                len,
                bits: b.as_bytes().to_vec(),
            };
            let old = postcard::to_allocvec(&before).unwrap();
            assert_eq!(postcard::to_allocvec(&b).unwrap(), old, "{len} chunks");
            assert_eq!(postcard::from_bytes::<Bitfield>(&old).unwrap(), b);
        }
        assert!(std::mem::size_of::<Bitfield>() <= 32);
        // Formats that give the bytes as a sequence (JSON does) read too.
        let seq = serde::de::value::SeqDeserializer::<_, serde::de::value::Error>::new(
            [0x80u8, 0x01].into_iter(),
        );
        assert_eq!(&bits_serde::deserialize(seq).unwrap()[..], &[0x80, 0x01]);
    }

    #[test]
    fn hex_round_trip() {
        let p = PeerId::random();
        assert_eq!(PeerId::from_hex(&p.to_string()), Some(p));
        assert_eq!(PeerId::from_hex("zz"), None);
    }
}
