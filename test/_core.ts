/** Shared test fixture: the WASM core, loaded once per test file. */
import { loadCoreFromDisk } from "../ts/node/core_file.ts";
export const core = await loadCoreFromDisk();
