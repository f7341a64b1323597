// Property-based fuzzing (fast-check) of the code that parses overlay bytes
// from outside: decodeMeta, decodePackHeader, decodeSegment and the two
// packed-head readers (random access and stream). Inputs are random bytes,
// mutations of the golden v1 overlay with their checksums recomputed (so
// they reach the checks behind the checksums), and metas and segments built
// from a model. The properties:
//   - bad input throws a CloudletError, never anything else (a TypeError or
//     RangeError would be a crash);
//   - whatever is accepted satisfies the format's invariants and re-encodes
//     to itself;
//   - the random-access and the stream reader agree;
//   - synthesis from a tampered segment fails or rebuilds the right bytes:
//     never a wrong image.
// Runs per property: CLOUDLET_FUZZ_RUNS (default 200); docs/fuzzing.md has a
// longer run. A failure prints fast-check's seed and the shrunk input.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import fc from "fast-check";
import { core } from "./_core.ts";
import { goldenImages } from "./golden/_images.ts";
import { CloudletError } from "../ts/errors.ts";
import {
  CHUNK,
  ChunkClass,
  decodeMeta,
  decodePackHeader,
  decodeSegment,
  encodeMeta,
  encodePackHeader,
  encodeSegment,
  HEADER_BYTES,
  hashHex,
  ImageKind,
  LIMITS,
  metaBodyLength,
  type OverlayMeta,
  RECORD_BYTES,
  SEGMENT_HEADER_BYTES,
  type SegmentInfo,
} from "../ts/overlay/format.ts";
import { BufferSource, type ImageSink } from "../ts/overlay/io.ts";
import { openPacked, type OverlayReader } from "../ts/overlay/reader.ts";
import { openPackedStream } from "../ts/overlay/stream_reader.ts";
import { synthesize } from "../ts/overlay/synthesis.ts";
import { InlineCodec } from "../ts/overlay/codec.ts";

const RUNS = Number(process.env.CLOUDLET_FUZZ_RUNS ?? 200);
const params = { numRuns: RUNS };
const GOLDEN = new URL("./golden/v1/", import.meta.url);
const packed = new Uint8Array(readFileSync(new URL("golden.overlay", GOLDEN)));
const metaBytes = new Uint8Array(readFileSync(new URL("golden.overlay-meta", GOLDEN)));
const meta = decodeMeta(core, metaBytes, "golden");
const segmentsXz = meta.segments.map((_, i) => new Uint8Array(readFileSync(new URL(`golden-${i + 1}.xz`, GOLDEN))));
const payloads = segmentsXz.map((xz, i) => core.xzDecompressExact(xz, meta.segments[i].rawSize));
const images = goldenImages();
const enc = new TextEncoder();

/** Runs `fn`; a CloudletError is an answer, anything else thrown fails the property. */
function refusedOrValue<T>(fn: () => T): T | CloudletError {
  try {
    return fn();
  } catch (e) {
    if (e instanceof CloudletError) return e;
    throw new Error(`threw ${(e as Error)?.name}, not a CloudletError: ${(e as Error)?.stack ?? e}`);
  }
}
async function refusedOrValueAsync<T>(fn: () => Promise<T>): Promise<T | CloudletError> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof CloudletError) return e;
    throw new Error(`threw ${(e as Error)?.name}, not a CloudletError: ${(e as Error)?.stack ?? e}`);
  }
}

/** A meta with `body` as its JSON body and a correct header (so the checks behind the checksum run). */
function metaWithBody(body: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES + body.length);
  out.set(metaBytes.subarray(0, 16));
  new DataView(out.buffer).setBigUint64(16, BigInt(body.length), true);
  out.set(core.hash("blake3", body), 24);
  out.set(body, HEADER_BYTES);
  return out;
}

