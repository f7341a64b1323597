/**
 * Core kernel benchmark: the WASM core under Node against the native build
 * of the same crate, hash-wasm, and the b3sum / sha256sum / xz CLIs,
 * measured side by side in one run on one stated corpus.
 *
 *   npm run bench                               (all modules, this one first)
 *   node --import tsx bench/core_bench.ts [options]   (see bench/_options.ts)
 *
 * How it measures (bench/README.md has the full story):
 *   - every implementation processes the same bytes; each row runs its
 *     implementations round-robin, rep by rep, so drift in machine load hits
 *     all of them alike; the median rep counts;
 *   - WASM is the public `Core` API (input copied into WASM memory in 4 MiB
 *     slices, results copied out), after an untimed warm-up so V8 has tiered
 *     the code up; native is the kernel on a buffer already in memory;
 *   - time is CPU time of the process (`process.cpuUsage()` here, `getrusage`
 *     in the native binary; children's `getrusage` for CLIs) by default, or
 *     wall-clock with `--basis wall`; JSON carries both;
 *   - a CLI's process start-up (median of `TOOL --version`) is subtracted;
 *   - every output is checked: WASM, native, hash-wasm and the CLIs must agree.
 */
import { readFileSync } from "node:fs";
import { loadavg } from "node:os";
import { createBLAKE3, createSHA256, type IHasher } from "hash-wasm";
import type { Core } from "../ts/core/core.ts";
import { loadCoreFromDisk } from "../ts/node/core_file.ts";
import { type Corpus, ensureCorpus, ensureXz, REPO } from "./_corpus.ts";
import { describeMachine, type Machine, machineLines } from "./_machine.ts";
import { buildAll, median, runExec, runNative, type Sample } from "./_native.ts";
import { type BenchOptions, isMain, parseBenchOptions, USAGE } from "./_options.ts";

/** The implementations a row can compare, in table order. */
type Impl = "wasm" | "native" | "hash-wasm" | "cli";
const IMPLS: readonly Impl[] = ["wasm", "native", "hash-wasm", "cli"];

const CHUNK = 4096;
const MiB = 1 << 20;

/** One timed run; `check` identifies the output (first 16 bytes of its BLAKE3, hex). */
interface Run extends Sample {
  readonly check?: string;
  readonly outBytes?: number;
}

/** One implementation in a row. */
interface Contender {
  /** Runs once, timed. `wantCheck`: also compute the output's check (untimed). */
  run(wantCheck: boolean): Run;
  /** Runs untimed before the first rep (V8 tier-up, page cache, start-up cost). */
  warm?(): void;
  /** Process start-up time, subtracted from every run (CLIs). */
  startup?: Sample;
  /** The check of the output when it was computed outside the timed runs. */
  check?: string;
  outBytes?: number;
}

/** What a row must reach to meet its target (reported, never asserted). */
interface Target {
  readonly vs: "native" | "cli";
  readonly min: number;
}

/** A line of the table. */
interface Row {
  readonly id: string;
  readonly label: string;
  /** Input bytes per rep (decoded bytes for decompression). */
  readonly bytes: number;
  readonly reps: number;
  readonly contenders: Partial<Record<Impl, Contender>>;
  readonly target?: Target;
  /** The output every contender must produce, when known in advance. */
  readonly expect?: string;
  /** When false, a differing CLI output is noted, not an error (another encoder version). */
  readonly cliMustMatch?: boolean;
}

/** Measured numbers of one implementation in one row. */
interface ImplResult {
  readonly wall: number[];
  readonly cpu: number[];
  readonly startup?: Sample;
  /** MB/s (10^6 bytes per second) on the median rep, CPU and wall-clock basis. */
  readonly mbpsCpu: number;
  readonly mbpsWall: number;
  readonly check?: string;
  readonly outBytes?: number;
  /** (max - min) / median of the chosen basis. */
  readonly spread: number;
  /** Median wall / median CPU: well above 1 means the run waited for a core. */
  readonly wallOverCpu: number;
}

