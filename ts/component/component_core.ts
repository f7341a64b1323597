/**
 * The core as a WebAssembly Component (`wit/core.wit`), transpiled to ES
 * modules by jco, behind the same calls as `Core` in `ts/core/core.ts`.
 * It exists so that the component build can be tested and benchmarked
 * against the wasm-bindgen build call for call; cloudlet itself runs on `Core`.
 *
 * Thin: input is fed in bounded slices as `Core` does, a component `error`
 * becomes a {@link ComponentCoreError}, and resources are disposed by their
 * wrappers. Runtime-neutral: imports no `node:` module (the disk loader is
 * `component_file.ts`).
 */
import type { HashAlgorithm, IndexHits, Source } from "../core/core.ts";
import { instantiate, type Root } from "./_gen/cloudlet_core.js";
import type * as Hashing from "./_gen/interfaces/cloudlet-core-hashing.js";
import type * as IndexApi from "./_gen/interfaces/cloudlet-core-index.js";
import type { ErrorCode } from "./_gen/interfaces/cloudlet-core-types.js";
import type * as XzApi from "./_gen/interfaces/cloudlet-core-xz.js";

// The same bounds as ts/core/core.ts (not imported: that would load the wasm-bindgen glue).
const CHUNK_SIZE = 4096;
const DIGEST_LEN = 32;
const SLICE_BYTES = 4 << 20;
const XZ_MEMLIMIT = 96 << 20;
const XZ_PULL_BYTES = 1 << 20;

/** A call the component refused, with the component's error code. */
export class ComponentCoreError extends Error {
  /** The WIT `error-code` case. */
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string) {
    super(message);
    this.name = "ComponentCoreError";
    this.code = code;
  }
}

/** jco throws a WIT `error` as a ComponentError whose `payload` is the record. */
function rethrow(e: unknown): never {
  const p = (e as { payload?: { code?: ErrorCode; message?: string } } | null)?.payload;
  if (p && typeof p.code === "string" && typeof p.message === "string") throw new ComponentCoreError(p.code, p.message);
  throw e;
}

/** Runs `fn`, turning a component error into a {@link ComponentCoreError}. */
function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    rethrow(e);
  }
}

/** Frees a jco resource handle now rather than at garbage collection. */
function dispose(resource: object): void {
  (resource as Partial<Disposable>)[Symbol.dispose]?.();
}

