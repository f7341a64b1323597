//! `cloudlet-core-bench`: the native twin of the WASM kernels, timed.
//!
//! `bench/core_bench.ts` spawns this binary to get the native column of its
//! table: the same crate, the same kernels, built for the host CPU's
//! baseline (x86-64; BLAKE3 and SHA-256 still pick AVX2 / SHA-NI at run
//! time). It also times the CLI peers (`exec`), so that every number in the
//! table comes from the same two clocks:
//!
//! * `wall`: monotonic wall time of the timed region;
//! * `cpu`:  user+system CPU time of this process (`getrusage(RUSAGE_SELF)`;
//!   the kernels run on one thread), or, for `exec`, of the child
//!   (`RUSAGE_CHILDREN`). The Node side reads the same clock
//!   (`process.cpuUsage()`). CPU time is robust to other load on a shared
//!   machine; wall time is not. (`/proc/thread-self/schedstat` is not used:
//!   for the running thread it lags by up to a scheduler tick, 4 ms here.)
//!
//! ```text
//! cloudlet-core-bench OP FILE [--reps N] [--warmup N] [--preset P]
//!                             [--dict-cap BYTES] [--segment BYTES] [--size BYTES] [--out PATH]
//! cloudlet-core-bench exec [--reps N] [--warmup N] [--stdout PATH | --capture] -- CMD [ARGS...]
//!
//! OP:   blake3-chunks | blake3 | sha256-chunks | sha256 | zero | xor | xz-compress | xz-decompress
//! FILE: a path, or `zeros:N` for N zero bytes held in memory
//! ```
//!
//! Prints one JSON object on stdout:
//! `{"op":..,"bytes":..,"wall":[s..],"cpu":[s..],"out_bytes":..,"check":".."}`
//! where `bytes` is the input size each rep processes (the decoded size for
//! `xz-decompress`) and `check` is the BLAKE3 of the output, truncated, so
//! the caller can confirm that WASM and native computed the same thing.

use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use cloudlet_core::chunk::{self, Algorithm};
use cloudlet_core::{delta, xz, zero};

/// Chunk size of the batched kernels: a disk block or a memory page.
const CHUNK: usize = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("-h" | "--help") => {
            eprintln!("{}", USAGE);
            return ExitCode::from(2);
        }
        Some("exec") => run_exec(&args[1..]),
        Some(_) => run_kernel(&args),
    };
    match result {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cloudlet-core-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cloudlet-core-bench OP FILE [--reps N] [--warmup N] [--preset P] [--dict-cap B] [--segment B] [--size B] [--out PATH]
       cloudlet-core-bench exec [--reps N] [--warmup N] [--stdout PATH | --capture] -- CMD [ARGS...]
OP: blake3-chunks | blake3 | sha256-chunks | sha256 | zero | xor | xz-compress | xz-decompress
FILE: a path, or zeros:N for N zero bytes";

/// Options shared by both modes; each mode reads the ones it needs.
struct Opts {
    reps: usize,
    warmup: usize,
    preset: u32,
    dict_cap: u32,
    segment: usize,
    size: usize,
    out: Option<String>,
    stdout: Option<String>,
    capture: bool,
    rest: Vec<String>,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts { reps: 5, warmup: 1, preset: 6, dict_cap: 0, segment: 0, size: 0, out: None, stdout: None, capture: false, rest: Vec::new() };
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            o.rest.extend_from_slice(&args[i + 1..]);
            break;
        }
        if a == "--capture" {
            o.capture = true;
            i += 1;
            continue;
        }
        if !a.starts_with("--") {
            o.rest.push(args[i].clone());
            i += 1;
            continue;
        }
        let v = args.get(i + 1).ok_or_else(|| format!("{a} needs a value"))?;
        let num = || v.parse::<usize>().map_err(|_| format!("{a}: not a number: {v}"));
        match a {
            "--reps" => o.reps = num()?.max(1),
            "--warmup" => o.warmup = num()?,
            "--preset" => o.preset = num()? as u32,
            "--dict-cap" => o.dict_cap = num()? as u32,
            "--segment" => o.segment = num()?,
            "--size" => o.size = num()?,
            "--out" => o.out = Some(v.clone()),
            "--stdout" => o.stdout = Some(v.clone()),
            _ => return Err(format!("unknown option {a}\n{USAGE}")),
        }
        i += 2;
    }
    Ok(o)
}