/** Measured numbers of one row. */
interface RowResult {
  readonly id: string;
  readonly label: string;
  readonly bytes: number;
  readonly reps: number;
  readonly impls: Partial<Record<Impl, ImplResult>>;
  readonly wasmOverNative?: number;
  readonly wasmOverCli?: number;
  readonly target?: Target & { ratio?: number; met?: boolean };
  readonly problems: string[];
}

/** The whole report, as printed with `--json`. */
interface Report {
  readonly bench: "core";
  readonly date: string;
  readonly machine: Machine;
  readonly corpus: Omit<Corpus, "path"> & { path: string; zeroChunks: number; chunks: number };
  readonly basis: "cpu" | "wall";
  readonly cliPeers: Record<string, string>;
  readonly rows: RowResult[];
  readonly wasmMemoryBytes: number;
  readonly loadEnd: number;
}

/** Runs the benchmark with the given command line. */
export async function main(argv: string[]): Promise<void> {
  const opts = parseBenchOptions(argv);
  if (opts.help) {
    console.log(USAGE);
    return;
  }
  const log = (s: string) => process.stderr.write(`core_bench: ${s}\n`);
  if (!opts.noBuild) buildAll(log);
  const machine = describeMachine();
  const corpus = ensureCorpus(opts.sizeMiB);
  log(`corpus ${corpus.path} (${corpus.bytes} bytes, sha256 ${corpus.sha256.slice(0, 16)}…)`);
  const core = await loadCoreFromDisk();
  const data = new Uint8Array(readFileSync(corpus.path));
  const zeroFlags = core.zeroChunks(data);
  const zeroChunks = zeroFlags.reduce((t, f) => t + f, 0);

  const rows = (await buildRows(core, corpus, data, opts)).filter((r) => opts.only.length === 0 || opts.only.some((p) => r.id.startsWith(p)));
  if (rows.length === 0) throw new Error(`--only ${opts.only.join(",")} matches no row`);
  const results: RowResult[] = [];
  for (const row of rows) {
    log(`${row.id}: ${Object.keys(row.contenders).join(", ")} x ${row.reps} rep${row.reps > 1 ? "s" : ""}`);
    results.push(measure(row, opts.basis));
  }
  const report: Report = {
    bench: "core",
    date: new Date().toISOString(),
    machine,
    corpus: { ...corpus, path: corpus.path.slice(REPO.length), zeroChunks, chunks: zeroFlags.length },
    basis: opts.basis,
    cliPeers: CLI_PEERS,
    rows: results,
    wasmMemoryBytes: core.memoryBytes,
    loadEnd: loadavg()[0],
  };
  if (opts.json) console.log(JSON.stringify(report));
  else console.log(formatReport(report, opts).join("\n"));
  if (results.some((r) => r.problems.length > 0)) process.exitCode = 1;
}

/** How each CLI peer is run (FILE is the corpus; FILE.xz the xz CLI's own output). */
const CLI_PEERS: Record<string, string> = {
  blake3: "b3sum --num-threads 1 FILE",
  sha256: "sha256sum FILE",
  "xz-c": "xz -z -T1 -N -c FILE > /dev/null",
  "xz-d": "xz -d -T1 -c FILE.xz > /dev/null",
};

