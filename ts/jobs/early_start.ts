/**
 * Early start (issue 12, items 4 and 5): `cloudlet synthesis BASE OVERLAY
 * --early-start` resumes the VM before its overlay is applied, and fills it
 * while it runs.
 *
 * ```text
 *   overlay segments --(decode, rebuilt-hash check)--> image/disk.raw, memory.raw, state.bin
 *        |  the state segments first, then all in order (the fill);          ^
 *        |  a chunk the VM asks for raises its segment to now                 | verified chunks only
 *   LazyOverlay ------ memory pages --> postcopy source --> QEMU (memfd RAM, -incoming defer)
 *               \----- disk chunks ---> NBD export ------> qcow2 top layer (writes stay local)
 *   fill done: postcopy completes (every page sent), the top layer's backing
 *   switches to disk.raw, the export closes: the VM no longer needs cloudlet.
 * ```
 *
 * A chunk is served from the base unless the overlay's meta lists it in a
 * segment; then that segment is decoded and rebuilt, and its rebuilt hash
 * must match the meta before any chunk of it is handed to QEMU. Base chunks
 * are checked against the base's stored digests before they are handed out.
 * Any failure kills the VM and removes its folder.
 */
import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { type Deferred, deferred } from "../deferred.ts";
import { CloudletError } from "../errors.ts";
import { CHUNK, ImageKind, type OverlayMeta, type PortForward, type SegmentRecords } from "../overlay/format.ts";
import { readAt } from "../overlay/io.ts";
import { SHORT_DIGEST } from "../overlay/base_scan.ts";
import { applySegment, checkBase, fetchSegment, verifyBaseBytes } from "../overlay/synthesis.ts";
import type { SegmentCodec } from "../overlay/codec.ts";
import type { OverlayReader } from "../overlay/reader.ts";
import type { Core } from "../core/core.ts";
import { openBase, type OpenedBase } from "../home/base_cache.ts";
import { homePaths } from "../home/paths.ts";
import type { BaseRow } from "../home/registry.ts";
import { WorkerCodec } from "../node/codec_pool.ts";
import { requireExecutable, runCommandOk } from "../node/command.ts";
import { holeChunkRuns } from "../node/disk_image.ts";
import { FileSource, RawImageSink } from "../node/files.ts";
import type { HostChoice } from "../vm/host_choice.ts";
import { resolvePortForwards } from "../vm/host_ports.ts";
import { parseDeviceState } from "../vm/migration_stream.ts";
import { lazyDiskArgs, NbdExport, switchBackingToLocal } from "../vm/nbd_export.ts";
import { resumePostcopy, startPostcopyDestination, type PostcopyDestination } from "../vm/postcopy_source.ts";
import { QemuHost, qemuArgs } from "../vm/qemu_host.ts";
import { selfOwner, VM_NAME_PREFIX, writeVmRecord, type VmRecord } from "../vm/vm_records.ts";
import type { VmSpec } from "../vm/vm_host.ts";
import { accelShown, say, type VmJobContext } from "./context.ts";
import { baseFiles } from "./base_create.ts";
import { SYNTH_FILES } from "./file_synthesis.ts";

/** `--early-start` (fall back to full synthesis when the lazy path cannot run) or `--early-start=require` (an error then). */
export type EarlyStartMode = "auto" | "require";

/**
 * Test switch: set to anything, it makes cloudlet behave as if userfaultfd
 * were missing, so the fallback can be tested on a machine that has it.
 */
export const NO_USERFAULTFD_ENV = "CLOUDLET_NO_USERFAULTFD";
/**
 * Test switch: milliseconds the background fill waits before it starts and
 * before each segment it starts itself, so that a test sees the VM run (and
 * fetch on demand) before it is fully local. Requests on demand never wait for it.
 */
export const FILL_DELAY_ENV = "CLOUDLET_EARLY_FILL_DELAY_MS";
/**
 * Test switch beside FILL_DELAY_ENV: a path whose appearance ends the fill's waits, so that a test holds the
 * fill for as long as it checks the VM while it fills (the delay is then only an upper bound) and no longer.
 */