/** The format's invariants of an accepted meta (validateMeta's rules, restated). */
function assertMetaInvariants(m: OverlayMeta): void {
  const chunks = m.imageSizes.map((s) => Math.ceil(s / CHUNK));
  const covered: Array<[number, number]> = [];
  for (const s of m.segments) {
    assert.equal(s.rawSize, SEGMENT_HEADER_BYTES + s.records * RECORD_BYTES + s.dataChunks * CHUNK);
    assert.ok(s.rawSize <= LIMITS.segmentRaw && s.compressedSize <= LIMITS.segmentCompressed && s.compressedSize >= 1);
    assert.ok(s.dataChunks <= s.records);
    let n = 0;
    let prev = -1;
    for (const [kind, first, count] of s.ranges) {
      assert.ok(kind >= 0 && kind < 3 && count >= 1 && first + count <= chunks[kind]);
      const key = kind * 2 ** 51 + first;
      assert.ok(key > prev, "ranges ascend within a segment");
      prev = key + count - 1;
      covered.push([key, key + count]);
      n += count;
    }
    assert.equal(n, s.records);
  }
  covered.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < covered.length; i++) assert.ok(covered[i][0] >= covered[i - 1][1], "no chunk covered twice");
}

// --- decodeMeta --------------------------------------------------------------

test("decodeMeta: random bytes, and random bytes behind a valid magic and version, are refused cleanly", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (tail, withHead) => {
      const bytes = withHead ? new Uint8Array([...metaBytes.subarray(0, 12), ...tail]) : tail;
      const r = refusedOrValue(() => decodeMeta(core, bytes, "fuzz"));
      assert.ok(r instanceof CloudletError);
      assert.ok(["BAD_META", "TRUNCATED"].includes(r.code), r.code);
    }),
    params,
  );
});

test("decodeMeta: any JSON body with a correct checksum is refused with BAD_META or is a valid meta", () => {
  fc.assert(
    fc.property(fc.oneof(fc.jsonValue({ maxDepth: 4 }).map((v) => enc.encode(JSON.stringify(v))), fc.uint8Array({ maxLength: 200 })), (body) => {
      const r = refusedOrValue(() => decodeMeta(core, metaWithBody(body), "fuzz"));
      if (r instanceof CloudletError) assert.equal(r.code, "BAD_META");
      else assertMetaInvariants(r);
    }),
    params,
  );
});

/** Paths to every value in a JSON tree. */
function jsonPaths(v: unknown, at: Array<string | number> = [], out: Array<Array<string | number>> = []): Array<Array<string | number>> {
  out.push(at);
  if (Array.isArray(v)) v.forEach((x, i) => jsonPaths(x, [...at, i], out));
  else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) jsonPaths(x, [...at, k], out);
  return out;
}
const goldenJson = JSON.parse(new TextDecoder().decode(metaBytes.subarray(HEADER_BYTES)));
const goldenPaths = jsonPaths(goldenJson).filter((p) => p.length > 0);
/** Values that sit on the edges of the checks. */
const edgy = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constantFrom(-1, 0, 1, 2, 3, 4095, 4096, 2 ** 31, 2 ** 32, 2 ** 43, 2 ** 53 - 1, 2 ** 53, 1e308, 0.5, -0, "", "0", null, true, [], {}, [0, 0, 1], [1, 0, 1], [2, 0, 1]),
);

test("decodeMeta: the golden meta with one field replaced, removed or nudged is refused or still valid, and re-encodes to itself", () => {
  fc.assert(
    fc.property(fc.constantFrom(...goldenPaths), fc.oneof(edgy.map((v) => ({ set: v })), fc.constant({ drop: true }), fc.integer({ min: -3, max: 3 }).map((d) => ({ nudge: d }))), (path, edit) => {
      const json = structuredClone(goldenJson);
      let parent = json;
      for (const k of path.slice(0, -1)) parent = parent[k];
      const last = path[path.length - 1];
      if ("set" in edit) parent[last] = edit.set;
      else if ("drop" in edit) Array.isArray(parent) ? parent.splice(Number(last), 1) : delete parent[last];
      else if (typeof parent[last] === "number") parent[last] += edit.nudge;
      const r = refusedOrValue(() => decodeMeta(core, metaWithBody(enc.encode(JSON.stringify(json))), "fuzz"));
      if (r instanceof CloudletError) return assert.equal(r.code, "BAD_META");
      assertMetaInvariants(r);
      assert.deepEqual(decodeMeta(core, encodeMeta(core, r), "again"), r);
    }),
    params,
  );
});

