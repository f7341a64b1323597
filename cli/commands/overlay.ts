/** `cloudlet overlay`: create a VM overlay: resume BASE, customise it, and keep what changed (or compare image files with --base-disk ...). */
import type { CAC } from "cac";
import { promises as fsp } from "node:fs";
import { basename } from "node:path";
import type { Interaction } from "../../ts/jobs/context.ts";
import { checkWarmup, type Warmup } from "../../ts/jobs/warmup.ts";
import { CloudletError } from "../../ts/errors.ts";
import { loadCoreFromDisk } from "../../ts/node/core_file.ts";
import { createOverlayFiles } from "../../ts/jobs/file_overlay.ts";
import { defaultMachine } from "../../ts/home/machine_defaults.ts";
import { cloudletHome } from "../../ts/home/paths.ts";
import { inspectMeta, formatBytes } from "../../ts/inspect/report.ts";
import { checkAppUrl, collectPortForwards } from "../../ts/overlay/launch.ts";
import { PROFILE_NAMES, PROFILES, type ProfileName } from "../../ts/overlay/codec.ts";
import { fileIdentity } from "../../ts/home/base_cache.ts";
import { overlayFromVm } from "../../ts/jobs/vm_overlay.ts";
import { controller, type Common, bar, out, parseSize, num, diskStride, need, ACCEL_HELP, vmContext, interaction } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("overlay [base]", "Create a VM overlay: resume BASE, customise it, and keep what changed (or compare image files with --base-disk ...)")
    .option("--script <file>", "VM mode: customise by running this shell script in the guest over the serial console")
    .option("--console", "VM mode: customise interactively on the serial console (Ctrl-] when done)")
    .option("--vnc", "VM mode: customise through VNC (press Enter when done)")
    .option("--timeout <s>", "VM mode: time limit for the script (including the wait for the guest's shell) and for the warm-up, seconds")
    .option("--warmup-url <template>", "VM mode: after the snapshot, resume the VM once more (early start's lazy path), poll this address until it answers 2xx/3xx, and write the memory pages and disk chunks it touched first, as the boot set: 'http://{host}:{port:80}/' as for --app-url")
    .option("--warmup-script <file>", "VM mode: as --warmup-url, but the warm-up runs this shell script in the guest over the serial console")
    .option("--no-free-memory", "VM mode: snapshot at once, without waiting for the guest to report its free memory, so free pages travel in the overlay (default: wait for it)")
    .option("--login <user[:file]>", "VM mode: log in as USER (password: first line of FILE) when the serial console asks for a login")
    .option("--host <host>", "VM mode: qemu (default) or virsh")
    .option("--connect <uri>", "VM mode: local libvirt URI for --host virsh (default qemu:///system)")
    .option("--accel <accel>", `VM mode: ${ACCEL_HELP}`)
    .option("--base-disk <file>", "Base disk image (raw)")
    .option("--base-mem <file>", "Base memory image")
    .option("--disk <file>", "Custom disk: raw, or a qcow2 top layer over the base disk")
    .option("--mem <file>", "Custom memory image")
    .option("--state <file>", "Custom device state (QEMU migration stream), stored in the overlay")
    .option("-o, --output <path>", "Output: NAME.overlay (packed, default) or NAME.overlay-meta (seed layout)")
    .option("--layout <layout>", "packed | split, when -o has no suffix", { default: "packed" })
    .option("--forward <spec>", "Port forward to record, e.g. tcp:2222::22 (repeatable); also -- -redir SPEC")
    .option("--app-url <template>", "Where the VM's app answers, for the phone page's Open button: 'http://{host}:{port:80}/' ({port:N}: the host port forwarded to guest port N)")
    .option("--profile <name>", "Size/speed trade: fast (xz -1), balanced (default: 1 MiB segments, xz -6) or small (4 MiB segments); --segment-size and --preset override it")
    .option("--segment-size <size>", "Payload bytes per segment (default: from --profile, 1M)")
    .option("--preset <n>", "xz preset 0-9 (default: from --profile, 6; 7-9 equal 6 unless segments exceed 8 MiB, as the dictionary is capped to the segment)")
    .option("--machine <type>", "QEMU machine type of the base (part of the base id)")
    .option("--cpu <model>", "QEMU CPU model of the base (part of the base id)")
    .option("--disk-stride <bytes>", "Match chunks against base-disk blocks every 4096 (default) or every 512 bytes (for disks whose file system is not 4 KiB-aligned; 8x the index)", { default: 4096 })
    .example("cloudlet overlay tiny --script examples/webapp.sh --warmup-url 'http://{host}:{port:80}/' -o app.overlay -- -redir tcp:8080::80")
    .example("cloudlet overlay --base-disk base.raw --base-mem base.mem --disk top.qcow2 --mem custom.mem -o app -- -redir tcp:8080::80")
    .action(async (baseRef: string | undefined, o: Common & Record<string, unknown>) => {
      const profile = profileOptions(o);
      const core = await loadCoreFromDisk();
      const home = cloudletHome(o.home as string | undefined);
      const forwardSpecs = ([] as string[]).concat((o.forward as string | string[] | undefined) ?? []);
      if (baseRef !== undefined) {
        if (o.baseDisk || o.baseMem || o.disk || o.mem) throw new CloudletError("BAD_ARGUMENT", "give either BASE (VM mode) or --base-disk/--base-mem/--disk/--mem (file mode), not both");
        const how = await interaction(o, "script");
        if (how.script === undefined && !how.console && !how.vnc) throw new CloudletError("BAD_ARGUMENT", "VM mode needs --script FILE, --console or --vnc to customise the VM");
        const p = bar(o);
        const ctx = vmContext(o, p, core);
        const forwards = collectPortForwards(forwardSpecs, (o["--"] as string[]) ?? []);
        const appUrl = o.appUrl === undefined ? undefined : checkAppUrl(String(o.appUrl), forwards);
        const warmup = await warmupOption(o, how);
        // Usage errors before anything runs (overlayFromVm checks again, for library callers).
        if (warmup) checkWarmup(warmup, forwards);
        const r = await overlayFromVm(ctx, {
          base: baseRef,
          customize: how,
          forwards,
          appUrl,
          out: need(o.output, "-o"),
          layout: o.layout === "split" ? "split" : "packed",
          ...profile,
          diskStride: diskStride(o.diskStride),
          threads: o.threads ? num(o.threads, "--threads", 1, 256) : undefined,
          freeMemory: o.freeMemory !== false,
          warmup,
        });
        p.done();
        const report = inspectMeta(r.meta, r.path, r.bytes);
        const boot = report.bootSet;
        const w = r.warmup;
        out(o, { path: r.path, layout: r.layout, bytes: r.bytes, seconds: r.seconds, customizeSeconds: r.customizeSeconds, baseId: r.meta.base.id, segments: r.meta.segments.length, classes: report.classTotals, launch: r.meta.launch, freeMemory: r.freeMemory, ...(boot ? { bootSet: boot } : {}), ...(w ? { warmup: w } : {}) },
          `wrote ${r.path}: ${formatBytes(r.bytes)} in ${r.meta.segments.length} segment(s) (rebuilt ${formatBytes(report.sizes.rebuilt)}); encoding took ${r.seconds.toFixed(1)} s` +
            (boot && w ? `\nboot set: ${boot.segments} leading segment(s), ${formatBytes(boot.compressed)} (${(boot.fraction * 100).toFixed(1)}% of the segments), ${boot.pages} memory pages and ${boot.chunks} disk chunks the warm-up touched (and ${boot.basePages} base memory pages listed); recording took ${w.recordSeconds.toFixed(1)} s (first encode ${w.firstEncodeSeconds.toFixed(1)} s, VM resumed in ${w.resumeSeconds.toFixed(1)} s, warm-up ${w.warmupSeconds.toFixed(1)} s)` : ""));
        return;
      }
      if (o.warmupUrl !== undefined || o.warmupScript !== undefined) throw new CloudletError("BAD_ARGUMENT", "--warmup-url and --warmup-script need VM mode (cloudlet overlay BASE ...): file mode has no VM to warm up, and keeps image order");
      const baseMem = need(o.baseMem, "--base-mem");
      const machine = defaultMachine((await fileIdentity(baseMem)).size, o.machine as string | undefined, o.cpu as string | undefined);
      const forwards = ([] as string[]).concat((o.forward as string | string[] | undefined) ?? []);
      const layout = o.layout === "split" ? "split" : o.layout === "packed" ? "packed" : (() => {
        throw new CloudletError("BAD_ARGUMENT", `--layout must be packed or split, not "${o.layout}"`);
      })();
      const p = bar(o);
      const r = await createOverlayFiles(core, {
        baseDisk: need(o.baseDisk, "--base-disk"),
        baseMem,
        machine,
        disk: need(o.disk, "--disk"),
        mem: need(o.mem, "--mem"),
        state: o.state as string | undefined,
        out: need(o.output, "-o"),
        layout,
        launch: (() => {
          const portForwards = collectPortForwards(forwards, (o["--"] as string[]) ?? []);
          return { portForwards, ...(o.appUrl === undefined ? {} : { appUrl: checkAppUrl(String(o.appUrl), portForwards) }) };
        })(),
        ...profile,
        diskStride: diskStride(o.diskStride),
        threads: o.threads ? num(o.threads, "--threads", 1, 256) : undefined,
        home,
        progress: p.update,
        signal: controller.signal,
      });
      p.done();
      const report = inspectMeta(r.meta, r.path, r.bytes);
      out(o, { path: r.path, layout: r.layout, bytes: r.bytes, seconds: r.seconds, baseId: r.meta.base.id, segments: r.meta.segments.length, classes: report.classTotals },
        `wrote ${r.path} (${r.layout}): ${formatBytes(r.bytes)} in ${r.meta.segments.length} segment(s), rebuilt ${formatBytes(report.sizes.rebuilt)}, ${r.seconds.toFixed(1)} s`);
    });
}

