// The core as a WebAssembly Component, transpiled by jco: it imports nothing,
// passes the shared kernel vectors, codes xz that the xz CLI reads and
// writes, and agrees byte for byte with the wasm-bindgen build.
// Runs under Node (node --test) and Deno (deno test), like the core tests.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { core } from "./_core.ts";
import { assertBytes } from "./_bytes.ts";
import { runTool } from "./_tools.ts";
import { Source } from "../ts/core/core.ts";
import { randomBytes, toHex, vectorInput } from "../ts/core/vectors.ts";
import { ComponentCoreError } from "../ts/component/component_core.ts";
import { COMPONENT_PATH, loadComponentCoreFromDisk } from "../ts/node/component_file.ts";

const comp = await loadComponentCoreFromDisk();
const vectors = JSON.parse(readFileSync(new URL("../core-rs/vectors/kernels.json", import.meta.url), "utf8"));
const xzTool = (args: string[], input: Uint8Array) => runTool("xz", args, input);

/** Ids of the top-level sections of a component binary (nested components are skipped whole). */
function componentSections(bytes: Uint8Array): number[] {
  // Preamble: "\0asm", version 0x0d, layer 1 (a component, not a core module).
  assert.deepEqual([...bytes.subarray(0, 8)], [0, 0x61, 0x73, 0x6d, 0x0d, 0, 1, 0], "not a component binary");
  const ids: number[] = [];
  let p = 8;
  while (p < bytes.length) {
    const id = bytes[p++];
    let size = 0;
    for (let shift = 0; ; shift += 7) {
      const b = bytes[p++];
      size += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) break;
    }
    ids.push(id);
    p += size;
  }
  assert.equal(p, bytes.length, "section sizes do not add up");
  return ids;
}

test("the component imports nothing: no WASI, no host functions", () => {
  const IMPORT_SECTION = 10;
  const EXPORT_SECTION = 11;
  const ids = componentSections(readFileSync(COMPONENT_PATH));
  assert.ok(ids.includes(EXPORT_SECTION), "no export section");
  assert.ok(!ids.includes(IMPORT_SECTION), "the component has an import section");
  // And the transpiled module instantiated with an empty import object (above).
  assert.deepEqual(Object.keys(comp.exports).filter((k) => !k.includes(":")).sort(), ["delta", "hashing", "index", "xz", "zero"]);
});

test("shared vectors: known answers", () => {
  const k = vectors.known;
  const abc = new TextEncoder().encode("abc");
  assert.equal(toHex(comp.hash("blake3", new Uint8Array(0))), k.blake3_empty);
  assert.equal(toHex(comp.hash("blake3", abc)), k.blake3_abc);
  assert.equal(toHex(comp.hash("sha256", new Uint8Array(0))), k.sha256_empty);
  assert.equal(toHex(comp.hash("sha256", abc)), k.sha256_abc);
  // The raw jco export, without the wrapper.
  assert.equal(toHex(comp.exports.hashing.hash("blake3", abc)), k.blake3_abc);
});

test("shared vectors: whole-input and per-chunk digests, zero masks", () => {
  const raw = comp.exports;
  for (const c of vectors.hash) {
    const data = vectorInput(c.pattern, c.seed, c.len);
    const name = `${c.pattern}/${c.seed}/${c.len}`;
    assert.equal(toHex(comp.hash("blake3", data)), c.blake3, `blake3 ${name}`);
    assert.equal(toHex(comp.hash("sha256", data)), c.sha256, `sha256 ${name}`);
    assert.equal(toHex(comp.hash("blake3", comp.hashChunks("blake3", data))), c.chunk_blake3s, `chunk blake3 ${name}`);
    assert.equal(toHex(comp.hash("blake3", comp.hashChunks("sha256", data))), c.chunk_sha256s, `chunk sha256 ${name}`);
    const mask = comp.zeroChunks(data);
    assert.equal(toHex(comp.hash("blake3", mask)), c.zero_mask, `zero mask ${name}`);
    assert.equal(mask.reduce((a, b) => a + b, 0), c.zero_count);
    if (data.length <= 1 << 20) {
      // One call straight into the transpiled module gives the same bytes.
      assert.equal(toHex(raw.hashing.hash("blake3", raw.hashing.hashChunks("blake3", data, 4096))), c.chunk_blake3s, `raw chunk blake3 ${name}`);
      assert.equal(toHex(raw.hashing.hash("blake3", raw.zero.zeroChunks(data, 4096))), c.zero_mask, `raw zero mask ${name}`);
    }
  }
});

