// NbdExport: the lazy disk of early start. Protocol checks with a raw socket
// client (hostile lengths, reads past the end, writes refused), then a real
// QEMU boot of the built-in guest whose root disk is served chunk by chunk
// from the export under a local qcow2 top layer: chunks fetched on demand,
// the backing switched to the local file over QMP, the export closed, and
// the guest still reading its disk; and a provider error reaching the guest
// as an I/O error and the caller through onError.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { promises as fsp } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { NbdExport, NBD_CHUNK, lazyDiskArgs, switchBackingToLocal, type ChunkProvider } from "../ts/vm/nbd_export.ts";
import { buildGuestImage, GUEST_APPEND } from "../ts/vm/guest_image.ts";
import { QmpClient } from "../ts/vm/qmp.ts";
import { SerialConsole } from "../ts/vm/serial_console.ts";
import { scratchDir } from "./_images.ts";
import { FileSource } from "../ts/node/files.ts";

const TEST_HOME = fileURLToPath(new URL("../.build/test-home", import.meta.url));

/**
 * A provider over a file, with a log of what was asked and a hook to fail
 * chunks. It reads through FileSource, which serialises positional reads
 * (Deno's FileHandle shares one cursor between concurrent reads).
 */
function fileProvider(fh: FileSource, size: number, opts: { fail?: (c: number) => boolean } = {}) {
  const asked: number[] = [];
  const prioritized: number[] = [];
  const local = new Set<number>();
  const provider: ChunkProvider = {
    ready: (c) => local.has(c),
    prioritize: (c) => void prioritized.push(c),
    async chunk(c) {
      asked.push(c);
      if (opts.fail?.(c)) throw new Error(`chunk ${c} failed its hash`);
      const b = await fh.read(c * NBD_CHUNK, Math.min(NBD_CHUNK, size - c * NBD_CHUNK));
      local.add(c);
      return b;
    },
  };
  return { provider, asked, prioritized, local };
}

/** A minimal NBD client: handshake with OPT_GO, then raw requests. */
async function rawClient(path: string) {
  const s = connect(path);
  let buf = Buffer.alloc(0);
  let wake: (() => void) | null = null;
  let closed = false;
  s.on("data", (d) => {
    buf = Buffer.concat([buf, d]);
    wake?.();
  });
  s.on("close", () => {
    closed = true;
    wake?.();
  });
  const read = async (n: number) => {
    while (buf.length < n) {
      if (closed) throw new Error("closed");
      await new Promise<void>((r) => (wake = r));
    }
    const out = buf.subarray(0, n);
    buf = buf.subarray(n);
    return out;
  };
  await new Promise<void>((r) => s.once("connect", () => r()));
  const hello = await read(18);
  assert.equal(hello.subarray(0, 8).toString(), "NBDMAGIC");
  s.write(Buffer.from([0, 0, 0, 3]));
  const name = Buffer.from("disk");
  const go = Buffer.alloc(16 + 4 + name.length + 2);
  go.write("IHAVEOPT", 0);
  go.writeUInt32BE(7, 8);
  go.writeUInt32BE(4 + name.length + 2, 12);
  go.writeUInt32BE(name.length, 16);
  name.copy(go, 20);
  s.write(go);
  let size = -1n;
  for (;;) {
    const h = await read(20);
    const len = h.readUInt32BE(16);
    const type = h.readUInt32BE(12);
    const d = await read(len);
    if (type === 3 && d.readUInt16BE(0) === 0) size = d.readBigUInt64BE(2);
    if (type === 1) break;
    assert.ok(type < 0x80000000, `option error ${type.toString(16)}`);
  }
  let cookie = 0n;
  const request = async (type: number, offset: bigint, length: number, payload?: Buffer) => {
    const q = Buffer.alloc(28);
    q.writeUInt32BE(0x25609513, 0);
    q.writeUInt16BE(type, 6);
    q.writeBigUInt64BE(++cookie, 8);
    q.writeBigUInt64BE(offset, 16);
    q.writeUInt32BE(length, 24);
    s.write(payload ? Buffer.concat([q, payload]) : q);
    const r = await read(16);
    assert.equal(r.readUInt32BE(0), 0x67446698);
    assert.equal(r.readBigUInt64BE(8), cookie);
    const error = r.readUInt32BE(4);
    const data = error === 0 && type === 0 ? await read(length) : Buffer.alloc(0);
    return { error, data };
  };
  return { size, request, close: () => s.destroy(), isClosed: () => closed };
}