/** The warm-up from --warmup-url / --warmup-script (with --timeout and --login), or undefined. */
async function warmupOption(o: Record<string, unknown>, how: Interaction): Promise<Warmup | undefined> {
  if (o.warmupUrl === undefined && o.warmupScript === undefined) return undefined;
  if (o.warmupUrl !== undefined && o.warmupScript !== undefined) throw new CloudletError("BAD_ARGUMENT", "give --warmup-url or --warmup-script, not both");
  const timeoutMs = how.timeoutMs;
  if (o.warmupUrl !== undefined) return { url: String(o.warmupUrl), timeoutMs };
  const file = String(o.warmupScript);
  const text = await fsp.readFile(file, "utf8").catch(() => {
    throw new CloudletError("MISSING_INPUT", "cannot read the warm-up script", file);
  });
  return { script: { text, name: basename(file) }, login: how.login, timeoutMs };
}

/** Segment size and preset from --profile, each overridden by --segment-size / --preset when given. */
function profileOptions(o: Record<string, unknown>): { segmentBytes: number; preset: number } {
  const name = (o.profile ?? "balanced") as string;
  if (!(PROFILE_NAMES as readonly string[]).includes(name)) throw new CloudletError("BAD_ARGUMENT", `--profile must be ${PROFILE_NAMES.join(", ")}, not "${name}"`);
  const p = PROFILES[name as ProfileName];
  return {
    segmentBytes: parseSize(o.segmentSize as string | undefined, "--segment-size") ?? p.segmentBytes,
    preset: o.preset !== undefined ? num(o.preset, "--preset", 0, 9) : p.preset,
  };
}
