/**
 * The cloudlet home: registry, bases, guest cache and index cache live here.
 * `$CLOUDLET_HOME`, else `~/.cloudlet`.
 */
import { homedir } from "node:os";
import { join, resolve } from "node:path";

/** The cloudlet home directory. */
export function cloudletHome(override?: string): string {
  return resolve(override ?? process.env.CLOUDLET_HOME ?? join(homedir(), ".cloudlet"));
}

/** Where file-mode base indexes are cached. */
export function indexCacheDir(home: string): string {
  return join(home, "index-cache");
}
