//! cloudlet's byte kernels as a WebAssembly Component: the WIT world
//! `cloudlet:core/kernels` (`wit/core.wit`) over the kernels of `core-rs`.
//!
//! Thin, like core-rs's wasm-bindgen module: every export checks its
//! arguments and forwards to a kernel. The checks matter more here: a kernel
//! asserts on bad input, and a panic traps, which leaves the whole instance
//! unusable for the host. So every argument a host can get wrong becomes an
//! `error` with the same message the wasm-bindgen build throws.
//!
//! Built for wasm32-unknown-unknown, this is a core module carrying
//! wit-bindgen's component-type section; `scripts/build-component.sh` turns
//! it into the component with `jco new`. See docs/component.md.

use std::cell::RefCell;

use cloudlet_core::{chunk, delta, index as kernel_index, xz as kernel_xz, zero as kernel_zero};

wit_bindgen::generate!({
    world: "kernels",
    path: "../wit",
});

use exports::cloudlet::core::hashing::{self, Algorithm};
use exports::cloudlet::core::index::{self, Source};
use exports::cloudlet::core::types::{Error, ErrorCode};
use exports::cloudlet::core::{delta as delta_api, xz, zero};

/// The component's exports.
struct Kernels;

export!(Kernels);

fn invalid(message: &str) -> Error {
    Error { code: ErrorCode::InvalidArgument, message: message.to_string() }
}

fn finished(message: &str) -> Error {
    Error { code: ErrorCode::Finished, message: message.to_string() }
}

fn xz_error(e: kernel_xz::XzError) -> Error {
    use kernel_xz::XzError as E;
    let code = match e {
        E::BadPreset => ErrorCode::XzBadPreset,
        E::Corrupt => ErrorCode::XzCorrupt,
        E::NotXz => ErrorCode::XzNotXz,
        E::MemLimit => ErrorCode::XzMemLimit,
        E::Truncated => ErrorCode::XzTruncated,
        E::TooLong => ErrorCode::XzTooLong,
        E::TooShort => ErrorCode::XzTooShort,
        E::TrailingData => ErrorCode::XzTrailingData,
        E::Internal => ErrorCode::XzInternal,
    };
    Error { code, message: e.to_string() }
}

fn index_error(e: kernel_index::IndexError) -> Error {
    use kernel_index::IndexError as E;
    let code = match e {
        E::BadMagic => ErrorCode::IndexBadMagic,
        E::BadLength => ErrorCode::IndexBadLength,
        E::Unsorted => ErrorCode::IndexUnsorted,
        E::TooLarge => ErrorCode::IndexTooLarge,
        E::BadRun | E::OffsetTooLarge | E::BadSource => ErrorCode::InvalidArgument,
    };
    Error { code, message: e.to_string() }
}

fn algorithm(alg: Algorithm) -> chunk::Algorithm {
    match alg {
        Algorithm::Blake3 => chunk::Algorithm::Blake3,
        Algorithm::Sha256 => chunk::Algorithm::Sha256,
    }
}

// --- hashing -----------------------------------------------------------------

impl hashing::Guest for Kernels {
    type Hasher = HasherState;

    fn hash_chunks(alg: Algorithm, data: Vec<u8>, chunk_size: u32) -> Result<Vec<u8>, Error> {
        if chunk_size == 0 {
            return Err(invalid("chunk_size must be non-zero"));
        }
        let mut out = Vec::new();
        chunk::hash_chunks(algorithm(alg), &data, chunk_size as usize, &mut out);
        Ok(out)
    }

    fn hash(alg: Algorithm, data: Vec<u8>) -> Vec<u8> {
        chunk::hash(algorithm(alg), &data).to_vec()
    }
}

/// The state behind a `hasher` resource.
struct HasherState(RefCell<chunk::Hasher>);

impl hashing::GuestHasher for HasherState {
    fn new(alg: Algorithm) -> Self {
        HasherState(RefCell::new(chunk::Hasher::new(algorithm(alg))))
    }