fn load_input(spec: &str) -> Result<Vec<u8>, String> {
    if let Some(n) = spec.strip_prefix("zeros:") {
        let n: usize = n.parse().map_err(|_| format!("bad size in {spec}"))?;
        return Ok(vec![0; n]);
    }
    std::fs::read(spec).map_err(|e| format!("cannot read {spec}: {e}"))
}

/// First 16 bytes of the BLAKE3 of `bytes`, hex.
fn check_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).as_bytes()[..16].iter().map(|b| format!("{b:02x}")).collect()
}

fn json_list(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| if x.is_finite() { format!("{x:.6}") } else { "null".into() }).collect();
    format!("[{}]", items.join(","))
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs `f` `warmup` times untimed, then `reps` times timed; returns the
/// timings and the output of the last run.
fn time_reps<T>(warmup: usize, reps: usize, mut f: impl FnMut() -> Result<T, String>) -> Result<(Vec<f64>, Vec<f64>, T), String> {
    for _ in 0..warmup {
        std::hint::black_box(f()?);
    }
    let (mut wall, mut cpu) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
    let mut last = None;
    for _ in 0..reps {
        let (t0, c0) = (Instant::now(), process_cpu());
        let out = std::hint::black_box(f()?);
        cpu.push(process_cpu() - c0);
        wall.push(t0.elapsed().as_secs_f64());
        last = Some(out);
    }
    Ok((wall, cpu, last.expect("reps >= 1")))
}

fn run_kernel(args: &[String]) -> Result<String, String> {
    let op = args[0].as_str();
    const OPS: [&str; 8] = ["blake3-chunks", "blake3", "sha256-chunks", "sha256", "zero", "xor", "xz-compress", "xz-decompress"];
    if !OPS.contains(&op) {
        return Err(format!("unknown op {op}\n{USAGE}"));
    }
    let o = parse_opts(&args[1..])?;
    let [file] = o.rest.as_slice() else {
        return Err(format!("{op} takes exactly one FILE\n{USAGE}"));
    };
    let data = load_input(file)?;
    let hash_alg = |name: &str| if name.starts_with("blake3") { Algorithm::Blake3 } else { Algorithm::Sha256 };

    let (bytes, (wall, cpu, out)) = match op {
        "blake3-chunks" | "sha256-chunks" => {
            let alg = hash_alg(op);
            let mut digests = Vec::with_capacity(data.len().div_ceil(CHUNK) * chunk::DIGEST_LEN);
            let r = time_reps(o.warmup, o.reps, || {
                digests.clear();
                chunk::hash_chunks(alg, &data, CHUNK, &mut digests);
                Ok(digests.clone())
            })?;
            (data.len(), r)
        }
        "blake3" | "sha256" => {
            let alg = hash_alg(op);
            (data.len(), time_reps(o.warmup, o.reps, || Ok(chunk::hash(alg, &data).to_vec()))?)
        }
        "zero" => {
            let mut flags = Vec::with_capacity(data.len().div_ceil(CHUNK));
            let r = time_reps(o.warmup, o.reps, || {
                flags.clear();
                zero::zero_chunks(&data, CHUNK, &mut flags);
                Ok(flags.clone())
            })?;
            (data.len(), r)
        }
        "xor" => {
            // The base is the input rotated by half its length, so every
            // byte pairs with an unrelated one; the output buffer is reused
            // (and so already faulted in), as a caller of the kernel would.
            let half = data.len() / 2;
            let base: Vec<u8> = data[half..].iter().chain(&data[..half]).copied().collect();
            let mut out = vec![0u8; data.len()];
            let r = time_reps(o.warmup, o.reps, || {
                delta::xor(&data, &base, &mut out);
                Ok(())
            })?;
            (data.len(), (r.0, r.1, out))
        }
        "xz-compress" => {
            let seg = if o.segment == 0 { data.len().max(1) } else { o.segment };
            let r = time_reps(o.warmup, o.reps, || {
                let mut all = Vec::with_capacity(data.len() / 3 + 1024);
                for piece in data.chunks(seg) {
                    all.extend_from_slice(&xz::compress(piece, o.preset, o.dict_cap).map_err(|e| e.to_string())?);
                }
                Ok(all)
            })?;
            if let Some(path) = &o.out {
                std::fs::write(path, &r.2).map_err(|e| format!("cannot write {path}: {e}"))?;
            }
            (data.len(), r)
        }
        "xz-decompress" => {
            if o.size == 0 {
                return Err("xz-decompress needs --size (the decoded size)".into());
            }
            let r = time_reps(o.warmup, o.reps, || xz::decompress_exact(&data, o.size, xz::DEFAULT_MEMLIMIT).map_err(|e| e.to_string()))?;
            (o.size, r)
        }
        _ => return Err(format!("unknown op {op}\n{USAGE}")),
    };
    Ok(format!(
        "{{\"op\":{},\"bytes\":{},\"wall\":{},\"cpu\":{},\"out_bytes\":{},\"check\":\"{}\"}}",
        json_str(op),
        bytes,
        json_list(&wall),
        json_list(&cpu),
        out.len(),
        check_of(&out)
    ))
}

