// Bad input: each case gets a typed error whose message names the file and
// what is wrong, no stack trace, and no output that looks complete.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { core } from "./_core.ts";
import { cloudlet, type CliResult } from "./_cli.ts";
import { runTool } from "./_tools.ts";
import { scratchDir, writeImageSet, type ImageSet } from "./_images.ts";
import { ChunkClass, decodeMeta, encodeMeta, HEADER_BYTES, RECORD_BYTES, SEGMENT_HEADER_BYTES, type OverlayMeta } from "../ts/overlay/format.ts";
import { toHex } from "../ts/core/vectors.ts";

let dir: string;
let set: ImageSet;
let other: ImageSet;
let home: string;
let packed: string;
let splitMeta: string;

/** The CLI failed cleanly: exit 1, one line naming `file` and matching `what`, no stack. */
function failedCleanly(r: CliResult, file: string, what: RegExp): void {
  assert.equal(r.code, 1, `exit code; stderr: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line, got: ${r.stderr}`);
  assert.match(lines[0], /^cloudlet: /);
  assert.ok(lines[0].includes(file), `names ${file}: ${lines[0]}`);
  assert.match(lines[0], what);
  assert.doesNotMatch(r.stderr, /\bat .*\.ts:\d+/, "no stack trace");
}

async function listing(d: string): Promise<string[]> {
  return (await fsp.readdir(d).catch(() => [] as string[])).sort();
}

const synth = (overlay: string, out: string, base = set, extra: string[] = []) =>
  cloudlet(["synthesis", "--home", home, "--base-disk", base.baseDisk, "--base-mem", base.baseMem, overlay, "-o", out, ...extra]);

// Fixture built once at load time (Deno's node:test has no before()).
await (async () => {
  dir = await scratchDir("errors");
  home = join(dir, "home");
  set = await writeImageSet(join(dir, "a"), 31, 4 << 20, 2 << 20, 30);
  other = await writeImageSet(join(dir, "b"), 32, 4 << 20, 2 << 20, 5);
  packed = join(dir, "app.overlay");
  splitMeta = join(dir, "seed.overlay-meta");
  for (const out of [packed, splitMeta]) {
    const r = await cloudlet(["overlay", "--home", home, "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", set.disk, "--mem", set.mem, "-o", out, "--segment-size", "64K"]);
    assert.equal(r.code, 0, r.stderr);
  }
})();

test("the good overlays synthesize (control case)", async () => {
  for (const ov of [packed, splitMeta]) {
    const out = join(dir, `ok-${ov.endsWith("meta") ? "split" : "packed"}`);
    const r = await synth(ov, out, set, ["--json"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).dir, out);
  }
});

test("wrong base: names the expected and the actual base id", async () => {
  const out = join(dir, "wrong-base");
  const r = await synth(packed, out, other);
  failedCleanly(r, packed, /made for base/);
  const meta = decodeMeta(core, await fsp.readFile(packed).then((b) => new Uint8Array(b).subarray(HEADER_BYTES, HEADER_BYTES + Number(new DataView(b.buffer, b.byteOffset).getBigUint64(24, true)))), packed);
  assert.ok(r.stderr.includes(meta.base.id), "expected id in message");
  const actual = /actual ([0-9a-f]{64})/.exec(r.stderr)?.[1];
  assert.ok(actual && actual !== meta.base.id, `actual id in message: ${r.stderr}`);
  assert.deepEqual(await listing(dir).then((l) => l.filter((n) => n.includes("wrong-base"))), []);
});

