// Working-set order (issue 12, item 3), without a VM: the writer puts a recorded working set first as the
// boot set (format version 2), the meta validates it, inspect shows it, and version 1 metas still read.
// The recording itself (overlay --warmup-url on a real VM) is in test/early_start.test.ts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { core } from "./_core.ts";
import { assertBytes } from "./_bytes.ts";
import { cloudlet } from "./_cli.ts";
import { scratchDir, writeImageSet } from "./_images.ts";
import { createOverlayFiles } from "../ts/jobs/file_overlay.ts";
import { synthesizeFiles } from "../ts/jobs/file_synthesis.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { CHUNK, ChunkClass, decodeMeta, encodeMeta, FORMAT_VERSION, ImageKind, type OverlayMeta, validateMeta } from "../ts/overlay/format.ts";

const read = (p: string) => fsp.readFile(p).then((b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength));

/** Chunk indexes of `kind` that differ between two images. */
function changed(a: Uint8Array, b: Uint8Array): number[] {
  const out: number[] = [];
  for (let c = 0; c * CHUNK < a.length; c++) {
    const x = a.subarray(c * CHUNK, (c + 1) * CHUNK);
    const y = b.subarray(c * CHUNK, (c + 1) * CHUNK);
    if (x.some((v, i) => v !== y[i])) out.push(c);
  }
  return out;
}

/** The set of "kind:index" keys the meta's segments `from`..`to` (exclusive) cover. */
function covered(meta: OverlayMeta, from: number, to: number): Set<string> {
  const s = new Set<string>();
  for (const seg of meta.segments.slice(from, to)) for (const [k, f, n] of seg.ranges) for (let i = 0; i < n; i++) s.add(`${k}:${f + i}`);
  return s;
}

