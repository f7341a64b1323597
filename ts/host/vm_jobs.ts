/**
 * The real-VM flows of the seed, on top of the engine and the VM host layer:
 *
 *   createBase      boot a raw disk (or the built-in guest), wait until ready,
 *                   snapshot memory + device state + disk, index it, register it
 *   overlayFromVm   resume a base on a qcow2 top layer with a copy of its RAM,
 *                   customise it (script / console / VNC), snapshot, encode
 *   synthesizeVm    rebuild a VM from a base and an overlay and resume it with
 *                   its port forwards (or only verify, `--no-run`)
 *
 * Every step runs under an AbortSignal; every exit path stops the VM and
 * removes what it created (temporary directories are `.part` names until
 * they are complete).
 */
import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import { join, resolve } from "node:path";
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import { type LaunchConfig, type MachineConfig, type OverlayMeta, type PortForward, validMachine } from "../overlay/format.ts";
import type { ProgressFn } from "../overlay/io.ts";
import { checkBase } from "../overlay/synthesis.ts";
import { openBase } from "./base_cache.ts";
import { isQcow2 } from "./disk_image.ts";
import { sparseCopy } from "./files.ts";
import type { DiskStride } from "../overlay/base_scan.ts";
import { createOverlayFiles, synthesizeReader, SYNTH_FILES, type CreatedOverlay, type SynthesizedFiles } from "./file_jobs.ts";
import { openOverlay } from "./overlay_files.ts";
import { runTool } from "./process.ts";
import { baseNameFrom, BASE_NAME_RE, type BaseRow, type BootFiles, Registry } from "./registry.ts";
import { buildGuestImage, type GuestImage } from "./vm/guest_image.ts";
import { createQcow2Layer } from "./vm/qcow2_layer.ts";
import { QemuHost } from "./vm/qemu_host.ts";
import { VirshHost } from "./vm/virsh_host.ts";
import type { RunningVm, VmHost, VmSpec } from "./vm/vm_host.ts";
import { readVmRecord, recordAlive, stopVm } from "./vm/vm_records.ts";

/** Where things live in the home. */
export function homeDirs(home: string) {
  return { bases: join(home, "bases"), runs: join(home, "runs"), vms: join(home, "vms"), guest: join(home, "guest") };
}

/**
 * A temporary directory that libvirt's QEMU user can enter (mkdtemp makes
 * 0700 directories, which `--host virsh` cannot use).
 */
export async function sharedTempDir(prefix: string): Promise<string> {
  const d = await fsp.mkdtemp(prefix);
  await fsp.chmod(d, 0o755);
  return d;
}

/** Which host adapter, and how to reach libvirt. */
export interface HostChoice {
  host: "qemu" | "virsh";
  /** virsh --connect URI. */
  connect?: string;
}

/** The adapter for a choice. */
export function makeHost(c: HostChoice): VmHost {
  return c.host === "virsh" ? new VirshHost({ connect: c.connect }) : new QemuHost();
}

/** How the user says "ready" (base) or "done customising" (overlay). */
export interface Interaction {
  /** Wait for this text on the serial console. */
  readyMarker?: string;
  /** Run this shell script in the guest over the serial console (its exit code must be 0). */
  script?: string;
  /** Attach the terminal to the serial console until Ctrl-]. */
  console?: boolean;
  /** Give the VM a VNC display, print its address, and wait for Enter. */
  vnc?: boolean;
  /** Time limit for the marker or the script. */
  timeoutMs?: number;
}

/** Shared job settings. */
export interface VmJobContext {
  core: Core;
  home: string;
  hostChoice: HostChoice;
  progress?: ProgressFn;
  /** Status lines for the user (stderr). */
  say?: (line: string) => void;
  signal?: AbortSignal;
  /** For --console and --vnc: the terminal. */
  stdin?: NodeJS.ReadableStream;
  stdout?: NodeJS.WritableStream;
}

const BASE_FILES = { disk: "disk.raw", memory: "memory.raw", state: "state.bin", kernel: "vmlinux", initrd: "initramfs.gz" } as const;

function say(ctx: VmJobContext, line: string): void {
  ctx.say?.(line);
}

