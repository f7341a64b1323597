// The built-in tiny guest: building it from Debian packages (cached under .build/test-home/guest),
// an interrupted build, and the serial console protocol on a real QEMU guest under TCG.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import { PassThrough } from "node:stream";
import { buildGuestImage, loadGuestImage, type GuestBuildProgress, type GuestImage } from "../ts/vm/guest_image.ts";
import { QemuHost } from "../ts/vm/qemu_host.ts";
import { createQcow2Layer } from "../ts/vm/qcow2_layer.ts";
import type { VmSpec } from "../ts/vm/vm_host.ts";
import { CloudletError } from "../ts/errors.ts";

const TEST_HOME = process.env.CLOUDLET_TEST_HOME ?? fileURLToPath(new URL("../.build/test-home", import.meta.url));
const GUEST_CACHE = join(TEST_HOME, "guest");

let guest: GuestImage;

test("builds the tiny guest from Debian packages, reports progress, and reuses the cache", async (t) => {
  const phases = new Set<string>();
  const t0 = performance.now();
  guest = await buildGuestImage({ cacheDir: GUEST_CACHE, onProgress: (p) => phases.add(p.phase) });
  t.diagnostic(`build (cold or warm cache): ${Math.round(performance.now() - t0)} ms, phases ${[...phases].join(",")}`);
  for (const f of [guest.kernel, guest.initrd, guest.rootfs]) assert.ok((await fsp.stat(f)).size > 0, f);
  assert.equal(guest.readyMarker, "CLOUDLET-READY");
  assert.match(guest.append, /init=\/sbin\/cloudlet-init/);
  // The kernel is the uncompressed ELF (PVH entry), not the bzImage.
  const head = new Uint8Array(4);
  const fh = await fsp.open(guest.kernel, "r");
  await fh.read(head, 0, 4, 0);
  await fh.close();
  assert.deepEqual([...head], [0x7f, 0x45, 0x4c, 0x46]);

  const t1 = performance.now();
  const again = await buildGuestImage({ cacheDir: GUEST_CACHE });
  const warm = performance.now() - t1;
  t.diagnostic(`second build: ${Math.round(warm)} ms`);
  assert.deepEqual(again, guest);
  assert.ok(warm < 5000, `cached build took ${warm} ms`);
  assert.deepEqual(await loadGuestImage(GUEST_CACHE), guest);
});

test("an interrupted guest build leaves nothing that looks complete", async () => {
  const cache = join(TEST_HOME, `guest-abort-${randomBytes(3).toString("hex")}`);
  // Seed the download so that the abort lands in dpkg -x, a real long-running step.
  await fsp.mkdir(join(cache, "debs"), { recursive: true });
  for (const deb of await fsp.readdir(join(GUEST_CACHE, "debs"))) await fsp.link(join(GUEST_CACHE, "debs", deb), join(cache, "debs", deb));
  const ac = new AbortController();
  const seen: GuestBuildProgress[] = [];
  try {
    await assert.rejects(
      buildGuestImage({
        cacheDir: cache,
        signal: ac.signal,
        onProgress: (p) => {
          seen.push(p);
          if (p.phase === "kernel-extract") ac.abort();
        },
      }),
      (e: unknown) => e instanceof CloudletError && e.code === "CANCELLED",
    );
    assert.ok(seen.some((p) => p.phase === "kernel-extract"));
    assert.equal(await loadGuestImage(cache), null);
    const left = await fsp.readdir(cache);
    assert.deepEqual(left.sort(), ["debs"], `left behind: ${left.join(", ")}`);
  } finally {
    await fsp.rm(cache, { recursive: true, force: true });
  }
});

