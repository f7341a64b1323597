/** `cloudlet synthesis`: rebuild the custom VM from BASE and OVERLAY and resume it (or rebuild files with --base-disk ... -o DIR). */
import type { CAC } from "cac";
import { CloudletError } from "../../ts/errors.ts";
import { loadCoreFromDisk } from "../../ts/node/core_file.ts";
import { defaultMachine } from "../../ts/home/machine_defaults.ts";
import { synthesizeFiles } from "../../ts/jobs/file_synthesis.ts";
import { cloudletHome } from "../../ts/home/paths.ts";
import { fileIdentity } from "../../ts/home/base_cache.ts";
import { synthesizeVm } from "../../ts/jobs/vm_synthesis.ts";
import { baseFiles } from "../../ts/jobs/base_create.ts";
import { openOverlay } from "../../ts/node/overlay_files.ts";
import { type BaseRow, Registry } from "../../ts/home/registry.ts";
import { formatBytes } from "../../ts/inspect/report.ts";
import { controller, type Common, bar, out, num, need, ACCEL_HELP, vmContext } from "../options.ts";

type VmResult = Awaited<ReturnType<typeof synthesizeVm>>;

/** Prints the result of VM mode. */
function report(o: Common & Record<string, unknown>, r: VmResult): void {
  if ("verified" in r) {
    out(o, { verified: true, baseId: r.meta.base.id, ms: r.ms }, `verified: the overlay rebuilds correctly on its base (${(r.ms.synthesis / 1000).toFixed(1)} s); no VM started (--no-run)`);
    return;
  }
  const where = r.ports.map((p) => `  ${p.proto} ${r.host}:${p.hostPort} -> guest port ${p.guestPort}`).join("\n") || "  (no port forwards)";
  if (r.early) {
    const e = r.early;
    const b = r.meta.bootSet;
    const used = b && o.bootSet !== false;
    const bootBytes = used ? r.meta.segments.slice(0, b.segments).reduce((t, s) => t + s.compressedSize, 0) : 0;
    const basePages = used ? b.basePages.reduce((t, r) => t + r[1], 0) : 0;
    const bootSet = used ? { segments: b.segments, bytes: bootBytes, pages: b.pages, chunks: b.chunks, basePages, reason: b.reason } : null;
    const bootLine = used
      ? `boot set: ${b.segments} of ${e.segments} segments (${formatBytes(bootBytes)}; ${b.pages} pages, ${b.chunks} disk chunks) and ${basePages} base pages applied before the resume`
      : b ? "boot set: not used (--no-boot-set)" : "boot set: none in this overlay";
    out(o, { vmId: r.vmId, endpoint: r.host, ports: r.ports, dir: r.dir, ms: r.ms, earlyStart: { ...e, bootSet } },
      `${bootLine}\nVM ${r.vmId} resumed after ${(e.resumedMs / 1000).toFixed(1)} s and was fully local after ${(e.localMs / 1000).toFixed(1)} s (early start); fetched on demand: ${e.pagesOnDemand} memory pages, ${e.chunksOnDemand} disk chunks (${e.segmentsOnDemand} of ${e.segments} segments raised). Reach it at:\n${where}\nstop it with: cloudlet stop ${r.vmId}`);
    return;
  }
  out(o, { vmId: r.vmId, endpoint: r.host, ports: r.ports, dir: r.dir, ms: r.ms, ...(r.earlyFallback ? { earlyStartFallback: r.earlyFallback } : {}) }, `VM ${r.vmId} resumed in ${((r.ms.synthesis + r.ms.launch) / 1000).toFixed(1)} s (synthesis ${(r.ms.synthesis / 1000).toFixed(1)} s, launch ${(r.ms.launch / 1000).toFixed(1)} s). Reach it at:\n${where}\nstop it with: cloudlet stop ${r.vmId}`);
}

/** --early-start: absent, "auto" (no value), or "require". */
function earlyStartMode(o: Record<string, unknown>): "auto" | "require" | undefined {
  const v = o.earlyStart;
  if (v === undefined || v === false) return undefined;
  if (v === true) return "auto";
  if (v === "require") return "require";
  throw new CloudletError("BAD_ARGUMENT", `--early-start takes no value or "require", not "${v}"`);
}