test("shared vectors: XOR delta and gain", () => {
  for (const c of vectors.xor) {
    const a = vectorInput(c.a.pattern, c.a.seed, c.len);
    const b = vectorInput(c.b.pattern, c.b.seed, c.len);
    assert.equal(toHex(comp.hash("blake3", comp.xor(a, b))), c.xor_blake3);
    assert.equal(comp.xorGains(a, b, c.len)[0], c.gain);
    assert.deepEqual([...comp.exports.delta.xorGains(a, b, c.len)], [c.gain]);
  }
});

test("shared vectors: index lookups (the raw u64 values are the vector file's encoding)", () => {
  const v = vectors.index;
  const base = vectorInput(v.entries.pattern, v.entries.seed, v.entries.len);
  const digests = comp.hashChunks("blake3", base, v.entries.piece);
  const queries = new Uint8Array(digests.length + (65536 / 64) * 32);
  queries.set(digests);
  queries.set(comp.hashChunks("blake3", vectorInput("random", 8, 65536), 64), digests.length);
  // Entry i has value pack(i % 2, i * 64).
  const { IndexBuilder } = comp.exports.index;
  const b = new IndexBuilder(digests.length / 32);
  for (let i = 0; i < digests.length / 32; i++) b.addRun(digests.subarray(i * 32, i * 32 + 32), 32, new Uint8Array(0), i % 2 ? "memory" : "disk", BigInt(i * 64), 64n);
  const idx = b.finish();
  const values = idx.lookup(queries, 32);
  assert.equal(values.filter((x) => x !== 0xffffffffffffffffn).length, v.hits);
  assert.equal(toHex(comp.hash("blake3", new Uint8Array(values.buffer, values.byteOffset, values.byteLength))), v.results_blake3);
  // The wrapper decodes the same values into sources and offsets.
  const w = comp.loadIndex(idx.toBytes());
  const hits = w.lookup(queries);
  w.close();
  for (let i = 0; i < values.length; i++) {
    const want = values[i] === 0xffffffffffffffffn ? [-1, -1] : [Number(values[i] >> 56n), Number(values[i] & 0xffffffffffffffn)];
    if (hits.sources[i] !== want[0] || hits.offsets[i] !== want[1]) assert.fail(`query ${i}: ${hits.sources[i]}/${hits.offsets[i]}, want ${want}`);
  }
});

test("SHA-256 equals node:crypto per chunk on edge lengths", () => {
  for (const [i, len] of [0, 1, 63, 64, 65, 4095, 4096, 4097, 65537, (4 << 20) + 1].entries()) {
    const data = randomBytes(1000 + i, len);
    assert.equal(toHex(comp.hash("sha256", data)), createHash("sha256").update(data).digest("hex"), `len ${len}`);
    const chunks = comp.hashChunks("sha256", data, 4096);
    for (let c = 0; c * 4096 < len; c += 7) {
      assert.equal(toHex(chunks.subarray(c * 32, c * 32 + 32)), createHash("sha256").update(data.subarray(c * 4096, (c + 1) * 4096)).digest("hex"), `len ${len} chunk ${c}`);
    }
  }
});

test("the component and the wasm-bindgen build agree byte for byte", () => {
  for (let seed = 1; seed <= 12; seed++) {
    const len = (seed * 524287) % (9 << 20);
    const a = vectorInput(seed % 3 ? "mixed" : "random", seed, len);
    const b = randomBytes(seed + 100, len);
    for (const alg of ["blake3", "sha256"] as const) {
      assertBytes(comp.hashChunks(alg, a), core.hashChunks(alg, a), `${alg} chunks seed ${seed}`);
      assertBytes(comp.hash(alg, a), core.hash(alg, a), `${alg} seed ${seed}`);
    }
    assertBytes(comp.zeroChunks(a, 512), core.zeroChunks(a, 512), `zero seed ${seed}`);
    assertBytes(comp.xor(a, b), core.xor(a, b), `xor seed ${seed}`);
    assert.deepEqual([...comp.xorGains(a, b, 1000)], [...core.xorGains(a, b, 1000)], `gains seed ${seed}`);
  }
  // Same xz bytes (same liblzma, same settings), and each decodes the other's.
  const data = vectorInput("mixed", 5, 3 << 20);
  const ours = comp.xzCompress(data, 6, 1 << 20);
  assertBytes(ours, core.xzCompress(data, 6, 1 << 20), "xz -6");
  assertBytes(core.xzDecompressExact(ours, data.length), data);
  // Same index bytes.
  const digests = randomBytes(77, 50_000 * 32);
  const cb = core.indexBuilder(50_000);
  const kb = comp.indexBuilder(50_000);
  for (const bld of [cb, kb]) {
    bld.addRun(digests.subarray(0, 20_000 * 32), Source.Memory, 0, 4096, randomBytes(3, 20_000).map((x) => x & 1));
    bld.addRun(digests.subarray(20_000 * 32), Source.Disk, 2 ** 40, 4096);
  }
  const ci = cb.finish();
  const ki = kb.finish();
  assertBytes(ki.toBytes(), ci.toBytes(), "index bytes");
  const q = new Uint8Array([...digests.subarray(0, 30_000 * 32), ...randomBytes(9, 5000 * 32)]);
  const [ch, kh] = [ci.lookup(q), ki.lookup(q)];
  assertBytes(new Uint8Array(kh.sources.buffer), new Uint8Array(ch.sources.buffer), "index sources");
  assertBytes(new Uint8Array(kh.offsets.buffer), new Uint8Array(ch.offsets.buffer), "index offsets");
  assert.equal(ki.size, ci.size);
  ci.close();
  ki.close();
});

