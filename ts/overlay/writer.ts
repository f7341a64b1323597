/**
 * OverlayWriter: turns a custom VM (disk, memory, device state) and its base
 * into an overlay. Runtime-neutral.
 *
 * Pass 1 (classify) reads only the chunks that may have changed: the disk
 * extents the qcow2 map names (or every chunk when no map is given), every
 * memory page, and the device state. Each changed chunk becomes, in order of
 * preference: ZERO, BASE_MEMORY, BASE_DISK (both found through the base index
 * and confirmed against the base's stored digests), or a data candidate.
 *
 * Dedup: data candidates with equal content collapse into one leader plus
 * SELF repeats (memory and disk alike), before any delta encoding.
 *
 * Pass 2 (segment) walks the chunks in (kind, index) order and cuts segments
 * of about `segmentBytes` of payload. Given a recorded working set (VM mode
 * with a warm-up), it first walks the device state and then the chunks the
 * warm-up touched, in first-touch order, and cuts there: those leading
 * segments are the boot set the meta records. Within a segment, records are
 * always in (kind, index) order. A leader pulls its repeats into its
 * own segment, so every segment decodes on its own; a leader with more than
 * segmentBytes / 24 repeats hands the rest to a new leader in a later segment,
 * so no segment exceeds 2 x segmentBytes + one chunk. Leaders are stored
 * RAW, or as XOR against the same-offset base chunk when that has clearly
 * more zero bytes. Segments are compressed in parallel by the codec.
 *
 * Memory use follows the change: ~60 bytes per changed chunk plus a few
 * segments in flight; images are never held whole.
 */
import { type Core, Source } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import {
  CHUNK, CLASS_COUNT, ChunkClass, encodeMeta, encodeSegment, FORMAT_VERSION, hashHex, ImageKind, KIND_COUNT,
  type LaunchConfig, type OverlayMeta, RebuiltHash, RECORD_BYTES, type SegmentInfo,
} from "./format.ts";
import { type BaseView, padDigests, SCAN_BATCH, SHORT_DIGEST, zeroChunkDigest } from "./base_scan.ts";
import type { ByteSource, ChangedExtent, ProgressFn } from "./io.ts";
import { readAt, readChunks } from "./io.ts";
import type { SegmentCodec } from "./codec.ts";

/** Where the writer puts segments and the meta. Hosts implement it atomically. */
export interface OverlayOutput {
  /** Stores segment `i` (0-based), called in order. */
  writeSegment(i: number, xz: Uint8Array): Promise<void>;
  /** Stores the meta and makes the whole overlay visible under its final name(s). */
  commit(meta: Uint8Array): Promise<void>;
  /** Removes everything written so far. */
  abort(): Promise<void>;
}

/** The custom VM to encode. */
export interface CustomVm {
  /** The custom disk, and optionally which extents may have changed. */
  disk: { source: ByteSource; changed?: ChangedExtent[] };
  /** The custom memory image, and optionally its data and hole extents (holes are read as zero, not read). */
  memory: { source: ByteSource; changed?: ChangedExtent[] };
  /** The custom device state, if any. */
  state?: { source: ByteSource } | null;
}

/** Options for {@link writeOverlay}. */
export interface WriteOptions {
  /** The loaded core. */
  core: Core;
  /** The base (with its index). */
  base: BaseView;
  /** The custom VM. */
  custom: CustomVm;
  /** Launch config stored in the meta. */
  launch: LaunchConfig;
  /** Compressor. */
  codec: SegmentCodec;
  /** Destination. */
  output: OverlayOutput;
  /** Target payload bytes per segment (default 1 MiB). */
  segmentBytes?: number;
  /**
   * Put the x86 BCJ filter before LZMA2 in segments whose data is mostly
   * disk chunks (default true): programs and libraries are much of a changed
   * disk, and the filter makes the disk part about 2% smaller (bench/OVERLAY_RESULTS.md).
   */
  x86Disk?: boolean;
  /** Segments compressing at once (default: codec.parallelism * 2). */
  inFlight?: number;
  /** Creator version string. */
  version?: string;
  /** Progress reports. */
  progress?: ProgressFn;
  /** Cancellation. */
  signal?: AbortSignal;
  /**
   * The working set a warm-up recorded (VM mode): these chunks, with the
   * device state first, go into the leading segments, which the meta marks as
   * the boot set. Without it, or in file mode, segments follow image order.
   */
  workingSet?: WorkingSetOrder;
}

