/**
 * The deterministic input generator behind the shared kernel vectors
 * (`core-rs/vectors/kernels.json`). Twin of `core-rs/src/vectors.rs`: Rust,
 * Node, Deno and the browser regenerate the same bytes and must reproduce
 * the recorded digests.
 */

/** xorshift32 byte stream: every step yields 4 bytes, little-endian. */
export function randomBytes(seed: number, len: number): Uint8Array {
  let x = seed === 0 ? 0x9e3779b9 : seed >>> 0;
  const words = new Uint32Array(Math.ceil(len / 4));
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    words[i] = x;
  }
  // Uint32Array is little-endian on every platform we run on (x86, arm, wasm).
  return new Uint8Array(words.buffer, 0, len);
}

/** Input bytes of a vector; see `core-rs/src/vectors.rs` for the patterns. */
export function vectorInput(pattern: string, seed: number, len: number): Uint8Array {
  switch (pattern) {
    case "random":
      return randomBytes(seed, len);
    case "zero":
      return new Uint8Array(len);
    case "mixed": {
      const v = randomBytes(seed, len);
      const n = Math.ceil(len / 4096);
      for (let i = 0; i < n; i++) {
        const s = i * 4096;
        const e = Math.min((i + 1) * 4096, len);
        if (i % 3 === 0) v.fill(0, s, e);
        else if (i % 5 === 4 && len >= 8192) v.copyWithin(s, 4096, 4096 + (e - s));
      }
      return v;
    }
    default:
      throw new Error(`unknown vector pattern ${pattern}`);
  }
}

/** Lower-case hex of bytes. */
export function toHex(b: Uint8Array): string {
  let s = "";
  for (const x of b) s += x.toString(16).padStart(2, "0");
  return s;
}

/** Bytes of a hex string. */
export function fromHex(s: string): Uint8Array {
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(i * 2, i * 2 + 2), 16);
  return out;
}
