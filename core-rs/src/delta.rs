//! XOR delta of a chunk against its base chunk.
//!
//! `encode(new, base) = new ^ base`; `apply(delta, base) = delta ^ base = new`.
//! The delta of a lightly edited page is mostly zero bytes, which xz then
//! squeezes far better than the page itself. [`xor_gain`] tells the overlay
//! writer whether the delta is worth storing instead of the raw chunk.

/// Writes `a ^ b` into `out`. All three must have the same length.
pub fn xor(a: &[u8], b: &[u8], out: &mut [u8]) {
    assert!(a.len() == b.len() && a.len() == out.len(), "xor: length mismatch");
    // Word-wise body; the compiler vectorises this loop.
    let mut oc = out.chunks_exact_mut(8);
    let mut ac = a.chunks_exact(8);
    let mut bc = b.chunks_exact(8);
    for ((o, x), y) in (&mut oc).zip(&mut ac).zip(&mut bc) {
        let v = u64::from_ne_bytes(x.try_into().unwrap()) ^ u64::from_ne_bytes(y.try_into().unwrap());
        o.copy_from_slice(&v.to_ne_bytes());
    }
    for ((o, x), y) in oc.into_remainder().iter_mut().zip(ac.remainder()).zip(bc.remainder()) {
        *o = x ^ y;
    }
}

/// XORs `b` into `a` in place.
pub fn xor_in_place(a: &mut [u8], b: &[u8]) {
    assert!(a.len() == b.len(), "xor_in_place: length mismatch");
    let mut ac = a.chunks_exact_mut(8);
    let mut bc = b.chunks_exact(8);
    for (x, y) in (&mut ac).zip(&mut bc) {
        let v = u64::from_ne_bytes((&*x).try_into().unwrap()) ^ u64::from_ne_bytes(y.try_into().unwrap());
        x.copy_from_slice(&v.to_ne_bytes());
    }
    for (x, y) in ac.into_remainder().iter_mut().zip(bc.remainder()) {
        *x ^= y;
    }
}

/// Count of zero bytes in `data`.
pub fn count_zero_bytes(data: &[u8]) -> usize {
    data.iter().filter(|&&b| b == 0).count()
}

/// How many more zero bytes the XOR delta has than the raw chunk; positive
/// means the delta is likely to compress smaller. Computed without
/// materialising the delta.
pub fn xor_gain(new: &[u8], base: &[u8]) -> i64 {
    assert!(new.len() == base.len(), "xor_gain: length mismatch");
    let mut delta_zeros = 0i64;
    let mut raw_zeros = 0i64;
    for (x, y) in new.iter().zip(base) {
        delta_zeros += (x == y) as i64;
        raw_zeros += (*x == 0) as i64;
    }
    delta_zeros - raw_zeros
}