/// `struct rusage` on 64-bit Linux: two timevals, then 14 longs we ignore.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
#[repr(C)]
struct Rusage {
    utime: [i64; 2],
    stime: [i64; 2],
    _rest: [i64; 14],
}

#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
extern "C" {
    fn getrusage(who: i32, usage: *mut Rusage) -> i32;
}

/// Seconds of user+system CPU time used by `who` (0: this process, -1: its
/// waited-for children), with microsecond resolution.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn rusage_cpu(who: i32) -> f64 {
    let mut r = Rusage { utime: [0; 2], stime: [0; 2], _rest: [0; 14] };
    // SAFETY: `r` has the layout of `struct rusage` on this target and outlives the call.
    if unsafe { getrusage(who, &mut r) } != 0 {
        return f64::NAN;
    }
    let tv = |t: [i64; 2]| t[0] as f64 + t[1] as f64 / 1e6;
    tv(r.utime) + tv(r.stime)
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn rusage_cpu(_who: i32) -> f64 {
    f64::NAN
}

/// CPU seconds used by this process so far.
fn process_cpu() -> f64 {
    rusage_cpu(0)
}

/// CPU seconds used by all waited-for children so far.
fn children_cpu() -> f64 {
    rusage_cpu(-1)
}

/// Times a command: wall time from spawn to exit, and the child's CPU time.
/// Process start-up is included; the caller measures it separately (e.g.
/// with `CMD --version`) and subtracts it.
fn run_exec(args: &[String]) -> Result<String, String> {
    let o = parse_opts(args)?;
    let (prog, cmd_args) = o.rest.split_first().ok_or_else(|| format!("exec needs a command after --\n{USAGE}"))?;
    let mut captured = Vec::new();
    let run = || -> Result<Vec<u8>, String> {
        let mut c = Command::new(prog);
        c.args(cmd_args).stdin(Stdio::null());
        if o.capture {
            c.stdout(Stdio::piped());
        } else if let Some(path) = &o.stdout {
            c.stdout(std::fs::File::create(path).map_err(|e| format!("cannot create {path}: {e}"))?);
        } else {
            c.stdout(Stdio::null());
        }
        let out = c.output().map_err(|e| format!("cannot run {prog}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{prog} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(out.stdout)
    };
    for _ in 0..o.warmup {
        run()?;
    }
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..o.reps {
        let (t0, c0) = (Instant::now(), children_cpu());
        captured = run()?;
        wall.push(t0.elapsed().as_secs_f64());
        cpu.push(children_cpu() - c0);
    }
    let cmd: Vec<String> = o.rest.iter().map(|s| json_str(s)).collect();
    Ok(format!(
        "{{\"op\":\"exec\",\"cmd\":[{}],\"wall\":{},\"cpu\":{},\"stdout\":{}}}",
        cmd.join(","),
        json_list(&wall),
        json_list(&cpu),
        json_str(String::from_utf8_lossy(&captured[..captured.len().min(4096)]).trim())
    ))
}
