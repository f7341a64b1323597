// XOR delta round trips and the base index, in WASM.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { core } from "./_core.ts";
import { assertBytes } from "./_bytes.ts";
import { Source } from "../ts/core/core.ts";
import { randomBytes, toHex, vectorInput } from "../ts/core/vectors.ts";

const vectors = JSON.parse(readFileSync(new URL("../core-rs/vectors/kernels.json", import.meta.url), "utf8"));

test("shared vectors: XOR delta and gain", () => {
  for (const c of vectors.xor) {
    const a = vectorInput(c.a.pattern, c.a.seed, c.len);
    const b = vectorInput(c.b.pattern, c.b.seed, c.len);
    const x = core.xor(a, b);
    assert.equal(toHex(core.hash("blake3", x)), c.xor_blake3);
    const gains = core.xorGains(a, b, c.len);
    assert.equal(gains[0], c.gain);
  }
});

test("XOR delta round-trips: apply(encode(new, base), base) == new", () => {
  for (let seed = 1; seed < 40; seed++) {
    const base = randomBytes(seed, 4096 * 8);
    const next = base.slice();
    // A light edit: a few bytes per page change, as when a guest touches a page.
    for (let i = seed; i < next.length; i += 997) next[i] ^= 0x5a;
    const delta = core.xor(next, base);
    assertBytes(core.xor(delta, base), next);
    // The delta of a lightly edited page is mostly zeros, so it gains.
    for (const g of core.xorGains(next, base)) assert.ok(g > 3000, `gain ${g}`);
  }
  assert.throws(() => core.xor(new Uint8Array(3), new Uint8Array(4)), /differ in length/);
});

test("an index of 4 Mi entries (16 GiB of 4 KiB chunks) fits in WASM memory and answers correctly", (t) => {
  const n = 4 << 20;
  const digests = randomBytes(4343, n * 32);
  const before = core.memoryBytes;
  const builder = core.indexBuilder(n);
  builder.addRun(digests, Source.Disk, 0, 4096);
  const index = builder.finish();
  try {
    const grown = core.memoryBytes - before;
    t.diagnostic(`finished index ${index.memoryBytes} B (${(index.memoryBytes / n).toFixed(1)} B/entry); WASM memory grew ${grown} B while building (${(grown / n).toFixed(1)} B/entry)`);
    assert.equal(index.size, n);
    assert.ok(index.memoryBytes <= n * 20, `finished index ${index.memoryBytes} B`);
    // The builder's peak (entries, sort scratch, keys and values) is what WASM memory must hold.
    assert.ok(grown <= n * 48, `WASM memory grew ${grown} B`);
    const hits = index.lookup(digests);
    for (let i = 0; i < n; i += 1) {
      if (hits.sources[i] !== Source.Disk || hits.offsets[i] !== i * 4096) assert.fail(`entry ${i}: got ${hits.sources[i]}/${hits.offsets[i]}`);
    }
  } finally {
    index.close();
  }
});

