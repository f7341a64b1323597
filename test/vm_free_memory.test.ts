// Free guest memory stays out of the overlay (issue 14), on real VMs under TCG
// with the qemu adapter:
// - a base on the built-in guest with the reporting balloon (512 MiB);
// - the same customisation twice, a process that writes 200 MiB and exits,
//   with and without --no-free-memory: with it on, the overlay's memory part
//   is at most 5% of what it is with it off;
// - the overlay made with it on synthesizes into the same VM: the page answers,
//   the ticker goes on, and the kernel logs no complaint;
// - a guest whose driver let go of the balloon gets the named notice;
// - a base without the balloon (as every base made before it) still makes
//   overlays that synthesize, and launches without the device;
// - the same under libvirt (--host virsh): memballoon freePageReporting='on'.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp, readFileSync } from "node:fs";
import { join } from "node:path";
import { core } from "./_core.ts";
import { ImageKind, ChunkClass } from "../ts/overlay/format.ts";
import { inspectMeta, renderReport } from "../ts/inspect/report.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { createBase } from "../ts/jobs/base_create.ts";
import { overlayFromVm } from "../ts/jobs/vm_overlay.ts";
import { synthesizeVm } from "../ts/jobs/vm_synthesis.ts";
import { stopSynthesized } from "../ts/jobs/vm_admin.ts";
import type { VmJobContext } from "../ts/jobs/context.ts";
import { SerialConsole } from "../ts/vm/serial_console.ts";
import { cloudlet } from "./_cli.ts";
import { ensureLibvirtd, freshHome, untilAnswer, WEBAPP } from "./_vm_fixture.ts";

const WEBAPP_SCRIPT = readFileSync(WEBAPP, "utf8");
const MiB = 1 << 20;

const home = await freshHome("freemem");
const said: string[] = [];
const ctx: VmJobContext = { core, home, hostChoice: { host: "qemu" }, say: (l) => said.push(l) };
const running: string[] = [];

/** The lines said since `from`. */
const saidSince = (from: number) => said.slice(from).join("\n");

/** Bytes of memory data the overlay stores (raw and XOR chunks of the memory image). */
function memoryPart(meta: { classCounts: number[][] }): number {
  const row = meta.classCounts[ImageKind.Memory];
  return (row[ChunkClass.Raw] + row[ChunkClass.Xor]) * 4096;
}

const ALLOC_200 = `${WEBAPP_SCRIPT}
# A process that allocates and writes 200 MiB, then exits: its pages are free at the snapshot.
dd if=/dev/urandom of=/dev/null bs=200M count=1 iflag=fullblock 2>&1 | tail -n 1
`;

const forwards = [{ proto: "tcp" as const, hostPort: 0, guestPort: 80 }];
let balloonBase = "";

test("a base on the built-in guest gets the reporting balloon, and its snapshot waits for reporting", async () => {
  const from = said.length;
  const r = await createBase(ctx, { name: "fm-balloon", ready: {}, ramMiB: 512 });
  balloonBase = r.base.name;
  assert.equal(r.base.machine.freePageReporting, true, "the machine config records the balloon");
  assert.ok(r.freeMemory, "the snapshot waited for free page reporting");
  assert.equal(r.freeMemory.driver, "reporting", saidSince(from));
  assert.match(saidSince(from), /free memory: .* MiB discarded while waiting/);
});