/** Runs the user's chosen interaction against a running VM. */
async function interact(ctx: VmJobContext, vm: RunningVm, how: Interaction, what: string): Promise<void> {
  if (how.vnc) {
    say(ctx, `VNC: connect a viewer to 127.0.0.1:${vm.vncPort} (display :${(vm.vncPort ?? 5900) - 5900}); press Enter here when ${what}`);
    await waitForEnter(ctx);
  }
  if (how.console) {
    say(ctx, `serial console attached; press Ctrl-] when ${what}`);
    await vm.console.attach(ctx.stdin ?? process.stdin, ctx.stdout ?? process.stdout);
  }
  if (how.readyMarker) await vm.waitReady(how.readyMarker, how.timeoutMs ?? 120_000, ctx.signal);
  if (how.script !== undefined) {
    const r = await vm.console.run(how.script, { timeoutMs: how.timeoutMs ?? 600_000, signal: ctx.signal });
    if (r.exitCode !== 0) throw new CloudletError("GUEST", `the script exited with ${r.exitCode} in the guest: ${r.output.trim().split("\n").slice(-8).join(" / ")}`);
  }
}

function waitForEnter(ctx: VmJobContext): Promise<void> {
  const input = ctx.stdin ?? process.stdin;
  return new Promise((resolve, reject) => {
    const done = () => {
      input.off("data", onData);
      ctx.signal?.removeEventListener("abort", onAbort);
      (input as NodeJS.ReadStream).pause?.();
    };
    const onData = (d: Buffer | string) => {
      if (String(d).includes("\n") || String(d).includes("\r")) {
        done();
        resolve();
      }
    };
    const onAbort = () => {
      done();
      reject(ctx.signal!.reason);
    };
    input.on("data", onData);
    ctx.signal?.addEventListener("abort", onAbort, { once: true });
    (input as NodeJS.ReadStream).resume?.();
  });
}

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
}

