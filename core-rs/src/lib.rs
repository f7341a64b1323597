//! cloudlet-core: the byte kernels behind VM overlays.
//!
//! Every kernel works on byte buffers and is batched: one call handles many
//! fixed-size chunks (4 KiB in practice), so the cost of crossing into WASM is
//! paid once per batch, not once per page.
//!
//! | module      | what it does                                                     |
//! |-------------|------------------------------------------------------------------|
//! | [`chunk`]   | BLAKE3-256 and SHA-256 per chunk, and streaming hashers           |
//! | [`zero`]    | which chunks are all zero                                        |
//! | [`delta`]   | XOR delta of a chunk against its base chunk, and its inverse      |
//! | [`index`]   | base index: digest key -> (source, offset), batched lookups       |
//! | [`xz`]      | LZMA2 in standard `.xz` streams: push input, pull output          |
//!
//! [`reference`] holds plain, obviously-correct versions of the same kernels;
//! native tests check the fast paths against them with the shared vectors in
//! `vectors/`. The `wasm` module (wasm32 only) exposes the kernels to JS.

pub mod chunk;
pub mod delta;
pub mod index;
pub mod reference;
pub mod vectors;
pub mod xz;
pub mod zero;

#[cfg(target_arch = "wasm32")]
mod wasm;
