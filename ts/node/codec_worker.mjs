// A segment-codec worker thread with its own WASM instance (see codec_pool.ts).
// Plain JavaScript on purpose: worker threads do not inherit the TypeScript
// loader under every runner, and this file only forwards to the WASM core.
import { readFileSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { hash_chunks, initSync, xz_compress, xz_decompress_exact } from "../core/_wasm/cloudlet_core.js";

initSync({ module: readFileSync(new URL("../core/_wasm/cloudlet_core_bg.wasm", import.meta.url)) });
const { preset, dictCap, memlimit } = workerData;
const CHUNK = 4096;
const BLAKE3 = 0;
const PRESET_X86 = 0x100; // core-rs/src/xz.rs: the x86 BCJ filter before LZMA2

parentPort.on("message", (m) => {
  try {
    // hash: BLAKE3 (algorithm 0 in the core's table) of each 4 KiB chunk, for synthesis's check.
    const out =
      m.op === "compress" ? xz_compress(m.data, m.x86 ? preset | PRESET_X86 : preset, dictCap)
      : m.op === "hash" ? hash_chunks(BLAKE3, m.data, CHUNK)
      : xz_decompress_exact(m.data, m.rawSize, memlimit);
    parentPort.postMessage({ id: m.id, ok: true, data: out }, [out.buffer]);
  } catch (e) {
    parentPort.postMessage({ id: m.id, ok: false, error: e instanceof Error ? e.message : String(e) });
  }
});
parentPort.postMessage({ ready: true });
