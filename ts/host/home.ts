/**
 * The cloudlet home: registry, bases, guest cache, index cache, runs,
 * synthesized VMs and server sessions live here.
 *
 * ```text
 *   registry.sqlite      bases (sql.js)            bases/<id>/   a base VM
 *   guest/               built-in guest cache      runs/         VMs being customised
 *   vms/<id>/            synthesized VMs           sessions/     server sessions
 *   index-cache/         file-mode base indexes    server/token  the server's token
 * ```
 */
import { homedir } from "node:os";
import { join, resolve } from "node:path";

/**
 * The cloudlet home directory: `--home`, else `$CLOUDLET_HOME`, else
 * `/var/lib/cloudlet` for root (libvirt's QEMU user cannot enter /root) and
 * `~/.cloudlet` for everyone else.
 */
export function cloudletHome(override?: string): string {
  const fallback = process.getuid?.() === 0 ? "/var/lib/cloudlet" : join(homedir(), ".cloudlet");
  return resolve(override ?? process.env.CLOUDLET_HOME ?? fallback);
}

/** Where file-mode base indexes are cached. */
export function indexCacheDir(home: string): string {
  return join(home, "index-cache");
}
