//! Native driver: `xz-choice FILE PRESET REPS` times both codecs on FILE and
//! prints one JSON object (CPU seconds per rep, sizes, and whether every
//! stream decoded back to the input and was readable by the other codec).

use std::time::Duration;
use xz_choice::{compress, decompress, Codec};

fn cpu() -> Duration {
    let mut ru: libc_rusage = unsafe { std::mem::zeroed() };
    unsafe { getrusage(0, &mut ru) };
    let t = |tv: [i64; 2]| Duration::new(tv[0] as u64, tv[1] as u32 * 1000);
    t(ru.utime) + t(ru.stime)
}

#[repr(C)]
struct libc_rusage {
    utime: [i64; 2],
    stime: [i64; 2],
    rest: [i64; 14],
}
extern "C" {
    fn getrusage(who: i32, usage: *mut libc_rusage) -> i32;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let data = std::fs::read(&args[1]).expect("read FILE");
    let preset: u32 = args[2].parse().expect("PRESET");
    let reps: usize = args[3].parse().expect("REPS");
    let mut rows = Vec::new();
    let mut streams = Vec::new();
    for (name, codec) in [("liblzma", Codec::Liblzma), ("lzma-rust2", Codec::LzmaRust2)] {
        let mut c_times = Vec::new();
        let mut xz = Vec::new();
        for _ in 0..reps {
            let t = cpu();
            xz = compress(codec, &data, preset).expect("compress");
            c_times.push((cpu() - t).as_secs_f64());
        }
        let mut d_times = Vec::new();
        for _ in 0..reps {
            let t = cpu();
            let back = decompress(codec, &xz, data.len()).expect("decompress");
            d_times.push((cpu() - t).as_secs_f64());
            assert!(back == data, "{name}: round trip differs");
        }
        rows.push(format!("\"{name}\":{{\"compress_cpu_s\":{c_times:?},\"decompress_cpu_s\":{d_times:?},\"xz_bytes\":{}}}", xz.len()));
        streams.push(xz);
    }
    // Interoperability: each codec reads the other's stream.
    let cross = decompress(Codec::LzmaRust2, &streams[0], data.len()).map(|b| b == data).unwrap_or(false)
        && decompress(Codec::Liblzma, &streams[1], data.len()).map(|b| b == data).unwrap_or(false);
    println!("{{\"bytes\":{},\"preset\":{preset},{},\"cross_decode\":{cross}}}", data.len(), rows.join(","));
}
