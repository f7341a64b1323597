// UploadFeed (ts/server/upload_feed.ts) with segments out of order (early start over the network):
// the resume offset skips held segments, an in-order body drops a segment it already has,
// wants are told once and only for segments past the one the stream brings, a corrupt
// out-of-order segment fails the feed, a wrong length is refused, and memory stays bounded.
import { test } from "node:test";
import assert from "node:assert/strict";
import { core } from "./_core.ts";
import { hashHex, type OverlayMeta } from "../ts/overlay/format.ts";
import { UploadFeed } from "../ts/server/upload_feed.ts";
import { CloudletError } from "../ts/errors.ts";

/** Segments of these sizes (filled with their index), and a meta that lists them. */
function overlay(sizes: number[]): { segs: Uint8Array[]; meta: OverlayMeta } {
  const segs = sizes.map((n, i) => new Uint8Array(n).fill(i + 1));
  const meta = { segments: segs.map((b) => ({ compressedSize: b.length, hash: hashHex(core, b) })) } as unknown as OverlayMeta;
  return { segs, meta };
}

async function* body(...parts: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const p of parts) yield p;
}

test("a segment sent out of order moves the resume offset once the ones before it are in, and the in-order upload skips it", async () => {
  const { segs, meta } = overlay([100, 200, 300, 50]);
  const feed = new UploadFeed(core, meta, "t", 8);
  assert.equal(await feed.put(2, body(segs[2])), true);
  assert.equal(feed.offset, 0, "segment 2 alone does not move the offset");
  await feed.ingest(body(segs[0], segs[1].subarray(0, 120)), 0);
  assert.equal(feed.offset, 100, "a cut segment is dropped; the offset is a segment boundary");
  await feed.ingest(body(segs[1]), 100);
  assert.equal(feed.offset, 600, "segments 0-2 are held: the next upload starts past the one sent out of order");
  assert.equal(feed.complete, false);
  await feed.ingest(body(segs[3]), 600);
  assert.equal(feed.complete, true);
  for (let i = 0; i < 4; i++) assert.deepEqual(await feed.segment(i), segs[i]);
});

test("an in-order body that reaches a segment sent out of order reads its bytes and drops them", async () => {
  const { segs, meta } = overlay([10, 20, 30]);
  const feed = new UploadFeed(core, meta, "t", 8);
  assert.equal(await feed.put(1, body(segs[1])), true);
  // This body started before the PUT was known: it carries segment 1 again.
  await feed.ingest(body(segs[0], segs[1], segs[2]), 0);
  assert.equal(feed.offset, 60);
  assert.equal(await feed.put(1, body(segs[1])), false, "a PUT of a held segment is read and dropped");
  const got = [await feed.segment(0), await feed.segment(1), await feed.segment(2)];
  assert.deepEqual(got, segs);
});

test("wants are told once, for segments past the one the in-order stream brings, and only when someone serves them", async () => {
  const { segs, meta } = overlay([10, 10, 10, 10, 10]);
  const quiet = new UploadFeed(core, meta, "t", 8);
  void quiet.segment(4).catch(() => {});
  assert.deepEqual(quiet.pendingWants(), [], "no wants without a listener (full synthesis)");
  const feed = new UploadFeed(core, meta, "t", 8);
  const told: number[] = [];
  feed.onWant = (i) => told.push(i);
  const s0 = feed.segment(0);
  const s3 = feed.segment(3);
  void feed.segment(3).catch(() => {});
  assert.deepEqual(told, [3], "segment 0 is the stream's; segment 3 is asked for once");
  assert.deepEqual(feed.pendingWants(), [3]);
  assert.equal(await feed.put(3, body(segs[3])), true);
  assert.deepEqual(await s3, segs[3], "a wanted segment is handed over as it arrives");
  assert.deepEqual(feed.pendingWants(), []);
  await feed.ingest(body(segs[0]), 0);
  assert.deepEqual(await s0, segs[0]);
});

test("a corrupt or mis-sized out-of-order segment: the first fails the feed, the second is refused", async () => {
  const { segs, meta } = overlay([10, 20]);
  const feed = new UploadFeed(core, meta, "up");
  await assert.rejects(feed.put(1, body(segs[1], new Uint8Array(1))), (e: unknown) => e instanceof CloudletError && /segment 2 is 20 bytes; the request sent more/.test(e.message));
  await assert.rejects(feed.put(1, body(segs[1].subarray(0, 5))), /segment 2 is 20 bytes; the request sent 5/);
  await assert.rejects(feed.put(7, body(segs[1])), /no segment 8: the overlay has 2/);
  assert.equal(feed.failed, false, "a wrong length is the request's fault, not the overlay's");
  const bad = segs[1].slice();
  bad[3] ^= 1;
  await assert.rejects(feed.put(1, body(bad)), (e: unknown) => e instanceof CloudletError && e.code === "CORRUPT_SEGMENT" && /segment 2 is corrupt/.test(e.message));
  assert.equal(feed.failed, true);
  await assert.rejects(feed.segment(0), /segment 2 is corrupt/);
});