let onOverlay = "";
test("with free memory on, the memory part is at most 5% of what it is with --no-free-memory", async () => {
  assert.ok(balloonBase, "needs the base");
  const rows: string[] = [];
  const made: Record<string, { bytes: number; mem: number; snapshotMs: number; free: number | undefined }> = {};
  // Off through the command line (--no-free-memory), on through the library.
  const script = join(home, "alloc.sh");
  await fsp.writeFile(script, ALLOC_200);
  const offOut = join(home, "alloc-off.overlay");
  // Without --json, so that the status lines are printed.
  const cli = await cloudlet(["overlay", balloonBase, "--home", home, "--script", script, "--timeout", "600", "--no-free-memory", "-o", offOut]);
  assert.equal(cli.code, 0, cli.stderr);
  assert.match(cli.stderr, /free memory: not waited for \(--no-free-memory\)/);
  const off = await openOverlay(core, offOut);
  made.off = { bytes: (await fsp.stat(offOut)).size, mem: memoryPart(off.meta), snapshotMs: NaN, free: off.meta.launch.memoryFreeBytes };
  await off.close();
  rows.push(`off  overlay ${(made.off.bytes / MiB).toFixed(1)} MiB, memory part ${(made.off.mem / MiB).toFixed(1)} MiB, free at snapshot ${((made.off.free ?? 0) / MiB).toFixed(0)} MiB`);
  {
    const from = said.length;
    const out = join(home, "alloc-on.overlay");
    const r = await overlayFromVm(ctx, { base: balloonBase, customize: { script: ALLOC_200, timeoutMs: 600_000 }, forwards, out });
    made.on = { bytes: r.bytes, mem: memoryPart(r.meta), snapshotMs: r.snapshotMs, free: r.meta.launch.memoryFreeBytes };
    rows.push(`on   overlay ${(r.bytes / MiB).toFixed(1)} MiB, memory part ${(made.on.mem / MiB).toFixed(1)} MiB, snapshot ${(r.snapshotMs / 1000).toFixed(1)} s, free at snapshot ${((r.meta.launch.memoryFreeBytes ?? 0) / MiB).toFixed(0)} MiB`);
    onOverlay = out;
    assert.equal(r.freeMemory?.driver, "reporting", saidSince(from));
    assert.ok(r.freeMemory!.discardedBytes >= 150 * MiB, `the 200 MiB were reported free: ${saidSince(from)}`);
  }
  console.log(`free memory on/off (200 MiB written and freed, 512 MiB guest):\n${rows.join("\n")}`);
  assert.ok(made.off.mem >= 190 * MiB, `without free memory the 200 MiB travel: ${rows.join("; ")}`);
  assert.ok(made.on.mem <= 0.05 * made.off.mem, `memory part on ${made.on.mem} vs off ${made.off.mem}`);
  assert.ok(made.on.free! > made.off.free! + 150 * MiB, "the meta records the freed memory");
  // The figure reaches inspect.
  const ov = await openOverlay(core, onOverlay);
  try {
    const rep = inspectMeta(ov.meta, onOverlay, made.on.bytes);
    assert.equal(rep.memoryFree?.reportingBalloon, true);
    assert.match(renderReport(rep), /free memory  .* free at the snapshot .* reported by the guest's balloon/);
  } finally {
    await ov.close();
  }
});

test("the overlay made with free memory on synthesizes into the same VM: page, ticker, no kernel complaint", async () => {
  assert.ok(onOverlay, "needs the overlay");
  const r = await synthesizeVm(ctx, { base: balloonBase, overlay: onOverlay, autoPorts: true });
  assert.ok("vmId" in r);
  running.push(r.vmId);
  const port = r.ports[0].hostPort;
  const page = await untilAnswer(`http://127.0.0.1:${port}/`);
  assert.match(page, /Hello from a synthesized cloudlet VM/);
  const c1 = Number(/counter=(\d+)/.exec(await untilAnswer(`http://127.0.0.1:${port}/cgi-bin/status`))?.[1]);
  await new Promise((res) => setTimeout(res, 3000));
  const c2 = Number(/counter=(\d+)/.exec(await untilAnswer(`http://127.0.0.1:${port}/cgi-bin/status`))?.[1]);
  assert.ok(c1 >= 1 && c2 > c1, `the ticker goes on (${c1} then ${c2})`);
  // The kernel's own word, over the serial console: warnings and worse since boot.
  const vmDir = join(r.dir, "vm");
  assert.match(readFileSync(join(vmDir, "qemu.cmdline"), "utf8"), /virtio-balloon-pci,id=balloon0,free-page-reporting=on/, "the launch has the base's balloon");
  const con = new SerialConsole(join(vmDir, "serial.sock"), join(vmDir, "serial.log"));
  const d = await con.run("dmesg -l emerg,alert,crit,err,warn; echo; cat /sys/module/page_reporting/parameters/page_reporting_order", { timeoutMs: 60_000 });
  assert.equal(d.exitCode, 0);
  // Case matters: TCG's boot-time "MP-BIOS bug: 8254 timer ..." is noise, "BUG: Bad page state" is not.
  assert.doesNotMatch(d.output, /BUG[: ]|Oops|[Bb]ad page|corrupt|general protection|Call Trace|WARNING:|segfault|virtio_balloon|page_reporting/, d.output);
  assert.match(d.output.trim(), /(^|\n)3$/, `the guest reports from order 3: ${d.output}`);
  await stopSynthesized(home, r.vmId);
  running.splice(running.indexOf(r.vmId), 1);
});

test("a guest without the reporting driver gets the named notice, not an error", async () => {
  const from = said.length;
  // The driver lets go of the device: the balloon is there, nobody reports to it.
  const script = 'for d in /sys/bus/virtio/drivers/virtio_balloon/virtio*; do echo "${d##*/}" > /sys/bus/virtio/drivers/virtio_balloon/unbind; done\necho unbound\n';
  const r = await overlayFromVm(ctx, { base: balloonBase, customize: { script }, forwards: [], out: join(home, "nodriver.overlay") });
  assert.equal(r.freeMemory?.driver, "absent", saidSince(from));
  assert.match(saidSince(from), /free memory: the guest has no free page reporting driver \(virtio_balloon/);
  assert.ok(r.freeMemory!.waitMs < 5000, "no wait for a driver that is not there");
});

test("a base without the balloon (as made before it) still makes overlays that synthesize, without the device", async () => {
  const from = said.length;
  const cli = await cloudlet(["base", "--home", home, "--name", "fm-old", "--ram", "256", "--no-balloon", "--json"]);
  assert.equal(cli.code, 0, cli.stderr);
  const b = JSON.parse(cli.stdout);
  assert.deepEqual(b.machine, { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 256 }, "the machine config of an old base");
  assert.equal(b.freeMemory, null);
  const out = join(home, "old.overlay");
  const o = await overlayFromVm(ctx, { base: "fm-old", customize: { script: WEBAPP_SCRIPT }, forwards, out });
  assert.match(saidSince(from), /free memory: this machine has no reporting balloon/);
  assert.equal(o.meta.base.machine.freePageReporting, undefined);
  const r = await synthesizeVm(ctx, { base: "fm-old", overlay: out, autoPorts: true });
  assert.ok("vmId" in r);
  running.push(r.vmId);
  assert.match(await untilAnswer(`http://127.0.0.1:${r.ports[0].hostPort}/`), /Hello from a synthesized cloudlet VM/);
  assert.doesNotMatch(readFileSync(join(r.dir, "vm", "qemu.cmdline"), "utf8"), /balloon/, "launched with the old device set");
  await stopSynthesized(home, r.vmId);
  running.splice(running.indexOf(r.vmId), 1);
});

test("virsh: the memballoon reports, the 200 MiB stay out, and the synthesized VM serves its page", async () => {
  await ensureLibvirtd();
  const vctx: VmJobContext = { ...ctx, hostChoice: { host: "virsh", connect: "qemu:///system" } };
  const b = await createBase(vctx, { name: "fm-virsh", ready: {}, ramMiB: 512 });
  assert.equal(b.freeMemory?.driver, "reporting");
  const out = join(home, "virsh-on.overlay");
  const from = said.length;
  const o = await overlayFromVm(vctx, { base: "fm-virsh", customize: { script: ALLOC_200, timeoutMs: 600_000 }, forwards, out });
  assert.equal(o.freeMemory?.driver, "reporting", saidSince(from));
  assert.ok(o.freeMemory!.discardedBytes >= 150 * MiB, saidSince(from));
  console.log(`virsh, free memory on: overlay ${(o.bytes / MiB).toFixed(1)} MiB, memory part ${(memoryPart(o.meta) / MiB).toFixed(1)} MiB, snapshot ${(o.snapshotMs / 1000).toFixed(1)} s`);
  assert.ok(memoryPart(o.meta) <= 10 * MiB, `memory part ${memoryPart(o.meta)}`);
  const r = await synthesizeVm(vctx, { base: "fm-virsh", overlay: out, autoPorts: true });
  assert.ok("vmId" in r);
  running.push(r.vmId);
  assert.match(await untilAnswer(`http://127.0.0.1:${r.ports[0].hostPort}/`), /Hello from a synthesized cloudlet VM/);
  await stopSynthesized(home, r.vmId);
  running.splice(running.indexOf(r.vmId), 1);
});

// Last (Deno has no after()): whatever a failed test left running, and the home.
test("clean up", async () => {
  for (const id of running) await stopSynthesized(home, id).catch(() => {});
  await fsp.rm(home, { recursive: true, force: true });
});