async function buildRows(core: Core, corpus: Corpus, data: Uint8Array, opts: BenchOptions): Promise<Row[]> {
  const n = data.length;
  const file = corpus.path;
  const check = (out: Uint8Array) => hex(core.hash("blake3", out).subarray(0, 16));
  const expectCorpus = check(data);
  // XOR pairs each byte with one half the corpus away, as bench.rs does.
  const base = new Uint8Array(n);
  base.set(data.subarray(n >> 1));
  base.set(data.subarray(0, n >> 1), n - (n >> 1));
  const zeros = new Uint8Array(n);
  const b3 = await createBLAKE3();
  const s256 = await createSHA256();
  const fast = { reps: opts.reps };

  const rows: Row[] = [
    {
      id: "blake3-chunks",
      label: "BLAKE3, per 4 KiB chunk",
      bytes: n,
      ...fast,
      target: { vs: "native", min: 0.5 },
      contenders: {
        wasm: wasm(check, () => core.hashChunks("blake3", data)),
        native: native("blake3-chunks", file),
        "hash-wasm": wasm(check, () => chunkedHashWasm(b3, data)),
      },
    },
    {
      id: "blake3-whole",
      label: "BLAKE3, whole buffer",
      bytes: n,
      ...fast,
      target: { vs: "native", min: 0.5 },
      contenders: {
        wasm: wasm(check, () => core.hash("blake3", data)),
        native: native("blake3", file),
        "hash-wasm": wasm(check, () => wholeHashWasm(b3, data)),
        cli: cli(["b3sum", "--num-threads", "1", file], ["b3sum", "--version"], { parse: (out) => check(fromHex(out.split(/\s/)[0])) }),
      },
    },
    {
      id: "sha256-chunks",
      label: "SHA-256, per 4 KiB chunk",
      bytes: n,
      ...fast,
      contenders: {
        wasm: wasm(check, () => core.hashChunks("sha256", data)),
        native: native("sha256-chunks", file),
        "hash-wasm": wasm(check, () => chunkedHashWasm(s256, data)),
      },
    },
    {
      id: "sha256-whole",
      label: "SHA-256, whole buffer",
      bytes: n,
      ...fast,
      contenders: {
        wasm: wasm(check, () => core.hash("sha256", data)),
        native: native("sha256", file),
        "hash-wasm": wasm(check, () => wholeHashWasm(s256, data)),
        cli: cli(["sha256sum", file], ["sha256sum", "--version"], { parse: (out) => check(fromHex(out.split(/\s/)[0])) }),
      },
    },
    {
      id: "zero-corpus",
      label: "zero detection, corpus",
      bytes: n,
      ...fast,
      contenders: { wasm: wasm(check, () => core.zeroChunks(data)), native: native("zero", file) },
    },
    {
      id: "zero-allzero",
      label: "zero detection, all-zero buffer",
      bytes: n,
      ...fast,
      contenders: { wasm: wasm(check, () => core.zeroChunks(zeros)), native: native("zero", `zeros:${n}`) },
    },
    {
      id: "xor",
      label: "XOR delta (corpus ^ rotated corpus)",
      bytes: n,
      ...fast,
      contenders: { wasm: wasm(check, () => core.xor(data, base)), native: native("xor", file) },
    },
  ];

  for (const p of [1, 6]) {
    const warm = () => core.xzDecompressExact(core.xzCompress(data.subarray(0, 4 * MiB), p), 4 * MiB);
    rows.push({
      id: `xz-c${p}`,
      label: `xz -${p} compress`,
      bytes: n,
      reps: opts.xzReps,
      target: { vs: "cli", min: 0.6 },
      cliMustMatch: false,
      contenders: {
        wasm: { ...wasm(check, () => core.xzCompress(data, p)), warm },
        native: native("xz-compress", file, { preset: p, warmup: 0 }),
        cli: cliXzCompress(corpus, p, check),
      },
    });
  }
  for (const p of [1, 6]) {
    const xzFile = ensureXz(corpus, p);
    const xz = new Uint8Array(readFileSync(xzFile));
    const run = () => core.xzDecompressExact(xz, n);
    rows.push({
      id: `xz-d${p}`,
      label: `xz decompress (of xz -${p})`,
      bytes: n,
      reps: opts.reps,
      target: { vs: "cli", min: 0.6 },
      expect: expectCorpus,
      contenders: {
        wasm: { ...wasm(check, run), warm: run },
        native: native("xz-decompress", xzFile, { size: n, warmup: 0 }),
        cli: cli(["xz", "-d", "-T1", "-c", xzFile], ["xz", "--version"]),
      },
    });
  }
  if (opts.segmented) {
    for (const cap of [0, 4 * MiB, MiB]) {
      const segs = () => {
        const parts: Uint8Array[] = [];
        for (let o = 0; o < n; o += MiB) parts.push(core.xzCompress(data.subarray(o, o + MiB), 6, cap));
        return concat(parts);
      };
      rows.push({
        id: `xz-seg-cap${cap >> 20}`,
        label: `xz -6, 1 MiB segments, dict ${cap ? `cap ${cap >> 20} MiB` : "8 MiB (preset)"}`,
        bytes: n,
        reps: opts.xzReps,
        contenders: {
          wasm: { ...wasm(check, segs), warm: () => core.xzCompress(data.subarray(0, MiB), 6, cap) },
          native: native("xz-compress", file, { preset: 6, dictCap: cap, segment: MiB, warmup: 0 }),
        },
      });
    }
  }
  return rows;
}

