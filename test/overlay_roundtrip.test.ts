// Overlay creation and synthesis from image files: byte-identical round trips.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { core } from "./_core.ts";
import { assertBytes } from "./_bytes.ts";
import { runTool } from "./_tools.ts";
import { scratchDir, writeImageSet } from "./_images.ts";
import { createOverlayFiles } from "../ts/jobs/file_overlay.ts";
import { synthesizeFiles } from "../ts/jobs/file_synthesis.ts";
import { ChunkClass, ImageKind } from "../ts/overlay/format.ts";

const read = (p: string) => fsp.readFile(p).then((b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength));

async function rawOf(diskPath: string, dir: string): Promise<Uint8Array> {
  if (!diskPath.endsWith(".qcow2")) return read(diskPath);
  const out = join(dir, "converted.raw");
  await runTool("qemu-img", ["convert", "-O", "raw", diskPath, out]);
  return read(out);
}

test("property: random edit patterns round-trip byte-identical (raw and qcow2 outputs, both layouts)", async () => {
  for (const seed of [1, 2, 3]) {
    const dir = await scratchDir(`prop${seed}`);
    const set = await writeImageSet(dir, seed, 8 << 20, 4 << 20, 30 + seed * 10);
    const home = join(dir, "home");
    const layout = seed % 2 ? "packed" : "split";
    const made = await createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, out: join(dir, "app"), layout, home, segmentBytes: 256 << 10 });
    const cc = made.meta.classCounts;
    const total = (cls: ChunkClass) => cc[ImageKind.Disk][cls] + cc[ImageKind.Memory][cls];
    // Every class shows up: the edits were made to hit each one.
    for (const cls of [ChunkClass.Zero, ChunkClass.BaseMemory, ChunkClass.BaseDisk, ChunkClass.Self, ChunkClass.Raw, ChunkClass.Xor]) {
      assert.ok(total(cls) > 0, `seed ${seed}: class ${ChunkClass[cls]} never used: ${JSON.stringify(cc)}`);
    }
    for (const fmt of ["raw", "qcow2"] as const) {
      const out = join(dir, `out-${fmt}`);
      const r = await synthesizeFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, overlay: made.path, outDir: out, diskFormat: fmt, home });
      assertBytes(await read(r.memory), await read(set.mem), `seed ${seed} memory`);
      assertBytes(await rawOf(r.disk, dir), await read(set.disk), `seed ${seed} disk (${fmt})`);
      if (fmt === "qcow2") await runTool("qemu-img", ["check", r.disk]);
    }
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("chunks shared between memory and disk dedupe against each other, and repeats cross segment boundaries", async () => {
  const dir = await scratchDir("shared");
  const set = await writeImageSet(dir, 11, 4 << 20, 4 << 20, 0);
  const disk = await read(set.disk);
  const mem = await read(set.mem);
  // One fresh page written at 40 places spread over both images: with 64 KiB
  // segments the repeats would fall into many segments, so the writer must
  // pull them into the first one's segment.
  const page = new Uint8Array(4096).map((_, i) => (i * 31 + 7) & 0xff);
  for (let k = 0; k < 40; k++) (k % 2 ? disk : mem).set(page, ((k * 97) % 1000) * 4096);
  await fsp.writeFile(set.disk, disk);
  await fsp.writeFile(set.mem, mem);
  const home = join(dir, "home");
  const made = await createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, out: join(dir, "x.overlay"), home, segmentBytes: 64 << 10 });
  const cc = made.meta.classCounts;
  assert.equal(cc[0][ChunkClass.Raw] + cc[1][ChunkClass.Raw] + cc[0][ChunkClass.Xor] + cc[1][ChunkClass.Xor], 1, "the page is stored once");
  assert.equal(cc[0][ChunkClass.Self] + cc[1][ChunkClass.Self], 39);
  const r = await synthesizeFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, overlay: made.path, outDir: join(dir, "out"), diskFormat: "raw", home });
  assertBytes(await read(r.disk), disk);
  assertBytes(await read(r.memory), mem);
  await fsp.rm(dir, { recursive: true, force: true });
});