test("wrong machine config in file mode: the base id covers it, and the message says which part differs", async () => {
  const q35 = join(dir, "q35.overlay");
  const made = await cloudlet(["overlay", "--home", home, "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", set.disk, "--mem", set.mem, "-o", q35, "--machine", "pc-q35-7.2", "--cpu", "max"]);
  assert.equal(made.code, 0, made.stderr);
  const r = await synth(q35, join(dir, "out-q35"));
  failedCleanly(r, q35, /made for a base on pc-q35-7.2 \/ max \/ 2 MiB, but the given base is pc-i440fx-7.2 \/ qemu64 \/ 2 MiB/);
  const ok = await synth(q35, join(dir, "out-q35"), set, ["--machine", "pc-q35-7.2", "--cpu", "max"]);
  assert.equal(ok.code, 0, ok.stderr);
  const bad = await synth(q35, join(dir, "out-q35-bad"), set, ["--machine", "pc,accel=kvm"]);
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /--machine and --cpu take a QEMU name/);
});

test("a flipped byte in a segment: the message names the segment", async () => {
  const seg = join(dir, "seed-2.xz");
  const bytes = new Uint8Array(await fsp.readFile(seg));
  const copy = join(dir, "flip");
  await fsp.mkdir(copy);
  for (const n of await fsp.readdir(dir)) if (n.startsWith("seed")) await fsp.copyFile(join(dir, n), join(copy, n));
  bytes[bytes.length >> 1] ^= 0x40;
  await fsp.writeFile(join(copy, "seed-2.xz"), bytes);
  const r = await synth(join(copy, "seed.overlay-meta"), join(dir, "out-flip"));
  failedCleanly(r, join(copy, "seed-2.xz"), /segment 2 is corrupt/);
  assert.deepEqual((await listing(dir)).filter((n) => n.includes("out-flip")), []);
  // Packed: flip a byte in the last segment's bytes.
  const p = new Uint8Array(await fsp.readFile(packed));
  p[p.length - 50] ^= 1;
  const bad = join(dir, "flipped.overlay");
  await fsp.writeFile(bad, p);
  const meta = JSON.parse(new TextDecoder().decode(p.subarray(2 * HEADER_BYTES, HEADER_BYTES + Number(new DataView(p.buffer).getBigUint64(24, true)))));
  const r2 = await synth(bad, join(dir, "out-flip2"));
  failedCleanly(r2, bad, new RegExp(`segment ${meta.segments.length} is corrupt`));
  assert.deepEqual((await listing(dir)).filter((n) => n.includes("out-flip2")), [], "no output left");
});

test("a truncated overlay", async () => {
  const p = new Uint8Array(await fsp.readFile(packed));
  const cut = join(dir, "cut.overlay");
  await fsp.writeFile(cut, p.subarray(0, p.length - 300));
  failedCleanly(await synth(cut, join(dir, "out-cut")), cut, /truncated/);
  await fsp.writeFile(cut, p.subarray(0, 100));
  failedCleanly(await synth(cut, join(dir, "out-cut")), cut, /truncated/);
  const r = await cloudlet(["inspect", cut]);
  failedCleanly(r, cut, /truncated/);
  assert.deepEqual((await listing(dir)).filter((n) => n.includes("out-cut")), [], "no output left");
});

test("a missing segment file", async () => {
  const copy = join(dir, "missing");
  await fsp.mkdir(copy);
  for (const n of await fsp.readdir(dir)) if (n.startsWith("seed") && n !== "seed-3.xz") await fsp.copyFile(join(dir, n), join(copy, n));
  failedCleanly(await synth(join(copy, "seed.overlay-meta"), join(dir, "out-missing")), join(copy, "seed-3.xz"), /segment 3 is missing/);
  assert.deepEqual((await listing(dir)).filter((n) => n.includes("out-missing")), [], "no output left");
});

