/** Creating a base VM: boot a raw disk or the built-in guest, wait until it is ready, snapshot, index and register it. */
import { promises as fsp } from "node:fs";
import { join, resolve } from "node:path";
import { CloudletError } from "../errors.ts";
import { type MachineConfig, validMachine } from "../overlay/format.ts";
import { openBase } from "../home/base_cache.ts";
import { isQcow2 } from "../node/disk_image.ts";
import { sparseCopy } from "../node/files.ts";
import type { DiskStride } from "../overlay/base_scan.ts";
import { runTool } from "../node/process.ts";
import { baseNameFrom, BASE_NAME_RE, type BaseRow, type BootFiles, Registry } from "../home/registry.ts";
import { buildGuestImage, loadGuestImage, type GuestImage } from "../vm/guest_image.ts";
import type { FreeMemoryReport, RunningVm, VmSpec } from "../vm/vm_host.ts";
import { withKeptLog, accelShown, type Interaction, type VmJobContext, say, sayFreeMemory, interact } from "./context.ts";
import { homePaths } from "../home/paths.ts";
import { sharedTempDir } from "../node/files.ts";
import { makeHost } from "../vm/host_choice.ts";

const BASE_FILES = { disk: "disk.raw", memory: "memory.raw", state: "state.bin", kernel: "vmlinux", initrd: "initramfs.gz" } as const;

/** Refuses a disk that is not raw (qcow2, vmdk, ...), naming its format. */
export async function requireRawDisk(path: string): Promise<void> {
  await fsp.access(path).catch(() => {
    throw new CloudletError("MISSING_INPUT", "no such file", path);
  });
  if (await isQcow2(path)) throw new CloudletError("BAD_INPUT", "the disk is qcow2, not raw: convert it with `qemu-img convert -O raw DISK.qcow2 DISK.raw`", path);
  const r = await runTool("qemu-img", ["info", "--output=json", "-U", path]);
  if (r.code === 0) {
    const fmt = (JSON.parse(r.stdout) as { format?: string }).format;
    if (fmt && fmt !== "raw") throw new CloudletError("BAD_INPUT", `the disk is ${fmt}, not raw: convert it with \`qemu-img convert -O raw\``, path);
  }
}

/** Options for {@link createBase}. */
export interface CreateBaseOptions {
  /** Raw disk to boot; omitted: the built-in tiny guest. */
  disk?: string;
  /** Name for the registry (default: from the disk's file name). */
  name?: string;
  /** How the user says the guest is ready (default for the built-in guest: its READY marker). */
  ready: Interaction;
  /** Guest RAM, MiB. */
  ramMiB?: number;
  vcpus?: number;
  /** QEMU machine type and CPU model. */
  machine?: string;
  cpu?: string;
  /** Base-disk offsets the base index covers (see DiskStride). */
  diskStride?: DiskStride;
  /** Give the VM a free-page-reporting balloon (default true; part of the base id). */
  balloon?: boolean;
  /** Wait for free page reporting before the snapshot (default true; `--no-free-memory`). */
  freeMemory?: boolean;
}