export const FILL_GATE_ENV = "CLOUDLET_EARLY_FILL_GATE";
/**
 * Test switch: a path the postcopy resume waits for (at most a minute), so that a test sees the VM
 * before its guest runs (`cloudlet ps`: resuming).
 */
export const RESUME_GATE_ENV = "CLOUDLET_EARLY_RESUME_GATE";

/** Waits `ms`, or less once the file `gate` exists (looked for every 100 ms). */
async function fillPause(ms: number, gate: string | undefined): Promise<void> {
  if (!gate) return new Promise((r) => setTimeout(r, ms));
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await fsp.access(gate).then(() => true, () => false)) return;
    await new Promise((r) => setTimeout(r, Math.min(100, end - Date.now())));
  }
}

/** Why the lazy path cannot run for this host and overlay, or null when it can. */
export async function earlyStartBlocker(host: HostChoice, meta: OverlayMeta): Promise<string | null> {
  if (host.host !== "qemu") return "the virsh host cannot resume a VM through postcopy (libvirt drives both ends of a migration)";
  if (process.env[NO_USERFAULTFD_ENV]) return `userfaultfd is unavailable (${NO_USERFAULTFD_ENV} is set)`;
  // QEMU 7.2 calls the userfaultfd syscall (it does not use /dev/userfaultfd):
  // the kernel must have it, and QEMU must be root or the sysctl must allow it.
  const unprivileged = (await fsp.readFile("/proc/sys/vm/unprivileged_userfaultfd", "utf8").catch(() => null))?.trim();
  if (unprivileged === undefined) return "this kernel has no userfaultfd (no /proc/sys/vm/unprivileged_userfaultfd)";
  if (process.getuid?.() !== 0 && unprivileged !== "1") return "userfaultfd is not permitted for QEMU here (not root, and vm.unprivileged_userfaultfd is 0)";
  if (meta.imageSizes[ImageKind.State] === 0) return "the overlay carries no device state";
  if (meta.imageSizes[ImageKind.Disk] % 512) return "the custom disk's size is not a multiple of 512 bytes (its qcow2 top layer cannot hold it)";
  return null;
}

/** What an early start measured. */
export interface EarlyStartReport {
  /** Milliseconds from the start of the command until QEMU reported the guest running. */
  resumedMs: number;
  /** Milliseconds until every page was in the VM and its disk was local (the VM no longer needs cloudlet). */
  localMs: number;
  /** Guest RAM pages the guest faulted on before the background sent them. */
  pagesOnDemand: number;
  /** Disk chunks a guest read had to wait for (their segment was not applied yet). */
  chunksOnDemand: number;
  /** Segments whose application a request raised ahead of the background order. */
  segmentsOnDemand: number;
  /** Segments applied before the VM resumed: the boot set (when given) and those holding device state. */
  segmentsBeforeResume: number;
  /** Guest RAM pages of the boot set, sent before the device state. */
  pagesBeforeResume: number;
  /** Segments in the overlay. */
  segments: number;
}

/** A VM started early; it is fully local when this is returned. */
export interface EarlyStartedVm {
  vmId: string;
  dir: string;
  host: string;
  ports: PortForward[];
  meta: OverlayMeta;
  ms: { synthesis: number; launch: number };
  early: EarlyStartReport;
}

