// The inspector's runtime-neutral model (ts/inspect/), the local inspect
// server and the page build, without a browser: chunk map, segment checks,
// chunk details against the real images, file sorting, byte sources, HTTP
// Range serving, the kernel-vector runner, and a reproducible build.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { core } from "./_core.ts";
import { assertBytes } from "./_bytes.ts";
import { scratchDir, writeImageSet, type ImageSet } from "./_images.ts";
import { randomBytes } from "../ts/core/vectors.ts";
import { createOverlayFiles } from "../ts/jobs/file_overlay.ts";
import { startInspectServer } from "../ts/server/inspect_server.ts";
import { ensureInspectorBuilt } from "../web/build.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { BlobSource } from "../ts/inspect/blob_source.ts";
import { CachedSource } from "../ts/inspect/block_cache.ts";
import { chunkDetail, findRecord } from "../ts/inspect/chunk_detail.ts";
import { CELL_STRIDE, ChunkMap, PENDING, UNREADABLE } from "../ts/inspect/chunk_map.ts";
import { matchBaseFiles, openFileSet, sortOverlayFiles } from "../ts/inspect/file_set.ts";
import { HttpSource } from "../ts/inspect/http_source.ts";
import type { InspectSession } from "../ts/inspect/session.ts";
import { checkSegment } from "../ts/inspect/segment_check.ts";
import { checkKernelVectors } from "../ts/inspect/vector_check.ts";
import { CHUNK, ChunkClass, ImageKind, type OverlayMeta } from "../ts/overlay/format.ts";
import { BufferSource, type ByteSource } from "../ts/overlay/io.ts";
import type { OverlayReader } from "../ts/overlay/reader.ts";
import { buildInspector, inspectorStaleness } from "../web/build.ts";

const read = (p: string) => fsp.readFile(p).then((b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength));

let dir: string;
let set: ImageSet;
let packed: string;
let splitMeta: string;
let images: { disk: Uint8Array; mem: Uint8Array; state: Uint8Array; baseDisk: Uint8Array; baseMem: Uint8Array };

// Fixture built once at load time (Deno's node:test has no before()).
await (async () => {
  dir = await scratchDir("web-model");
  set = await writeImageSet(join(dir, "img"), 41, 4 << 20, 2 << 20, 30);
  await fsp.writeFile(join(dir, "img", "state.bin"), randomBytes(77, 40000));
  const home = join(dir, "home");
  const common = { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, state: join(dir, "img", "state.bin"), home, segmentBytes: 64 << 10 };
  packed = (await createOverlayFiles(core, { ...common, out: join(dir, "app.overlay") })).path;
  splitMeta = (await createOverlayFiles(core, { ...common, out: join(dir, "seed.overlay-meta") })).path;
  images = { disk: await read(set.disk), mem: await read(set.mem), state: await read(join(dir, "img", "state.bin")), baseDisk: await read(set.baseDisk), baseMem: await read(set.baseMem) };
})();

async function withOverlay<T>(path: string, fn: (r: OverlayReader) => Promise<T>): Promise<T> {
  const ov = await openOverlay(core, path);
  try {
    return await fn(ov);
  } finally {
    await ov.close();
  }
}

async function base(): Promise<{ disk: ByteSource; memory: ByteSource }> {
  return { disk: new BufferSource(images.baseDisk, "base.raw"), memory: new BufferSource(images.baseMem, "base.mem") };
}

test("segment checks: every segment passes, with the base the rebuilt hash is checked, without it only where no base is needed", async () => {
  await withOverlay(packed, async (ov) => {
    let skipped = 0;
    for (let i = 0; i < ov.meta.segments.length; i++) {
      const withBase = await checkSegment(core, ov, i, await base());
      assert.equal(withBase.error, null);
      assert.equal(withBase.rebuilt, "ok", `segment ${i + 1}`);
      const without = await checkSegment(core, ov, i, null);
      assert.equal(without.error, null);
      if (without.rebuilt === "skipped") skipped++;
      else assert.equal(without.rebuilt, "ok");
      assert.deepEqual(without.classes, withBase.classes);
    }
    assert.ok(skipped > 0 && skipped <= ov.meta.segments.length);
  });
});