test("nbd export: reads across chunks, hostile requests refused, the server stays up", async () => {
  const dir = await scratchDir("nbd-proto");
  const img = join(dir, "img.raw");
  const size = 5 * NBD_CHUNK + 123;
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 7 + (i >> 12)) & 0xff;
  await fsp.writeFile(img, bytes);
  const fh = await FileSource.open(img);
  const p = fileProvider(fh, size);
  const exp = await NbdExport.listen({ socketPath: join(dir, "nbd.sock"), name: "disk", size, provider: p.provider });
  try {
    const c = await rawClient(join(dir, "nbd.sock"));
    assert.equal(c.size, BigInt(size));
    const r1 = await c.request(0, 4000n, 9000);
    assert.equal(r1.error, 0);
    assert.deepEqual(r1.data, bytes.subarray(4000, 13000));
    const tail = await c.request(0, BigInt(size - 200), 200);
    assert.deepEqual(tail.data, bytes.subarray(size - 200));
    assert.equal((await c.request(0, BigInt(size - 10), 11)).error, 22, "past the end: EINVAL");
    assert.equal((await c.request(0, 1n << 62n, 4096)).error, 22, "offset far past the end: EINVAL");
    assert.equal((await c.request(0, 0n, 64 << 20)).error, 22, "over the request limit: EINVAL");
    assert.equal((await c.request(1, 0n, 512, Buffer.alloc(512))).error, 1, "write: EPERM");
    assert.equal((await c.request(3, 0n, 0)).error, 0, "flush: ok");
    assert.deepEqual((await c.request(0, 0n, 10)).data, bytes.subarray(0, 10), "still answering after refusals");
    assert.ok(p.prioritized.length > 0, "reads of chunks not yet local called prioritize");
    c.close();
    // A client that lies about a write's length is cut off; the server keeps serving others.
    const bad = await rawClient(join(dir, "nbd.sock"));
    const q = Buffer.alloc(28);
    q.writeUInt32BE(0x25609513, 0);
    q.writeUInt16BE(1, 6);
    q.writeUInt32BE(0xffffffff, 24);
    bad.request(1, 0n, 0xffffffff).catch(() => {});
    for (let i = 0; i < 50 && !bad.isClosed(); i++) await new Promise((r) => setTimeout(r, 20));
    assert.ok(bad.isClosed(), "a write longer than the request limit cuts the connection");
    const again = await rawClient(join(dir, "nbd.sock"));
    assert.deepEqual((await again.request(0, 0n, 16)).data, bytes.subarray(0, 16));
    again.close();
  } finally {
    await exp.close();
    await fh.close();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

/** Starts QEMU on the built-in guest with its root disk lazy over `socketPath`. */
async function bootLazy(dir: string, socketPath: string) {
  const guest = await buildGuestImage({ cacheDir: join(TEST_HOME, "guest") });
  const top = join(dir, "top.qcow2");
  const local = join(dir, "local.raw");
  const size = (await fsp.stat(guest.rootfs)).size;
  // The header names the local file (-u: it need not exist yet); the launch line overrides it with the export.
  await run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-u", "-b", local, "-F", "raw", top, String(size)]);
  const args = [
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-machine", "pc-i440fx-7.2,accel=tcg", "-cpu", "qemu64", "-m", "256M",
    "-kernel", guest.kernel, "-initrd", guest.initrd, "-append", GUEST_APPEND,
    ...lazyDiskArgs({ topPath: top, socketPath, exportName: "disk" }),
    "-chardev", `socket,id=ser0,path=${join(dir, "serial.sock")},server=on,wait=off,logfile=${join(dir, "serial.log")}`,
    "-serial", "chardev:ser0",
    "-qmp", `unix:${join(dir, "qmp.sock")},server=on,wait=off`,
  ];
  const child = spawn("qemu-system-x86_64", args, { stdio: ["ignore", "ignore", "pipe"] });
  let stderr = "";
  child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
  const gone = new Promise<string>((r) => child.on("exit", (code, sig) => r(`QEMU exited (${code ?? sig}): ${stderr.trim()}`)));
  const serial = new SerialConsole(join(dir, "serial.sock"), join(dir, "serial.log"), gone);
  return { child, serial, gone, top, local, rootfs: guest.rootfs, size, stderr: () => stderr };
}

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ["ignore", "ignore", "pipe"] });
    let e = "";
    c.stderr.on("data", (d) => (e += d));
    c.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(" ")}: ${e}`))));
  });
}

test("nbd export: the guest boots from a lazy disk, then runs on the local file with the export gone", { timeout: 240_000 }, async () => {
  const dir = await scratchDir("nbd-vm");
  const socketPath = join(dir, "nbd.sock");
  const guest = await buildGuestImage({ cacheDir: join(TEST_HOME, "guest") });
  const size = (await fsp.stat(guest.rootfs)).size;
  const fh = await FileSource.open(guest.rootfs);
  const p = fileProvider(fh, size);
  const errors: unknown[] = [];
  const exp = await NbdExport.listen({ socketPath, name: "disk", size, provider: p.provider, onError: (e) => errors.push(e) });
  const vm = await bootLazy(dir, socketPath);
  let qmp: QmpClient | null = null;
  try {
    await vm.serial.waitFor("CLOUDLET-READY", 120_000);
    const r = await vm.serial.run("cat /etc/debian_version; echo written > /root/lazy.txt; sync; cat /root/lazy.txt");
    assert.equal(r.exitCode, 0);
    assert.match(r.output, /^\d+(\.\d+)?\n/, "the guest read its disk through the export");
    assert.match(r.output, /written/);
    const onDemand = new Set(p.asked).size;
    assert.ok(onDemand > 0 && onDemand < size / NBD_CHUNK, `only the chunks the guest read were fetched (${onDemand} of ${Math.ceil(size / NBD_CHUNK)})`);
    assert.ok(p.prioritized.length > 0, "reads waited on chunks and raised their priority");
    // Out of order: the guest reads a file near the end of its disk before the chunks in between.
    const before = p.asked.length;
    await vm.serial.run("cat /usr/bin/* >/dev/null 2>&1; true");
    const later = p.asked.slice(before);
    assert.ok(later.some((c, i) => i > 0 && c < later[i - 1]), "chunks were asked out of order, as the guest needed them");
    // Fill: the local file gets every chunk (here: a copy), then the backing switches to it.
    await fsp.copyFile(guest.rootfs, vm.local);
    qmp = await QmpClient.connect(join(dir, "qmp.sock"));
    await switchBackingToLocal(qmp, { localPath: vm.local, topPath: vm.top });
    const readsAtSwitch = exp.stats.reads;
    await exp.close();
    await fh.close();
    // The guest drops its page cache and reads everything again: from the local file now.
    const r2 = await vm.serial.run("sync; echo 3 > /proc/sys/vm/drop_caches; cat /etc/debian_version /root/lazy.txt && md5sum /usr/bin/* >/dev/null && echo READ-OK", { timeoutMs: 120_000 });
    assert.equal(r2.exitCode, 0, r2.output);
    assert.match(r2.output, /written\nREAD-OK/);
    assert.equal(exp.stats.reads, readsAtSwitch, "no read reached the closed export");
    assert.deepEqual(errors, []);
  } finally {
    qmp?.close();
    vm.child.kill("SIGKILL");
    await exp.close().catch(() => {});
    await fh.close().catch(() => {});
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("nbd export: a chunk that fails verification is an I/O error in the guest and an error for the caller", { timeout: 240_000 }, async () => {
  const dir = await scratchDir("nbd-fail");
  const socketPath = join(dir, "nbd.sock");
  const guest = await buildGuestImage({ cacheDir: join(TEST_HOME, "guest") });
  const size = (await fsp.stat(guest.rootfs)).size;
  const fh = await FileSource.open(guest.rootfs);
  // The last chunks of the disk: never read while booting, and read only by the dd below.
  const lastChunk = Math.ceil(size / NBD_CHUNK) - 1;
  let failing = false;
  const p = fileProvider(fh, size, { fail: (c) => failing && c > lastChunk - 16 });
  const errors: Array<{ e: unknown; chunk: number }> = [];
  const exp = await NbdExport.listen({ socketPath, name: "disk", size, provider: p.provider, onError: (e, chunk) => errors.push({ e, chunk }) });
  const vm = await bootLazy(dir, socketPath);
  try {
    await vm.serial.waitFor("CLOUDLET-READY", 120_000);
    failing = true;
    const r = await vm.serial.run(`dd if=/dev/vda of=/dev/null bs=4096 skip=${lastChunk - 4} count=1 iflag=direct; echo rc=$?; dmesg | grep -c 'I/O error'`, { timeoutMs: 120_000 });
    assert.match(r.output, /rc=1\n[1-9]/, `the guest's read failed with an I/O error: ${r.output}`);
    assert.ok(errors.length > 0, "the caller heard of the failed chunk");
    assert.match(String(errors[0].e), /failed its hash/);
    assert.ok(exp.stats.errors > 0);
  } finally {
    vm.child.kill("SIGKILL");
    await exp.close();
    await fh.close();
    await fsp.rm(dir, { recursive: true, force: true });
  }
});
