// cloudlet's own process as a QEMU postcopy migration source, on real QEMU under TCG (no mocks).
// One boot: the built-in guest runs a counter and an HTTP server, and is saved the way cloudlet saves a
// base (memory-backend-file + x-ignore-shared + migrate to a state file). Then it is resumed through
// cloudlet's postcopy source into a memfd-backed QEMU, its pages served from the saved memory file, and
// resumed again with a page provider that fails (a page that does not verify): the VM must be killed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import { spawn } from "node:child_process";
import { get } from "node:http";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { Buffer } from "node:buffer";
import { buildGuestImage, type GuestImage } from "../ts/vm/guest_image.ts";
import { QemuHost, qemuArgs } from "../ts/vm/qemu_host.ts";
import { createQcow2Layer } from "../ts/vm/qcow2_layer.ts";
import { pickFreePorts } from "../ts/vm/host_ports.ts";
import type { VmSpec } from "../ts/vm/vm_host.ts";
import { CloudletError } from "../ts/errors.ts";
import {
  MIG_CMD,
  PAGE_SIZE,
  parseDeviceState,
  postcopyAdvise,
  postcopyDiscard,
  RamSectionWriter,
  ReturnPathParser,
  RP_MSG,
  StreamWriter,
  writeCommand,
  writeHeader,
  writePackaged,
  type SavedDeviceState,
} from "../ts/vm/migration_stream.ts";
import { resumePostcopy, runPostcopySource, startPostcopyDestination, type PostcopyDestination } from "../ts/vm/postcopy_source.ts";

const TEST_HOME = process.env.CLOUDLET_TEST_HOME ?? fileURLToPath(new URL("../.build/test-home", import.meta.url));
const RUNS = join(TEST_HOME, "runs", `postcopy-${process.pid}-${randomBytes(3).toString("hex")}`);
const RAM_MIB = 256;

interface SavedVm {
  guest: GuestImage;
  spec: VmSpec;
  statePath: string;
  state: SavedDeviceState;
  /** The counter and boot id the guest reported just before the save. */
  before: { counter: number; bootId: string };
}

/** The pages the first resume requested on demand, in order: the working set the next resume sends first. */
let workingSet: number[] = [];

let saved: Promise<SavedVm> | null = null;
/** Boots the built-in guest once, starts the workload and saves it as a base (every test awaits this; Deno's node:test lacks hooks). */
function savedVm(): Promise<SavedVm> {
  saved ??= (async () => {
    const guest = await buildGuestImage({ cacheDir: join(TEST_HOME, "guest") });
    const runDir = join(RUNS, "base");
    await fsp.mkdir(runDir, { recursive: true });
    const [port] = await pickFreePorts(1);
    await createQcow2Layer(guest.rootfs, join(runDir, "disk.qcow2"));
    const spec: VmSpec = {
      name: "postcopy-base",
      runDir,
      boot: { kernel: guest.kernel, initrd: guest.initrd, append: guest.append },
      disk: { path: join(runDir, "disk.qcow2"), format: "qcow2" },
      memory: { path: join(runDir, "mem.raw"), sizeMiB: RAM_MIB },
      machine: { machine: "pc-i440fx-7.2", cpu: "qemu64", ramMiB: RAM_MIB },
      vcpus: 1,
      portForwards: [{ proto: "tcp", hostPort: port, guestPort: 80 }],
    };
    const vm = await new QemuHost().start(spec);
    try {
      await vm.waitReady(guest.readyMarker, 120_000);
      const w = await vm.console.run(WORKLOAD);
      assert.deepEqual(w, { output: "started\n", exitCode: 0 });
      let body = await firstAnswer(port);
      while (Number(field(body, "counter")) < 2) {
        await sleep(300);
        body = await httpGet(port, "/cgi-bin/state");
      }
      const statePath = join(runDir, "state.bin");
      await vm.snapshot(statePath);
      const state = parseDeviceState(await fsp.readFile(statePath), statePath);
      return { guest, spec, statePath, state, before: { counter: Number(field(body, "counter")), bootId: field(body, "boot_id") } };
    } catch (e) {
      await vm.stop().catch(() => {});
      throw e;
    }
  })();
  return saved;
}