async function hostile(name: string, edit: (j: any) => void): Promise<string> {
  const bytes = new Uint8Array(await fsp.readFile(splitMeta));
  const body = JSON.parse(new TextDecoder().decode(bytes.subarray(HEADER_BYTES)));
  edit(body);
  // Re-encode with a valid checksum, so the structural checks (not the checksum) must catch it.
  const meta = { ...decodeMeta(core, bytes, splitMeta) } as OverlayMeta;
  const good = encodeMeta(core, meta);
  const text = new TextEncoder().encode(JSON.stringify(body));
  const out = new Uint8Array(HEADER_BYTES + text.length);
  out.set(good.subarray(0, HEADER_BYTES));
  new DataView(out.buffer).setBigUint64(16, BigInt(text.length), true);
  out.set(core.hash("blake3", text), 24);
  out.set(text, HEADER_BYTES);
  const d = join(dir, `hostile-${name}`);
  await fsp.mkdir(d);
  for (const n of await fsp.readdir(dir)) if (n.startsWith("seed-")) await fsp.copyFile(join(dir, n), join(d, n));
  await fsp.writeFile(join(d, "seed.overlay-meta"), out);
  return join(d, "seed.overlay-meta");
}

const HOSTILE_META: Array<[string, (j: any) => void, RegExp]> = [
    ["huge-count", (j) => (j.segments[0].records = 1e15), /records must be an integer/],
    ["huge-segments", (j) => (j.segments = { length: 1e9 }), /segments must be an array/],
    ["past-end", (j) => (j.segments[0].ranges[0] = [0, 1e9, 1]), /past the end/],
    // Segment 2 claims exactly segment 1's chunks: every per-segment count agrees, only the overlap check can catch it.
    ["overlap", (j) => Object.assign(j.segments[1], { ranges: j.segments[0].ranges, records: j.segments[0].records, data_chunks: j.segments[0].data_chunks, raw_size: j.segments[0].raw_size }), /segments overlap: \w+ chunk \d+ is covered twice/],
    // Past the 8 TiB qcow2 limit: refused before any L1 table is sized from it.
    ["too-big-for-qcow2", (j) => (j.image_sizes.disk = 2 ** 43 + 4096), /image_sizes.disk/],
    ["lying-raw", (j) => (j.segments[0].raw_size += 4096), /raw_size/],
    ["lying-compressed", (j) => (j.segments[0].compressed_size += 10), /segment 1 is truncated/],
    ["huge-image", (j) => (j.image_sizes.disk = 2 ** 60), /image_sizes.disk/],
  ["bad-version", (j) => (j.version = 99), /version 99 is not supported/],
];

// One test per hostile field: each is refused before any large allocation, names the file, leaves nothing.
for (const [name, edit, want] of HOSTILE_META) {
  test(`hostile meta (${name}) is refused by the validator`, async () => {
    const m = await hostile(name, edit);
    failedCleanly(await synth(m, join(dir, `out-${name}`)), join(dir, `hostile-${name}`), want);
    assert.deepEqual((await listing(dir)).filter((n) => n.includes(`out-${name}`)), [], "no output left");
  });
}

test("a meta header that claims a huge body, or whose checksum fails, is refused from its first bytes", async () => {
  // A header that claims a 10 GB body is refused from the first 64 bytes.
  const b = new Uint8Array(await fsp.readFile(splitMeta));
  new DataView(b.buffer).setBigUint64(16, 10n << 30n, true);
  const huge = join(dir, "huge.overlay-meta");
  await fsp.writeFile(huge, b);
  failedCleanly(await cloudlet(["inspect", huge]), huge, /exceeds the .*limit/);
  // A checksum mismatch.
  const c = new Uint8Array(await fsp.readFile(splitMeta));
  c[c.length - 3] ^= 1;
  const bad = join(dir, "badsum.overlay-meta");
  await fsp.writeFile(bad, c);
  failedCleanly(await cloudlet(["inspect", bad]), bad, /checksum/);
});

/**
 * A copy of the seed layout in which one segment's payload was changed by
 * `edit`, recompressed, and given a valid hash in a re-encoded meta: only the
 * record checks (or the rebuilt-chunk check) can catch it. `edit` returns
 * false for a segment it cannot apply to; the first one it applies to is used.
 */