test("segment checks: a flipped byte names the segment; a wrong base fails the rebuilt check", async () => {
  const bytes = await read(packed);
  const meta = await withOverlay(packed, async (ov) => ov.meta);
  const target = 2; // 0-based: the third segment
  const start = bytes.length - meta.segments.slice(target).reduce((t, s) => t + s.compressedSize, 0);
  const bad = bytes.slice();
  bad[start + 40] ^= 0x10;
  const set2 = await sortOverlayFiles([new BufferSource(bad, "bad.overlay")]);
  const r = await openFileSet(core, set2);
  const c = await checkSegment(core, r, target, null);
  assert.equal(c.error?.code, "CORRUPT_SEGMENT");
  assert.match(c.error!.message, /^segment 3 is corrupt/);
  assert.equal(c.error?.file, "bad.overlay");
  assert.equal(c.classes, null);
  // The wrong base: memory pages read differently, so segments that use the base fail.
  const wrong = { disk: new BufferSource(images.baseDisk, "base.raw"), memory: new BufferSource(randomBytes(5, images.baseMem.length), "other.mem") };
  const results = await withOverlay(packed, async (ov) => Promise.all(ov.meta.segments.map((_, i) => checkSegment(core, ov, i, wrong))));
  assert.ok(results.some((x) => x.error?.code === "VERIFY_FAILED" && /rebuilt chunks do not match/.test(x.error.message)));
});

test("chunk map: laid out from the meta, filled per segment; counts, cells and lookups agree", async () => {
  await withOverlay(packed, async (ov) => {
    const meta = ov.meta;
    const map = new ChunkMap(meta);
    assert.equal(map.totalRecords, meta.segments.reduce((t, s) => t + s.records, 0));
    assert.ok(map.classes.every((c) => c === PENDING));
    for (let i = 0; i < meta.segments.length; i++) map.setSegment(i, (await checkSegment(core, ov, i, null)).classes!);
    const counts = map.classCounts();
    for (let k = 0; k < 3; k++) assert.deepEqual(counts[k].slice(0, 6), meta.classCounts[k], `kind ${k}`);
    for (let k = 0; k < 3; k++) {
      const n = map.imageChunks[k];
      const total = counts[k].reduce((a, b) => a + b, 0);
      assert.equal(map.count(k, 0, n), total);
      for (const cells of [1, 7, 2048, n]) {
        const c = map.cells(k, 0, n, cells);
        assert.equal(c.reduce((a, b) => a + b, 0), total, `kind ${k}, ${cells} cells`);
      }
      const rows = map.chunks(k, 0, n);
      assert.equal(rows.length, total);
      for (let i = 1; i < rows.length; i++) assert.ok(rows[i].index > rows[i - 1].index);
      // Chunk i lands in cell floor(i * cells / n): check the cell of every changed chunk.
      const cells = Math.min(n, 100);
      const c = map.cells(k, 0, n, cells);
      for (const r of rows) assert.ok(c[Math.floor((r.index * cells) / n) * CELL_STRIDE + r.cls] > 0);
      for (const r of rows.slice(0, 50)) assert.deepEqual(map.locate(k, r.index), r);
    }
    // A chunk the overlay does not touch.
    const untouched = [...Array(map.imageChunks[0]).keys()].find((i) => map.locate(0, i) === null);
    assert.notEqual(untouched, undefined);
    map.failSegment(0);
    assert.ok(map.classCounts().some((row) => row[UNREADABLE] > 0));
  });
});

test("chunk details rebuild exactly the custom image's bytes, and XOR against the same-offset base chunk", async () => {
  const b = await base();
  const seen = new Set<number>();
  await withOverlay(packed, async (ov) => {
    for (let i = 0; i < ov.meta.segments.length; i++) {
      const c = await checkSegment(core, ov, i, b);
      const r = c.records!;
      for (let rec = 0; rec < r.kinds.length; rec++) {
        const d = await chunkDetail(core, r, i, rec, b);
        const kind = r.kinds[rec];
        const idx = r.indexes[rec];
        assert.equal(findRecord(r, kind, idx), rec);
        const img = [images.disk, images.mem, images.state][kind];
        const want = new Uint8Array(CHUNK);
        want.set(img.subarray(idx * CHUNK, idx * CHUNK + CHUNK));
        assertBytes(d.rebuilt!, want, `segment ${i + 1} record ${rec} (${ChunkClass[d.cls]})`);
        if (kind !== ImageKind.State) {
          const bimg = kind === ImageKind.Disk ? images.baseDisk : images.baseMem;
          const bw = new Uint8Array(CHUNK);
          bw.set(bimg.subarray(idx * CHUNK, idx * CHUNK + CHUNK));
          assertBytes(d.base!, bw);
          assertBytes(d.diff!, core.xor(want, bw));
          assert.equal(d.changedBytes, d.diff!.filter((x) => x !== 0).length);
        } else assert.equal(d.base, null);
        if (d.cls === ChunkClass.Xor) assertBytes(d.stored!, d.diff!, "an XOR chunk stores its delta against the base");
        seen.add(d.cls);
      }
    }
  });
  assert.deepEqual([...seen].sort(), [0, 1, 2, 3, 4, 5], "every class was checked");
  // Without a base, chunks that need it have no rebuilt bytes, but RAW ones do.
  await withOverlay(packed, async (ov) => {
    const r = (await checkSegment(core, ov, 0, null)).records!;
    const raw = r.classes.indexOf(ChunkClass.Raw);
    const d = await chunkDetail(core, r, 0, raw, null);
    assert.ok(d.rebuilt && !d.base && !d.diff && d.changedBytes === -1);
    const bm = r.classes.indexOf(ChunkClass.BaseMemory);
    if (bm >= 0) assert.equal((await chunkDetail(core, r, 0, bm, null)).rebuilt, null);
  });
});

