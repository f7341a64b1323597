/**
 * The command line of the core bench modules (`core_bench.ts`,
 * `xz_memory_bench.ts`): one spec, so that both accept the same command line
 * from `bench/run.ts` and a typo is still an error.
 */
import { resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

/** Every option these modules read. */
const SPEC = {
  json: { type: "boolean", default: false },
  "no-build": { type: "boolean", default: false },
  size: { type: "string", default: "64" },
  reps: { type: "string", default: "5" },
  "xz-reps": { type: "string", default: "1" },
  only: { type: "string" },
  segmented: { type: "boolean", default: false },
  basis: { type: "string", default: "cpu" },
  help: { type: "boolean", short: "h", default: false },
} as const;

/** Parsed bench options. */
export interface BenchOptions {
  /** Print one JSON object per module instead of a table. */
  readonly json: boolean;
  /** Skip building the .wasm and the native binary. */
  readonly noBuild: boolean;
  /** Corpus size in MiB. */
  readonly sizeMiB: number;
  /** Timed repetitions of each fast kernel and of xz decompression. */
  readonly reps: number;
  /** Timed repetitions of xz compression (slow: ~30 s per run at -6 on 64 MiB). */
  readonly xzReps: number;
  /** Row ids (or prefixes) to run; empty means all. */
  readonly only: string[];
  /** Also time xz on 1 MiB segments with capped dictionaries, as overlays use it. */
  readonly segmented: boolean;
  /** Time basis of the table: CPU time or wall-clock time. */
  readonly basis: "cpu" | "wall";
  readonly help: boolean;
}

/** Help text for the shared options. */
export const USAGE = `usage: node --import tsx bench/core_bench.ts [options]     (also bench/xz_memory_bench.ts)
       npm run bench -- --bench core,xz_memory [options]
  --size MIB        corpus size in MiB (default 64)
  --reps N          timed reps of hashing, zero, XOR and xz decompression (default 5)
  --xz-reps N       timed reps of xz compression (default 1; -6 takes ~30 s per rep on 64 MiB)
  --only ID,..      rows to run, by id or prefix: blake3, sha256, zero, xor, xz-c, xz-d, xz-seg
  --segmented       also time xz -6 on 1 MiB segments with capped dictionaries
  --basis cpu|wall  time basis of the table (default cpu; JSON carries both)
  --json            print one JSON object per module instead of tables
  --no-build        do not run scripts/build-wasm.sh and cargo build first`;

/** Parses `argv`; throws on an unknown option or a bad value. */
export function parseBenchOptions(argv: string[]): BenchOptions {
  const { values: v } = parseArgs({ args: argv, options: SPEC, strict: true, allowPositionals: false });
  const int = (name: string, s: string, min: number) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got ${s}`);
    return n;
  };
  if (v.basis !== "cpu" && v.basis !== "wall") throw new Error(`--basis must be cpu or wall, got ${v.basis}`);
  const list = (s: string | undefined) => (s ? s.split(",").map((x) => x.trim()).filter(Boolean) : []);
  return {
    json: v.json,
    noBuild: v["no-build"],
    sizeMiB: int("size", v.size, 1),
    reps: int("reps", v.reps, 1),
    xzReps: int("xz-reps", v["xz-reps"], 1),
    only: list(v.only),
    segmented: v.segmented,
    basis: v.basis,
    help: v.help,
  };
}

/** True when this module is the program being run (not imported by run.ts). */
export function isMain(moduleUrl: string): boolean {
  const argv1 = process.argv[1];
  return !!argv1 && fileURLToPath(moduleUrl) === resolve(argv1);
}
