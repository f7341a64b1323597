//! Base index: find a chunk of the base VM by the digest of its content.
//!
//! ```text
//!   key   = first 8 bytes of the chunk's BLAKE3 digest, little-endian u64
//!   value = source << 56 | byte offset        (source: 0 = base disk, 1 = base memory)
//!
//!   keys:   [k0 <= k1 <= ... <= kN-1]  u64, sorted, unique      8 B/entry
//!   values: [v0,  v1,  ...,  vN-1]     u64, parallel to keys    8 B/entry
//!   dir:    [2^b + 1] u32, dir[i] = first entry whose top b bits >= i
//!           with 2^b ~ N/2 buckets                            ~2 B/entry
//! ```
//!
//! So an index costs about 18 bytes per entry: 4 million entries (16 GiB of
//! 4 KiB chunks) take ~72 MiB of WASM memory. Building it needs more at its
//! peak: the (key, value) entries (16 B), the stable sort's scratch, then the
//! keys and values beside the entries; measured in WASM, memory grows by
//! ~33 B per entry while building 4 Mi entries (test/core_delta_index.test.ts),
//! and WASM memory does not shrink afterwards. The keys are uniformly
//! distributed (they are hash bits), so each bucket holds ~2 entries and a
//! lookup is one directory read plus a short scan.
//!
//! A key is only 64 bits, so a hit is a *candidate*: callers confirm it against
//! the full digest of the base chunk before trusting it (the overlay writer
//! does, and synthesis verifies every rebuilt chunk anyway).
//!
//! When the same key is added twice, the first insertion wins. The overlay
//! writer adds base memory before base disk, which gives memory matches
//! priority as the classification order requires.

/// Source tag of a base-disk chunk.
pub const SOURCE_DISK: u8 = 0;
/// Source tag of a base-memory page.
pub const SOURCE_MEM: u8 = 1;
/// Value returned for a key that is not in the index.
pub const MISS: u64 = u64::MAX;
/// Largest offset a value can carry (56 bits, 64 PiB).
pub const MAX_OFFSET: u64 = (1 << 56) - 1;

const MAGIC: &[u8; 8] = b"CLIDX\x00\x00\x01";

/// Errors from loading a serialised index.
#[derive(Debug, PartialEq, Eq)]
pub enum IndexError {
    /// The bytes do not start with the index magic and version.
    BadMagic,
    /// The byte length does not match the entry count in the header.
    BadLength,
    /// Keys are not strictly ascending, so the data is corrupt.
    Unsorted,
    /// More entries than a u32 directory can address.
    TooLarge,
    /// A run's digest buffer, digest length and mask do not agree.
    BadRun,
    /// A run reaches an offset past what a value can carry (2^56 - 1).
    OffsetTooLarge,
    /// A run names a source other than the base disk or the base memory.
    BadSource,
}

impl std::fmt::Display for IndexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            IndexError::BadMagic => "not a cloudlet base index (bad magic or version)",
            IndexError::BadLength => "base index is truncated or has trailing bytes",
            IndexError::Unsorted => "base index is corrupt (keys out of order)",
            IndexError::TooLarge => "base index has more than 2^32-1 entries",
            IndexError::BadRun => "add_run: digest buffer and mask do not match",
            IndexError::OffsetTooLarge => "add_run: an offset exceeds 2^56 - 1",
            IndexError::BadSource => "add_run: source must be 0 (base disk) or 1 (base memory)",
        })
    }
}

/// The index key of a digest: its first 8 bytes, little-endian.
#[inline]
pub fn key_of(digest: &[u8]) -> u64 {
    u64::from_le_bytes(digest[..8].try_into().unwrap())
}

/// Packs a source tag and a byte offset into an index value.
#[inline]
pub fn pack(source: u8, offset: u64) -> u64 {
    assert!(offset <= MAX_OFFSET, "offset too large for the index");
    ((source as u64) << 56) | offset
}

/// Splits an index value into (source, offset).
#[inline]
pub fn unpack(value: u64) -> (u8, u64) {
    ((value >> 56) as u8, value & MAX_OFFSET)
}

/// Collects entries, then sorts them into a [`BaseIndex`].
#[derive(Default)]
pub struct IndexBuilder {
    entries: Vec<(u64, u64)>,
}

