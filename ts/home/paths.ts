/**
 * The cloudlet home: registry, bases, guest cache, index cache, runs,
 * synthesized VMs and server sessions live here.
 *
 * ```text
 *   registry.sqlite      bases (sql.js)            bases/<id>/   a base VM
 *   registry.lock        the registry's writer     guest/        built-in guest cache
 *   runs/                VMs being customised      vms/<id>/     synthesized VMs
 *   sessions/<id>/       server sessions           index-cache/  file-mode base indexes
 *   server/token         the server's token        server/serve.lock  one server per home
 *   logs/                serial logs of failed runs
 * ```
 *
 * This file is the one owner of these names: everything else asks
 * {@link homePaths}.
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

/** Every path in the cloudlet home. */
export function homePaths(home: string) {
  return {
    home,
    registry: join(home, "registry.sqlite"),
    registryLock: join(home, "registry.lock"),
    bases: join(home, "bases"),
    guest: join(home, "guest"),
    runs: join(home, "runs"),
    vms: join(home, "vms"),
    sessions: join(home, "sessions"),
    /** The folder of server session `id` (an id the server made). */
    session: (id: string) => join(home, "sessions", id),
    /** The folder of server session `id`'s early-started VM: beside the session's, with a short name (QEMU's socket paths in it must stay under 108 bytes). */
    earlySession: (id: string) => join(home, "sessions", `e${id.slice(0, 12)}`),
    indexCache: join(home, "index-cache"),
    logs: join(home, "logs"),
    serverToken: join(home, "server", "token"),
    serverLock: join(home, "server", "serve.lock"),
  };
}

/** Where file-mode base indexes are cached. */
export function indexCacheDir(home: string): string {
  return homePaths(home).indexCache;
}
