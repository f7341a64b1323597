/**
 * Synthesis: base + overlay -> the custom disk, memory and device state,
 * byte-identical. Runtime-neutral.
 *
 * Segments are fetched and decoded ahead (in parallel, by the codec) while
 * earlier ones are applied. Each segment is checked twice: the BLAKE3 of its
 * compressed bytes before decoding, and the hash over its rebuilt chunks
 * after applying. Any failure aborts every sink, so no output that looks
 * complete survives.
 */
import type { Core } from "../core/core.ts";
import { toHex } from "../core/vectors.ts";
import { CloudletError } from "../errors.ts";
import { CHUNK, ChunkClass, decodeSegment, hashHex, ImageKind, type OverlayMeta, type SegmentRecords } from "./format.ts";
import type { ByteSource, ImageSink, ProgressFn } from "./io.ts";
import { readChunks } from "./io.ts";
import type { SegmentCodec } from "./codec.ts";
import type { OverlayReader } from "./reader.ts";

/** Options for {@link synthesize}. */
export interface SynthesisOptions {
  /** The loaded core. */
  core: Core;
  /** The base id the caller's base has. */
  baseId: string;
  /** Base disk and memory. */
  baseDisk: ByteSource;
  /** Base memory. */
  baseMemory: ByteSource;
  /** The overlay. */
  overlay: OverlayReader;
  /** Decompressor. */
  codec: SegmentCodec;
  /** One sink per image kind: disk, memory, state. */
  sinks: [ImageSink, ImageSink, ImageSink];
  /** Segments decoded ahead of the one being applied (default codec.parallelism * 2). */
  readAhead?: number;
  /** Progress reports (bytes of overlay processed). */
  progress?: ProgressFn;
  /** Cancellation. */
  signal?: AbortSignal;
}

/** Counts of what synthesis did. */
export interface SynthesisResult {
  /** Chunks written, per image kind. */
  chunks: [number, number, number];
  /** Overlay bytes read. */
  overlayBytes: number;
}

/** Refuses an overlay made for another base. */
export function checkBase(meta: OverlayMeta, baseId: string, overlayName: string): void {
  if (meta.base.id !== baseId) {
    throw new CloudletError("WRONG_BASE", `overlay was made for base ${meta.base.id.slice(0, 16)}… but the given base is ${baseId.slice(0, 16)}… (expected base id ${meta.base.id}, actual ${baseId})`, overlayName);
  }
}

/** Fetches, verifies and decodes segment `i`. */
export async function fetchSegment(core: Core, overlay: OverlayReader, codec: SegmentCodec, i: number): Promise<SegmentRecords> {
  const seg = overlay.meta.segments[i];
  const xz = await overlay.segment(i);
  if (hashHex(core, xz) !== seg.hash) throw new CloudletError("CORRUPT_SEGMENT", `segment ${i + 1} is corrupt: its hash does not match the meta`, overlay.segmentFile(i));
  let raw: Uint8Array;
  try {
    raw = await codec.decompress(xz, seg.rawSize);
  } catch (e) {
    throw new CloudletError("CORRUPT_SEGMENT", `segment ${i + 1} does not decode: ${(e as Error).message}`, overlay.segmentFile(i));
  }
  return decodeSegment(raw, overlay.meta, i, overlay.segmentFile(i));
}

/** Rebuilds the images of `overlay` into the sinks. */
export async function synthesize(o: SynthesisOptions): Promise<SynthesisResult> {
  const { core, overlay, signal } = o;
  const meta = overlay.meta;
  checkBase(meta, o.baseId, overlay.name);
  const baseSrc: Array<ByteSource | null> = [o.baseDisk, o.baseMemory, null];
  const chunks: [number, number, number] = [0, 0, 0];
  const readAhead = o.readAhead ?? Math.max(2, o.codec.parallelism * 2);
  const total = overlay.totalBytes;
  let done = total - meta.segments.reduce((t, s) => t + s.compressedSize, 0);
  const pending: Array<Promise<SegmentRecords>> = [];
  let next = 0;
  const launch = () => {
    while (next < meta.segments.length && pending.length < readAhead) {
      const p = fetchSegment(core, overlay, o.codec, next++);
      p.catch(() => {}); // observed when awaited; avoid unhandled rejections meanwhile
      pending.push(p);
    }
  };
  try {
    launch();
    for (let i = 0; i < meta.segments.length; i++) {
      signal?.throwIfAborted();
      const recs = await pending.shift()!;
      launch();
      await applySegment(core, meta, i, recs, baseSrc, o.sinks, overlay.segmentFile(i), chunks);
      done += meta.segments[i].compressedSize;
      o.progress?.({ phase: "synthesize", done, total });
    }
    for (const s of o.sinks) await s.finish();
  } catch (e) {
    await Promise.allSettled(pending);
    await Promise.allSettled(o.sinks.map((s) => s.abort()));
    throw e;
  }
  return { chunks, overlayBytes: total };
}