test("every segment of a seed-layout overlay decodes with xz -d; disk segments use the x86 filter", async () => {
  const dir = await scratchDir("xzd");
  const set = await writeImageSet(dir, 5, 4 << 20, 2 << 20, 30);
  const made = await createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, out: join(dir, "seed.overlay-meta"), home: join(dir, "home"), segmentBytes: 32 << 10 });
  assert.equal(made.layout, "split");
  assert.ok(made.meta.segments.length > 3);
  for (let i = 0; i < made.meta.segments.length; i++) {
    const file = join(dir, `seed-${i + 1}.xz`);
    const decoded = await runTool("xz", ["-d", "-c", file]);
    assert.equal(decoded.length, made.meta.segments[i].rawSize, `segment ${i + 1}`);
    // The same bytes the core decodes: the payload synthesis uses.
    assertBytes(decoded, core.xzDecompressExact(await read(file), made.meta.segments[i].rawSize), `segment ${i + 1}`);
  }
  // Disk segments put the x86 filter before LZMA2, memory segments do not (as `xz -lvv` reports the chain).
  const seen = { disk: 0, memory: 0 };
  for (let i = 0; i < made.meta.segments.length; i++) {
    const kinds = new Set(made.meta.segments[i].ranges.map(([k]) => k));
    if (kinds.size !== 1) continue;
    const chain = new TextDecoder().decode(await runTool("xz", ["--robot", "-lvv", join(dir, `seed-${i + 1}.xz`)])).split("\n").find((l) => l.startsWith("block\t"))!;
    if (kinds.has(0)) (seen.disk++, assert.match(chain, /\t--x86 --lzma2=/, `disk segment ${i + 1}`));
    if (kinds.has(1)) (seen.memory++, assert.match(chain, /\t--lzma2=/, `memory segment ${i + 1}`));
  }
  assert.ok(seen.disk > 0 && seen.memory > 0, `both kinds seen: ${JSON.stringify(seen)}`);
  await fsp.rm(dir, { recursive: true, force: true });
});

test("qcow2 custom disk: changed, zero-filled and TRIMmed extents round-trip", async () => {
  const dir = await scratchDir("qcow2");
  const set = await writeImageSet(dir, 21, 8 << 20, 2 << 20, 0);
  const top = join(dir, "top.qcow2");
  await runTool("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", set.baseDisk, "-F", "raw", top]);
  await runTool("qemu-io", [
    "-f", "qcow2",
    "-c", "write -P 0xab 0 64k",          // new data
    "-c", "write -z 1M 256k",             // written zeros: now zero
    "-c", "discard 2M 128k",              // TRIM
    "-c", "write -P 0x11 3000k 12k",      // unaligned to 64k but 4k-aligned
    "-c", "write -P 0x22 5000000 100",    // sub-chunk write
    top,
  ]);
  const home = join(dir, "home");
  const made = await createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: top, mem: set.mem, out: join(dir, "q"), home });
  assert.ok(made.meta.classCounts[0][ChunkClass.Zero] >= 64, "zeroed and trimmed chunks are ZERO");
  for (const fmt of ["raw", "qcow2"] as const) {
    const r = await synthesizeFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, overlay: made.path, outDir: join(dir, `o-${fmt}`), diskFormat: fmt, home });
    assertBytes(await rawOf(r.disk, dir), await rawOf(top, dir), `disk via ${fmt}`);
  }
  await fsp.rm(dir, { recursive: true, force: true });
});

test("pipelined: synthesis from a stream that arrives in small pieces", async () => {
  const { openPackedStream } = await import("../ts/overlay/stream_reader.ts");
  const { synthesizeReader } = await import("../ts/jobs/file_synthesis.ts");
  const dir = await scratchDir("stream");
  const set = await writeImageSet(dir, 61, 4 << 20, 4 << 20, 40);
  const home = join(dir, "home");
  const made = await createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, out: join(dir, "s.overlay"), home, segmentBytes: 64 << 10 });
  const bytes = await read(made.path);
  // Deliver 1000 bytes at a time, as a slow network would.
  let o = 0;
  const stream = new ReadableStream<Uint8Array>({
    pull(ctl) {
      if (o >= bytes.length) return ctl.close();
      ctl.enqueue(bytes.slice(o, o + 1000));
      o += 1000;
    },
  });
  const reader = await openPackedStream(core, stream, "network");
  const r = await synthesizeReader(core, reader, { baseDisk: set.baseDisk, baseMem: set.baseMem, overlay: "network", outDir: join(dir, "out"), diskFormat: "raw", home });
  await reader.finished();
  assertBytes(await read(r.disk), await read(set.disk));
  assertBytes(await read(r.memory), await read(set.mem));
  // A stream cut short fails with TRUNCATED and leaves no output.
  const cut = new ReadableStream<Uint8Array>({ start(ctl) { ctl.enqueue(bytes.slice(0, bytes.length - 500)); ctl.close(); } });
  const reader2 = await openPackedStream(core, cut, "network");
  await assert.rejects(synthesizeReader(core, reader2, { baseDisk: set.baseDisk, baseMem: set.baseMem, overlay: "network", outDir: join(dir, "out2"), home }), /truncated/);
  await assert.rejects(fsp.access(join(dir, "out2")));
  await fsp.rm(dir, { recursive: true, force: true });
});