async function tamperedSegment(name: string, edit: (raw: Uint8Array, v: DataView, records: number) => boolean): Promise<{ meta: string; segFile: string }> {
  const metaBytes = new Uint8Array(await fsp.readFile(splitMeta));
  const meta = decodeMeta(core, metaBytes, splitMeta);
  const d = join(dir, `tampered-${name}`);
  await fsp.mkdir(d);
  for (const n of await fsp.readdir(dir)) if (n.startsWith("seed-")) await fsp.copyFile(join(dir, n), join(d, n));
  for (let i = 0; i < meta.segments.length; i++) {
    const segFile = join(d, `seed-${i + 1}.xz`);
    const raw = core.xzDecompressExact(new Uint8Array(await fsp.readFile(segFile)), meta.segments[i].rawSize);
    if (!edit(raw, new DataView(raw.buffer, raw.byteOffset, raw.byteLength), meta.segments[i].records)) continue;
    const xz = core.xzCompress(raw, 1);
    await fsp.writeFile(segFile, xz);
    meta.segments[i] = { ...meta.segments[i], compressedSize: xz.length, hash: toHex(core.hash("blake3", xz)) };
    await fsp.writeFile(join(d, "seed.overlay-meta"), encodeMeta(core, meta));
    return { meta: join(d, "seed.overlay-meta"), segFile };
  }
  throw new Error(`${name}: no segment to apply the edit to`);
}

/** Calls `f(recordOffset)` for the first record of class `cls`; false when there is none. */
function onRecord(raw: Uint8Array, records: number, cls: ChunkClass, f: (o: number) => void): boolean {
  for (let r = 0; r < records; r++) {
    const o = SEGMENT_HEADER_BYTES + r * RECORD_BYTES;
    if (raw[o + 1] === cls) {
      f(o);
      return true;
    }
  }
  return false;
}

