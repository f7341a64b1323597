// Free memory without a VM (issue 14): the memory file's holes are ZERO chunks
// that are never read, the meta records them, the reporting balloon is part of
// the base id only when present (older bases keep theirs), and inspect shows
// the figure. The real-VM side is test/vm_free_memory.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { core } from "./_core.ts";
import { assertBytes } from "./_bytes.ts";
import { runTool } from "./_tools.ts";
import { scratchDir } from "./_images.ts";
import { createOverlayFiles } from "../ts/jobs/file_overlay.ts";
import { synthesizeFiles } from "../ts/jobs/file_synthesis.ts";
import { FileSource } from "../ts/node/files.ts";
import { ChunkClass, computeBaseId, decodeMeta, encodeMeta, ImageKind, validateMeta } from "../ts/overlay/format.ts";
import { inspectMeta, renderReport } from "../ts/inspect/report.ts";

const MiB = 1 << 20;
const read = (p: string) => fsp.readFile(p).then((b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength));
const blob = (seed: number, n: number) => new Uint8Array(n).map((_, i) => (i * seed + 7 + (i >> 12)) & 0xff);

async function mk(path: string, size: number, writes: Array<[number, Uint8Array]>): Promise<string> {
  const fh = await fsp.open(path, "w");
  await fh.truncate(size);
  for (const [off, b] of writes) await fh.write(b, 0, b.length, off);
  await fh.close();
  return path;
}

test("pages the guest reported free (holes in the memory file) are ZERO chunks, never read, and the meta records them", async () => {
  const dir = await scratchDir("freemem-holes");
  const baseDisk = await mk(join(dir, "base.raw"), 8 * MiB, [[0, blob(3, 8192)]]);
  // The base had 4 MiB of data at 4 MiB (a process's pages); in the custom VM they were freed and reported.
  const baseMem = await mk(join(dir, "base.mem"), 32 * MiB, [[0, blob(7, 65536)], [4 * MiB, blob(5, 4 * MiB)]]);
  const mem = join(dir, "custom.mem");
  await runTool("cp", ["--sparse=always", baseMem, mem]);
  await runTool("fallocate", ["--punch-hole", "--offset", String(4 * MiB), "--length", String(4 * MiB), mem]);
  const fh = await fsp.open(mem, "r+");
  await fh.write(blob(13, 8192), 0, 8192, 16 * MiB);
  await fh.close();
  const reads: Array<[number, number]> = [];
  const orig = FileSource.prototype.read;
  FileSource.prototype.read = function (this: FileSource, offset: number, length: number) {
    if (this.name === mem) reads.push([offset, length]);
    return orig.call(this, offset, length);
  };
  let made;
  try {
    made = await createOverlayFiles(core, { baseDisk, baseMem, disk: baseDisk, mem, out: join(dir, "fm.overlay"), home: join(dir, "home") });
  } finally {
    FileSource.prototype.read = orig;
  }
  assert.ok(reads.length > 0, "the memory file's data was read");
  for (const [off, len] of reads) assert.ok(off + len <= 4 * MiB || off >= 8 * MiB, `read ${len} bytes at ${off}, inside the hole`);
  const cc = made.meta.classCounts[ImageKind.Memory];
  assert.equal(cc[ChunkClass.Zero], (4 * MiB) / 4096, "every reported page is a ZERO chunk");
  assert.equal(cc[ChunkClass.Raw] + cc[ChunkClass.Xor] + cc[ChunkClass.Self], 2, "only the new 8 KiB are stored");
  const free = made.meta.launch.memoryFreeBytes!;
  assert.ok(free >= 32 * MiB - 65536 - 8192 - 64 * 1024 && free <= 32 * MiB - 65536 - 8192, `memory_free_bytes ${free}`);
  // The meta carries it through its own bytes, and inspect shows it.
  const again = decodeMeta(core, encodeMeta(core, made.meta), "x");
  assert.equal(again.launch.memoryFreeBytes, free);
  const rep = inspectMeta(again, "fm.overlay", made.bytes);
  assert.deepEqual(rep.memoryFree, { bytes: free, of: 32 * MiB, reportingBalloon: false });
  assert.match(renderReport(rep), /^free memory  .* of 32.0 MiB free at the snapshot/m);
  // The rebuilt memory reads zero where the guest reported its pages.
  const r = await synthesizeFiles(core, { baseDisk, baseMem, overlay: made.path, outDir: join(dir, "out"), diskFormat: "raw", home: join(dir, "home") });
  assertBytes(await read(r.memory), await read(mem));
  await fsp.rm(dir, { recursive: true, force: true });
});