test("decodeMeta: bytes of the golden meta flipped, cut or extended are refused (the checksum covers the body)", () => {
  fc.assert(
    fc.property(fc.array(fc.tuple(fc.nat(metaBytes.length - 1), fc.integer({ min: 1, max: 255 })), { minLength: 1, maxLength: 4 }), fc.integer({ min: -70, max: 5 }), (flips, cut) => {
      const b = metaBytes.slice(0, Math.max(0, metaBytes.length + Math.min(cut, 0)));
      const bytes = cut > 0 ? new Uint8Array([...b, ...new Uint8Array(cut)]) : b;
      for (const [pos, x] of flips) if (pos < bytes.length) bytes[pos] ^= x;
      const r = refusedOrValue(() => decodeMeta(core, bytes, "fuzz"));
      assert.ok(r instanceof CloudletError, "a changed meta was accepted");
    }),
    params,
  );
});

/** Metas built from a model: random sizes, segments of disjoint ascending ranges. */
const modelMeta = fc
  .record({
    sizes: fc.tuple(fc.integer({ min: 0, max: 2 ** 33 }), fc.integer({ min: 0, max: 2 ** 30 }), fc.integer({ min: 0, max: 1 << 20 })),
    cuts: fc.array(fc.tuple(fc.nat(2), fc.double({ min: 0, max: 1, noNaN: true }), fc.integer({ min: 1, max: 40 }), fc.nat(3)), { maxLength: 30 }),
    forwards: fc.array(fc.record({ proto: fc.constantFrom("tcp" as const, "udp" as const), hostPort: fc.integer({ min: 0, max: 65535 }), guestPort: fc.integer({ min: 1, max: 65535 }) }), { maxLength: 4 }),
  })
  .map(({ sizes, cuts, forwards }): OverlayMeta => {
    // Place runs left to right per kind, so they never overlap; deal them round-robin into segments.
    const chunks = sizes.map((s) => Math.ceil(s / CHUNK));
    const next = [0, 0, 0];
    const segs: Array<Array<[number, number, number]>> = [[], [], [], []];
    for (const [kind, at, len, seg] of cuts) {
      const first = next[kind] + Math.floor(at * Math.max(0, chunks[kind] - next[kind] - len));
      if (first + len > chunks[kind]) continue;
      const ranges = segs[seg];
      // Within a segment (kind, first) must ascend: skip a run that would go back.
      const last = ranges[ranges.length - 1];
      if (last && (last[0] > kind || (last[0] === kind && last[1] + last[2] > first))) continue;
      ranges.push([kind, first, len]);
      next[kind] = first + len;
    }
    const segments: SegmentInfo[] = segs
      .filter((r) => r.length)
      .map((ranges, i) => {
        const records = ranges.reduce((t, r) => t + r[2], 0);
        const dataChunks = Math.floor(records / (i + 1));
        return { compressedSize: 100 + i, rawSize: SEGMENT_HEADER_BYTES + records * RECORD_BYTES + dataChunks * CHUNK, hash: "a".repeat(64), rebuiltHash: "b".repeat(64), records, dataChunks, ranges };
      });
    return {
      ...meta,
      imageSizes: sizes,
      segments,
      // fast-check's records have no prototype; a decoded meta's objects do.
      launch: { portForwards: forwards.map((f) => ({ ...f })), memoryMiB: 64, vcpus: 2 },
    };
  });

