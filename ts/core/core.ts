/**
 * The WASM core, typed: the wasm-bindgen build of `core-rs`, behind the
 * calls of {@link Core} (`kernels.ts`, shared with the component build).
 * One `.wasm` serves Node, Deno and browsers: the host hands over its bytes
 * and gets a {@link Core}.
 *
 * This module is runtime-neutral: it imports no `node:` module.
 */
import type * as Glue from "./_wasm/cloudlet_core.js";
import { Core, DIGEST_LEN, type HashAlgorithm, type KernelBackend, type RawBaseIndex } from "./kernels.ts";

export * from "./kernels.ts";

const ALG_ID: Record<HashAlgorithm, number> = { blake3: 0, sha256: 1 };

function rawIndex(i: Glue.BaseIndexJs): RawBaseIndex {
  return {
    len: () => i.len(),
    memoryBytes: () => i.memory_bytes(),
    lookup: (digests, sources, offsets, at) => {
      const r = i.lookup(digests, DIGEST_LEN);
      for (let j = 0; j < r.length / 2; j++) {
        sources[at + j] = r[2 * j];
        offsets[at + j] = r[2 * j + 1];
      }
    },
    toBytes: () => i.to_bytes(),
    free: () => i.free(),
  };
}

/** The wasm-bindgen exports as a {@link KernelBackend}. */
function bindgenBackend(wasm: typeof Glue, memory: WebAssembly.Memory): KernelBackend {
  return {
    memoryBytes: () => memory.buffer.byteLength,
    hashChunks: (alg, data, chunkSize) => wasm.hash_chunks(ALG_ID[alg], data, chunkSize),
    hasher: (alg) => new wasm.Hasher(ALG_ID[alg]),
    zeroChunks: (data, chunkSize) => wasm.zero_chunks(data, chunkSize),
    xor: (a, b) => wasm.xor(a, b),
    xorGains: (data, base, chunkSize) => wasm.xor_gains(data, base, chunkSize),
    xzCompress: (data, preset, dictCap) => wasm.xz_compress(data, preset, dictCap),
    xzDecompressExact: (data, size, memlimit) => wasm.xz_decompress_exact(data, size, memlimit),
    xzEncoder: (preset, dictCap) => new wasm.XzEncoderJs(preset, dictCap),
    xzDecoder: (memlimit, concatenated) => {
      const d = new wasm.XzDecoderJs(memlimit, concatenated);
      return { push: (b) => d.push(b), finishInput: () => d.finish_input(), pull: (max) => d.pull(max), isDone: () => d.is_done(), free: () => d.free() };
    },
    indexBuilder: (capacity) => {
      const b = new wasm.IndexBuilderJs(capacity);
      return {
        addRun: (digests, mask, source, firstOffset, step) => b.add_run(digests, DIGEST_LEN, mask, source, firstOffset, step),
        finish: () => rawIndex(b.finish()),
        free: () => b.free(),
      };
    },
    indexFromBytes: (bytes) => rawIndex(wasm.BaseIndexJs.from_bytes(bytes)),
  };
}

let loaded: Promise<Core> | undefined;

/**
 * Instantiates the core from the bytes of `cloudlet_core_bg.wasm` (or a
 * compiled module). One instance per JS realm: later calls return it.
 * The glue is imported here, not at the top, so that a tree whose build
 * is missing still loads every module and can say so (`ts/node/core_file.ts`).
 */
export function loadCore(wasmBytes: BufferSource | WebAssembly.Module): Promise<Core> {
  loaded ??= import("./_wasm/cloudlet_core.js").then(async (glue) => new Core(bindgenBackend(glue, (await glue.default({ module_or_path: wasmBytes })).memory)));
  // A failed load (bad bytes) must not be remembered: the next call may pass good ones.
  loaded.catch(() => (loaded = undefined));
  return loaded;
}
