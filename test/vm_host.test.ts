// QemuHost and VirshHost on real QEMU guests under TCG (no mocks): boot, a workload started over the
// serial console, snapshot, restore from a COPY of the memory file on another host port, and proof that
// the guest resumed rather than rebooted. Then the error paths, each leaving no process or file behind.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import { spawn } from "node:child_process";
import { connect, createServer, type Server } from "node:net";
import { get } from "node:http";
import { buildGuestImage, type GuestImage } from "../ts/vm/guest_image.ts";
import { QemuHost } from "../ts/vm/qemu_host.ts";
import { VirshHost } from "../ts/vm/virsh_host.ts";
import { createQcow2Layer } from "../ts/vm/qcow2_layer.ts";
import { pickFreePorts } from "../ts/vm/host_ports.ts";
import { cleanupOrphanVms, listVms, readVmRecord, stopVm } from "../ts/vm/vm_records.ts";
import { processAlive } from "../ts/node/process.ts";
import type { RunningVm, VmHost, VmSpec } from "../ts/vm/vm_host.ts";
import { CloudletError } from "../ts/errors.ts";

const TEST_HOME = process.env.CLOUDLET_TEST_HOME ?? fileURLToPath(new URL("../.build/test-home", import.meta.url));
const RUNS = join(TEST_HOME, "runs", `host-${process.pid}-${randomBytes(3).toString("hex")}`);
const SYSTEM = "qemu:///system";

let guest: GuestImage;
const report: string[] = [];

let ready: Promise<void> | null = null;
/** Builds (or finds) the guest and starts libvirtd; every test awaits it (no hooks: Deno's node:test lacks them). */
function setup(): Promise<void> {
  ready ??= (async () => {
    guest = await buildGuestImage({ cacheDir: join(TEST_HOME, "guest") });
    await fsp.mkdir(RUNS, { recursive: true });
    await ensureLibvirtd();
  })();
  return ready;
}

/** The workload: a counter in a shell's memory, busybox httpd with CGIs, a file written before the snapshot. */
function workload(nonce: string): string {
  return `
mkdir -p /run/cl /www/cgi-bin
echo "written-before-snapshot nonce=${nonce}" > /root/prefile.txt
sync
cat > /www/cgi-bin/state <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo "counter=$(cat /run/cl/counter) boot_id=$(cat /proc/sys/kernel/random/boot_id) uptime=$(cut -d' ' -f1 /proc/uptime)"
CGI
cat > /www/cgi-bin/prefile <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'; cat /root/prefile.txt
CGI
chmod 755 /www/cgi-bin/*
setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/cl/counter.tmp; mv /run/cl/counter.tmp /run/cl/counter; sleep 1; done' </dev/null >/dev/null 2>&1 &
setsid busybox httpd -f -p 80 -h /www </dev/null >/dev/null 2>&1 &
sleep 0.3
echo started
`;
}

async function newRunDir(tag: string): Promise<string> {
  const d = join(RUNS, `${tag}-${randomBytes(3).toString("hex")}`);
  await fsp.mkdir(d, { recursive: true });
  return d;
}

async function bootSpec(tag: string, hostPort: number): Promise<VmSpec> {
  await setup();
  const runDir = await newRunDir(tag);
  await createQcow2Layer(guest.rootfs, join(runDir, "disk.qcow2"));
  return {
    name: tag,
    runDir,
    boot: { kernel: guest.kernel, initrd: guest.initrd, append: guest.append },
    disk: { path: join(runDir, "disk.qcow2"), format: "qcow2" },
    memory: { path: join(runDir, "mem.raw"), sizeMiB: 256 },
    machine: { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 256 },
    vcpus: 1,
    portForwards: [{ proto: "tcp", hostPort, guestPort: 80 }],
  };
}

function httpGet(port: number, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = get({ host: "127.0.0.1", port, path, agent: false, timeout: 3000 }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`HTTP ${res.statusCode}`))));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", reject);
  });
}

/** Polls until the URL answers 200; returns the body and how long it took. */
async function firstAnswer(port: number, path: string, timeoutMs = 30_000): Promise<{ body: string; ms: number }> {
  const t0 = performance.now();
  let last: unknown;
  while (performance.now() - t0 < timeoutMs) {
    try {
      return { body: await httpGet(port, path), ms: performance.now() - t0 };
    } catch (e) {
      last = e;
      await sleep(20);
    }
  }
  throw new Error(`no HTTP answer on ${port}${path} within ${timeoutMs} ms: ${last}`);
}

