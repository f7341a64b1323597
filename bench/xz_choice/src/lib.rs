//! The two xz implementations behind one tiny C ABI, so that the native
//! driver (src/main.rs) and the WASM driver (bench/xz_choice_bench.ts) make
//! exactly the same calls. Both encode a standard .xz stream (CRC64, one
//! block, the preset's dictionary), pushing the input in 1 MiB slices as the
//! core's streaming encoder does, and decode one back to its exact size.

use std::io::{Read, Write};

/// Input slice pushed per call, as in core-rs (ts/core/core.ts SLICE_BYTES is 4 MiB; the evaluation used 1 MiB).
const SLICE: usize = 1 << 20;

/// Which implementation.
#[derive(Clone, Copy)]
pub enum Codec {
    /// C liblzma 5.8 (crate liblzma 0.4.9), what core-rs uses.
    Liblzma,
    /// lzma-rust2 0.25.0, pure Rust.
    LzmaRust2,
}

impl Codec {
    /// From the ABI's number.
    pub fn from_u32(n: u32) -> Option<Codec> {
        match n {
            0 => Some(Codec::Liblzma),
            1 => Some(Codec::LzmaRust2),
            _ => None,
        }
    }
}

/// One .xz stream of `data` at `preset`.
pub fn compress(codec: Codec, data: &[u8], preset: u32) -> Result<Vec<u8>, String> {
    match codec {
        Codec::Liblzma => {
            use liblzma::stream::{Action, Check, Status, Stream};
            let mut s = Stream::new_easy_encoder(preset, Check::Crc64).map_err(|e| e.to_string())?;
            let mut out = Vec::with_capacity(data.len() / 3 + 4096);
            for piece in data.chunks(SLICE) {
                let mut at = 0;
                while at < piece.len() {
                    out.reserve(SLICE);
                    let before = s.total_in();
                    s.process_vec(&piece[at..], &mut out, Action::Run).map_err(|e| e.to_string())?;
                    at += (s.total_in() - before) as usize;
                }
            }
            loop {
                out.reserve(SLICE);
                if s.process_vec(&[], &mut out, Action::Finish).map_err(|e| e.to_string())? == Status::StreamEnd {
                    return Ok(out);
                }
            }
        }
        Codec::LzmaRust2 => {
            let opts = lzma_rust2::XzOptions::with_preset(preset);
            let mut w = lzma_rust2::XzWriter::new(Vec::with_capacity(data.len() / 3 + 4096), opts).map_err(|e| e.to_string())?;
            for piece in data.chunks(SLICE) {
                w.write_all(piece).map_err(|e| e.to_string())?;
            }
            w.finish().map_err(|e| e.to_string())
        }
    }
}

/// Decodes one .xz stream that holds exactly `size` bytes.
pub fn decompress(codec: Codec, xz: &[u8], size: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; size];
    match codec {
        Codec::Liblzma => {
            use liblzma::stream::{Action, Status, Stream};
            let mut s = Stream::new_stream_decoder(u64::MAX, 0).map_err(|e| e.to_string())?;
            loop {
                let (i0, o0) = (s.total_in() as usize, s.total_out() as usize);
                let end = (i0 + SLICE).min(xz.len());
                let st = s.process(&xz[i0..end], &mut out[o0..], if end == xz.len() { Action::Finish } else { Action::Run }).map_err(|e| e.to_string())?;
                if st == Status::StreamEnd {
                    break;
                }
                if s.total_in() as usize == i0 && s.total_out() as usize == o0 {
                    return Err("the stream is truncated or longer than expected".into());
                }
            }
            if s.total_out() as usize != size {
                return Err(format!("decoded {} bytes, expected {size}", s.total_out()));
            }
        }
        Codec::LzmaRust2 => {
            let mut r = lzma_rust2::XzReader::new(xz, false);
            r.read_exact(&mut out).map_err(|e| e.to_string())?;
            let mut extra = [0u8; 1];
            if r.read(&mut extra).map_err(|e| e.to_string())? != 0 {
                return Err("stream holds more than expected".into());
            }
        }
    }
    Ok(out)
}

// ---- the C ABI for the WASM driver -------------------------------------------

static mut RESULT: Vec<u8> = Vec::new();

/// Allocates `len` bytes for the caller to fill.
#[no_mangle]
pub extern "C" fn buf_alloc(len: usize) -> *mut u8 {
    let mut v = vec![0u8; len];
    let p = v.as_mut_ptr();
    std::mem::forget(v);
    p
}

/// Frees a buffer from [`buf_alloc`].
#[no_mangle]
pub unsafe extern "C" fn buf_free(p: *mut u8, len: usize) {
    drop(Vec::from_raw_parts(p, len, len));
}

/// Pointer to the last result.
#[no_mangle]
pub unsafe extern "C" fn result_ptr() -> *const u8 {
    (*std::ptr::addr_of!(RESULT)).as_ptr()
}

/// Compresses; returns the output length (see [`result_ptr`]) or -1.
#[no_mangle]
pub unsafe extern "C" fn xz_compress(codec: u32, preset: u32, p: *const u8, len: usize) -> isize {
    let Some(c) = Codec::from_u32(codec) else { return -1 };
    match compress(c, std::slice::from_raw_parts(p, len), preset) {
        Ok(v) => {
            let n = v.len() as isize;
            *std::ptr::addr_of_mut!(RESULT) = v;
            n
        }
        Err(_) => -1,
    }
}

/// Decompresses into exactly `size` bytes; returns the length or -1.
#[no_mangle]
pub unsafe extern "C" fn xz_decompress(codec: u32, p: *const u8, len: usize, size: usize) -> isize {
    let Some(c) = Codec::from_u32(codec) else { return -1 };
    match decompress(c, std::slice::from_raw_parts(p, len), size) {
        Ok(v) => {
            let n = v.len() as isize;
            *std::ptr::addr_of_mut!(RESULT) = v;
            n
        }
        Err(_) => -1,
    }
}
