//! xz streams: round trips, interop with the `xz` tool, and bad input.

use cloudlet_core::vectors::input;
use cloudlet_core::xz::{compress, decompress_exact, XzDecoder, XzEncoder, XzError, DEFAULT_MEMLIMIT};
use std::io::Write;
use std::process::{Command, Stdio};

fn xz_tool(args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut child = Command::new("xz").args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("xz tool");
    let mut sin = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || sin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "xz {args:?} failed");
    out.stdout
}

fn stream_decode(xz: &[u8], in_step: usize, out_step: usize) -> Result<Vec<u8>, XzError> {
    let mut d = XzDecoder::new(DEFAULT_MEMLIMIT, false)?;
    let mut out = Vec::new();
    for piece in xz.chunks(in_step.max(1)) {
        d.push(piece);
        while d.pull(out_step, &mut out)? > 0 {}
    }
    d.finish_input();
    while !d.is_done() {
        if d.pull(out_step, &mut out)? == 0 && !d.is_done() {
            return Err(XzError::Truncated);
        }
    }
    Ok(out)
}

#[test]
fn round_trip_various_inputs_and_presets() {
    for (pattern, len) in [("random", 0usize), ("random", 1), ("mixed", 100_000), ("zero", 1 << 20), ("mixed", (1 << 20) + 3)] {
        let data = input(pattern, 3, len);
        for preset in [0, 1, 6, 9] {
            let z = compress(&data, preset, 1 << 20).unwrap();
            assert_eq!(decompress_exact(&z, data.len(), DEFAULT_MEMLIMIT).unwrap(), data, "{pattern}/{len}/-{preset}");
            assert_eq!(stream_decode(&z, 1000, 777).unwrap(), data);
        }
    }
}

#[test]
fn xz_tool_reads_ours_and_we_read_the_tools() {
    let data = input("mixed", 9, 3 << 20);
    let ours = compress(&data, 6, 0).unwrap();
    assert_eq!(xz_tool(&["-d", "-c"], &ours), data);
    // Default xz output and a preset with a larger dictionary than our cap.
    for args in [vec!["-z", "-c", "-T1"], vec!["-z", "-c", "-9", "-T1"], vec!["-z", "-c", "-1", "--check=sha256"]] {
        let theirs = xz_tool(&args, &data);
        assert_eq!(stream_decode(&theirs, 1, 4096).unwrap(), data, "{args:?} byte-at-a-time");
        assert_eq!(stream_decode(&theirs, 65536, 1 << 20).unwrap(), data, "{args:?}");
    }
}

#[test]
fn streaming_encoder_equals_one_shot() {
    let data = input("mixed", 4, 2 << 20);
    let mut e = XzEncoder::new(6, 1 << 20).unwrap();
    let mut out = Vec::new();
    for piece in data.chunks(12345) {
        e.push(piece, &mut out).unwrap();
    }
    e.finish(&mut out).unwrap();
    assert_eq!(out, compress(&data, 6, 1 << 20).unwrap());
}

#[test]
fn bad_input_is_refused() {
    let data = input("mixed", 5, 300_000);
    let z = compress(&data, 6, 0).unwrap();
    assert_eq!(decompress_exact(&z[..z.len() - 10], data.len(), DEFAULT_MEMLIMIT), Err(XzError::Truncated));
    assert_eq!(decompress_exact(&z, data.len() + 1, DEFAULT_MEMLIMIT), Err(XzError::TooShort));
    assert_eq!(decompress_exact(&z, data.len() - 1, DEFAULT_MEMLIMIT), Err(XzError::TooLong));
    let mut flipped = z.clone();
    flipped[z.len() / 2] ^= 0x10;
    assert!(decompress_exact(&flipped, data.len(), DEFAULT_MEMLIMIT).is_err());
    assert_eq!(decompress_exact(b"not xz at all", 5, DEFAULT_MEMLIMIT), Err(XzError::NotXz));
    let mut trailing = z.clone();
    trailing.extend_from_slice(b"junk");
    assert_eq!(decompress_exact(&trailing, data.len(), DEFAULT_MEMLIMIT), Err(XzError::TrailingData));
    // A -9 stream claims a 64 MiB dictionary: a 16 MiB limit refuses it.
    let big = xz_tool(&["-z", "-c", "-9", "-T1"], &data);
    assert_eq!(decompress_exact(&big, data.len(), 16 << 20), Err(XzError::MemLimit));
    assert_eq!(XzEncoder::new(10, 0).err(), Some(XzError::BadPreset));
}