/** A contender that runs `fn` in this process and times it. */
function wasm(check: (out: Uint8Array) => string, fn: () => Uint8Array): Contender {
  const c: Contender = {
    run: (wantCheck) => {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      const out = fn();
      const wall = (performance.now() - t0) / 1e3;
      const cpu = process.cpuUsage(c0);
      return { wall, cpu: (cpu.user + cpu.system) / 1e6, outBytes: out.length, check: wantCheck ? check(out) : undefined };
    },
    warm: () => void fn(),
  };
  return c;
}

/** A contender that runs the kernel in the native binary, one rep per process. */
function native(op: string, file: string, o: { preset?: number; dictCap?: number; segment?: number; size?: number; warmup?: number } = {}): Contender {
  return {
    run: () => {
      const r = runNative(op, file, { ...o, reps: 1, warmup: o.warmup ?? 1 });
      return { wall: r.wall[0], cpu: r.cpu[0], check: r.check, outBytes: r.out_bytes };
    },
  };
}

/** A contender that times a CLI, minus its start-up (median of `versionCmd`). */
function cli(
  cmd: string[],
  versionCmd: string[],
  o: { parse?: (stdout: string) => string; warmRun?: boolean; reference?: () => { check: string; outBytes: number } } = {},
): Contender {
  const c: Contender = {
    warm: () => {
      const v = runExec(versionCmd, { reps: 11, warmup: 1, capture: true });
      c.startup = { wall: median(v.wall), cpu: median(v.cpu) };
      if (o.warmRun ?? true) runExec(cmd, { reps: 1 });
      if (o.reference) Object.assign(c, o.reference());
    },
    run: (wantCheck) => {
      const r = runExec(cmd, { reps: 1, capture: !!o.parse });
      return { wall: r.wall[0], cpu: r.cpu[0], check: wantCheck && o.parse ? o.parse(r.stdout) : undefined };
    },
  };
  return c;
}

/**
 * The xz CLI compressing to /dev/null. Its output's check comes from the
 * cached file the same command wrote; making that file is the warm-up.
 */
function cliXzCompress(corpus: Corpus, preset: number, check: (out: Uint8Array) => string): Contender {
  return cli(["xz", "-z", "-T1", `-${preset}`, "-c", corpus.path], ["xz", "--version"], {
    warmRun: false,
    reference: () => {
      const out = readFileSync(ensureXz(corpus, preset));
      return { check: check(out), outBytes: out.length };
    },
  });
}

function chunkedHashWasm(h: IHasher, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(Math.ceil(data.length / CHUNK) * 32);
  for (let o = 0, i = 0; o < data.length; o += CHUNK, i += 32) {
    h.init();
    h.update(data.subarray(o, o + CHUNK));
    out.set(h.digest("binary"), i);
  }
  return out;
}

function wholeHashWasm(h: IHasher, data: Uint8Array): Uint8Array {
  h.init();
  h.update(data);
  return h.digest("binary");
}

