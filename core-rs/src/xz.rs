//! xz (LZMA2) streams: push input, pull output.
//!
//! Output is a standard `.xz` stream (CRC64 check, like `xz` itself), so
//! `xz -d` reads it, and anything `xz -z` writes decodes here. The encoder
//! and decoder are C liblzma (the code inside the `xz` tool), compiled for
//! wasm32 by clang; docs/xz.md records why it won over lzma-rust2.
//!
//! The decoder is bounded: the caller says how many bytes it will take per
//! pull, and how much memory the stream may claim, so a hostile stream
//! cannot make it allocate without limit.

use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream, CONCATENATED};

/// Errors from xz coding.
#[derive(Debug, PartialEq, Eq)]
pub enum XzError {
    /// The preset is not 0-9.
    BadPreset,
    /// The compressed data is corrupt.
    Corrupt,
    /// The input is not an .xz stream.
    NotXz,
    /// The stream needs more memory than the limit allows.
    MemLimit,
    /// The stream ended before it was complete.
    Truncated,
    /// The data decodes to more bytes than the caller allowed.
    TooLong,
    /// The data decodes to fewer bytes than the caller required.
    TooShort,
    /// Bytes follow the end of the stream.
    TrailingData,
    /// Out of memory or a misuse of the coder.
    Internal,
}

impl std::fmt::Display for XzError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XzError::BadPreset => "xz preset must be 0-9",
            XzError::Corrupt => "xz data is corrupt",
            XzError::NotXz => "not an xz stream",
            XzError::MemLimit => "xz stream needs more memory than allowed",
            XzError::Truncated => "xz stream is truncated",
            XzError::TooLong => "xz stream decodes to more bytes than expected",
            XzError::TooShort => "xz stream decodes to fewer bytes than expected",
            XzError::TrailingData => "unexpected bytes after the end of the xz stream",
            XzError::Internal => "xz coder failed (out of memory?)",
        })
    }
}

fn map_err(e: liblzma::stream::Error) -> XzError {
    use liblzma::stream::Error as E;
    match e {
        E::Data => XzError::Corrupt,
        E::Format => XzError::NotXz,
        E::MemLimit => XzError::MemLimit,
        E::Options => XzError::Corrupt,
        _ => XzError::Internal,
    }
}

/// Output buffer growth step.
const OUT_STEP: usize = 64 * 1024;

/// Flag or-ed into an encoder preset: put the x86 BCJ filter before LZMA2.
pub const PRESET_X86: u32 = 0x100;

/// Default decoder memory limit: enough for any preset (-9 needs ~65 MiB).
pub const DEFAULT_MEMLIMIT: u64 = 96 << 20;

/// Streaming encoder.
pub struct XzEncoder {
    s: Stream,
}

impl XzEncoder {
    /// An encoder at `preset` (0-9), plus [`PRESET_X86`] for the x86 BCJ
    /// filter before LZMA2 (machine code compresses better; `xz -d` reads
    /// it). `dict_cap` > 0 caps the dictionary, which saves encoder memory
    /// when every stream is small (a dictionary larger than the input gains
    /// nothing).
    pub fn new(preset: u32, dict_cap: u32) -> Result<XzEncoder, XzError> {
        let x86 = preset & PRESET_X86 != 0;
        let preset = preset & !PRESET_X86;
        if preset > 9 {
            return Err(XzError::BadPreset);
        }
        let mut opts = LzmaOptions::new_preset(preset).map_err(map_err)?;
        if dict_cap > 0 {
            let d = dict_cap.max(4096);
            if d < preset_dict_size(preset) {
                opts.dict_size(d);
            }
        }
        let mut filters = Filters::new();
        if x86 {
            filters.x86();
        }
        filters.lzma2(&opts);
        let s = Stream::new_stream_encoder(&filters, Check::Crc64).map_err(map_err)?;
        Ok(XzEncoder { s })
    }

    /// Consumes all of `input`, appending whatever output is ready to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), XzError> {
        while !input.is_empty() {
            out.reserve(OUT_STEP);
            let before = self.s.total_in();
            self.s.process_vec(input, out, Action::Run).map_err(map_err)?;
            input = &input[(self.s.total_in() - before) as usize..];
        }
        Ok(())
    }

    /// Ends the stream, appending the rest of the output to `out`.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), XzError> {
        loop {
            out.reserve(OUT_STEP);
            if self.s.process_vec(&[], out, Action::Finish).map_err(map_err)? == Status::StreamEnd {
                return Ok(());
            }
        }
    }
}