test("memory stays bounded with segments arriving both ways: a request waits while maxAhead segments wait for synthesis", async () => {
  const { segs, meta } = overlay([5, 5, 5, 5, 5, 5]);
  const feed = new UploadFeed(core, meta, "t", 2);
  let putDone = false;
  let ingestDone = false;
  const put = feed.put(5, body(segs[5])).then(() => (putDone = true));
  const ing = feed.ingest(body(...segs.slice(0, 5)), 0).then(() => (ingestDone = true));
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(putDone && ingestDone, false, "both cannot finish before synthesis takes segments");
  for (let i = 0; i < 6; i++) assert.deepEqual(await feed.segment(i), segs[i]);
  await Promise.all([put, ing]);
  assert.equal(feed.complete, true);
});

test("no want for the segment the stream brings next: not when synthesis, handed a segment, asks for the next at once, nor past segments held already", async () => {
  const { segs, meta } = overlay([10, 10, 10, 10, 10]);
  const feed = new UploadFeed(core, meta, "t", 8);
  const told: number[] = [];
  feed.onWant = (i) => told.push(i);
  // Synthesis reading in order, each request made the moment the previous segment is handed over.
  const reading = (async () => {
    for (const i of [0, 1, 3]) assert.deepEqual(await feed.segment(i), segs[i]);
  })();
  assert.equal(await feed.put(2, body(segs[2])), true);
  const parts = async function* () {
    for (const i of [0, 1]) {
      yield segs[i];
      await new Promise((r) => setTimeout(r, 5));
    }
  };
  await feed.ingest(parts(), 0);
  // Segments 0 and 1 came in order; 3 was asked for after 1, with 2 held: the next upload starts at 3.
  assert.deepEqual(told, [], "nothing the stream brings next was asked for");
  await feed.ingest(body(segs[3], segs[4]), 30);
  await reading;
  assert.deepEqual(told, []);
});

test("while the stream waits on the memory bound, a segment synthesis waits for is asked for, also the next one in order", async () => {
  const { segs, meta } = overlay([5, 5, 5, 5, 5]);
  const feed = new UploadFeed(core, meta, "t", 1);
  const told: number[] = [];
  feed.onWant = (i) => told.push(i);
  const ing = feed.ingest(body(...segs), 0);
  await new Promise((r) => setTimeout(r, 20));
  // Two segments are ready and the stream waits; synthesis asks for segment 2, the stream's next.
  const s2 = feed.segment(2);
  assert.deepEqual(told, [2], "the stream brings nothing while it waits: the next segment is wanted");
  assert.equal(await feed.put(2, body(segs[2])), true);
  assert.deepEqual(await s2, segs[2]);
  for (const i of [0, 1, 3, 4]) assert.deepEqual(await feed.segment(i), segs[i]);
  await ing;
  assert.equal(feed.complete, true);
});

test("untilHeld ends an in-order body at the start of a segment already held, so the next body starts past it", async () => {
  const { segs, meta } = overlay([10, 20, 30, 40, 5]);
  const feed = new UploadFeed(core, meta, "t", 8);
  assert.equal(await feed.put(2, body(segs[2])), true);
  assert.equal(await feed.put(3, body(segs[3])), true);
  const all = new Uint8Array(105);
  segs.reduce((at, b) => (all.set(b, at), at + b.length), 0);
  // Chunks that straddle segment boundaries.
  const chunks = [all.subarray(0, 7), all.subarray(7, 25), all.subarray(25, 45), all.subarray(45)];
  let read = 0;
  const source = async function* () {
    for (const c of chunks) {
      read += c.length;
      yield c;
    }
  };
  await feed.ingest(feed.untilHeld(source(), 0), 0);
  assert.equal(feed.offset, 100, "segments 0-1 came in order; 2-3 were held: the next body starts at segment 4");
  assert.ok(read <= 45, `the source was read up to the held segment's start and no further chunk (${read} bytes)`);
  await feed.ingest(feed.untilHeld(body(all.subarray(100)), 100), 100);
  assert.equal(feed.complete, true);
  for (let i = 0; i < 5; i++) assert.deepEqual(await feed.segment(i), segs[i]);
});