/** The registered base the overlay at `path` was made on; a clear error naming its id when the registry lacks it. */
async function registryBaseOf(core: Awaited<ReturnType<typeof loadCoreFromDisk>>, home: string, path: string): Promise<BaseRow> {
  const ov = await openOverlay(core, path);
  const id = ov.meta.base.id;
  await ov.close();
  const b = await new Registry(home).findBaseById(id);
  if (!b) throw new CloudletError("BASE_UNKNOWN", `the overlay's base ${id} is not in the registry of ${home} (see cloudlet list-base; or give BASE, or --base-disk and --base-mem)`, path);
  return b;
}

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("synthesis [base] [overlay]", "Rebuild the custom VM from BASE and OVERLAY and resume it (BASE defaults to the overlay's base in the registry; or rebuild files with -o DIR)")
    .option("--no-run", "VM mode: only verify that the overlay rebuilds correctly on the base (default: run the VM)")
    .option("--bind <addr>", "VM mode: address the port forwards listen on", { default: "127.0.0.1" })
    .option("--auto-ports", "VM mode: use free host ports instead of the overlay's")
    .option("--host <host>", "VM mode: qemu (default) or virsh")
    .option("--connect <uri>", "VM mode: local libvirt URI for --host virsh (default qemu:///system)")
    .option("--accel <accel>", `VM mode: ${ACCEL_HELP}`)
    .option("--early-start [mode]", "VM mode, qemu host: resume the VM before the overlay is applied and fill it in the background (memory by postcopy, disk by NBD); falls back to full synthesis where it cannot run, unless --early-start=require; the overlay's boot set (made by overlay --warmup-url/--warmup-script) is applied before the resume")
    .option("--no-boot-set", "VM mode, --early-start: ignore the overlay's boot set and resume on the device state alone, for comparisons (default: apply the boot set)")
    .alias("synthesize")
    .option("--base-disk <file>", "Base disk image (raw; default: the overlay's base in the registry)")
    .option("--base-mem <file>", "Base memory image")
    .option("-o, --output <dir>", "Output directory (disk.qcow2 or disk.raw, memory.raw, state.bin, launch.json)")
    .option("--disk-format <fmt>", "qcow2 (over the base disk, default; needs a disk size that is a multiple of 512) or raw", { default: "qcow2" })
    .option("--machine <type>", "File mode: QEMU machine type of the base (part of the base id; default as for overlay)")
    .option("--cpu <model>", "File mode: QEMU CPU model of the base (part of the base id; default as for overlay)")
    .option("--force", "Replace a non-empty output directory (never one that is, holds or lies inside an input)")
    .example("cloudlet synthesis app.overlay")
    .example("cloudlet synthesis app.overlay -o out/")
    .example("cloudlet synthesis --base-disk base.raw --base-mem base.mem app.overlay -o out/")
    .action(async (first: string | undefined, second: string | undefined, o: Common & Record<string, unknown>) => {
      const core = await loadCoreFromDisk();
      if (second !== undefined) {
        if (o.baseDisk || o.baseMem) throw new CloudletError("BAD_ARGUMENT", "give either BASE OVERLAY (VM mode) or --base-disk/--base-mem OVERLAY -o DIR (file mode)");
        const p = bar(o);
        const ctx = vmContext(o, p, core);
        const r = await synthesizeVm(ctx, { base: first!, overlay: second, noRun: o.run === false, hostAddress: o.bind as string, autoPorts: Boolean(o.autoPorts), threads: o.threads ? num(o.threads, "--threads", 1, 256) : undefined, earlyStart: earlyStartMode(o), bootSet: o.bootSet !== false });
        p.done();
        report(o, r);
        return;
      }
      const overlay = first;
      // No base given: the overlay's base id finds it in the registry (VM mode without -o, file mode with -o).
      const fromRegistry = !o.baseDisk && !o.baseMem && overlay !== undefined ? await registryBaseOf(core, cloudletHome(o.home as string | undefined), overlay) : null;
      if (fromRegistry && !o.output) {
        const p = bar(o);
        const ctx = vmContext(o, p, core);
        const r = await synthesizeVm(ctx, { base: fromRegistry.id, overlay: overlay!, noRun: o.run === false, hostAddress: o.bind as string, autoPorts: Boolean(o.autoPorts), threads: o.threads ? num(o.threads, "--threads", 1, 256) : undefined, earlyStart: earlyStartMode(o), bootSet: o.bootSet !== false });
        p.done();
        report(o, r);
        return;
      }
      const fmt = o.diskFormat === "raw" ? "raw" : o.diskFormat === "qcow2" ? "qcow2" : (() => {
        throw new CloudletError("BAD_ARGUMENT", `--disk-format must be qcow2 or raw, not "${o.diskFormat}"`);
      })();
      const p = bar(o);
      const baseMem = fromRegistry ? baseFiles(fromRegistry).memory : need(o.baseMem, "--base-mem");
      // The same default as `overlay` in file mode, so the machine is part of what is checked.
      const machine = fromRegistry ? fromRegistry.machine : defaultMachine((await fileIdentity(baseMem)).size, o.machine as string | undefined, o.cpu as string | undefined);
      const r = await synthesizeFiles(core, {
        baseDisk: fromRegistry ? baseFiles(fromRegistry).disk : need(o.baseDisk, "--base-disk"),
        baseMem,
        machine,
        overlay: need(overlay, "OVERLAY"),
        outDir: need(o.output, "-o"),
        diskFormat: fmt,
        force: Boolean(o.force),
        threads: o.threads ? num(o.threads, "--threads", 1, 256) : undefined,
        home: cloudletHome(o.home as string | undefined),
        progress: p.update,
        signal: controller.signal,
      });
      p.done();
      out(o, { dir: r.dir, disk: r.disk, memory: r.memory, state: r.state, chunks: { disk: r.chunks[0], memory: r.chunks[1], state: r.chunks[2] }, seconds: r.seconds, launch: r.meta.launch },
        `rebuilt ${r.dir}: ${r.disk}, ${r.memory}${r.state ? `, ${r.state}` : ""} (${r.chunks[0]} disk + ${r.chunks[1]} memory chunks applied, ${r.seconds.toFixed(1)} s); every segment verified`);
    });
}
