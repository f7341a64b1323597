//! JS bindings (wasm-bindgen). Thin: every function forwards to a kernel.
//! The TypeScript wrapper in `ts/core/` owns object lifetimes, so callers
//! never see `free()`.

use wasm_bindgen::prelude::*;

use crate::chunk::{self, Algorithm};
use crate::index::{self, BaseIndex, IndexBuilder};

fn alg(id: u8) -> Result<Algorithm, JsError> {
    match id {
        0 => Ok(Algorithm::Blake3),
        1 => Ok(Algorithm::Sha256),
        _ => Err(JsError::new("unknown hash algorithm id")),
    }
}

/// Hashes `data` in `chunk_size` pieces; 32 bytes of digest per piece.
#[wasm_bindgen]
pub fn hash_chunks(alg_id: u8, data: &[u8], chunk_size: usize) -> Result<Vec<u8>, JsError> {
    if chunk_size == 0 {
        return Err(JsError::new("chunk_size must be non-zero"));
    }
    let mut out = Vec::new();
    chunk::hash_chunks(alg(alg_id)?, data, chunk_size, &mut out);
    Ok(out)
}

/// Incremental hasher.
#[wasm_bindgen]
pub struct Hasher(chunk::Hasher);

#[wasm_bindgen]
impl Hasher {
    /// A fresh hasher (0 = BLAKE3, 1 = SHA-256).
    #[wasm_bindgen(constructor)]
    pub fn new(alg_id: u8) -> Result<Hasher, JsError> {
        Ok(Hasher(chunk::Hasher::new(alg(alg_id)?)))
    }
    /// Feeds more input.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// Digest of everything fed so far.
    pub fn digest(&self) -> Vec<u8> {
        self.0.finalize().to_vec()
    }
}

/// One byte per piece: 1 if all zero.
#[wasm_bindgen]
pub fn zero_chunks(data: &[u8], chunk_size: usize) -> Result<Vec<u8>, JsError> {
    if chunk_size == 0 {
        return Err(JsError::new("chunk_size must be non-zero"));
    }
    let mut out = Vec::new();
    crate::zero::zero_chunks(data, chunk_size, &mut out);
    Ok(out)
}

/// `a ^ b`.
#[wasm_bindgen]
pub fn xor(a: &[u8], b: &[u8]) -> Result<Vec<u8>, JsError> {
    if a.len() != b.len() {
        return Err(JsError::new("xor: inputs differ in length"));
    }
    let mut out = vec![0u8; a.len()];
    crate::delta::xor(a, b, &mut out);
    Ok(out)
}

/// Per piece of `chunk_size`: how many more zero bytes `new ^ base` has than `new`.
#[wasm_bindgen]
pub fn xor_gains(new: &[u8], base: &[u8], chunk_size: usize) -> Result<Vec<i32>, JsError> {
    if new.len() != base.len() || chunk_size == 0 {
        return Err(JsError::new("xor_gains: inputs differ in length"));
    }
    Ok(new.chunks(chunk_size).zip(base.chunks(chunk_size)).map(|(n, b)| crate::delta::xor_gain(n, b) as i32).collect())
}

/// Collects index entries.
#[wasm_bindgen]
pub struct IndexBuilderJs(Option<IndexBuilder>);

#[wasm_bindgen]
impl IndexBuilderJs {
    /// A builder with room for `capacity` entries.
    #[wasm_bindgen(constructor)]
    pub fn new(capacity: usize) -> IndexBuilderJs {
        IndexBuilderJs(Some(IndexBuilder::with_capacity(capacity)))
    }
    /// Adds consecutive chunks; see `IndexBuilder::add_run`.
    pub fn add_run(&mut self, digests: &[u8], digest_len: usize, mask: &[u8], source: u8, first_offset: f64, step: f64) -> Result<(), JsError> {
        let b = self.0.as_mut().ok_or_else(|| JsError::new("index builder already finished"))?;
        // f64 from JS: a negative, fractional or huge value must not wrap into a valid-looking offset.
        let exact = |x: f64| x >= 0.0 && x.fract() == 0.0 && x <= kernel_max_safe();
        if !exact(first_offset) || !exact(step) {
            return Err(JsError::new("add_run: offsets must be non-negative integers"));
        }
        b.try_add_run(digests, digest_len, mask, source, first_offset as u64, step as u64).map_err(|e| JsError::new(&e.to_string()))
    }
    /// Sorts and returns the finished index.
    pub fn finish(&mut self) -> Result<BaseIndexJs, JsError> {
        let b = self.0.take().ok_or_else(|| JsError::new("index builder already finished"))?;
        Ok(BaseIndexJs(b.finish()))
    }
}

/// A finished base index.
#[wasm_bindgen]
pub struct BaseIndexJs(BaseIndex);

