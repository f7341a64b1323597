//! A serialised base index from disk (a base archive can come from anyone).
//! Properties: `from_bytes` refuses or loads without panicking; a loaded
//! index serialises back to the same bytes and finds every stored key.
#![no_main]
use cloudlet_core::index::{BaseIndex, MISS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Ok(idx) = BaseIndex::from_bytes(input) else { return };
    assert_eq!(idx.to_bytes(), input);
    let n = idx.len();
    let body = &input[16..];
    let read = |i: usize| u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().unwrap());
    for i in 0..n {
        assert_eq!(idx.lookup(read(i)), read(n + i), "key {i} not found");
    }
    // Keys between the stored ones miss (keys are strictly ascending).
    for i in 1..n {
        let (a, b) = (read(i - 1), read(i));
        if b - a > 1 {
            assert_eq!(idx.lookup(a + 1), MISS);
        }
    }
});
