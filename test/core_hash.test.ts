// Hashing and zero detection in WASM against independent implementations
// (node:crypto for SHA-256, hash-wasm for BLAKE3) and the shared vectors.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { blake3 as hwBlake3 } from "hash-wasm";
import { core } from "./_core.ts";
import { randomBytes, toHex, vectorInput } from "../ts/core/vectors.ts";

const vectors = JSON.parse(readFileSync(new URL("../core-rs/vectors/kernels.json", import.meta.url), "utf8"));

const EDGE_LENGTHS = [0, 1, 2, 63, 64, 65, 1023, 1024, 1025, 4095, 4096, 4097, 4096 * 3 + 1, 65537, (3 << 20) + 333, (9 << 20) + 7];

test("known answers", () => {
  const k = vectors.known;
  assert.equal(toHex(core.hash("blake3", new Uint8Array(0))), k.blake3_empty);
  assert.equal(toHex(core.hash("blake3", new TextEncoder().encode("abc"))), k.blake3_abc);
  assert.equal(toHex(core.hash("sha256", new Uint8Array(0))), k.sha256_empty);
  assert.equal(toHex(core.hash("sha256", new TextEncoder().encode("abc"))), k.sha256_abc);
});

test("shared vectors: whole-input and per-chunk digests, zero masks", () => {
  for (const c of vectors.hash) {
    const data = vectorInput(c.pattern, c.seed, c.len);
    const name = `${c.pattern}/${c.seed}/${c.len}`;
    assert.equal(toHex(core.hash("blake3", data)), c.blake3, `blake3 ${name}`);
    assert.equal(toHex(core.hash("sha256", data)), c.sha256, `sha256 ${name}`);
    assert.equal(toHex(core.hash("blake3", core.hashChunks("blake3", data))), c.chunk_blake3s, `chunk blake3 ${name}`);
    assert.equal(toHex(core.hash("blake3", core.hashChunks("sha256", data))), c.chunk_sha256s, `chunk sha256 ${name}`);
    const mask = core.zeroChunks(data);
    assert.equal(toHex(core.hash("blake3", mask)), c.zero_mask, `zero mask ${name}`);
    assert.equal(mask.reduce((a, b) => a + b, 0), c.zero_count);
  }
});

test("SHA-256 equals node:crypto on edge lengths and random inputs", () => {
  for (const [i, len] of EDGE_LENGTHS.entries()) {
    const data = randomBytes(1000 + i, len);
    assert.equal(toHex(core.hash("sha256", data)), createHash("sha256").update(data).digest("hex"), `len ${len}`);
  }
  for (let seed = 1; seed <= 50; seed++) {
    const len = (seed * 7919) % 20000;
    const data = randomBytes(seed, len);
    const chunks = core.hashChunks("sha256", data, 4096);
    for (let i = 0; i * 4096 < len; i++) {
      const want = createHash("sha256").update(data.subarray(i * 4096, (i + 1) * 4096)).digest("hex");
      assert.equal(toHex(chunks.subarray(i * 32, i * 32 + 32)), want, `seed ${seed} chunk ${i}`);
    }
  }
});

test("BLAKE3 equals hash-wasm on edge lengths and random inputs", async () => {
  for (const [i, len] of EDGE_LENGTHS.entries()) {
    const data = randomBytes(2000 + i, len);
    assert.equal(toHex(core.hash("blake3", data)), await hwBlake3(data), `len ${len}`);
  }
  for (let seed = 1; seed <= 50; seed++) {
    const len = (seed * 104729) % 30000;
    const data = randomBytes(seed + 77, len);
    const chunks = core.hashChunks("blake3", data, 4096);
    for (let i = 0; i * 4096 < len; i++) {
      assert.equal(toHex(chunks.subarray(i * 32, i * 32 + 32)), await hwBlake3(data.subarray(i * 4096, (i + 1) * 4096)), `seed ${seed} chunk ${i}`);
    }
  }
});

test("streaming hasher equals one-shot for any slicing", () => {
  const data = randomBytes(5, (1 << 20) + 12345);
  for (const alg of ["blake3", "sha256"] as const) {
    const want = toHex(core.hash(alg, data));
    for (const step of [1 << 20, 4096, 4097, 100003]) {
      const h = core.hasher(alg);
      for (let o = 0; o < data.length; o += step) h.update(data.subarray(o, o + step));
      assert.equal(toHex(h.digest()), want, `${alg} step ${step}`);
    }
  }
});

test("zero detection finds one non-zero byte in any position of a page", () => {
  const pages = new Uint8Array(4096 * 64);
  const positions = [0, 1, 7, 8, 63, 64, 65, 1000, 2048, 4000, 4094, 4095];
  positions.forEach((p, i) => (pages[i * 4096 + p] = 0x80));
  const mask = core.zeroChunks(pages);
  positions.forEach((_, i) => assert.equal(mask[i], 0, `page ${i}`));
  for (let i = positions.length; i < 64; i++) assert.equal(mask[i], 1);
  assert.deepEqual([...core.zeroChunks(new Uint8Array(4097))], [1, 1]);
  assert.deepEqual([...core.zeroChunks(Uint8Array.of(0, 0, 1), 2)], [1, 0]);
  assert.equal(core.zeroChunks(new Uint8Array(0)).length, 0);
});
