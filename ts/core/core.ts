/**
 * The WASM core, typed. One `.wasm` serves Node, Deno and browsers: the host
 * hands over its bytes and gets a {@link Core}. No wasm-bindgen object or
 * memory management leaks out: large inputs are fed to WASM in bounded
 * slices, and every wasm-side object is freed by its wrapper.
 *
 * This module is runtime-neutral: it imports no `node:` module.
 */
import init, * as wasm from "./_wasm/cloudlet_core.js";

/** Size of a chunk (a disk block or a memory page) in bytes. */
export const CHUNK_SIZE = 4096;
/** Length of a chunk digest in bytes. */
export const DIGEST_LEN = 32;
/** Largest slice of input handed to WASM in one call; bounds WASM memory. */
export const SLICE_BYTES = 4 << 20;

/** Hash functions the core provides. */
export type HashAlgorithm = "blake3" | "sha256";
const ALG_ID: Record<HashAlgorithm, number> = { blake3: 0, sha256: 1 };

/** Where a base chunk lives. Values are part of the index format: never reuse. */
export enum Source {
  /** The base disk image. */
  Disk = 0,
  /** The base memory image. */
  Memory = 1,
}

/** Results of a batched index lookup, one slot per queried digest. */
export interface IndexHits {
  /** Source per query, or -1 on a miss. */
  readonly sources: Int8Array;
  /** Byte offset in that source, or -1 on a miss. */
  readonly offsets: Float64Array;
}

/** An incremental hasher. */
export class StreamHasher {
  #h: wasm.Hasher | null;
  constructor(alg: HashAlgorithm) {
    this.#h = new wasm.Hasher(ALG_ID[alg]);
  }
  /** Feeds more input; any length. */
  update(data: Uint8Array): this {
    const h = this.#live();
    for (let o = 0; o < data.length; o += SLICE_BYTES) h.update(data.subarray(o, o + SLICE_BYTES));
    return this;
  }
  /** The digest of all input so far; frees the hasher. */
  digest(): Uint8Array {
    const d = this.#live().digest();
    this.dispose();
    return d;
  }
  /** Frees the hasher without a digest. Safe to call twice. */
  dispose(): void {
    this.#h?.free();
    this.#h = null;
  }
  [Symbol.dispose](): void {
    this.dispose();
  }
  #live(): wasm.Hasher {
    if (!this.#h) throw new Error("hasher already finished");
    return this.#h;
  }
}

/** Collects (digest -> location) entries for a {@link BaseIndex}. */
export class IndexBuilder {
  #b: wasm.IndexBuilderJs | null;
  constructor(capacity: number) {
    this.#b = new wasm.IndexBuilderJs(capacity);
  }
  /**
   * Adds consecutive chunks of one source: digest `i` describes the chunk at
   * `firstOffset + i * step`. Chunks whose `mask` byte is 0 are skipped.
   */
  addRun(digests: Uint8Array, source: Source, firstOffset: number, step: number, mask?: Uint8Array): void {
    const b = this.#b;
    if (!b) throw new Error("index builder already finished");
    const per = Math.floor(SLICE_BYTES / DIGEST_LEN);
    const n = digests.length / DIGEST_LEN;
    for (let i = 0; i < n; i += per) {
      const end = Math.min(n, i + per);
      b.add_run(digests.subarray(i * DIGEST_LEN, end * DIGEST_LEN), DIGEST_LEN, mask ? mask.subarray(i, end) : new Uint8Array(0), source, firstOffset + i * step, step);
    }
  }
  /** Sorts the entries and returns the index; the builder is spent. */
  finish(): BaseIndex {
    const b = this.#b;
    if (!b) throw new Error("index builder already finished");
    this.#b = null;
    try {
      return new BaseIndex(b.finish());
    } finally {
      b.free();
    }
  }
}

