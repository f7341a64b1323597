/**
 * The inspector's Web Worker: its own instance of the cloudlet WASM core,
 * which opens the overlay, checks every segment and serves chunk details,
 * so the page stays responsive while a large overlay streams through.
 * Only one segment's bytes are held at a time (plus one cached for the
 * detail view); what goes back to the page is one class byte per record.
 */
import { type Core, loadCore } from "../ts/core/core.ts";
import { CloudletError } from "../ts/errors.ts";
import { BlobSource } from "../ts/inspect/blob_source.ts";
import { CachedSource } from "../ts/inspect/block_cache.ts";
import { chunkDetail, findRecord } from "../ts/inspect/chunk_detail.ts";
import { baseName, matchBaseFiles, openFileSet, sortOverlayFiles, unusedFiles } from "../ts/inspect/file_set.ts";
import { HttpSource } from "../ts/inspect/http_source.ts";
import { readAhead } from "../ts/inspect/read_ahead.ts";
import { type BaseSources, checkSegment, errorInfo } from "../ts/inspect/segment_check.ts";
import { checkKernelVectors } from "../ts/inspect/vector_check.ts";
import { InlineCodec } from "../ts/overlay/codec.ts";
import { decodePackHeader, encodePackHeader, HEADER_BYTES, type SegmentRecords, segmentFileName } from "../ts/overlay/format.ts";
import type { ByteSource } from "../ts/overlay/io.ts";
import type { OverlayReader } from "../ts/overlay/reader.ts";
import { fetchSegment } from "../ts/overlay/synthesis.ts";
import type { FileSpec, OpenedOverlay, Reply, Request, ScanSummary, UploadPlan } from "./protocol.ts";

/** The worker global, typed for what this file uses (tsconfig's lib is DOM). */
const scope = self as unknown as { postMessage(m: Reply, transfer?: Transferable[]): void; onmessage: ((e: MessageEvent<Request>) => void) | null };

let core: Core | null = null;
let reader: OverlayReader | null = null;
/** The files of the open overlay. */
let openSet: Awaited<ReturnType<typeof sortOverlayFiles>> | null = null;
let base: BaseSources | null = null;
/** The last segment decoded for the detail view. */
let cached: { segment: number; records: SegmentRecords } | null = null;

function source(f: FileSpec): ByteSource {
  return f.type === "blob" ? new BlobSource(f.blob, f.name) : new HttpSource(f.url, f.name, f.size);
}

function needCore(): Core {
  if (!core) throw new Error("worker not initialised");
  return core;
}

function needReader(): OverlayReader {
  if (!reader) throw new CloudletError("BAD_ARGUMENT", "no overlay is open");
  return reader;
}

async function open(files: FileSpec[], baseDisk?: FileSpec, baseMemory?: FileSpec): Promise<OpenedOverlay> {
  const c = needCore();
  reader = null;
  base = null;
  cached = null;
  const set = await sortOverlayFiles(files.map(source));
  const r = await openFileSet(c, set);
  const named = { disk: baseDisk ? source(baseDisk) : null, memory: baseMemory ? source(baseMemory) : null };
  const found = baseDisk || baseMemory ? named : matchBaseFiles(r.meta, set.others.values());
  reader = r;
  openSet = set;
  // Base reads are 4 KiB here and there: cache them in blocks.
  base = { disk: found.disk && new CachedSource(found.disk), memory: found.memory && new CachedSource(found.memory) };
  return {
    meta: r.meta,
    name: baseName(r.name),
    layout: set.layout,
    totalBytes: r.totalBytes,
    baseDisk: found.disk ? baseName(found.disk.name) : null,
    baseMemory: found.memory ? baseName(found.memory.name) : null,
    unused: unusedFiles(set, found),
  };
}