test("streaming hasher equals one-shot for any slicing", () => {
  const data = randomBytes(5, (1 << 20) + 12345);
  for (const alg of ["blake3", "sha256"] as const) {
    const want = toHex(comp.hash(alg, data));
    for (const step of [1 << 20, 4096, 4097, 100003]) {
      const h = comp.hasher(alg);
      for (let o = 0; o < data.length; o += step) h.update(data.subarray(o, o + step));
      assert.equal(toHex(h.digest()), want, `${alg} step ${step}`);
    }
  }
});

/** Decodes `z` with a streaming decoder, pushing `step` bytes at a time. */
function decodeStream(z: Uint8Array, step: number, concatenated = true): Uint8Array {
  const d = comp.xzDecoder(undefined, concatenated);
  const parts: Uint8Array[] = [];
  try {
    for (let o = 0; o < z.length; o += step) {
      d.push(z.subarray(o, o + step));
      for (let p = d.pull(); p.length; p = d.pull()) parts.push(p);
    }
    d.finishInput();
    while (!d.done) parts.push(d.pull());
  } finally {
    d.dispose();
  }
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) (out.set(p, o), (o += p.length));
  return out;
}

test("xz round-trips at several presets and sizes", () => {
  for (const [pattern, len] of [["random", 0], ["random", 1], ["mixed", 100_000], ["zero", 1 << 20], ["mixed", (5 << 20) + 3]] as const) {
    const data = vectorInput(pattern, 3, len);
    for (const preset of [0, 6, 9]) {
      const z = comp.xzCompress(data, preset, 1 << 20);
      assertBytes(comp.xzDecompressExact(z, data.length), data, `${pattern}/${len}/-${preset}`);
    }
  }
  const data = vectorInput("mixed", 4, 700_000);
  const e = comp.xzEncoder(3);
  const parts: Uint8Array[] = [];
  for (let o = 0; o < data.length; o += 65_000) parts.push(e.push(data.subarray(o, o + 65_000)));
  parts.push(e.finish());
  const z = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) (z.set(p, o), (o += p.length));
  assertBytes(decodeStream(z, 4321, false), data, "streamed");
});

test("the xz CLI decodes the component's output, and the component decodes the CLI's", async () => {
  const data = vectorInput("mixed", 9, 3 << 20);
  assertBytes(await xzTool(["-d", "-c"], comp.xzCompress(data, 6)), data);
  for (const args of [["-z", "-c", "-T1"], ["-z", "-c", "-9", "-T1"], ["-z", "-c", "-1", "--check=sha256"]]) {
    const theirs = await xzTool(args, data);
    assertBytes(decodeStream(theirs, 7777), data, args.join(" "));
    assertBytes(comp.xzDecompressExact(theirs, data.length), data, args.join(" "));
  }
  // Two streams back to back, as `xz -d` accepts.
  const two = new Uint8Array([...(await xzTool(["-z", "-c"], data.subarray(0, 1000))), ...(await xzTool(["-z", "-c"], data.subarray(1000, 5000)))]);
  assertBytes(decodeStream(two, 333), data.subarray(0, 5000));
});

test("pulls are bounded: a 64 MiB zero stream decodes in pieces of at most 1 MiB", async () => {
  const z = await xzTool(["-z", "-c", "-T1"], new Uint8Array(64 << 20));
  const d = comp.xzDecoder();
  d.push(z);
  d.finishInput();
  let total = 0;
  let biggest = 0;
  while (!d.done) {
    const p = d.pull(1 << 20);
    total += p.length;
    biggest = Math.max(biggest, p.length);
    assert.ok(p.every((x) => x === 0));
  }
  d.dispose();
  assert.equal(total, 64 << 20);
  assert.ok(biggest <= 1 << 20);
});