/** Options for {@link synthesizeEarly}. */
export interface EarlyStartOptions {
  /** The overlay's path, for messages. */
  overlayPath: string;
  hostAddress?: string;
  autoPorts?: boolean;
  threads?: number;
  /**
   * How many leading segments form the boot set: applied before the resume,
   * their memory pages sent before the device state. `cloudlet synthesis`
   * passes the meta's boot set (format version 2), or 0 when it has none.
   */
  bootSegments?: number;
  /** Base memory pages of the boot set (the meta's `basePages`, expanded): sent before the device state too. */
  bootBasePages?: number[];
  /**
   * Record a working set instead of keeping the VM (`cloudlet overlay
   * --warmup-*`): the VM runs demand-only (no background fill or push, so
   * every first touch is a request), `touched` hears every memory page the
   * guest faults on and every disk chunk it reads, `warmup` runs once the VM
   * resumed, and then the VM is stopped and its folder removed.
   */
  record?: WorkingSetRecorder;
  /** The VM's folder (default: a new one under the home's VMs); the server keeps it in the session's folder. */
  dir?: string;
  /** Told once the guest runs, before the fill ends (the server announces the VM then). */
  onResumed?: (vm: { vmId: string; host: string; ports: PortForward[]; runDir: string; resumedMs: number }) => void;
}

/** See {@link EarlyStartOptions.record}. */
export interface WorkingSetRecorder {
  /** A memory page (kind 1) was requested or a disk chunk (kind 0) read; called again for later reads of a chunk. */
  touched(kind: 0 | 1, index: number): void;
  /** The warm-up, run once the VM resumed; the VM is thrown away when it settles. */
  warmup(vm: { runDir: string; hostAddress: string; ports: PortForward[] }): Promise<void>;
}

/**
 * Chunks of the synthesized disk and memory, served verified while the
 * overlay is still being applied (see the module doc). Segments apply at
 * most once each, in the background order or earlier when asked for.
 */
export class LazyOverlay {
  /** Per segment: 1 once applied and checked. */
  readonly applied: Uint8Array;
  /** Segments raised by a request, per image kind (disk, memory). */
  readonly raised = [0, 0];
  private readonly starts: Float64Array[] = [];
  private readonly counts: Float64Array[] = [];
  private readonly segOf: Int32Array[] = [];
  private readonly applying = new Map<number, Promise<void>>();
  private readonly decoding = new Map<number, Promise<SegmentRecords>>();
  private readonly waiting = new Map<number, Deferred<void>>();
  private readonly chunkCounts = [0, 0, 0];
  private failure: unknown = null;
  private readonly onFail: Array<(e: unknown) => void> = [];
  private baseDigests: Array<Promise<Uint8Array> | null> = [null, null];
  private readonly baseBlocks = new Map<number, Promise<{ bytes: Uint8Array; bad: Uint8Array }>>();

  constructor(
    private readonly core: Core,
    private readonly overlay: OverlayReader,
    private readonly base: OpenedBase,
    private readonly codec: SegmentCodec,
    private readonly sinks: [RawImageSink, RawImageSink, RawImageSink],
    /** Read handles on the sinks' files (disk, memory), for chunks already applied. */
    private readonly local: [FileSource, FileSource],
  ) {
    const meta = overlay.meta;
    this.applied = new Uint8Array(meta.segments.length);
    for (const kind of [0, 1, 2]) {
      const runs: Array<[number, number, number]> = [];
      meta.segments.forEach((s, i) => s.ranges.forEach(([k, first, n]) => k === kind && runs.push([first, n, i])));
      runs.sort((a, b) => a[0] - b[0]);
      this.starts.push(Float64Array.from(runs, (r) => r[0]));
      this.counts.push(Float64Array.from(runs, (r) => r[1]));
      this.segOf.push(Int32Array.from(runs, (r) => r[2]));
    }
  }

