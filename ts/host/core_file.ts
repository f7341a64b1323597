/**
 * Loads the WASM core from disk, for Node and Deno (both serve `node:` built-ins).
 * Node 20 cannot `fetch` a `file:` URL, so the bytes are read and handed over.
 */
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { loadCore, type Core } from "../core/core.ts";

/** Path of the built `.wasm` that every runtime loads. */
export const WASM_PATH = fileURLToPath(new URL("../core/_wasm/cloudlet_core_bg.wasm", import.meta.url));

/** Reads and instantiates the core. */
export async function loadCoreFromDisk(): Promise<Core> {
  let bytes: Uint8Array;
  try {
    bytes = await readFile(WASM_PATH);
  } catch {
    throw new Error(`the WASM core is not built (${WASM_PATH} is missing): run scripts/setup.sh`);
  }
  return loadCore(bytes);
}