/** Runs a row: warm-ups, then reps round-robin across implementations. */
function measure(row: Row, basis: "cpu" | "wall"): RowResult {
  const present = IMPLS.filter((i) => row.contenders[i]);
  for (const i of present) row.contenders[i]!.warm?.();
  const runs: Partial<Record<Impl, Run[]>> = {};
  for (let r = 0; r < row.reps; r++) {
    for (const i of present) (runs[i] ??= []).push(row.contenders[i]!.run(r === 0));
  }
  const impls: Partial<Record<Impl, ImplResult>> = {};
  for (const i of present) {
    const c = row.contenders[i]!;
    const rs = runs[i]!;
    const wall = rs.map((s) => s.wall);
    const cpu = rs.map((s) => s.cpu);
    const net = (xs: number[], k: "wall" | "cpu") => xs.map((x) => Math.max(1e-9, x - (c.startup?.[k] ?? 0)));
    const w = net(wall, "wall");
    const u = net(cpu, "cpu");
    const chosen = basis === "cpu" ? u : w;
    impls[i] = {
      wall,
      cpu,
      startup: c.startup,
      mbpsCpu: row.bytes / median(u) / 1e6,
      mbpsWall: row.bytes / median(w) / 1e6,
      check: rs[0].check ?? c.check,
      outBytes: rs[0].outBytes ?? c.outBytes,
      spread: (Math.max(...chosen) - Math.min(...chosen)) / median(chosen),
      wallOverCpu: median(w) / median(u),
    };
  }
  const mbps = (i: Impl) => {
    const r = impls[i];
    return r ? (basis === "cpu" ? r.mbpsCpu : r.mbpsWall) : undefined;
  };
  const over = (i: Impl) => {
    const a = mbps("wasm");
    const b = mbps(i);
    return a !== undefined && b !== undefined ? a / b : undefined;
  };
  const wasmOverNative = over("native");
  const wasmOverCli = over("cli");
  const problems: string[] = [];
  const ref = row.expect ?? impls.wasm?.check;
  for (const i of present) {
    const got = impls[i]!.check;
    if (!got || !ref || got === ref) continue;
    const msg = `${i} output differs from ${row.expect ? "the corpus" : "WASM"} (${got} vs ${ref})`;
    if (i === "cli" && row.cliMustMatch === false) continue; // reported in the notes
    problems.push(msg);
  }
  let target: RowResult["target"];
  if (row.target) {
    const ratio = row.target.vs === "native" ? wasmOverNative : wasmOverCli;
    target = { ...row.target, ratio, met: ratio === undefined ? undefined : ratio >= row.target.min };
  }
  return { id: row.id, label: row.label, bytes: row.bytes, reps: row.reps, impls, wasmOverNative, wasmOverCli, target, problems };
}

