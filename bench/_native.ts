/**
 * The native side of the benchmarks: builds the WASM core and the native
 * `cloudlet-core-bench` binary (core-rs/src/bin/bench.rs), and runs it,
 * either to time a kernel natively or to time a CLI peer with the child's
 * CPU time (`getrusage`), which Node cannot report for a child process.
 */
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { REPO } from "./_corpus.ts";

/** The native benchmark binary. */
export const NATIVE_BIN = join(REPO, "core-rs", "target", "release", "cloudlet-core-bench");

/** One timed run: wall-clock and CPU seconds. */
export interface Sample {
  readonly wall: number;
  readonly cpu: number;
}

/** What the native binary reports for a kernel. */
export interface NativeRun {
  readonly op: string;
  readonly bytes: number;
  readonly wall: number[];
  readonly cpu: number[];
  readonly out_bytes: number;
  readonly check: string;
}

/** What the native binary reports for a command. */
export interface ExecRun {
  readonly wall: number[];
  readonly cpu: number[];
  readonly stdout: string;
}

/**
 * Brings the `.wasm` and the native binary up to date, with the toolchain
 * the project pins (Debian's rustc, never rustup's).
 */
export function buildAll(log: (s: string) => void): void {
  const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ""}`, RUSTC: "/usr/bin/rustc" };
  log("building the WASM core (scripts/build-wasm.sh)");
  execFileSync(join(REPO, "scripts", "build-wasm.sh"), { env, stdio: ["ignore", "ignore", "inherit"] });
  log("building the native twin (cargo build --release --bin cloudlet-core-bench)");
  execFileSync("/usr/bin/cargo", ["build", "-q", "--release", "--bin", "cloudlet-core-bench"], {
    cwd: join(REPO, "core-rs"),
    env,
    stdio: ["ignore", "ignore", "inherit"],
  });
}

/** Options of one native kernel run (see bench.rs for their meaning). */
export interface NativeOpts {
  reps?: number;
  warmup?: number;
  preset?: number;
  dictCap?: number;
  segment?: number;
  size?: number;
}

/** Times kernel `op` natively on `file` (a path, or `zeros:N`). */
export function runNative(op: string, file: string, o: NativeOpts = {}): NativeRun {
  const args = [op, file, "--reps", String(o.reps ?? 1), "--warmup", String(o.warmup ?? 1)];
  if (o.preset !== undefined) args.push("--preset", String(o.preset));
  if (o.dictCap !== undefined) args.push("--dict-cap", String(o.dictCap));
  if (o.segment !== undefined) args.push("--segment", String(o.segment));
  if (o.size !== undefined) args.push("--size", String(o.size));
  return JSON.parse(execFileSync(NATIVE_BIN, args, { encoding: "utf8", maxBuffer: 1 << 20 })) as NativeRun;
}

/** Times `cmd` (stdout to /dev/null unless `capture`). */
export function runExec(cmd: string[], o: { reps?: number; warmup?: number; capture?: boolean } = {}): ExecRun {
  const args = ["exec", "--reps", String(o.reps ?? 1), "--warmup", String(o.warmup ?? 0)];
  if (o.capture) args.push("--capture");
  return JSON.parse(execFileSync(NATIVE_BIN, [...args, "--", ...cmd], { encoding: "utf8", maxBuffer: 1 << 20 })) as ExecRun;
}

/** Median of a non-empty list. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}