/** Records rebuilt per batch: bounds the memory of one apply step to 4 MiB. */
const APPLY_BATCH = 1024;

/** Rebuilds every chunk of one decoded segment, writes it, and checks the rebuilt hash. */
export async function applySegment(
  core: Core,
  meta: OverlayMeta,
  segNo: number,
  r: SegmentRecords,
  baseSrc: Array<ByteSource | null>,
  sinks: ImageSink[],
  file: string,
  counts: number[],
): Promise<void> {
  const n = r.kinds.length;
  const hasher = core.hasher("blake3");
  // Rebuilt bytes of Raw/Xor records, for Self repeats that point at them.
  const leaderBytes = new Map<number, Uint8Array>();
  const decodeLeader = async (rec: number): Promise<Uint8Array> => {
    let b = leaderBytes.get(rec);
    if (b) return b;
    const slot = r.args[rec];
    const data = r.data.subarray(slot * CHUNK, slot * CHUNK + CHUNK);
    b = r.classes[rec] === ChunkClass.Xor ? core.xor(data, await readChunks(baseSrc[r.kinds[rec]], r.indexes[rec], 1)) : data;
    leaderBytes.set(rec, b);
    return b;
  };
  for (let s = 0; s < n; s += APPLY_BATCH) {
    const e = Math.min(n, s + APPLY_BATCH);
    const buf = new Uint8Array((e - s) * CHUNK);
    for (let i = s; i < e; i++) {
      const at = (i - s) * CHUNK;
      switch (r.classes[i]) {
        case ChunkClass.Zero:
          break;
        case ChunkClass.BaseMemory:
          buf.set(await readChunksAt(baseSrc[ImageKind.Memory], r.args[i]), at);
          break;
        case ChunkClass.BaseDisk:
          buf.set(await readChunksAt(baseSrc[ImageKind.Disk], r.args[i]), at);
          break;
        case ChunkClass.Raw:
        case ChunkClass.Xor:
          buf.set(await decodeLeader(i), at);
          break;
        case ChunkClass.Self:
          buf.set(await decodeLeader(r.args[i]), at);
          break;
      }
    }
    const digests = core.hashChunks("blake3", buf);
    const head = new Uint8Array(9);
    const hv = new DataView(head.buffer);
    for (let i = s; i < e; i++) {
      hv.setUint8(0, r.kinds[i]);
      hv.setBigUint64(1, BigInt(r.indexes[i]), true);
      hasher.update(head);
      hasher.update(digests.subarray((i - s) * 32, (i - s) * 32 + 32));
    }
    // Write runs of consecutive chunks of one kind in one call; zero runs as zero.
    for (let i = s; i < e; ) {
      let j = i + 1;
      const zero = r.classes[i] === ChunkClass.Zero;
      while (j < e && r.kinds[j] === r.kinds[i] && r.indexes[j] === r.indexes[j - 1] + 1 && (r.classes[j] === ChunkClass.Zero) === zero) j++;
      const sink = sinks[r.kinds[i]];
      if (zero) await sink.zeroChunks(r.indexes[i], j - i);
      else await sink.writeChunks(r.indexes[i], buf.subarray((i - s) * CHUNK, (j - s) * CHUNK));
      counts[r.kinds[i]] += j - i;
      i = j;
    }
  }
  const got = toHex(hasher.digest());
  if (got !== meta.segments[segNo].rebuiltHash) {
    throw new CloudletError("VERIFY_FAILED", `segment ${segNo + 1}: the rebuilt chunks do not match the overlay's check (is the base intact?)`, file);
  }
}

/** Reads one chunk at a byte offset (possibly 512-aligned) of a base image, zero-padded. */
async function readChunksAt(src: ByteSource | null, offset: number): Promise<Uint8Array> {
  const out = new Uint8Array(CHUNK);
  if (!src || offset >= src.size) return out;
  out.set(await src.read(offset, Math.min(CHUNK, src.size - offset)));
  return out;
}
