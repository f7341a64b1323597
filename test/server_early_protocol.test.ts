// The early-start protocol between the real client (`sendOverlay`) and the real server on loopback,
// with a backend that stands in for the VM (no QEMU): it asks for the "device state" (the last
// segment) before anything else, says the VM resumed, then asks for segments out of order.
// The in-order upload is held back by the server's memory bound, so the wanted segments can
// only come over the wants channel (PUT .../segments/N); the backend must get every segment
// byte for byte, and the in-order upload must skip the ones already sent.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import * as http from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { cloudlet } from "./_cli.ts";
import { scratchDir, writeImageSet } from "./_images.ts";
import { core } from "./_core.ts";
import { openOverlay, type OpenedOverlay } from "../ts/node/overlay_files.ts";
import { SynthesisServer, type LaunchedVm, type ServerBackend } from "../ts/server/server.ts";
import { CloudletClient, pauseBound, sendOverlay, WantGate } from "../ts/server/client.ts";
import type { OverlayReader } from "../ts/overlay/reader.ts";
import type { OverlayMeta } from "../ts/overlay/format.ts";
import { SlowLink } from "./_slow_link.ts";

/** A generated image pair's overlay (seed, disk and memory bytes, changed chunks, segment size): its path and reader. */
async function makeOverlay(dir: string, seed: number, bytes: number, changes: number, segmentSize: string): Promise<{ path: string; overlay: OpenedOverlay }> {
  const set = await writeImageSet(join(dir, "img"), seed, bytes, bytes, changes);
  const path = join(dir, "app.overlay");
  const r = await cloudlet(["overlay", "--home", join(dir, "home"), "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", set.disk, "--mem", set.mem, "--segment-size", segmentSize, "-o", path]);
  assert.equal(r.code, 0, r.stderr);
  return { path, overlay: await openOverlay(core, path) };
}

/** A backend that stands in for the VM: early start only, run by `fill` (no QEMU). */
function earlyBackend(dir: string, meta: OverlayMeta, fill: (feed: OverlayReader, o: { onResumed: (vm: LaunchedVm) => void }) => Promise<void>): ServerBackend {
  return {
    lockHome: async () => async () => {},
    cleanupOrphans: async () => [],
    resetSessions: async () => {},
    sessionDir: (id) => join(dir, "sessions", id),
    bases: async () => [{ id: meta.base.id, name: "gen", disk: "", memory: "", dir: "", diskSize: meta.base.diskSize, memorySize: meta.base.memorySize, machine: "test" }],
    warm: () => {},
    synthesize: () => Promise.reject(new Error("this test runs early start only")),
    launch: () => Promise.reject(new Error("this test runs early start only")),
    close: async () => {},
    earlyBlocker: async () => null,
    synthesizeEarly: async (_base, _id, feed: OverlayReader, o: { onResumed: (vm: LaunchedVm) => void }) => fill(feed, o),
  };
}