test("hostile segment payloads behind valid hashes: each record check names the segment and the record", async () => {
  const baseDiskSize = (await fsp.stat(set.baseDisk)).size;
  const cases: Array<[string, (raw: Uint8Array, v: DataView, n: number) => boolean, RegExp]> = [
    ["base-disk-past-end", (raw, v, n) => onRecord(raw, n, ChunkClass.BaseDisk, (o) => v.setBigUint64(o + 16, BigInt(baseDiskSize), true)), /record \d+ is not a 512-byte-aligned offset in the base disk/],
    ["base-mem-unaligned", (raw, v, n) => onRecord(raw, n, ChunkClass.BaseMemory, (o) => v.setBigUint64(o + 16, v.getBigUint64(o + 16, true) + 8n, true)), /record \d+ is not a 4 KiB-aligned offset in the base memory/],
    ["wrong-slot", (raw, v, n) => onRecord(raw, n, ChunkClass.Raw, (o) => v.setBigUint64(o + 16, 1000n, true)), /record \d+ uses data slot 1000, expected \d+/],
    ["self-nowhere", (raw, v, n) => onRecord(raw, n, ChunkClass.Self, (o) => v.setBigUint64(o + 16, BigInt(n + 5), true)), /record \d+ repeats a record that does not exist/],
    ["self-to-zero", (raw, v, n) => {
      let zero = -1;
      for (let r = 0; r < n && zero < 0; r++) if (raw[SEGMENT_HEADER_BYTES + r * RECORD_BYTES + 1] === ChunkClass.Zero) zero = r;
      return zero >= 0 && onRecord(raw, n, ChunkClass.Self, (o) => v.setBigUint64(o + 16, BigInt(zero), true));
    }, /record \d+ repeats record \d+, which holds no data/],
    ["not-the-meta-chunk", (raw, v) => (v.setBigUint64(SEGMENT_HEADER_BYTES + 8, v.getBigUint64(SEGMENT_HEADER_BYTES + 8, true) + 1n, true), true), /record 0 \(\w+ chunk \d+\) is not the chunk the meta's ranges name/],
    ["unknown-class", (raw) => ((raw[SEGMENT_HEADER_BYTES + 1] = 9), true), /record 0 has unknown class 9/],
    ["reserved", (raw) => ((raw[SEGMENT_HEADER_BYTES + 5] = 1), true), /record 0 has non-zero reserved bytes/],
    // Structurally valid, but the stored chunk is not the one the meta's rebuilt hash covers.
    ["raw-data-changed", (raw, v, n) => onRecord(raw, n, ChunkClass.Raw, () => (raw[raw.length - 1] ^= 0x80)), /segment \d+: the rebuilt chunks do not match the overlay's check/],
  ];
  for (const [name, edit, want] of cases) {
    const t = await tamperedSegment(name, edit);
    const out = join(dir, `out-tampered-${name}`);
    const r = await synth(t.meta, out);
    failedCleanly(r, t.segFile, want);
    assert.deepEqual((await listing(dir)).filter((n) => n.startsWith(`out-tampered-${name}`)), [], `${name}: no output left`);
  }
});

test("inspect --verify checks class counts, and with the base every rebuilt chunk", async () => {
  const good = await cloudlet(["inspect", "--verify", "--json", "--home", home, "--base-disk", set.baseDisk, "--base-mem", set.baseMem, packed]);
  assert.equal(good.code, 0, good.stderr);
  const v = JSON.parse(good.stdout).verification;
  assert.deepEqual([v.rebuilt, v.rebuiltSkipped], [v.segments, 0], "with the base, every segment is checked chunk by chunk");
  // The same sizes, other content: named as the wrong base, by its ids, before any segment (issue 10 item 13).
  const wrong = await cloudlet(["inspect", "--verify", "--home", home, "--base-disk", other.baseDisk, "--base-mem", other.baseMem, packed]);
  failedCleanly(wrong, packed, /overlay was made for base .* \(expected base id [0-9a-f]{64}, actual [0-9a-f]{64}\)/);
  // A meta whose class counts were edited (with a valid checksum) is caught by --verify only.
  const lying = await hostile("class-counts", (j) => (j.class_counts.memory.raw += 1));
  assert.equal((await cloudlet(["inspect", lying])).code, 0, "the counts are informational to a plain inspect");
  failedCleanly(await cloudlet(["inspect", "--verify", lying]), lying, /class_counts say \d+ memory raw chunks, but the segments hold \d+/);
});

test("a full output disk: OUTPUT_FAILED, nothing kept", async (t) => {
  const mnt = join(dir, "tiny");
  await fsp.mkdir(mnt);
  try {
    await runTool("mount", ["-t", "tmpfs", "-o", "size=1M", "tmpfs", mnt]);
  } catch (e) {
    t.skip(`cannot mount a tmpfs here (${(e as Error).message}); needs root`);
    return;
  }
  try {
    failedCleanly(await synth(packed, join(mnt, "out"), set, ["--disk-format", "raw"]), join(mnt, "out"), /disk is full/);
    assert.deepEqual(await listing(mnt), [], "nothing left on the full disk");
    const r = await cloudlet(["overlay", "--home", home, "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", set.disk, "--mem", other.mem, "-o", join(mnt, "big.overlay")]);
    failedCleanly(r, join(mnt, "big.overlay"), /disk is full/);
    assert.deepEqual(await listing(mnt), [], "nothing left on the full disk");
  } finally {
    await runTool("umount", [mnt]);
  }
});

test("a missing input file", async () => {
  const nope = join(dir, "nope.raw");
  failedCleanly(await cloudlet(["overlay", "--home", home, "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", nope, "--mem", set.mem, "-o", join(dir, "n")]), nope, /no such file/);
  failedCleanly(await synth(join(dir, "nope.overlay"), join(dir, "out-nope")), join(dir, "nope.overlay"), /no such file/);
  failedCleanly(await cloudlet(["synthesis", "--home", home, "--base-disk", nope, "--base-mem", set.baseMem, packed, "-o", join(dir, "o")]), nope, /no such file/);
});

test("a killed overlay writer leaves nothing that looks complete", async () => {
  const big = await writeImageSet(join(dir, "big"), 41, 8 << 20, 48 << 20, 0);
  // Fresh random memory: lots of RAW data, so compression runs for a while.
  await fsp.writeFile(big.mem, new Uint8Array(48 << 20).map((_, i) => (i * 2654435761) >>> 24));
  const out = join(dir, "killed.overlay");
  let pid = 0;
  let finished = false;
  const run = cloudlet(["overlay", "--home", home, "--base-disk", big.baseDisk, "--base-mem", big.baseMem, "--disk", big.disk, "--mem", big.mem, "-o", out, "--preset", "9"], { onSpawn: (p) => (pid = p) });
  void run.then(() => (finished = true));
  // Kill it while it writes: once its partial output exists (a fixed delay raced a fast machine).
  for (let i = 0; i < 3000 && !finished; i++) {
    if ((await fsp.readdir(dir)).some((n) => n.includes("killed") && n.includes(".part-"))) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  assert.ok(!finished, "the writer was still running when its partial output appeared");
  process.kill(pid, "SIGKILL");
  const r = await run;
  assert.ok(r.signal === "SIGKILL" || (r.code !== 0 && r.code !== null), `killed, got code ${r.code} signal ${r.signal}`);
  await assert.rejects(fsp.access(out), "no file under the final name");
  for (const n of await fsp.readdir(dir)) if (n.includes("killed")) assert.match(n, /\.part-/, `${n} is marked partial`);
});

test("a codec that fails is reported as such, never as a corrupt segment of a good overlay", async () => {
  const { openOverlay } = await import("../ts/node/overlay_files.ts");
  const { WorkerCodec } = await import("../ts/node/codec_pool.ts");
  const { fetchSegment } = await import("../ts/overlay/synthesis.ts");
  const { CodecFailure } = await import("../ts/overlay/codec.ts");
  const ov = await openOverlay(core, packed);
  const codec = new WorkerCodec(1);
  try {
    // The same codec decodes the segment while it is up...
    assert.ok((await fetchSegment(core, ov, codec, 0)).kinds.length > 0);
    await codec.close();
    // ...and once it is gone the error is the codec's, not CORRUPT_SEGMENT.
    await assert.rejects(fetchSegment(core, ov, codec, 0), (e: unknown) => e instanceof CodecFailure && /codec is closed/.test((e as Error).message));
  } finally {
    await codec.close();
    await ov.close();
  }
});

test("--profile: an unknown name is a usage error; a profile's choices yield to --segment-size; fast and small overlays synthesize", async () => {
  const args = (out: string, extra: string[]) => ["overlay", "--home", home, "--base-disk", set.baseDisk, "--base-mem", set.baseMem, "--disk", set.disk, "--mem", set.mem, "-o", out, "--json", ...extra];
  const bad = await cloudlet(args(join(dir, "p-bad"), ["--profile", "tiny"]));
  assert.equal(bad.code, 2, "a usage error");
  assert.equal(bad.stderr.trim(), 'cloudlet: --profile must be fast, balanced, small, not "tiny"');
  assert.deepEqual(await listing(dir).then((l) => l.filter((f) => f.startsWith("p-bad"))), [], "nothing written");
  const base64k = JSON.parse((await cloudlet(["inspect", "--json", packed])).stdout);
  const segs: Record<string, number> = {};
  for (const [name, extra] of [["fast", ["--profile", "fast"]], ["small", ["--profile", "small"]], ["small64k", ["--profile", "small", "--segment-size", "64K"]]] as const) {
    const out = join(dir, `p-${name}.overlay`);
    const r = await cloudlet(args(out, [...extra]));
    assert.equal(r.code, 0, r.stderr);
    segs[name] = JSON.parse(r.stdout).segments;
    const s = await synth(out, join(dir, `p-${name}-out`), set, ["--json"]);
    assert.equal(s.code, 0, s.stderr);
  }
  assert.equal(segs.small64k, base64k.segments.length ?? base64k.segments, "--segment-size overrides the profile's");
  assert.ok(segs.small < segs.small64k, `4 MiB segments are fewer than 64 KiB ones (${segs.small} vs ${segs.small64k})`);
});