/** The first line a VNC server sends. */
function rfbBanner(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = connect(port, "127.0.0.1");
    c.setTimeout(5000, () => c.destroy(new Error("no VNC banner")));
    c.once("data", (d) => {
      resolve(String(d).trim());
      c.destroy();
    });
    c.once("error", reject);
  });
}

function field(body: string, name: string): string {
  const m = new RegExp(`\\b${name}=(\\S+)`).exec(body);
  assert.ok(m, `${name}= missing in ${JSON.stringify(body)}`);
  return m[1];
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function isCode(code: string, rx?: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof CloudletError, `expected a CloudletError, got ${e}`);
    assert.equal(e.code, code, e.message);
    if (rx) assert.match(e.userMessage, rx);
    return true;
  };
}

/** Asserts that nothing cloudlet creates at run time is left in `runDir`, and returns what is there. */
async function assertNoRuntimeFiles(runDir: string): Promise<string[]> {
  const left = await fsp.readdir(runDir).catch(() => [] as string[]);
  for (const f of ["qmp.sock", "serial.sock", "migrate.sock", "qemu.pid", "domain.xml", "vm.json"]) assert.ok(!left.includes(f), `${f} left in ${runDir}: ${left.join(", ")}`);
  assert.ok(!left.some((f) => f.includes(".part-")), `temporary file left: ${left.join(", ")}`);
  return left;
}

async function ensureLibvirtd(): Promise<void> {
  const ok = () => run("virsh", ["--connect", SYSTEM, "uri"]).then((r) => r.code === 0);
  if (await ok()) return;
  // No systemd here: start the daemons the way docs/vm-hosts.md says (a second virtlogd just refuses).
  await run("virtlogd", ["-d"]);
  await run("libvirtd", ["-d"]);
  for (let i = 0; i < 100; i++) {
    if (await ok()) return;
    await sleep(100);
  }
  throw new Error("libvirtd did not come up");
}

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const c = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    c.stdout.on("data", (d) => (out += d));
    c.stderr.on("data", (d) => (out += d));
    c.on("error", () => resolve({ code: -1, out }));
    c.on("close", (code) => resolve({ code, out }));
  });
}

