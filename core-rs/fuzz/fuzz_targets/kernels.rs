//! The fast kernels against the plain reference ones on any bytes and chunk
//! size: per-chunk BLAKE3 and SHA-256, streaming hashes, zero detection, XOR
//! and its gain. Input: chunk size (u16 LE, 1..=65536), split point, data.
#![no_main]
use cloudlet_core::chunk::{hash, hash_chunks, Algorithm, Hasher, DIGEST_LEN};
use cloudlet_core::delta::{xor, xor_gain};
use cloudlet_core::reference;
use cloudlet_core::zero::zero_chunks;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 3 {
        return;
    }
    let chunk = u16::from_le_bytes([input[0], input[1]]) as usize + 1;
    let data = &input[3..];
    let split = (input[2] as usize * data.len()) / 256;
    for (alg, oracle) in [(Algorithm::Blake3, reference::blake3::blake3 as fn(&[u8]) -> [u8; 32]), (Algorithm::Sha256, reference::sha256::sha256)] {
        let mut out = Vec::new();
        hash_chunks(alg, data, chunk, &mut out);
        let want: Vec<u8> = data.chunks(chunk).flat_map(oracle).collect();
        assert_eq!(out, want);
        assert_eq!(out.len(), data.len().div_ceil(chunk) * DIGEST_LEN);
        assert_eq!(hash(alg, data), oracle(data));
        let mut h = Hasher::new(alg);
        h.update(&data[..split]);
        h.update(&data[split..]);
        assert_eq!(h.finalize(), oracle(data));
    }
    let mut z = Vec::new();
    zero_chunks(data, chunk, &mut z);
    assert_eq!(z, reference::zero_chunks(data, chunk));
    let (a, b) = data.split_at(data.len() / 2);
    let b = &b[..a.len()];
    let mut x = vec![0u8; a.len()];
    xor(a, b, &mut x);
    assert_eq!(x, reference::xor(a, b));
    let zeros = |s: &[u8]| s.iter().filter(|&&v| v == 0).count() as i64;
    assert_eq!(xor_gain(a, b), zeros(&x) - zeros(a));
});