    fn update(&self, data: Vec<u8>) {
        self.0.borrow_mut().update(&data);
    }

    fn digest(&self) -> Vec<u8> {
        self.0.borrow().finalize().to_vec()
    }
}

// --- zero detection and XOR delta ----------------------------------------------

impl zero::Guest for Kernels {
    fn zero_chunks(data: Vec<u8>, chunk_size: u32) -> Result<Vec<u8>, Error> {
        if chunk_size == 0 {
            return Err(invalid("chunk_size must be non-zero"));
        }
        let mut out = Vec::new();
        kernel_zero::zero_chunks(&data, chunk_size as usize, &mut out);
        Ok(out)
    }
}

impl delta_api::Guest for Kernels {
    fn xor(mut a: Vec<u8>, b: Vec<u8>) -> Result<Vec<u8>, Error> {
        if a.len() != b.len() {
            return Err(invalid("xor: inputs differ in length"));
        }
        // `a` is ours already: XOR in place and hand it back, no third buffer.
        delta::xor_in_place(&mut a, &b);
        Ok(a)
    }

    fn xor_gains(new: Vec<u8>, base: Vec<u8>, chunk_size: u32) -> Result<Vec<i32>, Error> {
        if new.len() != base.len() || chunk_size == 0 {
            return Err(invalid("xor_gains: inputs differ in length"));
        }
        let n = chunk_size as usize;
        Ok(new.chunks(n).zip(base.chunks(n)).map(|(x, y)| delta::xor_gain(x, y) as i32).collect())
    }
}

// --- xz ------------------------------------------------------------------------

impl xz::Guest for Kernels {
    type Encoder = EncoderState;
    type Decoder = DecoderState;

    fn compress(data: Vec<u8>, preset: u32, dict_cap: u32) -> Result<Vec<u8>, Error> {
        kernel_xz::compress(&data, preset, dict_cap).map_err(xz_error)
    }

    fn decompress_exact(data: Vec<u8>, size: u32, memlimit: u64) -> Result<Vec<u8>, Error> {
        // The kernel reserves `size` bytes up front, and a failed allocation
        // aborts: probe first, so that an impossible size is an error.
        if Vec::<u8>::new().try_reserve_exact(size as usize).is_err() {
            return Err(Error { code: ErrorCode::XzInternal, message: format!("cannot allocate {size} bytes for the decoded xz stream") });
        }
        kernel_xz::decompress_exact(&data, size as usize, memlimit).map_err(xz_error)
    }
}

/// The state behind an `encoder` resource; `None` once finished.
struct EncoderState(RefCell<Option<kernel_xz::XzEncoder>>);

impl xz::GuestEncoder for EncoderState {
    fn create(preset: u32, dict_cap: u32) -> Result<xz::Encoder, Error> {
        let e = kernel_xz::XzEncoder::new(preset, dict_cap).map_err(xz_error)?;
        Ok(xz::Encoder::new(EncoderState(RefCell::new(Some(e)))))
    }

    fn push(&self, data: Vec<u8>) -> Result<Vec<u8>, Error> {
        let mut slot = self.0.borrow_mut();
        let e = slot.as_mut().ok_or_else(|| finished("xz encoder already finished"))?;
        let mut out = Vec::new();
        e.push(&data, &mut out).map_err(xz_error)?;
        Ok(out)
    }

    fn finish(&self) -> Result<Vec<u8>, Error> {
        let mut e = self.0.borrow_mut().take().ok_or_else(|| finished("xz encoder already finished"))?;
        let mut out = Vec::new();
        e.finish(&mut out).map_err(xz_error)?;
        Ok(out)
    }
}

/// Most bytes one `pull` returns, whatever `max` asks for: the kernel
/// reserves `max` bytes up front, and a huge request must not trap.
const MAX_PULL_BYTES: u32 = 64 << 20;

/// The state behind a `decoder` resource.
struct DecoderState(RefCell<kernel_xz::XzDecoder>);