/** Boots, runs the workload, snapshots, restores a copy on another port, and checks the guest resumed. */
async function snapshotRestoreFlow(host: VmHost, t: { diagnostic: (s: string) => void }) {
  const [port1, port2] = await pickFreePorts(2);
  const spec = await bootSpec(`flow-${host.kind}`, port1);
  const t0 = performance.now();
  const vm = await host.start(spec);
  let vm2: RunningVm | null = null;
  try {
    const ready = await vm.waitReady(guest.readyMarker, 120_000);
    const bootMs = performance.now() - t0;
    const bootId = field(ready, "boot_id");
    const nonce = randomBytes(6).toString("hex");
    const w = await vm.console.run(workload(nonce));
    assert.deepEqual(w, { output: "started\n", exitCode: 0 });
    let before = (await firstAnswer(port1, "/cgi-bin/state")).body;
    while (Number(field(before, "counter")) < 3) {
      await sleep(300);
      before = await httpGet(port1, "/cgi-bin/state");
    }
    assert.equal(field(before, "boot_id"), bootId);

    const snap = await vm.snapshot(join(spec.runDir, "state.bin"));
    const exit = await vm.exited;
    assert.equal(exit.expected, true);
    assert.ok(snap.stateBytes > 100_000 && snap.stateBytes < 2_000_000, `state is ${snap.stateBytes} bytes`);
    assert.equal((await fsp.stat(snap.memoryPath)).size, 256 * 1024 * 1024);
    const left = await assertNoRuntimeFiles(spec.runDir);
    assert.deepEqual(left.filter((f) => ["disk.qcow2", "mem.raw", "state.bin"].includes(f)).sort(), ["disk.qcow2", "mem.raw", "state.bin"]);
    const memOwner = await fsp.stat(snap.memoryPath);
    assert.equal(memOwner.uid, process.getuid?.(), "the memory file belongs to us again");

    // Restore from COPIES (the snapshot stays reusable) on another host port, after the source is gone.
    const runDir2 = await newRunDir(`restore-${host.kind}`);
    const cp = await run("cp", ["--sparse=always", snap.memoryPath, join(spec.runDir, "disk.qcow2"), runDir2]);
    assert.equal(cp.code, 0, cp.out);
    const tr = performance.now();
    vm2 = await host.start({
      ...spec,
      name: `restore-${host.kind}`,
      runDir: runDir2,
      disk: { path: join(runDir2, "disk.qcow2"), format: "qcow2" },
      memory: { path: join(runDir2, "mem.raw"), sizeMiB: 256 },
      portForwards: [{ proto: "tcp", hostPort: port2, guestPort: 80 }],
      incoming: { statePath: snap.statePath },
    });
    await vm2.resume();
    const runningMs = performance.now() - tr;
    const first = await firstAnswer(port2, "/cgi-bin/state");
    const firstHttpMs = performance.now() - tr;
    const c0 = Number(field(before, "counter"));
    const c1 = Number(field(first.body, "counter"));
    assert.equal(field(first.body, "boot_id"), bootId, "same boot: resumed, not rebooted");
    assert.ok(c1 >= c0 && c1 <= c0 + 5, `counter continued from ${c0}, got ${c1}`);
    assert.equal((await httpGet(port2, "/cgi-bin/prefile")).trim(), `written-before-snapshot nonce=${nonce}`);
    await sleep(2500);
    const later = await httpGet(port2, "/cgi-bin/state");
    assert.ok(Number(field(later, "counter")) >= c1 + 1, `counter keeps counting: ${c1} -> ${field(later, "counter")}`);
    assert.ok(Number(field(later, "uptime")) > Number(field(before, "uptime")));
    // The serial console works after the restore too.
    const r = await vm2.console.run("cat /proc/sys/kernel/random/boot_id");
    assert.equal(r.output.trim(), bootId);

    const line = `${host.kind}: boot-to-ready ${Math.round(bootMs)} ms; snapshot stop ${snap.ms.stop} + migrate ${snap.ms.migrate} ms, ` +
      `total with VM exit ${snap.ms.total} ms, state ${snap.stateBytes} B; restore to running ${Math.round(runningMs)} ms, ` +
      `to first HTTP ${Math.round(firstHttpMs)} ms (counter ${c0} -> ${c1} -> ${field(later, "counter")})`;
    report.push(line);
    t.diagnostic(line);

    await vm2.stop();
    assert.equal((await vm2.exited).expected, true);
    await assertNoRuntimeFiles(runDir2);
    assert.ok((await fsp.readdir(runDir2)).includes("mem.raw"), "a memory file the caller supplied is left alone");

    // A restore on a different machine type is refused by QEMU; the error carries its words, nothing stays.
    const runDir3 = await newRunDir(`wrongmachine-${host.kind}`);
    assert.equal((await run("cp", ["--sparse=always", snap.memoryPath, join(spec.runDir, "disk.qcow2"), runDir3])).code, 0);
    const vm3 = await host.start({
      ...spec,
      name: `wrongmachine-${host.kind}`,
      runDir: runDir3,
      disk: { path: join(runDir3, "disk.qcow2"), format: "qcow2" },
      memory: { path: join(runDir3, "mem.raw"), sizeMiB: 256 },
      machine: { ...spec.machine, machine: "pc-i440fx-7.1" },
      portForwards: [],
      incoming: { statePath: snap.statePath },
    });
    await assert.rejects(vm3.resume(), (e: unknown) => {
      assert.ok(e instanceof CloudletError && (e.code === "GUEST" || e.code === "HOST_TOOL"), String(e));
      assert.match(e.message, /Machine type received is 'pc-i440fx-7.2' and local is 'pc-i440fx-7.1'/);
      return true;
    });
    await vm3.stop();
    await assertNoRuntimeFiles(runDir3);
  } finally {
    await vm.stop();
    await vm2?.stop();
  }
}

test("QemuHost: boot, workload, snapshot, restore a copy on another port, and the guest resumed", async (t) => {
  await setup();
  await snapshotRestoreFlow(new QemuHost(), t);
});

