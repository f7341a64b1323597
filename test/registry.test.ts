// The sql.js registry: concurrent writers from separate processes, stale locks, lookups.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Registry } from "../ts/home/registry.ts";
import { scratchDir } from "./_images.ts";

const writer = fileURLToPath(new URL("./_registry_writer.ts", import.meta.url));
const tsx = fileURLToPath(new URL("../node_modules/tsx/dist/loader.mjs", import.meta.url));

function run(home: string, prefix: string, n: number): Promise<number | null> {
  return new Promise((resolve) => spawn("node", ["--import", `file://${tsx}`, writer, home, prefix, String(n)], { stdio: "inherit" }).on("close", resolve));
}

test("six processes writing at once lose no rows", async () => {
  const home = await scratchDir("registry");
  const codes = await Promise.all(["a1", "b2", "c3", "d4", "e5", "f6"].map((p) => run(home, p, 5)));
  assert.deepEqual(codes, [0, 0, 0, 0, 0, 0]);
  const reg = new Registry(home);
  const bases = await reg.listBases();
  assert.equal(bases.length, 30);
  assert.equal((await reg.getBase("c3-2")).id.slice(0, 6), "c30002");
  await assert.rejects(reg.getBase("zzz"), /no base "zzz"/);
  const twin = { ...bases[0], name: "twin", id: "abcdef12" + "0".repeat(56) };
  await reg.addBase(twin);
  await reg.addBase({ ...twin, name: "twin2", id: "abcdef12" + "1".repeat(56) });
  await assert.rejects(reg.getBase("abcdef12"), /"abcdef12" is the start of 2 base ids; give at least 9 characters/);
  assert.equal((await reg.getBase("abcdef121")).name, "twin2");
  await reg.removeBase(twin.id);
  await reg.removeBase("abcdef12" + "1".repeat(56));
  assert.equal(await reg.removeBase(bases[0].id), true);
  assert.equal((await reg.listBases()).length, 29);
  await assert.rejects(fsp.access(join(home, "registry.lock")), "lock released");
});

test("a lock left by a dead process is taken over; a damaged database is a clear error", async () => {
  const home = await scratchDir("registry-stale");
  await fsp.writeFile(join(home, "registry.lock"), "999999999");
  const reg = new Registry(home);
  await reg.addBase({ id: "f".repeat(64), name: "after-stale-lock", created: "t", dir: "/d", diskSize: 1, memorySize: 1, machine: { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 1 }, vcpus: 1, boot: null, host: "qemu", source: "test" });
  assert.equal((await reg.getBase("after-stale-lock")).id, "f".repeat(64));
  await fsp.writeFile(join(home, "registry.sqlite"), "this is not sqlite at all, not even close........................................................................");
  await assert.rejects(reg.listBases(), /registry database is damaged/);
});

test("base names are checked and unique: a chosen name that is taken is refused, a default one gets a suffix", async () => {
  const home = await scratchDir("registry-names");
  try {
    const reg = new Registry(home);
    const row = { id: "1".repeat(64), name: "web", created: "t", dir: "/d", diskSize: 1, memorySize: 1, machine: { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 1 }, vcpus: 1, boot: null, host: "qemu" as const, source: "test" };
    assert.equal(await reg.addBase(row), "web");
    // The same base again keeps its name.
    assert.equal(await reg.addBase(row), "web");
    await assert.rejects(reg.addBase({ ...row, id: "2".repeat(64) }), /a base named "web" already exists/);
    assert.equal(await reg.addBase({ ...row, id: "2".repeat(64) }, "suffix"), "web-2");
    assert.equal(await reg.addBase({ ...row, id: "3".repeat(64) }, "suffix"), "web-3");
    await assert.rejects(reg.addBase({ ...row, id: "4".repeat(64), name: "a b" }), /base name "a b" is not allowed/);
    assert.deepEqual((await reg.listBases()).map((b) => b.name).sort(), ["web", "web-2", "web-3"]);
  } finally {
    await fsp.rm(home, { recursive: true, force: true });
  }
});
