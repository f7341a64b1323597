/**
 * Loads the transpiled core component from disk, for Node and Deno (both
 * serve `node:` built-ins). Node 20 cannot `fetch` a `file:` URL, so the
 * core modules' bytes are read and handed over.
 */
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { type ComponentCore, loadComponentCore } from "./component_core.ts";

/** Folder of `scripts/build-component.sh`'s output. */
export const COMPONENT_DIR = fileURLToPath(new URL("./_gen/", import.meta.url));
/** The component itself, for hosts other than JS (wasmtime, ...). */
export const COMPONENT_PATH = fileURLToPath(new URL("./_gen/cloudlet_core.component.wasm", import.meta.url));

/** Reads and instantiates the transpiled component. */
export async function loadComponentCoreFromDisk(): Promise<ComponentCore> {
  return loadComponentCore(async (name) => {
    try {
      return await readFile(new URL(`./_gen/${name}`, import.meta.url));
    } catch {
      throw new Error(`the core component is not built (${COMPONENT_DIR}${name} is missing): run scripts/build-component.sh`);
    }
  });
}