test("sparse images: holes are skipped, yet the base id and the round trip are the same as for dense copies", async () => {
  const { cacheDirFor, fileIdentity, openBase } = await import("../ts/home/base_cache.ts");
  const dir = await scratchDir("sparse");
  const mk = async (name: string, size: number, writes: Array<[number, Uint8Array]>) => {
    const p = join(dir, name);
    const fh = await fsp.open(p, "w");
    await fh.truncate(size);
    for (const [off, b] of writes) await fh.write(b, 0, b.length, off);
    await fh.close();
    return p;
  };
  const blob = (seed: number, n: number) => new Uint8Array(n).map((_, i) => (i * seed + 7) & 0xff);
  const baseDisk = await mk("base.raw", 64 << 20, [[4096, blob(3, 8192)], [40 << 20, blob(5, 1 << 20)]]);
  const baseMem = await mk("base.mem", 32 << 20, [[0, blob(7, 65536)]]);
  const disk = await mk("custom.raw", 64 << 20, [[4096, blob(3, 8192)], [40 << 20, blob(5, 1 << 20)], [50 << 20, blob(11, 20480)]]);
  const mem = await mk("custom.mem", 32 << 20, [[0, blob(7, 65536)], [1 << 20, blob(13, 8192)]]);
  const denseDisk = join(dir, "dense.raw");
  const denseMem = join(dir, "dense.mem");
  await runTool("cp", ["--sparse=never", baseDisk, denseDisk]);
  await runTool("cp", ["--sparse=never", baseMem, denseMem]);
  const machine = { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 32 };
  const ids: string[] = [];
  for (const [d, m] of [[baseDisk, baseMem], [denseDisk, denseMem]]) {
    const b = await openBase(core, { disk: d, memory: m, machine, dir: cacheDirFor(core, join(dir, "cache"), await fileIdentity(d), await fileIdentity(m), machine), needIndex: false });
    ids.push(b.id);
    await b.close();
  }
  assert.equal(ids[0], ids[1], "same base id with and without holes");
  const home = join(dir, "home");
  const made = await createOverlayFiles(core, { baseDisk, baseMem, disk, mem, out: join(dir, "sp.overlay"), home });
  // The 5 written chunks repeat one 4 KiB pattern: one stored, four repeats; nothing else changed.
  const cc = made.meta.classCounts[0];
  assert.deepEqual([cc[ChunkClass.Raw] + cc[ChunkClass.Xor], cc[ChunkClass.Self], cc[ChunkClass.Zero], cc[ChunkClass.BaseDisk] + cc[ChunkClass.BaseMemory]], [1, 4, 0, 0]);
  const r = await synthesizeFiles(core, { baseDisk, baseMem, overlay: made.path, outDir: join(dir, "out"), diskFormat: "raw", home });
  assertBytes(await read(r.disk), await read(disk));
  assertBytes(await read(r.memory), await read(mem));
  await fsp.rm(dir, { recursive: true, force: true });
});

test("a page repeated thousands of times is split over segments, none past twice the segment size", async () => {
  const dir = await scratchDir("repeats");
  const set = await writeImageSet(dir, 71, 2 << 20, 16 << 20, 0);
  const mem = await read(set.mem);
  // 3000 copies of one fresh page: with 16 KiB segments a leader may pull 682 repeats.
  const page = new Uint8Array(4096).map((_, i) => (i * 131 + 17) & 0xff);
  for (let k = 0; k < 3000; k++) mem.set(page, (k + 500) * 4096);
  await fsp.writeFile(set.mem, mem);
  const home = join(dir, "home");
  const seg = 16 << 10;
  const made = await createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, out: join(dir, "r.overlay"), home, segmentBytes: seg });
  const cc = made.meta.classCounts[ImageKind.Memory];
  const stored = cc[ChunkClass.Raw] + cc[ChunkClass.Xor];
  assert.equal(stored + cc[ChunkClass.Self], 3000);
  assert.equal(stored, Math.ceil(3000 / (1 + Math.floor(seg / 24))), "one stored copy per segment the repeats span");
  for (const s of made.meta.segments) assert.ok(s.rawSize <= 2 * seg + 4096 + 16, `segment of ${s.rawSize} bytes`);
  const r = await synthesizeFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, overlay: made.path, outDir: join(dir, "out"), diskFormat: "raw", home });
  assertBytes(await read(r.memory), mem);
  assertBytes(await read(r.disk), await read(set.disk));
  // The writer refuses a segment size its readers could not take.
  await assert.rejects(createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, out: join(dir, "big.overlay"), home, segmentBytes: 64 << 20 }), /segment size must be from 16 KiB to 32 MiB/);
  await fsp.rm(dir, { recursive: true, force: true });
});

