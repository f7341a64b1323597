/** VM synthesis: rebuild the custom VM from its base and an overlay, then launch it. */
import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { CloudletError } from "../errors.ts";
import { type BootSet, type OverlayMeta, type PortForward } from "../overlay/format.ts";
import { checkBase } from "../overlay/synthesis.ts";
import { synthesizeReader } from "./file_synthesis.ts";
import { openOverlay } from "../node/overlay_files.ts";
import { type BaseRow, Registry } from "../home/registry.ts";
import { type VmJobContext } from "./context.ts";
import { homePaths } from "../home/paths.ts";
import { type HostChoice } from "../vm/host_choice.ts";
import { baseFiles } from "./base_create.ts";
import { launchSynthesized } from "./vm_launch.ts";
import { earlyStartBlocker, synthesizeEarly, type EarlyStartMode, type EarlyStartReport } from "./early_start.ts";
import { cleanupAbandonedFills } from "./vm_admin.ts";
import { say } from "./context.ts";

export function checkHostMatches(base: BaseRow, c: HostChoice): void {
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
  /** Resume before the overlay is applied and fill in the background (qemu host; see docs/postcopy.md). */
  earlyStart?: EarlyStartMode;
  /** Early start: apply the overlay's boot set (format 2) before the resume (default true; `--no-boot-set` for comparisons). */
  bootSet?: boolean;
}

/** A synthesized VM that runs. */
export interface SynthesizedVm {
  vmId: string;
  dir: string;
  host: string;
  ports: PortForward[];
  meta: OverlayMeta;
  ms: { synthesis: number; launch: number };
  /** Early start: what it measured. */
  early?: EarlyStartReport;
  /** Early start was asked for but could not run: why (full synthesis ran instead). */
  earlyFallback?: string;
}

/** Early start's boot set options from a meta's boot set (none when absent). */
export function bootOptions(b: BootSet | undefined): { bootSegments: number; bootBasePages: number[] } {
  return { bootSegments: b?.segments ?? 0, bootBasePages: (b?.basePages ?? []).flatMap(([first, n]) => Array.from({ length: n }, (_, i) => first + i)) };
}

/** Rebuilds the VM of an overlay on a registered base and resumes it (or only verifies). */
export async function synthesizeVm(ctx: VmJobContext, o: SynthesizeVmOptions): Promise<SynthesizedVm | { verified: true; meta: OverlayMeta; ms: { synthesis: number } }> {
  const base = await new Registry(ctx.home).getBase(o.base);
  const overlay = await openOverlay(ctx.core, o.overlay);
  try {
    // A wrong base is refused before anything is written.
    checkBase(overlay.meta, base.id, o.overlay);
    // A VM left filling by a cloudlet that died is frozen: end it before starting another.
    await cleanupAbandonedFills(ctx.home);
    let earlyFallback: string | undefined;
    if (o.earlyStart && !o.noRun) {
      earlyFallback = (await earlyStartBlocker(ctx.hostChoice, overlay.meta)) ?? undefined;
      if (earlyFallback && o.earlyStart === "require") throw new CloudletError("BAD_ARGUMENT", `early start cannot run here: ${earlyFallback} (--early-start=require)`);
      if (earlyFallback) say(ctx, `early start is not possible here: ${earlyFallback}; falling back to full synthesis`);
    }
    checkHostMatches(base, ctx.hostChoice);
    if (o.earlyStart && !o.noRun && !earlyFallback) return await synthesizeEarly(ctx, base, overlay, { overlayPath: o.overlay, hostAddress: o.hostAddress, autoPorts: o.autoPorts, threads: o.threads, ...bootOptions(o.bootSet === false ? undefined : overlay.meta.bootSet) });
    const dirs = homePaths(ctx.home);
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
      return { vmId, dir, host: o.hostAddress ?? "127.0.0.1", ports: vm.portForwards, meta: overlay.meta, ms: { synthesis, launch: performance.now() - t0 - synthesis }, ...(earlyFallback ? { earlyFallback } : {}) };
    } catch (e) {
      await fsp.rm(dir, { recursive: true, force: true });
      throw e;
    }
  } finally {
    await overlay.close();
  }
}
