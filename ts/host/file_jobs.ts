/**
 * File-mode jobs: overlay creation and synthesis from image files, as the
 * CLI and the server run them. They wire the runtime-neutral engine to
 * files, worker threads and qemu-img.
 */
import { promises as fsp } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import { DEFAULT_PRESET, type SegmentCodec } from "../overlay/codec.ts";
import { ImageKind, type LaunchConfig, type MachineConfig, type OverlayMeta, validMachine } from "../overlay/format.ts";
import type { ProgressFn } from "../overlay/io.ts";
import { checkBase, synthesize } from "../overlay/synthesis.ts";
import { writeOverlay } from "../overlay/writer.ts";
import { cacheDirFor, fileIdentity, openBase } from "./base_cache.ts";
import { dictCapFor, WorkerCodec } from "./codec_pool.ts";
import type { DiskStride } from "../overlay/base_scan.ts";
import { openCustomDisk } from "./disk_image.ts";
import { FileSource, outputError, RawImageSink } from "./files.ts";
import { indexCacheDir } from "./home.ts";
import type { OverlayReader } from "../overlay/reader.ts";
import { openOverlay, outputLayout, PackedOverlayOutput, SplitOverlayOutput } from "./overlay_files.ts";
import { Qcow2Sink } from "./qcow2_sink.ts";

/** Package version recorded as the overlay's creator. */
export const CLOUDLET_VERSION = "0.1.0";

/** Default machine for file mode: the QEMU 7.2 PC and a fixed CPU model (see docs/vm-hosts.md). */
export function defaultMachine(memorySize: number, machine?: string, cpu?: string): MachineConfig {
  const m = { machine: machine ?? "pc-i440fx-7.2", cpu: cpu ?? "qemu64", ramMiB: Math.round(memorySize / (1 << 20)) };
  if (!validMachine(m)) throw new CloudletError("BAD_ARGUMENT", `--machine and --cpu take a QEMU name (letters, digits, ".", "_", "-"), not ${JSON.stringify(m.machine)} / ${JSON.stringify(m.cpu)}`);
  return m;
}

/** Inputs of {@link createOverlayFiles}. */
export interface CreateOverlayOptions {
  /** Base disk (raw). */
  baseDisk: string;
  /** Base memory image. */
  baseMem: string;
  /** Machine config; default from the memory size. */
  machine?: MachineConfig;
  /** Prepared-base directory; default: the home's index cache. */
  baseDir?: string;
  /** Custom disk (raw, or qcow2 over the base disk). */
  disk: string;
  /** Custom memory image. */
  mem: string;
  /** Custom device state, if any. */
  state?: string;
  /** Output path (NAME, NAME.overlay or NAME.overlay-meta). */
  out: string;
  /** Layout when `out` has no suffix. */
  layout?: "packed" | "split";
  /** Launch config to record. */
  launch?: Partial<LaunchConfig>;
  /** Payload bytes per segment. */
  segmentBytes?: number;
  /** xz preset. */
  preset?: number;
  /** Base-disk offsets to match against: every 4096 (default) or every 512 bytes (see DiskStride). */
  diskStride?: DiskStride;
  /** Worker threads. */
  threads?: number;
  /** The cloudlet home. */
  home: string;
  /** Progress. */
  progress?: ProgressFn;
  /** Cancellation. */
  signal?: AbortSignal;
}

/** What {@link createOverlayFiles} made. */
export interface CreatedOverlay {
  /** The main file (the packed overlay or the meta). */
  path: string;
  /** Layout written. */
  layout: "packed" | "split";
  /** The meta. */
  meta: OverlayMeta;
  /** Bytes written. */
  bytes: number;
  /** Wall-clock seconds. */
  seconds: number;
}