impl xz::GuestDecoder for DecoderState {
    fn create(memlimit: u64, concatenated: bool) -> Result<xz::Decoder, Error> {
        let d = kernel_xz::XzDecoder::new(memlimit, concatenated).map_err(xz_error)?;
        Ok(xz::Decoder::new(DecoderState(RefCell::new(d))))
    }

    fn push(&self, data: Vec<u8>) {
        self.0.borrow_mut().push(&data);
    }

    fn finish_input(&self) {
        self.0.borrow_mut().finish_input();
    }

    fn pull(&self, max: u32) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let max = max.min(MAX_PULL_BYTES) as usize;
        self.0.borrow_mut().pull(max, &mut out).map_err(xz_error)?;
        Ok(out)
    }

    fn is_done(&self) -> bool {
        self.0.borrow().is_done()
    }

    fn pending_input(&self) -> u32 {
        self.0.borrow().pending_input() as u32
    }
}

// --- base index ------------------------------------------------------------------

/// Entries a builder reserves up front at most; `capacity` is only a hint,
/// and a host must not make the component claim memory it may never use.
const MAX_RESERVED_ENTRIES: u32 = 1 << 24;

impl index::Guest for Kernels {
    type IndexBuilder = IndexBuilderState;
    type BaseIndex = BaseIndexState;
}

/// Checks a digest buffer: whole digests of at least the 8 key bytes.
fn digest_count(digests: &[u8], digest_len: u32) -> Option<usize> {
    let len = digest_len as usize;
    (len >= 8 && digests.len() % len == 0).then(|| digests.len() / len)
}

/// The state behind an `index-builder` resource; `None` once finished.
struct IndexBuilderState(RefCell<Option<kernel_index::IndexBuilder>>);

impl index::GuestIndexBuilder for IndexBuilderState {
    fn new(capacity: u32) -> Self {
        let reserve = capacity.min(MAX_RESERVED_ENTRIES) as usize;
        IndexBuilderState(RefCell::new(Some(kernel_index::IndexBuilder::with_capacity(reserve))))
    }

    fn add_run(&self, digests: Vec<u8>, digest_len: u32, mask: Vec<u8>, source: Source, first_offset: u64, step: u64) -> Result<(), Error> {
        let mut slot = self.0.borrow_mut();
        let b = slot.as_mut().ok_or_else(|| finished("index builder already finished"))?;
        let tag = match source {
            Source::Disk => kernel_index::SOURCE_DISK,
            Source::Memory => kernel_index::SOURCE_MEM,
        };
        b.try_add_run(&digests, digest_len as usize, &mask, tag, first_offset, step).map_err(|e| invalid(&e.to_string()))
    }

    fn finish(&self) -> Result<index::BaseIndex, Error> {
        let b = self.0.borrow_mut().take().ok_or_else(|| finished("index builder already finished"))?;
        Ok(index::BaseIndex::new(BaseIndexState(b.finish())))
    }
}

/// The state behind a `base-index` resource.
struct BaseIndexState(kernel_index::BaseIndex);

impl index::GuestBaseIndex for BaseIndexState {
    fn from_bytes(bytes: Vec<u8>) -> Result<index::BaseIndex, Error> {
        let i = kernel_index::BaseIndex::from_bytes(&bytes).map_err(index_error)?;
        Ok(index::BaseIndex::new(BaseIndexState(i)))
    }

    fn to_bytes(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    fn len(&self) -> u32 {
        self.0.len() as u32
    }

    fn memory_bytes(&self) -> u64 {
        self.0.memory_bytes() as u64
    }

    fn lookup(&self, digests: Vec<u8>, digest_len: u32) -> Result<Vec<u64>, Error> {
        let n = digest_count(&digests, digest_len).ok_or_else(|| invalid("lookup: digest buffer is not a whole number of digests"))?;
        let mut out = Vec::with_capacity(n);
        self.0.lookup_batch(&digests, digest_len as usize, &mut out);
        Ok(out)
    }
}
