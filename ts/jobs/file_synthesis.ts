/** File-mode synthesis: rebuild the custom disk, memory and device state from a base and an overlay into a folder. */
import { promises as fsp } from "node:fs";
import { join, resolve } from "node:path";
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import { type SegmentCodec } from "../overlay/codec.ts";
import { CHUNK, ImageKind, type MachineConfig, type OverlayMeta } from "../overlay/format.ts";
import type { ProgressFn } from "../overlay/io.ts";
import { type BaseCheck, checkBase, prefetchSegments, startBaseCheck, synthesize } from "../overlay/synthesis.ts";
import { cacheDirFor, fileIdentity, openBase } from "../home/base_cache.ts";
import { WorkerCodec } from "../node/codec_pool.ts";
import { holeChunkRuns } from "../node/disk_image.ts";
import { RawImageSink } from "../node/files.ts";
import { indexCacheDir } from "../home/paths.ts";
import type { OverlayReader } from "../overlay/reader.ts";
import { openOverlay } from "../node/overlay_files.ts";
import { Qcow2Sink } from "../node/qcow2_sink.ts";
import { finalName, refuseOutputOverInputs, prepareOutputDir, finishOutputDir, writeFileDurable } from "../node/output_dir.ts";

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
  if (machine.machine !== m0.machine || machine.cpu !== m0.cpu || machine.ramMiB !== m0.ramMiB || !!machine.freePageReporting !== !!m0.freePageReporting) {
    // The base id covers the machine config, so this is a wrong base; say which part differs.
    throw new CloudletError("WRONG_BASE", `overlay was made for a base on ${m0.machine} / ${m0.cpu} / ${m0.ramMiB} MiB${m0.freePageReporting ? " with a reporting balloon" : ""}, but the given base is ${machine.machine} / ${machine.cpu} / ${machine.ramMiB} MiB${machine.freePageReporting ? " with a reporting balloon" : ""} (file mode: --machine and --cpu name the base's machine)`, o.overlay);
  }
  const diskFormat = o.diskFormat ?? "qcow2";
  const diskSize = meta.imageSizes[ImageKind.Disk];
  if (diskFormat === "qcow2" && diskSize % QCOW2_SECTOR) {
    // QEMU counts a qcow2's virtual size in 512-byte sectors and would drop the tail: never write a short disk.
    throw new CloudletError("BAD_INPUT", `the custom disk is ${diskSize} bytes, not a multiple of ${QCOW2_SECTOR}: a qcow2 image cannot hold its last ${diskSize % QCOW2_SECTOR} bytes; synthesize with --disk-format raw`, o.overlay);
  }
  const outDir = resolve(o.outDir);
  const inputs = [o.baseDisk, o.baseMem, o.overlay, ...meta.segments.map((_, i) => overlay.segmentFile(i))];
  await refuseOutputOverInputs(outDir, inputs, [o.home, ...(o.baseDir ? [o.baseDir] : [])]);
  const baseDir = o.baseDir ?? cacheDirFor(core, indexCacheDir(o.home), await fileIdentity(o.baseDisk), await fileIdentity(o.baseMem), machine);
  const base = await openBase(core, { disk: o.baseDisk, memory: o.baseMem, machine, dir: baseDir, needIndex: false, progress: o.progress, signal: o.signal });
  try {
    checkBase(meta, base.id, o.overlay);
    // A caller that synthesizes often (the server) passes a warm codec and keeps it.
    const codec = o.codec ?? new WorkerCodec(o.threads);
    // The first segments decode while the outputs are set up.
    const prefetched = prefetchSegments(core, overlay, codec);
    let tmpDir: string;
    try {
      tmpDir = await prepareOutputDir(outDir, o.force ?? false);
    } catch (e) {
      // The prefetches are dropped (they catch their own failures): closing our codec ends them.
      if (!o.codec) await codec.close();
      throw e;
    }
    const diskName = diskFormat === "qcow2" ? SYNTH_FILES.qcow2 : SYNTH_FILES.raw;
    const sinks: Array<RawImageSink | Qcow2Sink> = [];
    let baseCheck: BaseCheck | null = null;
    let checkStarted: Promise<unknown> = Promise.resolve();
    try {
      const diskPath = join(tmpDir, diskName);
      const durable = o.durable ?? true;
      // The outputs (sparse copies of the base images) and the base's hole
      // maps (a `qemu-img map` each) are set up at once, not one after another.
      const holes = Promise.all([holeChunkRuns(o.baseDisk, CHUNK), holeChunkRuns(o.baseMem, CHUNK)]);
      // The base check starts as soon as the holes are known, beside the rest of the set-up.
      checkStarted = holes.then(([disk, memory]) => (baseCheck = startBaseCheck(core, meta, base.disk, base.memory, { codec, digests: base.digests, knownZero: { disk, memory }, signal: o.signal })));
      checkStarted.catch(() => {}); // awaited below
      const made = await Promise.allSettled([
        diskFormat === "qcow2"
          ? fsp.realpath(o.baseDisk).then((backing) => Qcow2Sink.create(diskPath, meta.imageSizes[ImageKind.Disk], backing, durable))
          : RawImageSink.create(diskPath, meta.imageSizes[ImageKind.Disk], o.baseDisk, durable),
        RawImageSink.create(join(tmpDir, SYNTH_FILES.memory), meta.imageSizes[ImageKind.Memory], o.baseMem, durable),
        RawImageSink.create(join(tmpDir, SYNTH_FILES.state), meta.imageSizes[ImageKind.State], null, durable),
      ]);
      for (const m of made) if (m.status === "fulfilled") sinks.push(m.value);
      const failed = made.find((m) => m.status === "rejected");
      if (failed) throw (failed as PromiseRejectedResult).reason;
      await checkStarted;
      const r = await synthesize({
        core,
        baseId: base.id,
        baseDisk: base.disk,
        baseMemory: base.memory,
        overlay,
        codec,
        sinks: sinks as [RawImageSink, RawImageSink, RawImageSink],
        baseCheckStarted: baseCheck!,
        prefetched,
        progress: o.progress,
        signal: o.signal,
      });
      await Promise.all(sinks.map((s) => s.commit()));
      if (meta.imageSizes[ImageKind.State] === 0) await fsp.rm(join(tmpDir, SYNTH_FILES.state), { force: true });
      await writeFileDurable(join(tmpDir, SYNTH_FILES.launch), JSON.stringify({ baseId: meta.base.id, machine: meta.base.machine, launch: meta.launch, disk: diskName }, null, 2) + "\n");
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
      // A set-up failure: the base check may be starting or running (synthesize stops it on its own failures).
      await checkStarted.catch(() => {});
      (baseCheck as BaseCheck | null)?.stop();
      await (baseCheck as BaseCheck | null)?.done.catch(() => {});
      await Promise.allSettled(sinks.map((s) => s.abort()));
      await fsp.rm(tmpDir, { recursive: true, force: true });
      // Name the output the user asked for, not our temporary directory or part file.
      if (e instanceof CloudletError && e.file?.startsWith(tmpDir)) throw new CloudletError(e.code, e.message, finalName(outDir + e.file.slice(tmpDir.length)), { cause: e });
      throw e;
    } finally {
      if (!o.codec) await codec.close();
    }
  } finally {
    await base.close();
  }
}

/** QEMU's unit of a disk's virtual size. */
const QCOW2_SECTOR = 512;
