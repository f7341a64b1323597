/**
 * The core's calls, typed, over any build of the kernels. Both builds of
 * `core-rs` — the wasm-bindgen module (`core.ts`) and the WebAssembly
 * Component (`ts/component/component_core.ts`) — supply a
 * {@link KernelBackend}: raw calls on one bounded slice each. Everything
 * above that is here, once: the constants, slicing large inputs so WASM
 * memory stays bounded, and the wrapper classes that free every wasm-side
 * object, so no `free()` or memory management leaks out.
 *
 * Imports nothing, not even a build's glue: a build picks this up, not the
 * other way round. Runtime-neutral.
 */

/** Size of a chunk (a disk block or a memory page) in bytes. */
export const CHUNK_SIZE = 4096;
/** Length of a chunk digest in bytes. */
export const DIGEST_LEN = 32;
/** Largest slice of input handed to WASM in one call; bounds WASM memory. */
export const SLICE_BYTES = 4 << 20;
/** Default memory a decoder may claim: enough for any xz preset (-9 needs ~65 MiB). */
export const XZ_MEMLIMIT = 96 << 20;
/** Most bytes one decoder pull returns. */
export const XZ_PULL_BYTES = 1 << 20;

/** Hash functions the core provides. */
export type HashAlgorithm = "blake3" | "sha256";

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

/** A kernel-side object; its wrapper frees it exactly once. */
export interface KernelObject {
  /** Releases the object's WASM memory. */
  free(): void;
}
/** A build's incremental hasher. */
export interface RawHasher extends KernelObject {
  /** Feeds one slice. */
  update(data: Uint8Array): void;
  /** The digest so far. */
  digest(): Uint8Array;
}
/** A build's streaming xz encoder. */
export interface RawXzEncoder extends KernelObject {
  /** Consumes one slice; returns the output ready. */
  push(data: Uint8Array): Uint8Array;
  /** Ends the stream; returns the rest. */
  finish(): Uint8Array;
}
/** A build's streaming xz decoder. */
export interface RawXzDecoder extends KernelObject {
  /** Queues compressed input. */
  push(data: Uint8Array): void;
  /** Declares the end of input. */
  finishInput(): void;
  /** Up to `max` decoded bytes. */
  pull(max: number): Uint8Array;
  /** True once the stream is complete. */
  isDone(): boolean;
}
/** A build's index builder. */
export interface RawIndexBuilder extends KernelObject {
  /** Adds one slice of a run (`mask` empty: every chunk). */
  addRun(digests: Uint8Array, mask: Uint8Array, source: Source, firstOffset: number, step: number): void;
  /** Sorts and returns the index; the builder is spent (still to be freed). */
  finish(): RawBaseIndex;
}
/** A build's finished base index. */
export interface RawBaseIndex extends KernelObject {
  /** Number of distinct digests. */
  len(): number;
  /** Memory the index occupies, in bytes. */
  memoryBytes(): number;
  /** Looks up one slice of digests, writing result `j` to `sources[at + j]` and `offsets[at + j]` (-1 on a miss). */
  lookup(digests: Uint8Array, sources: Int8Array, offsets: Float64Array, at: number): void;
  /** The serialised index. */
  toBytes(): Uint8Array;
}

/**
 * One build's raw kernels: each call takes at most {@link SLICE_BYTES} of
 * input (the wrappers slice), and throws on bad input.
 */
export interface KernelBackend {
  /** Current size of the build's linear memory, when the build can tell. */
  memoryBytes?(): number;
  /** One digest per `chunkSize` piece. */
  hashChunks(alg: HashAlgorithm, data: Uint8Array, chunkSize: number): Uint8Array;
  /** A one-shot digest, when the build has a call for it (saves creating a hasher). */
  hashOnce?(alg: HashAlgorithm, data: Uint8Array): Uint8Array;
  /** A fresh incremental hasher. */
  hasher(alg: HashAlgorithm): RawHasher;
  /** One byte per `chunkSize` piece: 1 when all zero. */
  zeroChunks(data: Uint8Array, chunkSize: number): Uint8Array;
  /** `a ^ b`. */
  xor(a: Uint8Array, b: Uint8Array): Uint8Array;
  /** Per piece: extra zero bytes of the XOR delta. */
  xorGains(data: Uint8Array, base: Uint8Array, chunkSize: number): Int32Array;
  /** One .xz stream holding `data`. */
  xzCompress(data: Uint8Array, preset: number, dictCap: number): Uint8Array;
  /** Decodes one .xz stream of exactly `size` bytes. */
  xzDecompressExact(data: Uint8Array, size: number, memlimit: number): Uint8Array;
  /** A streaming encoder. */
  xzEncoder(preset: number, dictCap: number): RawXzEncoder;
  /** A streaming decoder. */
  xzDecoder(memlimit: number, concatenated: boolean): RawXzDecoder;
  /** An index builder with room for `capacity` entries. */
  indexBuilder(capacity: number): RawIndexBuilder;
  /** Loads a serialised index; throws on corrupt data. */
  indexFromBytes(bytes: Uint8Array): RawBaseIndex;
}

