/**
 * The `cloudlet` command. Thin: it parses arguments, draws progress and
 * prints results; the work is done by the library in ts/.
 */
import { cac } from "cac";
import { isCloudletError, CloudletError, exitCodeOf } from "../ts/errors.ts";
import { printable, printableJson } from "../ts/printable.ts";
import { loadCoreFromDisk } from "../ts/host/core_file.ts";
import { CLOUDLET_VERSION, createOverlayFiles, defaultMachine, synthesizeFiles } from "../ts/host/file_jobs.ts";
import { cloudletHome, indexCacheDir } from "../ts/host/home.ts";
import { openOverlay } from "../ts/host/overlay_files.ts";
import { inspectMeta, formatBytes, renderReport } from "../ts/inspect/report.ts";
import { collectPortForwards } from "../ts/overlay/launch.ts";
import { verifyOverlay, type VerifyResult } from "../ts/inspect/verify.ts";
import type { DiskStride } from "../ts/overlay/base_scan.ts";
import { PROFILE_NAMES, PROFILES, type ProfileName } from "../ts/overlay/codec.ts";
import type { Core } from "../ts/core/core.ts";
import type { MachineConfig } from "../ts/overlay/format.ts";
import type { ProgressFn } from "../ts/overlay/io.ts";
import { FileSource } from "../ts/host/files.ts";
import { WorkerCodec } from "../ts/host/codec_pool.ts";
import { cacheDirFor, fileIdentity, openBase } from "../ts/host/base_cache.ts";
import { ProgressBar } from "./progress.ts";
import { startInspectServer } from "../ts/host/inspect_server.ts";
import { HomeBackend } from "../ts/host/server_backend.ts";
import { loadOrCreateToken, SynthesisServer } from "../ts/server/server.ts";
import { CloudletClient, sendOverlay } from "../ts/server/client.ts";
import { DEFAULT_PORT } from "../ts/server/protocol.ts";
import { announce, discover } from "../ts/server/discovery.ts";
import { hostname } from "node:os";
import { join as pathJoin } from "node:path";
import { baseFiles, createBase, overlayFromVm, psVms, stopSynthesized, synthesizeVm, vmsOnBase, type HostChoice, type Interaction, type VmJobContext } from "../ts/host/vm_jobs.ts";
import { exportBase, importBase } from "../ts/host/base_archive.ts";
import { Registry } from "../ts/host/registry.ts";
import { buildGuestImage } from "../ts/host/vm/guest_image.ts";
import { requireLocalUri } from "../ts/host/vm/virsh_host.ts";
import { homeDirs } from "../ts/host/vm_jobs.ts";
import { promises as fsp } from "node:fs";

const cli = cac("cloudlet");
const controller = new AbortController();
let interrupted = false;
process.on("SIGINT", () => {
  if (interrupted) process.exit(130);
  interrupted = true;
  process.stderr.write("\ncloudlet: interrupted, cleaning up (Ctrl-C again to quit now)\n");
  controller.abort(new CloudletError("CANCELLED", "cancelled by the user"));
});
process.on("SIGTERM", () => controller.abort(new CloudletError("CANCELLED", "terminated")));

/** Options every command takes. */
interface Common {
  json?: boolean;
  home?: string;
  threads?: number;
}

function bar(o: Common): ProgressBar {
  return new ProgressBar(!o.json && Boolean(process.stderr.isTTY));
}

/** Prints a result: JSON, or text whose lines hold no control character (names and strings may come from files). */
function out(o: Common, json: unknown, text: string): void {
  process.stdout.write(o.json ? printableJson(json, 2) + "\n" : text.split("\n").map(printable).join("\n") + "\n");
}

/** Parses sizes like 1M, 512K, 4096. */
function parseSize(v: string | number | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+)([KMG]?)(i?B)?$/i.exec(String(v));
  if (!m) throw new CloudletError("BAD_ARGUMENT", `bad ${what} "${v}" (use e.g. 1M or 262144)`);
  return Number(m[1]) * { "": 1, K: 1024, M: 1 << 20, G: 1 << 30 }[m[2].toUpperCase() as "" | "K" | "M" | "G"];
}

/** A numeric option, checked: a typo must not become NaN and silently disable a limit. */
function num(v: unknown, flag: string, min: number, max = Number.MAX_SAFE_INTEGER, integer = true): number {
  const n = Number(v);
  if (v === undefined || v === "" || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw new CloudletError("BAD_ARGUMENT", `${flag} must be ${integer ? "an integer" : "a number"} from ${min} to ${max}, not "${v}"`);
  }
  return n;
}

