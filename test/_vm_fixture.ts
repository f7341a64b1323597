/**
 * What the tests on real VMs share: a fresh home linked to the shared guest
 * cache (so the built-in guest is built once for all of them), the guest's
 * HTTP page polled from the host, the CLI's --json answer, and checks that no
 * QEMU of a home is left.
 */
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import * as http from "node:http";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { CliResult } from "./_cli.ts";
import { runTool } from "./_tools.ts";

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