test("VirshHost: the same flow through libvirt (qemu:commandline, fd passing), and files go back to their owners", async (t) => {
  await setup();
  const before = await fsp.stat(guest.rootfs);
  await snapshotRestoreFlow(new VirshHost({ connect: SYSTEM }), t);
  const after = await fsp.stat(guest.rootfs);
  assert.deepEqual([after.uid, after.gid], [before.uid, before.gid], "libvirt's relabeling of the backing file is undone");
});

test("a host port already in use is refused before anything starts, naming the port", async () => {
  const server: Server = createServer();
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  const port = (server.address() as { port: number }).port;
  try {
    for (const host of [new QemuHost(), new VirshHost({ connect: SYSTEM })]) {
      const spec = await bootSpec(`port-${host.kind}`, port);
      await assert.rejects(host.start(spec), isCode("CONFLICT", new RegExp(`127\\.0\\.0\\.1:${port}/tcp .*already in use`)));
      assert.deepEqual(await fsp.readdir(spec.runDir), ["disk.qcow2"]);
    }
  } finally {
    server.close();
  }
});

test("qemu-system-x86_64 missing: TOOL_MISSING naming the package, nothing created", async () => {
  const spec = await bootSpec("noqemu", 0);
  await assert.rejects(new QemuHost({ binary: "/nonexistent/qemu-system-x86_64" }).start(spec), isCode("TOOL_MISSING", /\/nonexistent\/qemu-system-x86_64 not found: apt-get install qemu-system-x86 /));
  const path = process.env.PATH;
  process.env.PATH = "/nonexistent";
  try {
    await assert.rejects(new QemuHost().start(spec), isCode("TOOL_MISSING", /^qemu-system-x86_64 not found: apt-get install qemu-system-x86 \(scripts\/setup.sh installs every tool cloudlet runs\)$/));
  } finally {
    process.env.PATH = path;
  }
  assert.deepEqual(await fsp.readdir(spec.runDir), ["disk.qcow2"]);
});

test("QEMU refusing the configuration: its own message, and nothing left behind", async () => {
  for (const host of [new QemuHost(), new VirshHost({ connect: SYSTEM })]) {
    const spec = await bootSpec(`badmachine-${host.kind}`, 0);
    const bad: VmSpec = { ...spec, machine: { ...spec.machine, machine: "pc-i440fx-99.9" } };
    await assert.rejects(host.start(bad), isCode("HOST_TOOL", /unsupported machine type|pc-i440fx-99\.9/));
    assert.deepEqual(await fsp.readdir(spec.runDir), ["disk.qcow2"]);
  }
});

test("libvirtd not running (nothing listens at the URI's socket): the message says how to start it", async () => {
  const spec = await bootSpec("nolibvirt", 0);
  const host = new VirshHost({ connect: "qemu:///system?socket=/nonexistent/libvirt-sock" });
  await assert.rejects(host.start(spec), isCode("HOST_TOOL", /libvirtd is not running .*virtlogd -d; libvirtd -d/));
  assert.deepEqual(await fsp.readdir(spec.runDir), ["disk.qcow2"]);
});

test("virsh: VM files in a directory libvirt's QEMU user cannot search (like /root) are refused up front", async () => {
  await setup();
  const locked = join(RUNS, `locked-${randomBytes(3).toString("hex")}`);
  await fsp.mkdir(locked, { mode: 0o700 });
  await fsp.chmod(locked, 0o700);
  const spec = await bootSpec("locked", 0);
  const runDir = join(locked, "run");
  await fsp.mkdir(runDir);
  const moved: VmSpec = { ...spec, runDir, memory: { path: join(runDir, "mem.raw"), sizeMiB: 256 } };
  await assert.rejects(new VirshHost({ connect: SYSTEM }).start(moved), isCode("HOST_TOOL", /runs QEMU as libvirt-qemu, which cannot reach .*is not searchable for it/));
  assert.deepEqual(await fsp.readdir(runDir), []);
  assert.equal((await fsp.stat(runDir)).uid, process.getuid?.());
});

