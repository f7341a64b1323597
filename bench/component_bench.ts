/**
 * Component benchmark: the same Rust kernels (core-rs) built two ways, side
 * by side in one Node process:
 *
 *   wasm-bindgen  ts/core/_wasm/ (scripts/build-wasm.sh), through `Core`
 *   component     ts/component/_gen/ (scripts/build-component.sh): wit-bindgen,
 *                 `jco new`, `jco transpile`, through `ComponentCore`
 *
 * Two questions, two tables:
 *   - cost per call: tiny inputs, many calls, so the time is the crossing
 *     (argument lowering, glue, result lifting), not the kernel;
 *   - throughput per byte: 4 KiB chunk hashing, zero detection and XOR over
 *     the corpus, xz -6 on a few MiB, where the copies in and out count.
 *
 *   node --import tsx bench/component_bench.ts [options]     (see --help)
 *   npm run bench -- --bench component
 *   node_modules/@deno/linux-x64-glibc/deno run -A --no-check bench/component_bench.ts [options]
 *
 * Method as in core_bench.ts: CPU time of this process (`--basis wall` for
 * wall-clock), untimed warm-up, reps round-robin across the two builds, the
 * median rep counts, and both builds' outputs must agree.
 * Results: bench/COMPONENT_RESULTS.md.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import { join } from "node:path";
import * as bindgen from "../ts/core/_wasm/cloudlet_core.js";
import { Source } from "../ts/core/core.ts";
import { loadCoreFromDisk } from "../ts/node/core_file.ts";
import { COMPONENT_DIR, loadComponentCoreFromDisk } from "../ts/node/component_file.ts";
import { instantiate as instantiateJcoAsGenerated } from "../ts/component/_gen/cloudlet_core.jco.js";
import { ensureCorpus, REPO } from "./_corpus.ts";
import { describeMachine, machineLines } from "./_machine.ts";
import { median } from "./_native.ts";
import { isMain, parseBenchOptions } from "./_options.ts";

const MiB = 1 << 20;
/** Bytes of the corpus that the xz rows compress and decompress. */
const XZ_BYTES = 4 * MiB;

const USAGE = `usage: node --import tsx bench/component_bench.ts [options]
       npm run bench -- --bench component [options]
  --size MIB        corpus size in MiB for the per-byte rows (default 64)
  --reps N          timed reps of every row (default 5)
  --only ID,..      rows to run, by id or prefix: call-, blake3, sha256, zero, xor, xz-
  --basis cpu|wall  time basis of the tables (default cpu; JSON carries both)
  --json            print one JSON object instead of tables
  --no-build        do not run scripts/build-wasm.sh and scripts/build-component.sh first
  (--xz-reps and --segmented are accepted for bench/run.ts and ignored)`;

/** The two builds, in column order. */
type Build = "bindgen" | "component";
const BUILDS: readonly Build[] = ["bindgen", "component"];

/** One timed run of one build. */
interface Sample {
  readonly wall: number;
  readonly cpu: number;
}

/** A row: the same work through each build. */
interface Row {
  readonly id: string;
  readonly label: string;
  readonly kind: "call" | "bytes";
  /** Calls per rep (call rows) or input bytes per rep (byte rows). */
  readonly units: number;
  /** Runs one rep; returns the output to check (byte rows) or nothing. */
  readonly run: Record<Build, () => Uint8Array | void>;
}

/** Measured numbers of one build in one row. */
interface BuildResult {
  readonly wall: number[];
  readonly cpu: number[];
  /** Call rows: ns per call; byte rows: MB/s (10^6 bytes per second); on the median rep. */
  readonly valueCpu: number;
  readonly valueWall: number;
  /** (max - min) / median of the chosen basis. */
  readonly spread: number;
  /** First 16 bytes of the BLAKE3 of the output, hex (byte rows). */
  readonly check?: string;
}