/** An incremental hasher in the component. */
export class ComponentHasher {
  #h: Hashing.Hasher | null;
  /** @internal */
  constructor(h: Hashing.Hasher) {
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
    if (this.#h) dispose(this.#h);
    this.#h = null;
  }
  #live(): Hashing.Hasher {
    if (!this.#h) throw new Error("hasher already finished");
    return this.#h;
  }
}

/** Streaming xz encoder in the component; output is a standard .xz stream. */
export class ComponentXzEncoder {
  #e: XzApi.Encoder | null;
  /** @internal */
  constructor(e: XzApi.Encoder) {
    this.#e = e;
  }
  /** Consumes `data`; returns the compressed bytes ready so far (often empty). */
  push(data: Uint8Array): Uint8Array {
    const e = this.#live();
    const parts: Uint8Array[] = [];
    for (let o = 0; o < data.length; o += SLICE_BYTES) parts.push(call(() => e.push(data.subarray(o, o + SLICE_BYTES))));
    return concat(parts);
  }
  /** Ends the stream and returns the rest of the output; frees the encoder. */
  finish(): Uint8Array {
    const e = this.#live();
    try {
      return call(() => e.finish());
    } finally {
      this.dispose();
    }
  }
  /** Frees the encoder. Safe to call twice. */
  dispose(): void {
    if (this.#e) dispose(this.#e);
    this.#e = null;
  }
  #live(): XzApi.Encoder {
    if (!this.#e) throw new Error("xz encoder already finished");
    return this.#e;
  }
}

/** Streaming xz decoder in the component: push compressed bytes, pull decoded bytes in bounded pieces. */
export class ComponentXzDecoder {
  #d: XzApi.Decoder | null;
  /** @internal */
  constructor(d: XzApi.Decoder) {
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
    const d = this.#live();
    return call(() => d.pull(max));
  }
  /** True once the stream is complete. */
  get done(): boolean {
    return this.#live().isDone();
  }
  /** Frees the decoder. Safe to call twice. */
  dispose(): void {
    if (this.#d) dispose(this.#d);
    this.#d = null;
  }
  #live(): XzApi.Decoder {
    if (!this.#d) throw new Error("xz decoder already disposed");
    return this.#d;
  }
}

/** Collects (digest -> location) entries for a {@link ComponentBaseIndex}. */
export class ComponentIndexBuilder {
  #b: IndexApi.IndexBuilder | null;
  /** @internal */
  constructor(b: IndexApi.IndexBuilder) {
    this.#b = b;
  }
  /** As `IndexBuilder.addRun` of `Core`: digest `i` describes the chunk at `firstOffset + i * step`. */
  addRun(digests: Uint8Array, source: Source, firstOffset: number, step: number, mask?: Uint8Array): void {
    const b = this.#b;
    if (!b) throw new Error("index builder already finished");
    const src: IndexApi.Source = source === 1 ? "memory" : "disk";
    const per = Math.floor(SLICE_BYTES / DIGEST_LEN);
    const n = digests.length / DIGEST_LEN;
    const none = new Uint8Array(0);
    for (let i = 0; i < n; i += per) {
      const end = Math.min(n, i + per);
      const d = digests.subarray(i * DIGEST_LEN, end * DIGEST_LEN);
      call(() => b.addRun(d, DIGEST_LEN, mask ? mask.subarray(i, end) : none, src, BigInt(firstOffset + i * step), BigInt(step)));
    }
  }
  /** Sorts the entries and returns the index; the builder is spent. */
  finish(): ComponentBaseIndex {
    const b = this.#b;
    if (!b) throw new Error("index builder already finished");
    this.#b = null;
    try {
      return new ComponentBaseIndex(call(() => b.finish()));
    } finally {
      dispose(b);
    }
  }
}

/** A sorted digest index in the component. */
export class ComponentBaseIndex {
  #i: IndexApi.BaseIndex | null;
  /** @internal */
  constructor(i: IndexApi.BaseIndex) {
    this.#i = i;
  }
  /** Number of distinct digests. */
  get size(): number {
    return this.#live().len();
  }
  /** Component memory the index occupies, in bytes. */
  get memoryBytes(): number {
    return Number(this.#live().memoryBytes());
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
      const values = call(() => idx.lookup(digests.subarray(i * DIGEST_LEN, end * DIGEST_LEN), DIGEST_LEN));
      // value = source << 56 | offset, all ones on a miss; read as two u32
      // halves (little-endian, as on every host we run) to avoid BigInt math.
      const w = new Uint32Array(values.buffer, values.byteOffset, values.length * 2);
      for (let j = 0; j < end - i; j++) {
        const lo = w[2 * j];
        const hi = w[2 * j + 1];
        if (hi === 0xffffffff && lo === 0xffffffff) {
          sources[i + j] = -1;
          offsets[i + j] = -1;
        } else {
          sources[i + j] = hi >>> 24;
          offsets[i + j] = (hi & 0xffffff) * 2 ** 32 + lo;
        }
      }
    }
    return { sources, offsets };
  }
  /** The serialised index, byte-identical to `BaseIndex.toBytes()` of `Core`. */
  toBytes(): Uint8Array {
    return this.#live().toBytes();
  }
  /** Frees the index. Safe to call twice. */
  close(): void {
    if (this.#i) dispose(this.#i);
    this.#i = null;
  }
  #live(): IndexApi.BaseIndex {
    if (!this.#i) throw new Error("base index is closed");
    return this.#i;
  }
}

/** The component's kernels, with the calls of `Core` that the tests and benchmarks use. */
export class ComponentCore {
  /** The raw jco exports, for callers that want the WIT interface itself. */
  readonly exports: Root;
  /** @internal */
  constructor(exports: Root) {
    this.exports = exports;
  }

  /** One digest per `chunkSize` piece of `data` (the last may be short), concatenated. */
  hashChunks(alg: HashAlgorithm, data: Uint8Array, chunkSize = CHUNK_SIZE): Uint8Array {
    if (chunkSize <= 0 || !Number.isInteger(chunkSize)) throw new RangeError("chunkSize must be a positive integer");
    const { hashChunks } = this.exports.hashing;
    const out = new Uint8Array(Math.ceil(data.length / chunkSize) * DIGEST_LEN);
    const step = Math.max(1, Math.floor(SLICE_BYTES / chunkSize)) * chunkSize;
    for (let o = 0; o < data.length; o += step) {
      out.set(call(() => hashChunks(alg, data.subarray(o, o + step), chunkSize)), (o / chunkSize) * DIGEST_LEN);
    }
    return out;
  }

  /** Digest of all of `data`. */
  hash(alg: HashAlgorithm, data: Uint8Array): Uint8Array {
    if (data.length <= SLICE_BYTES) return this.exports.hashing.hash(alg, data);
    return this.hasher(alg).update(data).digest();
  }