/// Dictionary size of an xz preset (from xz's documentation table).
pub fn preset_dict_size(preset: u32) -> u32 {
    const SIZES: [u32; 10] = [256 << 10, 1 << 20, 2 << 20, 4 << 20, 4 << 20, 8 << 20, 8 << 20, 16 << 20, 32 << 20, 64 << 20];
    SIZES[preset.min(9) as usize]
}

/// One-shot compression into a standard .xz stream.
pub fn compress(data: &[u8], preset: u32, dict_cap: u32) -> Result<Vec<u8>, XzError> {
    let mut e = XzEncoder::new(preset, dict_cap)?;
    let mut out = Vec::with_capacity(data.len() / 3 + 1024);
    e.push(data, &mut out)?;
    e.finish(&mut out)?;
    Ok(out)
}

/// Streaming decoder: push compressed bytes, pull decoded bytes in bounded pieces.
pub struct XzDecoder {
    s: Stream,
    pending: Vec<u8>,
    pos: usize,
    input_done: bool,
    done: bool,
}

impl XzDecoder {
    /// A decoder that may claim up to `memlimit` bytes; `concatenated`
    /// accepts several streams back to back, as `xz -d` does.
    pub fn new(memlimit: u64, concatenated: bool) -> Result<XzDecoder, XzError> {
        let s = Stream::new_stream_decoder(memlimit, if concatenated { CONCATENATED } else { 0 }).map_err(map_err)?;
        Ok(XzDecoder { s, pending: Vec::new(), pos: 0, input_done: false, done: false })
    }

    /// Queues more compressed input.
    pub fn push(&mut self, input: &[u8]) {
        if self.pos > 0 && self.pos * 2 >= self.pending.len() {
            self.pending.drain(..self.pos);
            self.pos = 0;
        }
        self.pending.extend_from_slice(input);
    }

    /// Declares that no more input will come.
    pub fn finish_input(&mut self) {
        self.input_done = true;
    }

    /// True once the stream (or, when concatenated, the input) is complete.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Compressed bytes queued but not yet consumed.
    pub fn pending_input(&self) -> usize {
        self.pending.len() - self.pos
    }

    /// Decodes up to `max` bytes into `out`. Returns the number produced; 0
    /// with `!is_done()` means more input is needed.
    pub fn pull(&mut self, max: usize, out: &mut Vec<u8>) -> Result<usize, XzError> {
        let start = out.len();
        if self.done {
            return Ok(0);
        }
        out.reserve(max);
        while out.len() - start < max {
            let action = if self.input_done { Action::Finish } else { Action::Run };
            let (in0, out0) = (self.s.total_in(), self.s.total_out());
            let room = max - (out.len() - start);
            let len = out.len();
            let spare = &mut out.spare_capacity_mut()[..room];
            let status = self.s.process_uninit(&self.pending[self.pos..], spare, action);
            let wrote = (self.s.total_out() - out0) as usize;
            // SAFETY: liblzma initialised exactly `wrote` bytes of the spare capacity.
            unsafe { out.set_len(len + wrote) };
            let consumed = (self.s.total_in() - in0) as usize;
            self.pos += consumed;
            match status.map_err(map_err)? {
                Status::StreamEnd => {
                    self.done = true;
                    if self.pending_input() > 0 {
                        return Err(XzError::TrailingData);
                    }
                    break;
                }
                _ if consumed == 0 && wrote == 0 => {
                    if self.input_done {
                        return Err(XzError::Truncated);
                    }
                    break; // needs more input
                }
                _ => {}
            }
        }
        Ok(out.len() - start)
    }
}

/// Decodes one .xz stream that must hold exactly `size` bytes, allocating
/// no more than that.
pub fn decompress_exact(data: &[u8], size: usize, memlimit: u64) -> Result<Vec<u8>, XzError> {
    let mut d = XzDecoder::new(memlimit, false)?;
    d.push(data);
    d.finish_input();
    let mut out = Vec::with_capacity(size);
    let n = d.pull(size, &mut out)?;
    if n < size {
        return Err(if d.is_done() { XzError::TooShort } else { XzError::Truncated });
    }
    if !d.is_done() {
        // All `size` bytes are out; the stream must now end without more.
        let mut probe = Vec::with_capacity(1);
        if d.pull(1, &mut probe)? > 0 {
            return Err(XzError::TooLong);
        }
        if !d.is_done() {
            return Err(XzError::Truncated);
        }
    }
    Ok(out)
}
