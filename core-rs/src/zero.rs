//! Zero-chunk detection, batched.

/// True when every byte of `data` is zero.
///
/// Reads eight bytes at a time and ORs them together, which the compiler
/// vectorises (simd128 on wasm, SSE/AVX natively); bails out at the first
/// non-zero 64-byte block, so typical non-zero pages cost a few loads.
pub fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(64);
    for block in &mut blocks {
        let mut acc = 0u64;
        for w in block.chunks_exact(8) {
            acc |= u64::from_ne_bytes(w.try_into().unwrap());
        }
        if acc != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

/// Appends one byte per `chunk_size` piece of `data` to `out`: 1 if the piece
/// is all zero, else 0. The last piece may be short.
pub fn zero_chunks(data: &[u8], chunk_size: usize, out: &mut Vec<u8>) {
    assert!(chunk_size > 0, "chunk_size must be non-zero");
    out.extend(data.chunks(chunk_size).map(|c| is_zero(c) as u8));
}