  /** An incremental hasher. */
  hasher(alg: HashAlgorithm): ComponentHasher {
    return new ComponentHasher(new this.exports.hashing.Hasher(alg));
  }

  /** One byte per `chunkSize` piece: 1 when the piece is all zero. */
  zeroChunks(data: Uint8Array, chunkSize = CHUNK_SIZE): Uint8Array {
    if (chunkSize <= 0 || !Number.isInteger(chunkSize)) throw new RangeError("chunkSize must be a positive integer");
    const { zeroChunks } = this.exports.zero;
    const out = new Uint8Array(Math.ceil(data.length / chunkSize));
    const step = Math.max(1, Math.floor(SLICE_BYTES / chunkSize)) * chunkSize;
    for (let o = 0; o < data.length; o += step) out.set(call(() => zeroChunks(data.subarray(o, o + step), chunkSize)), o / chunkSize);
    return out;
  }

  /** `a ^ b` (equal lengths). */
  xor(a: Uint8Array, b: Uint8Array): Uint8Array {
    if (a.length !== b.length) throw new RangeError("xor: inputs differ in length");
    const { xor } = this.exports.delta;
    if (a.length <= SLICE_BYTES) return call(() => xor(a, b));
    const out = new Uint8Array(a.length);
    for (let o = 0; o < a.length; o += SLICE_BYTES) out.set(call(() => xor(a.subarray(o, o + SLICE_BYTES), b.subarray(o, o + SLICE_BYTES))), o);
    return out;
  }

  /** Per `chunkSize` piece: how many more zero bytes the XOR delta has than `data` itself. */
  xorGains(data: Uint8Array, base: Uint8Array, chunkSize = CHUNK_SIZE): Int32Array {
    if (data.length !== base.length) throw new RangeError("xorGains: inputs differ in length");
    const { xorGains } = this.exports.delta;
    const out = new Int32Array(Math.ceil(data.length / chunkSize));
    const step = Math.max(1, Math.floor(SLICE_BYTES / chunkSize)) * chunkSize;
    for (let o = 0; o < data.length; o += step) {
      out.set(call(() => xorGains(data.subarray(o, o + step), base.subarray(o, o + step), chunkSize)), o / chunkSize);
    }
    return out;
  }

  /** One standard .xz stream holding `data`. */
  xzCompress(data: Uint8Array, preset = 6, dictCap = 0): Uint8Array {
    if (data.length <= SLICE_BYTES) return call(() => this.exports.xz.compress(data, preset, dictCap));
    const e = this.xzEncoder(preset, dictCap);
    const head = e.push(data);
    return concat([head, e.finish()]);
  }

  /** Decodes one .xz stream that must hold exactly `size` bytes; never allocates more. */
  xzDecompressExact(data: Uint8Array, size: number, memlimit = XZ_MEMLIMIT): Uint8Array {
    return call(() => this.exports.xz.decompressExact(data, size, BigInt(memlimit)));
  }

  /** A streaming encoder. */
  xzEncoder(preset = 6, dictCap = 0): ComponentXzEncoder {
    return new ComponentXzEncoder(call(() => this.exports.xz.Encoder.create(preset, dictCap)));
  }

  /** A streaming decoder. */
  xzDecoder(memlimit = XZ_MEMLIMIT, concatenated = false): ComponentXzDecoder {
    return new ComponentXzDecoder(call(() => this.exports.xz.Decoder.create(BigInt(memlimit), concatenated)));
  }

  /** A builder for a base index with room for `capacity` entries. */
  indexBuilder(capacity: number): ComponentIndexBuilder {
    return new ComponentIndexBuilder(new this.exports.index.IndexBuilder(capacity));
  }

  /** Loads a saved base index. */
  loadIndex(bytes: Uint8Array): ComponentBaseIndex {
    return new ComponentBaseIndex(call(() => this.exports.index.BaseIndex.fromBytes(bytes)));
  }
}

/** The bytes of one of the component's core modules, by the name jco gave it. */
export type CoreModuleSource = (name: string) => BufferSource | WebAssembly.Module | Promise<BufferSource | WebAssembly.Module>;

/**
 * Instantiates the transpiled component. `coreModule` returns the bytes (or
 * a compiled module) of each core module jco wrote next to
 * `cloudlet_core.js` (`cloudlet_core.core.wasm`, `...core2.wasm`, ...).
 * The component imports nothing, so no import object is needed.
 */
export async function loadComponentCore(coreModule: CoreModuleSource): Promise<ComponentCore> {
  const root = await instantiate(async (name) => {
    const m = await coreModule(name);
    return m instanceof WebAssembly.Module ? m : WebAssembly.compile(m);
  }, {});
  return new ComponentCore(root);
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
