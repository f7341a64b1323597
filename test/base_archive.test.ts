// import-base on hostile archives: every field of the manifest is checked
// before anything is used, members must be regular files with fixed names,
// and a refused import registers nothing and leaves nothing behind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { core } from "./_core.ts";
import { cloudlet } from "./_cli.ts";
import { runTool } from "./_tools.ts";
import { scratchDir } from "./_images.ts";
import { toHex } from "../ts/core/vectors.ts";

const FILES: Record<string, Uint8Array> = {
  "disk.raw": new Uint8Array(64 << 10).fill(7),
  "memory.raw": new Uint8Array(64 << 10).fill(9),
  "state.bin": new Uint8Array(512).fill(1),
  vmlinux: new Uint8Array(100).fill(2),
  "initramfs.gz": new Uint8Array(100).fill(3),
};

function goodBase(): Record<string, unknown> {
  return {
    id: "ab".repeat(32),
    name: "tiny",
    created: "2026-12-01T00:00:00.000Z",
    diskSize: FILES["disk.raw"].length,
    memorySize: FILES["memory.raw"].length,
    machine: { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 256 },
    vcpus: 1,
    boot: { kernel: "vmlinux", initrd: "initramfs.gz", append: "console=ttyS0" },
    host: "qemu",
    source: "test",
  };
}

/** Writes an export archive whose manifest carries `base`; `make` may alter the staged members and returns their names. */
async function archive(dir: string, tag: string, base: Record<string, unknown>, make?: (stage: string) => Promise<string[]>): Promise<string> {
  const stage = join(dir, `stage-${tag}`);
  await fsp.mkdir(stage);
  const files: Record<string, { size: number; blake3: string }> = {};
  for (const [n, b] of Object.entries(FILES)) {
    await fsp.writeFile(join(stage, n), b);
    files[n] = { size: b.length, blake3: toHex(core.hash("blake3", b)) };
  }
  await fsp.writeFile(join(stage, "manifest.json"), JSON.stringify({ format: "cloudlet-base-export", version: 1, base, files }));
  const names = make ? await make(stage) : ["manifest.json", ...Object.keys(FILES)];
  const out = join(dir, `${tag}.base`);
  await runTool("tar", ["-cf", out, "-C", stage, ...names]);
  return out;
}

test("import-base refuses hostile manifests and members, and leaves the home empty", async () => {
  const dir = await scratchDir("base-archive");
  const home = join(dir, "home");
  await fsp.mkdir(home);
  try {
    const cases: Array<[string, Record<string, unknown>, RegExp]> = [
      ["traversal", { ...goodBase(), boot: { kernel: "../../../etc/passwd", initrd: "initramfs.gz", append: "" } }, /manifest has a bad boot files/],
      ["qemu-option", { ...goodBase(), machine: { machine: "pc,accel=kvm", cpu: "qemu64", ramMiB: 256 } }, /manifest has a bad machine config/],
      ["cpu-space", { ...goodBase(), machine: { machine: "pc", cpu: "qemu64 -append x", ramMiB: 256 } }, /manifest has a bad machine config/],
      ["name", { ...goodBase(), name: "../evil" }, /manifest has a bad base name/],
      ["id", { ...goodBase(), id: "../../x" }, /manifest has a bad base id/],
      ["size", { ...goodBase(), diskSize: -1 }, /manifest has a bad disk size/],
      ["newline", { ...goodBase(), boot: { kernel: "vmlinux", initrd: "initramfs.gz", append: "a\nb" } }, /manifest has a bad kernel command line/],
      ["host", { ...goodBase(), host: "docker" }, /manifest has a bad host adapter/],
    ];
    for (const [tag, base, what] of cases) {
      const file = await archive(dir, tag, base);
      const r = await cloudlet(["import-base", file, "--home", home]);
      assert.equal(r.code, 1, `${tag}: ${r.stderr}`);
      assert.match(r.stderr, what, tag);
      assert.ok(r.stderr.includes(file), `${tag}: names the archive: ${r.stderr}`);
      assert.doesNotMatch(r.stderr, /\bat .*\.ts:\d+/, "no stack trace");
    }

    // A member that is a symbolic link, under an allowed name, is refused before extraction.
    const link = await archive(dir, "symlink", goodBase(), async (stage) => {
      await fsp.rm(join(stage, "state.bin"));
      await fsp.symlink("/etc/hostname", join(stage, "state.bin"));
      return ["manifest.json", ...Object.keys(FILES)];
    });
    const l = await cloudlet(["import-base", link, "--home", home]);
    assert.equal(l.code, 1, l.stderr);
    assert.match(l.stderr, /a member is not a regular file/);

    // Control: a well-formed manifest passes every field check and reaches the image check,
    // which recomputes the id from the images and refuses the claimed one.
    const good = await archive(dir, "good", goodBase());
    const g = await cloudlet(["import-base", good, "--home", home]);
    assert.equal(g.code, 1, g.stderr);
    assert.match(g.stderr, /the images hash to base [0-9a-f]{64}, not the abab/);

    assert.deepEqual(JSON.parse((await cloudlet(["list-base", "--home", home, "--json"])).stdout), []);
    assert.deepEqual(await fsp.readdir(join(home, "bases")).catch(() => []), [], "no staging directory left");
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
