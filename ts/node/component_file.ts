/**
 * Loads the transpiled core component from disk, for Node and Deno (both
 * serve `node:` built-ins). Node 20 cannot `fetch` a `file:` URL, so the
 * core modules' bytes are read and handed over.
 */
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import { CloudletError } from "../errors.ts";
import { type ComponentCore, loadComponentCore } from "../component/component_core.ts";

/** Folder of `scripts/build-component.sh`'s output. */
export const COMPONENT_DIR = fileURLToPath(new URL("../component/_gen/", import.meta.url));
/** The component itself, for hosts other than JS (wasmtime, ...). */
export const COMPONENT_PATH = fileURLToPath(new URL("../component/_gen/cloudlet_core.component.wasm", import.meta.url));

/** Reads and instantiates the transpiled component; NOT_BUILT, naming what to run, when it is not built. */
export async function loadComponentCoreFromDisk(): Promise<ComponentCore> {
  const notBuilt = (file: string) => new CloudletError("NOT_BUILT", "the core component is not built: run scripts/setup.sh (or scripts/build-component.sh)", file);
  if (!existsSync(`${COMPONENT_DIR}cloudlet_core.js`)) throw notBuilt(`${COMPONENT_DIR}cloudlet_core.js`);
  return loadComponentCore(async (name) => {
    try {
      return await readFile(new URL(`../component/_gen/${name}`, import.meta.url));
    } catch {
      throw notBuilt(`${COMPONENT_DIR}${name}`);
    }
  });
}