/** The chunks a warm-up touched first, for {@link WriteOptions.workingSet}. */
export interface WorkingSetOrder {
  /** [image kind (0 disk, 1 memory), chunk index] per first touch, in the order they came. */
  touches: ReadonlyArray<readonly [number, number]>;
  /** Why this is the boot set: the meta's `boot_set.reason`. */
  reason: string;
}

/** What {@link writeOverlay} produced. */
export interface WriteResult {
  /** The meta as written. */
  meta: OverlayMeta;
  /** Bytes of all segments. */
  compressedBytes: number;
  /** Bytes of all segment payloads. */
  rawBytes: number;
}

/** Minimum extra zero bytes for an XOR delta to be stored instead of the raw chunk. */
export const XOR_MIN_GAIN = 64;

/** Smallest segment payload target: below this the per-segment overhead (xz headers, meta entries) dominates. */
export const MIN_SEGMENT_BYTES = 16 << 10;
/** Largest segment payload target: a segment can reach twice this plus a chunk, which must stay under LIMITS.segmentRaw. */
export const MAX_SEGMENT_BYTES = 32 << 20;

/** Growable table of changed chunks, struct-of-arrays. */
class Entries {
  n = 0;
  kinds = new Uint8Array(1024);
  classes = new Uint8Array(1024);
  indexes = new Float64Array(1024);
  args = new Float64Array(1024);
  digests = new Uint8Array(1024 * 32);

  push(kind: number, index: number, cls: number, arg: number, digest: Uint8Array): void {
    if (this.n === this.kinds.length) this.grow();
    const i = this.n++;
    this.kinds[i] = kind;
    this.classes[i] = cls;
    this.indexes[i] = index;
    this.args[i] = arg;
    this.digests.set(digest, i * 32);
  }

  digest(i: number): Uint8Array {
    return this.digests.subarray(i * 32, i * 32 + 32);
  }

  private grow(): void {
    const cap = this.kinds.length * 2;
    const g = <T extends Uint8Array | Float64Array>(a: T, c: new (n: number) => T, per = 1): T => {
      const b = new c(cap * per);
      b.set(a);
      return b;
    };
    this.kinds = g(this.kinds, Uint8Array);
    this.classes = g(this.classes, Uint8Array);
    this.indexes = g(this.indexes, Float64Array);
    this.args = g(this.args, Float64Array);
    this.digests = g(this.digests, Uint8Array, 32);
  }
}