/** A counter in a shell's memory and busybox httpd with a CGI that reports it. */
const WORKLOAD = `
mkdir -p /run/cl /www/cgi-bin
cat > /www/cgi-bin/state <<'CGI'
#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
echo "counter=$(cat /run/cl/counter) boot_id=$(cat /proc/sys/kernel/random/boot_id)"
CGI
chmod 755 /www/cgi-bin/state
setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /run/cl/counter.tmp; mv /run/cl/counter.tmp /run/cl/counter; sleep 1; done' </dev/null >/dev/null 2>&1 &
setsid busybox httpd -f -p 80 -h /www </dev/null >/dev/null 2>&1 &
sleep 0.3
echo started
`;

/** Starts a memfd-backed destination with the saved VM's devices, on a copy of its disk and a new host port. */
async function destination(base: SavedVm, tag: string, extraArgs: string[] = []): Promise<{ dest: PostcopyDestination; port: number; runDir: string }> {
  const runDir = join(RUNS, `${tag}-${randomBytes(3).toString("hex")}`);
  await fsp.mkdir(runDir, { recursive: true });
  const cp = await run("cp", ["--sparse=always", base.spec.disk.path, join(runDir, "disk.qcow2")]);
  assert.equal(cp.code, 0, cp.out);
  const [port] = await pickFreePorts(1);
  const portForwards = [{ proto: "tcp" as const, hostPort: port, guestPort: 80 }];
  const spec: VmSpec = { ...base.spec, name: tag, runDir, disk: { path: join(runDir, "disk.qcow2"), format: "qcow2" }, portForwards };
  const args = qemuArgs(spec, { vmName: tag, accel: "tcg", portForwards, vncPort: null });
  const at = args.findIndex((a) => a.startsWith("memory-backend-file,"));
  assert.ok(at > 0, "the launch line has a memory-backend-file to replace");
  args[at] = `memory-backend-memfd,id=mem,size=${RAM_MIB}M,share=on`;
  // CLOUDLET_POSTCOPY_TRACE=1 logs each fault and placement to postcopy-qemu.log (for measuring request latency).
  if (process.env.CLOUDLET_POSTCOPY_TRACE) args.push("-trace", "postcopy_ram_fault_thread_request", "-trace", "postcopy_place_page*", "-msg", "timestamp=on");
  return { dest: await startPostcopyDestination({ args: [...args, ...extraArgs], runDir }), port, runDir };
}

/** Pages from the saved memory file, counting each call. */
function filePages(path: string) {
  const served = new Map<number, number>();
  let fh: Promise<fsp.FileHandle> | null = null;
  const pages = async (i: number) => {
    served.set(i, (served.get(i) ?? 0) + 1);
    const b = new Uint8Array(PAGE_SIZE);
    const { bytesRead } = await (await (fh ??= fsp.open(path, "r"))).read(b, 0, PAGE_SIZE, i * PAGE_SIZE);
    if (bytesRead !== PAGE_SIZE) throw new Error(`short read at page ${i}`);
    return b;
  };
  return { pages, served, close: async () => (await fh)?.close() };
}

test("the saved device state splits into configuration, RAM blocks and device sections", async () => {
  const base = await savedVm();
  const s = base.state;
  assert.equal(s.machine, "pc-i440fx-7.2");
  assert.deepEqual(s.capabilities, ["x-ignore-shared"]);
  assert.equal(s.mainBlock.id, "mem", "memory-backend-memfd,id=mem names the guest RAM block");
  assert.equal(s.mainBlock.length, RAM_MIB << 20);
  assert.ok(s.blocks.some((b) => b.id === "pc.bios"), s.blocks.map((b) => b.id).join(", "));
  assert.equal(s.blockPages.get("pc.bios")!.size, 256 * 1024 / PAGE_SIZE, "every BIOS page is in the file");
  assert.equal(s.devices[0], 0x04, "device part starts with a full section");
  assert.ok(s.devices.length > 10_000 && s.devices.length < 1 << 20, `device part is ${s.devices.length} bytes`);

  // A cut file is refused with the file's name and where it broke.
  const bytes = await fsp.readFile(base.statePath);
  assert.throws(() => parseDeviceState(bytes.subarray(0, 300), base.statePath), (e: unknown) => {
    assert.ok(e instanceof CloudletError && e.code === "BAD_INPUT", String(e));
    assert.equal(e.file, base.statePath);
    assert.match(e.message, /at byte \d+/);
    return true;
  });
  assert.throws(() => parseDeviceState(new Uint8Array(64), "zeros.bin"), /no QEVM magic/);
});

