/**
 * Runs the shared kernel vectors (`core-rs/vectors/kernels.json`) against a
 * loaded core, wherever it runs: the inspector page calls it in the browser
 * (in the page and in its Web Worker) so a person can see that this browser
 * computes what native Rust, Node and Deno compute. Inputs are regenerated
 * with `ts/core/vectors.ts`. Runtime-neutral.
 */
import { type Core, Source } from "../core/core.ts";
import { toHex, vectorInput } from "../core/vectors.ts";

/** The parts of kernels.json this checks. */
export interface KernelVectors {
  /** Digests of fixed strings. */
  known: { blake3_empty: string; blake3_abc: string; sha256_empty: string; sha256_abc: string };
  /** Whole-input and per-chunk digests and zero masks. */
  hash: Array<{ pattern: string; seed: number; len: number; blake3: string; sha256: string; chunk_blake3s: string; chunk_sha256s: string; zero_mask: string; zero_count: number }>;
  /** XOR deltas and gains. */
  xor: Array<{ a: { pattern: string; seed: number }; b: { pattern: string; seed: number }; len: number; xor_blake3: string; gain: number }>;
  /** Base index lookups. */
  index: { entries: { pattern: string; seed: number; len: number; piece: number }; hits: number; results_blake3: string };
}

/** One checked vector. */
export interface VectorResult {
  /** What was checked, e.g. "hash random/2/1: sha256". */
  name: string;
  /** True when the core reproduced the recorded value. */
  ok: boolean;
  /** Expected and actual, when they differ. */
  detail?: string;
}

/** Checks every vector; never throws for a mismatch (the results say). */
export function checkKernelVectors(core: Core, v: KernelVectors): VectorResult[] {
  const out: VectorResult[] = [];
  const eq = (name: string, actual: string | number, expected: string | number) => {
    out.push(actual === expected ? { name, ok: true } : { name, ok: false, detail: `expected ${expected}, got ${actual}` });
  };
  const run = (name: string, fn: () => void) => {
    try {
      fn();
    } catch (e) {
      out.push({ name, ok: false, detail: `threw: ${(e as Error)?.message ?? e}` });
    }
  };
  const b3 = (b: Uint8Array) => toHex(core.hash("blake3", b));
  const text = (s: string) => new TextEncoder().encode(s);

  run("known answers", () => {
    eq("known blake3('')", b3(new Uint8Array(0)), v.known.blake3_empty);
    eq("known blake3('abc')", b3(text("abc")), v.known.blake3_abc);
    eq("known sha256('')", toHex(core.hash("sha256", new Uint8Array(0))), v.known.sha256_empty);
    eq("known sha256('abc')", toHex(core.hash("sha256", text("abc"))), v.known.sha256_abc);
  });
  for (const c of v.hash) {
    const name = `hash ${c.pattern}/${c.seed}/${c.len}`;
    run(name, () => {
      const data = vectorInput(c.pattern, c.seed, c.len);
      eq(`${name}: blake3`, b3(data), c.blake3);
      eq(`${name}: sha256`, toHex(core.hash("sha256", data)), c.sha256);
      eq(`${name}: chunk blake3s`, b3(core.hashChunks("blake3", data)), c.chunk_blake3s);
      eq(`${name}: chunk sha256s`, b3(core.hashChunks("sha256", data)), c.chunk_sha256s);
      const mask = core.zeroChunks(data);
      eq(`${name}: zero mask`, b3(mask), c.zero_mask);
      eq(`${name}: zero count`, mask.reduce((a, b) => a + b, 0), c.zero_count);
    });
  }
  for (const c of v.xor) {
    const name = `xor ${c.a.pattern}/${c.a.seed} ^ ${c.b.pattern}/${c.b.seed} (${c.len})`;
    run(name, () => {
      const a = vectorInput(c.a.pattern, c.a.seed, c.len);
      const b = vectorInput(c.b.pattern, c.b.seed, c.len);
      eq(`${name}: delta`, b3(core.xor(a, b)), c.xor_blake3);
      eq(`${name}: gain`, core.xorGains(a, b, c.len)[0], c.gain);
    });
  }
  run("index lookups", () => {
    const e = v.index.entries;
    const digests = core.hashChunks("blake3", vectorInput(e.pattern, e.seed, e.len), e.piece);
    const queries = new Uint8Array(digests.length + (65536 / 64) * 32);
    queries.set(digests);
    queries.set(core.hashChunks("blake3", vectorInput("random", 8, 65536), 64), digests.length);
    // Entry i has value pack(i % 2, i * 64).
    const b = core.indexBuilder(digests.length / 32);
    for (let i = 0; i < digests.length / 32; i++) b.addRun(digests.subarray(i * 32, i * 32 + 32), i % 2 ? Source.Memory : Source.Disk, i * 64, 64);
    const idx = b.finish();
    const hits = idx.lookup(queries);
    idx.close();
    const packed = new DataView(new ArrayBuffer(hits.sources.length * 8));
    let count = 0;
    for (let i = 0; i < hits.sources.length; i++) {
      if (hits.sources[i] === -1) packed.setBigUint64(i * 8, 0xffffffffffffffffn, true);
      else {
        count++;
        packed.setBigUint64(i * 8, (BigInt(hits.sources[i]) << 56n) | BigInt(hits.offsets[i]), true);
      }
    }
    eq("index lookups: hits", count, v.index.hits);
    eq("index lookups: results", b3(new Uint8Array(packed.buffer)), v.index.results_blake3);
  });
  run("xz round trip", () => {
    const data = vectorInput("mixed", 3, 1 << 20);
    const xz = core.xzCompress(data, 1);
    eq("xz round trip: decoded bytes", b3(core.xzDecompressExact(xz, data.length)), b3(data));
  });
  return out;
}
