//! Index building from untrusted arguments (the wasm `add_run` takes them
//! from JS): digest length, mask, source, first offset and step arbitrary.
//! Properties: `try_add_run` refuses bad arguments instead of panicking, and
//! the finished index answers as a plain hash map does (first insertion wins).
#![no_main]
use cloudlet_core::index::{key_of, pack, IndexBuilder, MAX_OFFSET, MISS};
use cloudlet_core::reference::MapIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let mut b = IndexBuilder::with_capacity(0);
    let mut map = MapIndex::default();
    let mut keys = Vec::new();
    let mut rest = input;
    // Each run: digest_len, source, mask flag, count, first offset (u64), step (u64), then digests.
    while rest.len() >= 20 {
        let (h, tail) = rest.split_at(20);
        let digest_len = h[0] as usize % 40;
        let source = h[1];
        let masked = h[2] & 1 == 1;
        let count = h[3] as usize % 16;
        let first = u64::from_le_bytes(h[4..12].try_into().unwrap());
        let step = u64::from_le_bytes(h[12..20].try_into().unwrap());
        let want = (count * digest_len.max(1)).min(tail.len());
        let (digests, tail) = tail.split_at(want);
        let mask_len = if masked { (count).min(tail.len()) } else { 0 };
        let (mask, tail) = tail.split_at(mask_len);
        rest = tail;
        let ok = b.try_add_run(digests, digest_len, mask, source, first, step).is_ok();
        let n = if digest_len >= 8 && digests.len() % digest_len == 0 { digests.len() / digest_len } else { usize::MAX };
        let fits = source <= 1 && n != usize::MAX && (mask.is_empty() || mask.len() == n) && (n as u64).saturating_sub(1).checked_mul(step).and_then(|d| d.checked_add(first)).is_some_and(|o| o <= MAX_OFFSET);
        assert_eq!(ok, fits, "try_add_run accepted or refused the wrong run");
        if ok {
            for (i, d) in digests.chunks_exact(digest_len).enumerate() {
                if mask.is_empty() || mask[i] != 0 {
                    map.add(key_of(d), pack(source, first + i as u64 * step));
                    keys.push(key_of(d));
                }
            }
        }
    }
    let idx = b.finish();
    for k in keys {
        let v = idx.lookup(k);
        assert_eq!(v, map.lookup(k));
        assert_ne!(v, MISS, "a stored key reads as a miss");
    }
    for probe in input.chunks_exact(8).take(32) {
        let k = key_of(probe);
        assert_eq!(idx.lookup(k), map.lookup(k));
    }
});