/** Boots a disk, waits until ready, snapshots and registers it as a base. */
export async function createBase(ctx: VmJobContext, o: CreateBaseOptions): Promise<{ base: BaseRow; seconds: number; existed: boolean }> {
  const t0 = performance.now();
  const dirs = homeDirs(ctx.home);
  if (o.name !== undefined) {
    // Refuse a bad or taken name before minutes of booting, not after.
    if (!BASE_NAME_RE.test(o.name)) throw new CloudletError("BAD_ARGUMENT", `base name "${o.name}" is not allowed: use 1-64 letters, digits, ".", "_" or "-", starting with a letter or digit`);
    const holder = (await new Registry(ctx.home).listBases()).find((b) => b.name === o.name);
    if (holder) throw new CloudletError("BAD_ARGUMENT", `a base named "${o.name}" already exists (${holder.id.slice(0, 12)}): choose another --name, or del-base it first`);
  }
  const machine0: MachineConfig = { machine: o.machine ?? "pc-i440fx-7.2", cpu: o.cpu ?? "qemu64", ramMiB: o.ramMiB ?? 256 };
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
    say(ctx, "building the built-in guest (cached after the first time)");
    const g = (guest = await buildGuestImage({ cacheDir: dirs.guest, signal: ctx.signal, onProgress: (p) => ctx.progress?.({ phase: `guest ${p.phase}`, done: p.done, total: p.total }) }));
    diskSrc = g.rootfs;
    boot = { kernel: BASE_FILES.kernel, initrd: BASE_FILES.initrd, append: g.append };
    source = `built-in guest (Debian, kernel ${g.kernelVersion})`;
    if (!ready.readyMarker && ready.script === undefined && !ready.console && !ready.vnc) ready = { ...ready, readyMarker: g.readyMarker };
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
    say(ctx, `booting (${ctx.hostChoice.host}, ${machine.machine}, ${machine.cpu}, ${machine.ramMiB} MiB)`);
    vm = await makeHost(ctx.hostChoice).start(spec, ctx.signal);
    await interact(ctx, vm, ready, "the guest is ready to become the base");
    say(ctx, "snapshotting memory, device state and disk");
    await vm.snapshot(join(tmp, BASE_FILES.state), ctx.signal);
    vm = null;
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
    return { base, seconds: (performance.now() - t0) / 1000, existed };
  } catch (e) {
    await vm?.stop().catch(() => {});
    await fsp.rm(tmp, { recursive: true, force: true });
    throw e;
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

/** Options for {@link overlayFromVm}. */
export interface OverlayFromVmOptions {
  /** Base id, id prefix or name. */
  base: string;
  /** How the user customises the VM. */
  customize: Interaction;
  /** Port forwards to record (and to offer during customisation). */
  forwards: PortForward[];
  /** App address template for the launch config (`--app-url`). */
  appUrl?: string;
  /** Output path. */
  out: string;
  layout?: "packed" | "split";
  segmentBytes?: number;
  preset?: number;
  /** Base-disk offsets to match against (see DiskStride). */
  diskStride?: DiskStride;
  threads?: number;
}

/** Resumes a base, lets the user customise it, and writes the overlay. */
export async function overlayFromVm(ctx: VmJobContext, o: OverlayFromVmOptions): Promise<CreatedOverlay & { customizeSeconds: number }> {
  const base = await new Registry(ctx.home).getBase(o.base);
  checkHostMatches(base, ctx.hostChoice);
  const files = baseFiles(base);
  const dirs = homeDirs(ctx.home);
  await fsp.mkdir(dirs.runs, { recursive: true });
  const run = await sharedTempDir(join(dirs.runs, "overlay-"));
  let vm: RunningVm | null = null;
  try {
    await createQcow2Layer(files.disk, join(run, "disk.qcow2"), ctx.signal);
    await sparseCopy(files.memory, join(run, "memory.raw"));
    const t0 = performance.now();
    vm = await makeHost(ctx.hostChoice).start(
      {
        name: "custom",
        runDir: join(run, "vm"),
        boot: files.boot,
        disk: { path: join(run, "disk.qcow2"), format: "qcow2" },
        memory: { path: join(run, "memory.raw"), sizeMiB: base.machine.ramMiB },
        machine: base.machine,
        vcpus: base.vcpus,
        // During customisation the guest ports are reachable on free host ports.
        portForwards: o.forwards.map((f) => ({ ...f, hostPort: 0 })),
        incoming: { statePath: files.state },
        vnc: o.customize.vnc ? { port: 0 } : undefined,
      },
      ctx.signal,
    );
    await vm.resume(ctx.signal);
    if (vm.portForwards.length) say(ctx, `while customising: ${vm.portForwards.map((p) => `guest ${p.proto}/${p.guestPort} at 127.0.0.1:${p.hostPort}`).join(", ")}`);
    await interact(ctx, vm, o.customize, "you are done customising");
    const customizeSeconds = (performance.now() - t0) / 1000;
    say(ctx, "snapshotting the customised VM");
    await vm.snapshot(join(run, "state.bin"), ctx.signal);
    vm = null;
    const launch: Partial<LaunchConfig> = { portForwards: o.forwards, memoryMiB: base.machine.ramMiB, vcpus: base.vcpus, ...(o.appUrl !== undefined ? { appUrl: o.appUrl } : {}) };
    const made = await createOverlayFiles(ctx.core, {
      baseDisk: files.disk,
      baseMem: files.memory,
      machine: base.machine,
      baseDir: base.dir,
      disk: join(run, "disk.qcow2"),
      mem: join(run, "memory.raw"),
      state: join(run, "state.bin"),
      out: o.out,
      layout: o.layout,
      launch,
      segmentBytes: o.segmentBytes,
      preset: o.preset,
      diskStride: o.diskStride,
      threads: o.threads,
      home: ctx.home,
      progress: ctx.progress,
      signal: ctx.signal,
    });
    return { ...made, customizeSeconds };
  } finally {
    await vm?.stop().catch(() => {});
    await fsp.rm(run, { recursive: true, force: true });
  }
}

function checkHostMatches(base: BaseRow, c: HostChoice): void {
  if (base.host !== c.host) {
    throw new CloudletError("BAD_ARGUMENT", `base ${base.name} was snapshotted with --host ${base.host}; its snapshot cannot be resumed with --host ${c.host} (device layouts differ)`);
  }
}

/** Options for {@link synthesizeVm}. */
export interface SynthesizeVmOptions {
  base: string;
  overlay: string;
  /** Verify only: rebuild and check everything, then discard; no VM. */
  noRun?: boolean;
  /** Address the port forwards listen on (default 127.0.0.1). */
  hostAddress?: string;
  /** Use fresh host ports instead of the overlay's. */
  autoPorts?: boolean;
  threads?: number;
}

/** A synthesized VM that runs. */
export interface SynthesizedVm {
  vmId: string;
  dir: string;
  host: string;
  ports: PortForward[];
  meta: OverlayMeta;
  ms: { synthesis: number; launch: number };
}

/** Rebuilds the VM of an overlay on a registered base and resumes it (or only verifies). */
export async function synthesizeVm(ctx: VmJobContext, o: SynthesizeVmOptions): Promise<SynthesizedVm | { verified: true; meta: OverlayMeta; ms: { synthesis: number } }> {
  const base = await new Registry(ctx.home).getBase(o.base);
  const overlay = await openOverlay(ctx.core, o.overlay);
  try {
    // A wrong base is refused before anything is written.
    checkBase(overlay.meta, base.id, o.overlay);
    checkHostMatches(base, ctx.hostChoice);
    const dirs = homeDirs(ctx.home);
    await fsp.mkdir(dirs.vms, { recursive: true });
    const vmId = randomBytes(6).toString("hex");
    const dir = join(dirs.vms, vmId);
    const t0 = performance.now();
    try {
      const files = await synthesizeReader(ctx.core, overlay, {
        baseDisk: baseFiles(base).disk,
        baseMem: baseFiles(base).memory,
        machine: base.machine,
        baseDir: base.dir,
        overlay: o.overlay,
        outDir: join(dir, "image"),
        diskFormat: "qcow2",
        // The VM resumes from these files at once; they do not outlive a crash usefully.
        durable: false,
        threads: o.threads,
        home: ctx.home,
        progress: ctx.progress,
        signal: ctx.signal,
      });
      const synthesis = performance.now() - t0;
      if (o.noRun) {
        await fsp.rm(dir, { recursive: true, force: true });
        return { verified: true, meta: overlay.meta, ms: { synthesis } };
      }
      const vm = await launchSynthesized(ctx, base, files, { runDir: join(dir, "vm"), hostAddress: o.hostAddress, autoPorts: o.autoPorts });
      return { vmId, dir, host: o.hostAddress ?? "127.0.0.1", ports: vm.portForwards, meta: overlay.meta, ms: { synthesis, launch: performance.now() - t0 - synthesis } };
    } catch (e) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw e;
    }
  } finally {
    await overlay.close();
  }
}