interface RowResult {
  readonly id: string;
  readonly label: string;
  readonly kind: "call" | "bytes";
  readonly units: number;
  readonly builds: Record<Build, BuildResult>;
  /** Component over wasm-bindgen: time ratio for calls (>1 = slower), speed ratio for bytes (<1 = slower). */
  readonly ratio: number;
  readonly problems: string[];
}

interface Report {
  readonly bench: "component";
  readonly date: string;
  readonly machine: ReturnType<typeof describeMachine>;
  readonly toolchain: Record<string, string>;
  /** The JS runtime this ran in: the bench runs under Node and under Deno. */
  readonly runtime: string;
  readonly corpus: { path: string; bytes: number; sha256: string; description: string };
  readonly basis: "cpu" | "wall";
  readonly reps: number;
  readonly rows: RowResult[];
  readonly loadEnd: number;
}

/** Runs the benchmark with the given command line. */
export async function main(argv: string[]): Promise<void> {
  const opts = parseBenchOptions(argv);
  if (opts.help) {
    console.log(USAGE);
    return;
  }
  const log = (s: string) => process.stderr.write(`component_bench: ${s}\n`);
  if (!opts.noBuild) {
    const env = { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ""}`, RUSTC: "/usr/bin/rustc" };
    for (const script of ["build-wasm.sh", "build-component.sh"]) {
      log(`building (scripts/${script})`);
      execFileSync(join(REPO, "scripts", script), { env, stdio: ["ignore", "ignore", "inherit"] });
    }
  }
  const machine = describeMachine();
  const corpus = ensureCorpus(opts.sizeMiB);
  log(`corpus ${corpus.path} (${corpus.bytes} bytes, sha256 ${corpus.sha256.slice(0, 16)}…)`);
  const data = new Uint8Array(readFileSync(corpus.path));

  const rows = (await buildRows(data, opts.sizeMiB)).filter((r) => opts.only.length === 0 || opts.only.some((p) => r.id.startsWith(p)));
  if (rows.length === 0) throw new Error(`--only ${opts.only.join(",")} matches no row`);
  const check = await checker();
  const results: RowResult[] = [];
  for (const row of rows) {
    log(`${row.id}: ${opts.reps} reps`);
    results.push(measure(row, opts.reps, opts.basis, check));
  }
  const report: Report = {
    bench: "component",
    date: new Date().toISOString(),
    machine,
    toolchain: toolchain(),
    runtime: runtime(),
    corpus: { path: corpus.path.slice(REPO.length), bytes: corpus.bytes, sha256: corpus.sha256, description: corpus.description },
    basis: opts.basis,
    reps: opts.reps,
    rows: results,
    loadEnd: loadavg()[0],
  };
  if (opts.json) console.log(JSON.stringify(report));
  else console.log(formatReport(report).join("\n"));
  if (results.some((r) => r.problems.length > 0)) process.exitCode = 1;
}

async function buildRows(data: Uint8Array, sizeMiB: number): Promise<Row[]> {
  const core = await loadCoreFromDisk();
  const comp = await loadComponentCoreFromDisk();
  const raw = comp.exports;
  // The same component through jco's glue as generated, before
  // scripts/build-component.sh hoists its JCO_DEBUG check.
  const asGenerated = await instantiateJcoAsGenerated(async (name) => WebAssembly.compile(readFileSync(join(COMPONENT_DIR, name))), {});
  const n = data.length;
  const tiny = data.subarray(4096, 4096 + 64);
  const page = data.subarray(8192, 8192 + 4096);
  const tinyB = data.subarray(20000, 20000 + 64);
  // A small index, and one digest that is in it.
  const digests = core.hashChunks("blake3", data.subarray(0, 1024 * 4096));
  const bIdx = core.indexBuilder(1024);
  const cIdx = comp.indexBuilder(1024);
  bIdx.addRun(digests, Source.Disk, 0, 4096);
  cIdx.addRun(digests, Source.Disk, 0, 4096);
  const [bIndex, cIndex] = [bIdx.finish(), cIdx.finish()];
  const oneDigest = digests.subarray(500 * 32, 501 * 32);
  // Decoders that stay alive: is-done is a call with no lists at all.
  const bDecoder = new bindgen.XzDecoderJs(96 * MiB, false);
  const cDecoder = raw.xz.Decoder.create(BigInt(96 * MiB), false);
  const gDecoder = asGenerated.xz.Decoder.create(BigInt(96 * MiB), false);
  // XOR pairs each byte with one half the corpus away, as core_bench does.
  const rotated = new Uint8Array(n);
  rotated.set(data.subarray(n >> 1));
  rotated.set(data.subarray(0, n >> 1), n - (n >> 1));
  const xzIn = data.subarray(0, XZ_BYTES);
  const xz6 = core.xzCompress(xzIn, 6);
  const streamDecode = (d: { push(b: Uint8Array): void; finishInput(): void; pull(max: number): Uint8Array; readonly done: boolean; dispose(): void }) => {
    const out = new Uint8Array(XZ_BYTES);
    let o = 0;
    d.push(xz6);
    d.finishInput();
    while (!d.done) {
      const p = d.pull(MiB);
      out.set(p, o);
      o += p.length;
    }
    d.dispose();
    return out;
  };

  const CALLS = 20_000;
  const call = (id: string, label: string, b: () => unknown, c: () => unknown, calls = CALLS): Row => ({
    id: `call-${id}`,
    label,
    kind: "call",
    units: calls,
    run: {
      bindgen: () => {
        for (let i = 0; i < calls; i++) b();
      },
      component: () => {
        for (let i = 0; i < calls; i++) c();
      },
    },
  });
  const bytes = (id: string, label: string, units: number, b: () => Uint8Array, c: () => Uint8Array): Row => ({ id, label, kind: "bytes", units, run: { bindgen: b, component: c } });

  return [
    call("raw-hash", "raw binding: hash_chunks, 64 B, BLAKE3", () => bindgen.hash_chunks(0, tiny, 4096), () => raw.hashing.hashChunks("blake3", tiny, 4096)),
    call("raw-isdone", "raw binding: decoder is_done (no lists)", () => bDecoder.is_done(), () => cDecoder.isDone()),
    call("raw-jco-hash", "  same, jco glue as generated: hash_chunks 64 B", () => bindgen.hash_chunks(0, tiny, 4096), () => asGenerated.hashing.hashChunks("blake3", tiny, 4096)),
    call("raw-jco-isdone", "  same, jco glue as generated: is_done", () => bDecoder.is_done(), () => gDecoder.isDone()),
    call("hash", "hashChunks, 64 B, BLAKE3", () => core.hashChunks("blake3", tiny), () => comp.hashChunks("blake3", tiny)),
    call("hash-page", "hashChunks, one 4 KiB page, BLAKE3", () => core.hashChunks("blake3", page), () => comp.hashChunks("blake3", page)),
    call("zero", "zeroChunks, one 4 KiB page", () => core.zeroChunks(page), () => comp.zeroChunks(page)),
    call("xor", "xor, 64 B", () => core.xor(tiny, tinyB), () => comp.xor(tiny, tinyB)),
    call("hasher", "hasher: new, update 64 B, digest, free (4 crossings)", () => core.hasher("blake3").update(tiny).digest(), () => comp.hasher("blake3").update(tiny).digest(), CALLS / 4),
    call("lookup", "index lookup, 1 digest", () => bIndex.lookup(oneDigest), () => cIndex.lookup(oneDigest)),
    bytes("blake3-chunks", `BLAKE3, per 4 KiB chunk, ${sizeMiB} MiB`, n, () => core.hashChunks("blake3", data), () => comp.hashChunks("blake3", data)),
    bytes("sha256-chunks", `SHA-256, per 4 KiB chunk, ${sizeMiB} MiB`, n, () => core.hashChunks("sha256", data), () => comp.hashChunks("sha256", data)),
    bytes("zero", `zero detection, ${sizeMiB} MiB`, n, () => core.zeroChunks(data), () => comp.zeroChunks(data)),
    bytes("xor", `XOR delta, ${sizeMiB} MiB`, n, () => core.xor(data, rotated), () => comp.xor(data, rotated)),
    bytes("xz-c6", `xz -6 compress, ${XZ_BYTES / MiB} MiB`, XZ_BYTES, () => core.xzCompress(xzIn, 6), () => comp.xzCompress(xzIn, 6)),
    bytes("xz-d6", `xz decompress (of -6), ${XZ_BYTES / MiB} MiB`, XZ_BYTES, () => core.xzDecompressExact(xz6, XZ_BYTES), () => comp.xzDecompressExact(xz6, XZ_BYTES)),
    bytes("xz-d6-stream", `xz decompress, streaming, 1 MiB pulls, ${XZ_BYTES / MiB} MiB`, XZ_BYTES, () => streamDecode(core.xzDecoder()), () => streamDecode(comp.xzDecoder())),
  ];
}

/** The check of an output: first 16 bytes of its BLAKE3, hex (computed outside the timed region). */
async function checker(): Promise<(out: Uint8Array) => string> {
  const core = await loadCoreFromDisk();
  return (out) => Buffer.from(core.hash("blake3", out).subarray(0, 16)).toString("hex");
}

function timed(fn: () => Uint8Array | void): { sample: Sample; out: Uint8Array | void } {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  const out = fn();
  const wall = (performance.now() - t0) / 1e3;
  const cpu = process.cpuUsage(c0);
  return { sample: { wall, cpu: (cpu.user + cpu.system) / 1e6 }, out };
}

/** Warm-up, then reps round-robin across the builds. */
function measure(row: Row, reps: number, basis: "cpu" | "wall", check: (out: Uint8Array) => string): RowResult {
  for (const b of BUILDS) row.run[b]();
  const samples: Record<Build, Sample[]> = { bindgen: [], component: [] };
  const checks: Partial<Record<Build, string>> = {};
  for (let r = 0; r < reps; r++) {
    for (const b of BUILDS) {
      const { sample, out } = timed(row.run[b]);
      samples[b].push(sample);
      if (r === 0 && out) checks[b] = check(out);
    }
  }
  const value = (seconds: number) => (row.kind === "call" ? (seconds / row.units) * 1e9 : row.units / seconds / 1e6);
  const builds = {} as Record<Build, BuildResult>;
  for (const b of BUILDS) {
    const wall = samples[b].map((s) => s.wall);
    const cpu = samples[b].map((s) => Math.max(1e-9, s.cpu));
    const chosen = basis === "cpu" ? cpu : wall;
    builds[b] = {
      wall,
      cpu,
      valueCpu: value(median(cpu)),
      valueWall: value(median(wall)),
      spread: (Math.max(...chosen) - Math.min(...chosen)) / median(chosen),
      check: checks[b],
    };
  }
  const pick = (b: Build) => (basis === "cpu" ? builds[b].valueCpu : builds[b].valueWall);
  const problems: string[] = [];
  if (checks.bindgen !== checks.component) problems.push(`outputs differ: wasm-bindgen ${checks.bindgen}, component ${checks.component}`);
  return { id: row.id, label: row.label, kind: row.kind, units: row.units, builds, ratio: pick("component") / pick("bindgen"), problems };
}

/** Node, or Deno (whose `process.version` is the Node version it emulates). */
function runtime(): string {
  const deno = (globalThis as { Deno?: { version: { deno: string; v8: string } } }).Deno;
  return deno ? `Deno ${deno.version.deno} (V8 ${deno.version.v8})` : `Node ${process.version} (V8 ${process.versions.v8})`;
}

/** Versions of what produced the two builds. */
function toolchain(): Record<string, string> {
  const version = (pkg: string) => {
    try {
      return JSON.parse(readFileSync(join(REPO, "node_modules", pkg, "package.json"), "utf8")).version as string;
    } catch {
      return "?";
    }
  };
  const crate = (name: string, lock: string) => {
    const m = new RegExp(`name = "${name}"\\nversion = "([^"]+)"`).exec(readFileSync(join(REPO, lock), "utf8"));
    return m?.[1] ?? "?";
  };
  return {
    "wasm-bindgen": crate("wasm-bindgen", "core-rs/Cargo.lock"),
    "wit-bindgen": crate("wit-bindgen", "core-component/Cargo.lock"),
    jco: version("@bytecodealliance/jco"),
    "jco-transpile": version("@bytecodealliance/jco-transpile"),
    binaryen: version("binaryen"),
  };
}