/** --disk-stride: 4096 or 512. */
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

function diskStride(v: unknown): DiskStride {
  const n = Number(v ?? 4096);
  if (n !== 4096 && n !== 512) throw new CloudletError("BAD_ARGUMENT", `--disk-stride must be 4096 or 512, not "${v}"`);
  return n;
}

/** Waits for Ctrl-C (or SIGTERM), keeping the process alive meanwhile. */
function untilInterrupted(): Promise<void> {
  // A pending promise alone does not keep Node's event loop alive; a timer does.
  const keep = setInterval(() => {}, 1 << 30);
  return new Promise<void>((resolve) => {
    const done = () => {
      clearInterval(keep);
      resolve();
    };
    if (controller.signal.aborted) return done();
    controller.signal.addEventListener("abort", done, { once: true });
  });
}

/** The last value of an option given more than once (cac makes an array). */
function last<T>(v: T | T[] | undefined): T | undefined {
  return Array.isArray(v) ? v[v.length - 1] : v;
}

function need(v: unknown, flag: string): string {
  if (typeof v !== "string" || !v) throw new CloudletError("BAD_ARGUMENT", `${flag} is required (see cloudlet --help)`);
  return v;
}

function hostChoice(o: Record<string, unknown>): HostChoice {
  const h = (o.host as string | undefined) ?? "qemu";
  if (h !== "qemu" && h !== "virsh") throw new CloudletError("BAD_ARGUMENT", `--host must be qemu or virsh, not "${h}"`);
  if (h === "virsh" && o.connect) requireLocalUri(o.connect as string);
  return { host: h, connect: o.connect as string | undefined };
}

function vmContext(o: Common & Record<string, unknown>, p: ProgressBar, core: VmJobContext["core"]): VmJobContext {
  return {
    core,
    home: cloudletHome(o.home as string | undefined),
    hostChoice: hostChoice(o),
    progress: p.update,
    say: (l) => {
      if (!o.json) {
        p.done();
        process.stderr.write(`cloudlet: ${printable(l)}\n`);
      }
    },
    signal: controller.signal,
  };
}

async function interaction(o: Record<string, unknown>, scriptFlag: string, markerFlag?: string): Promise<Interaction> {
  const scriptPath = o[scriptFlag] as string | undefined;
  let script: string | undefined;
  if (scriptPath) {
    try {
      script = await fsp.readFile(scriptPath, "utf8");
    } catch {
      throw new CloudletError("MISSING_INPUT", "cannot read the script", scriptPath);
    }
  }
  const timeout = o.timeout ? num(o.timeout, "--timeout", 0.1, 86400, false) * 1000 : undefined;
  return { script, readyMarker: markerFlag ? (o[markerFlag] as string | undefined) : undefined, console: Boolean(o.console), vnc: Boolean(o.vnc), timeoutMs: timeout };
}

cli.option("--json", "Print results (and errors) as JSON on stdout, no progress bar");
cli.option("--home <dir>", "Cloudlet home (default $CLOUDLET_HOME, else /var/lib/cloudlet for root, ~/.cloudlet for others)");
cli.option("--threads <n>", "Worker threads for (de)compression (default: all cores)");