/** A sorted digest index over a base VM's disk and memory chunks. */
export class BaseIndex {
  #i: wasm.BaseIndexJs | null;
  /** @internal */
  constructor(i: wasm.BaseIndexJs) {
    this.#i = i;
  }
  /** Loads an index saved with {@link BaseIndex.toBytes}. Throws on corrupt data. */
  static fromBytes(bytes: Uint8Array): BaseIndex {
    return new BaseIndex(wasm.BaseIndexJs.from_bytes(bytes));
  }
  /** Number of distinct digests. */
  get size(): number {
    return this.#live().len();
  }
  /** WASM memory the index occupies, in bytes. */
  get memoryBytes(): number {
    return this.#live().memory_bytes();
  }
  /** Looks up many 32-byte digests at once. A hit is a candidate: confirm it. */
  lookup(digests: Uint8Array): IndexHits {
    const idx = this.#live();
    const n = digests.length / DIGEST_LEN;
    const sources = new Int8Array(n);
    const offsets = new Float64Array(n);
    const per = Math.floor(SLICE_BYTES / DIGEST_LEN);
    for (let i = 0; i < n; i += per) {
      const end = Math.min(n, i + per);
      const r = idx.lookup(digests.subarray(i * DIGEST_LEN, end * DIGEST_LEN), DIGEST_LEN);
      for (let j = 0; j < end - i; j++) {
        sources[i + j] = r[2 * j];
        offsets[i + j] = r[2 * j + 1];
      }
    }
    return { sources, offsets };
  }
  /** The serialised index (for caching next to the base). */
  toBytes(): Uint8Array {
    return this.#live().to_bytes();
  }
  /** Frees the index. Safe to call twice. */
  close(): void {
    this.#i?.free();
    this.#i = null;
  }
  [Symbol.dispose](): void {
    this.close();
  }
  #live(): wasm.BaseIndexJs {
    if (!this.#i) throw new Error("base index is closed");
    return this.#i;
  }
}

/** Default memory a decoder may claim: enough for any xz preset (-9 needs ~65 MiB). */
export const XZ_MEMLIMIT = 96 << 20;
/** Most bytes one decoder pull returns. */
export const XZ_PULL_BYTES = 1 << 20;

/** Streaming xz encoder: push input, take the output that is ready. Output is a standard .xz stream. */
export class XzEncoder {
  #e: wasm.XzEncoderJs | null;
  /** @param preset 0-9 @param dictCap cap on the dictionary in bytes (0: the preset's) */
  constructor(preset: number, dictCap = 0) {
    this.#e = new wasm.XzEncoderJs(preset, dictCap);
  }
  /** Consumes `data`; returns the compressed bytes ready so far (often empty). */
  push(data: Uint8Array): Uint8Array {
    const e = this.#live();
    const parts: Uint8Array[] = [];
    for (let o = 0; o < data.length; o += SLICE_BYTES) parts.push(e.push(data.subarray(o, o + SLICE_BYTES)));
    return concat(parts);
  }
  /** Ends the stream and returns the rest of the output; frees the encoder. */
  finish(): Uint8Array {
    const e = this.#live();
    try {
      return e.finish();
    } finally {
      this.dispose();
    }
  }
  /** Frees the encoder. Safe to call twice. */
  dispose(): void {
    this.#e?.free();
    this.#e = null;
  }
  #live(): wasm.XzEncoderJs {
    if (!this.#e) throw new Error("xz encoder already finished");
    return this.#e;
  }
}