function formatReport(r: Report): string[] {
  const out: string[] = [];
  out.push(`cloudlet component benchmark, ${r.date.slice(0, 16).replace("T", " ")} UTC`);
  out.push(...machineLines(r.machine));
  out.push(`runtime: ${r.runtime}`);
  out.push(`builds:  ${Object.entries(r.toolchain).map(([k, v]) => `${k} ${v}`).join(", ")}`);
  out.push(`data:    ${r.corpus.path}: ${r.corpus.bytes} bytes, sha256 ${r.corpus.sha256.slice(0, 16)}…`);
  out.push(`timing:  ${r.basis === "cpu" ? "CPU" : "wall-clock"} time, median of ${r.reps} reps after a warm-up, the two builds round-robin`);
  const mark = (b: BuildResult) => (b.spread > 0.1 ? "~" : "") + (isContended(b) ? "*" : "");
  const v = (b: BuildResult, digits: number) => (r.basis === "cpu" ? b.valueCpu : b.valueWall).toFixed(digits);
  const calls = r.rows.filter((x) => x.kind === "call");
  if (calls.length) {
    out.push("", "cost per call, ns (lower is better)", "");
    const lines = [["call", "wasm-bindgen", "component", "component / wasm-bindgen"]];
    for (const x of calls) lines.push([x.label, v(x.builds.bindgen, 0) + mark(x.builds.bindgen), v(x.builds.component, 0) + mark(x.builds.component), `${x.ratio.toFixed(1)}x the time`]);
    out.push(...markdownTable(lines));
  }
  const bytes = r.rows.filter((x) => x.kind === "bytes");
  if (bytes.length) {
    out.push("", "throughput, MB/s (10^6 input bytes per second; decoded bytes for decompression)", "");
    const lines = [["kernel", "wasm-bindgen", "component", "component / wasm-bindgen"]];
    for (const x of bytes) lines.push([x.label, fmtMbps(r.basis === "cpu" ? x.builds.bindgen.valueCpu : x.builds.bindgen.valueWall) + mark(x.builds.bindgen), fmtMbps(r.basis === "cpu" ? x.builds.component.valueCpu : x.builds.component.valueWall) + mark(x.builds.component), `${x.ratio.toFixed(2)}x`]);
    out.push(...markdownTable(lines));
  }
  out.push("", "~ reps spread more than 10% around the median;  * wall-clock more than 1.15x CPU time (contended run)");
  out.push(`1-min load average: ${r.machine.loadStart.toFixed(2)} at start, ${r.loadEnd.toFixed(2)} at the end`);
  for (const x of r.rows) for (const p of x.problems) out.push(`CHECK FAILED in ${x.id}: ${p}`);
  return out;
}

function isContended(b: BuildResult): boolean {
  return median(b.wall) > 1.15 * median(b.cpu);
}

function fmtMbps(v: number): string {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

function markdownTable(rows: string[][]): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]) => `| ${r.map((s, c) => (c === 0 ? s.padEnd(widths[c]) : s.padStart(widths[c]))).join(" | ")} |`;
  const rule = `|${widths.map((w, c) => (c === 0 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  return [line(rows[0]), rule, ...rows.slice(1).map(line)];
}

if (isMain(import.meta.url)) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    console.error(`component_bench: ${(e as Error).message}`);
    process.exitCode = 1;
  });
}