test("encodeMeta -> decodeMeta is the identity on metas built from a model", () => {
  fc.assert(
    fc.property(modelMeta, (m) => {
      const back = decodeMeta(core, encodeMeta(core, m), "model");
      assert.deepEqual(back, m);
      assertMetaInvariants(back);
    }),
    params,
  );
});

// --- the packed header and the packed-head readers ---------------------------------

/** Rewrites the header checksum of a packed file (so changed fields reach the checks behind it). */
function rehash(b: Uint8Array): Uint8Array {
  if (b.length >= HEADER_BYTES) b.set(core.hash("blake3", b.subarray(0, 48)).subarray(0, 16), 48);
  return b;
}
const u64 = fc.oneof(fc.constantFrom(0n, 1n, 63n, 64n, 65n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 64n - 1n, BigInt(LIMITS.metaBytes), BigInt(LIMITS.metaBytes + 1)), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }));

test("decodePackHeader: random bytes, and valid-checksum headers with random fields, are refused or consistent", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 80 }), fc.tuple(u64, u64, u64, u64), fc.nat(3), fc.boolean(), (noise, [mo, ml, d, t], version, fromNoise) => {
      let b: Uint8Array;
      if (fromNoise) b = noise;
      else {
        b = packed.slice(0, HEADER_BYTES);
        const v = new DataView(b.buffer);
        v.setUint32(8, version, true);
        v.setBigUint64(16, mo, true);
        v.setBigUint64(24, ml, true);
        v.setBigUint64(32, d, true);
        v.setBigUint64(40, t, true);
        rehash(b);
      }
      const r = refusedOrValue(() => decodePackHeader(core, b, "fuzz"));
      if (r instanceof CloudletError) return assert.ok(["BAD_META", "TRUNCATED"].includes(r.code), r.code);
      assert.equal(r.dataOffset, HEADER_BYTES + r.metaLength);
      assert.ok(r.metaLength >= HEADER_BYTES && r.metaLength <= LIMITS.metaBytes && r.totalLength >= r.dataOffset);
      assert.deepEqual(decodePackHeader(core, encodePackHeader(core, r, false), "again"), r);
    }),
    params,
  );
});

test("metaBodyLength: any 64 bytes give a bounded length or a clean refusal", () => {
  fc.assert(
    fc.property(fc.uint8Array({ minLength: 0, maxLength: 64 }), u64, (b, len) => {
      const head = b.length === 64 ? b : new Uint8Array([...metaBytes.subarray(0, 16), ...b]).subarray(0, 64);
      if (head.length >= 24) new DataView(head.buffer, head.byteOffset).setBigUint64(16, len, true);
      const r = refusedOrValue(() => metaBodyLength(head, "fuzz"));
      if (!(r instanceof CloudletError)) assert.ok(r >= 0 && r <= LIMITS.metaBytes - HEADER_BYTES);
    }),
    params,
  );
});

/** A ReadableStream of `bytes` in pieces of `step` bytes. */
function streamOf(bytes: Uint8Array, step: number): ReadableStream<Uint8Array> {
  let o = 0;
  return new ReadableStream({
    pull(ctl) {
      if (o >= bytes.length) return ctl.close();
      ctl.enqueue(bytes.slice(o, o + step));
      o += step;
    },
  });
}

/** The golden packed file mutated in its header and meta: flips (checksums recomputed or not), a cut, or extra bytes. */
const packedMutation = fc.record({
  flips: fc.array(fc.tuple(fc.nat(HEADER_BYTES + meta.segments.length * 200 + 900), fc.integer({ min: 1, max: 255 })), { maxLength: 3 }),
  fix: fc.boolean(),
  cut: fc.oneof(fc.constant(0), fc.nat(packed.length)),
  extra: fc.nat(3),
  step: fc.integer({ min: 1, max: 5000 }),
});
function mutatePacked(m: { flips: Array<[number, number]>; fix: boolean; cut: number; extra: number }): Uint8Array {
  let b = packed.slice();
  for (const [pos, x] of m.flips) if (pos < b.length) b[pos] ^= x;
  if (m.fix) {
    rehash(b);
    // And the meta's own checksum, when its length still fits.
    const len = Number(new DataView(b.buffer).getBigUint64(HEADER_BYTES + 16, true));
    if (len <= b.length - 2 * HEADER_BYTES) b.set(core.hash("blake3", b.subarray(2 * HEADER_BYTES, 2 * HEADER_BYTES + len)), HEADER_BYTES + 24);
  }
  if (m.cut) b = b.slice(0, m.cut);
  if (m.extra) b = new Uint8Array([...b, ...new Uint8Array(m.extra).fill(7)]);
  return b;
}

