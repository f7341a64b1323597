/**
 * The images behind the golden overlays, made by a frozen generator: its own
 * PRNG and patterns, importing nothing of cloudlet, so that what it makes
 * never changes (golden_v1.test.ts checks their hashes). Do not edit: a new
 * golden version gets a new generator beside this one if it needs one.
 *
 * The custom images hold one chunk of every class the writer knows, in both
 * disk and memory, plus device state:
 *   disk    0 ZERO (was data)  3 = base memory page 5   4 = base disk chunk 20
 *           5 RAW   6 = chunk 5 (SELF)   7 base chunk 7 with 40 bytes changed (XOR)
 *           32..35 past the end of the base disk (the disk grew): RAW, ZERO, = base disk 9, RAW
 *   memory  1 = base disk chunk 17   2 RAW (noise)   3 = memory page 2 (SELF)   4 ZERO (was data)
 *           9 base page 9 with 16 bytes changed (XOR)   10 = base memory page 12
 *   state   5000 bytes
 */

const CHUNK = 4096;

/** xorshift32: deterministic bytes from a seed. */
function bytes(seed: number, n: number): Uint8Array {
  let x = seed >>> 0 || 1;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

/** A chunk of text-like bytes (compressible, as real pages mostly are): words from a small alphabet. */
function textChunk(seed: number): Uint8Array {
  const r = bytes(seed, CHUNK);
  const words = ["cloudlet ", "overlay ", "segment ", "page ", "base ", "disk ", "memory ", "chunk\n"];
  const out = new Uint8Array(CHUNK);
  const enc = new TextEncoder();
  let o = 0;
  for (let i = 0; o < CHUNK; i++) {
    const w = enc.encode(words[r[i % CHUNK] & 7] + (r[(i * 7) % CHUNK] % 100));
    out.set(w.subarray(0, CHUNK - o), o);
    o += w.length;
  }
  return out;
}

function chunkOf(img: Uint8Array, i: number): Uint8Array {
  return img.subarray(i * CHUNK, (i + 1) * CHUNK);
}

/** The five images: base disk and memory, custom disk, memory and device state. */
export interface GoldenImages {
  baseDisk: Uint8Array;
  baseMem: Uint8Array;
  disk: Uint8Array;
  mem: Uint8Array;
  state: Uint8Array;
}

/** Makes the golden images (the same bytes on every run and every runtime). */
export function goldenImages(): GoldenImages {
  const baseDisk = new Uint8Array(32 * CHUNK);
  // 1 MiB of memory, so that the machine config says 1 MiB of RAM.
  const baseMem = new Uint8Array(256 * CHUNK);
  for (let i = 0; i < 32; i++) {
    // Base disk: text chunks, with a zero stretch 24..27; base memory: text
    // chunks of other seeds, zero from page 28 on.
    if (i < 24 || i >= 28) baseDisk.set(textChunk(1000 + i), i * CHUNK);
    if (i < 28) baseMem.set(textChunk(2000 + i), i * CHUNK);
  }
  const disk = new Uint8Array(36 * CHUNK);
  disk.set(baseDisk);
  disk.fill(0, 0, CHUNK);
  disk.set(chunkOf(baseMem, 5), 3 * CHUNK);
  disk.set(chunkOf(baseDisk, 20), 4 * CHUNK);
  disk.set(textChunk(3005), 5 * CHUNK);
  disk.set(textChunk(3005), 6 * CHUNK);
  for (let k = 0; k < 40; k++) disk[7 * CHUNK + 100 + k * 97] ^= 0x5a;
  disk.set(textChunk(3032), 32 * CHUNK);
  disk.set(chunkOf(baseDisk, 9), 34 * CHUNK);
  disk.set(bytes(3035, CHUNK), 35 * CHUNK);

  const mem = baseMem.slice();
  mem.set(chunkOf(baseDisk, 17), 1 * CHUNK);
  mem.set(bytes(4002, CHUNK), 2 * CHUNK);
  mem.set(bytes(4002, CHUNK), 3 * CHUNK);
  mem.fill(0, 4 * CHUNK, 5 * CHUNK);
  for (let k = 0; k < 16; k++) mem[9 * CHUNK + 7 + k * 251] ^= 0xa5;
  mem.set(chunkOf(baseMem, 12), 10 * CHUNK);

  const state = new Uint8Array(5000);
  state.set(new TextEncoder().encode("QEVM\0\0\0\x03golden device state\n"));
  state.set(bytes(5000, 200), 64);
  return { baseDisk, baseMem, disk, mem, state };
}