test("early start on loopback: wanted segments go ahead of an in-order upload held by the memory bound; every segment arrives once, intact", { timeout: 60_000 }, async () => {
  const dir = await scratchDir("early-proto");
  try {
    const { overlay } = await makeOverlay(dir, 23, 2 << 20, 60, "64K");
    const meta = overlay.meta;
    const n = meta.segments.length;
    assert.ok(n >= 7, `the overlay has ${n} segments (more than the 5 the memory bound lets the in-order upload deliver)`);
    const expected = await Promise.all(meta.segments.map((_, i) => overlay.segment(i)));
    const got = new Map<number, Uint8Array>();
    const order: number[] = [];
    let resumedBeforeAll = false;
    const backend = earlyBackend(dir, meta, async (feed, o) => {
        const take = async (i: number) => {
          if (got.has(i)) return;
          got.set(i, await feed.segment(i));
          order.push(i);
        };
        await take(n - 1);
        resumedBeforeAll = got.size < n;
        o.onResumed({ vmId: "fakevm", ports: [], stop: async () => {} });
        await Promise.all([take(n - 3), take(Math.floor(n / 2))]);
        for (let i = 0; i < n; i++) await take(i);
    });
    const server = new SynthesisServer({ core, backend, host: "127.0.0.1", port: 0, token: "early-proto-token-0123456789", log: () => {} });
    await server.start();
    try {
      const client = new CloudletClient({ server: `127.0.0.1:${server.address().port}`, token: "early-proto-token-0123456789" });
      let resumed = 0;
      const sent = await sendOverlay({ core, client, overlay, metaBytes: overlay.metaBytes, earlyStart: true, onResumed: () => resumed++ });
      assert.equal(sent.earlyStart, true);
      assert.equal(resumed, 1);
      assert.equal(resumedBeforeAll, true, "the VM resumed before the overlay had arrived");
      assert.ok(sent.outOfOrder >= 1, `segments were sent out of order: ${sent.outOfOrder}`);
      assert.equal(order[0], n - 1, "the device state's segment came first");
      assert.equal(got.size, n);
      for (let i = 0; i < n; i++) assert.deepEqual(got.get(i), expected[i], `segment ${i + 1}`);
      const st = await client.status(sent.id);
      assert.equal(st.state, "running");
      assert.equal(st.received, st.expected);
      assert.equal(st.outOfOrder, sent.outOfOrder, "the server counted the same segments out of order");
      await client.close(sent.id);
    } finally {
      await server.stop();
      await overlay.close();
    }
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

// Deno's node:http client sends over a socket handle of its own and takes no createConnection stream, so the simulated link runs under Node only.
const LINK_SKIP = "Deno" in globalThis && "the simulated link is a createConnection stream, which Deno's node:http client does not take";

/**
 * Over a slow shared link, a wanted segment's PUT against the in-order upload:
 * with `resettable` connections the client cuts the in-order upload (and its
 * unsent bytes) for the want; without (Deno, TLS) it pauses it.
 */
async function yieldsTheLink(resettable: boolean): Promise<void> {
  const dir = await scratchDir("early-yield");
  try {
    const { overlay } = await makeOverlay(dir, 29, 8 << 20, 2000, "1M");
    const meta = overlay.meta;
    const n = meta.segments.length;
    const sizes = meta.segments.map((g) => g.compressedSize);
    const wanted = n - 2;
    assert.ok(n >= 6 && sizes[wanted] >= 400 << 10, `the overlay has ${n} segments of ${sizes.join(", ")} bytes (want at least 6, the wanted one at least 400 KiB)`);
    // 2 MB/s from client to server, shared by the in-order PATCH and the wanted segment's PUT.
    const link = new SlowLink(2e6, resettable);
    const patched = () => link.carried(/^PATCH /);
    // In-order bytes the link had carried when the want went out and when its segment arrived.
    let atWant = -1;
    let atArrival = -1;
    const backend = earlyBackend(dir, meta, async (feed, o) => {
      // Segments in order as they come, so that the in-order upload runs at the link's rate; then one far ahead.
      for (let i = 0; i < 3; i++) await feed.segment(i);
      atWant = patched();
      await feed.segment(wanted);
      atArrival = patched();
      o.onResumed({ vmId: "fakevm", ports: [], stop: async () => {} });
      for (let i = 3; i < n; i++) if (i !== wanted) await feed.segment(i);
    });
    const server = new SynthesisServer({ core, backend, host: "127.0.0.1", port: 0, token: "early-yield-token-0123456789", log: () => {} });
    await server.start();
    try {
      const client = new CloudletClient({ server: `127.0.0.1:${server.address().port}`, token: "early-yield-token-0123456789", connect: link.connect });
      const sent = await sendOverlay({ core, client, overlay, metaBytes: overlay.metaBytes, earlyStart: true });
      assert.equal(sent.earlyStart, true);
      assert.equal(sent.outOfOrder, 1, "the wanted segment went by PUT, and only it");
      assert.ok(link.carried(/^PUT .*\/segments\//) >= sizes[wanted], "the link carried the PUT");
      assert.ok(atWant > 0 && atArrival >= atWant, `in-order bytes on the link at the want ${atWant}, at its arrival ${atArrival}`);
      // Sharing the link, the in-order upload would carry about the wanted segment's size meanwhile.
      // Paused, it carries what it had written already (a piece); cut, about nothing.
      const during = atArrival - atWant;
      // (Bounds with room for the want taking tens of ms to reach the client on a loaded machine: the link carries 1 MB/s of the PATCH meanwhile.)
      const bound = resettable ? 96 << 10 : 224 << 10;
      assert.ok(during <= bound, `the in-order upload carried ${during} bytes while segment ${wanted + 1} (${sizes[wanted]} bytes) was on its way; it should have ${resettable ? "been cut" : "paused"}`);
      assert.equal(sent.uploadsCut, resettable ? 1 : 0, "cut once for the want where connections can be reset");
      assert.equal(link.resets(), sent.uploadsCut);
      const st = await client.status(sent.id);
      assert.equal(st.received, st.expected);
      await client.close(sent.id);
    } finally {
      link.close();
      await server.stop();
      await overlay.close();
    }
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
}

test("over a slow shared link, the client cuts the in-order upload (reset, dropping its unsent bytes) while a wanted segment is on its way", { timeout: 120_000, skip: LINK_SKIP }, () => yieldsTheLink(true));

test("over a slow shared link where connections cannot be reset (Deno, TLS), the in-order upload pauses while a wanted segment is on its way", { timeout: 120_000, skip: LINK_SKIP }, () => yieldsTheLink(false));

test("a {url} session downloads a segment fetched by range for a want once: the in-order download stops before it and resumes past it", { timeout: 120_000 }, async () => {
  const dir = await scratchDir("early-url");
  try {
    const { path, overlay } = await makeOverlay(dir, 31, 8 << 20, 2000, "1M");
    const file = await fsp.readFile(path);
    const meta = overlay.meta;
    const n = meta.segments.length;
    const wanted = n - 2;
    const size = meta.segments[wanted].compressedSize;
    assert.ok(n >= 6 && size >= 400 << 10, `the overlay has ${n} segments; segment ${wanted + 1} is ${size} bytes`);
    // The overlay over HTTP with Range, each answer at 4 MB/s (so the in-order download is still on its way when
    // the wanted segment arrives), counting the bytes it sends.
    let served = 0;
    const files = http.createServer((req, res) => {
      const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
      if (!m) return void res.writeHead(400).end();
      const from = Number(m[1]);
      const to = m[2] ? Number(m[2]) : file.length - 1;
      res.writeHead(206, { "content-range": `bytes ${from}-${to}/${file.length}`, "content-length": String(to - from + 1) });
      let at = from;
      const tick = setInterval(() => {
        if (res.destroyed || at > to) {
          clearInterval(tick);
          if (!res.destroyed) res.end();
          return;
        }
        const k = Math.min(40 << 10, to + 1 - at);
        res.write(file.subarray(at, at + k));
        served += k;
        at += k;
      }, 10);
      res.on("close", () => clearInterval(tick));
    });
    await new Promise<void>((ok) => files.listen(0, "127.0.0.1", ok));
    let handedOver = 0;
    const backend = earlyBackend(dir, meta, async (feed, o) => {
      await feed.segment(wanted);
      o.onResumed({ vmId: "fakevm", ports: [], stop: async () => {} });
      for (let i = 0; i < n; i++) if (i !== wanted) await feed.segment(i), handedOver++;
    });
    const server = new SynthesisServer({ core, backend, host: "127.0.0.1", port: 0, token: "early-url-token-0123456789ab", log: () => {} });
    await server.start();
    try {
      const client = new CloudletClient({ server: `127.0.0.1:${server.address().port}`, token: "early-url-token-0123456789ab" });
      const sent = await sendOverlay({ core, client, overlay: null, url: `http://127.0.0.1:${(files.address() as AddressInfo).port}/app.overlay`, earlyStart: true });
      assert.equal(sent.earlyStart, true);
      assert.equal(handedOver, n - 1);
      const st = await client.status(sent.id);
      assert.equal(st.outOfOrder, 1, "the wanted segment came by range");
      assert.equal(st.received, st.expected);
      // Every byte once, and the wanted segment twice before: the header and meta, the segments, and a little past
      // the wanted segment's start (an answer's bytes in flight when the download was stopped there).
      const once = file.length;
      assert.ok(served < once + size / 2, `served ${served} bytes for a ${once}-byte overlay whose wanted segment is ${size} bytes: it was downloaded twice`);
      await client.close(sent.id);
    } finally {
      await server.stop();
      await new Promise<void>((ok) => files.close(() => ok()));
      await overlay.close();
    }
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("the want gate: the in-order upload waits while wants are pending (a burst until the last settles), never longer than the bound at a time", async () => {
  const gate = new WantGate(300);
  const t0 = Date.now();
  await gate.clear();
  assert.ok(Date.now() - t0 < 50, "no want pending: no pause");
  for (let k = 0; k < 3; k++) gate.begin();
  let open = false;
  const waiting = gate.clear().then(() => (open = true));
  gate.end();
  gate.end();
  await new Promise((r) => setTimeout(r, 30));
  assert.equal(open, false, "one of the burst's three wants is still pending");
  gate.end();
  await waiting;
  assert.equal(open, true);
  // A want that never settles (or one burst after another) pauses the upload at most the bound at a time.
  gate.begin();
  const t1 = Date.now();
  await gate.clear();
  const paused = Date.now() - t1;
  assert.ok(paused >= 280 && paused < 2000, `paused ${paused} ms against a bound of 300`);
  const stop = new AbortController();
  const t2 = Date.now();
  setTimeout(() => stop.abort(), 20);
  await gate.clear(stop.signal);
  assert.ok(Date.now() - t2 < 250, "an abort ends the pause");
  gate.end();
  assert.deepEqual(gate.stats.pauses, 3);
  // The bound stays well inside the server's idle timeout (the lease) for the paused request's connection.
  assert.equal(pauseBound(60_000), 20_000);
  assert.ok(pauseBound(1000) < 1000);
});
