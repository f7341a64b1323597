/**
 * The `cloudlet` command. Thin: it parses arguments, draws progress and
 * prints results; the work is done by the library in ts/.
 */
import { cac } from "cac";
import { isCloudletError, CloudletError } from "../ts/errors.ts";
import { loadCoreFromDisk } from "../ts/host/core_file.ts";
import { CLOUDLET_VERSION, createOverlayFiles, defaultMachine, synthesizeFiles } from "../ts/host/file_jobs.ts";
import { cloudletHome } from "../ts/host/home.ts";
import { openOverlay } from "../ts/host/overlay_files.ts";
import { inspectMeta, formatBytes, renderReport } from "../ts/inspect/report.ts";
import { collectPortForwards } from "../ts/overlay/launch.ts";
import { fetchSegment } from "../ts/overlay/synthesis.ts";
import { WorkerCodec } from "../ts/host/codec_pool.ts";
import { fileIdentity } from "../ts/host/base_cache.ts";
import { ProgressBar } from "./progress.ts";

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

function out(o: Common, json: unknown, text: string): void {
  process.stdout.write(o.json ? JSON.stringify(json, null, 2) + "\n" : text + "\n");
}

/** Parses sizes like 1M, 512K, 4096. */
function parseSize(v: string | number | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+)([KMG]?)(i?B)?$/i.exec(String(v));
  if (!m) throw new CloudletError("BAD_ARGUMENT", `bad ${what} "${v}" (use e.g. 1M or 262144)`);
  return Number(m[1]) * { "": 1, K: 1024, M: 1 << 20, G: 1 << 30 }[m[2].toUpperCase() as "" | "K" | "M" | "G"];
}

function need(v: unknown, flag: string): string {
  if (typeof v !== "string" || !v) throw new CloudletError("BAD_ARGUMENT", `${flag} is required (see cloudlet --help)`);
  return v;
}

cli.option("--json", "Print results (and errors) as JSON on stdout, no progress bar");
cli.option("--home <dir>", "Cloudlet home (default $CLOUDLET_HOME or ~/.cloudlet)");
cli.option("--threads <n>", "Worker threads for (de)compression (default: all cores)");

cli
  .command("overlay", "Create a VM overlay: what a custom VM changed relative to its base, deduplicated and compressed")
  .option("--base-disk <file>", "Base disk image (raw)")
  .option("--base-mem <file>", "Base memory image")
  .option("--disk <file>", "Custom disk: raw, or a qcow2 top layer over the base disk")
  .option("--mem <file>", "Custom memory image")
  .option("--state <file>", "Custom device state (QEMU migration stream), stored in the overlay")
  .option("-o, --output <path>", "Output: NAME.overlay (packed, default) or NAME.overlay-meta (seed layout)")
  .option("--layout <layout>", "packed | split, when -o has no suffix", { default: "packed" })
  .option("--forward <spec>", "Port forward to record, e.g. tcp:2222::22 (repeatable); also -- -redir SPEC")
  .option("--segment-size <size>", "Payload bytes per segment", { default: "1M" })
  .option("--preset <n>", "xz preset 0-9", { default: 6 })
  .option("--machine <type>", "QEMU machine type of the base (part of the base id)")
  .option("--cpu <model>", "QEMU CPU model of the base (part of the base id)")
  .example("cloudlet overlay --base-disk base.raw --base-mem base.mem --disk top.qcow2 --mem custom.mem -o app -- -redir tcp:8080::80")
  .action(async (o: Common & Record<string, unknown>) => {
    const core = await loadCoreFromDisk();
    const home = cloudletHome(o.home as string | undefined);
    const baseMem = need(o.baseMem, "--base-mem");
    const machine = defaultMachine((await fileIdentity(baseMem)).size, o.machine as string | undefined, o.cpu as string | undefined);
    const forwards = ([] as string[]).concat((o.forward as string | string[] | undefined) ?? []);
    const layout = o.layout === "split" ? "split" : o.layout === "packed" ? "packed" : (() => {
      throw new CloudletError("BAD_ARGUMENT", `--layout must be packed or split, not "${o.layout}"`);
    })();
    const p = bar(o);
    const preset = Number(o.preset);
    if (!Number.isInteger(preset) || preset < 0 || preset > 9) throw new CloudletError("BAD_ARGUMENT", "--preset must be 0-9");
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
      segmentBytes: parseSize(o.segmentSize as string, "--segment-size"),
      preset,
      threads: o.threads ? Number(o.threads) : undefined,
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
  .command("synthesis [overlay]", "Rebuild a custom VM's disk and memory from a base and an overlay")
  .alias("synthesize")
  .option("--base-disk <file>", "Base disk image (raw)")
  .option("--base-mem <file>", "Base memory image")
  .option("-o, --output <dir>", "Output directory (disk.qcow2 or disk.raw, memory.raw, state.bin, launch.json)")
  .option("--disk-format <fmt>", "qcow2 (over the base disk, default) or raw", { default: "qcow2" })
  .option("--force", "Replace a non-empty output directory")
  .example("cloudlet synthesis --base-disk base.raw --base-mem base.mem app.overlay -o out/")
  .action(async (overlay: string | undefined, o: Common & Record<string, unknown>) => {
    const core = await loadCoreFromDisk();
    const fmt = o.diskFormat === "raw" ? "raw" : o.diskFormat === "qcow2" ? "qcow2" : (() => {
      throw new CloudletError("BAD_ARGUMENT", `--disk-format must be qcow2 or raw, not "${o.diskFormat}"`);
    })();
    const p = bar(o);
    const r = await synthesizeFiles(core, {
      baseDisk: need(o.baseDisk, "--base-disk"),
      baseMem: need(o.baseMem, "--base-mem"),
      overlay: need(overlay, "OVERLAY"),
      outDir: need(o.output, "-o"),
      diskFormat: fmt,
      force: Boolean(o.force),
      threads: o.threads ? Number(o.threads) : undefined,
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
  .option("--verify", "Also decode every segment and check its hash and structure")
  .action(async (path: string, o: Common & { verify?: boolean }) => {
    const core = await loadCoreFromDisk();
    const ov = await openOverlay(core, path);
    try {
      const report = inspectMeta(ov.meta, path, ov.totalBytes);
      let verified: boolean | undefined;
      if (o.verify) {
        const codec = new WorkerCodec(o.threads ? Number(o.threads) : undefined);
        const p = bar(o);
        try {
          let done = 0;
          for (let i = 0; i < ov.meta.segments.length; i++) {
            await fetchSegment(core, ov, codec, i);
            done += ov.meta.segments[i].compressedSize;
            p.update({ phase: "verify", done, total: report.sizes.compressed });
          }
          verified = true;
        } finally {
          p.done();
          await codec.close();
        }
      }
      out(o, { ...report, verified }, renderReport(report) + (verified ? "\n\nall segments decode and match their hashes" : ""));
    } finally {
      await ov.close();
    }
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
      if (json) process.stdout.write(JSON.stringify({ error: { code: err.code, message: err.message, file: err.file ?? null } }) + "\n");
      process.stderr.write(`cloudlet: ${err.userMessage}\n`);
      process.exitCode = err.code === "CANCELLED" ? 130 : err.code === "BAD_ARGUMENT" ? 2 : 1;
    } else if (e instanceof Error && /Unknown option|missing required args|value is missing/i.test(e.message)) {
      process.stderr.write(`cloudlet: ${e.message} (see cloudlet --help)\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`cloudlet: internal error (please report): ${(e as Error)?.stack ?? e}\n`);
      process.exitCode = 70;
    }
  }
}

await main();