test("custom images larger or smaller than the base, with sizes that are not a multiple of 4 KiB", async () => {
  const dir = await scratchDir("sizes");
  const set = await writeImageSet(dir, 81, 4 << 20, 2 << 20, 10);
  const disk = await read(set.disk);
  const mem = await read(set.mem);
  const cases: Array<[string, Uint8Array, Uint8Array]> = [
    ["grown, ragged end", concat(disk, new Uint8Array(5000).fill(0x5a)), concat(mem, new Uint8Array(123).fill(1))],
    ["shrunk, ragged end", disk.subarray(0, disk.length - 6000), mem.subarray(0, mem.length - 4096 - 77)],
  ];
  for (const [what, d, m] of cases) {
    await fsp.writeFile(set.disk, d);
    await fsp.writeFile(set.mem, m);
    const home = join(dir, "home");
    const made = await createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, out: join(dir, `${what.split(",")[0]}.overlay`), home });
    assert.deepEqual(made.meta.imageSizes.slice(0, 2), [d.length, m.length], what);
    const r = await synthesizeFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, overlay: made.path, outDir: join(dir, `out-${what.split(",")[0]}`), diskFormat: "raw", home });
    assertBytes(await read(r.disk), d, `${what}: disk`);
    assertBytes(await read(r.memory), m, `${what}: memory`);
  }
  await fsp.rm(dir, { recursive: true, force: true });
});

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

test("--disk-stride 512 matches memory pages against base-disk blocks between 4 KiB boundaries", async () => {
  const dir = await scratchDir("stride");
  const set = await writeImageSet(dir, 91, 4 << 20, 2 << 20, 0);
  const baseDisk = await read(set.baseDisk);
  const mem = await read(set.mem);
  // 20 memory pages copied from the base disk at 512-byte (not 4 KiB) offsets, as the page
  // cache of a file system that starts at sector 63 would hold them.
  const offsets = Array.from({ length: 40 }, (_, k) => (100 + k * 19) * 4096 + 512 * (1 + (k % 7)))
    .filter((off) => baseDisk.subarray(off, off + 4096).some((b) => b !== 0))
    .slice(0, 20);
  assert.equal(offsets.length, 20);
  offsets.forEach((off, k) => mem.set(baseDisk.subarray(off, off + 4096), (200 + k) * 4096));
  await fsp.writeFile(set.mem, mem);
  const home = join(dir, "home");
  const made: Record<number, Awaited<ReturnType<typeof createOverlayFiles>>> = {};
  for (const stride of [4096, 512] as const) {
    made[stride] = await createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, out: join(dir, `s${stride}.overlay`), home, diskStride: stride });
  }
  const mc = (s: number) => made[s].meta.classCounts[ImageKind.Memory];
  // A block that also sits in base memory is a base-memory match either way (memory wins).
  const inMem = mc(4096)[ChunkClass.BaseMemory];
  assert.equal(mc(4096)[ChunkClass.BaseDisk], 0, "4 KiB stride: the shifted blocks are not found");
  assert.equal(mc(4096)[ChunkClass.Raw] + mc(4096)[ChunkClass.Xor] + inMem, 20);
  assert.equal(mc(512)[ChunkClass.BaseDisk], 20 - inMem, "512-byte stride: every shifted block is found in the base disk");
  assert.equal(mc(512)[ChunkClass.BaseMemory], inMem);
  assert.equal(made[512].meta.base.id, made[4096].meta.base.id, "the stride is not part of the base id");
  assert.ok(made[512].bytes < made[4096].bytes, `smaller overlay: ${made[512].bytes} vs ${made[4096].bytes}`);
  const r = await synthesizeFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, overlay: made[512].path, outDir: join(dir, "out"), diskFormat: "raw", home });
  assertBytes(await read(r.memory), mem);
  assertBytes(await read(r.disk), await read(set.disk));
  await fsp.rm(dir, { recursive: true, force: true });
});