/** Streaming xz decoder: push compressed bytes, pull decoded bytes in bounded pieces. */
export class XzDecoder {
  #d: wasm.XzDecoderJs | null;
  /** @param memlimit bytes the stream may claim @param concatenated accept several streams back to back */
  constructor(memlimit = XZ_MEMLIMIT, concatenated = false) {
    this.#d = new wasm.XzDecoderJs(memlimit, concatenated);
  }
  /** Queues compressed input (pull before pushing much more, to bound memory). */
  push(data: Uint8Array): void {
    this.#live().push(data);
  }
  /** Declares that no more input will come. */
  finishInput(): void {
    this.#live().finish_input();
  }
  /** Up to `max` decoded bytes; empty and not `done` means "push more". Throws on bad data. */
  pull(max = XZ_PULL_BYTES): Uint8Array {
    return this.#live().pull(max);
  }
  /** True once the stream is complete. */
  get done(): boolean {
    return this.#live().is_done();
  }
  /** Frees the decoder. Safe to call twice. */
  dispose(): void {
    this.#d?.free();
    this.#d = null;
  }
  #live(): wasm.XzDecoderJs {
    if (!this.#d) throw new Error("xz decoder already disposed");
    return this.#d;
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(parts.reduce((t, p) => t + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** The loaded core: stateless batched kernels plus factories for stateful ones. */
export class Core {
  readonly #memory: WebAssembly.Memory;
  /** @internal */
  constructor(memory: WebAssembly.Memory) {
    this.#memory = memory;
  }

  /** Current size of the WASM linear memory, in bytes. */
  get memoryBytes(): number {
    return this.#memory.buffer.byteLength;
  }

  /** One digest per `chunkSize` piece of `data` (the last may be short), concatenated. */
  hashChunks(alg: HashAlgorithm, data: Uint8Array, chunkSize = CHUNK_SIZE): Uint8Array {
    if (chunkSize <= 0 || !Number.isInteger(chunkSize)) throw new RangeError("chunkSize must be a positive integer");
    const out = new Uint8Array(Math.ceil(data.length / chunkSize) * DIGEST_LEN);
    const step = Math.max(1, Math.floor(SLICE_BYTES / chunkSize)) * chunkSize;
    for (let o = 0; o < data.length; o += step) {
      out.set(wasm.hash_chunks(ALG_ID[alg], data.subarray(o, o + step), chunkSize), (o / chunkSize) * DIGEST_LEN);
    }
    return out;
  }

  /** Digest of all of `data`. */
  hash(alg: HashAlgorithm, data: Uint8Array): Uint8Array {
    return new StreamHasher(alg).update(data).digest();
  }

  /** An incremental hasher. */
  hasher(alg: HashAlgorithm): StreamHasher {
    return new StreamHasher(alg);
  }

  /** One byte per `chunkSize` piece: 1 when the piece is all zero. */
  zeroChunks(data: Uint8Array, chunkSize = CHUNK_SIZE): Uint8Array {
    if (chunkSize <= 0 || !Number.isInteger(chunkSize)) throw new RangeError("chunkSize must be a positive integer");
    const out = new Uint8Array(Math.ceil(data.length / chunkSize));
    const step = Math.max(1, Math.floor(SLICE_BYTES / chunkSize)) * chunkSize;
    for (let o = 0; o < data.length; o += step) out.set(wasm.zero_chunks(data.subarray(o, o + step), chunkSize), o / chunkSize);
    return out;
  }

  /** `a ^ b` (equal lengths): the XOR delta of a chunk against its base, or its inverse. */
  xor(a: Uint8Array, b: Uint8Array): Uint8Array {
    if (a.length !== b.length) throw new RangeError("xor: inputs differ in length");
    const out = new Uint8Array(a.length);
    for (let o = 0; o < a.length; o += SLICE_BYTES) out.set(wasm.xor(a.subarray(o, o + SLICE_BYTES), b.subarray(o, o + SLICE_BYTES)), o);
    return out;
  }

  /**
   * Per `chunkSize` piece: how many more zero bytes the XOR delta against
   * `base` has than `data` itself. Positive means the delta should compress smaller.
   */
  xorGains(data: Uint8Array, base: Uint8Array, chunkSize = CHUNK_SIZE): Int32Array {
    if (chunkSize <= 0 || !Number.isInteger(chunkSize)) throw new RangeError("chunkSize must be a positive integer");
    if (data.length !== base.length) throw new RangeError("xorGains: inputs differ in length");
    const out = new Int32Array(Math.ceil(data.length / chunkSize));
    const step = Math.max(1, Math.floor(SLICE_BYTES / chunkSize)) * chunkSize;
    for (let o = 0; o < data.length; o += step) {
      out.set(wasm.xor_gains(data.subarray(o, o + step), base.subarray(o, o + step), chunkSize), o / chunkSize);
    }
    return out;
  }

  /** One standard .xz stream holding `data`. `dictCap` caps the dictionary (saves memory on small inputs). */
  xzCompress(data: Uint8Array, preset = 6, dictCap = 0): Uint8Array {
    if (data.length <= SLICE_BYTES) return wasm.xz_compress(data, preset, dictCap);
    const e = new XzEncoder(preset, dictCap);
    const head = e.push(data);
    return concat([head, e.finish()]);
  }

  /**
   * Decodes one .xz stream that must hold exactly `size` bytes; never
   * allocates more. Throws when the data is corrupt, truncated, too long or too short.
   */
  xzDecompressExact(data: Uint8Array, size: number, memlimit = XZ_MEMLIMIT): Uint8Array {
    return wasm.xz_decompress_exact(data, size, memlimit);
  }

  /** A streaming encoder. */
  xzEncoder(preset = 6, dictCap = 0): XzEncoder {
    return new XzEncoder(preset, dictCap);
  }

  /** A streaming decoder. */
  xzDecoder(memlimit = XZ_MEMLIMIT, concatenated = false): XzDecoder {
    return new XzDecoder(memlimit, concatenated);
  }

  /** A web-standard stream that compresses into one .xz stream. */
  xzCompressStream(preset = 6): TransformStream<Uint8Array, Uint8Array> {
    let e: XzEncoder;
    return new TransformStream({
      start: () => {
        e = new XzEncoder(preset);
      },
      transform: (chunk, ctl) => {
        const out = e.push(chunk);
        if (out.length) ctl.enqueue(out);
      },
      flush: (ctl) => ctl.enqueue(e.finish()),
    });
  }

  /** A web-standard stream that decodes .xz (several streams back to back allowed). */
  xzDecompressStream(memlimit = XZ_MEMLIMIT): TransformStream<Uint8Array, Uint8Array> {
    let d: XzDecoder;
    const drain = (ctl: TransformStreamDefaultController<Uint8Array>) => {
      for (;;) {
        const out = d.pull(XZ_PULL_BYTES);
        if (!out.length) return;
        ctl.enqueue(out);
      }
    };
    return new TransformStream({
      start: () => {
        d = new XzDecoder(memlimit, true);
      },
      transform: (chunk, ctl) => {
        try {
          for (let o = 0; o < chunk.length; o += XZ_PULL_BYTES) {
            d.push(chunk.subarray(o, o + XZ_PULL_BYTES));
            drain(ctl);
          }
        } catch (err) {
          d.dispose();
          throw err;
        }
      },
      flush: (ctl) => {
        try {
          d.finishInput();
          drain(ctl);
          if (!d.done) throw new Error("xz stream is truncated");
        } finally {
          d.dispose();
        }
      },
    });
  }

  /** A builder for a base index with room for `capacity` entries. */
  indexBuilder(capacity: number): IndexBuilder {
    return new IndexBuilder(capacity);
  }

  /** Loads a saved base index. */
  loadIndex(bytes: Uint8Array): BaseIndex {
    return BaseIndex.fromBytes(bytes);
  }
}

let loaded: Promise<Core> | undefined;

/**
 * Instantiates the core from the bytes of `cloudlet_core_bg.wasm` (or a
 * compiled module). One instance per JS realm: later calls return it.
 */
export function loadCore(wasmBytes: BufferSource | WebAssembly.Module): Promise<Core> {
  loaded ??= init({ module_or_path: wasmBytes }).then((exports) => new Core(exports.memory));
  // A failed load (bad bytes) must not be remembered: the next call may pass good ones.
  loaded.catch(() => (loaded = undefined));
  return loaded;
}