test("an offset past 2^56 is an error, and the core stays usable", () => {
  const builder = core.indexBuilder(4);
  // 16 chunks 2^53 - 1 bytes apart: the last offset is past 2^56.
  assert.throws(() => builder.addRun(randomBytes(1, 16 * 32), Source.Disk, 0, Number.MAX_SAFE_INTEGER), /offset exceeds 2\^56/);
  assert.throws(() => builder.addRun(randomBytes(1, 64), Source.Disk, 2 ** 60, 4096), /non-negative integers/);
  assert.throws(() => builder.addRun(randomBytes(1, 64), Source.Disk, -4096, 4096), /non-negative integers/);
  builder.addRun(randomBytes(2, 64), Source.Disk, 4096, 4096);
  const index = builder.finish();
  assert.equal(index.size, 2);
  index.close();
  assert.throws(() => core.xorGains(new Uint8Array(8), new Uint8Array(8), 0), /positive integer/);
  assert.equal(toHex(core.hash("blake3", new Uint8Array(0))), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
});

test("an index of 1 million entries answers lookups correctly", () => {
  const n = 1_000_000;
  // Unique random 32-byte digests; values encode (source, offset).
  const digests = randomBytes(4242, n * 32);
  const builder = core.indexBuilder(n);
  const half = n / 2;
  builder.addRun(digests.subarray(0, half * 32), Source.Memory, 0, 4096);
  builder.addRun(digests.subarray(half * 32), Source.Disk, 1 << 30, 4096);
  const index = builder.finish();
  try {
    assert.equal(index.size, n);
    assert.ok(index.memoryBytes <= n * 20, `memory ${index.memoryBytes}`);
    const hits = index.lookup(digests);
    for (let i = 0; i < n; i++) {
      const mem = i < half;
      if (hits.sources[i] !== (mem ? Source.Memory : Source.Disk) || hits.offsets[i] !== (mem ? i * 4096 : (1 << 30) + (i - half) * 4096)) {
        assert.fail(`entry ${i}: got ${hits.sources[i]}/${hits.offsets[i]}`);
      }
    }
    // Digests that were never added miss.
    const misses = index.lookup(randomBytes(999, 100_000 * 32));
    assert.equal(misses.sources.filter((s) => s !== -1).length, 0);
    // Save and reload: same answers.
    const again = core.loadIndex(index.toBytes());
    const sample = digests.subarray(0, 5000 * 32);
    assertBytes(new Uint8Array(again.lookup(sample).offsets.buffer), new Uint8Array(index.lookup(sample).offsets.buffer));
    again.close();
  } finally {
    index.close();
  }
});

test("index: the first insertion wins, the mask skips, corrupt bytes are refused", () => {
  const d = randomBytes(7, 4 * 32);
  const b = core.indexBuilder(8);
  b.addRun(d, Source.Memory, 0, 4096, Uint8Array.of(1, 0, 1, 1));
  b.addRun(d, Source.Disk, 0, 4096);
  const idx = b.finish();
  const h = idx.lookup(d);
  assert.deepEqual([...h.sources], [Source.Memory, Source.Disk, Source.Memory, Source.Memory]);
  assert.deepEqual([...h.offsets], [0, 4096, 8192, 12288]);
  const bytes = idx.toBytes();
  idx.close();
  assert.throws(() => core.loadIndex(bytes.subarray(0, bytes.length - 3)), /truncated/);
  assert.throws(() => core.loadIndex(new Uint8Array(40)), /magic/);
});

test("shared vectors: index lookups", () => {
  const v = vectors.index;
  const base = vectorInput(v.entries.pattern, v.entries.seed, v.entries.len);
  const digests = core.hashChunks("blake3", base, v.entries.piece);
  const queries = new Uint8Array(digests.length + (65536 / 64) * 32);
  queries.set(digests);
  queries.set(core.hashChunks("blake3", vectorInput("random", 8, 65536), 64), digests.length);
  // Entry i has value pack(i % 2, i * 64): add them one source at a time.
  const b = core.indexBuilder(digests.length / 32);
  for (let i = 0; i < digests.length / 32; i++) b.addRun(digests.subarray(i * 32, i * 32 + 32), i % 2 ? Source.Memory : Source.Disk, i * 64, 64);
  const idx = b.finish();
  const hits = idx.lookup(queries);
  idx.close();
  // Re-encode as the LE u64 values the vector file hashes.
  const out = new DataView(new ArrayBuffer(hits.sources.length * 8));
  let count = 0;
  for (let i = 0; i < hits.sources.length; i++) {
    if (hits.sources[i] === -1) out.setBigUint64(i * 8, 0xffffffffffffffffn, true);
    else {
      count++;
      out.setBigUint64(i * 8, (BigInt(hits.sources[i]) << 56n) | BigInt(hits.offsets[i]), true);
    }
  }
  assert.equal(count, v.hits);
  assert.equal(toHex(core.hash("blake3", new Uint8Array(out.buffer))), v.results_blake3);
});

test("10,000 calls: WASM memory stops growing", () => {
  const page = randomBytes(3, 4096 * 16);
  const other = randomBytes(4, 4096 * 16);
  const round = () => {
    core.hashChunks("blake3", page);
    core.hashChunks("sha256", page);
    core.zeroChunks(page);
    core.xor(page, other);
    core.hasher("blake3").update(page).digest();
    const b = core.indexBuilder(16);
    b.addRun(page.subarray(0, 16 * 32), Source.Disk, 0, 4096);
    b.finish().close();
  };
  for (let i = 0; i < 500; i++) round();
  const settled = core.memoryBytes;
  for (let i = 0; i < 10_000; i++) round();
  assert.equal(core.memoryBytes, settled, "WASM memory grew during 10,000 calls");
});
