/** VM overlay: resume a base, let the user customise it (script, console or VNC), snapshot it and write the overlay. */
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { type LaunchConfig, type PortForward } from "../overlay/format.ts";
import { sparseCopy } from "../node/files.ts";
import type { DiskStride } from "../overlay/base_scan.ts";
import { createOverlayFiles, type CreatedOverlay } from "./file_overlay.ts";
import { Registry } from "../home/registry.ts";
import { createQcow2Layer } from "../vm/qcow2_layer.ts";
import type { FreeMemoryReport, RunningVm } from "../vm/vm_host.ts";
import { withKeptLog, accelShown, type Interaction, type VmJobContext, say, sayFreeMemory, interact } from "./context.ts";
import { homePaths } from "../home/paths.ts";
import { sharedTempDir } from "../node/files.ts";
import { makeHost } from "../vm/host_choice.ts";
import { baseFiles } from "./base_create.ts";
import { checkHostMatches } from "./vm_synthesis.ts";
import { CloudletError } from "../errors.ts";
import { openOverlay } from "../node/overlay_files.ts";
import type { WorkingSetOrder } from "../overlay/writer.ts";
import { checkWarmup, recordWorkingSet, type Warmup, warmupBlocker } from "./warmup.ts";

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
  /** Wait for free page reporting before the snapshot (default true; `--no-free-memory`). */
  freeMemory?: boolean;
  /** Record the working set with this warm-up after the snapshot, and write it first as the boot set (`--warmup-url`, `--warmup-script`). */
  warmup?: Warmup;
}

/** What the working-set recording cost and found (see {@link overlayFromVm}). */
export interface WarmupReport {
  /** Why: the meta's boot_set.reason. */
  reason: string;
  /** Seconds of the first encode (image order, for the lazy VM to run from). */
  firstEncodeSeconds: number;
  /** Seconds from the start of the lazy VM to its resume, and of the warm-up itself. */
  resumeSeconds: number;
  warmupSeconds: number;
  /** Seconds of the whole recording (first encode, lazy VM, warm-up, clean-up); the final encode is `seconds`. */
  recordSeconds: number;
  /** Distinct memory pages and disk chunks the warm-up touched (stored in the overlay or not). */
  pagesTouched: number;
  chunksTouched: number;
}

/** Resumes a base, lets the user customise it, and writes the overlay. */
export async function overlayFromVm(ctx: VmJobContext, o: OverlayFromVmOptions): Promise<CreatedOverlay & { customizeSeconds: number; freeMemory: FreeMemoryReport | null; snapshotMs: number; warmup?: WarmupReport }> {
  const base = await new Registry(ctx.home).getBase(o.base);
  checkHostMatches(base, ctx.hostChoice);
  const files = baseFiles(base);
  // Before the customisation, so that a warm-up that cannot run costs the user nothing.
  const reason = o.warmup ? checkWarmup(o.warmup, o.forwards) : null;
  const blocker = o.warmup ? await warmupBlocker(ctx.hostChoice, (await fsp.stat(files.disk)).size) : null;
  if (blocker) throw new CloudletError("BAD_ARGUMENT", `the warm-up cannot run here: ${blocker} (it resumes the VM through early start's lazy path); leave out --warmup-url/--warmup-script to write the overlay without a boot set`);
  const dirs = homePaths(ctx.home);
  await fsp.mkdir(dirs.runs, { recursive: true });
  const run = await sharedTempDir(join(dirs.runs, "overlay-"));
  let vm: RunningVm | null = null;
  try {
    await createQcow2Layer(files.disk, join(run, "disk.qcow2"), ctx.signal);
    await sparseCopy(files.memory, join(run, "memory.raw"));
    const t0 = performance.now();
    const host = makeHost(ctx.hostChoice);
    say(ctx, `resuming base ${base.name} (${base.host}, ${await accelShown(ctx, host)})`);
    vm = await host.start(
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
    const snap = await vm.snapshot(join(run, "state.bin"), ctx.signal, { settleFreeMemory: o.freeMemory !== false });
    vm = null;
    sayFreeMemory(ctx, base.machine, snap.freeMemory, o.freeMemory === false);
    const launch: Partial<LaunchConfig> = { portForwards: o.forwards, memoryMiB: base.machine.ramMiB, vcpus: base.vcpus, ...(o.appUrl !== undefined ? { appUrl: o.appUrl } : {}) };
    const encode = (out: string, layout: "packed" | "split" | undefined, workingSet?: WorkingSetOrder) =>
      createOverlayFiles(ctx.core, {
        baseDisk: files.disk,
        baseMem: files.memory,
        machine: base.machine,
        baseDir: base.dir,
        disk: join(run, "disk.qcow2"),
        mem: join(run, "memory.raw"),
        state: join(run, "state.bin"),
        out,
        layout,
        launch,
        segmentBytes: o.segmentBytes,
        preset: o.preset,
        diskStride: o.diskStride,
        threads: o.threads,
        home: ctx.home,
        progress: ctx.progress,
        signal: ctx.signal,
        workingSet,
      });
    let warmup: WarmupReport | undefined;
    let workingSet: WorkingSetOrder | undefined;
    if (o.warmup && reason) {
      // The simple way: an overlay in image order for the lazy VM to run from,
      // then the real one with what the warm-up touched first (a second encode).
      const t1 = performance.now();
      say(ctx, "warm-up: writing a first overlay in image order to resume the VM from");
      const first = await encode(join(run, "warmup.overlay"), "packed");
      const firstEncodeSeconds = first.seconds;
      const reader = await openOverlay(ctx.core, first.path);
      let rec;
      try {
        rec = await recordWorkingSet(ctx, base, reader, { overlayPath: first.path, warmup: o.warmup, reason, threads: o.threads });
      } finally {
        await reader.close();
        await fsp.rm(first.path, { force: true });
      }
      workingSet = rec.order;
      warmup = { reason, firstEncodeSeconds, resumeSeconds: rec.resumedMs / 1000, warmupSeconds: rec.warmupMs / 1000, recordSeconds: (performance.now() - t1) / 1000, pagesTouched: rec.pages, chunksTouched: rec.chunks };
      say(ctx, "warm-up: writing the overlay with the working set first");
    }
    const made = await encode(o.out, o.layout, workingSet);
    return { ...made, customizeSeconds, freeMemory: snap.freeMemory, snapshotMs: snap.ms.total, ...(warmup ? { warmup } : {}) };
  } catch (e) {
    await vm?.stop().catch(() => {});
    vm = null;
    throw await withKeptLog(e, ctx.home, join(run, "vm"), "overlay");
  } finally {
    await vm?.stop().catch(() => {});
    await fsp.rm(run, { recursive: true, force: true });
  }
}