  /** The segment that holds chunk `index` of image `kind`, or -1 when the chunk is the base's. */
  segmentOf(kind: number, index: number): number {
    const s = this.starts[kind];
    let lo = 0;
    let hi = s.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (s[mid] > index) hi = mid - 1;
      else if (index >= s[mid] + this.counts[kind][mid]) lo = mid + 1;
      else return this.segOf[kind][mid];
    }
    return -1;
  }

  /** Segments that hold chunks of `kind`, in segment order. */
  segmentsWith(kind: number): number[] {
    return this.overlay.meta.segments.flatMap((s, i) => (s.ranges.some(([k]) => k === kind) ? [i] : []));
  }

  /** The chunks of `kind` listed in segments (all, or the first `count`), in segment order (the background order of postcopy). */
  chunksInSegmentOrder(kind: number, count = Infinity): number[] {
    const out: number[] = [];
    for (const s of this.overlay.meta.segments.slice(0, count)) for (const [k, first, n] of s.ranges) if (k === kind) for (let i = 0; i < n; i++) out.push(first + i);
    return out;
  }

  /** True when chunk `index` of `kind` can be served without waiting for a segment. */
  ready(kind: number, index: number): boolean {
    const s = this.segmentOf(kind, index);
    return s < 0 || this.applied[s] === 1;
  }

  /** A request wants chunk `index` of `kind` (0 disk, 1 memory): its segment is applied now if it has not started. */
  demand(kind: 0 | 1, index: number): void {
    const s = this.segmentOf(kind, index);
    if (s < 0 || this.applying.has(s) || this.failure) return;
    this.raised[kind]++;
    this.apply(s).catch(() => {});
  }

  /** The verified bytes of chunk `index` of image `kind` (CHUNK bytes); waits for its segment in the fill's order unless a request raised it. */
  async chunk(kind: 0 | 1, index: number): Promise<Uint8Array> {
    if (this.failure) throw this.failure;
    const s = this.segmentOf(kind, index);
    if (s < 0) return this.baseChunk(kind, index);
    await this.whenApplied(s);
    return readAt(this.local[kind], index * CHUNK, CHUNK);
  }

  /** Applies segment `i` (once): decode, rebuild into the sinks, check the rebuilt hash. */
  apply(i: number): Promise<void> {
    let p = this.applying.get(i);
    if (!p) {
      p = (async () => {
        if (this.failure) throw this.failure;
        const recs = await this.decode(i);
        const { written } = await applySegment(this.core, this.overlay.meta, i, recs, [this.base.disk, this.base.memory, null], this.sinks, this.overlay.segmentFile(i), this.chunkCounts);
        await written;
        this.decoding.delete(i);
        this.applied[i] = 1;
        this.waiter(i).resolve();
      })();
      p.catch((e) => this.fail(e));
      this.applying.set(i, p);
    }
    return p;
  }

  /** Resolves once segment `i` is applied, by whichever path; rejects when the fill failed. */
  whenApplied(i: number): Promise<void> {
    if (this.applied[i]) return Promise.resolve();
    if (this.failure) return Promise.reject(this.failure);
    return this.waiter(i).promise;
  }

  /**
   * Applies every segment in order, decoding a few ahead. `delayMs` (a test
   * switch) waits before the fill starts and before each segment it starts itself,
   * less once the file `gate` (another) exists.
   */
  async fill(signal: AbortSignal, delayMs = 0, gate?: string): Promise<void> {
    const n = this.overlay.meta.segments.length;
    const ahead = Math.max(2, this.codec.parallelism * 2);
    if (delayMs) await fillPause(delayMs, gate);
    for (let i = 0; i < n; i++) {
      signal.throwIfAborted();
      if (this.failure) throw this.failure;
      // Read ahead only what has arrived: asking a link-fed reader for a later
      // segment raises it, and the fill's read-ahead would queue in front of the guest's own requests.
      for (let k = i; k < Math.min(n, i + ahead); k++) if (!this.applying.has(k) && (this.overlay.segmentArrived?.(k) ?? true)) this.decode(k).catch(() => {});
      if (delayMs && !this.applying.has(i)) await fillPause(delayMs, gate);
      await this.apply(i);
    }
  }

  /** Stops everything: pending and later requests reject with `e` (the first failure wins). */
  fail(e: unknown): void {
    if (this.failure) return;
    this.failure = e;
    for (const w of this.waiting.values()) w.reject(e);
    for (const f of this.onFail) f(e);
  }

  /** A promise that rejects with the first failure. */
  failed(): Promise<never> {
    const p = new Promise<never>((_, reject) => (this.failure ? reject(this.failure) : this.onFail.push(reject)));
    p.catch(() => {});
    return p;
  }

  private decode(i: number): Promise<SegmentRecords> {
    let p = this.decoding.get(i);
    if (!p) {
      p = fetchSegment(this.core, this.overlay, this.codec, i);
      p.catch(() => {});
      this.decoding.set(i, p);
    }
    return p;
  }

  private waiter(i: number): Deferred<void> {
    let w = this.waiting.get(i);
    if (!w) {
      w = deferred();
      this.waiting.set(i, w);
    }
    return w;
  }

  /** A base chunk, checked against the digest stored when the base was prepared. */
  private async baseChunk(kind: 0 | 1, index: number): Promise<Uint8Array> {
    const block = Math.floor(index / BASE_BLOCK);
    const key = kind * 2 ** 40 + block;
    let p = this.baseBlocks.get(key);
    if (!p) {
      p = this.readBaseBlock(kind, block);
      p.catch(() => {});
      this.baseBlocks.set(key, p);
      // A few blocks: the background reads the base in order, requests hit the same block rarely.
      if (this.baseBlocks.size > 16) this.baseBlocks.delete(this.baseBlocks.keys().next().value!);
    }
    const { bytes, bad } = await p;
    const at = index - block * BASE_BLOCK;
    if (bad[at]) {
      const src = kind === 0 ? this.base.disk : this.base.memory;
      throw new CloudletError("WRONG_BASE", `base ${kind === 0 ? "disk chunk" : "memory page"} ${index} differs from the base this overlay was made for: the file was changed after it was prepared`, src.name);
    }
    return bytes.slice(at * CHUNK, (at + 1) * CHUNK);
  }

  /**
   * Reads and checks BASE_BLOCK base chunks at once: one read and one hash
   * call instead of one per page (the background asks for every page).
   */
  private async readBaseBlock(kind: 0 | 1, block: number): Promise<{ bytes: Uint8Array; bad: Uint8Array }> {
    const src = kind === 0 ? this.base.disk : this.base.memory;
    const n = Math.ceil(src.size / CHUNK);
    const first = block * BASE_BLOCK;
    const bytes = await readAt(src, first * CHUNK, BASE_BLOCK * CHUNK);
    // All digests of one image at once (16 bytes a chunk).
    const all = await (this.baseDigests[kind] ??= this.base.digests.read(kind, 0, n));
    const got = this.core.hashChunks("blake3", bytes);
    const bad = new Uint8Array(BASE_BLOCK);
    for (let i = 0; i < BASE_BLOCK; i++) {
      const c = first + i;
      if (c < n) {
        for (let b = 0; b < SHORT_DIGEST; b++) {
          if (all[c * SHORT_DIGEST + b] !== got[i * 32 + b]) {
            bad[i] = 1;
            break;
          }
        }
      } else if (bytes.subarray(i * CHUNK, (i + 1) * CHUNK).some((x) => x !== 0)) bad[i] = 1; // past the end: zeros
    }
    return { bytes, bad };
  }
}

