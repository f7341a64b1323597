//! The deterministic input generator behind the shared test vectors.
//!
//! `vectors/kernels.json` describes inputs as (pattern, seed, length); Rust,
//! Node, Deno and the browser all regenerate the bytes with this generator
//! and must produce the digests recorded there. The TypeScript twin lives in
//! `ts/core/vectors.ts`; keep the two in step.

/// xorshift32 byte stream: every step yields 4 bytes, little-endian.
pub fn random_bytes(seed: u32, len: usize) -> Vec<u8> {
    let mut x = if seed == 0 { 0x9E37_79B9 } else { seed };
    let mut out = Vec::with_capacity(len + 3);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Input bytes for a vector.
///
/// * `random`: the xorshift32 stream;
/// * `zero`: all zero;
/// * `mixed`: the random stream, with every 4 KiB chunk whose index is a
///   multiple of 3 zeroed, and every 4 KiB chunk whose index is 4 mod 5
///   copied from chunk 1 (so zero chunks and repeats both occur).
pub fn input(pattern: &str, seed: u32, len: usize) -> Vec<u8> {
    match pattern {
        "random" => random_bytes(seed, len),
        "zero" => vec![0; len],
        "mixed" => {
            let mut v = random_bytes(seed, len);
            let n = len.div_ceil(4096);
            for i in 0..n {
                let (s, e) = (i * 4096, ((i + 1) * 4096).min(len));
                if i % 3 == 0 {
                    v[s..e].fill(0);
                } else if i % 5 == 4 && len >= 8192 {
                    let src: Vec<u8> = v[4096..4096 + (e - s)].to_vec();
                    v[s..e].copy_from_slice(&src);
                }
            }
            v
        }
        other => panic!("unknown vector pattern {other}"),
    }
}
