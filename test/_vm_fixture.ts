/**
 * What the tests on real VMs share: a fresh home linked to the shared guest
 * cache (so the built-in guest is built once for all of them), the guest's
 * HTTP page polled from the host, the CLI's --json answer, and checks that no
 * QEMU of a home is left.
 *
 * And a fixture cache (`TEST_HOME/fx`): the built-in guest's base and
 * overlays of it made once per set of sources, so that the files that only
 * need "a base and an overlay" (not the making of them) copy one instead of
 * booting and customising a guest each, and the Deno run of the suite reuses
 * what the Node run made. docs/testing.md says which tests still make their own.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { promises as fsp, readdirSync, readFileSync, statSync } from "node:fs";
import * as http from "node:http";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import { cloudlet, type CliResult } from "./_cli.ts";
import { runTool } from "./_tools.ts";
import { Registry } from "../ts/home/registry.ts";
import { openBase } from "../ts/home/base_cache.ts";
import { buildGuestImage } from "../ts/vm/guest_image.ts";
import { core } from "./_core.ts";

/** Where the tests keep their homes and the shared guest cache (`guest/`). */
export const TEST_HOME = fileURLToPath(new URL("../.build/test-home", import.meta.url));
/** The example customisation script: a web page, a status page and a counter. */
export const WEBAPP = fileURLToPath(new URL("../examples/webapp.sh", import.meta.url));

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** An empty home `TEST_HOME/<name>-<pid>` (whatever was there is removed) whose `guest` links to the shared guest cache. */
export async function freshHome(name: string): Promise<string> {
  const home = join(TEST_HOME, `${name}-${process.pid}`);
  await fsp.rm(home, { recursive: true, force: true });
  await fsp.mkdir(home, { recursive: true });
  // The shared guest cache may not be built yet (a fresh clone): a dangling link would make the build fail.
  await fsp.mkdir(join(TEST_HOME, "guest"), { recursive: true });
  await fsp.symlink(join(TEST_HOME, "guest"), join(home, "guest"));
  return home;
}

/** The body at `url`, or "" when nothing answers within 5 s (a guest still resuming, or stopped). */
export function get(url: string): Promise<string> {
  return new Promise((resolve) => {
    http
      .get(url, { timeout: 5000, insecureHTTPParser: true }, (res) => {
        let b = "";
        res.setEncoding("utf8").on("data", (d: string) => (b += d));
        res.on("end", () => resolve(b));
      })
      .on("error", () => resolve(""))
      .on("timeout", function (this: http.ClientRequest) {
        this.destroy();
      });
  });
}

/** Polls `url` until it answers with a body, or `ms` have passed (then ""). */
export async function untilAnswer(url: string, ms = 30_000): Promise<string> {
  const end = Date.now() + ms;
  for (;;) {
    const b = await get(url);
    if (b || Date.now() > end) return b;
    await sleep(200);
  }
}

/** Asserts the CLI run succeeded and returns its parsed --json output. */
export function ok(r: CliResult) {
  assert.equal(r.code, 0, `cloudlet failed: ${r.stderr}`);
  return JSON.parse(r.stdout);
}

/** How many QEMU processes have a path inside `home` on their command line. */
export async function qemuCount(home: string): Promise<number> {
  const r = await runTool("pgrep", ["-f", `qemu-system-x86_64.*${home}/`]).catch(() => new Uint8Array(0));
  return new TextDecoder().decode(r).split("\n").filter(Boolean).length;
}

/** Starts libvirtd (and virtlogd) unless the system libvirt already answers, and waits up to 10 s for it. */
export async function ensureLibvirtd(): Promise<void> {
  const up = () => runTool("virsh", ["-c", "qemu:///system", "version"]).then(() => true, () => false);
  if (await up()) return;
  await runTool("sh", ["-c", "virtlogd -d 2>/dev/null; libvirtd -d"]);
  for (let i = 0; i < 50 && !(await up()); i++) await sleep(200);
}

/** The repository root. */
const ROOT = fileURLToPath(new URL("..", import.meta.url));
/**
 * Where cached fixtures live: one folder per recipe and digest of what builds it. A short name: QEMU's
 * sockets live under a base's folder while it is made, and a socket path must stay under 108 bytes.
 */
export const FIXTURE_CACHE = join(TEST_HOME, "fx");

let sources: string | null = null;
/**
 * A digest of everything that makes a base or an overlay: the TypeScript and
 * .wasm under ts/ and cli/, the commands under bin/, the npm lock file, the
 * built-in guest's image and the QEMU binaries. Any change gives new cache keys, so a stale fixture is
 * never used. The guest must be built (see {@link cached}).
 */
export function sourcesDigest(): string {
  if (sources) return sources;
  const h = createHash("sha256");
  const walk = (dir: string) => {
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) h.update(`${relative(ROOT, p)}\0`).update(readFileSync(p));
    }
  };
  for (const d of ["ts", "cli", "bin"]) walk(join(ROOT, d));
  h.update(readFileSync(join(ROOT, "package-lock.json")));
  // The guest image is large: its build writes new files, so names, sizes and times identify it
  // (whole milliseconds: Deno's node:fs drops the fraction Node keeps, and both runs must agree).
  const image = join(TEST_HOME, "guest", "image");
  for (const n of readdirSync(image).sort()) {
    const st = statSync(join(image, n));
    h.update(`guest/${n} ${st.size} ${Math.floor(st.mtimeMs)}\0`);
  }
  for (const bin of ["/usr/bin/qemu-system-x86_64", "/usr/bin/qemu-img"]) {
    const st = statSync(bin);
    h.update(`${bin} ${st.size} ${Math.floor(st.mtimeMs)}\0`);
  }
  sources = h.digest("hex").slice(0, 24);
  return sources;
}