test("file sorting: finds the overlay by magic in either layout, matches base images by size, names what is wrong", async () => {
  const src = async (p: string, name = p.split("/").pop()!) => new BufferSource(await read(p), name);
  const segNames = (await fsp.readdir(dir)).filter((n) => /^seed-\d+\.xz$/.test(n));
  const files = [await src(splitMeta), ...(await Promise.all(segNames.map((n) => src(join(dir, n))))), await src(set.baseDisk), await src(set.baseMem)];
  const sorted = await sortOverlayFiles(files.reverse());
  assert.equal(sorted.layout, "split");
  const r = await openFileSet(core, sorted);
  const b = matchBaseFiles(r.meta, sorted.others.values());
  assert.equal(b.disk?.name, "base.raw");
  assert.equal(b.memory?.name, "base.mem");
  // Equal sizes: the name decides.
  const m = { ...r.meta, base: { ...r.meta.base, diskSize: 100, memorySize: 100 } } as OverlayMeta;
  const same = matchBaseFiles(m, [new BufferSource(new Uint8Array(100), "vm-ram.img"), new BufferSource(new Uint8Array(100), "vm-disk.img")]);
  assert.equal(same.memory?.name, "vm-ram.img");
  assert.equal(same.disk?.name, "vm-disk.img");
  await assert.rejects(sortOverlayFiles([await src(set.baseDisk)]), /no cloudlet overlay among the files \(base\.raw\)/);
  await assert.rejects(sortOverlayFiles([await src(packed), await src(splitMeta)]), /more than one overlay/);
  // Without one segment file, the reader names it when that segment is read.
  const missing = await sortOverlayFiles(files.filter((f) => f.name !== "seed-2.xz"));
  const mr = await openFileSet(core, missing);
  const c = await checkSegment(core, mr, 1, null);
  assert.equal(c.error?.code, "MISSING_SEGMENT");
  assert.match(c.error!.message, /segment 2 is missing \(seed-2\.xz not found\)/);
  // A packed file whose writer never finished.
  const part = (await read(packed)).slice();
  part.set(new TextEncoder().encode("CLOVPART"), 0);
  await assert.rejects(openFileSet(core, await sortOverlayFiles([new BufferSource(part, "p.overlay")])), /never completed/);
});

test("byte sources: Blob slices and the block cache read exactly the underlying bytes", async () => {
  const data = randomBytes(9, (1 << 20) + 12345);
  const blob = new BlobSource(new Blob([data as Uint8Array<ArrayBuffer>]), "x");
  let reads = 0;
  const counting: ByteSource = { name: "c", size: data.length, read: (o, l) => (reads++, blob.read(o, l)) };
  const cached = new CachedSource(counting, 4096, 8);
  for (const [o, l] of [[0, 10], [4090, 20], [100000, 70000], [data.length - 5, 100], [data.length + 10, 5], [0, 0]]) {
    assertBytes(await blob.read(o, l), data.slice(o, o + l), `blob ${o}+${l}`);
    assertBytes(await cached.read(o, l), data.slice(o, o + l), `cached ${o}+${l}`);
  }
  const before = reads;
  await cached.read(data.length - 5, 3);
  assert.equal(reads, before, "a recent block is served from the cache");
});