cli
  .command("overlay [base]", "Create a VM overlay: resume BASE, customise it, and keep what changed (or compare image files with --base-disk ...)")
  .option("--script <file>", "VM mode: customise by running this shell script in the guest over the serial console")
  .option("--console", "VM mode: customise interactively on the serial console (Ctrl-] when done)")
  .option("--vnc", "VM mode: customise through VNC (press Enter when done)")
  .option("--timeout <s>", "VM mode: time limit for the script, seconds")
  .option("--host <host>", "VM mode: qemu (default) or virsh")
  .option("--connect <uri>", "VM mode: local libvirt URI for --host virsh (default qemu:///system)")
  .option("--base-disk <file>", "Base disk image (raw)")
  .option("--base-mem <file>", "Base memory image")
  .option("--disk <file>", "Custom disk: raw, or a qcow2 top layer over the base disk")
  .option("--mem <file>", "Custom memory image")
  .option("--state <file>", "Custom device state (QEMU migration stream), stored in the overlay")
  .option("-o, --output <path>", "Output: NAME.overlay (packed, default) or NAME.overlay-meta (seed layout)")
  .option("--layout <layout>", "packed | split, when -o has no suffix", { default: "packed" })
  .option("--forward <spec>", "Port forward to record, e.g. tcp:2222::22 (repeatable); also -- -redir SPEC")
  .option("--profile <name>", "Size/speed trade: fast (xz -1), balanced (default: 1 MiB segments, xz -6) or small (4 MiB segments); --segment-size and --preset override it")
  .option("--segment-size <size>", "Payload bytes per segment (default: from --profile, 1M)")
  .option("--preset <n>", "xz preset 0-9 (default: from --profile, 6; 7-9 equal 6 unless segments exceed 8 MiB, as the dictionary is capped to the segment)")
  .option("--machine <type>", "QEMU machine type of the base (part of the base id)")
  .option("--cpu <model>", "QEMU CPU model of the base (part of the base id)")
  .option("--disk-stride <bytes>", "Match chunks against base-disk blocks every 4096 (default) or every 512 bytes (for disks whose file system is not 4 KiB-aligned; 8x the index)", { default: 4096 })
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
      const r = await overlayFromVm(ctx, {
        base: baseRef,
        customize: how,
        forwards: collectPortForwards(forwardSpecs, (o["--"] as string[]) ?? []),
        out: need(o.output, "-o"),
        layout: o.layout === "split" ? "split" : "packed",
        ...profile,
        diskStride: diskStride(o.diskStride),
        threads: o.threads ? num(o.threads, "--threads", 1, 256) : undefined,
      });
      p.done();
      const report = inspectMeta(r.meta, r.path, r.bytes);
      out(o, { path: r.path, layout: r.layout, bytes: r.bytes, seconds: r.seconds, customizeSeconds: r.customizeSeconds, baseId: r.meta.base.id, segments: r.meta.segments.length, classes: report.classTotals, launch: r.meta.launch },
        `wrote ${r.path}: ${formatBytes(r.bytes)} in ${r.meta.segments.length} segment(s) (rewrites ${formatBytes(report.sizes.rebuilt)}); encoding took ${r.seconds.toFixed(1)} s`);
      return;
    }
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
      launch: { portForwards: collectPortForwards(forwards, (o["--"] as string[]) ?? []) },
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
      `wrote ${r.path} (${r.layout}): ${formatBytes(r.bytes)} in ${r.meta.segments.length} segment(s), rewrites ${formatBytes(report.sizes.rebuilt)}, ${r.seconds.toFixed(1)} s`);
  });