/** Boots a disk, waits until ready, snapshots and registers it as a base. */
export async function createBase(ctx: VmJobContext, o: CreateBaseOptions): Promise<{ base: BaseRow; seconds: number; existed: boolean; freeMemory: FreeMemoryReport | null }> {
  const t0 = performance.now();
  const dirs = homePaths(ctx.home);
  if (o.name !== undefined) {
    // Refuse a bad or taken name before minutes of booting, not after.
    if (!BASE_NAME_RE.test(o.name)) throw new CloudletError("BAD_ARGUMENT", `base name "${o.name}" is not allowed: use 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit`);
    const holder = (await new Registry(ctx.home).listBases()).find((b) => b.name === o.name);
    if (holder) throw new CloudletError("BAD_ARGUMENT", `a base named "${o.name}" already exists (${holder.id.slice(0, 12)}): choose another --name, or del-base it first`);
  }
  const machine0: MachineConfig = { machine: o.machine ?? "pc-i440fx-7.2", cpu: o.cpu ?? "qemu64", ramMiB: o.ramMiB ?? 256, ...(o.balloon === false ? {} : { freePageReporting: true }) };
  if (!validMachine(machine0)) throw new CloudletError("BAD_ARGUMENT", `--machine and --cpu take a QEMU name (letters, digits, ".", "_", "-"), not ${JSON.stringify(machine0.machine)} / ${JSON.stringify(machine0.cpu)}`);
  let boot: BootFiles | null = null;
  let diskSrc: string;
  let ready = o.ready;
  let source: string;
  let guest: GuestImage | null = null;
  if (o.disk) {
    await requireRawDisk(o.disk);
    diskSrc = resolve(o.disk);
    source = diskSrc;
  } else {
    // Say "building" only when it builds: the cached guest is the common case.
    const cached = await loadGuestImage(dirs.guest);
    if (cached) say(ctx, `using the cached built-in guest (${dirs.guest})`);
    else say(ctx, "building the built-in guest (cached after the first time)");
    const g = (guest = cached ?? (await buildGuestImage({ cacheDir: dirs.guest, signal: ctx.signal, onProgress: (p) => ctx.progress?.({ phase: `guest ${p.phase}`, done: p.done, total: p.total }) })));
    diskSrc = g.rootfs;
    boot = { kernel: BASE_FILES.kernel, initrd: BASE_FILES.initrd, append: g.append };
    source = `built-in guest (Debian, kernel ${g.kernelVersion})`;
    if (!ready.readyMarker && !ready.readyRegex && ready.script === undefined && !ready.console && !ready.vnc) ready = { ...ready, readyMarker: g.readyMarker };
  }
  const machine = machine0;
  const vcpus = o.vcpus ?? 1;
  await fsp.mkdir(dirs.bases, { recursive: true });
  const tmp = await sharedTempDir(join(dirs.bases, ".new-"));
  let vm: RunningVm | null = null;
  try {
    say(ctx, `copying the disk into the base (${diskSrc})`);
    await sparseCopy(diskSrc, join(tmp, BASE_FILES.disk));
    if (boot && guest) {
      await sparseCopy(guest.kernel, join(tmp, BASE_FILES.kernel));
      await sparseCopy(guest.initrd, join(tmp, BASE_FILES.initrd));
    }
    const spec: VmSpec = {
      name: "base",
      runDir: join(tmp, "run"),
      boot: boot ? { kernel: join(tmp, boot.kernel), initrd: join(tmp, boot.initrd), append: boot.append } : null,
      disk: { path: join(tmp, BASE_FILES.disk), format: "raw" },
      memory: { path: join(tmp, BASE_FILES.memory), sizeMiB: machine.ramMiB },
      machine,
      vcpus,
      portForwards: [],
      vnc: ready.vnc ? { port: 0 } : undefined,
    };
    const host = makeHost(ctx.hostChoice);
    say(ctx, `booting (${ctx.hostChoice.host}, ${await accelShown(ctx, host)}, ${machine.machine}, ${machine.cpu}, ${machine.ramMiB} MiB)`);
    vm = await host.start(spec, ctx.signal);
    await interact(ctx, vm, ready, "the guest is ready to become the base");
    say(ctx, "snapshotting memory, device state and disk");
    const snap = await vm.snapshot(join(tmp, BASE_FILES.state), ctx.signal, { settleFreeMemory: o.freeMemory !== false });
    vm = null;
    sayFreeMemory(ctx, machine, snap.freeMemory, o.freeMemory === false);
    await fsp.rm(join(tmp, "run"), { recursive: true, force: true });
    const opened = await openBase(ctx.core, { disk: join(tmp, BASE_FILES.disk), memory: join(tmp, BASE_FILES.memory), machine, dir: tmp, needIndex: false, diskStride: o.diskStride, progress: ctx.progress, signal: ctx.signal });
    const id = opened.id;
    await opened.close();
    const reg = new Registry(ctx.home);
    const final = join(dirs.bases, id);
    const existed = await fsp.access(final).then(() => true, () => false);
    if (existed) {
      await fsp.rm(tmp, { recursive: true, force: true });
    } else {
      await fsp.rename(tmp, final);
    }
    const st = await fsp.stat(join(final, BASE_FILES.disk));
    const base: BaseRow = {
      id,
      name: o.name ?? (o.disk ? baseNameFrom(o.disk.split("/").pop()!) : "tiny-guest"),
      created: new Date().toISOString(),
      dir: final,
      diskSize: st.size,
      memorySize: machine.ramMiB << 20,
      machine,
      vcpus,
      boot,
      host: ctx.hostChoice.host,
      source,
    };
    base.name = await reg.addBase(base, o.name === undefined ? "suffix" : "fail");
    return { base, seconds: (performance.now() - t0) / 1000, existed, freeMemory: snap.freeMemory };
  } catch (e) {
    await vm?.stop().catch(() => {});
    const err = await withKeptLog(e, ctx.home, join(tmp, "run"), "base");
    await fsp.rm(tmp, { recursive: true, force: true });
    throw err;
  }
}

/** The files of a registered base. */
export function baseFiles(b: BaseRow) {
  return {
    disk: join(b.dir, BASE_FILES.disk),
    memory: join(b.dir, BASE_FILES.memory),
    state: join(b.dir, BASE_FILES.state),
    boot: b.boot ? { kernel: join(b.dir, b.boot.kernel), initrd: join(b.dir, b.boot.initrd), append: b.boot.append } : null,
  };
}