for (const make of [() => new QemuHost(), () => new VirshHost({ connect: SYSTEM })]) {
  const kind = make().kind;

  test(`${kind}: a VNC display answers; a guest that never prints the marker times out with the serial tail; stop() cleans up`, async () => {
    const spec = await bootSpec(`notready-${kind}`, 0);
    const vm = await make().start({ ...spec, vnc: { port: 0 } });
    const pid = (await readVmRecord(spec.runDir))?.pid;
    try {
      assert.ok(vm.vncPort !== null && vm.vncPort >= 5900);
      assert.match(await rfbBanner(vm.vncPort), /^RFB 003\.00\d$/);
      await vm.waitReady(guest.readyMarker, 120_000);
      const t0 = performance.now();
      await assert.rejects(vm.waitReady("NEVER-PRINTED-MARKER", 1500), isCode("GUEST", /did not print "NEVER-PRINTED-MARKER" within 1.5 s; last serial output:\n(.|\n)*CLOUDLET-READY boot_id=/));
      assert.ok(performance.now() - t0 < 5000);
    } finally {
      await vm.stop();
    }
    const left = await assertNoRuntimeFiles(spec.runDir);
    assert.ok(!left.includes("mem.raw"), "the memory file created at boot is removed by stop()");
    assert.ok(pid && !processAlive(pid));
  });

  test(`${kind}: the VM killed during a wait fails the wait at once, with the reason`, async () => {
    const spec = await bootSpec(`killed-${kind}`, 0);
    const vm = await make().start(spec);
    const rec = await readVmRecord(spec.runDir);
    assert.ok(rec?.pid && processAlive(rec.pid), "the record names the live QEMU");
    const waiting = vm.waitReady(guest.readyMarker, 120_000);
    await sleep(800);
    process.kill(rec.pid, "SIGKILL");
    const t0 = performance.now();
    await assert.rejects(waiting, isCode("GUEST", /exited unexpectedly/));
    assert.ok(performance.now() - t0 < 5000, "noticed quickly");
    const exit = await vm.exited;
    assert.equal(exit.expected, false);
    if (kind === "qemu") assert.equal(exit.signal, "SIGKILL");
    await assertNoRuntimeFiles(spec.runDir);
    await assert.rejects(vm.console.run("true"), isCode("GUEST"));
  });

  test(`${kind}: an abort (Ctrl-C) during boot or during a wait kills the VM and removes what cloudlet created`, async () => {
    // Abort while waiting for the guest.
    const spec = await bootSpec(`abort-${kind}`, 0);
    const ac = new AbortController();
    const vm = await make().start(spec, ac.signal);
    const rec = await readVmRecord(spec.runDir);
    const waiting = vm.waitReady(guest.readyMarker, 120_000);
    await sleep(800);
    ac.abort();
    await assert.rejects(waiting, isCode("CANCELLED"));
    assert.equal((await vm.exited).expected, true);
    assert.ok(rec?.pid && !processAlive(rec.pid), "QEMU is gone");
    assert.deepEqual(await fsp.readdir(spec.runDir), ["disk.qcow2"]);

    // Abort while start() itself is running.
    const spec2 = await bootSpec(`abort2-${kind}`, 0);
    const ac2 = new AbortController();
    const starting = make().start(spec2, ac2.signal);
    setTimeout(() => ac2.abort(), kind === "qemu" ? 30 : 150);
    await starting.then(
      async (vm2) => {
        // Too late to interrupt start(); the abort still ends the VM.
        assert.equal((await vm2.exited).expected, true);
      },
      (e) => isCode("CANCELLED")(e),
    );
    await sleep(100);
    assert.deepEqual(await fsp.readdir(spec2.runDir), ["disk.qcow2"]);
  });
}