test("the stream's fixed items are QEMU 7.2's bytes", () => {
  const w = new StreamWriter();
  writeHeader(w, "pc-i440fx-7.2");
  writeCommand(w, MIG_CMD.OPEN_RETURN_PATH);
  writeCommand(w, MIG_CMD.POSTCOPY_ADVISE, postcopyAdvise());
  writeCommand(w, MIG_CMD.POSTCOPY_RAM_DISCARD, postcopyDiscard("mem", [[0, 4096]]));
  writePackaged(w, new Uint8Array([0xaa]));
  const hex = Buffer.from(w.take()).toString("hex");
  assert.equal(
    hex,
    "5145564d00000003" + "07" + "0000000d" + Buffer.from("pc-i440fx-7.2").toString("hex") +
      "08" + "0001" + "0000" +
      "08" + "0003" + "0010" + "0000000000001000" + "0000000000001000" +
      "08" + "0006" + "0016" + "00" + "03" + Buffer.from("mem").toString("hex") + "00" + "0000000000000000" + "0000000000001000" +
      "08" + "0007" + "0004" + "00000001" + "aa",
  );
  // A page header: offset | flags, the block name only when the block changes.
  const r = new StreamWriter();
  const sec = new RamSectionWriter(r, 2);
  sec.page("mem", 3, new Uint8Array(PAGE_SIZE).fill(7));
  sec.page("mem", 4, new Uint8Array(PAGE_SIZE));
  sec.end();
  const b = r.take();
  assert.equal(Buffer.from(b.subarray(0, 17)).toString("hex"), "02" + "00000002" + "0000000000003008" + "03" + Buffer.from("mem").toString("hex"));
  assert.equal(Buffer.from(b.subarray(17 + PAGE_SIZE)).toString("hex"), "0000000000004022" + "00" + "0000000000000010" + "7e" + "00000002");
});

test("a destination without memfd RAM is refused before QEMU starts", async () => {
  await assert.rejects(startPostcopyDestination({ args: ["-object", "memory-backend-file,id=mem,size=256M,mem-path=/tmp/x,share=on"], runDir: "/nonexistent" }), /memory-backend-memfd/);
});