/** An incremental hasher. */
export class StreamHasher {
  #h: RawHasher | null;
  /** @internal */
  constructor(h: RawHasher) {
    this.#h = h;
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
  #live(): RawHasher {
    if (!this.#h) throw new Error("hasher already finished");
    return this.#h;
  }
}

/** Collects (digest -> location) entries for a {@link BaseIndex}. */
export class IndexBuilder {
  #b: RawIndexBuilder | null;
  /** @internal */
  constructor(b: RawIndexBuilder) {
    this.#b = b;
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
    const none = new Uint8Array(0);
    for (let i = 0; i < n; i += per) {
      const end = Math.min(n, i + per);
      b.addRun(digests.subarray(i * DIGEST_LEN, end * DIGEST_LEN), mask ? mask.subarray(i, end) : none, source, firstOffset + i * step, step);
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
  #i: RawBaseIndex | null;
  /** @internal */
  constructor(i: RawBaseIndex) {
    this.#i = i;
  }
  /** Number of distinct digests. */
  get size(): number {
    return this.#live().len();
  }
  /** WASM memory the index occupies, in bytes. */
  get memoryBytes(): number {
    return this.#live().memoryBytes();
  }
  /** Looks up many 32-byte digests at once. A hit is a candidate: confirm it. */
  lookup(digests: Uint8Array): IndexHits {
    const idx = this.#live();
    const n = digests.length / DIGEST_LEN;
    const sources = new Int8Array(n);
    const offsets = new Float64Array(n);
    const per = Math.floor(SLICE_BYTES / DIGEST_LEN);
    for (let i = 0; i < n; i += per) idx.lookup(digests.subarray(i * DIGEST_LEN, Math.min(n, i + per) * DIGEST_LEN), sources, offsets, i);
    return { sources, offsets };
  }
  /** The serialised index (for caching next to the base); byte-identical across builds. */
  toBytes(): Uint8Array {
    return this.#live().toBytes();
  }
  /** Frees the index. Safe to call twice. */
  close(): void {
    this.#i?.free();
    this.#i = null;
  }
  [Symbol.dispose](): void {
    this.close();
  }
  #live(): RawBaseIndex {
    if (!this.#i) throw new Error("base index is closed");
    return this.#i;
  }
}

/** Streaming xz encoder: push input, take the output that is ready. Output is a standard .xz stream. */
export class XzEncoder {
  #e: RawXzEncoder | null;
  /** @internal */
  constructor(e: RawXzEncoder) {
    this.#e = e;
  }
  /** Consumes `data`; returns the compressed bytes ready so far (often empty). */
  push(data: Uint8Array): Uint8Array {
    const e = this.#live();
    const parts: Uint8Array[] = [];
    for (let o = 0; o < data.length; o += SLICE_BYTES) parts.push(e.push(data.subarray(o, o + SLICE_BYTES)));
    return concatBytes(parts);
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
  #live(): RawXzEncoder {
    if (!this.#e) throw new Error("xz encoder already finished");
    return this.#e;
  }
}

/** Streaming xz decoder: push compressed bytes, pull decoded bytes in bounded pieces. */
export class XzDecoder {
  #d: RawXzDecoder | null;
  /** @internal */
  constructor(d: RawXzDecoder) {
    this.#d = d;
  }
  /** Queues compressed input (pull before pushing much more, to bound memory). */
  push(data: Uint8Array): void {
    this.#live().push(data);
  }
  /** Declares that no more input will come. */
  finishInput(): void {
    this.#live().finishInput();
  }
  /** Up to `max` decoded bytes; empty and not `done` means "push more". Throws on bad data. */
  pull(max = XZ_PULL_BYTES): Uint8Array {
    return this.#live().pull(max);
  }
  /** True once the stream is complete. */
  get done(): boolean {
    return this.#live().isDone();
  }
  /** Frees the decoder. Safe to call twice. */
  dispose(): void {
    this.#d?.free();
    this.#d = null;
  }
  #live(): RawXzDecoder {
    if (!this.#d) throw new Error("xz decoder already disposed");
    return this.#d;
  }
}

/** The bytes of `parts`, one after another (the part itself when there is one). */
export function concatBytes(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(parts.reduce((t, p) => t + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function checkChunkSize(chunkSize: number): void {
  if (chunkSize <= 0 || !Number.isInteger(chunkSize)) throw new RangeError("chunkSize must be a positive integer");
}

/** The loaded core: stateless batched kernels plus factories for stateful ones. */
export class Core {
  readonly #k: KernelBackend;
  /** @internal */
  constructor(backend: KernelBackend) {
    this.#k = backend;
  }

  /** Current size of the WASM linear memory, in bytes (throws where the build cannot tell). */
  get memoryBytes(): number {
    if (!this.#k.memoryBytes) throw new Error("this build of the core does not expose its memory size");
    return this.#k.memoryBytes();
  }

  /** One digest per `chunkSize` piece of `data` (the last may be short), concatenated. */
  hashChunks(alg: HashAlgorithm, data: Uint8Array, chunkSize = CHUNK_SIZE): Uint8Array {
    checkChunkSize(chunkSize);
    const out = new Uint8Array(Math.ceil(data.length / chunkSize) * DIGEST_LEN);
    const step = Math.max(1, Math.floor(SLICE_BYTES / chunkSize)) * chunkSize;
    for (let o = 0; o < data.length; o += step) out.set(this.#k.hashChunks(alg, data.subarray(o, o + step), chunkSize), (o / chunkSize) * DIGEST_LEN);
    return out;
  }

  /** Digest of all of `data`. */
  hash(alg: HashAlgorithm, data: Uint8Array): Uint8Array {
    if (this.#k.hashOnce && data.length <= SLICE_BYTES) return this.#k.hashOnce(alg, data);
    return this.hasher(alg).update(data).digest();
  }

  /** An incremental hasher. */
  hasher(alg: HashAlgorithm): StreamHasher {
    return new StreamHasher(this.#k.hasher(alg));
  }

  /** One byte per `chunkSize` piece: 1 when the piece is all zero. */
  zeroChunks(data: Uint8Array, chunkSize = CHUNK_SIZE): Uint8Array {
    checkChunkSize(chunkSize);
    const out = new Uint8Array(Math.ceil(data.length / chunkSize));
    const step = Math.max(1, Math.floor(SLICE_BYTES / chunkSize)) * chunkSize;
    for (let o = 0; o < data.length; o += step) out.set(this.#k.zeroChunks(data.subarray(o, o + step), chunkSize), o / chunkSize);
    return out;
  }

  /** `a ^ b` (equal lengths): the XOR delta of a chunk against its base, or its inverse. */
  xor(a: Uint8Array, b: Uint8Array): Uint8Array {
    if (a.length !== b.length) throw new RangeError("xor: inputs differ in length");
    if (a.length <= SLICE_BYTES) return this.#k.xor(a, b);
    const out = new Uint8Array(a.length);
    for (let o = 0; o < a.length; o += SLICE_BYTES) out.set(this.#k.xor(a.subarray(o, o + SLICE_BYTES), b.subarray(o, o + SLICE_BYTES)), o);
    return out;
  }

  /**
   * Per `chunkSize` piece: how many more zero bytes the XOR delta against
   * `base` has than `data` itself. Positive means the delta should compress smaller.
   */
  xorGains(data: Uint8Array, base: Uint8Array, chunkSize = CHUNK_SIZE): Int32Array {
    checkChunkSize(chunkSize);
    if (data.length !== base.length) throw new RangeError("xorGains: inputs differ in length");
    const out = new Int32Array(Math.ceil(data.length / chunkSize));
    const step = Math.max(1, Math.floor(SLICE_BYTES / chunkSize)) * chunkSize;
    for (let o = 0; o < data.length; o += step) out.set(this.#k.xorGains(data.subarray(o, o + step), base.subarray(o, o + step), chunkSize), o / chunkSize);
    return out;
  }

  /** One standard .xz stream holding `data`. `dictCap` caps the dictionary (saves memory on small inputs). */
  xzCompress(data: Uint8Array, preset = 6, dictCap = 0): Uint8Array {
    if (data.length <= SLICE_BYTES) return this.#k.xzCompress(data, preset, dictCap);
    const e = this.xzEncoder(preset, dictCap);
    const head = e.push(data);
    return concatBytes([head, e.finish()]);
  }

  /**
   * Decodes one .xz stream that must hold exactly `size` bytes; never
   * allocates more. Throws when the data is corrupt, truncated, too long or too short.
   */
  xzDecompressExact(data: Uint8Array, size: number, memlimit = XZ_MEMLIMIT): Uint8Array {
    return this.#k.xzDecompressExact(data, size, memlimit);
  }

  /** A streaming encoder. */
  xzEncoder(preset = 6, dictCap = 0): XzEncoder {
    return new XzEncoder(this.#k.xzEncoder(preset, dictCap));
  }

  /** A streaming decoder. */
  xzDecoder(memlimit = XZ_MEMLIMIT, concatenated = false): XzDecoder {
    return new XzDecoder(this.#k.xzDecoder(memlimit, concatenated));
  }

  /** A web-standard stream that compresses into one .xz stream. */
  xzCompressStream(preset = 6): TransformStream<Uint8Array, Uint8Array> {
    let e: XzEncoder;
    return new TransformStream({
      start: () => {
        e = this.xzEncoder(preset);
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
        d = this.xzDecoder(memlimit, true);
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
    return new IndexBuilder(this.#k.indexBuilder(capacity));
  }

  /** Loads a saved base index. */
  loadIndex(bytes: Uint8Array): BaseIndex {
    return new BaseIndex(this.#k.indexFromBytes(bytes));
  }
}