/**
 * Resumes synthesized files as a VM. Detached by default (it outlives the
 * command); the server keeps its VMs attached, so a crashed server's VMs are
 * orphans that the next start cleans up.
 */
export async function launchSynthesized(ctx: VmJobContext, base: BaseRow, files: SynthesizedFiles, o: { runDir: string; hostAddress?: string; autoPorts?: boolean; name?: string; detach?: boolean }): Promise<RunningVm> {
  const meta = files.meta;
  if (!files.state) throw new CloudletError("BAD_INPUT", "the overlay carries no device state, so its VM cannot be resumed (made in file mode without --state?)", files.dir);
  const vm = await makeHost(ctx.hostChoice).start(
    {
      name: o.name ?? "synth",
      runDir: o.runDir,
      boot: baseFiles(base).boot,
      disk: { path: files.disk, format: "qcow2" },
      memory: { path: files.memory, sizeMiB: Math.round(meta.imageSizes[1] / (1 << 20)) },
      machine: base.machine,
      vcpus: base.vcpus,
      portForwards: meta.launch.portForwards.map((p) => (o.autoPorts ? { ...p, hostPort: 0 } : p)),
      hostAddress: o.hostAddress,
      incoming: { statePath: files.state },
    },
    ctx.signal,
  );
  try {
    await vm.resume(ctx.signal);
    if (o.detach ?? true) await vm.detach();
    return vm;
  } catch (e) {
    await vm.stop().catch(() => {});
    throw e;
  }
}

/** Running (and dead) synthesized VMs; the id is the VM's directory name under `<home>/vms`. */
export async function psVms(home: string) {
  const root = homeDirs(home).vms;
  const out = [];
  for (const id of (await fsp.readdir(root).catch(() => [] as string[])).sort()) {
    const rec = await readVmRecord(join(root, id, "vm"));
    if (!rec) continue;
    out.push({ id, alive: await recordAlive(rec), host: rec.host, hostAddress: rec.hostAddress, ports: rec.portForwards, created: rec.createdAt });
  }
  return out;
}

/**
 * Synthesized VMs (from `cloudlet synthesis` or a server session) whose disk
 * is a qcow2 layer over base `baseId`: deleting the base would break them.
 */
export async function vmsOnBase(home: string, baseId: string): Promise<string[]> {
  const dirs = homeDirs(home);
  const found: string[] = [];
  for (const [root, sub, label] of [[dirs.vms, "image", "VM"], [join(home, "sessions"), "vm", "server session"]] as const) {
    for (const id of await fsp.readdir(root).catch(() => [] as string[])) {
      const launch = await fsp.readFile(join(root, id, sub, SYNTH_FILES.launch), "utf8").catch(() => null);
      if (launch && (JSON.parse(launch) as { baseId?: string }).baseId === baseId) found.push(`${label} ${id}`);
    }
  }
  return found;
}

/** Stops a synthesized VM and removes its files. */
export async function stopSynthesized(home: string, id: string): Promise<void> {
  if (!/^[0-9a-f]{12}$/.test(id)) throw new CloudletError("BAD_ARGUMENT", `"${id}" is not a VM id (see cloudlet ps)`);
  const dir = join(homeDirs(home).vms, id);
  if (!(await fsp.access(dir).then(() => true, () => false))) throw new CloudletError("BAD_ARGUMENT", `no VM "${id}" (see cloudlet ps)`);
  await stopVm(join(dir, "vm"));
  await fsp.rm(dir, { recursive: true, force: true });
}