test("packed-head readers: a mutated head is refused cleanly, and the random-access and stream readers agree", async () => {
  await fc.assert(
    fc.asyncProperty(packedMutation, async (m) => {
      const b = mutatePacked(m);
      const a = await refusedOrValueAsync(() => openPacked(core, new BufferSource(b, "fuzz")));
      const s = await refusedOrValueAsync(async () => {
        const r = await openPackedStream(core, streamOf(b, m.step), "fuzz");
        for (let i = 0; i < r.meta.segments.length; i++) await r.segment(i);
        await r.finished();
        return r;
      });
      if (a instanceof CloudletError || s instanceof CloudletError) {
        assert.ok(a instanceof CloudletError && s instanceof CloudletError, `one reader accepted what the other refused: ${a instanceof CloudletError ? a.message : s instanceof CloudletError ? s.message : ""}`);
        return;
      }
      assert.deepEqual(a.meta, s.meta);
      assertMetaInvariants(a.meta);
      assert.equal(a.totalBytes, b.length);
    }),
    params,
  );
});

// --- decodeSegment -------------------------------------------------------------

/** The format's invariants of accepted records. */
function assertRecordInvariants(m: OverlayMeta, segNo: number, r: ReturnType<typeof decodeSegment>): void {
  const seg = m.segments[segNo];
  let slot = 0;
  let i = 0;
  for (const [kind, first, count] of seg.ranges) {
    for (let k = 0; k < count; k++, i++) {
      assert.equal(r.kinds[i], kind);
      assert.equal(r.indexes[i], first + k);
      const arg = r.args[i];
      switch (r.classes[i]) {
        case ChunkClass.BaseMemory:
          assert.ok(arg % CHUNK === 0 && arg < m.base.memorySize);
          break;
        case ChunkClass.BaseDisk:
          assert.ok(arg % 512 === 0 && arg < m.base.diskSize);
          break;
        case ChunkClass.Self:
          assert.ok(arg < seg.records && arg !== i && [ChunkClass.Raw, ChunkClass.Xor].includes(r.classes[arg]));
          break;
        case ChunkClass.Raw:
        case ChunkClass.Xor:
          assert.equal(arg, slot++);
          assert.ok(!(r.classes[i] === ChunkClass.Xor && kind === ImageKind.State));
          break;
        default:
          assert.equal(r.classes[i], ChunkClass.Zero);
      }
    }
  }
  assert.equal(slot, seg.dataChunks);
  assert.equal(r.data.length, seg.dataChunks * CHUNK);
}

