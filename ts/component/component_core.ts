/**
 * The core as a WebAssembly Component (`wit/core.wit`), transpiled to ES
 * modules by jco, behind the same {@link Core} as the wasm-bindgen build:
 * both share `ts/core/kernels.ts` (constants, slicing, wrapper classes), and
 * this file only maps the component's exports onto its raw calls. It exists
 * so that the component build can be tested and benchmarked against the
 * wasm-bindgen build call for call; cloudlet itself runs on the latter.
 *
 * A component `error` becomes a {@link ComponentCoreError}. Runtime-neutral:
 * imports no `node:` module (the disk loader is `component_file.ts`), and not
 * the wasm-bindgen glue either.
 */
import { Core, DIGEST_LEN, type KernelBackend, type RawBaseIndex, Source } from "../core/kernels.ts";
import type { Root } from "./_gen/cloudlet_core.js";
import type * as IndexApi from "./_gen/interfaces/cloudlet-core-index.js";
import type { ErrorCode } from "./_gen/interfaces/cloudlet-core-types.js";

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

function rawIndex(i: IndexApi.BaseIndex): RawBaseIndex {
  return {
    len: () => i.len(),
    memoryBytes: () => Number(i.memoryBytes()),
    lookup: (digests, sources, offsets, at) => {
      const values = call(() => i.lookup(digests, DIGEST_LEN));
      // value = source << 56 | offset, all ones on a miss; read as two u32
      // halves (little-endian, as on every host we run) to avoid BigInt math.
      const w = new Uint32Array(values.buffer, values.byteOffset, values.length * 2);
      for (let j = 0; j < values.length; j++) {
        const lo = w[2 * j];
        const hi = w[2 * j + 1];
        if (hi === 0xffffffff && lo === 0xffffffff) {
          sources[at + j] = -1;
          offsets[at + j] = -1;
        } else {
          sources[at + j] = hi >>> 24;
          offsets[at + j] = (hi & 0xffffff) * 2 ** 32 + lo;
        }
      }
    },
    toBytes: () => i.toBytes(),
    free: () => dispose(i),
  };
}

/** The jco exports as a {@link KernelBackend}. */
function componentBackend(x: Root): KernelBackend {
  return {
    hashChunks: (alg, data, chunkSize) => call(() => x.hashing.hashChunks(alg, data, chunkSize)),
    hashOnce: (alg, data) => call(() => x.hashing.hash(alg, data)),
    hasher: (alg) => {
      const h = call(() => new x.hashing.Hasher(alg));
      return { update: (d) => h.update(d), digest: () => h.digest(), free: () => dispose(h) };
    },
    zeroChunks: (data, chunkSize) => call(() => x.zero.zeroChunks(data, chunkSize)),
    xor: (a, b) => call(() => x.delta.xor(a, b)),
    xorGains: (data, base, chunkSize) => call(() => x.delta.xorGains(data, base, chunkSize)),
    xzCompress: (data, preset, dictCap) => call(() => x.xz.compress(data, preset, dictCap)),
    xzDecompressExact: (data, size, memlimit) => call(() => x.xz.decompressExact(data, size, BigInt(memlimit))),
    xzEncoder: (preset, dictCap) => {
      const e = call(() => x.xz.Encoder.create(preset, dictCap));
      return { push: (d) => call(() => e.push(d)), finish: () => call(() => e.finish()), free: () => dispose(e) };
    },
    xzDecoder: (memlimit, concatenated) => {
      const d = call(() => x.xz.Decoder.create(BigInt(memlimit), concatenated));
      return { push: (b) => d.push(b), finishInput: () => d.finishInput(), pull: (max) => call(() => d.pull(max)), isDone: () => d.isDone(), free: () => dispose(d) };
    },
    indexBuilder: (capacity) => {
      const b = call(() => new x.index.IndexBuilder(capacity));
      return {
        addRun: (digests, mask, source, firstOffset, step) =>
          call(() => b.addRun(digests, DIGEST_LEN, mask, source === Source.Memory ? "memory" : "disk", BigInt(firstOffset), BigInt(step))),
        finish: () => rawIndex(call(() => b.finish())),
        free: () => dispose(b),
      };
    },
    indexFromBytes: (bytes) => rawIndex(call(() => x.index.BaseIndex.fromBytes(bytes))),
  };
}

/** The component's kernels behind the calls of {@link Core}, plus its raw exports. */
export class ComponentCore extends Core {
  /** The raw jco exports, for callers that want the WIT interface itself. */
  readonly exports: Root;
  /** @internal */
  constructor(exports: Root) {
    super(componentBackend(exports));
    this.exports = exports;
  }
}

/** The bytes of one of the component's core modules, by the name jco gave it. */
export type CoreModuleSource = (name: string) => BufferSource | WebAssembly.Module | Promise<BufferSource | WebAssembly.Module>;

/**
 * Instantiates the transpiled component. `coreModule` returns the bytes (or
 * a compiled module) of each core module jco wrote next to
 * `cloudlet_core.js` (`cloudlet_core.core.wasm`, `...core2.wasm`, ...).
 * The component imports nothing, so no import object is needed. jco's glue
 * is imported here, not at the top, so a tree without the build can say so.
 */
export async function loadComponentCore(coreModule: CoreModuleSource): Promise<ComponentCore> {
  const { instantiate } = await import("./_gen/cloudlet_core.js");
  const root = await instantiate(async (name) => {
    const m = await coreModule(name);
    return m instanceof WebAssembly.Module ? m : WebAssembly.compile(m);
  }, {});
  return new ComponentCore(root);
}
