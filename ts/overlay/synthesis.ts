/**
 * Synthesis: base + overlay -> the custom disk, memory and device state,
 * byte-identical. Runtime-neutral.
 *
 * Segments are fetched and decoded ahead (in parallel, by the codec) while
 * earlier ones are applied. Each segment is checked twice: the BLAKE3 of its
 * compressed bytes before decoding, and the hash over its rebuilt chunks
 * after applying. Every base chunk is hashed meanwhile and must give the
 * overlay's base id: the chunks an overlay does not store are the base's.
 * Any failure aborts every sink, so no output that looks complete survives.
 */
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import { CHUNK, ChunkClass, computeBaseId, decodeSegment, hashHex, ImageKind, type OverlayMeta, RebuiltHash, type SegmentRecords } from "./format.ts";
import { type ByteSource, type ImageSink, type ProgressFn, readChunks } from "./io.ts";
import { type DigestSource, type KnownZero, SCAN_BATCH, SHORT_DIGEST, zeroChunkDigest } from "./base_scan.ts";
import { CodecFailure, type DecodedHashed, type SegmentCodec } from "./codec.ts";
import { fromHex, toHex } from "../core/vectors.ts";
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
  /** What helps the base check (see {@link verifyBaseBytes}): stored digests name a changed chunk; known holes are not read. */
  baseCheck?: BaseCheckHints;
  /** Segments 0, 1, ... already being fetched by {@link prefetchSegments} (their decoding overlapped the caller's set-up). */
  prefetched?: Array<Promise<FetchedSegment>>;
  /** The base check, already started by {@link startBaseCheck} (beside the caller's set-up); `baseCheck` is then not used. Stopped on failure. */
  baseCheckStarted?: BaseCheck;
}

/** A running base check: see {@link startBaseCheck}. */
export interface BaseCheck {
  /** Resolves once every base byte hashed to the overlay's base id; rejects with WRONG_BASE otherwise. */
  done: Promise<void>;
  /** Stops reading and hashing (after a failure elsewhere); `done` then rejects. */
  stop(): void;
}

/**
 * Starts {@link verifyBaseBytes} for `meta`'s base, so that it can run
 * beside the caller's set-up; hand the result to synthesize as
 * {@link SynthesisOptions.baseCheckStarted}.
 */