test("orphan VMs (their owner process died without stopping them) are found and killed; detached ones are left alone", async () => {
  await setup();
  const root = join(RUNS, "orphans");
  await fsp.mkdir(root, { recursive: true });
  const dirs: string[] = [];
  for (const [kind, detach] of [["qemu", false], ["virsh", false], ["qemu", true], ["virsh", true]] as const) {
    const dir = join(root, `${kind}-${detach ? "detached" : "orphan"}`);
    await fsp.mkdir(dir);
    await createQcow2Layer(guest.rootfs, join(dir, "disk.qcow2"));
    dirs.push(dir);
    const spec: VmSpec = {
      name: `orphan-${kind}`,
      runDir: dir,
      boot: { kernel: guest.kernel, initrd: guest.initrd, append: guest.append },
      disk: { path: join(dir, "disk.qcow2"), format: "qcow2" },
      memory: { path: join(dir, "mem.raw"), sizeMiB: 256 },
      machine: { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: 256 },
      vcpus: 1,
      portForwards: [{ proto: "tcp", hostPort: 0, guestPort: 80 }],
    };
    // A separate process starts the VM and exits without stopping it, as a crashed server would.
    const hostExpr = kind === "qemu" ? "new QemuHost()" : `new VirshHost({ connect: ${JSON.stringify(SYSTEM)} })`;
    const code = `
      import { QemuHost } from ${JSON.stringify(fileURLToPath(new URL("../ts/vm/qemu_host.ts", import.meta.url)))};
      import { VirshHost } from ${JSON.stringify(fileURLToPath(new URL("../ts/vm/virsh_host.ts", import.meta.url)))};
      const vm = await ${hostExpr}.start(${JSON.stringify(spec)});
      ${detach ? "await vm.detach();" : ""}
      process.exit(0);`;
    const deno = "Deno" in globalThis;
    const args = deno ? ["eval", code] : ["--import", "tsx", "--input-type=module", "-e", code];
    const r = await new Promise<{ code: number | null; err: string }>((resolve) => {
      const c = spawn(process.execPath, args, { stdio: ["ignore", "ignore", "pipe"], cwd: fileURLToPath(new URL("..", import.meta.url)) });
      let err = "";
      c.stderr.on("data", (d) => (err += d));
      c.on("close", (code) => resolve({ code, err }));
    });
    assert.equal(r.code, 0, r.err);
  }
  const before = await listVms(root);
  assert.equal(before.length, 4);
  assert.ok(before.every((s) => s.alive), "the VMs outlived the process that started them");

  const killed = await cleanupOrphanVms(root, { connect: [SYSTEM] });
  assert.equal(killed.length, 2, `killed: ${killed.join(", ")}`);
  for (const s of before) {
    const detached = s.record.detached;
    const alive = s.record.pid !== null && processAlive(s.record.pid);
    assert.equal(alive, detached, `${s.record.id}: alive=${alive}`);
    if (!detached) {
      await assertNoRuntimeFiles(s.record.runDir);
      assert.ok(!(await fsp.readdir(s.record.runDir)).includes("mem.raw"));
      const st = await fsp.stat(s.record.runDir);
      assert.equal(st.uid, process.getuid?.(), "the run dir is ours again");
    }
  }
  // A detached VM is ended by stopVm (cloudlet stop ID), from a process that did not start it.
  const virshDetached = before.find((s) => s.record.detached && s.record.host === "virsh")!;
  assert.equal(await stopVm(virshDetached.record.runDir), true);
  assert.ok(!processAlive(virshDetached.record.pid!));
  await assertNoRuntimeFiles(virshDetached.record.runDir);
  assert.equal((await fsp.stat(virshDetached.record.runDir)).uid, process.getuid?.());
  // A QEMU whose record is gone is still found by its -name marker and pid-file path.
  const detachedDir = dirs[2];
  await fsp.rm(join(detachedDir, "vm.json"));
  const again = await cleanupOrphanVms(root);
  assert.equal(again.length, 1, `killed: ${again.join(", ")}`);
  assert.ok(!before.some((s) => s.record.pid !== null && processAlive(s.record.pid)));
  await assertNoRuntimeFiles(detachedDir);
});

test("cleanup: nothing of these tests keeps running", async () => {
  await setup();
  // Whatever a failed test left running under our runs root is ended here, and the runs root removed.
  await cleanupOrphanVms(RUNS, { connect: [SYSTEM] });
  for (const s of await listVms(RUNS)) if (s.alive) await stopVm(s.record.runDir);
  assert.deepEqual((await listVms(RUNS)).filter((s) => s.alive), []);
  // libvirt relabels the guest's files for each domain (several ran at once); all of them are ours again.
  for (const f of [guest.kernel, guest.initrd, guest.rootfs]) assert.equal((await fsp.stat(f)).uid, process.getuid?.(), f);
  await fsp.rm(RUNS, { recursive: true, force: true });
  if (report.length) console.log(`vm timings:\n  ${report.join("\n  ")}`);
});
