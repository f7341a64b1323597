/**
 * The honest peer of the overlay benchmark: cloudlet's own classes, without segmentation.
 *
 * It takes a cloudlet overlay's records as they are (so exactly the same dedup: zero, base
 * disk, base memory, self, and XOR against the same-offset base chunk only where that is
 * smaller) and stores each image as ONE `xz -9e` stream: that image's records (24 bytes each,
 * in chunk order) followed by its data chunks (RAW or XOR bytes, in chunk order). A SELF record
 * names its leader by a global data-chunk number, so it costs what cloudlet's record costs.
 * No dictionary restart, the largest dictionary: the lower bound of what cloudlet's independent
 * segments cost in size.
 *
 *   node --import tsx bench/_honest_peer.ts OVERLAY [--keep DIR]   # prints JSON
 */
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** What the honest peer produced. */
export interface HonestPeerResult {
  /** xz -9e bytes per image (records and payload in one stream each). */
  bytes: { disk: number; memory: number; state: number; total: number };
  /** Uncompressed bytes per image: records and payload. */
  raw: { disk: number; memory: number; state: number };
  /** Records and data chunks per image. */
  records: [number, number, number];
  dataChunks: [number, number, number];
  /** CPU seconds of the xz runs (user + sys). */
  cpu: number;
}

const RECORD = 24;
const CHUNK = 4096;

/** Extracts per-image record and payload files from `overlay` into `dir`; returns their paths and counts. */
export async function extractImages(overlay: string, dir: string): Promise<{ files: string[]; records: [number, number, number]; dataChunks: [number, number, number] }> {
  const { loadCoreFromDisk } = await import("../ts/node/core_file.ts");
  const { openOverlay } = await import("../ts/node/overlay_files.ts");
  const { fetchSegment } = await import("../ts/overlay/synthesis.ts");
  const { InlineCodec } = await import("../ts/overlay/codec.ts");
  const { ChunkClass } = await import("../ts/overlay/format.ts");
  const core = await loadCoreFromDisk();
  const ov = await openOverlay(core, overlay);
  const codec = new InlineCodec(core);
  // Per kind: [index, class, arg or global leader key, data chunk or null].
  type Row = { index: number; cls: number; arg: number; data: Uint8Array | null; key: string };
  const rows: Row[][] = [[], [], []];
  try {
    for (let s = 0; s < ov.meta.segments.length; s++) {
      const r = await fetchSegment(core, ov, codec, s);
      for (let i = 0; i < r.kinds.length; i++) {
        const cls = r.classes[i];
        const isData = cls === ChunkClass.Raw || cls === ChunkClass.Xor;
        const data = isData ? r.data.slice(r.args[i] * CHUNK, r.args[i] * CHUNK + CHUNK) : null;
        const key = cls === ChunkClass.Self ? `${s}:${r.args[i]}` : `${s}:${i}`;
        rows[r.kinds[i]].push({ index: r.indexes[i], cls, arg: r.args[i], data, key });
      }
    }
  } finally {
    await ov.close();
  }
  // Global data-chunk numbers, in (kind, index) order, for SELF records to name.
  for (const k of rows) k.sort((a, b) => a.index - b.index);
  const leaderNo = new Map<string, number>();
  let n = 0;
  for (const k of rows) for (const row of k) if (row.data) leaderNo.set(row.key, n++);
  const files: string[] = [];
  const records: [number, number, number] = [0, 0, 0];
  const dataChunks: [number, number, number] = [0, 0, 0];
  rows.forEach((k, kind) => {
    const data = k.filter((r) => r.data);
    const out = new Uint8Array(k.length * RECORD + data.length * CHUNK);
    const v = new DataView(out.buffer);
    k.forEach((row, i) => {
      const o = i * RECORD;
      out[o] = kind;
      out[o + 1] = row.cls;
      v.setBigUint64(o + 8, BigInt(row.index), true);
      const arg = row.data ? leaderNo.get(row.key)! : row.cls === ChunkClass.Self ? leaderNo.get(row.key)! : row.arg;
      v.setBigUint64(o + 16, BigInt(arg), true);
    });
    data.forEach((row, j) => out.set(row.data!, k.length * RECORD + j * CHUNK));
    const f = join(dir, `image${kind}.bin`);
    writeFileSync(f, out);
    files.push(f);
    records[kind] = k.length;
    dataChunks[kind] = data.length;
  });
  return { files, records, dataChunks };
}

/** Runs the honest peer on `overlay`: one xz -9e stream per image. */
export async function honestPeer(overlay: string, keepDir?: string): Promise<HonestPeerResult> {
  const dir = keepDir ?? mkdtempSync(join(tmpdir(), "honest-peer-"));
  mkdirSync(dir, { recursive: true });
  try {
    const { files, records, dataChunks } = await extractImages(overlay, dir);
    const bytes = [0, 0, 0];
    const raw = [0, 0, 0];
    let cpu = 0;
    files.forEach((f, kind) => {
      raw[kind] = statSync(f).size;
      if (!raw[kind]) return;
      const r = spawnSync("/usr/bin/time", ["-f", "%U %S", "xz", "-9e", "-T1", "-k", "-f", f], { encoding: "utf8" });
      if (r.status !== 0) throw new Error(`xz -9e ${f}: ${r.stderr}`);
      const [u, s] = r.stderr.trim().split("\n").pop()!.split(" ").map(Number);
      cpu += u + s;
      bytes[kind] = statSync(f + ".xz").size;
    });
    return {
      bytes: { disk: bytes[0], memory: bytes[1], state: bytes[2], total: bytes[0] + bytes[1] + bytes[2] },
      raw: { disk: raw[0], memory: raw[1], state: raw[2] },
      records,
      dataChunks,
      cpu,
    };
  } finally {
    if (!keepDir) rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const args = process.argv.slice(2);
  const keep = args.indexOf("--keep");
  const keepDir = keep >= 0 ? args[keep + 1] : undefined;
  const overlay = args.find((a, i) => !a.startsWith("--") && (keep < 0 || i !== keep + 1));
  if (!overlay) throw new Error("usage: _honest_peer.ts OVERLAY [--keep DIR]");
  process.stdout.write(JSON.stringify(await honestPeer(overlay, keepDir)) + "\n");
}