test("a damaged cache is not taken for a complete guest", async () => {
  const dir = join(TEST_HOME, `guest-damaged-${randomBytes(3).toString("hex")}`);
  try {
    await fsp.mkdir(join(dir, "image"), { recursive: true });
    await fsp.copyFile(join(GUEST_CACHE, "image", "guest.json"), join(dir, "image", "guest.json"));
    await fsp.copyFile(guest.initrd, join(dir, "image", "initramfs.gz"));
    assert.equal(await loadGuestImage(dir), null);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("the serial console runs scripts in the guest: output, exit codes, long and awkward scripts, background servers", async (t) => {
  const runDir = join(TEST_HOME, "runs", `console-${randomBytes(3).toString("hex")}`);
  await fsp.mkdir(runDir, { recursive: true });
  await createQcow2Layer(guest.rootfs, join(runDir, "disk.qcow2"));
  const spec: VmSpec = {
    name: "console",
    runDir,
    boot: { kernel: guest.kernel, initrd: guest.initrd, append: guest.append },
    disk: { path: join(runDir, "disk.qcow2"), format: "qcow2" },
    memory: { path: join(runDir, "mem.raw"), sizeMiB: 256 },
    machine: { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 256 },
    vcpus: 1,
    portForwards: [],
  };
  const vm = await new QemuHost().start(spec);
  try {
    const t0 = performance.now();
    const line = await vm.waitReady(guest.readyMarker, 120_000);
    t.diagnostic(`boot-to-ready ${Math.round(performance.now() - t0)} ms: ${line}`);
    assert.match(line, /^CLOUDLET-READY boot_id=[0-9a-f-]{36} uptime=[\d.]+ net=10\.0\.2\.15\/24$/);

    const t1 = performance.now();
    assert.deepEqual(await vm.console.run("echo hello; id -u"), { output: "hello\n0\n", exitCode: 0 });
    t.diagnostic(`first script round trip ${Math.round(performance.now() - t1)} ms`);
    assert.equal((await vm.console.run("echo to-stderr >&2; exit 7")).exitCode, 7);
    assert.deepEqual(await vm.console.run("echo to-stderr >&2; exit 7"), { output: "to-stderr\n", exitCode: 7 });

    // Quotes, backslashes, $, a marker look-alike and non-ASCII survive the trip, over many base64 lines.
    const awkward = `it's "quoted" \\ $HOME \`x\` CLEND rc=0 ünïcode €`;
    const big = "x".repeat(20_000);
    const r = await vm.console.run(`cat <<'EOF'\n${awkward}\nEOF\nprintf %s '${big}' | wc -c\n`);
    assert.deepEqual(r, { output: `${awkward}\n20000\n`, exitCode: 0 });

    // A server started in the background outlives the script and the console shell.
    // The counter file is replaced by rename, never truncated, so a reader never sees it empty.
    const pid = await vm.console.startBackground("i=0; while :; do i=$((i+1)); echo $i > /tmp/alive.new; mv /tmp/alive.new /tmp/alive; sleep 0.2; done");
    assert.ok(pid > 1);
    const check = await vm.console.run(`sleep 1; kill -0 ${pid} && echo running; a=$(cat /tmp/alive); sleep 1; b=$(cat /tmp/alive); test "$b" -gt "$a" && echo ticking`);
    assert.deepEqual(check, { output: "running\nticking\n", exitCode: 0 });

    // A script that runs too long is interrupted, and the console stays usable.
    await assert.rejects(vm.console.run("sleep 30", { timeoutMs: 1500 }), (e: unknown) => e instanceof CloudletError && e.code === "GUEST" && /did not finish within 1.5 s/.test(e.message));
    assert.deepEqual(await vm.console.run("echo still-here"), { output: "still-here\n", exitCode: 0 });

    // An interactive session (cloudlet --console): typed lines reach the shell until Ctrl-] ends it.
    const input = new PassThrough();
    const output = new PassThrough();
    let seen = "";
    output.on("data", (d) => (seen += d));
    const session = vm.console.attach(input, output);
    await sleep(300);
    input.write("echo attach-$((6*7))\n");
    for (let i = 0; i < 100 && !seen.includes("attach-42"); i++) await sleep(50);
    assert.match(seen, /attach-42/);
    input.write(Buffer.from([0x1d]));
    await session;

    // Concurrent callers take turns on the one console connection.
    const both = await Promise.all([vm.console.run("echo a"), vm.console.run("echo b")]);
    assert.deepEqual(both.map((x) => x.output), ["a\n", "b\n"]);
  } finally {
    await vm.stop();
    await fsp.rm(runDir, { recursive: true, force: true });
  }
});

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
