/**
 * xz memory benchmark: how much WASM linear memory the xz encoder and
 * decoder claim per preset and dictionary cap, and what that costs in time,
 * on 1 MiB segments as VM overlays use them.
 *
 * WASM memory only grows, so each measurement runs in a fresh Node process
 * (this file again, with CLOUDLET_XZMEM_CHILD set): one compresses 8
 * consecutive 1 MiB segments of the corpus, another, as a cloudlet would,
 * only decompresses them.
 */
import { execFileSync } from "node:child_process";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { loadCoreFromDisk } from "../ts/node/core_file.ts";
import { DATA_DIR, ensureCorpus, REPO } from "./_corpus.ts";
import { describeMachine, machineLines } from "./_machine.ts";
import { buildAll, median } from "./_native.ts";
import { isMain, parseBenchOptions, USAGE } from "./_options.ts";

const MiB = 1 << 20;
const SEGMENTS = 8;
/** (preset, dictionary cap in bytes; 0 = the preset's own). */
const CONFIGS: [number, number][] = [
  [1, 0],
  [6, 0],
  [6, 4 * MiB],
  [6, MiB],
  [9, 0],
  [9, 4 * MiB],
  [9, MiB],
];

/** What one child process measured, on a fresh WASM instance. */
interface ChildResult {
  /** WASM memory right after instantiation and after the work (bytes). */
  readonly memLoaded: number;
  readonly memAfter: number;
  /** CPU milliseconds per segment: the first (memory growth included), median of the rest. */
  readonly firstMs: number;
  readonly restMs: number;
  /** Compressed bytes of each segment (encode only). */
  readonly sizes?: number[];
}

/** Spec handed to a child process. */
interface ChildSpec {
  readonly mode: "encode" | "decode";
  readonly preset: number;
  readonly cap: number;
  readonly corpus: string;
  /** File holding the compressed segments back to back. */
  readonly packed: string;
  readonly sizes?: number[];
}

/** Runs the memory benchmark with the given command line. */
export async function main(argv: string[]): Promise<void> {
  const opts = parseBenchOptions(argv);
  if (opts.help) {
    console.log(USAGE);
    return;
  }
  const log = (s: string) => process.stderr.write(`xz_memory_bench: ${s}\n`);
  if (!opts.noBuild) buildAll(log);
  const corpus = ensureCorpus(opts.sizeMiB);
  if (corpus.bytes < SEGMENTS * MiB) throw new Error(`xz_memory_bench needs --size ${SEGMENTS} or more`);
  const results: { preset: number; dictCap: number; encode: ChildResult; decode: ChildResult; ratio: number }[] = [];
  for (const [preset, cap] of CONFIGS) {
    log(`preset ${preset}, dict cap ${cap ? `${cap >> 20} MiB` : "none"}`);
    const packed = join(DATA_DIR, `xzmem-p${preset}-cap${cap}.xzs`);
    const spec = { preset, cap, corpus: corpus.path, packed };
    const encode = runChild({ ...spec, mode: "encode" });
    const decode = runChild({ ...spec, mode: "decode", sizes: encode.sizes });
    rmSync(packed, { force: true });
    const ratio = (encode.sizes ?? []).reduce((t, n) => t + n, 0) / (SEGMENTS * MiB);
    results.push({ preset, dictCap: cap, encode, decode, ratio });
  }
  const machine = describeMachine();
  if (opts.json) {
    console.log(JSON.stringify({ bench: "xz_memory", date: new Date().toISOString(), machine, corpus: { sha256: corpus.sha256, bytes: corpus.bytes }, segments: SEGMENTS, results }));
    return;
  }
  const mib = (b: number) => (b / MiB).toFixed(1);
  const lines = [
    `xz memory per preset and dictionary cap: ${SEGMENTS} x 1 MiB segments of the corpus (sha256 ${corpus.sha256.slice(0, 16)}…);`,
    "encode and decode each in a fresh WASM instance (memory never shrinks); times are CPU time of the process",
    ...machineLines(machine),
    "",
    "| preset | dictionary | encode: WASM MiB | ms/segment (first, rest) | decode: WASM MiB | ms/segment (first, rest) | compressed |",
    "|-------:|-----------:|-----------------:|-------------------------:|-----------------:|-------------------------:|-----------:|",
  ];
  for (const r of results) {
    const dict = r.dictCap ? `cap ${r.dictCap >> 20} MiB` : "preset's";
    lines.push(
      `| -${r.preset} | ${dict} | ${mib(r.encode.memAfter)} | ${r.encode.firstMs.toFixed(0)}, ${r.encode.restMs.toFixed(0)} | ` +
        `${mib(r.decode.memAfter)} | ${r.decode.firstMs.toFixed(1)}, ${r.decode.restMs.toFixed(1)} | ${(100 * r.ratio).toFixed(2)}% |`,
    );
  }
  lines.push(`(a fresh instance holds ${mib(results[0].encode.memLoaded)} MiB before any work)`);
  console.log(lines.join("\n"));
}

function runChild(spec: ChildSpec): ChildResult {
  const out = execFileSync(process.execPath, ["--import", "tsx", fileURLToPath(import.meta.url)], {
    cwd: REPO,
    env: { ...process.env, CLOUDLET_XZMEM_CHILD: JSON.stringify(spec) },
    encoding: "utf8",
  });
  return JSON.parse(out) as ChildResult;
}

/** CPU milliseconds of this process since `t0`. */
function cpuMs(t0: NodeJS.CpuUsage): number {
  const d = process.cpuUsage(t0);
  return (d.user + d.system) / 1e3;
}

/** The child: one measurement in a fresh instance; prints one JSON object. */
async function child(spec: ChildSpec): Promise<void> {
  const core = await loadCoreFromDisk();
  const memLoaded = core.memoryBytes;
  const ms: number[] = [];
  let sizes: number[] | undefined;
  if (spec.mode === "encode") {
    const data = new Uint8Array(readFileSync(spec.corpus)).subarray(0, SEGMENTS * MiB);
    const packed: Uint8Array[] = [];
    for (let i = 0; i < SEGMENTS; i++) {
      const t0 = process.cpuUsage();
      packed.push(core.xzCompress(data.subarray(i * MiB, (i + 1) * MiB), spec.preset, spec.cap));
      ms.push(cpuMs(t0));
    }
    writeFileSync(spec.packed, Buffer.concat(packed));
    sizes = packed.map((p) => p.length);
  } else {
    const all = new Uint8Array(readFileSync(spec.packed));
    let o = 0;
    for (const n of spec.sizes ?? []) {
      const t0 = process.cpuUsage();
      core.xzDecompressExact(all.subarray(o, o + n), MiB);
      ms.push(cpuMs(t0));
      o += n;
    }
  }
  const result: ChildResult = { memLoaded, memAfter: core.memoryBytes, firstMs: ms[0], restMs: median(ms.slice(1)), sizes };
  console.log(JSON.stringify(result));
}

if (process.env.CLOUDLET_XZMEM_CHILD) {
  await child(JSON.parse(process.env.CLOUDLET_XZMEM_CHILD));
} else if (isMain(import.meta.url)) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    console.error(`xz_memory_bench: ${(e as Error).message}`);
    process.exitCode = 1;
  });
}