test("the reporting balloon is part of the base id only when present: bases made before it keep their ids", () => {
  const m = { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 256 };
  const d = core.hash("blake3", new Uint8Array([1]));
  const md = core.hash("blake3", new Uint8Array([2]));
  // The id as computed before the balloon existed.
  const h = core.hasher("blake3");
  h.update(new TextEncoder().encode("cloudlet-base-v1\0"));
  h.update(new TextEncoder().encode(JSON.stringify({ machine: m.machine, cpu: m.cpu, ram_mib: m.ramMiB, disk_size: 4096, memory_size: 8192 })));
  h.update(d);
  h.update(md);
  const before = Buffer.from(h.digest()).toString("hex");
  assert.equal(computeBaseId(core, m, 4096, 8192, d, md), before);
  assert.equal(computeBaseId(core, { ...m, freePageReporting: false }, 4096, 8192, d, md), before);
  assert.notEqual(computeBaseId(core, { ...m, freePageReporting: true }, 4096, 8192, d, md), before);
});

test("the meta's optional free memory fields: absent as before, present when set, refused when malformed", () => {
  const json = {
    format: "cloudlet-overlay",
    version: 1,
    chunk_size: 4096,
    base: { id: "a".repeat(64), disk_size: 4096, memory_size: 8192, machine: { type: "pc-i440fx-7.2", cpu: "qemu64", ram_mib: 0 } },
    image_sizes: { disk: 4096, memory: 8192, state: 0 },
    launch: { port_forwards: [], memory_mib: 0, vcpus: 1 },
    creator: { tool: "t", version: "0", created: "now" },
    class_counts: Object.fromEntries(["disk", "memory", "state"].map((k) => [k, Object.fromEntries(["zero", "base_memory", "base_disk", "self", "raw", "xor"].map((c) => [c, 0]))])),
    segments: [],
  };
  const plain = validateMeta(json, "m");
  assert.equal(plain.base.machine.freePageReporting, undefined);
  assert.equal(plain.launch.memoryFreeBytes, undefined);
  assert.equal(inspectMeta(plain, "m", 1).memoryFree, undefined);
  assert.doesNotMatch(renderReport(inspectMeta(plain, "m", 1)), /free memory/);
  const withBoth = structuredClone(json) as typeof json & { launch: Record<string, unknown>; base: { machine: Record<string, unknown> } };
  withBoth.base.machine.free_page_reporting = true;
  withBoth.launch.memory_free_bytes = 4096;
  const full = validateMeta(withBoth, "m");
  assert.equal(full.base.machine.freePageReporting, true);
  assert.equal(full.launch.memoryFreeBytes, 4096);
  assert.equal(inspectMeta(full, "m", 1).memoryFree?.reportingBalloon, true);
  const bad1 = structuredClone(withBoth);
  bad1.base.machine.free_page_reporting = false;
  assert.throws(() => validateMeta(bad1, "m"), /base\.machine\.free_page_reporting must be true when present/);
  const bad2 = structuredClone(withBoth);
  bad2.launch.memory_free_bytes = 8193;
  assert.throws(() => validateMeta(bad2, "m"), /launch\.memory_free_bytes must be an integer in \[0, 8192\]/);
});