/** Base chunks read and checked together (256 KiB). */
const BASE_BLOCK = 64;

/**
 * Rebuilds the VM of `overlay` on `base` lazily: resumes it as soon as its
 * device state is applied, serves its memory (postcopy) and disk (NBD) on
 * demand, and returns once it is fully local. On any failure the VM is
 * killed and its folder removed.
 */
export async function synthesizeEarly(ctx: VmJobContext, base: BaseRow, overlay: OverlayReader, o: EarlyStartOptions): Promise<EarlyStartedVm> {
  const t0 = performance.now();
  const meta = overlay.meta;
  const sizes = meta.imageSizes;
  const dirs = homePaths(ctx.home);
  await fsp.mkdir(dirs.vms, { recursive: true });
  const vmId = randomBytes(6).toString("hex");
  const dir = o.dir ?? join(dirs.vms, vmId);
  const imageDir = join(dir, "image");
  const runDir = join(dir, "vm");
  await fsp.mkdir(imageDir, { recursive: true });
  await fsp.mkdir(runDir, { recursive: true });
  const files = baseFiles(base);
  const paths = { disk: join(imageDir, SYNTH_FILES.raw), top: join(imageDir, SYNTH_FILES.qcow2), memory: join(imageDir, SYNTH_FILES.memory), state: join(imageDir, SYNTH_FILES.state) };
  const stop = new AbortController();
  const signal = ctx.signal ? AbortSignal.any([ctx.signal, stop.signal]) : stop.signal;
  const codec = new WorkerCodec(o.threads);
  const sinks: RawImageSink[] = [];
  const readers: FileSource[] = [];
  let opened: OpenedBase | null = null;
  let dest: PostcopyDestination | null = null;
  let nbd: NbdExport | null = null;
  let lazy: LazyOverlay | null = null;
  const onAbort = () => lazy?.fail(new CloudletError("CANCELLED", "early start cancelled; the VM was stopped"));
  ctx.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    const ob = (opened = await openBase(ctx.core, { disk: files.disk, memory: files.memory, machine: base.machine, dir: base.dir, needIndex: false, progress: ctx.progress, signal }));
    checkBase(meta, ob.id, o.overlayPath);
    // The VM's folder names its base while it fills, so the base cannot be deleted under it.
    await fsp.writeFile(join(imageDir, SYNTH_FILES.launch), JSON.stringify({ baseId: meta.base.id, machine: meta.base.machine, launch: meta.launch, disk: SYNTH_FILES.qcow2, earlyStart: true }, null, 2) + "\n");
    const created = await Promise.allSettled([
      RawImageSink.create(paths.disk, sizes[ImageKind.Disk], files.disk, false),
      RawImageSink.create(paths.memory, sizes[ImageKind.Memory], files.memory, false),
      RawImageSink.create(paths.state, sizes[ImageKind.State], null, false),
    ]);
    for (const c of created) if (c.status === "fulfilled") sinks.push(c.value);
    for (const c of created) if (c.status === "rejected") throw c.reason;
    readers.push(await FileSource.open(sinks[0].file.tmp), await FileSource.open(sinks[1].file.tmp), await FileSource.open(sinks[2].file.tmp));
    const lz = (lazy = new LazyOverlay(ctx.core, overlay, ob, codec, sinks as [RawImageSink, RawImageSink, RawImageSink], [readers[0], readers[1]]));
    const failed = lz.failed();

    // Before the resume: the boot set (when given) and the device state.
    const bootSegments = Math.min(meta.segments.length, Math.max(0, o.bootSegments ?? 0));
    const before = [...new Set([...Array.from({ length: bootSegments }, (_, i) => i), ...lz.segmentsWith(ImageKind.State)])];
    for (const s of before) await Promise.race([lz.apply(s), failed]);
    const state = parseDeviceState(await readAt(readers[2], 0, sizes[ImageKind.State]), `${o.overlayPath} (device state)`);

    // The disk: an NBD export under a local qcow2 top layer whose header already names disk.raw.
    await runCommandOk(requireExecutable("qemu-img", "qemu-utils"), ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-u", "-b", paths.disk, "-F", "raw", paths.top, String(sizes[ImageKind.Disk])], { signal, what: "qemu-img create (lazy disk top layer)" });
    const diskSize = sizes[ImageKind.Disk];
    nbd = await NbdExport.listen({
      socketPath: join(runDir, "nbd.sock"),
      name: "disk",
      size: diskSize,
      provider: {
        ready: (c) => lz.ready(ImageKind.Disk, c),
        prioritize: (c) => lz.demand(ImageKind.Disk, c),
        chunk: async (c) => {
          o.record?.touched(ImageKind.Disk, c);
          lz.demand(ImageKind.Disk, c);
          const b = await lz.chunk(ImageKind.Disk, c);
          return b.subarray(0, Math.min(CHUNK, diskSize - c * CHUNK));
        },
      },
      onError: (e) => lz.fail(e),
    });

    // The memory: postcopy into a memfd-backed QEMU with the base's devices.
    const host = new QemuHost({ accel: ctx.hostChoice.accel });
    const accel = (await host.resolveAccel()).accel;
    await accelShown(ctx, host);
    const hostAddress = o.hostAddress ?? "127.0.0.1";
    const ports = await resolvePortForwards(meta.launch.portForwards.map((p) => (o.autoPorts ? { ...p, hostPort: 0 } : p)), hostAddress);
    const ramMiB = Math.round(sizes[ImageKind.Memory] / (1 << 20));
    const spec: VmSpec = { name: "early", runDir, boot: files.boot, disk: { path: paths.top, format: "qcow2" }, memory: { path: paths.memory, sizeMiB: ramMiB }, machine: base.machine, vcpus: base.vcpus, portForwards: ports, hostAddress };
    const id = `early-${randomBytes(3).toString("hex")}`;
    const args = lazyLaunchArgs(qemuArgs(spec, { vmName: `${VM_NAME_PREFIX}${id}`, accel, portForwards: ports, vncPort: null }), ramMiB, lazyDiskArgs({ topPath: paths.top, socketPath: join(runDir, "nbd.sock"), exportName: "disk", bootIndex: files.boot ? undefined : 1 }));
    dest = await startPostcopyDestination({ binary: host.binary, args, runDir });
    const record: VmRecord = { id, host: "qemu", runDir, pid: dest.pid, owner: selfOwner(), detached: false, ownsMemory: false, memoryPath: paths.memory, portForwards: ports, hostAddress, createdAt: new Date().toISOString(), filling: true, resuming: true };
    await writeVmRecord(record);
    if (process.env[RESUME_GATE_ENV]) await fillPause(60_000, process.env[RESUME_GATE_ENV]);
    const pc = resumePostcopy({
      destination: dest,
      state,
      ramBytes: sizes[ImageKind.Memory],
      pages: (i) => lz.chunk(ImageKind.Memory, i),
      // Base pages only where nothing waits (a meta that lists a page a later segment holds must not stall the resume).
      precopy: [...lz.chunksInSegmentOrder(ImageKind.Memory, bootSegments), ...(o.bootBasePages ?? []).filter((p) => p * CHUNK < sizes[ImageKind.Memory] && lz.ready(ImageKind.Memory, p))],
      order: o.record ? [] : lz.chunksInSegmentOrder(ImageKind.Memory),
      demandOnly: Boolean(o.record),
      onRequest: (p) => {
        o.record?.touched(ImageKind.Memory, p);
        lz.demand(ImageKind.Memory, p);
      },
      signal,
    });
    pc.complete.catch((e) => lz.fail(e));
    await Promise.race([pc.resumed, failed]);
    const resumedMs = performance.now() - t0;
    await writeVmRecord({ ...record, resuming: false });
    if (o.record) {
      // Recording: the warm-up, then the VM goes (it was never meant to stay).
      say(ctx, `warm-up: VM resumed after ${(resumedMs / 1000).toFixed(1)} s; recording the pages and chunks it touches`);
      await Promise.race([o.record.warmup({ runDir, hostAddress, ports }), failed]);
      const early = { resumedMs, localMs: performance.now() - t0, pagesOnDemand: pc.stats.requestedPages, chunksOnDemand: nbd.stats.waited, segmentsOnDemand: lz.raised[0] + lz.raised[1], segmentsBeforeResume: before.length, pagesBeforeResume: pc.stats.precopyPages, segments: meta.segments.length };
      throw new RecordingDone({ vmId, dir, host: hostAddress, ports, meta, ms: { synthesis: early.localMs, launch: 0 }, early });
    }
    // The background starts once the guest runs (on 2 cores it would slow the resume): every
    // segment in order, and every base byte checked against the overlay's base id, as in full synthesis.
    const baseChecked = (async () => {
      const knownZero = { disk: await holeChunkRuns(files.disk, CHUNK), memory: await holeChunkRuns(files.memory, CHUNK) };
      await verifyBaseBytes(ctx.core, meta, ob.disk, ob.memory, { digests: ob.digests, knownZero, signal });
    })();
    baseChecked.catch((e) => lz.fail(e));
    const delay = Number(process.env[FILL_DELAY_ENV] ?? 0) || 0;
    const filled = (async () => {
      await lz.fill(signal, delay, process.env[FILL_GATE_ENV] || undefined);
      await baseChecked;
      await Promise.all(sinks.map((s) => s.finish()));
      await Promise.all(sinks.map((s) => s.commit()));
    })();
    filled.catch((e) => lz.fail(e));
    const where = ports.map((p) => `${p.proto} ${hostAddress}:${p.hostPort} -> guest port ${p.guestPort}`).join(", ") || "no port forwards";
    o.onResumed?.({ vmId, host: hostAddress, ports, runDir, resumedMs });
    say(ctx, `early start: VM ${vmId} resumed after ${(resumedMs / 1000).toFixed(1)} s (${where}); filling ${meta.segments.length} segments in the background`);

    await Promise.race([Promise.all([filled, pc.complete]), failed]);
    // Every page is in QEMU and disk.raw is complete: the VM stops depending on this process.
    await switchBackingToLocal(dest.qmp, { localPath: paths.disk, topPath: paths.top });
    const chunksOnDemand = nbd.stats.waited;
    await nbd.close();
    nbd = null;
    await writeVmRecord({ ...record, filling: false, resuming: false, detached: true });
    dest.detach();
    const localMs = performance.now() - t0;
    say(ctx, `early start: VM ${vmId} fully local after ${(localMs / 1000).toFixed(1)} s`);
    const early: EarlyStartReport = {
      resumedMs,
      localMs,
      pagesOnDemand: pc.stats.requestedPages,
      chunksOnDemand,
      segmentsOnDemand: lz.raised[0] + lz.raised[1],
      segmentsBeforeResume: before.length,
      pagesBeforeResume: pc.stats.precopyPages,
      segments: meta.segments.length,
    };
    return { vmId, dir, host: hostAddress, ports, meta, ms: { synthesis: localMs, launch: 0 }, early };
  } catch (e) {
    lazy?.fail(e instanceof RecordingDone ? new CloudletError("CANCELLED", "the warm-up VM was stopped") : e);
    stop.abort();
    // The VM first (it must not run on a missing page), then everything it was built from.
    await dest?.kill();
    await nbd?.close();
    await Promise.allSettled(sinks.map((s) => s.abort()));
    for (const r of readers) await r.close().catch(() => {});
    readers.length = 0;
    await fsp.rm(dir, { recursive: true, force: true });
    // A recording ends the same way as a failure: nothing of the VM is kept.
    if (e instanceof RecordingDone) return e.vm;
    throw e;
  } finally {
    ctx.signal?.removeEventListener("abort", onAbort);
    for (const r of readers) await r.close().catch(() => {});
    await codec.close();
    await opened?.close();
  }
}

/** Thrown past the rest of synthesizeEarly once a recording's warm-up is done, so that its cleanup runs. */
class RecordingDone {
  constructor(readonly vm: EarlyStartedVm) {}
}

/** The qcow2 host's launch line with guest RAM in a memfd (postcopy) and the disk lazy (NBD under a qcow2 top). */
function lazyLaunchArgs(args: string[], ramMiB: number, disk: string[]): string[] {
  const out = args.slice();
  const mem = out.findIndex((a) => a.startsWith("memory-backend-file,"));
  const drive = out.indexOf("-drive");
  if (mem < 0 || drive < 0 || out[drive + 2] !== "-device" || !out[drive + 3].startsWith("virtio-blk-pci,")) {
    throw new CloudletError("HOST_TOOL", "the qemu launch line does not have the memory and disk arguments early start replaces");
  }
  out[mem] = `memory-backend-memfd,id=mem,size=${ramMiB}M,share=on`;
  // In place: the disk keeps its PCI slot, which the saved device state expects.
  out.splice(drive, 4, ...disk);
  return out;
}
