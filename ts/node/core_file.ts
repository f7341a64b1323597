/**
 * Loads the WASM core from disk, for Node and Deno (both serve `node:` built-ins).
 * Node 20 cannot `fetch` a `file:` URL, so the bytes are read and handed over.
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { loadCore, type Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";

const WASM_URL = new URL("../core/_wasm/cloudlet_core_bg.wasm", import.meta.url);
const GLUE_URL = new URL("../core/_wasm/cloudlet_core.js", import.meta.url);
/** Imported from JSR (or any https: URL) under Deno, this module has no files beside it. */
const REMOTE = WASM_URL.protocol !== "file:";

/** Path of the built `.wasm` that every runtime loads (its URL when this module was loaded over the network). */
export const WASM_PATH: string = REMOTE ? WASM_URL.href : fileURLToPath(WASM_URL);
/** Path of the wasm-bindgen glue built beside it. */
export const WASM_GLUE_PATH: string = REMOTE ? GLUE_URL.href : fileURLToPath(GLUE_URL);

/** Reads and instantiates the core; NOT_BUILT, naming what to run, when the build is missing. */
export async function loadCoreFromDisk(): Promise<Core> {
  if (REMOTE) {
    const r = await fetch(WASM_URL);
    if (!r.ok) throw new CloudletError("NOT_BUILT", `the WASM core could not be fetched (HTTP ${r.status})`, WASM_PATH);
    return loadCore(new Uint8Array(await r.arrayBuffer()));
  }
  const missing = [WASM_GLUE_PATH, WASM_PATH].find((p) => !existsSync(p));
  if (missing) throw new CloudletError("NOT_BUILT", "the WASM core is not built: run scripts/setup.sh (or scripts/build-wasm.sh)", missing);
  return loadCore(await readFile(WASM_PATH));
}