/**
 * The folder `FIXTURE_CACHE/<name>-<key>`, made by `build(dir)` if it is not
 * there yet. The build writes into a temporary folder renamed into place when
 * done, so an interrupted build is never taken for a fixture; older fixtures of
 * the same name (other keys) are removed.
 */
async function cached(name: string, recipe: string, build: (dir: string) => Promise<void>): Promise<string> {
  // The built-in guest first (on a fresh clone the first fixture builds it): its files are part of the key.
  await buildGuestImage({ cacheDir: join(TEST_HOME, "guest") });
  const key = createHash("sha256").update(sourcesDigest()).update("\0").update(recipe).digest("hex").slice(0, 16);
  const dir = join(FIXTURE_CACHE, `${name}-${key}`);
  if (await fsp.access(join(dir, "complete")).then(() => true, () => false)) return dir;
  await fsp.mkdir(FIXTURE_CACHE, { recursive: true });
  for (const old of await fsp.readdir(FIXTURE_CACHE)) {
    // Older versions of this fixture, and builds that never finished (their process is gone).
    const pid = /^\.(\d+)$/.exec(old)?.[1];
    const stale = old.startsWith(`${name}-`) || (pid !== undefined && !(await fsp.access(`/proc/${pid}`).then(() => true, () => false)));
    if (stale) await fsp.rm(join(FIXTURE_CACHE, old), { recursive: true, force: true });
  }
  const tmp = join(FIXTURE_CACHE, `.${process.pid}`);
  await fsp.rm(tmp, { recursive: true, force: true });
  await fsp.mkdir(tmp, { recursive: true });
  try {
    await build(tmp);
    await fsp.writeFile(join(tmp, "complete"), recipe);
    // Another test process may have finished the same fixture meanwhile: then its copy serves.
    await fsp.rename(tmp, dir).catch(async (e) => {
      if (!(await fsp.access(join(dir, "complete")).then(() => true, () => false))) throw e;
      await fsp.rm(tmp, { recursive: true, force: true });
    });
  } catch (e) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw e;
  }
  return dir;
}

/** The cached home holding base "tiny": `cloudlet base --name tiny` on the built-in guest (256 MiB, the defaults). */
async function cachedBaseHome(): Promise<string> {
  // The folder is the home.
  return await cached("base", "cloudlet base --name tiny", async (home) => {
    await fsp.mkdir(join(TEST_HOME, "guest"), { recursive: true });
    await fsp.symlink(join(TEST_HOME, "guest"), join(home, "guest"));
    ok(await cloudlet(["base", "--home", home, "--name", "tiny", "--json"]));
  });
}

/**
 * Registers a copy of the cached base "tiny" in `home` (made on first use:
 * the built-in guest booted and snapshotted with `cloudlet base --name tiny`).
 * The copy is the test's own; the cached files are never handed out.
 */
export async function addCachedBase(home: string): Promise<void> {
  const cache = await cachedBaseHome();
  const row = await new Registry(cache).getBase("tiny");
  const dir = join(home, "bases", row.id);
  await fsp.mkdir(join(home, "bases"), { recursive: true });
  // From the cached home's own folder: the registry there names the folder it was built in.
  await runTool("cp", ["-a", "--reflink=auto", "--sparse=always", join(cache, "bases", row.id), dir]);
  // Prepared as `cloudlet base` leaves a base: the copy's digests and index are keyed by the files' inodes,
  // and a base scanned on first use would resume its first VM seconds later than a test expects.
  const opened = await openBase(core, { disk: join(dir, "disk.raw"), memory: join(dir, "memory.raw"), machine: row.machine, dir, needIndex: false });
  await opened.close();
  await new Registry(home).addBase({ ...row, dir, created: new Date().toISOString() });
}

/** {@link freshHome} with a copy of the cached base "tiny" registered in it. */
export async function homeWithBase(name: string): Promise<string> {
  const home = await freshHome(name);
  await addCachedBase(home);
  return home;
}

/**
 * Writes to `out` a copy of the overlay `cloudlet overlay tiny --script SCRIPT
 * ...args` makes of the cached base "tiny", made once per script text,
 * arguments and sources (in a home of its own, so the cached base stays as
 * made). `script` is the customisation script's text.
 */
export async function cachedOverlay(script: string, args: string[], out: string): Promise<void> {
  const recipe = JSON.stringify({ script, args });
  const name = `ov${createHash("sha256").update(recipe).digest("hex").slice(0, 8)}`;
  const dir = await cached(name, JSON.stringify({ base: await cachedBaseHome(), recipe }), async (home) => {
    await fsp.symlink(join(TEST_HOME, "guest"), join(home, "guest"));
    await addCachedBase(home);
    const made = join(home, "made.overlay");
    await fsp.writeFile(join(home, "script.sh"), script);
    ok(await cloudlet(["overlay", "tiny", "--home", home, "--script", join(home, "script.sh"), "-o", made, "--json", ...args]));
    // Only the overlay is kept: the rest of the home was for making it.
    for (const n of await fsp.readdir(home)) if (n !== "made.overlay") await fsp.rm(join(home, n), { recursive: true, force: true });
  });
  await fsp.copyFile(join(dir, "made.overlay"), out);
}
