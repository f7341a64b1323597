/**
 * Where synthesis time goes, for the network benchmark's analysis
 * (bench/NET_RESULTS.md). Not part of the timed run:
 *
 *   node --import tsx bench/_net_probe.ts OVERLAY BASE_MEMORY [--reps N]
 *
 * Times, with the overlay already in memory (as the server has it):
 *   - the set-up synthesis pays before its first segment: starting the
 *     codec workers (thread + WASM instance each), and the sparse copy of
 *     the base memory that the memory sink starts from;
 *   - decoding every segment (BLAKE3 check on the main thread, xz in the
 *     workers, record parsing), with 1 and with 2 workers;
 *   - the main thread's share per segment (compressed-hash check, record
 *     parsing, BLAKE3 of the rebuilt 1 MiB), which competes with receiving.
 * Prints one JSON object; wall-clock ms (and the process's CPU ms while
 * decoding: main thread + workers), medians of the reps.
 */
import { promises as fsp } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadCoreFromDisk } from "../ts/node/core_file.ts";
import { WorkerCodec } from "../ts/node/codec_pool.ts";
import { sparseCopy } from "../ts/node/files.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { decodeSegment, hashHex } from "../ts/overlay/format.ts";

const args = process.argv.slice(2);
const repsAt = args.indexOf("--reps");
const reps = repsAt >= 0 ? Number(args.splice(repsAt, 2)[1]) : 3;
const [overlayPath, baseMem] = args;
if (!overlayPath || !baseMem) {
  process.stderr.write("usage: _net_probe.ts OVERLAY BASE_MEMORY [--reps N]\n");
  process.exit(2);
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

const core = await loadCoreFromDisk();
const overlay = await openOverlay(core, overlayPath);
const meta = overlay.meta;
const segs: Uint8Array[] = [];
for (let i = 0; i < meta.segments.length; i++) segs.push(await overlay.segment(i));
await overlay.close();
const compressed = segs.reduce((t, s) => t + s.length, 0);
const raw = meta.segments.reduce((t, s) => t + s.rawSize, 0);

/** Decodes every segment as synthesis does (read-ahead 2 x workers); returns ms. */
async function decodeAll(threads: number): Promise<{ codecReadyMs: number; decodeMs: number; mainMs: number; cpuMs: number }> {
  const t0 = performance.now();
  const codec = new WorkerCodec(threads);
  // The first (tiny) request waits for the workers to be ready.
  await codec.decompress(segs[0], meta.segments[0].rawSize);
  const ready = performance.now() - t0;
  let main = 0;
  const t1 = performance.now();
  const c1 = process.cpuUsage();
  const ahead = threads * 2;
  const pending: Promise<void>[] = [];
  let next = 0;
  const one = async (i: number) => {
    let m = performance.now();
    if (hashHex(core, segs[i]) !== meta.segments[i].hash) throw new Error(`segment ${i} hash`);
    main += performance.now() - m;
    const rawBytes = await codec.decompress(segs[i], meta.segments[i].rawSize);
    m = performance.now();
    const recs = decodeSegment(rawBytes, meta, i, overlayPath);
    core.hashChunks("blake3", recs.data);
    main += performance.now() - m;
  };
  while (next < segs.length || pending.length) {
    while (next < segs.length && pending.length < ahead) pending.push(one(next++));
    await pending.shift();
  }
  const decode = performance.now() - t1;
  const c = process.cpuUsage(c1);
  await codec.close();
  return { codecReadyMs: ready, decodeMs: decode, mainMs: main, cpuMs: (c.user + c.system) / 1000 };
}

const out: Record<string, unknown> = { overlay: overlayPath, segments: segs.length, compressedBytes: compressed, rawBytes: raw };
const copies: number[] = [];
const dir = await fsp.mkdtemp(join(tmpdir(), "net-probe-"));
try {
  for (let r = 0; r < reps; r++) {
    const t = performance.now();
    await sparseCopy(baseMem, join(dir, `mem-${r}.raw`));
    copies.push(performance.now() - t);
    await fsp.rm(join(dir, `mem-${r}.raw`));
  }
} finally {
  await fsp.rm(dir, { recursive: true, force: true });
}
out.baseMemoryCopyMs = median(copies);
for (const threads of [1, 2]) {
  await decodeAll(threads); // warm-up
  const runs = [];
  for (let r = 0; r < reps; r++) runs.push(await decodeAll(threads));
  const d = median(runs.map((x) => x.decodeMs));
  out[`threads${threads}`] = {
    codecReadyMs: median(runs.map((x) => x.codecReadyMs)),
    decodeMs: d,
    mainThreadMs: median(runs.map((x) => x.mainMs)),
    // CPU time of the whole process (main thread + workers) while decoding: ~threads x decodeMs if every thread had a core.
    cpuMs: median(runs.map((x) => x.cpuMs)),
    compressedMBps: compressed / 1e3 / d,
    rawMBps: raw / 1e3 / d,
    mbitEquivalent: (compressed * 8) / 1e3 / d,
  };
}
process.stdout.write(JSON.stringify(out, null, 1) + "\n");
process.exit(0);
