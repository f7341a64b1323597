//! Per-chunk hashing, batched.

use sha2::Digest;

/// Length of a BLAKE3-256 or SHA-256 digest in bytes.
pub const DIGEST_LEN: usize = 32;

/// Which hash function a batched call uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// BLAKE3 with a 256-bit output: the default for chunk identity.
    Blake3,
    /// SHA-256, for interoperability where a standard digest is required.
    Sha256,
}

/// Hashes `data` in consecutive `chunk_size` pieces (the last may be short)
/// and appends one 32-byte digest per piece to `out`.
///
/// An empty `data` yields no digests. `chunk_size` must be non-zero.
pub fn hash_chunks(alg: Algorithm, data: &[u8], chunk_size: usize, out: &mut Vec<u8>) {
    assert!(chunk_size > 0, "chunk_size must be non-zero");
    out.reserve(data.len().div_ceil(chunk_size) * DIGEST_LEN);
    for piece in data.chunks(chunk_size) {
        match alg {
            Algorithm::Blake3 => out.extend_from_slice(blake3::hash(piece).as_bytes()),
            Algorithm::Sha256 => out.extend_from_slice(&sha2::Sha256::digest(piece)),
        }
    }
}

/// Hashes all of `data` at once.
pub fn hash(alg: Algorithm, data: &[u8]) -> [u8; DIGEST_LEN] {
    let mut h = Hasher::new(alg);
    h.update(data);
    h.finalize()
}

/// An incremental hasher, for inputs that arrive in slices.
#[derive(Clone)]
pub enum Hasher {
    /// BLAKE3 state.
    Blake3(Box<blake3::Hasher>),
    /// SHA-256 state.
    Sha256(sha2::Sha256),
}

impl Hasher {
    /// A fresh hasher for `alg`.
    pub fn new(alg: Algorithm) -> Self {
        match alg {
            Algorithm::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// Feeds more input.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Blake3(h) => {
                h.update(data);
            }
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far; the hasher can keep going.
    pub fn finalize(&self) -> [u8; DIGEST_LEN] {
        match self {
            Hasher::Blake3(h) => *h.finalize().as_bytes(),
            Hasher::Sha256(h) => h.clone().finalize().into(),
        }
    }
}