export function startBaseCheck(core: Core, meta: OverlayMeta, baseDisk: ByteSource, baseMemory: ByteSource, hints: BaseCheckHints = {}): BaseCheck {
  const stopper = new AbortController();
  const signal = hints.signal ? AbortSignal.any([hints.signal, stopper.signal]) : stopper.signal;
  const done = verifyBaseBytes(core, meta, baseDisk, baseMemory, { ...hints, signal });
  done.catch(() => {}); // awaited by synthesize
  return { done, stop: () => stopper.abort() };
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

/** A decoded segment; `slotDigests` are the BLAKE3-256 digests of its stored data slots when the codec computed them. */
export type FetchedSegment = SegmentRecords & { slotDigests?: Uint8Array };

/** Fetches, verifies and decodes segment `i`. */
export async function fetchSegment(core: Core, overlay: OverlayReader, codec: SegmentCodec, i: number): Promise<FetchedSegment> {
  const seg = overlay.meta.segments[i];
  const xz = await overlay.segment(i);
  const corrupt = () => new CloudletError("CORRUPT_SEGMENT", `segment ${i + 1} is corrupt: its hash does not match the meta`, overlay.segmentFile(i));
  const undecodable = (msg: string, cause?: unknown) => new CloudletError("CORRUPT_SEGMENT", `segment ${i + 1} does not decode: ${msg}`, overlay.segmentFile(i), cause ? { cause } : undefined);
  if (codec.decodeHashed) {
    // Both checks' hashing and the decode in one trip to a worker.
    let d: DecodedHashed;
    try {
      d = await codec.decodeHashed(xz, seg.rawSize, fromHex(seg.hash), seg.rawSize - seg.dataChunks * CHUNK);
    } catch (e) {
      if (e instanceof CodecFailure) throw e;
      throw undecodable((e as Error).message, e);
    }
    if (toHex(d.xzHash) !== seg.hash) throw corrupt();
    if (!d.raw) throw undecodable(d.error ?? "no output");
    const r: FetchedSegment = decodeSegment(d.raw, overlay.meta, i, overlay.segmentFile(i));
    if (d.digests) r.slotDigests = d.digests;
    return r;
  }
  if (hashHex(core, xz) !== seg.hash) throw corrupt();
  let raw: Uint8Array;
  try {
    raw = await codec.decompress(xz, seg.rawSize);
  } catch (e) {
    if (e instanceof CodecFailure) throw e;
    throw undecodable((e as Error).message);
  }
  return decodeSegment(raw, overlay.meta, i, overlay.segmentFile(i));
}

/** Decoded bytes {@link prefetchSegments} holds at most by default: enough to keep the workers busy through an output set-up of a few tenths of a second. */
const PREFETCH_BYTES = 16 << 20;

/** How many segments {@link prefetchSegments} starts by default: those within PREFETCH_BYTES, and at least synthesis's read-ahead. */
function prefetchCount(meta: OverlayMeta, codec: SegmentCodec): number {
  let n = 0;
  for (let bytes = 0; n < meta.segments.length && bytes + meta.segments[n].rawSize <= PREFETCH_BYTES; n++) bytes += meta.segments[n].rawSize;
  return Math.max(n, 2, codec.parallelism * 2);
}

/**
 * Starts fetching and decoding the first segments (as many as synthesis
 * reads ahead), so that a caller can set up its outputs meanwhile and pass
 * them on as {@link SynthesisOptions.prefetched}. A failure surfaces there.
 */
export function prefetchSegments(core: Core, overlay: OverlayReader, codec: SegmentCodec, readAhead = prefetchCount(overlay.meta, codec)): Array<Promise<FetchedSegment>> {
  const n = Math.min(readAhead, overlay.meta.segments.length);
  return Array.from({ length: n }, (_, i) => {
    const p = fetchSegment(core, overlay, codec, i);
    p.catch(() => {}); // observed by synthesize, or dropped with it
    return p;
  });
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
  const pending: Array<Promise<SegmentRecords>> = [...(o.prefetched ?? [])];
  let next = pending.length;
  // Every base byte the outputs build on (copied or backing chunks as much as
  // referenced ones) is checked against the overlay's base id, alongside the
  // segments; nothing is finished before it passed. See docs/decisions.md.
  const check = o.baseCheckStarted ?? startBaseCheck(core, meta, o.baseDisk, o.baseMemory, { codec: o.codec, ...o.baseCheck, signal });
  const baseChecked = check.done;
  const launch = () => {
    while (next < meta.segments.length && pending.length < readAhead) {
      const p = fetchSegment(core, overlay, o.codec, next++);
      p.catch(() => {}); // observed when awaited; avoid unhandled rejections meanwhile
      pending.push(p);
    }
  };
  // The writes of one segment overlap building the next; at most two segments' writes are in flight.
  let written: Promise<void> = Promise.resolve();
  try {
    launch();
    for (let i = 0; i < meta.segments.length; i++) {
      signal?.throwIfAborted();
      const recs = await pending.shift()!;
      launch();
      const applied = await applySegment(core, meta, i, recs, baseSrc, o.sinks, overlay.segmentFile(i), chunks, o.codec);
      await written;
      written = applied.written;
      done += meta.segments[i].compressedSize;
      o.progress?.({ phase: "synthesize", done, total });
    }
    await written;
    await baseChecked;
    await Promise.all(o.sinks.map((s) => s.finish()));
  } catch (e) {
    await written.catch(() => {});
    // A rebuilt chunk that fails its check on a changed base: name the base file, not the segment.
    if (e instanceof CloudletError && e.code === "VERIFY_FAILED") await baseChecked.catch((b) => (e = b));
    check.stop();
    await baseChecked.catch(() => {});
    await Promise.allSettled(pending);
    await Promise.allSettled(o.sinks.map((s) => s.abort()));
    throw e;
  }
  return { chunks, overlayBytes: total };
}

/** Records rebuilt per batch: bounds the memory of one apply step to 4 MiB. */
const APPLY_BATCH = 1024;

/**
 * Reads many base chunks, each CHUNK bytes at a byte offset, coalescing
 * adjacent offsets into one read; returns them in the order asked.
 */
async function readBaseChunks(src: ByteSource | null, offsets: number[]): Promise<Uint8Array> {
  const out = new Uint8Array(offsets.length * CHUNK);
  if (!src || !offsets.length) return out;
  const order = offsets.map((_, i) => i).sort((x, y) => offsets[x] - offsets[y]);
  if (src.readInto) {
    // Straight into place: a run is back to back both in the base and in `out`.
    for (let i = 0; i < order.length; ) {
      let j = i + 1;
      while (j < order.length && offsets[order[j]] === offsets[order[j - 1]] + CHUNK && order[j] === order[j - 1] + 1) j++;
      const start = offsets[order[i]];
      if (start < src.size) await src.readInto(start, out.subarray(order[i] * CHUNK, (order[i] + j - i) * CHUNK));
      i = j;
    }
    return out;
  }
  for (let i = 0; i < order.length; ) {
    // A run of chunks that sit back to back in the base (at most 4 MiB).
    let j = i + 1;
    while (j < order.length && j - i < 1024 && offsets[order[j]] === offsets[order[j - 1]] + CHUNK) j++;
    const start = offsets[order[i]];
    const bytes = start < src.size ? await src.read(start, Math.min((j - i) * CHUNK, src.size - start)) : new Uint8Array(0);
    for (let k = i; k < j; k++) {
      const rel = (k - i) * CHUNK;
      if (rel < bytes.length) out.set(bytes.subarray(rel, rel + CHUNK), order[k] * CHUNK);
    }
    i = j;
  }
  return out;
}

/**
 * Free batch buffers (APPLY_BATCH chunks each), reused once their writes are
 * done: a synthesis writes hundreds of MiB through them, and fresh 4 MiB
 * buffers per batch were a good part of its garbage collection time.
 */
const freeBatchBuffers: Uint8Array[] = [];
function takeBatchBuffer(chunks: number): Uint8Array {
  const b = freeBatchBuffers.pop() ?? new Uint8Array(APPLY_BATCH * CHUNK);
  // Not cleared: every chunk written from it is set first (ZERO records are
  // written as zero runs, never from the buffer), and clearing 4 MiB per
  // batch cost more than the rest of building it.
  return b.subarray(0, chunks * CHUNK);
}
function giveBatchBuffer(b: Uint8Array): void {
  if (freeBatchBuffers.length < 4) freeBatchBuffers.push(new Uint8Array(b.buffer, 0, APPLY_BATCH * CHUNK));
}

/** BLAKE3 of one zero chunk, per core (the digest every ZERO record rebuilds to). */
const zeroDigests = new WeakMap<Core, Uint8Array>();
function zeroDigestOf(core: Core): Uint8Array {
  let d = zeroDigests.get(core);
  if (!d) zeroDigests.set(core, (d = core.hash("blake3", new Uint8Array(CHUNK))));
  return d;
}

/**
 * Rebuilds every chunk of one decoded segment, issues its writes, and checks
 * the rebuilt hash. Resolves once the check passed; `written` resolves when
 * the sinks have the bytes, so a caller can build the next segment while
 * the file I/O of this one runs (and must await it before finishing).
 *
 * The check hashes each distinct chunk once: a data slot once (its SELF
 * repeats reuse the digest), a base chunk as read, a zero chunk never. With
 * a codec that has `hashChunks`, the hashing runs on its workers while this
 * thread reads the base and writes.
 */
export async function applySegment(
  core: Core,
  meta: OverlayMeta,
  segNo: number,
  r: SegmentRecords,
  baseSrc: Array<ByteSource | null>,
  sinks: ImageSink[],
  file: string,
  counts: number[],
  codec?: Pick<SegmentCodec, "hashChunks">,
): Promise<{ written: Promise<void> }> {
  const n = r.kinds.length;
  const hashOff = codec?.hashChunks?.bind(codec);
  // `owned`: the buffer may be handed to a worker (it is not used afterwards).
  const hash = (b: Uint8Array, owned: boolean): Promise<Uint8Array> => (hashOff ? hashOff(owned ? b : b.slice()) : Promise.resolve(core.hashChunks("blake3", b)));
  // XOR slots are rebuilt against their same-offset base chunks (one
  // coalesced read and one XOR call per image, on those slots only), into a
  // buffer of their own: `r.data` stays as stored (the inspector keeps `r`
  // and shows the deltas). RAW slots are used as stored.
  const slotOf = new Int32Array(n).fill(-1);
  const xorOffsets: number[][] = [[], [], []];
  const xorSlots: number[][] = [[], [], []];
  let slots = 0;
  for (let i = 0; i < n; i++) {
    const c = r.classes[i];
    if (c === ChunkClass.Raw || c === ChunkClass.Xor) {
      slotOf[i] = r.args[i];
      slots++;
    }
    if (c === ChunkClass.Xor) {
      xorOffsets[r.kinds[i]].push(r.indexes[i] * CHUNK);
      xorSlots[r.kinds[i]].push(r.args[i]);
    }
  }
  const xorCount = xorSlots[0].length + xorSlots[1].length + xorSlots[2].length;
  const xorData = new Uint8Array(xorCount * CHUNK);
  const xorPos = new Int32Array(slots).fill(-1); // slot -> its chunk in xorData
  for (let k = 0, at = 0; k < 3; k++) {
    if (!xorSlots[k].length) continue;
    const got = await readBaseChunks(baseSrc[k], xorOffsets[k]);
    const stored = new Uint8Array(got.length);
    xorSlots[k].forEach((slot, j) => stored.set(r.data.subarray(slot * CHUNK, slot * CHUNK + CHUNK), j * CHUNK));
    xorData.set(core.xor(stored, got), at * CHUNK);
    xorSlots[k].forEach((slot, j) => (xorPos[slot] = at + j));
    at += xorSlots[k].length;
  }
  const slotBytes = (slot: number) => (xorPos[slot] >= 0 ? xorData.subarray(xorPos[slot] * CHUNK, xorPos[slot] * CHUNK + CHUNK) : r.data.subarray(slot * CHUNK, slot * CHUNK + CHUNK));
  // Digests of the data slots: the stored ones come with the segment when
  // the codec hashed them as it decoded; the rebuilt XOR slots are hashed
  // here (or on a worker) while the batches below are built.
  const known = (r as FetchedSegment).slotDigests;
  const storedDigests = known && known.length === slots * 32 ? Promise.resolve(known) : slots ? hash(r.data.subarray(0, slots * CHUNK), false) : Promise.resolve(new Uint8Array(0));
  storedDigests.catch(() => {}); // awaited below
  const xorDigests = xorCount ? hash(xorData, false) : Promise.resolve(new Uint8Array(0));
  xorDigests.catch(() => {}); // awaited below
  // Digests of the base chunks, per batch: [records, digests].
  const baseDigests: Array<Promise<[number[], Uint8Array]>> = [];
  let inFlight: Promise<void> = Promise.resolve();
  for (let s = 0; s < n; s += APPLY_BATCH) {
    const e = Math.min(n, s + APPLY_BATCH);
    const buf = takeBatchBuffer(e - s);
    const baseAt: number[][] = [[], []];
    const basePos: number[][] = [[], []];
    const baseRec: number[][] = [[], []];
    for (let i = s; i < e; i++) {
      const at = (i - s) * CHUNK;
      switch (r.classes[i]) {
        case ChunkClass.Zero:
          break;
        case ChunkClass.BaseMemory:
        case ChunkClass.BaseDisk: {
          const k = r.classes[i] === ChunkClass.BaseMemory ? 1 : 0;
          baseAt[k].push(r.args[i]);
          basePos[k].push(at);
          baseRec[k].push(i);
          break;
        }
        case ChunkClass.Raw:
        case ChunkClass.Xor:
        case ChunkClass.Self: {
          buf.set(slotBytes(slotOf[r.classes[i] === ChunkClass.Self ? r.args[i] : i]), at);
          break;
        }
      }
    }
    for (const k of [0, 1]) {
      if (!baseAt[k].length) continue;
      const got = await readBaseChunks(baseSrc[k === 1 ? ImageKind.Memory : ImageKind.Disk], baseAt[k]);
      basePos[k].forEach((at, j) => buf.set(got.subarray(j * CHUNK, j * CHUNK + CHUNK), at));
      const recs = baseRec[k];
      const p = hash(got, true).then((d): [number[], Uint8Array] => [recs, d]);
      p.catch(() => {}); // awaited below
      baseDigests.push(p);
    }
    // Write runs of consecutive chunks of one kind in one call; zero runs as
    // zero. The writes of this batch are issued in order and waited for only
    // after the next batch is built, so the file I/O overlaps the CPU work;
    // at most two batches (8 MiB) are in flight. Sinks order each file's
    // writes themselves (files.ts), so no two overlap on one file.
    const writes: Promise<void>[] = [];
    for (let i = s; i < e; ) {
      let j = i + 1;
      const zero = r.classes[i] === ChunkClass.Zero;
      while (j < e && r.kinds[j] === r.kinds[i] && r.indexes[j] === r.indexes[j - 1] + 1 && (r.classes[j] === ChunkClass.Zero) === zero) j++;
      const sink = sinks[r.kinds[i]];
      writes.push(zero ? sink.zeroChunks(r.indexes[i], j - i) : sink.writeChunks(r.indexes[i], buf.subarray((i - s) * CHUNK, (j - s) * CHUNK)));
      counts[r.kinds[i]] += j - i;
      i = j;
    }
    // The buffer is reused only after its writes succeeded (a failed write aborts everything anyway).
    const batch = Promise.all(writes).then(() => giveBatchBuffer(buf));
    batch.catch(() => {}); // awaited by the caller; this only keeps an early failure from being "unhandled"
    await inFlight;
    inFlight = batch;
  }
  // The rebuilt hash over every record's digest, in record order.
  const digests = new Uint8Array(n * 32);
  const zeroDigest = zeroDigestOf(core);
  try {
    const sd = await storedDigests;
    const xd = await xorDigests;
    for (let i = 0; i < n; i++) {
      const c = r.classes[i];
      if (c === ChunkClass.Zero) digests.set(zeroDigest, i * 32);
      else if (c === ChunkClass.Raw || c === ChunkClass.Xor || c === ChunkClass.Self) {
        const slot = slotOf[c === ChunkClass.Self ? r.args[i] : i];
        const x = xorPos[slot];
        digests.set(x >= 0 ? xd.subarray(x * 32, x * 32 + 32) : sd.subarray(slot * 32, slot * 32 + 32), i * 32);
      }
    }
    for (const p of baseDigests) {
      const [recs, d] = await p;
      recs.forEach((rec, j) => digests.set(d.subarray(j * 32, j * 32 + 32), rec * 32));
    }
  } catch (e) {
    await inFlight.catch(() => {});
    throw e;
  }
  const rebuiltHash = new RebuiltHash(core);
  rebuiltHash.update(r.kinds, r.indexes, digests, 0, n);
  if (rebuiltHash.hex() !== meta.segments[segNo].rebuiltHash) {
    await inFlight.catch(() => {});
    throw new CloudletError("VERIFY_FAILED", `segment ${segNo + 1}: the rebuilt chunks do not match the overlay's check (is the base intact?)`, file);
  }
  return { written: inFlight };
}

/** Hints for {@link verifyBaseBytes}. */
export interface BaseCheckHints {
  /** The digests stored when the base was prepared: a mismatch then names the chunk that changed. */
  digests?: DigestSource;
  /** Chunk runs known to read as zero (file holes): not read, as at preparation. */
  knownZero?: KnownZero;
  /** Hashes off this thread (the codec's workers) when given, and reads there too where it can; else the hashing runs here. */
  codec?: Pick<SegmentCodec, "hashChunks" | "hashSourceRanges">;
  /** Cancellation. */
  signal?: AbortSignal;
}

/** Base-check batches hashed at once: enough to keep a worker fed, few enough to leave room for decoding. */
const BASE_CHECK_IN_FLIGHT = 3;

/**
 * Hashes every chunk of the base images and checks the result against the
 * overlay's base id, so no output builds on base bytes that differ from the
 * base the overlay was made for (a cache keyed by file identity cannot tell).
 * Throws WRONG_BASE naming the base file (and the chunk, when `digests` are given).
 *
 * Only the data chunks are read (holes hash to the zero digest, as at
 * preparation), and with `hints.codec` they are hashed on its workers, a few
 * batches at a time, so the check runs beside synthesis rather than on the
 * thread that applies and writes.
 */
export async function verifyBaseBytes(core: Core, meta: OverlayMeta, disk: ByteSource, memory: ByteSource, hints: BaseCheckHints = {}): Promise<void> {
  const zeroDigest = zeroChunkDigest(core);
  const hashOff = hints.codec?.hashChunks?.bind(hints.codec);
  const hashRanges = hints.codec?.hashSourceRanges?.bind(hints.codec);
  const listHashes: Uint8Array[] = [];
  // Memory first, as the id is computed (see scanBase).
  for (const [src, kind, holes, what] of [[memory, 1, hints.knownZero?.memory, "base memory page"], [disk, 0, hints.knownZero?.disk, "base disk chunk"]] as const) {
    const n = Math.ceil(src.size / CHUNK);
    const listHash = core.hasher("blake3");
    const isHole = holeMap(holes, n);
    // Batches in order; each resolves to the digests of all its chunks.
    const inFlight: Array<Promise<Uint8Array>> = [];
    const check = async (first: number, count: number, digests: Uint8Array) => {
      listHash.update(digests);
      if (!hints.digests) return;
      const want = await hints.digests.read(kind, first, count);
      for (let i = 0; i < count; i++) {
        for (let b = 0; b < SHORT_DIGEST; b++) {
          if (digests[i * 32 + b] !== want[i * SHORT_DIGEST + b]) {
            throw new CloudletError("WRONG_BASE", `${what} ${first + i} (byte offset ${(first + i) * CHUNK}) differs from the base this overlay was made for: the file was changed after it was prepared; restore it or use the overlay's own base`, src.name);
          }
        }
      }
    };
    const firsts: number[] = [];
    try {
      for (let first = 0; first < n || inFlight.length; first += SCAN_BATCH) {
        if (first < n) {
          hints.signal?.throwIfAborted();
          const p = hashBatch(core, src, first, Math.min(SCAN_BATCH, n - first), isHole, zeroDigest, hashOff, hashRanges);
          p.catch(() => {}); // awaited in order below
          inFlight.push(p);
          firsts.push(first);
        }
        if (inFlight.length >= BASE_CHECK_IN_FLIGHT || first >= n) {
          const f = firsts.shift()!;
          await check(f, Math.min(SCAN_BATCH, n - f), await inFlight.shift()!);
        }
      }
    } finally {
      await Promise.allSettled(inFlight);
    }
    listHashes.push(listHash.digest());
  }
  const id = computeBaseId(core, meta.base.machine, disk.size, memory.size, listHashes[1], listHashes[0]);
  if (id !== meta.base.id) {
    throw new CloudletError("WRONG_BASE", `the base files do not hash to the overlay's base id (expected ${meta.base.id}, actual ${id}): a base file was changed, or this is not the overlay's base (base memory ${memory.name})`, disk.name);
  }
}

/** One byte per chunk, 1 where the chunk lies in a known hole; null when there are none. */
function holeMap(holes: ReadonlyArray<readonly [number, number]> | undefined, n: number): Uint8Array | null {
  if (!holes?.length) return null;
  const m = new Uint8Array(n);
  for (const [a, b] of holes) m.fill(1, Math.max(0, a), Math.min(n, b));
  return m;
}

/**
 * The BLAKE3 digests (32 bytes each) of chunks [first, first+count) of
 * `src`: hole chunks get the zero digest unread, the data chunks are read
 * (one read per run) and hashed, by `hashOff` when given.
 */
async function hashBatch(
  core: Core,
  src: ByteSource,
  first: number,
  count: number,
  isHole: Uint8Array | null,
  zeroDigest: Uint8Array,
  hashOff?: (b: Uint8Array) => Promise<Uint8Array>,
  hashRanges?: SegmentCodec["hashSourceRanges"],
): Promise<Uint8Array> {
  // Runs of data chunks, relative to `first`.
  const runs: Array<[number, number]> = [];
  for (let i = 0; i < count; ) {
    if (isHole?.[first + i]) {
      i++;
      continue;
    }
    let j = i + 1;
    while (j < count && !isHole?.[first + j]) j++;
    runs.push([i, j]);
    i = j;
  }
  const dataChunks = runs.reduce((t, [a, b]) => t + b - a, 0);
  // Read and hashed by a worker where it can read `src` itself; else read here.
  const byWorker = dataChunks ? hashRanges?.(src, runs.map(([a, b]) => [(first + a) * CHUNK, (b - a) * CHUNK] as const)) : null;
  const got = byWorker ? await byWorker : await readAndHash(core, src, first, runs, dataChunks, hashOff);
  return spreadDigests(got, first, count, runs, dataChunks, isHole, zeroDigest);
}

/** Reads the data runs of a batch here and hashes them (off this thread with `hashOff`). */
async function readAndHash(core: Core, src: ByteSource, first: number, runs: Array<[number, number]>, dataChunks: number, hashOff?: (b: Uint8Array) => Promise<Uint8Array>): Promise<Uint8Array> {
  let data: Uint8Array;
  if (runs.length === 1 && (first + runs[0][1]) * CHUNK <= src.size) {
    data = await src.read((first + runs[0][0]) * CHUNK, dataChunks * CHUNK); // one read, no copy
    if (data.length < dataChunks * CHUNK) data = padTo(data, dataChunks * CHUNK); // the file shrank meanwhile: the check fails below
  } else {
    // Several runs, or the last chunk is partial (zero-padded, as at preparation).
    data = new Uint8Array(dataChunks * CHUNK);
    let at = 0;
    for (const [a, b] of runs) {
      data.set(await readChunks(src, first + a, b - a), at);
      at += (b - a) * CHUNK;
    }
  }
  return !dataChunks ? new Uint8Array(0) : hashOff ? await hashOff(data) : core.hashChunks("blake3", data);
}

/** The digests of a whole batch: those of its data runs (`got`, back to back) in place, the zero digest for its holes. */
function spreadDigests(got: Uint8Array, first: number, count: number, runs: Array<[number, number]>, dataChunks: number, isHole: Uint8Array | null, zeroDigest: Uint8Array): Uint8Array {
  if (dataChunks === count) return got;
  const digests = new Uint8Array(count * 32);
  for (let i = 0; i < count; i++) if (isHole?.[first + i]) digests.set(zeroDigest, i * 32);
  let k = 0;
  for (const [a, b] of runs) {
    digests.set(got.subarray(k * 32, (k + b - a) * 32), a * 32);
    k += b - a;
  }
  return digests;
}

/** `b` zero-padded to `length` bytes. */
function padTo(b: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  out.set(b);
  return out;
}
