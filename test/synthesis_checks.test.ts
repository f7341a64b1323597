// Synthesis's checks off the main thread (issue 15 item 3): the codec
// workers hash, decode and verify; the results must be what the main-thread
// path computes, and every failure must still be named as before.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { core } from "./_core.ts";
import { assertBytes } from "./_bytes.ts";
import { scratchDir } from "./_images.ts";
import { WorkerCodec } from "../ts/node/codec_pool.ts";
import { InlineCodec } from "../ts/overlay/codec.ts";
import { fetchSegment, verifyBaseBytes } from "../ts/overlay/synthesis.ts";
import { CHUNK, type OverlayMeta } from "../ts/overlay/format.ts";
import type { OverlayReader } from "../ts/overlay/reader.ts";
import { toHex } from "../ts/core/vectors.ts";
import { cacheDirFor, fileIdentity, openBase } from "../ts/home/base_cache.ts";
import { holeChunkRuns } from "../ts/node/disk_image.ts";
import { CloudletError } from "../ts/errors.ts";
import { FileSource } from "../ts/node/files.ts";
import { BufferSource } from "../ts/overlay/io.ts";

const pattern = (n: number, seed: number) => new Uint8Array(n).map((_, i) => (i * 131 + seed * 17 + (i >> 9)) & 0xff);

test("decodeHashed: one worker trip hashes the segment, decodes it and hashes its data area; a wrong hash or bad bytes come back as data", async () => {
  const codec = new WorkerCodec(1);
  try {
    const head = 96;
    const raw = pattern(head + 3 * CHUNK, 1);
    const xz = core.xzCompress(raw, 6);
    const h = core.hash("blake3", xz);
    const d = await codec.decodeHashed(xz, raw.length, h, head);
    assert.deepEqual(d.xzHash, h);
    assertBytes(d.raw!, raw, "decoded");
    assert.deepEqual(d.digests, core.hashChunks("blake3", raw.subarray(head)), "data-area digests as the main thread computes them");
    assert.equal(d.error, null);
    // Another expected hash: nothing is decoded.
    const w = await codec.decodeHashed(xz, raw.length, new Uint8Array(32), head);
    assert.deepEqual(w.xzHash, h);
    assert.equal(w.raw, null);
    assert.equal(w.digests, null);
    // The expected hash, but bytes that are no .xz stream: the decoder's message, not a throw.
    const junk = pattern(200, 9);
    const j = await codec.decodeHashed(junk, raw.length, core.hash("blake3", junk), head);
    assert.equal(j.raw, null);
    assert.ok(j.error && j.error.length > 0, `error: ${j.error}`);
  } finally {
    await codec.close();
  }
});

test("fetchSegment through the workers names a corrupt segment and one that does not decode, as the inline path does", async () => {
  const raw = pattern(64 + CHUNK, 2);
  const good = core.xzCompress(raw, 6);
  const junk = pattern(300, 5);
  // Just the meta fields fetchSegment reads before the payload's own checks.
  const reader = (bytes: Uint8Array, hashOf: Uint8Array) =>
    ({
      meta: { segments: [{ hash: toHex(core.hash("blake3", hashOf)), rawSize: raw.length, dataChunks: 1 }] } as unknown as OverlayMeta,
      segment: () => Promise.resolve(bytes.slice()),
      segmentFile: () => "x-1.xz",
    }) as unknown as OverlayReader;
  const workers = new WorkerCodec(1);
  try {
    for (const codec of [workers, new InlineCodec(core)]) {
      const name = codec === workers ? "workers" : "inline";
      // A flipped byte: the hash check, before any decoding.
      const flipped = good.slice();
      flipped[flipped.length >> 1] ^= 1;
      await assert.rejects(fetchSegment(core, reader(flipped, good), codec, 0), (e: CloudletError) => e.code === "CORRUPT_SEGMENT" && /segment 1 is corrupt: its hash does not match the meta/.test(e.message) && e.file === "x-1.xz", name);
      // Bytes whose hash the meta holds but which are no .xz stream.
      await assert.rejects(fetchSegment(core, reader(junk, junk), codec, 0), (e: CloudletError) => e.code === "CORRUPT_SEGMENT" && /segment 1 does not decode: /.test(e.message), name);
    }
  } finally {
    await workers.close();
  }
});

