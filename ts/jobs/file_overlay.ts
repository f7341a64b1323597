/** File-mode overlay: compare a custom disk and memory image with a base's and write the overlay. */
import { promises as fsp } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import { DEFAULT_PRESET } from "../overlay/codec.ts";
import { type LaunchConfig, type MachineConfig, type OverlayMeta } from "../overlay/format.ts";
import type { ProgressFn } from "../overlay/io.ts";
import { writeOverlay, type WorkingSetOrder } from "../overlay/writer.ts";
import { cacheDirFor, fileIdentity, openBase } from "../home/base_cache.ts";
import { dictCapFor, WorkerCodec } from "../node/codec_pool.ts";
import type { DiskStride } from "../overlay/base_scan.ts";
import { openCustomDisk, rawExtents } from "../node/disk_image.ts";
import { FileSource, outputError } from "../node/files.ts";
import { indexCacheDir } from "../home/paths.ts";
import { outputLayout, PackedOverlayOutput, SplitOverlayOutput } from "../node/overlay_files.ts";
import { CLOUDLET_VERSION } from "../version.ts";
import { defaultMachine } from "../home/machine_defaults.ts";
import { plannedRealPath } from "../node/output_dir.ts";

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
  /** A recorded working set to write first, as the boot set (VM mode with a warm-up; see writeOverlay). */
  workingSet?: WorkingSetOrder;
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
    await refuseOverlayOverInputs(where, [o.baseDisk, o.baseMem, o.disk, o.mem, ...(o.state ? [o.state] : [])]);
  } catch (e) {
    await Promise.all([base.close(), disk.close(), mem.close(), state?.close()]);
    throw outputError(e, where.path);
  }
  const output = where.layout === "packed" ? new PackedOverlayOutput(where.path, core, o.progress) : new SplitOverlayOutput(where.stem);
  const codec = new WorkerCodec(o.threads, o.preset ?? DEFAULT_PRESET, dictCapFor(o.segmentBytes ?? 1 << 20));
  try {
    // The memory file's holes (pages never written, or reported free by the guest and punched out) read as zero without a read.
    const memExtents = await rawExtents(o.mem);
    const launch: LaunchConfig = {
      portForwards: o.launch?.portForwards ?? [],
      memoryMiB: o.launch?.memoryMiB ?? machine.ramMiB,
      vcpus: o.launch?.vcpus ?? 1,
      ...(o.launch?.appUrl !== undefined ? { appUrl: o.launch.appUrl } : {}),
      ...(memExtents ? { memoryFreeBytes: memExtents.filter((e) => e.zero).reduce((t, e) => t + e.length, 0) } : {}),
    };
    const r = await writeOverlay({
      core,
      base,
      custom: { disk: { source: disk.source, changed: disk.changed }, memory: { source: mem, changed: memExtents ?? undefined }, state: state ? { source: state } : null },
      launch,
      codec,
      output,
      segmentBytes: o.segmentBytes,
      version: CLOUDLET_VERSION,
      progress: o.progress,
      signal: o.signal,
      workingSet: o.workingSet,
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

/** Refuses an overlay output that would replace (or, for the seed layout, remove as a stale segment) one of `inputs`. */
async function refuseOverlayOverInputs(where: { layout: "packed" | "split"; path: string; stem: string }, inputs: string[]): Promise<void> {
  const outDir = await plannedRealPath(dirname(where.path));
  const segment = new RegExp(`^${basename(where.stem).replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}-\\d+\\.xz$`);
  for (const input of inputs) {
    for (const p of [resolve(input), await fsp.realpath(input).catch(() => resolve(input))]) {
      const inOutDir = (await plannedRealPath(dirname(p))) === outDir;
      if (inOutDir && (basename(p) === basename(where.path) || (where.layout === "split" && segment.test(basename(p))))) {
        throw new CloudletError("BAD_ARGUMENT", `the output would replace the input ${input}; choose another -o`, where.path);
      }
    }
  }
}