/** A segment payload mutated: byte flips, or one record field set to a chosen value. */
const payloadMutation = fc.record({
  seg: fc.nat(meta.segments.length - 1),
  flips: fc.array(fc.tuple(fc.nat(SEGMENT_HEADER_BYTES + 16 * RECORD_BYTES), fc.integer({ min: 1, max: 255 })), { maxLength: 3 }),
  field: fc.option(fc.tuple(fc.nat(15), fc.constantFrom(0, 1, 2, 4, 8, 16), fc.oneof(fc.nat(8), fc.constantFrom(0xff, 4096, 512, 2 ** 17, 2 ** 20, 2 ** 32 - 1), fc.nat()))),
  data: fc.option(fc.tuple(fc.nat(), fc.integer({ min: 1, max: 255 }))),
});
function mutatePayload(m: { seg: number; flips: Array<[number, number]>; field: [number, number, number] | null; data: [number, number] | null }): Uint8Array {
  const raw = payloads[m.seg].slice();
  const v = new DataView(raw.buffer);
  for (const [pos, x] of m.flips) if (pos < raw.length) raw[pos] ^= x;
  const recs = meta.segments[m.seg].records;
  if (m.field) {
    const [rec, off, value] = m.field;
    const o = SEGMENT_HEADER_BYTES + (rec % recs) * RECORD_BYTES + off;
    if (off < 8) raw[o] = value & 0xff;
    else v.setBigUint64(o, BigInt(value), true);
  }
  if (m.data) {
    const dataStart = SEGMENT_HEADER_BYTES + recs * RECORD_BYTES;
    if (raw.length > dataStart) raw[dataStart + (m.data[0] % (raw.length - dataStart))] ^= m.data[1];
  }
  return raw;
}

test("decodeSegment: random payloads are refused with CORRUPT_SEGMENT", () => {
  fc.assert(
    fc.property(fc.nat(meta.segments.length - 1), fc.uint8Array({ maxLength: 600 }), fc.boolean(), (seg, noise, sized) => {
      // Sized: the length the meta wants, so the checks past the length check run.
      const raw = sized ? new Uint8Array(meta.segments[seg].rawSize).map((_, i) => noise[i % Math.max(1, noise.length)] ?? 0) : noise;
      const r = refusedOrValue(() => decodeSegment(raw, meta, seg, "fuzz"));
      if (r instanceof CloudletError) assert.equal(r.code, "CORRUPT_SEGMENT");
      else assertRecordInvariants(meta, seg, r);
    }),
    params,
  );
});

test("decodeSegment: golden payloads with flipped bytes or a record field set are refused or keep every invariant", () => {
  fc.assert(
    fc.property(payloadMutation, (m) => {
      const r = refusedOrValue(() => decodeSegment(mutatePayload(m), meta, m.seg, "fuzz"));
      if (r instanceof CloudletError) assert.equal(r.code, "CORRUPT_SEGMENT");
      else assertRecordInvariants(meta, m.seg, r);
    }),
    params,
  );
});

/** Segments built from a model: one record per chunk of the meta's ranges, with a random class each. */
test("encodeSegment -> decodeSegment is the identity on valid records built from a model", () => {
  fc.assert(
    fc.property(fc.nat(meta.segments.length - 1), fc.array(fc.nat(5), { minLength: 16, maxLength: 16 }), fc.array(fc.nat(), { minLength: 16, maxLength: 16 }), (segNo, classPick, argPick) => {
      const seg = meta.segments[segNo];
      const n = seg.records;
      const kinds = new Uint8Array(n);
      const classes = new Uint8Array(n);
      const indexes = new Float64Array(n);
      const args = new Float64Array(n);
      let i = 0;
      for (const [kind, first, count] of seg.ranges) for (let k = 0; k < count; k++, i++) [kinds[i], indexes[i]] = [kind, first + k];
      let slot = 0;
      for (i = 0; i < n; i++) {
        let c = classPick[i % 16] as ChunkClass;
        if (c === ChunkClass.Self && !Array.from(classes.subarray(0, i)).some((x) => x === ChunkClass.Raw || x === ChunkClass.Xor)) c = ChunkClass.Raw;
        if (c === ChunkClass.Xor && kinds[i] === ImageKind.State) c = ChunkClass.Raw;
        classes[i] = c;
        const a = argPick[i % 16];
        if (c === ChunkClass.BaseMemory) args[i] = (a % (meta.base.memorySize / CHUNK)) * CHUNK;
        else if (c === ChunkClass.BaseDisk) args[i] = (a % (meta.base.diskSize / 512)) * 512;
        else if (c === ChunkClass.Self) args[i] = [...classes.subarray(0, i).keys()].filter((j) => classes[j] === ChunkClass.Raw || classes[j] === ChunkClass.Xor)[a % slot];
        else if (c === ChunkClass.Raw || c === ChunkClass.Xor) args[i] = slot++;
      }
      const data = new Uint8Array(slot * CHUNK).map((_, j) => j * 31);
      const m = structuredClone(meta);
      m.segments[segNo] = { ...seg, dataChunks: slot, rawSize: SEGMENT_HEADER_BYTES + n * RECORD_BYTES + slot * CHUNK };
      const back = decodeSegment(encodeSegment({ kinds, classes, indexes, args }, n, data, slot), m, segNo, "model");
      assert.deepEqual([back.kinds, back.classes, back.indexes, back.args], [kinds, classes, indexes, args]);
      assert.deepEqual(back.data, data);
      assertRecordInvariants(m, segNo, back);
    }),
    params,
  );
});