impl IndexBuilder {
    /// A builder with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Self {
        IndexBuilder { entries: Vec::with_capacity(capacity) }
    }

    /// Adds one entry.
    pub fn add(&mut self, key: u64, value: u64) {
        self.entries.push((key, value));
    }

    /// Adds a run of consecutive chunks: digest `i` (of `digest_len` bytes)
    /// describes the chunk at `first_offset + i * step` of `source`.
    /// A non-empty `mask` skips every chunk whose mask byte is 0.
    pub fn add_run(&mut self, digests: &[u8], digest_len: usize, mask: &[u8], source: u8, first_offset: u64, step: u64) {
        assert!(digest_len >= 8 && digests.len() % digest_len == 0, "add_run: bad digest buffer");
        let n = digests.len() / digest_len;
        assert!(mask.is_empty() || mask.len() == n, "add_run: mask length mismatch");
        self.entries.reserve(n);
        for (i, d) in digests.chunks_exact(digest_len).enumerate() {
            if mask.is_empty() || mask[i] != 0 {
                self.add(key_of(d), pack(source, first_offset + i as u64 * step));
            }
        }
    }

    /// [`IndexBuilder::add_run`] for untrusted arguments: checks the buffer,
    /// the mask, the source and that every offset fits, instead of panicking.
    /// (An unknown source is refused because source 0xff with offset
    /// 2^56 - 1 packs to [`MISS`]: that entry would read as a miss. Found
    /// by fuzzing; see tests/fuzz_regressions.rs.)
    pub fn try_add_run(&mut self, digests: &[u8], digest_len: usize, mask: &[u8], source: u8, first_offset: u64, step: u64) -> Result<(), IndexError> {
        if source != SOURCE_DISK && source != SOURCE_MEM {
            return Err(IndexError::BadSource);
        }
        if digest_len < 8 || digests.len() % digest_len != 0 {
            return Err(IndexError::BadRun);
        }
        let n = digests.len() / digest_len;
        if !mask.is_empty() && mask.len() != n {
            return Err(IndexError::BadRun);
        }
        let last = (n as u64).saturating_sub(1).checked_mul(step).and_then(|d| d.checked_add(first_offset));
        if !matches!(last, Some(o) if o <= MAX_OFFSET) {
            return Err(IndexError::OffsetTooLarge);
        }
        self.add_run(digests, digest_len, mask, source, first_offset, step);
        Ok(())
    }

    /// Number of entries added so far (before de-duplication).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sorts, drops repeated keys (first insertion wins) and builds the index.
    pub fn finish(mut self) -> BaseIndex {
        // Stable sort keeps insertion order among equal keys.
        self.entries.sort_by_key(|e| e.0);
        self.entries.dedup_by_key(|e| e.0);
        let keys: Vec<u64> = self.entries.iter().map(|e| e.0).collect();
        let values: Vec<u64> = self.entries.iter().map(|e| e.1).collect();
        drop(self.entries);
        BaseIndex::from_sorted(keys, values)
    }
}

/// A sorted, immutable digest index. See the module docs for the layout.
pub struct BaseIndex {
    keys: Vec<u64>,
    values: Vec<u64>,
    dir: Vec<u32>,
    bits: u32,
}

impl BaseIndex {
    fn from_sorted(keys: Vec<u64>, values: Vec<u64>) -> BaseIndex {
        let n = keys.len();
        // ~2 entries per bucket.
        let bits = if n < 4 { 0 } else { (usize::BITS - 1 - n.leading_zeros()) - 1 };
        let buckets = 1usize << bits;
        let mut dir = vec![0u32; buckets + 1];
        let mut j = 0usize;
        for (b, slot) in dir.iter_mut().enumerate().take(buckets) {
            while j < n && bucket_of(keys[j], bits) < b as u64 {
                j += 1;
            }
            *slot = j as u32;
        }
        dir[buckets] = n as u32;
        BaseIndex { keys, values, dir, bits }
    }

    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when the index holds no entries.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Bytes of memory the index occupies.
    pub fn memory_bytes(&self) -> usize {
        self.keys.len() * 16 + self.dir.len() * 4
    }

    /// The value stored for `key`, or [`MISS`].
    #[inline]
    pub fn lookup(&self, key: u64) -> u64 {
        let b = bucket_of(key, self.bits) as usize;
        let (lo, hi) = (self.dir[b] as usize, self.dir[b + 1] as usize);
        for i in lo..hi {
            let k = self.keys[i];
            if k == key {
                return self.values[i];
            }
            if k > key {
                break;
            }
        }
        MISS
    }

    /// Looks up the key of every `digest_len`-byte digest in `digests` and
    /// appends one value (or [`MISS`]) per digest to `out`.
    pub fn lookup_batch(&self, digests: &[u8], digest_len: usize, out: &mut Vec<u64>) {
        assert!(digest_len >= 8 && digests.len() % digest_len == 0, "lookup_batch: bad digest buffer");
        out.extend(digests.chunks_exact(digest_len).map(|d| self.lookup(key_of(d))));
    }

    /// Serialises the index: magic, entry count, keys, values (all LE).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.keys.len() * 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        for k in &self.keys {
            out.extend_from_slice(&k.to_le_bytes());
        }
        for v in &self.values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Loads an index written by [`BaseIndex::to_bytes`], checking it.
    pub fn from_bytes(bytes: &[u8]) -> Result<BaseIndex, IndexError> {
        if bytes.len() < 16 || &bytes[..8] != MAGIC {
            return Err(IndexError::BadMagic);
        }
        let n = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        if n >= u32::MAX as u64 {
            return Err(IndexError::TooLarge);
        }
        let n = n as usize;
        if (bytes.len() - 16) as u64 != n as u64 * 16 {
            return Err(IndexError::BadLength);
        }
        let body = &bytes[16..];
        let read = |i: usize| u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().unwrap());
        let keys: Vec<u64> = (0..n).map(read).collect();
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(IndexError::Unsorted);
        }
        let values: Vec<u64> = (n..2 * n).map(read).collect();
        Ok(BaseIndex::from_sorted(keys, values))
    }
}

#[inline]
fn bucket_of(key: u64, bits: u32) -> u64 {
    if bits == 0 {
        0
    } else {
        key >> (64 - bits)
    }
}