/** Asserts that `fn` throws a {@link ComponentCoreError} with `code` and a message matching `message`. */
function assertRefused(fn: () => unknown, code: string, message: RegExp): void {
  assert.throws(fn, (e: unknown) => e instanceof ComponentCoreError && e.code === code && message.test(e.message), `expected ${code}`);
}

test("bad input is refused with a code and a reason, and the instance stays usable", async () => {
  const data = randomBytes(5, 300_000);
  const z = comp.xzCompress(data, 6);
  assertRefused(() => comp.xzDecompressExact(z.subarray(0, z.length - 10), data.length), "xz-truncated", /truncated/);
  assertRefused(() => comp.xzDecompressExact(z, data.length + 1), "xz-too-short", /fewer bytes/);
  assertRefused(() => comp.xzDecompressExact(z, data.length - 1), "xz-too-long", /more bytes/);
  const flipped = z.slice();
  flipped[z.length >> 1] ^= 0x10;
  assert.throws(() => comp.xzDecompressExact(flipped, data.length), /corrupt|xz/);
  assertRefused(() => comp.xzDecompressExact(new TextEncoder().encode("not xz at all"), 5), "xz-not-xz", /not an xz stream/);
  assertRefused(() => comp.xzCompress(data, 10), "xz-bad-preset", /preset/);
  const big = await xzTool(["-z", "-c", "-9", "-T1"], data);
  assertRefused(() => comp.xzDecompressExact(big, data.length, 16 << 20), "xz-mem-limit", /memory/);
  assertRefused(() => decodeStream(z.subarray(0, z.length - 20), 1000), "xz-truncated", /truncated/);
  // Argument errors that would trip a kernel's assert (and trap) are refused
  // first; straight from the jco exports, a refusal is a ComponentError whose
  // payload is the WIT error record.
  const raw = comp.exports;
  const rawRefused = (fn: () => unknown, code: string, message: RegExp) =>
    assert.throws(fn, (e: { payload?: { code?: string; message?: string } }) => e.payload?.code === code && message.test(e.payload.message ?? ""), `expected ${code}`);
  rawRefused(() => raw.delta.xor(new Uint8Array(3), new Uint8Array(4)), "invalid-argument", /differ in length/);
  rawRefused(() => raw.delta.xorGains(new Uint8Array(8), new Uint8Array(8), 0), "invalid-argument", /xor_gains/);
  rawRefused(() => raw.hashing.hashChunks("blake3", new Uint8Array(8), 0), "invalid-argument", /chunk_size/);
  rawRefused(() => raw.zero.zeroChunks(new Uint8Array(8), 0), "invalid-argument", /chunk_size/);
  const b = new raw.index.IndexBuilder(4);
  rawRefused(() => b.addRun(new Uint8Array(33), 32, new Uint8Array(0), "disk", 0n, 4096n), "invalid-argument", /do not match/);
  rawRefused(() => b.addRun(new Uint8Array(64), 32, new Uint8Array(1), "disk", 0n, 4096n), "invalid-argument", /do not match/);
  rawRefused(() => b.addRun(new Uint8Array(64), 32, new Uint8Array(0), "disk", 1n << 56n, 4096n), "invalid-argument", /2\^56/);
  rawRefused(() => b.addRun(new Uint8Array(64), 4, new Uint8Array(0), "disk", 0n, 4096n), "invalid-argument", /do not match/);
  const spent = b.finish();
  rawRefused(() => b.finish(), "finished", /already finished/);
  rawRefused(() => spent.lookup(new Uint8Array(31), 32), "invalid-argument", /whole number/);
  const enc = raw.xz.Encoder.create(1, 0);
  enc.finish();
  rawRefused(() => enc.push(new Uint8Array(1)), "finished", /already finished/);
  const idx = comp.indexBuilder(1);
  idx.addRun(randomBytes(1, 32), Source.Disk, 0, 4096);
  const bytes = idx.finish().toBytes();
  assertRefused(() => comp.loadIndex(bytes.subarray(0, bytes.length - 3)), "index-bad-length", /truncated/);
  assertRefused(() => comp.loadIndex(new Uint8Array(40)), "index-bad-magic", /magic/);
  // Requests too big to allocate: an error or a bounded answer, never a trap
  // (a trap would leave the instance unusable).
  assertRefused(() => comp.xzDecompressExact(z, 0xffffffff), "xz-internal", /cannot allocate/);
  const d = comp.exports.xz.Decoder.create(BigInt(96 << 20), false);
  d.push(z);
  d.finishInput();
  assertBytes(d.pull(0xffffffff), data);
  (d as unknown as Disposable)[Symbol.dispose]();
  // After all of that, the same instance still computes.
  assert.equal(toHex(comp.hash("blake3", new TextEncoder().encode("abc"))), vectors.known.blake3_abc);
});
