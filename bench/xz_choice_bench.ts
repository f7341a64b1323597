/**
 * The xz choice, reproducible (docs/xz.md): C liblzma, which core-rs uses,
 * against the pure-Rust lzma-rust2, both compiled from one harness crate
 * (bench/xz_choice) with the same calls, natively and to WASM, on the bench
 * corpus; with the xz CLI as the reference. Prints MB/s (CPU time) and the
 * ratios lzma-rust2 / liblzma, and checks every stream: round trip, each
 * codec reading the other's output, and `xz -d` reading both.
 *
 *   node --import tsx bench/xz_choice_bench.ts [--size 64] [--presets 1,6] [--reps 3] [--json] [--no-build]
 *   npm run bench -- --bench xz_choice --presets 6
 */
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { ensureCorpus, REPO } from "./_corpus.ts";
import { describeMachine, machineLines } from "./_machine.ts";
import { buildAll, median, runExec } from "./_native.ts";
import { isMain } from "./_options.ts";

const CRATE = join(REPO, "bench", "xz_choice");
const NATIVE = join(CRATE, "target", "release", "xz-choice");
const WASM_RAW = join(CRATE, "target", "wasm32-unknown-unknown", "release", "xz_choice.wasm");
const WASM = join(CRATE, "target", "xz_choice.opt.wasm");
const CODECS = ["liblzma", "lzma-rust2"] as const;
type CodecName = (typeof CODECS)[number];

interface Timing {
  compressCpu: number[];
  decompressCpu: number[];
  xzBytes: number;
}

interface PresetResult {
  preset: number;
  wasm: Record<CodecName, Timing>;
  native: Record<CodecName, Timing>;
  cli: { compressCpu: number[]; decompressCpu: number[]; xzBytes: number };
  checks: { roundTrip: boolean; crossDecode: boolean; xzCliReads: boolean };
}

