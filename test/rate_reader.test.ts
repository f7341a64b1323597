// The simulated link of bench/early_start_bench.ts (ts/overlay/rate_reader.ts), on a real overlay:
// segments arrive in order at the set rate, the meta first; a request for a segment not yet sent
// moves it ahead of the in-order stream; the bytes handed out are the overlay's own.
import { test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { core } from "./_core.ts";
import { cloudlet } from "./_cli.ts";
import { scratchDir, writeImageSet } from "./_images.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { RateLimitedReader } from "../ts/overlay/rate_reader.ts";

const dir = await scratchDir("rate-reader");
const set = await writeImageSet(join(dir, "a"), 41, 4 << 20, 2 << 20, 60);
const path = join(dir, "app.overlay");
const made = await cloudlet(["overlay", "--home", join(dir, "home"), "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", set.disk, "--mem", set.mem, "-o", path, "--segment-size", "64K"]);
assert.equal(made.code, 0, made.stderr);

test("segments arrive in order, the meta first, at the link rate", async () => {
  const inner = await openOverlay(core, path);
  try {
    const n = inner.meta.segments.length;
    assert.ok(n >= 4, `the fixture has several segments (${n})`);
    // A rate at which the whole overlay takes about 1.2 s.
    const bps = (inner.totalBytes * 8) / 1.2;
    const link = new RateLimitedReader(inner, { bitsPerSecond: bps });
    const t0 = performance.now();
    await link.start();
    // A reader that asks in order, one at a time: nothing is raised.
    const got: Array<{ i: number; b: Uint8Array; at: number }> = [];
    for (let i = 0; i < n; i++) got.push({ i, b: await link.segment(i), at: performance.now() - t0 });
    await link.done;
    assert.deepEqual(link.deliveries.map((d) => d.segment), [-1, ...Array.from({ length: n }, (_, i) => i)]);
    assert.equal(link.raisedCount, 0, "asking in order raises nothing");
    assert.equal(link.deliveries.at(-1)!.bytes, inner.totalBytes);
    for (const g of got) assert.deepEqual(g.b, await inner.segment(g.i), `segment ${g.i} bytes`);
    // Each segment arrives no earlier than the link could carry it, and not much later.
    let bytes = inner.totalBytes - inner.meta.segments.reduce((t, s) => t + s.compressedSize, 0);
    for (const g of got) {
      bytes += inner.meta.segments[g.i].compressedSize;
      const due = (bytes * 8 * 1000) / bps;
      assert.ok(g.at >= due - 2, `segment ${g.i} at ${g.at.toFixed(1)} ms, not before ${due.toFixed(1)} ms`);
      assert.ok(g.at <= due + 150, `segment ${g.i} at ${g.at.toFixed(1)} ms, near ${due.toFixed(1)} ms`);
    }
    const total = link.deliveries.at(-1)!.atMs;
    assert.ok(total >= 1190 && total <= 1400, `the whole overlay in ${total.toFixed(0)} ms at a rate for 1200 ms`);
  } finally {
    await inner.close();
  }
});

test("a segment asked for before its turn goes next, ahead of the in-order stream", async () => {
  const inner = await openOverlay(core, path);
  try {
    const n = inner.meta.segments.length;
    const link = new RateLimitedReader(inner, { bitsPerSecond: (inner.totalBytes * 8) / 1.0 });
    await link.start();
    await link.segment(0);
    // Segment 1 is on the wire now; the last one is wanted: it must come right after segment 1.
    const last = await link.segment(n - 1);
    assert.deepEqual(last, await inner.segment(n - 1));
    assert.equal(link.hasArrived(2), false, "segment 3 has not been sent before the wanted one");
    await link.done;
    const order = link.deliveries.map((d) => d.segment);
    assert.deepEqual(order, [-1, 0, 1, n - 1, ...Array.from({ length: n - 3 }, (_, i) => i + 2)]);
    assert.deepEqual(link.deliveries.filter((d) => d.raised).map((d) => d.segment), [n - 1]);
    // A wanted segment later in the order is not sent twice: the total stays the overlay's size.
    assert.equal(link.deliveries.at(-1)!.bytes, inner.totalBytes);
    assert.equal(link.bytesDeliveredAt(0), 0);
  } finally {
    await inner.close();
  }
});

test("a segment asked for within the horizon of the in-order stream is not raised (a reader's read-ahead)", async () => {
  const inner = await openOverlay(core, path);
  try {
    const n = inner.meta.segments.length;
    const link = new RateLimitedReader(inner, { bitsPerSecond: (inner.totalBytes * 8) / 0.5, horizon: 3 });
    await link.start();
    await link.segment(0);
    // Segment 1 is on the wire: 2, 3 and 4 are the horizon; 5 is beyond it.
    await Promise.all([link.segment(4), link.segment(5)]);
    await link.done;
    assert.deepEqual(link.deliveries.filter((d) => d.raised).map((d) => d.segment), [5]);
    assert.deepEqual(link.deliveries.map((d) => d.segment).slice(0, 5), [-1, 0, 1, 5, 2]);
    assert.equal(link.deliveries.length, n + 1);
  } finally {
    await inner.close();
  }
});

test("segments named up front go first, then the rest in order", async () => {
  const inner = await openOverlay(core, path);
  try {
    const n = inner.meta.segments.length;
    const link = new RateLimitedReader(inner, { bitsPerSecond: (inner.totalBytes * 8) / 0.3, first: [n - 1, 2] });
    await link.start();
    await link.done;
    assert.deepEqual(link.deliveries.map((d) => d.segment), [-1, n - 1, 2, 0, 1, ...Array.from({ length: n - 3 }, (_, i) => i + 3).filter((i) => i !== n - 1)]);
  } finally {
    await inner.close();
  }
});

test("a closed link rejects waiting requests", async () => {
  const inner = await openOverlay(core, path);
  try {
    const link = new RateLimitedReader(inner, { bitsPerSecond: 8000 });
    assert.throws(() => new RateLimitedReader(inner, { bitsPerSecond: 0 }), /positive/);
    void link.start();
    const waiting = link.segment(1);
    link.close();
    await assert.rejects(waiting, /link was closed/);
  } finally {
    await inner.close();
  }
});

test("a busy reader does not slow the link: what is due arrives together", async () => {
  const inner = await openOverlay(core, path);
  try {
    const n = inner.meta.segments.length;
    assert.ok(n * 100 > 600, `enough segments (${n}) that one delivery per busy turn would take over 600 ms`);
    const link = new RateLimitedReader(inner, { bitsPerSecond: (inner.totalBytes * 8) / 0.3 });
    await link.start();
    // Each arrival blocks the event loop for 100 ms, as applying a segment does.
    await Promise.all(inner.meta.segments.map((_, i) => link.segment(i).then(() => {
      const until = performance.now() + 100;
      while (performance.now() < until);
    })));
    await link.done;
    const last = link.deliveries.at(-1)!.atMs;
    assert.ok(last < 300 + 250, `the last of ${n} segments at ${last.toFixed(0)} ms, for a link that carries the overlay in 300 ms`);
  } finally {
    await inner.close();
  }
});
