//! Hostile .xz streams: what a segment file or an upload can hold.
//! Input: u32 LE size the caller expects (at most 1 MiB), then the stream.
//! Properties: no panic; `decompress_exact` returns exactly `size` bytes or
//! an error, within the memory limit; the streaming decoder, fed in pieces
//! and pulled in bounded pieces, agrees with it.
#![no_main]
use cloudlet_core::xz::{decompress_exact, XzDecoder};
use libfuzzer_sys::fuzz_target;

const MEMLIMIT: u64 = 32 << 20;

fuzz_target!(|input: &[u8]| {
    if input.len() < 6 {
        return;
    }
    let size = (u32::from_le_bytes(input[..4].try_into().unwrap()) as usize) % ((1 << 20) + 1);
    let (piece, pull) = (input[4] as usize % 64 + 1, input[5] as usize * 97 + 1);
    let data = &input[6..];
    let exact = decompress_exact(data, size, MEMLIMIT);
    if let Ok(out) = &exact {
        assert_eq!(out.len(), size);
    }

    let mut d = XzDecoder::new(MEMLIMIT, false).unwrap();
    let mut out = Vec::new();
    let mut failed = false;
    'feed: for c in data.chunks(piece) {
        d.push(c);
        loop {
            match d.pull(pull, &mut out) {
                Ok(0) => break,
                Ok(n) => assert!(n <= pull, "a pull returned more than asked"),
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
            if out.len() > size {
                break 'feed;
            }
        }
    }
    if !failed && out.len() <= size {
        d.finish_input();
        while !d.is_done() && out.len() <= size {
            match d.pull(pull, &mut out) {
                Ok(n) => assert!(n <= pull),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
    }
    // Where the one-shot decode accepted, the stream decoded the same bytes.
    if let Ok(want) = exact {
        assert!(!failed && d.is_done(), "the stream decoder refused what decompress_exact accepted");
        assert_eq!(out, want);
    }
});
