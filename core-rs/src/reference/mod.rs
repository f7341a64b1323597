//! Plain reference implementations: slow, short, and easy to check by eye.
//!
//! They are the oracle for the fast kernels. Native tests run both on the
//! shared vectors in `vectors/` and on random inputs, and demand equal output.

pub mod blake3;
pub mod sha256;

use std::collections::HashMap;

/// One byte per chunk: 1 when every byte is zero.
pub fn zero_chunks(data: &[u8], chunk_size: usize) -> Vec<u8> {
    data.chunks(chunk_size).map(|c| c.iter().all(|&b| b == 0) as u8).collect()
}

/// Byte-by-byte XOR.
pub fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// A hash-map index with the same first-insertion-wins rule as `BaseIndex`.
#[derive(Default)]
pub struct MapIndex {
    map: HashMap<u64, u64>,
}

impl MapIndex {
    /// Adds an entry unless the key is present.
    pub fn add(&mut self, key: u64, value: u64) {
        self.map.entry(key).or_insert(value);
    }

    /// The value for `key`, or `crate::index::MISS`.
    pub fn lookup(&self, key: u64) -> u64 {
        *self.map.get(&key).unwrap_or(&crate::index::MISS)
    }
}