/** Creates an overlay from a custom VM's files against a base's files. */
export async function createOverlayFiles(core: Core, o: CreateOverlayOptions): Promise<CreatedOverlay> {
  const t0 = performance.now();
  const memSize = (await fileIdentity(o.baseMem)).size;
  const machine = o.machine ?? defaultMachine(memSize);
  const baseDir = o.baseDir ?? cacheDirFor(core, indexCacheDir(o.home), await fileIdentity(o.baseDisk), await fileIdentity(o.baseMem), machine);
  const base = await openBase(core, { disk: o.baseDisk, memory: o.baseMem, machine, dir: baseDir, needIndex: true, diskStride: o.diskStride, progress: o.progress, signal: o.signal });
  const disk = await openCustomDisk(o.disk, o.baseDisk).catch(async (e) => {
    await base.close();
    throw e;
  });
  const mem = await FileSource.open(o.mem).catch(async (e) => {
    await Promise.all([base.close(), disk.close()]);
    throw e;
  });
  const state = o.state ? await FileSource.open(o.state) : null;
  const where = outputLayout(resolve(o.out), o.layout);
  try {
    await fsp.access(dirname(where.path));
  } catch (e) {
    throw outputError(e, where.path);
  }
  const output = where.layout === "packed" ? new PackedOverlayOutput(where.path, core, o.progress) : new SplitOverlayOutput(where.stem);
  const codec = new WorkerCodec(o.threads, o.preset ?? DEFAULT_PRESET, dictCapFor(o.segmentBytes ?? 1 << 20));
  try {
    const launch: LaunchConfig = {
      portForwards: o.launch?.portForwards ?? [],
      memoryMiB: o.launch?.memoryMiB ?? machine.ramMiB,
      vcpus: o.launch?.vcpus ?? 1,
      ...(o.launch?.appUrl !== undefined ? { appUrl: o.launch.appUrl } : {}),
    };
    const r = await writeOverlay({
      core,
      base,
      custom: { disk: { source: disk.source, changed: disk.changed }, memory: { source: mem }, state: state ? { source: state } : null },
      launch,
      codec,
      output,
      segmentBytes: o.segmentBytes,
      version: CLOUDLET_VERSION,
      progress: o.progress,
      signal: o.signal,
    });
    const metaBytes = where.layout === "packed" ? (await fsp.stat(where.path)).size : r.compressedBytes + (await fsp.stat(where.path)).size;
    return { path: where.path, layout: where.layout, meta: r.meta, bytes: metaBytes, seconds: (performance.now() - t0) / 1000 };
  } catch (e) {
    await output.abort();
    throw e;
  } finally {
    await codec.close();
    await Promise.all([base.close(), disk.close(), mem.close(), state?.close()]);
  }
}

/** Inputs of {@link synthesizeFiles}. */
export interface SynthesizeOptions {
  /** Base disk (raw). */
  baseDisk: string;
  /** Base memory image. */
  baseMem: string;
  /** The base's machine config; the overlay must have been made for the same. Default: the overlay's (then only the images are checked). */
  machine?: MachineConfig;
  /** Prepared-base directory; default: the home's index cache. */
  baseDir?: string;
  /** The overlay (packed file or meta). */
  overlay: string;
  /** Output directory (must not exist or be empty, unless `force`). */
  outDir: string;
  /** Disk output format. */
  diskFormat?: "qcow2" | "raw";
  /** Replace a non-empty output directory. */
  force?: boolean;
  /** Worker threads. */
  threads?: number;
  /** A codec to use (and leave open) instead of starting worker threads for this call. */
  codec?: SegmentCodec;
  /**
   * fsync the outputs before they are renamed into place (default true).
   * Off for files that do not outlive a crash anyway: a VM about to be
   * resumed from them (its memory diverges from them at once).
   */
  durable?: boolean;
  /** The cloudlet home. */
  home: string;
  /** Progress. */
  progress?: ProgressFn;
  /** Cancellation. */
  signal?: AbortSignal;
}

/** What {@link synthesizeFiles} wrote. */
export interface SynthesizedFiles {
  /** Output directory. */
  dir: string;
  /** Rebuilt disk. */
  disk: string;
  /** Rebuilt memory image. */
  memory: string;
  /** Rebuilt device state, when the overlay has one. */
  state: string | null;
  /** The overlay's meta. */
  meta: OverlayMeta;
  /** Chunks written per kind. */
  chunks: [number, number, number];
  /** Wall-clock seconds. */
  seconds: number;
}

/** Output file names inside a synthesis directory. */
export const SYNTH_FILES = { qcow2: "disk.qcow2", raw: "disk.raw", memory: "memory.raw", state: "state.bin", launch: "launch.json" } as const;

/** Rebuilds a custom VM's files from a base and an overlay file, atomically into `outDir`. */
export async function synthesizeFiles(core: Core, o: SynthesizeOptions): Promise<SynthesizedFiles> {
  const overlay = await openOverlay(core, o.overlay);
  try {
    return await synthesizeReader(core, overlay, o);
  } finally {
    await overlay.close();
  }
}

/**
 * Rebuilds from any overlay reader (a file, or a stream still arriving over
 * the network), atomically into `outDir`. `o.overlay` names it in messages.
 */