test("the base check on the workers reads only data chunks, gives the prepared id, and names a changed chunk in a batch that is part hole", async () => {
  const dir = await scratchDir("synth-checks");
  const disk = join(dir, "base.raw");
  const mem = join(dir, "base.mem");
  // 3 batches of 1024 chunks and a partial one; data runs inside holes, so
  // batches mix data and holes (the case the check now reads run by run).
  const diskChunks = 3 * 1024 + 5;
  await fsp.writeFile(disk, new Uint8Array(0));
  await fsp.truncate(disk, diskChunks * CHUNK);
  const fh = await fsp.open(disk, "r+");
  for (const [first, count] of [[0, 10], [1500, 10], [2100, 1], [3072, 5]]) await fh.write(pattern(count * CHUNK, first), 0, count * CHUNK, first * CHUNK);
  await fh.close();
  await fsp.writeFile(mem, pattern(700 * CHUNK, 3));
  const machine = { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 4 };
  const base = await openBase(core, { disk, memory: mem, machine, dir: cacheDirFor(core, join(dir, "cache"), await fileIdentity(disk), await fileIdentity(mem), machine), needIndex: false });
  const codec = new WorkerCodec(2);
  try {
    const holes = await holeChunkRuns(disk, CHUNK);
    assert.ok(holes.some(([a, b]) => a > 0 && b < 3072), `the file has holes inside batches: ${JSON.stringify(holes)}`);
    const meta = { base: { id: base.id, machine } } as unknown as OverlayMeta;
    const hints = { digests: base.digests, knownZero: { disk: holes, memory: [] } };
    await verifyBaseBytes(core, meta, base.disk, base.memory, { ...hints, codec });
    await verifyBaseBytes(core, meta, base.disk, base.memory, hints); // the main-thread path agrees
    // One byte of chunk 1505 (a data run between holes, batch 2) changes in place.
    const w = await fsp.open(disk, "r+");
    await w.write(new Uint8Array([0xee]), 0, 1, 1505 * CHUNK + 7);
    await w.close();
    await assert.rejects(verifyBaseBytes(core, meta, base.disk, base.memory, { ...hints, codec }), (e: CloudletError) => e.code === "WRONG_BASE" && /base disk chunk 1505 \(byte offset 6164480\) differs/.test(e.message) && e.file === disk);
    // Without the stored digests the recomputed id still refuses it.
    await assert.rejects(verifyBaseBytes(core, meta, base.disk, base.memory, { knownZero: hints.knownZero, codec }), (e: CloudletError) => e.code === "WRONG_BASE" && /do not hash to the overlay's base id/.test(e.message));
  } finally {
    await codec.close();
    await base.close();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("hashSourceRanges: a worker reads the base file itself (pread on the same descriptor) and hashes what the main thread would; zero-padded past the end; not for other sources", async () => {
  const dir = await scratchDir("synth-checks");
  const path = join(dir, "b.raw");
  const bytes = pattern(5 * CHUNK + 1000, 4); // a partial last chunk
  await fsp.writeFile(path, bytes);
  const src = await FileSource.open(path);
  const codec = new WorkerCodec(2);
  try {
    const ranges = [[CHUNK, 2 * CHUNK], [4 * CHUNK, 2 * CHUNK], [9 * CHUNK, CHUNK]] as const; // the last two run past the end
    const expected = new Uint8Array(5 * CHUNK);
    expected.set(bytes.subarray(CHUNK, 3 * CHUNK), 0);
    expected.set(bytes.subarray(4 * CHUNK), 2 * CHUNK);
    const byWorker = codec.hashSourceRanges(src, ranges);
    if (!src.sharedFd) {
      // Deno: descriptors are not shared with workers, so the caller reads (the existing path).
      assert.equal(byWorker, null);
      return;
    }
    assert.ok(byWorker, "a worker reads a FileSource");
    assert.deepEqual(await byWorker, core.hashChunks("blake3", expected));
    // A changed byte in the file shows in the digest of its chunk, and only there.
    const w = await fsp.open(path, "r+");
    await w.write(new Uint8Array([bytes[4 * CHUNK + 5] ^ 1]), 0, 1, 4 * CHUNK + 5);
    await w.close();
    const changed = (await codec.hashSourceRanges(src, ranges))!;
    const want = core.hashChunks("blake3", expected);
    assert.deepEqual(changed.subarray(0, 64), want.subarray(0, 64));
    assert.notDeepEqual(changed.subarray(64, 96), want.subarray(64, 96));
    assert.equal(codec.hashSourceRanges(new BufferSource(bytes), ranges), null, "an in-memory source is not read by a worker");
  } finally {
    await codec.close();
    await src.close();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