test("a request for a RAM block the saved VM lacks stops the source with a clear error", { timeout: 20_000 }, async () => {
  // A real unix socket; the far end speaks only the return path, as a destination with other devices would.
  const dir = await fsp.mkdtemp(join(tmpdir(), "cl-postcopy-"));
  const path = join(dir, "m.sock");
  const server = createServer((c) => {
    c.on("data", () => {});
    c.on("error", () => {});
    c.write(new StreamWriter().be16(RP_MSG.REQ_PAGES_ID).be16(20).be64(0).be32(4096).shortString("vga.vram").take());
  });
  await new Promise<void>((resolve) => server.listen(path, resolve));
  const socket = connect(path);
  await new Promise((resolve) => socket.once("connect", resolve));
  const main = { id: "mem", length: 4 * PAGE_SIZE };
  const state: SavedDeviceState = {
    machine: "pc-i440fx-7.2",
    capabilities: [],
    ramSectionId: 2,
    blocks: [main],
    mainBlock: main,
    blockPages: new Map([["mem", new Map()]]),
    devices: new Uint8Array(0),
  };
  try {
    const src = runPostcopySource({ socket, state, ramBytes: main.length, pages: async () => new Uint8Array(PAGE_SIZE).fill(1) });
    await assert.rejects(src.done, (e: unknown) => {
      assert.ok(e instanceof CloudletError && e.code === "BAD_INPUT", String(e));
      assert.match(e.message, /RAM block "vga\.vram", which the saved VM does not have/);
      return true;
    });
  } finally {
    socket.destroy();
    server.close();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("return-path messages split across reads", () => {
  const w = new StreamWriter();
  w.be16(RP_MSG.PONG).be16(4).be32(7);
  w.be16(RP_MSG.REQ_PAGES_ID).be16(16).be64(0x5000).be32(4096).shortString("mem");
  w.be16(RP_MSG.REQ_PAGES).be16(12).be64(0x9000).be32(8192);
  w.be16(RP_MSG.SHUT).be16(4).be32(0);
  const bytes = w.take();
  const p = new ReturnPathParser();
  const out = [...p.push(bytes.subarray(0, 11)), ...p.push(bytes.subarray(11, 30)), ...p.push(bytes.subarray(30))];
  assert.deepEqual(out, [
    { type: "pong", value: 7 },
    { type: "req-pages", block: "mem", offset: 0x5000, length: 4096 },
    { type: "req-pages", block: null, offset: 0x9000, length: 8192 },
    { type: "shut", error: false },
  ]);
});

test("a saved VM resumes through cloudlet's postcopy source, pages served on demand", async (t) => {
  const base = await savedVm();
  const { dest, port } = await destination(base, "resume");
  const mem = filePages(base.spec.memory.path);
  const requested: number[] = [];
  const t0 = performance.now();
  try {
    const r = resumePostcopy({ destination: dest, state: base.state, ramBytes: RAM_MIB << 20, pages: mem.pages, precopy: [0, 1, 2, 3], onRequest: (p) => requested.push(p) });
    const resumedMs = await r.resumed;
    const died = dest.exited.then(async (x) => Promise.reject(new Error(`the destination exited (${JSON.stringify(x)}): ${await dest.logTail()}`)));
    died.catch(() => {});
    const first = await Promise.race([firstAnswer(port), died]);
    const firstMs = performance.now() - t0;
    assert.equal(field(first, "boot_id"), base.before.bootId, "the same boot: resumed, not rebooted");
    const c1 = Number(field(first, "counter"));
    assert.ok(c1 >= base.before.counter && c1 <= base.before.counter + 5, `counter continued from ${base.before.counter}, got ${c1}`);
    const completeMs = await r.complete;
    const s = r.stats;
    assert.ok(requested.length > 0, "the destination requested pages on demand");
    workingSet = requested.slice();
    assert.equal(s.requestedPages, requested.length);
    assert.equal(s.precopyPages, 4);
    assert.equal(s.sentPages + s.zeroPagesSkipped, s.totalPages);
    assert.equal(s.precopyPages + s.requestedPages + s.backgroundPages + s.zeroPagesSkipped, s.totalPages);
    assert.ok(s.zeroPagesSkipped > 0, "zero pages were left unsent");
    // Every guest page came from the provider exactly once: nothing invented, nothing sent twice.
    assert.equal(mem.served.size, s.totalPages);
    assert.ok([...mem.served.values()].every((n) => n === 1), "no page fetched twice");
    assert.equal((await dest.qmp.execute<{ status: string }>("query-migrate")).status, "completed");
    assert.equal((await dest.qmp.execute<{ status: string }>("query-status")).status, "running");
    await sleep(2200);
    const later = await httpGet(port, "/cgi-bin/state");
    assert.ok(Number(field(later, "counter")) >= c1 + 1, `counter keeps counting once local: ${c1} -> ${field(later, "counter")}`);
    t.diagnostic(
      `QEMU 7.2 TCG: guest running ${Math.round(resumedMs)} ms after the start, first HTTP answer ${Math.round(firstMs)} ms, ` +
        `fully local ${Math.round(completeMs)} ms; ${s.requestedPages} pages requested on demand in ${s.requestMessages} messages, ` +
        `${s.backgroundPages} in the background, ${s.zeroPagesSkipped} zero pages left unsent, ${s.statePages} ROM pages from the state file, ${(s.bytesSent / 1e6).toFixed(1)} MB sent`,
    );
  } finally {
    await dest.kill();
    await mem.close();
  }
});

test("with the recorded working set sent before the device state, the guest faults far less", async (t) => {
  const base = await savedVm();
  assert.ok(workingSet.length > 0, "the resume test ran first and recorded its requests");
  const { dest, port } = await destination(base, "warm");
  const mem = filePages(base.spec.memory.path);
  const t0 = performance.now();
  try {
    const r = resumePostcopy({ destination: dest, state: base.state, ramBytes: RAM_MIB << 20, pages: mem.pages, precopy: workingSet });
    const resumedMs = await r.resumed;
    const died = dest.exited.then(async (x) => Promise.reject(new Error(`the destination exited (${JSON.stringify(x)}): ${await dest.logTail()}`)));
    died.catch(() => {});
    const first = await Promise.race([firstAnswer(port), died]);
    const firstMs = performance.now() - t0;
    assert.equal(field(first, "boot_id"), base.before.bootId);
    const requestedBefore = r.stats.requestedPages;
    const completeMs = await r.complete;
    const s = r.stats;
    assert.equal(s.precopyPages, workingSet.length);
    // The guest runs a little differently each time (timers, the HTTP poll), so some new pages are expected.
    assert.ok(s.requestedPages < workingSet.length / 2, `${s.requestedPages} requests with a working set of ${workingSet.length} pages`);
    t.diagnostic(
      `with ${workingSet.length} working-set pages sent first: guest running ${Math.round(resumedMs)} ms, first HTTP answer ${Math.round(firstMs)} ms ` +
        `(${requestedBefore} pages requested by then), fully local ${Math.round(completeMs)} ms, ${s.requestedPages} pages requested in all`,
    );
  } finally {
    await dest.kill();
    await mem.close();
  }
});

test("with the guest held paused, every page lands byte for byte, skipped zero pages read as zero", async () => {
  const base = await savedVm();
  // -S: RUN leaves the guest paused, so nothing writes its memory while postcopy fills it.
  const { dest, runDir } = await destination(base, "exact", ["-S"]);
  const mem = filePages(base.spec.memory.path);
  try {
    const r = resumePostcopy({ destination: dest, state: base.state, ramBytes: RAM_MIB << 20, pages: mem.pages });
    await r.complete;
    assert.ok(r.stats.zeroPagesSkipped > 0);
    assert.equal((await dest.qmp.execute<{ status: string }>("query-status")).status, "paused");
    const dump = join(runDir, "dump.raw");
    await dest.qmp.execute("pmemsave", { val: 0, size: RAM_MIB << 20, filename: dump });
    const [got, want] = await Promise.all([fsp.readFile(dump), fsp.readFile(base.spec.memory.path)]);
    assert.equal(got.length, want.length);
    // Guest-physical 0xa0000-0xfffff shows VGA and BIOS, not RAM: leave it out.
    const differ: number[] = [];
    for (let p = 0; p < want.length / PAGE_SIZE; p++) {
      if (p >= 0xa0 && p < 0x100) continue;
      if (Buffer.compare(got.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE), want.subarray(p * PAGE_SIZE, (p + 1) * PAGE_SIZE)) !== 0) differ.push(p);
    }
    assert.deepEqual(differ.slice(0, 10), [], `${differ.length} pages differ from the saved memory`);
  } finally {
    await dest.kill();
    await mem.close();
  }
});

test("a page the provider cannot serve stops the VM with that error", async () => {
  const base = await savedVm();
  const { dest, port } = await destination(base, "fail");
  const mem = filePages(base.spec.memory.path);
  let bad: number | null = null;
  let running = false;
  try {
    const r = resumePostcopy({
      destination: dest,
      state: base.state,
      ramBytes: RAM_MIB << 20,
      // The first page the running guest faults on (or, failing that, one the background reaches) does not verify.
      onRequest: (p) => {
        if (running) bad ??= p;
      },
      pages: (i) => {
        if (i === bad || i === 60_000) {
          bad = i;
          return Promise.reject(new CloudletError("CORRUPT_SEGMENT", `page ${i} does not match its hash`, "segment-0007"));
        }
        return mem.pages(i);
      },
    });
    void r.resumed.then(() => (running = true), () => {});
    await assert.rejects(r.complete, (e: unknown) => {
      assert.ok(e instanceof CloudletError, String(e));
      assert.equal(e.code, "CORRUPT_SEGMENT");
      assert.equal(e.file, "segment-0007");
      assert.match(e.message, new RegExp(`postcopy stopped: .*page.*${bad}.*does not match its hash`));
      return true;
    });
    assert.equal(running, true, "the guest was running when its page failed");
    assert.equal(dest.hasExited, true, "the destination QEMU was killed");
    const exit = await dest.exited;
    assert.ok(exit.signal === "SIGKILL" || exit.code === 137, `killed: ${JSON.stringify(exit)}`);
    await assert.rejects(httpGet(port, "/cgi-bin/state"), "nothing answers on the VM's port");
    await assert.rejects(r.resumed.then(() => dest.qmp.execute("query-status")), "QMP is gone with the VM");
  } finally {
    await dest.kill();
    await mem.close();
  }
});

test("cleanup: the test run directory goes", async () => {
  await savedVm().catch(() => {});
  await fsp.rm(RUNS, { recursive: true, force: true });
});

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

async function firstAnswer(port: number, timeoutMs = 60_000): Promise<string> {
  const t0 = performance.now();
  let last: unknown;
  while (performance.now() - t0 < timeoutMs) {
    try {
      return await httpGet(port, "/cgi-bin/state");
    } catch (e) {
      last = e;
      await sleep(20);
    }
  }
  throw new Error(`no HTTP answer on ${port} within ${timeoutMs} ms: ${last}`);
}

function field(body: string, name: string): string {
  const m = new RegExp(`\\b${name}=(\\S+)`).exec(body);
  assert.ok(m, `${name}= missing in ${JSON.stringify(body)}`);
  return m[1];
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
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
