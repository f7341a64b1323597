/**
 * Size experiments for the segment layout, offline: takes the per-image files the honest peer
 * extracts (bench/_honest_peer.ts --keep DIR: records then data chunks per image) and compresses
 * the data chunks with the xz CLI in independent blocks (`--block-size`, each block restarts the
 * dictionary, like cloudlet's segments), in different orders and with different settings. Only
 * the data chunks are compared (records are the same in every variant).
 *
 *   node --import tsx bench/_segment_sim.ts DIR [--variants "a;b;..."]
 *
 * `--options` measures LZMA2 literal/position settings (lc, lp, pb) and the delta filter instead,
 * per image part, each block compressed as its own `.xz` stream (exactly what a segment is), and
 * also the best variant per block (what a per-segment choice could reach at most):
 *
 *   node --import tsx bench/_segment_sim.ts DIR --options [--blocks 1,4] [--parts disk,memory]
 *        [--option-variants "a;b;..."] [--jobs 2]
 */
import { spawn, spawnSync } from "node:child_process";
import { readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const CHUNK = 4096;
const RECORD = 24;

/** Data chunks of one extracted image file. */
function dataChunks(file: string): Uint8Array[] {
  const b = readFileSync(file);
  // Recount exactly: records r satisfy r*24 + d(r)*4096 = length.
  let r = 0;
  let d = 0;
  for (; r * RECORD < b.length; r++) {
    if (r * RECORD + d * CHUNK === b.length) break;
    const cls = b[r * RECORD + 1];
    if (cls === 4 || cls === 5) d++;
  }
  const out: Uint8Array[] = [];
  for (let i = 0; i < d; i++) out.push(b.subarray(r * RECORD + i * CHUNK, r * RECORD + (i + 1) * CHUNK));
  return out;
}

/** Cheap 32-bit hash of a window (FNV-1a over 32-bit words). */
function fnv(b: Uint8Array, s: number, e: number): number {
  let h = 0x811c9dc5;
  for (let i = s; i < e; i++) h = Math.imul(h ^ b[i], 0x01000193);
  return h >>> 0;
}

/** Order: chunks sharing any of their 256-byte sub-block hashes (non-trivial ones) go next to each other. */
function clusterOrder(chunks: Uint8Array[], sub = 256): number[] {
  const parent = chunks.map((_, i) => i);
  const find = (x: number): number => {
    while (parent[x] !== x) x = parent[x] = parent[parent[x]];
    return x;
  };
  const seen = new Map<number, number>();
  const counts = new Map<number, number>();
  const hs: number[][] = chunks.map((c) => {
    const h: number[] = [];
    for (let o = 0; o < CHUNK; o += sub) {
      let allSame = true;
      for (let i = o + 1; i < o + sub; i++) if (c[i] !== c[o]) { allSame = false; break; }
      if (allSame) continue; // runs of one byte say nothing
      const x = fnv(c, o, o + sub);
      h.push(x);
      counts.set(x, (counts.get(x) ?? 0) + 1);
    }
    return h;
  });
  hs.forEach((h, i) => {
    for (const x of h) {
      if ((counts.get(x) ?? 0) > 64) continue; // common blocks link unrelated chunks
      const j = seen.get(x);
      if (j === undefined) seen.set(x, i);
      else parent[find(i)] = find(j);
    }
  });
  const groups = new Map<number, number[]>();
  chunks.forEach((_, i) => {
    const r = find(i);
    let g = groups.get(r);
    if (!g) groups.set(r, (g = []));
    g.push(i);
  });
  // Groups in order of their first member (keeps image order for singletons).
  return [...groups.values()].sort((a, b) => a[0] - b[0]).flat();
}

/** Order by a content signature: the byte-value histogram class (share of zero bytes, of ASCII). */
function classOrder(chunks: Uint8Array[]): number[] {
  const key = chunks.map((c) => {
    let z = 0;
    let a = 0;
    for (let i = 0; i < CHUNK; i++) {
      const x = c[i];
      if (x === 0) z++;
      else if ((x >= 32 && x < 127) || x === 10) a++;
    }
    return Math.floor((z / CHUNK) * 8) * 16 + Math.floor((a / CHUNK) * 8);
  });
  return chunks.map((_, i) => i).sort((x, y) => key[x] - key[y] || x - y);
}

function xzSize(file: string, args: string[]): number {
  const r = spawnSync("xz", [...args, "-T1", "-k", "-f", "-c", file], { maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(String(r.stderr));
  return r.stdout.length;
}

/** xz CLI arguments per option variant; `X` in a name is replaced by the part's base filter (x86 on disk). */
const OPTION_VARIANTS: Record<string, string> = {
  "today (lc3 lp0 pb2)": "preset=6",
  "pb0": "preset=6,pb=0",
  "pb3": "preset=6,pb=3",
  "lc0": "preset=6,lc=0",
  "lc0 pb3": "preset=6,lc=0,pb=3",
  "lc0 lp2 pb2": "preset=6,lc=0,lp=2,pb=2",
  "lc1 lp2 pb2": "preset=6,lc=1,lp=2,pb=2",
  "lc2 lp2 pb2": "preset=6,lc=2,lp=2,pb=2",
  "lc0 lp3 pb3": "preset=6,lc=0,lp=3,pb=3",
  "lc1 lp3 pb3": "preset=6,lc=1,lp=3,pb=3",
  "lc4 lp0 pb0": "preset=6,lc=4,lp=0,pb=0",
  "delta8 + today": "delta8",
  // Match finders: hash chains need less encoder memory than the preset's binary tree (bt4).
  "mf=hc4": "preset=6,mf=hc4",
  "mf=bt3": "preset=6,mf=bt3",
};

/** Compressed size of `data` as one .xz stream with `xz args` (async, so several run at once). */
function xzStreamSize(data: Uint8Array, args: string[]): Promise<number> {
  return new Promise((resolve, reject) => {
    const p = spawn("xz", ["-z", "-c", "-T1", ...args]);
    let n = 0;
    const err: Buffer[] = [];
    p.stdout.on("data", (b: Buffer) => (n += b.length));
    p.stderr.on("data", (b: Buffer) => err.push(b));
    p.on("error", reject);
    p.on("close", (code) => (code === 0 ? resolve(n) : reject(new Error(`xz ${args.join(" ")}: ${Buffer.concat(err)}`))));
    p.stdin.end(data);
  });
}

/** The LZMA option experiment (see the header). */
async function optionsMain(dir: string, argv: string[]): Promise<void> {
  const arg = (name: string, def: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : def);
  const blocks = arg("--blocks", "1,4").split(",").map(Number);
  const parts = arg("--parts", "disk,memory").split(",");
  const jobs = Number(arg("--jobs", "2"));
  const names = argv.includes("--option-variants") ? arg("--option-variants", "").split(";") : Object.keys(OPTION_VARIANTS);
  const out: Record<string, unknown> = {};
  for (const part of parts) {
    const k = part === "disk" ? 0 : 1;
    const chunks = dataChunks(join(dir, `image${k}.bin`));
    const all = new Uint8Array(chunks.length * CHUNK);
    chunks.forEach((c, i) => all.set(c, i * CHUNK));
    // Disk segments carry the x86 filter today (writer.ts x86Disk); memory segments none.
    const pre = k === 0 ? ["--x86"] : [];
    for (const mib of blocks) {
      const size = mib << 20;
      const pieces: Uint8Array[] = [];
      for (let o = 0; o < all.length; o += size) pieces.push(all.subarray(o, Math.min(all.length, o + size)));
      const per: Record<string, number[]> = {};
      const tasks: Array<() => Promise<void>> = [];
      for (const name of names) {
        const v = OPTION_VARIANTS[name];
        if (!v) throw new Error(`unknown option variant ${name}`);
        const dict = `dict=${mib}MiB`;
        const args = v === "delta8" ? [...pre, "--delta=dist=8", `--lzma2=preset=6,${dict}`] : [...pre, `--lzma2=${v},${dict}`];
        per[name] = pieces.map(() => 0);
        pieces.forEach((p, i) => tasks.push(async () => void (per[name][i] = await xzStreamSize(p, args))));
      }
      const t0 = performance.now();
      let next = 0;
      await Promise.all(Array.from({ length: jobs }, async () => { while (next < tasks.length) await tasks[next++](); }));
      const sum = (a: number[]) => a.reduce((x, y) => x + y, 0);
      const base = sum(per[names[0]]);
      const rows: Record<string, { bytes: number; ratio: number; blocksBest: number }> = {};
      const best = pieces.map((_, i) => Math.min(...names.map((n) => per[n][i])));
      for (const n of names) rows[n] = { bytes: sum(per[n]), ratio: +(sum(per[n]) / base).toFixed(4), blocksBest: per[n].filter((x, i) => x === best[i]).length };
      rows["best per block"] = { bytes: sum(best), ratio: +(sum(best) / base).toFixed(4), blocksBest: pieces.length };
      out[`${part},${mib}MiB`] = { blocks: pieces.length, rawBytes: all.length, seconds: +((performance.now() - t0) / 1000).toFixed(1), rows };
      process.stderr.write(`${part} ${mib} MiB: ${JSON.stringify(rows)}\n`);
    }
  }
  process.stdout.write(JSON.stringify(out, null, 1) + "\n");
}

const dir = process.argv[2];
if (process.argv.includes("--options")) {
  await optionsMain(dir, process.argv.slice(3));
  process.exit(0);
}
const only = process.argv.includes("--variants") ? process.argv[process.argv.indexOf("--variants") + 1].split(";") : null;
const kinds = ["disk", "memory"];
const result: Record<string, Record<string, number>> = {};
for (let k = 0; k < 2; k++) {
  const chunks = dataChunks(join(dir, `image${k}.bin`));
  const write = (order: number[], f: string) => {
    const b = new Uint8Array(order.length * CHUNK);
    order.forEach((c, i) => b.set(chunks[c], i * CHUNK));
    writeFileSync(f, b);
    return f;
  };
  const ident = chunks.map((_, i) => i);
  const t0 = performance.now();
  const orders: Record<string, number[]> = { image: ident, cluster: clusterOrder(chunks), cluster1k: clusterOrder(chunks, 1024), hist: classOrder(chunks) };
  const sigSeconds = (performance.now() - t0) / 1000;
  const variants: Record<string, [string, string[]]> = {
    "image,-9e,single": ["image", ["-9e"]],
    "image,-6,1M": ["image", ["-6", "--block-size=1MiB"]],
    "image,-6e,1M": ["image", ["-6e", "--block-size=1MiB"]],
    "image,-6,2M": ["image", ["-6", "--block-size=2MiB"]],
    "image,-6,4M": ["image", ["-6", "--block-size=4MiB"]],
    "image,-6,8M": ["image", ["-6", "--block-size=8MiB"]],
    "image,x86,-6,1M": ["image", ["--x86", "--lzma2=preset=6,dict=1MiB", "--block-size=1MiB"]],
    "image,lc0,-6,1M": ["image", ["--lzma2=preset=6,dict=1MiB,lc=0", "--block-size=1MiB"]],
    "image,pb0,-6,1M": ["image", ["--lzma2=preset=6,dict=1MiB,pb=0", "--block-size=1MiB"]],
    "image,nice273,-6,1M": ["image", ["--lzma2=preset=6,dict=1MiB,nice=273", "--block-size=1MiB"]],
    "cluster,-6,1M": ["cluster", ["-6", "--block-size=1MiB"]],
    "cluster1k,-6,1M": ["cluster1k", ["-6", "--block-size=1MiB"]],
    "hist,-6,1M": ["hist", ["-6", "--block-size=1MiB"]],
    "cluster,-9e,single": ["cluster", ["-9e"]],
  };
  result[kinds[k]] = { chunks: chunks.length, sigSeconds };
  for (const [name, [ord, args]] of Object.entries(variants)) {
    if (only && !only.includes(name)) continue;
    const f = write(orders[ord], join(dir, `sim${k}.bin`));
    result[kinds[k]][name] = xzSize(f, args);
    process.stderr.write(`${kinds[k]} ${name}: ${result[kinds[k]][name]}\n`);
    rmSync(f);
  }
}
process.stdout.write(JSON.stringify(result, null, 1) + "\n");
void statSync;
