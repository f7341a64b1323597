//! Any bytes, compressed at a low preset, decode to themselves: one-shot,
//! exact-size, and streaming; a size one off is refused.
//! Input: preset byte (0-3), dictionary-cap byte, then the data.
#![no_main]
use cloudlet_core::xz::{compress, decompress_exact, XzDecoder, XzEncoder, DEFAULT_MEMLIMIT};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let preset = (input[0] % 4) as u32;
    let dict_cap = (input[1] as u32) << 12;
    let data = &input[2..];
    let z = compress(data, preset, dict_cap).unwrap();
    assert_eq!(decompress_exact(&z, data.len(), DEFAULT_MEMLIMIT).unwrap(), data);
    assert!(decompress_exact(&z, data.len() + 1, DEFAULT_MEMLIMIT).is_err());
    if !data.is_empty() {
        assert!(decompress_exact(&z, data.len() - 1, DEFAULT_MEMLIMIT).is_err());
    }
    // The streaming encoder, fed in pieces, writes a stream that decodes the same.
    let mut e = XzEncoder::new(preset, dict_cap).unwrap();
    let mut z2 = Vec::new();
    for c in data.chunks(input[1] as usize + 1) {
        e.push(c, &mut z2).unwrap();
    }
    e.finish(&mut z2).unwrap();
    let mut d = XzDecoder::new(DEFAULT_MEMLIMIT, false).unwrap();
    d.push(&z2);
    d.finish_input();
    let mut out = Vec::new();
    while !d.is_done() {
        d.pull(4096, &mut out).unwrap();
    }
    assert_eq!(out, data);
});