test("a recorded working set goes first: the boot set's segments hold the device state and the touched chunks, the rest keeps image order", async () => {
  const dir = await scratchDir("wset");
  const set = await writeImageSet(dir, 21, 8 << 20, 4 << 20, 60);
  const baseDisk = await read(set.baseDisk);
  const baseMem = await read(set.baseMem);
  const disk = await read(set.disk);
  const mem = await read(set.mem);
  // A page repeated elsewhere: the warm-up touches a repeat, whose leader must come along.
  const page = new Uint8Array(CHUNK).map((_, i) => (i * 13 + 5) & 0xff);
  mem.set(page, 10 * CHUNK);
  mem.set(page, 900 * CHUNK);
  await fsp.writeFile(set.mem, mem);
  const state = join(dir, "state.bin");
  await fsp.writeFile(state, new Uint8Array(20_000).map((_, i) => (i * 7) & 0xff));
  const dChanged = changed(baseDisk, disk);
  const mChanged = changed(baseMem, mem);
  assert.ok(dChanged.length > 20 && mChanged.length > 20);
  // The last changed chunks of each image (image order would put them last), interleaved, plus an
  // unchanged chunk (the base's: not in the overlay), a repeat, and touches repeated.
  const late = (xs: number[]) => xs.slice(-6).reverse();
  const touches: Array<[number, number]> = [];
  late(mChanged).forEach((m, i) => touches.push([ImageKind.Memory, m], [ImageKind.Disk, late(dChanged)[i]]));
  const unchangedDisk = [...Array(disk.length / CHUNK).keys()].find((c) => !dChanged.includes(c))!;
  const unchangedMem = [...Array(mem.length / CHUNK).keys()].filter((c) => !mChanged.includes(c)).slice(3, 5);
  touches.push([ImageKind.Disk, unchangedDisk], [ImageKind.Memory, 900], [ImageKind.Memory, unchangedMem[1]], [ImageKind.Memory, unchangedMem[0]], [ImageKind.Memory, mChanged.at(-1)!]);
  const home = join(dir, "home");
  const made = await createOverlayFiles(core, {
    baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, state, out: join(dir, "w.overlay"), home, segmentBytes: 64 << 10,
    workingSet: { touches, reason: "warmup-url http://{host}:{port:80}/" },
  });
  const meta = made.meta;
  assert.equal(meta.version, FORMAT_VERSION);
  assert.equal(FORMAT_VERSION, 2);
  const boot = meta.bootSet;
  assert.ok(boot, "the meta has a boot set");
  assert.equal(boot.reason, "warmup-url http://{host}:{port:80}/");
  assert.equal(boot.pages, 7, "6 late pages and the repeat (a touch repeated counts once)");
  assert.equal(boot.chunks, 6, "the unchanged disk chunk is the base's, not the overlay's");
  // Unchanged memory pages are listed as base pages (ascending runs), for early start to send first.
  assert.deepEqual(boot.basePages, unchangedMem[1] === unchangedMem[0] + 1 ? [[unchangedMem[0], 2]] : [[unchangedMem[0], 1], [unchangedMem[1], 1]]);
  assert.ok(boot.segments >= 1 && boot.segments < meta.segments.length, JSON.stringify(boot));
  const head = covered(meta, 0, boot.segments);
  const tail = covered(meta, boot.segments, meta.segments.length);
  for (const [k, i] of touches) if (!(k === ImageKind.Disk && i === unchangedDisk) && !(k === ImageKind.Memory && unchangedMem.includes(i))) assert.ok(head.has(`${k}:${i}`), `touched ${k}:${i} is in the boot set`);
  assert.ok(head.has(`${ImageKind.Memory}:10`), "the repeat's leader came with it");
  for (let c = 0; c * CHUNK < 20_000; c++) assert.ok(head.has(`${ImageKind.State}:${c}`), `device state chunk ${c} is in the boot set`);
  // Nothing else in the boot set but repeats pulled along by their leaders (equal content to a touched
  // chunk), and the tail keeps image order.
  const content = (k: number, i: number) => Buffer.from((k === ImageKind.Disk ? disk : mem).subarray(i * CHUNK, (i + 1) * CHUNK)).toString("base64");
  const touchedContent = new Set(touches.map(([k, i]) => content(k, i)));
  const wanted = new Set([...touches.filter(([k, i]) => !(k === ImageKind.Memory && unchangedMem.includes(i))).map(([k, i]) => `${k}:${i}`), `${ImageKind.Memory}:10`, ...[0, 1, 2, 3, 4].map((c) => `${ImageKind.State}:${c}`)]);
  for (const key of head) {
    if (wanted.has(key)) continue;
    const [k, i] = key.split(":").map(Number);
    assert.ok(touchedContent.has(content(k, i)), `boot set holds ${key}, which the warm-up did not touch and which repeats nothing it did`);
  }
  // (Image order: each segment starts at the first chunk not yet placed; repeats may come from further on.)
  const firstOf = (m: OverlayMeta, from: number) => m.segments.slice(from).map((s) => s.ranges[0][0] * 2 ** 40 + s.ranges[0][1]);
  const tailOrder = firstOf(meta, boot.segments);
  assert.deepEqual(tailOrder, [...tailOrder].sort((a, b) => a - b));
  assert.equal(tail.size + head.size, meta.segments.reduce((t, s) => t + s.records, 0));

  // It synthesizes byte-identical, and reads back with the boot set.
  const r = await synthesizeFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, overlay: made.path, outDir: join(dir, "out"), diskFormat: "raw", home });
  assertBytes(await read(r.disk), disk, "disk");
  assertBytes(await read(r.memory), mem, "memory");
  const ov = await openOverlay(core, made.path);
  assert.deepEqual(ov.meta.bootSet, boot);
  await ov.close();

  // inspect shows it, as text and JSON.
  const text = await cloudlet(["inspect", made.path, "--home", home]);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, new RegExp(`boot set +segments 1-${boot.segments} \\(.*% of the segments\\): 7 memory pages, 6 disk chunks, and 2 base memory pages sent first; warmup-url http://\\{host\\}:\\{port:80\\}/`));
  assert.match(text.stdout, /format +v2,/);
  const json = await cloudlet(["inspect", made.path, "--home", home, "--json"]);
  const j = JSON.parse(json.stdout);
  assert.equal(j.bootSet.segments, boot.segments);
  assert.equal(j.bootSet.compressed, meta.segments.slice(0, boot.segments).reduce((t, s) => t + s.compressedSize, 0));
  assert.ok(j.bootSet.fraction > 0 && j.bootSet.fraction < 1);

  // File mode without a working set: today's order, no boot set.
  const plain = await createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, state, out: join(dir, "p.overlay"), home, segmentBytes: 64 << 10 });
  assert.equal(plain.meta.bootSet, undefined);
  const order = firstOf(plain.meta, 0);
  assert.deepEqual(order, [...order].sort((a, b) => a - b));
  const noBoot = await cloudlet(["inspect", plain.path, "--home", home]);
  assert.doesNotMatch(noBoot.stdout, /boot set/);
  // And the CLI's file mode refuses a warm-up (there is no VM to run it in).
  const refused = await cloudlet(["overlay", "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", set.disk, "--mem", set.mem, "-o", join(dir, "x.overlay"), "--warmup-url", "http://{host}:{port:80}/", "--home", home]);
  assert.equal(refused.code, 2, refused.stderr);
  assert.match(refused.stderr, /--warmup-url and --warmup-script need VM mode/);
  // VM mode: usage errors come before anything runs (the base need not even exist).
  const script = join(dir, "w.sh");
  await fsp.writeFile(script, "true\n");
  const vmMode = (args: string[]) => cloudlet(["overlay", "nosuchbase", "--script", script, "-o", join(dir, "y.overlay"), "--home", home, ...args]);
  for (const [args, message] of [
    [["--warmup-url", "http://{host}:{port:80}/", "--warmup-script", script], /give --warmup-url or --warmup-script, not both/],
    [["--warmup-url", "http://127.0.0.1:8080/", "--", "-redir", "tcp:8080::80"], /--warmup-url must reach the guest through a port forward, named as \{port:GUESTPORT\}/],
    [["--warmup-url", "http://{host}:{port:81}/", "--", "-redir", "tcp:8080::80"], /--warmup-url uses \{port:81\}, but no TCP port forward goes to guest port 81/],
    [["--warmup-script", join(dir, "missing.sh")], /cannot read the warm-up script/],
  ] as const) {
    const r = await vmMode([...args]);
    assert.notEqual(r.code, 0, r.stderr);
    assert.match(r.stderr, message);
    assert.equal(r.stderr.trim().split("\n").length, 1, `one line: ${r.stderr}`);
  }
  await fsp.rm(dir, { recursive: true, force: true });
});