/** The text report: machine, data, method, table, notes. */
function formatReport(r: Report, opts: BenchOptions): string[] {
  const out: string[] = [];
  out.push(`cloudlet core benchmark, ${r.date.slice(0, 16).replace("T", " ")} UTC`);
  out.push(...machineLines(r.machine));
  out.push(`data:    ${r.corpus.path}: ${r.corpus.bytes} bytes, sha256 ${r.corpus.sha256.slice(0, 16)}…`);
  out.push(`         ${r.corpus.description}; ${r.corpus.zeroChunks} of ${r.corpus.chunks} 4 KiB chunks are all zero`);
  out.push(
    `timing:  MB/s = 10^6 input bytes (decoded bytes for decompression) per ${r.basis === "cpu" ? "CPU" : "wall-clock"} second, ` +
      `median of ${opts.reps} reps (xz compress: ${opts.xzReps}); CLI start-up subtracted`,
  );
  out.push("");
  const head = ["kernel", "WASM", "native", "hash-wasm", "CLI", "WASM/native", "WASM/CLI", "target"];
  const lines: string[][] = [head];
  for (const row of r.rows) {
    const cell = (i: Impl) => {
      const m = row.impls[i];
      if (!m) return "-";
      const v = r.basis === "cpu" ? m.mbpsCpu : m.mbpsWall;
      return fmtMbps(v) + (m.spread > 0.1 ? "~" : "") + (m.wallOverCpu > 1.15 ? "*" : "");
    };
    const t = row.target;
    const target = t ? `>=${t.min}x ${t.vs}: ${t.met === undefined ? "n/a" : t.met ? "met" : "MISSED"}` : "";
    lines.push([row.label, cell("wasm"), cell("native"), cell("hash-wasm"), cell("cli"), fmtRatio(row.wasmOverNative), fmtRatio(row.wasmOverCli), target]);
  }
  out.push(...markdownTable(lines));
  out.push("");
  out.push("~ reps spread more than 10% around the median;  * wall-clock more than 1.15x CPU time (waited for a core: contended run)");
  out.push(`CLI peers: ${Object.entries(r.cliPeers).map(([k, v]) => `${k}: ${v}`).join("; ")}`);
  const startups = new Map<string, Sample>();
  for (const row of r.rows) {
    const s = row.impls.cli?.startup;
    if (s) startups.set(row.id.replace(/-.*|\d$/, ""), s);
  }
  if (startups.size) {
    out.push(`CLI start-up subtracted (median of TOOL --version, wall/CPU ms): ${[...startups].map(([k, s]) => `${k} ${(s.wall * 1e3).toFixed(2)}/${(s.cpu * 1e3).toFixed(2)}`).join(", ")}`);
  }
  for (const row of r.rows.filter((x) => x.id.startsWith("xz-c"))) {
    const sizes = (["wasm", "native", "cli"] as const).map((i) => `${i} ${row.impls[i]?.outBytes ?? "-"}`).join(", ");
    const same = new Set((["wasm", "native", "cli"] as const).map((i) => row.impls[i]?.check)).size === 1;
    out.push(`${row.label}: compressed bytes ${sizes} (${(100 * (row.impls.wasm?.outBytes ?? 0) / row.bytes).toFixed(2)}%); ${same ? "byte-identical" : "outputs differ"}`);
  }
  for (const row of r.rows.filter((x) => x.id.startsWith("xz-seg"))) {
    out.push(`${row.label}: compressed bytes ${row.impls.wasm?.outBytes ?? "-"} (${(100 * (row.impls.wasm?.outBytes ?? 0) / row.bytes).toFixed(2)}%)`);
  }
  out.push(`WASM linear memory at the end: ${(r.wasmMemoryBytes / MiB).toFixed(0)} MiB (it never shrinks); 1-min load average at the end: ${r.loadEnd.toFixed(2)}`);
  for (const row of r.rows) for (const p of row.problems) out.push(`CHECK FAILED in ${row.id}: ${p}`);
  return out;
}

function fmtMbps(v: number): string {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

function fmtRatio(v: number | undefined): string {
  return v === undefined ? "-" : `${v.toFixed(2)}x`;
}

function markdownTable(rows: string[][]): string[] {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  const line = (r: string[]) => `| ${r.map((s, c) => (c === 0 || c === r.length - 1 ? s.padEnd(widths[c]) : s.padStart(widths[c]))).join(" | ")} |`;
  const rule = `|${widths.map((w, c) => (c === 0 || c === widths.length - 1 ? "-".repeat(w + 2) : `${"-".repeat(w + 1)}:`)).join("|")}|`;
  return [line(rows[0]), rule, ...rows.slice(1).map(line)];
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((t, p) => t + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function hex(b: Uint8Array): string {
  return Buffer.from(b).toString("hex");
}

function fromHex(s: string): Uint8Array {
  return new Uint8Array(Buffer.from(s, "hex"));
}

if (isMain(import.meta.url)) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    console.error(`core_bench: ${(e as Error).message}`);
    process.exitCode = 1;
  });
}