#[wasm_bindgen]
impl BaseIndexJs {
    /// Loads a serialised index.
    pub fn from_bytes(bytes: &[u8]) -> Result<BaseIndexJs, JsError> {
        BaseIndex::from_bytes(bytes).map(BaseIndexJs).map_err(|e| JsError::new(&e.to_string()))
    }
    /// Serialises the index.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }
    /// Number of distinct keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Bytes of WASM memory the index occupies.
    pub fn memory_bytes(&self) -> usize {
        self.0.memory_bytes()
    }
    /// For each digest: [source, offset] as two f64s; source -1 on a miss.
    /// Offsets stay below 2^53, so f64 carries them exactly and JS avoids BigInt.
    pub fn lookup(&self, digests: &[u8], digest_len: usize) -> Result<Vec<f64>, JsError> {
        if digest_len < 8 || digests.len() % digest_len != 0 {
            return Err(JsError::new("lookup: digest buffer is not a whole number of digests"));
        }
        let mut out = Vec::with_capacity(digests.len() / digest_len * 2);
        for d in digests.chunks_exact(digest_len) {
            let v = self.0.lookup(index::key_of(d));
            if v == index::MISS {
                out.extend_from_slice(&[-1.0, -1.0]);
            } else {
                let (s, o) = index::unpack(v);
                out.extend_from_slice(&[s as f64, o as f64]);
            }
        }
        Ok(out)
    }
}

fn xz_err(e: crate::xz::XzError) -> JsError {
    JsError::new(&e.to_string())
}

/// One-shot xz compression.
#[wasm_bindgen]
pub fn xz_compress(data: &[u8], preset: u32, dict_cap: u32) -> Result<Vec<u8>, JsError> {
    crate::xz::compress(data, preset, dict_cap).map_err(xz_err)
}

/// Decodes one .xz stream of exactly `size` bytes.
#[wasm_bindgen]
pub fn xz_decompress_exact(data: &[u8], size: usize, memlimit: f64) -> Result<Vec<u8>, JsError> {
    crate::xz::decompress_exact(data, size, memlimit as u64).map_err(xz_err)
}

/// Streaming xz encoder.
#[wasm_bindgen]
pub struct XzEncoderJs(Option<crate::xz::XzEncoder>);

#[wasm_bindgen]
impl XzEncoderJs {
    /// An encoder at `preset`, dictionary capped at `dict_cap` bytes (0: preset's).
    #[wasm_bindgen(constructor)]
    pub fn new(preset: u32, dict_cap: u32) -> Result<XzEncoderJs, JsError> {
        Ok(XzEncoderJs(Some(crate::xz::XzEncoder::new(preset, dict_cap).map_err(xz_err)?)))
    }
    /// Consumes input; returns output that is ready.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>, JsError> {
        let e = self.0.as_mut().ok_or_else(|| JsError::new("xz encoder already finished"))?;
        let mut out = Vec::new();
        e.push(data, &mut out).map_err(xz_err)?;
        Ok(out)
    }
    /// Ends the stream; returns the remaining output.
    pub fn finish(&mut self) -> Result<Vec<u8>, JsError> {
        let mut e = self.0.take().ok_or_else(|| JsError::new("xz encoder already finished"))?;
        let mut out = Vec::new();
        e.finish(&mut out).map_err(xz_err)?;
        Ok(out)
    }
}

/// Streaming xz decoder with bounded pulls.
#[wasm_bindgen]
pub struct XzDecoderJs(crate::xz::XzDecoder);

#[wasm_bindgen]
impl XzDecoderJs {
    /// A decoder allowed `memlimit` bytes; `concatenated` accepts several streams.
    #[wasm_bindgen(constructor)]
    pub fn new(memlimit: f64, concatenated: bool) -> Result<XzDecoderJs, JsError> {
        Ok(XzDecoderJs(crate::xz::XzDecoder::new(memlimit as u64, concatenated).map_err(xz_err)?))
    }
    /// Queues compressed input.
    pub fn push(&mut self, data: &[u8]) {
        self.0.push(data);
    }
    /// Declares the end of input.
    pub fn finish_input(&mut self) {
        self.0.finish_input();
    }
    /// Decodes up to `max` bytes; empty with `!is_done()` means "push more".
    pub fn pull(&mut self, max: usize) -> Result<Vec<u8>, JsError> {
        let mut out = Vec::new();
        self.0.pull(max, &mut out).map_err(xz_err)?;
        Ok(out)
    }
    /// True when the stream is complete.
    pub fn is_done(&self) -> bool {
        self.0.is_done()
    }
    /// Compressed bytes queued but not consumed.
    pub fn pending_input(&self) -> usize {
        self.0.pending_input()
    }
}

/// 2^53 - 1: the largest integer a JS number holds exactly.
fn kernel_max_safe() -> f64 {
    9_007_199_254_740_991.0
}
