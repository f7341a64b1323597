/**
 * The codec workers under Node and under Deno: how long a 4 MiB message
 * takes to a node:worker_threads worker and back (as a Uint8Array, and as
 * the ArrayBuffer the codec pool sends), and a whole synthesis with the
 * codec on the calling thread against the worker pool.
 *
 *   node --import tsx bench/runtime_codec_bench.ts OVERLAY BASE_DISK BASE_MEM [--reps 3]
 *   deno run -A --no-check bench/runtime_codec_bench.ts OVERLAY BASE_DISK BASE_MEM [--reps 3]
 *
 * Results: bench/README.md ("Codec workers under Deno").
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { loadCoreFromDisk } from "../ts/node/core_file.ts";
import { synthesizeFiles } from "../ts/jobs/file_synthesis.ts";
import { InlineCodec } from "../ts/overlay/codec.ts";

const args = process.argv.slice(2);
const repsAt = args.indexOf("--reps");
const reps = repsAt >= 0 ? Number(args.splice(repsAt, 2)[1]) : 3;
const [overlay, baseDisk, baseMem] = args;
if (!overlay || !baseDisk || !baseMem) {
  process.stderr.write("usage: bench/runtime_codec_bench.ts OVERLAY BASE_DISK BASE_MEM [--reps N]\n");
  process.exit(2);
}
const runtime = "Deno" in globalThis ? `deno ${(globalThis as unknown as { Deno: { version: { deno: string } } }).Deno.version.deno}` : `node ${process.version}`;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const scratch = mkdtempSync(join(tmpdir(), "cloudlet-rtbench-"));

// 1. A 4 MiB round trip to an echo worker, 50 times each way of sending.
const echo = join(scratch, "echo.mjs");
writeFileSync(echo, `import { parentPort } from "node:worker_threads";
parentPort.on("message", (m) => parentPort.postMessage(m, [m instanceof ArrayBuffer ? m : m.buffer]));`);
const w = new Worker(echo);
const roundTrip = async (asBuffer: boolean): Promise<number> => {
  const t0 = performance.now();
  for (let i = 0; i < 50; i++) {
    const b = new Uint8Array(4 << 20);
    const msg = asBuffer ? b.buffer : b;
    await new Promise((resolve) => {
      w.once("message", resolve);
      w.postMessage(msg, [b.buffer]);
    });
  }
  return (performance.now() - t0) / 50;
};
const asView = await roundTrip(false);
const asBuffer = await roundTrip(true);
await w.terminate();

// 2. Whole syntheses, interleaved: the codec inline, then the worker pool.
const core = await loadCoreFromDisk();
const times: Record<"inline" | "workers", number[]> = { inline: [], workers: [] };
for (let r = 0; r < reps; r++) {
  for (const mode of ["inline", "workers"] as const) {
    const out = join(scratch, "out");
    rmSync(out, { recursive: true, force: true });
    const t0 = performance.now();
    await synthesizeFiles(core, { home: join(scratch, "home"), baseDisk, baseMem, overlay, outDir: out, diskFormat: "raw", ...(mode === "inline" ? { codec: new InlineCodec(core) } : {}) });
    times[mode].push((performance.now() - t0) / 1000);
  }
}
rmSync(scratch, { recursive: true, force: true });
console.log(`runtime: ${runtime}`);
console.log(`4 MiB round trip to a worker: as a Uint8Array ${asView.toFixed(2)} ms, as an ArrayBuffer ${asBuffer.toFixed(2)} ms`);
console.log(`synthesis of ${overlay}, median of ${reps}: codec inline ${median(times.inline).toFixed(2)} s, worker pool ${median(times.workers).toFixed(2)} s`);