cli
  .command("synthesis [base] [overlay]", "Rebuild the custom VM from BASE and OVERLAY and resume it (or rebuild files with --base-disk ... -o DIR)")
  .option("--no-run", "VM mode: only verify that the overlay rebuilds correctly on the base")
  .option("--bind <addr>", "VM mode: address the port forwards listen on", { default: "127.0.0.1" })
  .option("--auto-ports", "VM mode: use free host ports instead of the overlay's")
  .option("--host <host>", "VM mode: qemu (default) or virsh")
  .option("--connect <uri>", "VM mode: local libvirt URI for --host virsh (default qemu:///system)")
  .alias("synthesize")
  .option("--base-disk <file>", "Base disk image (raw)")
  .option("--base-mem <file>", "Base memory image")
  .option("-o, --output <dir>", "Output directory (disk.qcow2 or disk.raw, memory.raw, state.bin, launch.json)")
  .option("--disk-format <fmt>", "qcow2 (over the base disk, default) or raw", { default: "qcow2" })
  .option("--machine <type>", "File mode: QEMU machine type of the base (part of the base id; default as for overlay)")
  .option("--cpu <model>", "File mode: QEMU CPU model of the base (part of the base id; default as for overlay)")
  .option("--force", "Replace a non-empty output directory")
  .example("cloudlet synthesis --base-disk base.raw --base-mem base.mem app.overlay -o out/")
  .action(async (first: string | undefined, second: string | undefined, o: Common & Record<string, unknown>) => {
    const core = await loadCoreFromDisk();
    if (second !== undefined) {
      if (o.baseDisk || o.baseMem) throw new CloudletError("BAD_ARGUMENT", "give either BASE OVERLAY (VM mode) or --base-disk/--base-mem OVERLAY -o DIR (file mode)");
      const p = bar(o);
      const ctx = vmContext(o, p, core);
      const r = await synthesizeVm(ctx, { base: first!, overlay: second, noRun: o.run === false, hostAddress: o.bind as string, autoPorts: Boolean(o.autoPorts), threads: o.threads ? num(o.threads, "--threads", 1, 256) : undefined });
      p.done();
      if ("verified" in r) {
        out(o, { verified: true, baseId: r.meta.base.id, ms: r.ms }, `verified: the overlay rebuilds correctly on its base (${(r.ms.synthesis / 1000).toFixed(1)} s); no VM started (--no-run)`);
        return;
      }
      const where = r.ports.map((p) => `  ${p.proto} ${r.host}:${p.hostPort} -> guest port ${p.guestPort}`).join("\n") || "  (no port forwards)";
      out(o, { vmId: r.vmId, endpoint: r.host, ports: r.ports, dir: r.dir, ms: r.ms }, `VM ${r.vmId} resumed in ${((r.ms.synthesis + r.ms.launch) / 1000).toFixed(1)} s (synthesis ${(r.ms.synthesis / 1000).toFixed(1)} s, launch ${(r.ms.launch / 1000).toFixed(1)} s). Reach it at:\n${where}\nstop it with: cloudlet stop ${r.vmId}`);
      return;
    }
    const overlay = first;
    const fmt = o.diskFormat === "raw" ? "raw" : o.diskFormat === "qcow2" ? "qcow2" : (() => {
      throw new CloudletError("BAD_ARGUMENT", `--disk-format must be qcow2 or raw, not "${o.diskFormat}"`);
    })();
    const p = bar(o);
    const baseMem = need(o.baseMem, "--base-mem");
    // The same default as `overlay` in file mode, so the machine is part of what is checked.
    const machine = defaultMachine((await fileIdentity(baseMem)).size, o.machine as string | undefined, o.cpu as string | undefined);
    const r = await synthesizeFiles(core, {
      baseDisk: need(o.baseDisk, "--base-disk"),
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

cli
  .command("inspect <overlay>", "Show what is in an overlay: base id, sizes, chunk classes, segments")
  .option("--verify", "Also decode every segment, check its hash, records and class counts, and (with the base) every rebuilt chunk")
  .option("--web", "Open the browser inspector: serve it on 127.0.0.1, print its URL, stop on Ctrl-C")
  .option("--base <base>", "The overlay's base from the registry (id, id prefix or name), for --verify or --web")
  .option("--base-disk <file>", "The base disk (raw), for --verify or --web: verifies rebuilt chunks (with --verify, another base is refused by its id, as synthesis does), shows XOR against the base")
  .option("--base-mem <file>", "The base memory image, with --base-disk")
  .option("--port <n>", "With --web: the port on 127.0.0.1 (default: any free port)")
  .example("cloudlet inspect --web --base-disk base.raw --base-mem base.mem app.overlay")
  .example("cloudlet inspect --verify --base tiny app.overlay")
  .action(async (path: string, o: Common & { verify?: boolean; web?: boolean; base?: string; baseDisk?: string; baseMem?: string; port?: string | number }) => {
    const core = await loadCoreFromDisk();
    if (!o.web && o.port !== undefined) throw new CloudletError("BAD_ARGUMENT", "--port goes with --web");
    if (!o.web && !o.verify && (o.base || o.baseDisk || o.baseMem)) throw new CloudletError("BAD_ARGUMENT", "--base, --base-disk and --base-mem go with --verify or --web");
    if (o.base && (o.baseDisk || o.baseMem)) throw new CloudletError("BAD_ARGUMENT", "give --base or --base-disk/--base-mem, not both");
    let baseDisk = o.baseDisk;
    let baseMem = o.baseMem;
    let baseId: string | undefined;
    if (o.base) {
      const b = await new Registry(cloudletHome(o.home)).getBase(o.base);
      ({ disk: baseDisk, memory: baseMem } = baseFiles(b));
      baseId = b.id;
    }
    if (o.web) {
      const port = o.port === undefined ? 0 : num(o.port, "--port", 0, 65535);
      const server = await startInspectServer({ core, overlay: path, baseDisk, baseMem, port });
      out(o, { url: server.url }, `cloudlet inspector: ${server.url} (Ctrl-C to stop)`);
      await untilInterrupted();
      await server.close();
      return;
    }
    const ov = await openOverlay(core, path);
    const opened: FileSource[] = [];
    try {
      const report = inspectMeta(ov.meta, path, ov.totalBytes);
      let verified: VerifyResult | undefined;
      if (o.verify) {
        if (Boolean(baseDisk) !== Boolean(baseMem)) throw new CloudletError("BAD_ARGUMENT", "--base-disk and --base-mem go together");
        const base = baseDisk && baseMem ? { disk: await openBaseImage(baseDisk, ov.meta.base.diskSize, "base disk", opened), memory: await openBaseImage(baseMem, ov.meta.base.memorySize, "base memory", opened) } : null;
        const codec = new WorkerCodec(o.threads ? num(o.threads, "--threads", 1, 256) : undefined);
        const p = bar(o);
        try {
          // A base of the right sizes but other bytes is named as the wrong base (ids), as synthesis does.
          if (base && baseDisk && baseMem) baseId ??= await baseIdOfFiles(core, baseDisk, baseMem, ov.meta.base.machine, o.home, p.update);
          verified = await verifyOverlay(core, ov, base && { ...base, id: baseId }, codec, p.update);
        } finally {
          p.done();
          await codec.close();
        }
      }
      const said = !verified ? "" : `\n\nverified: all ${verified.segments} segments decode and match their hashes, records and class counts; ` +
        (verified.rebuiltSkipped ? `${verified.rebuilt} checked chunk by chunk, ${verified.rebuiltSkipped} need the base (give --base or --base-disk/--base-mem)` : "every rebuilt chunk matches");
      out(o, { ...report, ...(verified ? { verified: true, verification: verified } : {}) }, renderReport(report) + said);
    } finally {
      for (const f of opened) await f.close();
      await ov.close();
    }
  });

/** The base id of base image files, as file-mode synthesis computes it: prepared once per home, then cached. */
async function baseIdOfFiles(core: Core, disk: string, memory: string, machine: MachineConfig, home: string | undefined, progress: ProgressFn): Promise<string> {
  const dir = cacheDirFor(core, indexCacheDir(cloudletHome(home)), await fileIdentity(disk), await fileIdentity(memory), machine);
  const base = await openBase(core, { disk, memory, machine, dir, needIndex: false, progress, signal: controller.signal });
  await base.close();
  return base.id;
}

/** Opens a base image for --verify; a size other than the overlay's base had is a wrong base. */
async function openBaseImage(path: string, want: number, what: string, opened: FileSource[]): Promise<FileSource> {
  const f = await FileSource.open(path);
  opened.push(f);
  if (f.size !== want) throw new CloudletError("WRONG_BASE", `${what} is ${f.size} bytes but the overlay was made from a ${what} of ${want} bytes: this is not the overlay's base`, path);
  return f;
}

cli
  .command("base [disk]", "Create a base VM: boot DISK (raw; default: the built-in tiny guest), wait until ready, snapshot and register it")
  .option("--name <name>", "Name in the registry")
  .option("--ready-marker <text>", "Ready when the guest prints this on its serial console")
  .option("--ready-script <file>", "Ready when this script, run in the guest over the serial console, exits 0")
  .option("--console", "Interactive serial console; press Ctrl-] when the guest is ready")
  .option("--vnc", "Give the VM a VNC display; press Enter when the guest is ready")
  .option("--timeout <s>", "Time limit for the marker or script, seconds", { default: 180 })
  .option("--ram <mib>", "Guest RAM in MiB", { default: 256 })
  .option("--vcpus <n>", "Virtual CPUs", { default: 1 })
  .option("--machine <type>", "QEMU machine type", { default: "pc-i440fx-7.2" })
  .option("--cpu <model>", "QEMU CPU model", { default: "qemu64" })
  .option("--disk-stride <bytes>", "Index base-disk blocks every 4096 (default) or every 512 bytes (see cloudlet overlay --help)", { default: 4096 })
  .option("--host <host>", "qemu (default) or virsh")
  .option("--connect <uri>", "Local libvirt URI for --host virsh (default qemu:///system)")
  .action(async (disk: string | undefined, o: Common & Record<string, unknown>) => {
    const core = await loadCoreFromDisk();
    const p = bar(o);
    const ctx = vmContext(o, p, core);
    const ready = await interaction(o, "readyScript", "readyMarker");
    if (disk && !ready.readyMarker && ready.script === undefined && !ready.console && !ready.vnc) throw new CloudletError("BAD_ARGUMENT", "say how to tell the guest is ready: --ready-marker TEXT, --ready-script FILE, --console or --vnc");
    const r = await createBase(ctx, { disk, name: o.name as string | undefined, ready, ramMiB: num(o.ram, "--ram", 16, 1 << 20), vcpus: num(o.vcpus, "--vcpus", 1, 256), machine: o.machine as string, cpu: o.cpu as string, diskStride: diskStride(o.diskStride) });
    p.done();
    out(o, { ...r.base, seconds: r.seconds, existed: r.existed }, `base ${r.base.name} ${r.base.id}${r.existed ? " (already registered)" : ""}: disk ${formatBytes(r.base.diskSize)}, memory ${formatBytes(r.base.memorySize)}, ${r.seconds.toFixed(1)} s`);
  });

cli
  .command("list-base", "List the base VMs in the registry")
  .alias("list_base")
  .action(async (o: Common) => {
    const bases = await new Registry(cloudletHome(o.home)).listBases();
    out(o, bases, bases.length ? bases.map((b) => `${b.id.slice(0, 16)}  ${b.name.padEnd(16)} disk ${formatBytes(b.diskSize).padStart(10)}  mem ${formatBytes(b.memorySize).padStart(10)}  ${b.host.padEnd(5)} ${b.created}  ${b.source}`).join("\n") : "no bases (create one with: cloudlet base)");
  });

cli
  .command("del-base <base>", "Delete a base VM (id, id prefix or name) and its files")
  .alias("del_base")
  .action(async (ref: string, o: Common) => {
    const home = cloudletHome(o.home);
    const reg = new Registry(home);
    const b = await reg.getBase(ref);
    const users = await vmsOnBase(home, b.id);
    if (users.length) throw new CloudletError("BAD_ARGUMENT", `base ${b.name} is in use by ${users.join(", ")}: stop ${users.length > 1 ? "them" : "it"} first (cloudlet stop VM)`);
    await reg.removeBase(b.id);
    await fsp.rm(b.dir, { recursive: true, force: true });
    out(o, { deleted: b.id }, `deleted base ${b.name} ${b.id}`);
  });

cli
  .command("export-base <base> <file>", "Write a base VM to one file")
  .alias("export_base")
  .action(async (ref: string, file: string, o: Common) => {
    const core = await loadCoreFromDisk();
    const p = bar(o);
    const r = await exportBase(core, cloudletHome(o.home), ref, file, p.update);
    p.done();
    out(o, { file, bytes: r.bytes, baseId: r.base.id }, `exported ${r.base.name} ${r.base.id} to ${file} (${formatBytes(r.bytes)})`);
  });

cli
  .command("import-base <file>", "Import a base VM written by export-base, verifying every byte")
  .alias("import_base")
  .action(async (file: string, o: Common) => {
    const core = await loadCoreFromDisk();
    const p = bar(o);
    const r = await importBase(core, cloudletHome(o.home), file, p.update, controller.signal);
    p.done();
    out(o, { ...r.base, existed: r.existed }, `imported base ${r.base.name} ${r.base.id}${r.existed ? " (was already here)" : ""}`);
  });

cli
  .command("ps", "List synthesized VMs")
  .action(async (o: Common) => {
    const vms = await psVms(cloudletHome(o.home));
    out(o, vms, vms.length ? vms.map((v) => `${v.id}  ${v.alive ? "running" : "dead   "}  ${v.host.padEnd(5)} ${v.ports.map((p) => `${v.hostAddress}:${p.hostPort}->${p.guestPort}`).join(" ")}  ${v.created}`).join("\n") : "no synthesized VMs");
  });

cli
  .command("stop <vm>", "Stop a synthesized VM and remove its files")
  .action(async (id: string, o: Common) => {
    await stopSynthesized(cloudletHome(o.home), id);
    out(o, { stopped: id }, `stopped ${id}`);
  });

cli
  .command("guest", "Build (or show) the built-in tiny guest: Debian kernel, busybox initramfs, debootstrap minbase root file system")
  .action(async (o: Common) => {
    const p = bar(o);
    const g = await buildGuestImage({ cacheDir: homeDirs(cloudletHome(o.home)).guest, signal: controller.signal, onProgress: (x) => p.update({ phase: x.phase, done: x.done, total: x.total }) });
    p.done();
    out(o, g, `guest: kernel ${g.kernelVersion}\n  ${g.kernel}\n  ${g.initrd}\n  ${g.rootfs}`);
  });

/** Splits --listen HOST:PORT. */
function parseListen(v: string): { host: string; port: number } {
  const m = /^\[?([^\]]*?)\]?(?::(\d+))?$/.exec(v);
  const port = m?.[2] ? Number(m[2]) : DEFAULT_PORT;
  if (!m || !m[1] || !(port >= 0 && port < 65536)) throw new CloudletError("BAD_ARGUMENT", `bad --listen "${v}" (use HOST:PORT, e.g. 127.0.0.1:8021 or 0.0.0.0:8021)`);
  return { host: m[1], port };
}

async function readFileArg(path: string, what: string): Promise<Buffer> {
  try {
    return await fsp.readFile(path);
  } catch {
    throw new CloudletError("MISSING_INPUT", `cannot read the ${what}`, path);
  }
}

cli
  .command("serve", "Run a synthesis server: accept overlays over HTTP and resume them as VMs")
  .alias("synthesis_server")
  .option("--listen <addr>", "HOST:PORT to listen on", { default: `127.0.0.1:${DEFAULT_PORT}` })
  .option("--token-file <file>", "Bearer token clients must present (default: <home>/server/token, created on first start)")
  .option("--tls-cert <file>", "TLS certificate (PEM): serve HTTPS")
  .option("--tls-key <file>", "TLS private key (PEM)")
  .option("--max-sessions <n>", "Sessions at once", { default: 4 })
  .option("--max-meta <size>", "Largest meta accepted", { default: "16M" })
  .option("--max-overlay <size>", "Largest overlay accepted", { default: "64G" })
  .option("--idle-timeout <s>", "Fail a session whose client is silent this long (no bytes; no keep-alive once running: the VM is stopped), seconds", { default: 60 })
  .option("--session-timeout <s>", "Fail a session not running within this long, seconds", { default: 1800 })
  .option("--detached-timeout <s>", "Stop a detached client's VM this long after it detached, seconds (0: never)", { default: 86400 })
  .option("--name <name>", "Name announced on the network", { default: hostname() })
  .option("--no-announce", "Do not announce over mDNS")
  .option("--no-url", "Refuse sessions that ask the server to fetch the overlay from a URL (clients must upload it)")
  .option("--host <host>", "qemu (default) or virsh")
  .option("--connect <uri>", "Local libvirt URI for --host virsh (default qemu:///system)")
  .action(async (o: Common & Record<string, unknown>) => {
    const core = await loadCoreFromDisk();
    const home = cloudletHome(o.home as string | undefined);
    const { host, port } = parseListen(o.listen as string);
    const tokenFile = (o.tokenFile as string | undefined) ?? pathJoin(home, "server", "token");
    const { token, created } = await loadOrCreateToken(tokenFile);
    if (Boolean(o.tlsCert) !== Boolean(o.tlsKey)) throw new CloudletError("BAD_ARGUMENT", "--tls-cert and --tls-key go together");
    const tls = o.tlsCert ? { cert: await readFileArg(o.tlsCert as string, "TLS certificate"), key: await readFileArg(o.tlsKey as string, "TLS key") } : undefined;
    const hc = hostChoice(o);
    const server = new SynthesisServer({
      core,
      backend: new HomeBackend(core, home, hc),
      home,
      host,
      port,
      token,
      tls,
      maxSessions: num(o.maxSessions, "--max-sessions", 1, 1024),
      maxMetaBytes: parseSize(o.maxMeta as string, "--max-meta"),
      maxOverlayBytes: parseSize(o.maxOverlay as string, "--max-overlay"),
      allowUrl: o.url !== false,
      idleMs: num(o.idleTimeout, "--idle-timeout", 1, 86400, false) * 1000,
      sessionMs: num(o.sessionTimeout, "--session-timeout", 1, 7 * 86400, false) * 1000,
      detachedMs: num(o.detachedTimeout, "--detached-timeout", 0, 365 * 86400, false) * 1000,
      name: o.name as string,
      version: CLOUDLET_VERSION,
      log: (l) => process.stderr.write(`${new Date().toISOString()} ${printable(l)}\n`),
    });
    await server.start();
    const addr = server.address();
    const bases = await new HomeBackend(core, home, hc).bases();
    process.stderr.write(`cloudlet serve: listening on ${tls ? "https" : "http"}://${host}:${addr.port} with ${bases.length} base(s); token ${created ? "created at" : "from"} ${tokenFile}\n`);
    if (o.json) process.stdout.write(JSON.stringify({ host, port: addr.port, tls: Boolean(tls), tokenFile }) + "\n");
    // Announce only addresses clients can reach: the one listened on, or every address for a wildcard.
    const wildcard = host === "0.0.0.0" || host === "::";
    const loopback = /^127\.|^::1$|^localhost$/.test(host);
    if (o.announce !== false && loopback) process.stderr.write("cloudlet serve: not announcing over mDNS: listening on loopback only (--listen 0.0.0.0:PORT serves the network)\n");
    const ann = o.announce === false || loopback ? null : announce({ name: o.name as string, port: addr.port, tls: Boolean(tls), version: CLOUDLET_VERSION, bases: bases.map((b) => `${b.name}=${b.id.slice(0, 16)}`), addresses: wildcard ? undefined : [host] });
    await untilInterrupted();
    process.stderr.write("cloudlet serve: stopping (ending sessions)\n");
    await ann?.stop();
    await server.stop();
  });

cli
  .command("client", "Send an overlay to a cloudlet server; print how to reach the VM; keep the session until Ctrl-C")
  .alias("synthesis_client")
  .option("-s, --server <host[:port]>", "The cloudlet", { default: `127.0.0.1:${DEFAULT_PORT}` })
  .option("-o, --overlay <file>", "The overlay to send (packed or seed layout)")
  .option("--url <url>", "Let the server fetch the overlay from this URL instead (HTTP Range)")
  .option("--token-file <file>", "The server's token (default: <home>/server/token)")
  .option("--tls", "Speak HTTPS")
  .option("--ca <file>", "CA certificate (PEM) to trust, with --tls")
  .option("--detach", "Leave the session (and VM) running without this client and exit")
  .action(async (o: Common & Record<string, unknown>) => {
    const core = await loadCoreFromDisk();
    const home = cloudletHome(o.home as string | undefined);
    const tokenFile = last(o.tokenFile as string | string[] | undefined) ?? pathJoin(home, "server", "token");
    const token = (await readFileArg(tokenFile, "token file (--token-file)")).toString("utf8").trim();
    const client = new CloudletClient({ server: o.server as string, token, tls: Boolean(o.tls) || Boolean(o.ca), ca: o.ca ? await readFileArg(o.ca as string, "CA certificate") : undefined });
    const p = bar(o);
    let overlay = null;
    let metaBytes: Uint8Array | undefined;
    if (!o.url) {
      const path = need(o.overlay, "-o OVERLAY (or --url)");
      overlay = await openOverlay(core, path);
      metaBytes = overlay.metaBytes;
    }
    let applied = 0;
    const t0 = performance.now();
    try {
      const r = await sendOverlay({
        core,
        client,
        overlay,
        metaBytes,
        url: o.url as string | undefined,
        progress: p.update,
        onEvent: (e) => {
          if (e.type === "progress" && e.applied > applied) applied = e.applied;
        },
        signal: controller.signal,
      });
      p.done();
      const ms = performance.now() - t0;
      const where = r.endpoint.ports.map((x) => `  ${x.proto} ${r.endpoint.host}:${x.hostPort} -> guest port ${x.guestPort}`).join("\n") || "  (no port forwards)";
      out(o, { session: r.id, ...r.endpoint, ms: { total: Math.round(ms), ...r.endpoint.ms } }, `VM ${r.endpoint.vmId} is running on ${o.server} (${(ms / 1000).toFixed(1)} s). Reach it at:\n${where}`);
      if (o.detach) {
        await client.detach(r.id, controller.signal);
        return;
      }
      if (!o.json) process.stderr.write("cloudlet client: keeping the session; Ctrl-C ends it and stops the VM\n");
      const held = client.hold(r.id, r.leaseMs, controller.signal);
      await Promise.race([untilInterrupted(), held]);
      await client.close(r.id);
      process.stderr.write("cloudlet client: session closed, VM stopped\n");
    } finally {
      await overlay?.close();
    }
  });

cli
  .command("discover", "List the cloudlets on the local network (mDNS / DNS-SD)")
  .option("--wait <s>", "How long to listen, seconds", { default: 2 })
  .action(async (o: Common & Record<string, unknown>) => {
    const found = await discover(num(o.wait, "--wait", 0.1, 600, false) * 1000);
    out(o, found, found.length ? found.map((f) => `${f.name}  ${f.tls ? "https" : "http"}://${f.addresses[0] ?? f.host}:${f.port}  v${f.version}  bases: ${f.bases.join(", ") || "none"}`).join("\n") : "no cloudlets found");
  });

cli.help();
cli.version(CLOUDLET_VERSION);

async function main(): Promise<void> {
  let json = process.argv.includes("--json");
  try {
    cli.parse(process.argv, { run: false });
    json = Boolean(cli.options.json);
    if (!cli.matchedCommand) {
      if (cli.args.length) throw new CloudletError("BAD_ARGUMENT", `unknown command "${cli.args[0]}" (see cloudlet --help)`);
      if (!cli.options.help && !cli.options.version) cli.outputHelp();
      return;
    }
    await cli.runMatchedCommand();
  } catch (e) {
    const err = controller.signal.aborted && !isCloudletError(e) ? controller.signal.reason : e;
    if (isCloudletError(err)) {
      if (json) process.stdout.write(printableJson({ error: { code: err.code, message: err.message, file: err.file ?? null } }) + "\n");
      process.stderr.write(`cloudlet: ${err.userMessage}\n`);
      process.exitCode = exitCodeOf(err.code);
    } else if (e instanceof Error && /Unknown option|missing required args|value is missing/i.test(e.message)) {
      process.stderr.write(`cloudlet: ${printable(e.message)} (see cloudlet --help)\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`cloudlet: internal error (please report): ${(e as Error)?.stack ?? e}\n`);
      process.exitCode = 70;
    }
  }
}

await main();
// The command is done: exit even if a host handle (a child process watcher,
// a socket) is still referenced; Deno does not honour every unref().
process.exit(process.exitCode ?? 0);