/** Sorted, merged chunk runs [first, end) to scan, and chunk runs known to read as zero. */
function diskRuns(changed: ChangedExtent[] | undefined, diskSize: number): { scan: Array<[number, number]>; zero: Array<[number, number]> } {
  const chunks = Math.ceil(diskSize / CHUNK);
  if (!changed) return { scan: chunks ? [[0, chunks]] : [], zero: [] };
  const scan: Array<[number, number]> = [];
  const zero: Array<[number, number]> = [];
  for (const e of [...changed].sort((a, b) => a.start - b.start)) {
    if (e.length <= 0) continue;
    const end = Math.min(e.start + e.length, diskSize);
    const f = Math.floor(e.start / CHUNK);
    const l = Math.ceil(end / CHUNK);
    if (e.zero) {
      // Only chunks wholly inside a zero extent are known to be zero; edges get read.
      const zf = Math.ceil(e.start / CHUNK);
      const zl = end === diskSize ? l : Math.floor(end / CHUNK);
      if (zf < zl) zero.push([zf, zl]);
      if (f < zf) scan.push([f, zf]);
      if (Math.max(zl, zf) < l) scan.push([Math.max(zl, zf), l]);
    } else if (f < l) scan.push([f, l]);
  }
  const merge = (runs: Array<[number, number]>) => {
    runs.sort((a, b) => a[0] - b[0]);
    const out: Array<[number, number]> = [];
    for (const r of runs) {
      const last = out[out.length - 1];
      if (last && r[0] <= last[1]) last[1] = Math.max(last[1], r[1]);
      else out.push([r[0], r[1]]);
    }
    return out;
  };
  const s = merge(scan);
  // A chunk that is both scanned and in a zero run is scanned (reading is authoritative).
  const z = merge(zero).flatMap(([a, b]) => {
    const parts: Array<[number, number]> = [];
    let cur = a;
    for (const [sa, sb] of s) {
      if (sb <= cur || sa >= b) continue;
      if (sa > cur) parts.push([cur, sa]);
      cur = Math.max(cur, sb);
    }
    if (cur < b) parts.push([cur, b]);
    return parts;
  });
  return { scan: s, zero: z };
}

