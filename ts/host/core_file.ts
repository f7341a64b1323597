/**
 * Loads the WASM core from disk, for Node and Deno (both serve `node:` built-ins).
 * Node 20 cannot `fetch` a `file:` URL, so the bytes are read and handed over.
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { loadCore, type Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";

/** Path of the built `.wasm` that every runtime loads. */
export const WASM_PATH = fileURLToPath(new URL("../core/_wasm/cloudlet_core_bg.wasm", import.meta.url));
/** Path of the wasm-bindgen glue built beside it. */
export const WASM_GLUE_PATH = fileURLToPath(new URL("../core/_wasm/cloudlet_core.js", import.meta.url));

/** Reads and instantiates the core; NOT_BUILT, naming what to run, when the build is missing. */
export async function loadCoreFromDisk(): Promise<Core> {
  const missing = [WASM_GLUE_PATH, WASM_PATH].find((p) => !existsSync(p));
  if (missing) throw new CloudletError("NOT_BUILT", "the WASM core is not built: run scripts/setup.sh (or scripts/build-wasm.sh)", missing);
  return loadCore(await readFile(WASM_PATH));
}
