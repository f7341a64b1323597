// Hostile files (issue 10, items 1-3 and two of item 13's messages): a base
// changed behind a warm cache, a disk size qcow2 cannot hold, --force over
// the inputs, leftovers of killed runs, and the ENOSPC message.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { promises as fsp } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";
import { cloudlet, type CliResult } from "./_cli.ts";
import { runTool } from "./_tools.ts";
import { scratchDir, writeImageSet, type ImageSet } from "./_images.ts";
import { Registry } from "../ts/home/registry.ts";

let dir: string;
let home: string;
let set: ImageSet;
let packed: string;

/** The CLI failed cleanly: exit `code` (1: bad input, 2: bad argument), one line naming `file` and matching `what`, no stack. */
function failedCleanly(r: CliResult, file: string, what: RegExp, code = 1): void {
  assert.equal(r.code, code, `exit code; stdout: ${r.stdout} stderr: ${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `one line, got: ${r.stderr}`);
  assert.match(lines[0], /^cloudlet: /);
  assert.ok(lines[0].includes(file), `names ${file}: ${lines[0]}`);
  assert.match(lines[0], what);
  assert.doesNotMatch(r.stderr, /\bat .*\.ts:\d+/, "no stack trace");
}

const makeOverlay = (s: ImageSet, out: string, extra: string[] = []) =>
  cloudlet(["overlay", "--home", home, "--base-disk", s.baseDisk, "--base-mem", s.baseMem, "--disk", s.disk, "--mem", s.mem, "-o", out, "--segment-size", "64K", ...extra]);
const synth = (s: ImageSet, overlay: string, out: string, extra: string[] = [], h = home) =>
  cloudlet(["synthesis", "--home", h, "--base-disk", s.baseDisk, "--base-mem", s.baseMem, overlay, "-o", out, ...extra]);

async function exists(p: string): Promise<boolean> {
  return fsp.lstat(p).then(() => true, () => false);
}

/** Flips one byte of `file` in place, keeping its inode, size, atime and mtime (what the index cache keys on). */
async function flipKeepingIdentity(file: string, offset: number): Promise<void> {
  const st = await fsp.stat(file);
  const fh = await fsp.open(file, "r+");
  try {
    const b = new Uint8Array(1);
    await fh.read(b, 0, 1, offset);
    b[0] ^= 0x5a;
    await fh.write(b, 0, 1, offset);
  } finally {
    await fh.close();
  }
  // The cache keys on whole milliseconds; a Date could round across one.
  await fsp.utimes(file, st.atime, (Math.floor(st.mtimeMs) + 0.5) / 1000);
  const after = await fsp.stat(file);
  assert.deepEqual([after.ino, after.size, Math.floor(after.mtimeMs)], [st.ino, st.size, Math.floor(st.mtimeMs)], "the file looks unchanged to the cache");
}

/** The first non-zero 4 KiB page at which `a` and `b` are equal (one the overlay does not store). */
async function untouchedPage(a: string, b: string): Promise<number> {
  const [x, y] = [await fsp.readFile(a), await fsp.readFile(b)];
  for (let p = 0; p < x.length / 4096; p++) {
    const pa = x.subarray(p * 4096, (p + 1) * 4096);
    if (pa.some((v) => v !== 0) && pa.equals(y.subarray(p * 4096, (p + 1) * 4096))) return p;
  }
  throw new Error("no untouched page");
}

await (async () => {
  dir = await scratchDir("hostile");
  home = join(dir, "home");
  set = await writeImageSet(join(dir, "a"), 61, 4 << 20, 2 << 20, 20);
  packed = join(dir, "app.overlay");
  const r = await makeOverlay(set, packed);
  assert.equal(r.code, 0, r.stderr);
})();

test("item 1: a base file changed behind a warm index cache is refused by synthesis and inspect --verify", async () => {
  const s = await writeImageSet(join(dir, "damaged"), 62, 4 << 20, 2 << 20, 20);
  const ov = join(dir, "damaged.overlay");
  assert.equal((await makeOverlay(s, ov)).code, 0);
  // Warm the cache with the intact base.
  const first = await synth(s, ov, join(dir, "damaged-ok"), ["--disk-format", "raw"]);
  assert.equal(first.code, 0, first.stderr);
  const page = await untouchedPage(s.baseMem, s.mem);
  await flipKeepingIdentity(s.baseMem, page * 4096 + 17);
  for (const fmt of ["raw", "qcow2"]) {
    const out = join(dir, `damaged-mem-${fmt}`);
    failedCleanly(await synth(s, ov, out, ["--disk-format", fmt]), s.baseMem, new RegExp(`base memory page ${page} \\(byte offset ${page * 4096}\\) differs from the base this overlay was made for`));
    assert.equal(await exists(out), false, "no output");
  }
  // A fresh home agrees (it hashes the base from scratch).
  failedCleanly(await synth(s, ov, join(dir, "damaged-fresh"), [], join(dir, "home-fresh")), ov, /made for base/);
  const verify = await cloudlet(["inspect", "--verify", "--home", home, "--base-disk", s.baseDisk, "--base-mem", s.baseMem, ov]);
  failedCleanly(verify, s.baseDisk, /do not hash to the overlay's base id/);
  assert.ok(verify.stderr.includes(s.baseMem), "names the memory file too");

  // Put the byte back: the same files synthesize again (the check is on the bytes, nothing sticks).
  await flipKeepingIdentity(s.baseMem, page * 4096 + 17);
  assert.equal((await synth(s, ov, join(dir, "damaged-restored"))).code, 0);
  const good = await cloudlet(["inspect", "--verify", "--home", home, "--base-disk", s.baseDisk, "--base-mem", s.baseMem, ov]);
  assert.equal(good.code, 0, good.stderr);
  assert.match(good.stdout, /the base files hash to its base id/);

  // A page the overlay reads (an XOR against the same base page): the rebuilt-chunk check fails first, and the message still names the base file.
  const [bm, cm] = [await fsp.readFile(s.baseMem), await fsp.readFile(s.mem)];
  let xorPage = -1;
  for (let p = 0; p < bm.length / 4096 && xorPage < 0; p++) {
    let diff = 0;
    for (let i = p * 4096; i < (p + 1) * 4096; i++) if (bm[i] !== cm[i]) diff++;
    if (diff > 0 && diff <= 8) xorPage = p;
  }
  assert.ok(xorPage >= 0, "the images have a lightly edited page");
  await flipKeepingIdentity(s.baseMem, xorPage * 4096 + 3);
  failedCleanly(await synth(s, ov, join(dir, "damaged-read")), s.baseMem, new RegExp(`base memory page ${xorPage} .*differs`));
  await flipKeepingIdentity(s.baseMem, xorPage * 4096 + 3);

  // A base disk chunk: the qcow2 output would read it through its backing file.
  const chunk = await untouchedPage(s.baseDisk, s.disk);
  await flipKeepingIdentity(s.baseDisk, chunk * 4096 + 99);
  failedCleanly(await synth(s, ov, join(dir, "damaged-disk")), s.baseDisk, new RegExp(`base disk chunk ${chunk} \\(byte offset ${chunk * 4096}\\) differs`));
  assert.equal(await exists(join(dir, "damaged-disk")), false);
});

test("item 1, VM mode: synthesis on a registered base checks its bytes the same way (--no-run, no VM needed)", async () => {
  const s = await writeImageSet(join(dir, "vmbase"), 65, 4 << 20, 2 << 20, 20);
  const ov = join(dir, "vmbase.overlay");
  const made = await makeOverlay(s, ov, ["--json"]);
  assert.equal(made.code, 0, made.stderr);
  const vmHome = join(dir, "vm-home");
  const baseDir = join(vmHome, "bases", "b");
  await fsp.mkdir(baseDir, { recursive: true });
  await fsp.copyFile(s.baseDisk, join(baseDir, "disk.raw"));
  await fsp.copyFile(s.baseMem, join(baseDir, "memory.raw"));
  const reg = new Registry(vmHome);
  const machine = { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 2 };
  await reg.addBase({ id: JSON.parse(made.stdout).baseId, name: "files", created: new Date().toISOString(), dir: baseDir, diskSize: 4 << 20, memorySize: 2 << 20, machine, vcpus: 1, boot: null, host: "qemu", source: "test" });
  const ok = await cloudlet(["synthesis", "files", ov, "--home", vmHome, "--no-run"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stdout, /^verified/);
  // The base's prepared data is now in its folder; change a page behind it.
  const page = await untouchedPage(join(baseDir, "memory.raw"), s.mem);
  await flipKeepingIdentity(join(baseDir, "memory.raw"), page * 4096 + 5);
  failedCleanly(await cloudlet(["synthesis", "files", ov, "--home", vmHome, "--no-run"]), join(baseDir, "memory.raw"), new RegExp(`base memory page ${page} .*differs from the base this overlay was made for`));
});

test("item 2: a disk whose size is not a multiple of 512 is refused as qcow2, exact as raw", async () => {
  const s = await writeImageSet(join(dir, "odd"), 63, 4 << 20, 2 << 20, 10);
  const custom = await fsp.readFile(s.disk);
  const odd = new Uint8Array(custom.length + 1000);
  odd.set(custom);
  odd.fill(7, custom.length);
  await fsp.writeFile(s.disk, odd);
  const ov = join(dir, "odd.overlay");
  const made = await makeOverlay(s, ov);
  assert.equal(made.code, 0, made.stderr);
  const out = join(dir, "odd-qcow2");
  failedCleanly(await synth(s, ov, out), ov, new RegExp(`the custom disk is ${odd.length} bytes, not a multiple of 512.*--disk-format raw`));
  assert.equal(await exists(out), false, "no short image written");
  const raw = await synth(s, ov, join(dir, "odd-raw"), ["--disk-format", "raw"]);
  assert.equal(raw.code, 0, raw.stderr);
  assert.deepEqual(new Uint8Array(await fsp.readFile(join(dir, "odd-raw", "disk.raw"))), odd, "the raw disk is exact");
});

test("item 3: -o/--force never removes an input (output is, contains or lies inside one; symlinks followed)", async () => {
  const inputs = join(dir, "inputs");
  const s = await writeImageSet(inputs, 64, 4 << 20, 2 << 20, 10);
  const ov = join(inputs, "app.overlay");
  assert.equal((await makeOverlay(s, ov)).code, 0);
  const seedMeta = join(inputs, "seed.overlay-meta");
  assert.equal((await makeOverlay(s, seedMeta)).code, 0);
  await fsp.symlink(inputs, join(dir, "inputs-link"));
  const before = (await fsp.readdir(inputs)).sort();
  const cases: Array<[string, string]> = [
    [inputs, ov],
    [dir, ov],
    [join(dir, "inputs-link"), ov],
    [join(dir, "inputs-link"), seedMeta],
    [s.baseMem, ov],
    [join(s.baseMem, "sub"), ov],
  ];
  for (const [out, overlay] of cases) {
    failedCleanly(await synth(s, overlay, out, ["--force"]), out, /the output directory (is|contains|lies inside) the input .*choose another -o/, 2);
    assert.deepEqual((await fsp.readdir(inputs)).sort(), before, `-o ${out}: every input is still there`);
  }
  // The home holds the index cache (and in VM mode the registry).
  failedCleanly(await synth(s, ov, dir, ["--force"], join(inputs, "home")), dir, /contains the input/, 2);
  // A sibling folder is fine, and --force replaces it.
  assert.equal((await synth(s, ov, join(inputs, "out"), ["--force"])).code, 0);
  assert.equal((await synth(s, ov, join(inputs, "out"), ["--force"])).code, 0);
  // The overlay command: an output that would replace an input image.
  const memCopy = join(inputs, "mem.overlay");
  await fsp.copyFile(s.mem, memCopy);
  const r = await cloudlet(["overlay", "--home", home, "--base-disk", s.baseDisk, "--base-mem", s.baseMem, "--disk", s.disk, "--mem", memCopy, "-o", memCopy]);
  failedCleanly(r, memCopy, /would replace the input/, 2);
  assert.deepEqual(new Uint8Array(await fsp.readFile(memCopy)), new Uint8Array(await fsp.readFile(s.mem)));
  const seg = join(inputs, "seed2-1.xz");
  await fsp.copyFile(s.mem, seg);
  failedCleanly(await cloudlet(["overlay", "--home", home, "--base-disk", s.baseDisk, "--base-mem", s.baseMem, "--disk", s.disk, "--mem", seg, "-o", join(inputs, "seed2.overlay-meta")]), join(inputs, "seed2.overlay-meta"), /would replace the input/, 2);
  assert.equal(await exists(seg), true);
});

test("item 13: the hidden part folders of dead runs are removed at the next run into the same folder", async () => {
  const host = hostname().replace(/[^A-Za-z0-9.]/g, "_");
  const child = spawn("true");
  const gone = child.pid!;
  await new Promise((r) => child.on("exit", r)); // a process that has exited
  const parts = join(dir, "parts");
  await fsp.mkdir(parts);
  const dead = [`.out.part-${host}@${gone}-AbC123`, `.out.part-${host}@${gone}-xyZ789.old`];
  const kept = [`.out.part-${host}@${process.pid}-AbC123`, `.out.part-otherhost@${gone}-AbC123`, `.other.part-${host}@${gone}-AbC123`];
  for (const n of [...dead, ...kept]) {
    await fsp.mkdir(join(parts, n));
    await fsp.writeFile(join(parts, n, "memory.raw"), new Uint8Array(4096));
  }
  const r = await synth(set, packed, join(parts, "out"));
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual((await fsp.readdir(parts)).sort(), [...kept, "out"].sort(), "only the dead runs' folders went");
});

test("item 13: a full disk names the output, not a temporary part file", async (t) => {
  const mnt = join(dir, "tiny");
  await fsp.mkdir(mnt);
  try {
    await runTool("mount", ["-t", "tmpfs", "-o", "size=1M", "tmpfs", mnt]);
  } catch (e) {
    t.skip(`cannot mount a tmpfs here (${(e as Error).message}); needs root`);
    return;
  }
  try {
    const out = join(mnt, "out");
    const r = await synth(set, packed, out, ["--disk-format", "raw"]);
    failedCleanly(r, out, /disk is full/);
    assert.doesNotMatch(r.stderr, /\.part-/, "no temporary name");
    assert.match(r.stderr, new RegExp(`${out}(/(disk|memory)\\.raw)?: `));
    assert.deepEqual(await fsp.readdir(mnt), [], "nothing left");
  } finally {
    await runTool("umount", [mnt]);
  }
});