test("inspect server: lists the overlay and base, serves them by range only, refuses foreign hosts and unknown paths", async () => {
  const srv = await startInspectServer({ core, overlay: splitMeta, baseDisk: set.baseDisk, baseMem: set.baseMem, webRoot: await ensureInspectorBuilt() });
  try {
    assert.match(srv.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    const s = (await (await fetch(srv.url + "api/session")).json()) as InspectSession;
    assert.equal(s.overlay[0].name, "seed.overlay-meta");
    const meta = await withOverlay(splitMeta, async (ov) => ov.meta);
    assert.equal(s.overlay.length, 1 + meta.segments.length);
    assert.equal(s.baseDisk?.name, "base.raw");
    assert.equal(s.baseMemory?.size, images.baseMem.length);
    // HttpSource over the server reads exactly the file's bytes.
    const h = new HttpSource(new URL(s.baseMemory!.url, srv.url).href, "base.mem", s.baseMemory!.size);
    for (const [o, l] of [[0, 1], [12345, 70000], [images.baseMem.length - 3, 10]]) assertBytes(await h.read(o, l), images.baseMem.slice(o, o + l));
    const url = new URL(s.overlay[1].url, srv.url).href;
    const tail = await fetch(url, { headers: { Range: "bytes=-4" } });
    assert.equal(tail.status, 206);
    assert.equal((await tail.arrayBuffer()).byteLength, 4);
    const bad = await fetch(url, { headers: { Range: `bytes=${s.overlay[1].size}-` } });
    assert.equal(bad.status, 416);
    await bad.body?.cancel();
    for (const p of ["files/99/x", "files/0/../../etc/passwd", "../package.json", "build-stamp.json", "cloudlet-inspector.html"]) {
      const r = await fetch(srv.url + p);
      assert.equal(r.status, 404, p);
      await r.body?.cancel();
    }
    const page = await fetch(srv.url);
    assert.equal(page.status, 200);
    assert.match(page.headers.get("content-security-policy") ?? "", /script-src 'self' 'wasm-unsafe-eval'/);
    assert.match(await page.text(), /<script src="main.js">/);
    const wasm = await fetch(srv.url + "cloudlet_core_bg.wasm");
    assert.equal(wasm.headers.get("content-type"), "application/wasm");
    assertBytes(new Uint8Array(await wasm.arrayBuffer()), await read(new URL("../ts/core/_wasm/cloudlet_core_bg.wasm", import.meta.url).pathname), "the page gets the same .wasm");
    // DNS rebinding: a request naming another host is refused.
    const { request } = await import("node:http");
    const status = await new Promise<number>((resolve, reject) => {
      const req = request(srv.url, { headers: { Host: "evil.example:80" } }, (res) => (res.resume(), resolve(res.statusCode!)));
      req.on("error", reject);
      req.end();
    });
    assert.equal(status, 403);
  } finally {
    await srv.close();
  }
  // A base of the wrong size is refused before serving; so is a bad overlay.
  await assert.rejects(startInspectServer({ core, overlay: packed, baseDisk: set.baseMem, webRoot: await ensureInspectorBuilt() }), (e: Error & { code?: string }) => e.code === "WRONG_BASE" && /not the overlay's base/.test(e.message));
  await assert.rejects(startInspectServer({ core, overlay: set.baseDisk, webRoot: await ensureInspectorBuilt() }), (e: Error & { code?: string }) => e.code === "BAD_META");
});

test("the kernel-vector runner passes on this core and catches a wrong vector", async () => {
  const vectors = JSON.parse(await fsp.readFile(new URL("../core-rs/vectors/kernels.json", import.meta.url), "utf8"));
  const ok = checkKernelVectors(core, vectors);
  assert.ok(ok.length > 100, `${ok.length} checks`);
  assert.deepEqual(ok.filter((r) => !r.ok), []);
  vectors.hash[3].sha256 = "00" + vectors.hash[3].sha256.slice(2);
  const bad = checkKernelVectors(core, vectors).filter((r) => !r.ok);
  assert.equal(bad.length, 1);
  assert.match(bad[0].name, /sha256/);
});

test("the page build is reproducible and knows when it is stale", async () => {
  const a = join(dir, "dist-a");
  const b = join(dir, "dist-b");
  const names = await buildInspector(a);
  assert.deepEqual(await buildInspector(b), names);
  for (const n of names) assertBytes(await read(join(b, n)), await read(join(a, n)), n);
  assert.equal(await inspectorStaleness(a), null);
  await fsp.rm(join(a, "worker.js"));
  assert.equal(await inspectorStaleness(a), "worker.js is missing");
  const stamp = JSON.parse(await fsp.readFile(join(b, "build-stamp.json"), "utf8"));
  stamp.inputs["web/main.ts"] = "0".repeat(64);
  await fsp.writeFile(join(b, "build-stamp.json"), JSON.stringify(stamp));
  assert.equal(await inspectorStaleness(b), "web/main.ts changed");
  assert.equal(await inspectorStaleness(join(dir, "nowhere")), "not built yet");
  // The single-file page carries the same .wasm, base64-encoded.
  const single = await fsp.readFile(join(a, "cloudlet-inspector.html"), "utf8");
  const b64 = /<script type="application\/octet-stream" id="cloudlet-wasm">([^<]+)<\/script>/.exec(single)![1];
  assertBytes(new Uint8Array(Buffer.from(b64, "base64")), await read(join(a, "cloudlet_core_bg.wasm")));
});

test("cleanup", async () => {
  await fsp.rm(dir, { recursive: true, force: true });
});