// --- never a wrong image ----------------------------------------------------------

/** An image in memory that starts as `init` (the base, zero-extended or cut to `size`). */
class MemorySink implements ImageSink {
  readonly bytes: Uint8Array;
  constructor(size: number, init: Uint8Array | null) {
    this.bytes = new Uint8Array(size);
    if (init) this.bytes.set(init.subarray(0, size));
  }
  writeChunks(first: number, data: Uint8Array): Promise<void> {
    this.bytes.set(data.subarray(0, Math.max(0, this.bytes.length - first * CHUNK)), first * CHUNK);
    return Promise.resolve();
  }
  zeroChunks(first: number, count: number): Promise<void> {
    this.bytes.fill(0, first * CHUNK, (first + count) * CHUNK);
    return Promise.resolve();
  }
  finish(): Promise<void> {
    return Promise.resolve();
  }
  abort(): Promise<void> {
    return Promise.resolve();
  }
}
const codec = new InlineCodec(core, 0);
const expected = [images.disk, images.mem, images.state];

test("synthesis from a tampered segment (re-compressed, its hash recomputed) fails or rebuilds the right bytes: never a wrong image", async () => {
  let rebuilt = 0;
  await fc.assert(
    fc.asyncProperty(payloadMutation, async (m) => {
      const xz: Uint8Array[] = segmentsXz.slice();
      xz[m.seg] = core.xzCompress(mutatePayload(m), 0);
      const tampered: OverlayMeta = { ...meta, segments: meta.segments.map((s, i) => (i === m.seg ? { ...s, compressedSize: xz[i].length, hash: hashHex(core, xz[i]) } : s)) };
      const overlay: OverlayReader = { meta: tampered, name: "fuzz", totalBytes: metaBytes.length + xz.reduce((t, s) => t + s.length, 0), segment: (i) => Promise.resolve(xz[i]), segmentFile: (i) => `fuzz-${i + 1}.xz` };
      const sinks: [MemorySink, MemorySink, MemorySink] = [new MemorySink(meta.imageSizes[0], images.baseDisk), new MemorySink(meta.imageSizes[1], images.baseMem), new MemorySink(meta.imageSizes[2], null)];
      const r = await refusedOrValueAsync(() => synthesize({ core, baseId: meta.base.id, baseDisk: new BufferSource(images.baseDisk), baseMemory: new BufferSource(images.baseMem), overlay, codec, sinks }));
      if (r instanceof CloudletError) return assert.ok(["CORRUPT_SEGMENT", "VERIFY_FAILED"].includes(r.code), r.code);
      rebuilt++;
      sinks.forEach((s, k) => assert.ok(s.bytes.every((x, j) => x === expected[k][j]), `a tampered segment rebuilt a wrong ${["disk", "memory", "state"][k]}`));
    }),
    params,
  );
  // Mutations that change nothing that matters (a flip undone by another) rebuild the images; most are refused.
  assert.ok(rebuilt < RUNS, `${rebuilt} of ${RUNS} tampered overlays were accepted`);
});