export async function synthesizeReader(core: Core, overlay: OverlayReader, o: SynthesizeOptions): Promise<SynthesizedFiles> {
  const t0 = performance.now();
  const meta = overlay.meta;
  const machine = o.machine ?? meta.base.machine;
  const m0 = meta.base.machine;
  if (machine.machine !== m0.machine || machine.cpu !== m0.cpu || machine.ramMiB !== m0.ramMiB) {
    // The base id covers the machine config, so this is a wrong base; say which part differs.
    throw new CloudletError("WRONG_BASE", `overlay was made for a base on ${m0.machine} / ${m0.cpu} / ${m0.ramMiB} MiB, but the given base is ${machine.machine} / ${machine.cpu} / ${machine.ramMiB} MiB (file mode: --machine and --cpu name the base's machine)`, o.overlay);
  }
  const baseDir = o.baseDir ?? cacheDirFor(core, indexCacheDir(o.home), await fileIdentity(o.baseDisk), await fileIdentity(o.baseMem), machine);
  const base = await openBase(core, { disk: o.baseDisk, memory: o.baseMem, machine, dir: baseDir, needIndex: false, progress: o.progress, signal: o.signal });
  try {
    checkBase(meta, base.id, o.overlay);
    const outDir = resolve(o.outDir);
    const tmpDir = await prepareOutputDir(outDir, o.force ?? false);
    const diskFormat = o.diskFormat ?? "qcow2";
    const diskName = diskFormat === "qcow2" ? SYNTH_FILES.qcow2 : SYNTH_FILES.raw;
    // A caller that synthesizes often (the server) passes a warm codec and keeps it.
    const codec = o.codec ?? new WorkerCodec(o.threads);
    const sinks: Array<RawImageSink | Qcow2Sink> = [];
    try {
      const diskPath = join(tmpDir, diskName);
      const durable = o.durable ?? true;
      sinks.push(
        diskFormat === "qcow2"
          ? await Qcow2Sink.create(diskPath, meta.imageSizes[ImageKind.Disk], await fsp.realpath(o.baseDisk), durable)
          : await RawImageSink.create(diskPath, meta.imageSizes[ImageKind.Disk], o.baseDisk, durable),
      );
      sinks.push(await RawImageSink.create(join(tmpDir, SYNTH_FILES.memory), meta.imageSizes[ImageKind.Memory], o.baseMem, durable));
      sinks.push(await RawImageSink.create(join(tmpDir, SYNTH_FILES.state), meta.imageSizes[ImageKind.State], null, durable));
      const r = await synthesize({
        core,
        baseId: base.id,
        baseDisk: base.disk,
        baseMemory: base.memory,
        overlay,
        codec,
        sinks: sinks as [RawImageSink, RawImageSink, RawImageSink],
        progress: o.progress,
        signal: o.signal,
      });
      await Promise.all(sinks.map((s) => s.commit()));
      if (meta.imageSizes[ImageKind.State] === 0) await fsp.rm(join(tmpDir, SYNTH_FILES.state), { force: true });
      await fsp.writeFile(join(tmpDir, SYNTH_FILES.launch), JSON.stringify({ baseId: meta.base.id, machine: meta.base.machine, launch: meta.launch, disk: diskName }, null, 2) + "\n");
      await finishOutputDir(tmpDir, outDir);
      return {
        dir: outDir,
        disk: join(outDir, diskName),
        memory: join(outDir, SYNTH_FILES.memory),
        state: meta.imageSizes[ImageKind.State] ? join(outDir, SYNTH_FILES.state) : null,
        meta,
        chunks: r.chunks,
        seconds: (performance.now() - t0) / 1000,
      };
    } catch (e) {
      await Promise.allSettled(sinks.map((s) => s.abort()));
      await fsp.rm(tmpDir, { recursive: true, force: true });
      // Name the output the user asked for, not our temporary directory.
      if (e instanceof CloudletError && e.file?.startsWith(tmpDir)) throw new CloudletError(e.code, e.message, outDir + e.file.slice(tmpDir.length), { cause: e });
      throw e;
    } finally {
      if (!o.codec) await codec.close();
    }
  } finally {
    await base.close();
  }
}

/** Checks the output directory and makes a temporary sibling to build in. */
async function prepareOutputDir(outDir: string, force: boolean): Promise<string> {
  try {
    const entries = await fsp.readdir(outDir).catch((e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") return [] as string[];
      throw e;
    });
    if (entries.length && !force) throw new CloudletError("OUTPUT_FAILED", "output directory is not empty (use --force to replace it)", outDir);
    await fsp.mkdir(dirname(outDir), { recursive: true });
    const tmp = await fsp.mkdtemp(join(dirname(outDir), `.${basename(outDir)}.part-`));
    // The directory becomes the output: give it normal permissions (mkdtemp makes 0700).
    await fsp.chmod(tmp, 0o755);
    return tmp;
  } catch (e) {
    throw outputError(e, outDir);
  }
}

/** Moves the finished temporary directory into place. */
async function finishOutputDir(tmpDir: string, outDir: string): Promise<void> {
  try {
    const old = `${tmpDir}.old`;
    const had = await fsp.rename(outDir, old).then(() => true, () => false);
    await fsp.rename(tmpDir, outDir);
    if (had) await fsp.rm(old, { recursive: true, force: true });
  } catch (e) {
    throw outputError(e, outDir);
  }
}