/** Builds the harness natively and for wasm32 (then wasm-opt -O3, as scripts/build-wasm.sh does for the core). */
function build(log: (s: string) => void): void {
  const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ""}`, RUSTC: "/usr/bin/rustc" };
  log("building bench/xz_choice (native and wasm32)");
  execFileSync("/usr/bin/cargo", ["build", "-q", "--release", "--bin", "xz-choice"], { cwd: CRATE, env, stdio: ["ignore", "ignore", "inherit"] });
  execFileSync("/usr/bin/cargo", ["build", "-q", "--release", "--lib", "--target", "wasm32-unknown-unknown"], { cwd: CRATE, env, stdio: ["ignore", "ignore", "inherit"] });
  execFileSync(join(REPO, "node_modules", ".bin", "wasm-opt"), ["-O3", "--enable-simd", "--enable-bulk-memory", "--enable-nontrapping-float-to-int", "--enable-sign-ext", "--enable-mutable-globals", WASM_RAW, "-o", WASM], { stdio: ["ignore", "ignore", "inherit"] });
}

/** The harness's C ABI, instantiated fresh (no imports: liblzma's C runs on the crate's own allocator shims). */
function instantiate(): { compress(codec: number, preset: number, data: Uint8Array): Uint8Array; decompress(codec: number, xz: Uint8Array, size: number): Uint8Array } {
  const inst = new WebAssembly.Instance(new WebAssembly.Module(readFileSync(WASM)), {});
  const x = inst.exports as unknown as {
    memory: WebAssembly.Memory;
    buf_alloc(n: number): number;
    buf_free(p: number, n: number): void;
    result_ptr(): number;
    xz_compress(c: number, preset: number, p: number, n: number): number;
    xz_decompress(c: number, p: number, n: number, size: number): number;
  };
  const call = (input: Uint8Array, f: (p: number) => number, what: string): Uint8Array => {
    const p = x.buf_alloc(input.length);
    new Uint8Array(x.memory.buffer, p, input.length).set(input);
    const n = f(p);
    x.buf_free(p, input.length);
    if (n < 0) throw new Error(`${what} failed in WASM`);
    return new Uint8Array(x.memory.buffer, x.result_ptr(), n).slice();
  };
  return {
    compress: (c, preset, data) => call(data, (p) => x.xz_compress(c, preset, p, data.length), "compress"),
    decompress: (c, xz, size) => call(xz, (p) => x.xz_decompress(c, p, xz.length, size), "decompress"),
  };
}

function cpuSeconds(f: () => void): number {
  const t = process.cpuUsage();
  f();
  const d = process.cpuUsage(t);
  return (d.user + d.system) / 1e6;
}

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

/** Runs every measurement for one preset. */
function measure(corpusPath: string, preset: number, reps: number, log: (s: string) => void): PresetResult {
  const data = new Uint8Array(readFileSync(corpusPath));
  const want = sha(data);
  const wasm = {} as Record<CodecName, Timing>;
  const streams: Record<CodecName, Uint8Array> = { liblzma: new Uint8Array(0), "lzma-rust2": new Uint8Array(0) };
  let roundTrip = true;
  CODECS.forEach((name, c) => {
    log(`  WASM ${name} -${preset}`);
    // A fresh instance per codec, and an untimed warm-up so that V8 has tiered up.
    const w = instantiate();
    w.decompress(c, w.compress(c, preset, data.subarray(0, 4 << 20)), 4 << 20);
    const compressCpu: number[] = [];
    const decompressCpu: number[] = [];
    for (let r = 0; r < reps; r++) compressCpu.push(cpuSeconds(() => (streams[name] = w.compress(c, preset, data))));
    for (let r = 0; r < reps; r++) {
      let back: Uint8Array = new Uint8Array(0);
      decompressCpu.push(cpuSeconds(() => (back = w.decompress(c, streams[name], data.length))));
      roundTrip &&= sha(back) === want;
    }
    wasm[name] = { compressCpu, decompressCpu, xzBytes: streams[name].length };
  });
  // Each codec reads the other's stream, and the xz CLI reads both.
  const w = instantiate();
  const crossDecode = sha(w.decompress(1, streams.liblzma, data.length)) === want && sha(w.decompress(0, streams["lzma-rust2"], data.length)) === want;
  let xzCliReads = true;
  for (const name of CODECS) {
    const f = join(REPO, ".build", "bench-data", `xz-choice-${name}.p${preset}.xz`);
    writeFileSync(f, streams[name]);
    xzCliReads &&= execFileSync("bash", ["-c", `xz -d -c '${f}' | sha256sum`], { encoding: "utf8" }).startsWith(want);
  }
  log(`  native -${preset}`);
  const nat = JSON.parse(execFileSync(NATIVE, [corpusPath, String(preset), String(reps)], { encoding: "utf8" }));
  const native = {} as Record<CodecName, Timing>;
  for (const name of CODECS) native[name] = { compressCpu: nat[name].compress_cpu_s, decompressCpu: nat[name].decompress_cpu_s, xzBytes: nat[name].xz_bytes };
  log(`  xz CLI -${preset}`);
  const cliXz = join(REPO, ".build", "bench-data", `xz-choice-cli.p${preset}.xz`);
  const c = runExec(["bash", "-c", `xz -z -T1 -${preset} -c '${corpusPath}' > '${cliXz}'`], { reps });
  const d = runExec(["xz", "-d", "-T1", "-c", cliXz], { reps });
  return {
    preset,
    wasm,
    native,
    cli: { compressCpu: c.cpu, decompressCpu: d.cpu, xzBytes: readFileSync(cliXz).length },
    checks: { roundTrip: roundTrip && nat.cross_decode === true, crossDecode, xzCliReads },
  };
}

function table(results: PresetResult[], bytes: number): string {
  const mbs = (s: number[]) => bytes / 1e6 / median(s);
  const f = (n: number) => n.toFixed(1).padStart(7);
  const r = (a: number, b: number) => `${(a / b).toFixed(2)}x`.padStart(6);
  const lines = [
    "MB/s of uncompressed data per CPU second (median); ratio = lzma-rust2 / liblzma; vs CLI = liblzma WASM / xz CLI",
    "",
    "| preset | op | liblzma WASM | lzma-rust2 WASM | ratio | liblzma native | lzma-rust2 native | ratio | xz CLI | liblzma WASM / CLI |",
    "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ];
  for (const x of results) {
    for (const op of ["compress", "decompress"] as const) {
      const k = op === "compress" ? "compressCpu" : "decompressCpu";
      const lw = mbs(x.wasm.liblzma[k]);
      const rw = mbs(x.wasm["lzma-rust2"][k]);
      const ln = mbs(x.native.liblzma[k]);
      const rn = mbs(x.native["lzma-rust2"][k]);
      const cli = mbs(x.cli[k]);
      lines.push(`| -${x.preset} | ${op} | ${f(lw)} | ${f(rw)} | ${r(rw, lw)} | ${f(ln)} | ${f(rn)} | ${r(rn, ln)} | ${f(cli)} | ${r(lw, cli)} |`);
    }
    const pct = (n: number) => `${((100 * n) / bytes).toFixed(2)}%`;
    lines.push(`| -${x.preset} | size | ${pct(x.wasm.liblzma.xzBytes)} | ${pct(x.wasm["lzma-rust2"].xzBytes)} | | | | | ${pct(x.cli.xzBytes)} | |`);
  }
  lines.push("");
  for (const x of results) {
    const ok = x.checks.roundTrip && x.checks.crossDecode && x.checks.xzCliReads;
    lines.push(`-${x.preset} checks: round trip ${x.checks.roundTrip}, each reads the other's stream ${x.checks.crossDecode}, xz -d reads both ${x.checks.xzCliReads}${ok ? "" : "  CHECK FAILED"}`);
  }
  return lines.join("\n");
}

/** Runs the module with `argv`. */
export function main(argv: string[]): number {
  const { values: v } = parseArgs({
    args: argv,
    options: { size: { type: "string", default: "64" }, presets: { type: "string", default: "1,6" }, reps: { type: "string", default: "3" }, json: { type: "boolean", default: false }, "no-build": { type: "boolean", default: false }, help: { type: "boolean", short: "h", default: false } },
    strict: true,
  });
  if (v.help) {
    console.log("usage: node --import tsx bench/xz_choice_bench.ts [--size MIB] [--presets 1,6] [--reps N] [--json] [--no-build]");
    return 0;
  }
  const log = (s: string) => process.stderr.write(`xz_choice: ${s}\n`);
  const presets = v.presets!.split(",").map(Number);
  if (presets.some((p) => !Number.isInteger(p) || p < 0 || p > 9)) throw new Error(`--presets takes 0-9, got ${v.presets}`);
  const reps = Number(v.reps);
  if (!v["no-build"]) {
    buildAll(log); // the native peer-timer (cloudlet-core-bench exec)
    build(log);
  }
  const corpus = ensureCorpus(Number(v.size));
  const machine = describeMachine();
  const results = presets.map((p) => measure(corpus.path, p, reps, log));
  const failed = results.some((x) => !(x.checks.roundTrip && x.checks.crossDecode && x.checks.xzCliReads));
  if (v.json) console.log(JSON.stringify({ module: "xz_choice", machine, corpus, results }));
  else console.log([...machineLines(machine), `data:    ${corpus.description}, sha256 ${corpus.sha256}`, "", table(results, corpus.bytes)].join("\n"));
  return failed ? 1 : 0;
}

if (isMain(import.meta.url)) process.exitCode = main(process.argv.slice(2));