test("format: version 1 metas still read (without a boot set); a boot set needs version 2; other versions are refused", async () => {
  const dir = await scratchDir("wset-v");
  const set = await writeImageSet(dir, 22, 2 << 20, 2 << 20, 10);
  const home = join(dir, "home");
  const made = await createOverlayFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, out: join(dir, "a.overlay-meta"), home, segmentBytes: 64 << 10 });
  // The same overlay with a version 1 meta (what the old writer made: same body, no boot set) synthesizes.
  const v1: OverlayMeta = { ...made.meta, version: 1 };
  await fsp.writeFile(made.path, encodeMeta(core, v1));
  const back = decodeMeta(core, await read(made.path), made.path);
  assert.equal(back.version, 1);
  assert.equal((await read(made.path))[8], 1, "header says 1");
  const r = await synthesizeFiles(core, { baseDisk: set.baseDisk, baseMem: set.baseMem, overlay: made.path, outDir: join(dir, "out"), diskFormat: "raw", home });
  assertBytes(await read(r.disk), await read(set.disk), "disk from the v1 overlay");
  assertBytes(await read(r.memory), await read(set.mem), "memory from the v1 overlay");

  const json = (m: OverlayMeta) => JSON.parse(new TextDecoder().decode(encodeMeta(core, m).subarray(64)));
  const withBoot = { ...made.meta, version: 2, bootSet: { segments: 1, reason: "warmup-script w.sh", pages: 3, chunks: 2, basePages: [[0, 2], [5, 1]] as Array<[number, number]> } };
  assert.deepEqual(validateMeta(json(withBoot), "m").bootSet, withBoot.bootSet);
  assert.throws(() => validateMeta({ ...json(withBoot), version: 1 }, "m"), /boot_set needs format version 2/);
  assert.throws(() => validateMeta({ ...json(withBoot), boot_set: { ...json(withBoot).boot_set, segments: made.meta.segments.length + 1 } }, "m"), /boot_set\.segments must be an integer in \[1, /);
  assert.throws(() => validateMeta({ ...json(withBoot), boot_set: { ...json(withBoot).boot_set, reason: 7 } }, "m"), /boot_set\.reason must be a string/);
  assert.throws(() => validateMeta({ ...json(withBoot), boot_set: { ...json(withBoot).boot_set, base_pages: [[5, 1], [0, 2]] } }, "m"), /base_pages are not ascending, separate runs/);
  assert.throws(() => validateMeta({ ...json(withBoot), boot_set: { ...json(withBoot).boot_set, base_pages: [[0, 2], [2, 1]] } }, "m"), /base_pages are not ascending, separate runs/);
  const pages = made.meta.imageSizes[ImageKind.Memory] / CHUNK;
  assert.throws(() => validateMeta({ ...json(withBoot), boot_set: { ...json(withBoot).boot_set, base_pages: [[pages - 1, 2]] } }, "m"), /lie past the end of the .*memory image/);
  assert.throws(() => validateMeta({ ...json(withBoot), version: 3 }, "m"), /format version 3 is not supported \(this cloudlet reads versions 1 and 2\)/);
  // A header that disagrees with its body is refused.
  const bytes = encodeMeta(core, withBoot);
  new DataView(bytes.buffer).setUint32(8, 1, true);
  assert.throws(() => decodeMeta(core, bytes, "m"), /header says format version 1 but its body says 2/);
  assert.equal(ChunkClass.Raw, 4);
  await fsp.rm(dir, { recursive: true, force: true });
});