async function scan(): Promise<ScanSummary> {
  const c = needCore();
  const r = needReader();
  const t0 = performance.now();
  const segs = r.meta.segments;
  const bytesTotal = segs.reduce((t, s) => t + s.compressedSize, 0);
  let bytesDone = 0;
  let ok = 0;
  let failed = 0;
  let rebuiltChecked = 0;
  const codec = new InlineCodec(c);
  // Reading the next segments overlaps decoding this one.
  const ahead = readAhead(r, 2);
  for (let i = 0; i < segs.length; i++) {
    if (r !== reader) throw new CloudletError("CANCELLED", "another overlay was opened");
    const { records: _records, ...check } = await checkSegment(c, ahead, i, base, codec);
    bytesDone += segs[i].compressedSize;
    if (check.error) failed++;
    else ok++;
    if (check.rebuilt === "ok") rebuiltChecked++;
    const msg: Reply = { op: "segment", check, bytesDone, bytesTotal };
    scope.postMessage(msg, check.classes ? [check.classes.buffer as ArrayBuffer] : []);
  }
  return { ok, failed, rebuiltChecked, ms: performance.now() - t0, wasmBytes: c.memoryBytes };
}

async function detail(kind: number, index: number) {
  const c = needCore();
  const r = needReader();
  // Which segment covers the chunk: the meta's ranges say, without decoding.
  const segment = r.meta.segments.findIndex((s) => s.ranges.some(([k, f, n]) => k === kind && index >= f && index < f + n));
  if (segment < 0) throw new CloudletError("BAD_ARGUMENT", `chunk ${index} of this image is not in the overlay (it is as in the base)`);
  if (cached?.segment !== segment) cached = { segment, records: await fetchSegment(c, r, new InlineCodec(c), segment) };
  const rec = findRecord(cached.records, kind, index);
  return chunkDetail(c, cached.records, segment, rec, base);
}

/** The open overlay laid out as the synthesis protocol sends it (the phone page's upload). */
async function plan(): Promise<UploadPlan> {
  const c = needCore();
  const r = needReader();
  const set = openSet!;
  const main = baseName(set.main.name);
  const segs = r.meta.segments;
  if (set.layout === "packed") {
    const h = decodePackHeader(c, await set.main.read(0, HEADER_BYTES), main);
    let at = h.dataOffset;
    return { head: await set.main.read(0, h.dataOffset), segments: segs.map((s) => ({ file: main, offset: (at += s.compressedSize) - s.compressedSize, size: s.compressedSize })) };
  }
  const metaBytes = r.metaBytes!;
  const dataOffset = HEADER_BYTES + metaBytes.length;
  const totalLength = dataOffset + segs.reduce((t, s) => t + s.compressedSize, 0);
  const head = new Uint8Array(dataOffset);
  head.set(encodePackHeader(c, { metaLength: metaBytes.length, dataOffset, totalLength }, false));
  head.set(metaBytes, HEADER_BYTES);
  const stem = main.replace(/\.overlay-meta$/, "");
  return { head, segments: segs.map((s, i) => ({ file: segmentFileName(stem, i), offset: 0, size: s.compressedSize })) };
}

async function handle(m: Request): Promise<{ value: unknown; transfer?: Transferable[] }> {
  switch (m.op) {
    case "init":
      core = await loadCore(new Uint8Array(m.wasm));
      return { value: { wasmBytes: core.memoryBytes } };
    case "open":
      return { value: await open(m.files, m.baseDisk, m.baseMemory) };
    case "scan":
      return { value: await scan() };
    case "detail": {
      const d = await detail(m.kind, m.index);
      const transfer = [d.stored, d.rebuilt, d.base, d.diff].filter((b): b is Uint8Array => b !== null && b.byteOffset === 0 && b.byteLength === b.buffer.byteLength).map((b) => b.buffer as ArrayBuffer);
      return { value: d, transfer: [...new Set(transfer)] };
    }
    case "selftest":
      return { value: checkKernelVectors(needCore(), m.vectors) };
    case "plan":
      return { value: await plan() };
  }
}

scope.onmessage = (e) => {
  const m = e.data;
  handle(m).then(
    ({ value, transfer }) => scope.postMessage({ op: "reply", id: m.id, ok: true, value }, transfer ?? []),
    (err) => scope.postMessage({ op: "reply", id: m.id, ok: false, error: errorInfo(err) }),
  );
};