/** Encodes `custom` against `base` and writes the overlay. */
export async function writeOverlay(o: WriteOptions): Promise<WriteResult> {
  const { core, base, custom, signal } = o;
  if (!base.index) throw new Error("writeOverlay needs the base index");
  const index = base.index;
  const segmentBytes = o.segmentBytes ?? 1 << 20;
  // A segment holds at most 2 x segmentBytes + one chunk (see pass 2), which must stay within what readers accept.
  if (!Number.isSafeInteger(segmentBytes) || segmentBytes < MIN_SEGMENT_BYTES || segmentBytes > MAX_SEGMENT_BYTES) {
    throw new CloudletError("BAD_ARGUMENT", `segment size must be from ${MIN_SEGMENT_BYTES >> 10} KiB to ${MAX_SEGMENT_BYTES >> 20} MiB, not ${segmentBytes} bytes`);
  }
  const maxRepeatsPerLeader = Math.floor(segmentBytes / RECORD_BYTES);
  const zeroDigest = zeroChunkDigest(core);
  const imageSizes: [number, number, number] = [custom.disk.source.size, custom.memory.source.size, custom.state?.source.size ?? 0];
  const sources: Array<ByteSource | null> = [custom.disk.source, custom.memory.source, custom.state?.source ?? null];
  const baseSources: Array<ByteSource | null> = [base.disk, base.memory, null];
  const zeroPrefix = zeroDigest.subarray(0, SHORT_DIGEST);
  // Base digests of the chunks around the current batch (same offsets), and a
  // small block cache for index hits, which land anywhere in the base.
  const readBaseDigests = (kind: number, first: number, count: number): Promise<Uint8Array> =>
    kind === ImageKind.State ? Promise.resolve(padDigests(new Uint8Array(0), count, zeroPrefix)) : base.digests.read(kind as 0 | 1, first, count);
  const BLOCK = 4096;
  const blocks = new Map<string, Uint8Array>();
  const digestAt = async (kind: number, chunk: number): Promise<Uint8Array> => {
    const b = Math.floor(chunk / BLOCK);
    const key = `${kind}:${b}`;
    let block = blocks.get(key);
    if (!block) {
      block = await readBaseDigests(kind, b * BLOCK, BLOCK);
      if (blocks.size >= 64) blocks.delete(blocks.keys().next().value!);
      blocks.set(key, block);
    }
    const o = (chunk - b * BLOCK) * SHORT_DIGEST;
    return block.subarray(o, o + SHORT_DIGEST);
  };
  const samePrefix = (a: Uint8Array, aOff: number, d: Uint8Array): boolean => {
    for (let k = 0; k < SHORT_DIGEST; k++) if (a[aOff + k] !== d[k]) return false;
    return true;
  };
  const entries = new Entries();
  const classCounts = Array.from({ length: KIND_COUNT }, () => new Array<number>(CLASS_COUNT).fill(0));

  // ---- pass 1: classify -----------------------------------------------------
  const disk = diskRuns(custom.disk.changed, imageSizes[0]);
  const mem = diskRuns(custom.memory.changed, imageSizes[1]);
  const scanPlan: Array<{ kind: ImageKind; runs: Array<[number, number]>; zero: Array<[number, number]> }> = [
    { kind: ImageKind.Disk, runs: disk.scan, zero: disk.zero },
    { kind: ImageKind.Memory, runs: mem.scan, zero: mem.zero },
    { kind: ImageKind.State, runs: imageSizes[2] ? [[0, Math.ceil(imageSizes[2] / CHUNK)]] : [], zero: [] },
  ];
  const scanTotal = scanPlan.reduce((t, p) => t + p.runs.reduce((s, [a, b]) => s + (b - a) * CHUNK, 0), 0);
  let scanned = 0;

  for (const plan of scanPlan) {
    // Zero runs and scan runs interleave in chunk order.
    const work = [...plan.runs.map((r) => ({ r, zero: false })), ...plan.zero.map((r) => ({ r, zero: true }))].sort((a, b) => a.r[0] - b.r[0]);
    for (const { r: [a, b], zero } of work) {
      if (zero) {
        for (let first = a; first < b; first += BLOCK) {
          const count = Math.min(BLOCK, b - first);
          const bd = await readBaseDigests(plan.kind, first, count);
          for (let i = 0; i < count; i++) if (!samePrefix(bd, i * SHORT_DIGEST, zeroPrefix)) entries.push(plan.kind, first + i, ChunkClass.Zero, 0, zeroDigest);
        }
        continue;
      }
      for (let first = a; first < b; first += SCAN_BATCH) {
        signal?.throwIfAborted();
        const count = Math.min(SCAN_BATCH, b - first);
        const data = await readChunks(sources[plan.kind], first, count);
        const digests = core.hashChunks("blake3", data);
        const zeros = core.zeroChunks(data);
        const bd = await readBaseDigests(plan.kind, first, count);
        // Changed, non-zero chunks go to the index in one batch; entries are
        // then pushed in chunk order, which every later step relies on.
        const cls = new Int8Array(count).fill(-1);
        const pending: number[] = [];
        for (let i = 0; i < count; i++) {
          const d = digests.subarray(i * 32, i * 32 + 32);
          if (samePrefix(bd, i * SHORT_DIGEST, d)) continue; // unchanged
          if (zeros[i]) cls[i] = ChunkClass.Zero;
          else pending.push(i);
        }
        const args = new Float64Array(count);
        if (pending.length) {
          const q = new Uint8Array(pending.length * 32);
          pending.forEach((i, j) => q.set(digests.subarray(i * 32, i * 32 + 32), j * 32));
          const hits = index.lookup(q);
          for (let j = 0; j < pending.length; j++) {
            const i = pending[j];
            const src = hits.sources[j];
            const off = hits.offsets[j];
            cls[i] = ChunkClass.Raw;
            if (src < 0) continue;
            // The index key is 64 bits: confirm against the stored 128-bit digest,
            // or, for a disk block between chunk boundaries (512-byte stride), the block itself.
            const kind = src === Source.Memory ? ImageKind.Memory : ImageKind.Disk;
            const stored = off % CHUNK === 0 ? await digestAt(kind, off / CHUNK) : core.hash("blake3", await readAt(base.disk, off, CHUNK));
            if (samePrefix(stored, 0, q.subarray(j * 32, j * 32 + 32))) {
              cls[i] = src === Source.Memory ? ChunkClass.BaseMemory : ChunkClass.BaseDisk;
              args[i] = off;
            }
          }
        }
        for (let i = 0; i < count; i++) {
          if (cls[i] >= 0) entries.push(plan.kind, first + i, cls[i], args[i], digests.subarray(i * 32, i * 32 + 32));
        }
        scanned += count * CHUNK;
        o.progress?.({ phase: "scan", done: scanned, total: scanTotal });
      }
    }
  }

  // ---- dedup: repeats of data chunks, across memory and disk ------------------
  const n = entries.n;
  const leaderOf = new Float64Array(n).fill(-1); // for SELF entries: the leader's entry number
  const nextRepeat = new Int32Array(n).fill(-1); // chain of repeats from each leader
  const lastRepeat = new Int32Array(n).fill(-1);
  {
    const dataIdx: number[] = [];
    for (let i = 0; i < n; i++) if (entries.classes[i] === ChunkClass.Raw) dataIdx.push(i);
    if (dataIdx.length > 1) {
      const q = new Uint8Array(dataIdx.length * 32);
      dataIdx.forEach((e, j) => q.set(entries.digest(e), j * 32));
      const b = core.indexBuilder(dataIdx.length);
      // Value = entry number; entries are in (kind, index) order, so the first wins.
      for (let j = 0; j < dataIdx.length; j++) b.addRun(q.subarray(j * 32, j * 32 + 32), Source.Disk, dataIdx[j], 1);
      const dedup = b.finish();
      const hits = dedup.lookup(q);
      dedup.close();
      dataIdx.forEach((e, j) => {
        const l = hits.offsets[j];
        if (l < 0 || l === e) return;
        const ld = entries.digest(l);
        const d = entries.digest(e);
        for (let k = 0; k < 32; k++) if (ld[k] !== d[k]) return; // key collision: keep as data
        entries.classes[e] = ChunkClass.Self;
        leaderOf[e] = l;
        if (lastRepeat[l] < 0) nextRepeat[l] = e;
        else nextRepeat[lastRepeat[l]] = e;
        lastRepeat[l] = e;
      });
    }
  }

  // ---- pass 2: segment, encode, compress -------------------------------------
  const assigned = new Uint8Array(n);
  const segmentsPlan: number[][] = [];
  let boot: { segments: number; pages: number; chunks: number; basePages: Array<[number, number]> } | null = null;
  {
    let cur: number[] = [];
    let bytes = 0;
    const cut = () => {
      if (cur.length) segmentsPlan.push(cur);
      cur = [];
      bytes = 0;
    };
    /** Puts entry `e` (and the repeats it leads) into the current segment. */
    const take = (e: number) => {
      assigned[e] = 1;
      cur.push(e);
      bytes += RECORD_BYTES;
      if (entries.classes[e] === ChunkClass.Raw) {
        bytes += CHUNK;
        let pulled = 0;
        for (let r = nextRepeat[e]; r >= 0; r = nextRepeat[r]) {
          if (pulled === maxRepeatsPerLeader) {
            // A chunk repeated very often must not make one huge segment: the
            // rest of its repeats get their own leader (stored once more) in a
            // later segment, so every segment still decodes on its own.
            entries.classes[r] = ChunkClass.Raw;
            let q = nextRepeat[r];
            for (let k = 0; k < maxRepeatsPerLeader && q >= 0; k++, q = nextRepeat[q]) leaderOf[q] = r;
            break;
          }
          assigned[r] = 1;
          cur.push(r);
          bytes += RECORD_BYTES;
          pulled++;
        }
      }
      if (bytes >= segmentBytes) cut();
    };
    if (o.workingSet) {
      // The boot set: the device state (nothing resumes without it), then what
      // the warm-up touched, in first-touch order; segments end where it ends.
      const touched = { pages: 0, chunks: 0 };
      const counted = new Uint8Array(n);
      const basePages: number[] = [];
      for (let e = 0; e < n; e++) if (entries.kinds[e] === ImageKind.State && !assigned[e]) take(e);
      for (const [kind, index] of o.workingSet.touches) {
        if (kind !== ImageKind.Disk && kind !== ImageKind.Memory) continue;
        const e = entryOf(kind, index);
        if (e < 0) {
          // Unchanged: the base's, not in the overlay. Memory pages are listed, for early start to send first.
          if (kind === ImageKind.Memory) basePages.push(index);
          continue;
        }
        if (!assigned[e]) {
          // A repeat travels with its leader (which must be in the same segment).
          if (entries.classes[e] === ChunkClass.Self && !assigned[leaderOf[e]]) take(leaderOf[e]);
          // Only a repeat whose leader was split off (see take) is still left: it comes with its own leader later.
          if (!assigned[e] && entries.classes[e] !== ChunkClass.Self) take(e);
        }
        if (assigned[e] && !counted[e]) {
          counted[e] = 1;
          touched[kind === ImageKind.Memory ? "pages" : "chunks"]++;
        }
      }
      cut();
      if (segmentsPlan.length) boot = { segments: segmentsPlan.length, ...touched, basePages: pageRuns(basePages) };
    }
    for (let e = 0; e < n; e++) if (!assigned[e]) take(e);
    cut();
  }

  /** The entry of chunk `index` of image `kind`, or -1 (entries are in (kind, index) order). */
  function entryOf(kind: number, index: number): number {
    let lo = 0;
    let hi = n - 1;
    const key = kind * 2 ** 51 + index;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const k = entries.kinds[mid] * 2 ** 51 + entries.indexes[mid];
      if (k === key) return mid;
      if (k < key) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  const rawTotal = segmentsPlan.reduce((t, s) => t + s.length * RECORD_BYTES + s.filter((e) => entries.classes[e] === ChunkClass.Raw).length * CHUNK, 0);
  let rawDone = 0;
  const segments: SegmentInfo[] = [];
  let compressedBytes = 0;
  let rawBytes = 0;
  const inFlight = o.inFlight ?? Math.max(2, o.codec.parallelism * 2);
  const x86Disk = o.x86Disk ?? true;
  const running: Array<Promise<{ xz: Uint8Array; info: Omit<SegmentInfo, "compressedSize" | "hash"> }>> = [];
  let written = 0;

  const flushOne = async () => {
    const { xz, info } = await running.shift()!;
    const seg: SegmentInfo = { ...info, compressedSize: xz.length, hash: hashHex(core, xz) };
    await o.output.writeSegment(written++, xz);
    segments.push(seg);
    compressedBytes += xz.length;
    rawBytes += info.rawSize;
  };

  try {
    for (const plan of segmentsPlan) {
      signal?.throwIfAborted();
      const members = plan.sort((a, b) => a - b);
      const built = await buildSegment(members);
      running.push(o.codec.compress(built.payload, { x86: x86Disk && built.mostlyDisk }).then((xz) => ({ xz, info: built.info })));
      rawDone += built.payload.length;
      o.progress?.({ phase: "compress", done: rawDone, total: rawTotal });
      if (running.length >= inFlight) await flushOne();
    }
    while (running.length) await flushOne();
  } catch (e) {
    // Let in-flight work settle before the output is removed.
    await Promise.allSettled(running);
    throw e;
  }

  async function buildSegment(members: number[]): Promise<{ payload: Uint8Array; info: Omit<SegmentInfo, "compressedSize" | "hash">; mostlyDisk: boolean }> {
    const count = members.length;
    const kinds = new Uint8Array(count);
    const classes = new Uint8Array(count);
    const indexes = new Float64Array(count);
    const args = new Float64Array(count);
    const recordOf = new Map<number, number>();
    members.forEach((e, r) => recordOf.set(e, r));
    const leaders = members.filter((e) => entries.classes[e] === ChunkClass.Raw);
    const data = new Uint8Array(leaders.length * CHUNK);
    // Read leaders in runs of consecutive chunks of one image.
    for (let i = 0; i < leaders.length; ) {
      let j = i + 1;
      const k = entries.kinds[leaders[i]];
      while (j < leaders.length && entries.kinds[leaders[j]] === k && entries.indexes[leaders[j]] === entries.indexes[leaders[j - 1]] + 1 && j - i < SCAN_BATCH) j++;
      const first = entries.indexes[leaders[i]];
      const bytes = await readChunks(sources[k], first, j - i);
      const check = core.hashChunks("blake3", bytes);
      for (let t = i; t < j; t++) {
        const want = entries.digest(leaders[t]);
        for (let b = 0; b < 32; b++) {
          if (check[(t - i) * 32 + b] !== want[b]) throw new CloudletError("BAD_INPUT", `${KIND_NAMES_L[k]} chunk ${first + t - i} changed while the overlay was being written`, sources[k]!.name);
        }
      }
      // XOR against the same-offset base chunk where that is clearly smaller.
      const baseBytes = baseSources[k] ? await readChunks(baseSources[k], first, j - i) : null;
      const gains = baseBytes ? core.xorGains(bytes, baseBytes) : null;
      const xored = baseBytes ? core.xor(bytes, baseBytes) : null;
      for (let t = i; t < j; t++) {
        const e = leaders[t];
        const slice = (t - i) * CHUNK;
        if (gains && xored && gains[t - i] >= XOR_MIN_GAIN) {
          data.set(xored.subarray(slice, slice + CHUNK), t * CHUNK);
          entries.classes[e] = ChunkClass.Xor;
        } else data.set(bytes.subarray(slice, slice + CHUNK), t * CHUNK);
      }
      i = j;
    }
    const digests = new Uint8Array(count * 32);
    let slot = 0;
    const ranges: Array<[number, number, number]> = [];
    members.forEach((e, r) => {
      const kind = entries.kinds[e];
      const idx = entries.indexes[e];
      const cls = entries.classes[e];
      let arg = entries.args[e];
      if (cls === ChunkClass.Raw || cls === ChunkClass.Xor) arg = slot++;
      else if (cls === ChunkClass.Self) {
        const rec = recordOf.get(leaderOf[e]);
        if (rec === undefined) throw new Error("internal: repeat outside its leader's segment");
        arg = rec;
      }
      kinds[r] = kind;
      classes[r] = cls;
      indexes[r] = idx;
      args[r] = arg;
      classCounts[kind][cls]++;
      const last = ranges[ranges.length - 1];
      if (last && last[0] === kind && last[1] + last[2] === idx) last[2]++;
      else ranges.push([kind, idx, 1]);
      digests.set(entries.digest(e), r * 32);
    });
    const payload = encodeSegment({ kinds, classes, indexes, args }, count, data, leaders.length);
    const rebuiltHash = new RebuiltHash(core);
    rebuiltHash.update(kinds, indexes, digests, 0, count);
    const diskLeaders = leaders.reduce((t, e) => t + (entries.kinds[e] === ImageKind.Disk ? 1 : 0), 0);
    return {
      payload,
      mostlyDisk: diskLeaders * 2 > leaders.length,
      info: { rawSize: payload.length, rebuiltHash: rebuiltHash.hex(), records: count, dataChunks: leaders.length, ranges },
    };
  }

  const meta: OverlayMeta = {
    version: FORMAT_VERSION,
    chunkSize: CHUNK,
    base: { id: base.id, diskSize: base.disk.size, memorySize: base.memory.size, machine: base.machine },
    imageSizes,
    segments,
    launch: o.launch,
    creator: { tool: "cloudlet", version: o.version ?? "0.0.0", created: new Date().toISOString() },
    classCounts,
    ...(boot && o.workingSet ? { bootSet: { ...boot, reason: o.workingSet.reason } } : {}),
  };
  await o.output.commit(encodeMeta(core, meta));
  return { meta, compressedBytes, rawBytes };
}

const KIND_NAMES_L = ["disk", "memory", "device state"];

/** Page indexes (any order, repeats allowed) as ascending, separate [first, count] runs. */
function pageRuns(pages: number[]): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (const p of [...new Set(pages)].sort((a, b) => a - b)) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === p) last[1]++;
    else runs.push([p, 1]);
  }
  return runs;
}
