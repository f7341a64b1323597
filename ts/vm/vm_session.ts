/**
 * VmSession: the life of one VM, shared by both adapters. The adapters supply
 * launching, the monitor (QMP), the state channel and killing; the session
 * owns the snapshot and restore sequences, cancellation and cleanup.
 *
 * ```text
 *   starting --launch ok--> running  --snapshot--> ending --> ended
 *       |                  incoming  --resume-->  running
 *       |                     |  stop / abort / QEMU died
 *       +--launch failed------+-----------------> ending --> ended
 * ```
 *
 * Invariants:
 * - `exited` resolves exactly once, after the process is gone and the files
 *   cloudlet created are removed (runtime files always; the memory file it
 *   created unless a snapshot kept it; logs when the start failed or was cancelled).
 * - Any abort (the start signal until detach, or an operation's signal) kills
 *   the VM: a half-done operation leaves nothing worth keeping.
 */
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { CloudletError } from "../errors.ts";
import { partName } from "../node/files.ts";
import { resolvePortForwards, resolveVncPort } from "./host_ports.ts";
import { SerialConsole, type WaitProgressFn } from "./serial_console.ts";
import type { FreeMemoryReport, PortForward, RunningVm, SnapshotOptions, SnapshotResult, VmExit, VmSpec } from "./vm_host.ts";
import { removeRuntimeFiles, selfOwner, VM_NAME_PREFIX, writeVmRecord, type VmRecord } from "./vm_records.ts";

/** A device-state stream between QEMU and a file: the URI to give QEMU, and when the bytes are all through. */
export interface StateChannel {
  uri: string;
  /** Called once QEMU reports the migration complete; resolves when every byte is durably in the file (outgoing) or sent (incoming). */
  finished(): Promise<void>;
  /** Releases sockets and descriptors (after success or failure). */
  close(): Promise<void>;
}

type Phase = "starting" | "running" | "incoming" | "ending" | "ended";

const MIGRATION_TIMEOUT_MS = 120_000;

/**
 * The wait for free page reporting before a snapshot. The guest reports at
 * most every 2 s (the kernel's PAGE_REPORTING_DELAY) and a fraction of each
 * free list per pass, so "settled" is: the RAM file's allocated blocks have
 * not shrunk for `quietMs` (over two reporting passes), polled every `pollMs`;
 * `maxMs` bounds the whole wait.
 */
export const FREE_MEMORY_SETTLE = { pollMs: 250, quietMs: 5000, maxMs: 90_000 };

/** Diagnostics a VM leaves in its run directory; kept after a normal end, removed when the start failed or was cancelled. */
export const LOG_FILES = ["serial.log", "qemu.log", "qemu.cmdline"];

/** Shared implementation of {@link RunningVm}. */
export abstract class VmSession implements RunningVm {
  readonly id: string;
  readonly console: SerialConsole;
  readonly serialLogPath: string;
  readonly exited: Promise<VmExit>;
  portForwards: PortForward[] = [];
  vncPort: number | null = null;
  protected phase: Phase = "starting";
  /** Set once the memory file belongs to a snapshot and must be kept. */
  private keepMemory = false;
  /** True when this session created the memory file (boot). */
  protected ownsMemory = false;
  protected endReason: "stop" | "snapshot" | "cancel" | "failed-start" | null = null;
  private resolveExit!: (e: VmExit) => void;
  private resolveGone!: (why: string) => void;
  /** Resolves with the reason as soon as the process is known to be gone (before cleanup). */
  private readonly gone: Promise<string>;
  private goneReason: string | null = null;
  private exitSeen = false;
  private readonly lifetime = new AbortController();
  private startSignal: AbortSignal | undefined;
  private readonly onStartAbort = () => void this.cancel();
  protected record: VmRecord | null = null;

  constructor(readonly spec: VmSpec) {
    this.id = `${slug(spec.name)}-${randomBytes(3).toString("hex")}`;
    this.serialLogPath = join(spec.runDir, "serial.log");
    this.exited = new Promise((r) => (this.resolveExit = r));
    this.gone = new Promise<string>((r) => (this.resolveGone = r));
    this.console = new SerialConsole(join(spec.runDir, "serial.sock"), this.serialLogPath, this.gone);
  }

  /** Guest name (qemu -name guest=..., libvirt domain name). */
  get vmName(): string {
    return `${VM_NAME_PREFIX}${this.id}`;
  }

  // ---- adapter hooks ---------------------------------------------------------

  /**
   * Launches the VM; called once by {@link begin}. Calls {@link markExited}
   * when the process ends. `signal` aborts when the VM ends or is cancelled.
   */
  protected abstract launch(signal: AbortSignal): Promise<void>;
  /** Runs a QMP command. */
  protected abstract monitor<T>(cmd: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T>;
  /** A channel QEMU migrates the device state into; bytes land in `file`. */
  protected abstract stateSink(file: string): Promise<StateChannel>;
  /** A channel QEMU reads incoming device state from `file` through. */
  protected abstract stateSource(file: string): Promise<StateChannel>;
  /** Ends the process: gracefully (quit, flush) or at once; resolves when the adapter has asked for it. */
  protected abstract kill(graceful: boolean): Promise<void>;
  /** Starts the guest's CPUs after an incoming migration. */
  protected abstract continueGuest(): Promise<void>;
  /** The end of QEMU's own log (stderr), for error messages. */
  protected abstract logTail(): Promise<string>;
  /** Adapter cleanup after the process is gone (before `exited` resolves). */
  protected async afterExit(): Promise<void> {}
  /** Stops keeping this process alive for the VM (detach). */
  protected unref(): void {}
  /** Adapter fields for the record. */
  protected abstract recordFields(): Pick<VmRecord, "host" | "pid" | "domain" | "connect" | "owners">;

  // ---- life cycle --------------------------------------------------------------

  /** Launches and binds `signal` to the VM's life; on failure removes everything and rethrows. */
  async begin(signal?: AbortSignal): Promise<this> {
    if (signal?.aborted) throw cancelled("before the VM started");
    this.startSignal = signal;
    signal?.addEventListener("abort", this.onStartAbort, { once: true });
    try {
      await this.launch(this.lifetime.signal);
      if (this.endReason === "cancel") throw cancelled("while the VM was starting");
      if (this.exitSeen) throw new CloudletError("GUEST", `${this.goneReason} (while starting)`, this.spec.runDir);
      this.phase = this.spec.incoming ? "incoming" : "running";
      return this;
    } catch (e) {
      this.endReason ??= signal?.aborted ? "cancel" : "failed-start";
      await this.kill(false).catch(() => {});
      if (!this.exitSeen) await this.markExited(null, null);
      await this.exited;
      // QEMU may have died on its own during the launch (its exit was then "unexpected" and the logs kept).
      for (const f of LOG_FILES) await fsp.rm(join(this.spec.runDir, f), { force: true }).catch(() => {});
      if (signal?.aborted && !(e instanceof CloudletError && e.code === "CANCELLED")) throw cancelled("while the VM was starting", e);
      throw e;
    }
  }

  /** Writes the record once the process exists. */
  protected async writeRecord(): Promise<void> {
    this.record = {
      id: this.id,
      ...this.recordFields(),
      runDir: this.spec.runDir,
      owner: selfOwner(),
      detached: false,
      ownsMemory: this.ownsMemory,
      memoryPath: this.spec.memory.path,
      portForwards: this.portForwards,
      hostAddress: this.spec.hostAddress ?? "127.0.0.1",
      createdAt: new Date().toISOString(),
    };
    await writeVmRecord(this.record);
  }

  /** Called by the adapter exactly when the VM process is gone. */
  protected async markExited(code: number | null, signal: string | null): Promise<void> {
    if (this.exitSeen) return;
    this.exitSeen = true;
    const expected = this.endReason !== null;
    let reason: string;
    if (this.endReason === "snapshot") reason = "the VM ended after its snapshot";
    else if (this.endReason === "stop") reason = "the VM was stopped";
    else if (this.endReason === "cancel") reason = "the VM was cancelled";
    else if (this.endReason === "failed-start") reason = "the VM failed to start";
    else {
      const how = signal ? `killed by ${signal}` : code !== null ? `exit code ${code}` : "process gone";
      const tail = await this.logTail().catch(() => "");
      reason = `the VM exited unexpectedly (${how})${tail ? `; QEMU said: ${tail}` : ""}`;
    }
    this.phase = "ending";
    this.goneReason = reason;
    this.resolveGone(reason);
    this.lifetime.abort();
    this.startSignal?.removeEventListener("abort", this.onStartAbort);
    await this.afterExit().catch(() => {});
    await removeRuntimeFiles(this.spec.runDir, this.ownsMemory && !this.keepMemory ? this.spec.memory.path : null);
    if (this.endReason === "cancel" || this.endReason === "failed-start") {
      for (const f of LOG_FILES) await fsp.rm(join(this.spec.runDir, f), { force: true }).catch(() => {});
    }
    this.phase = "ended";
    this.resolveExit({ code, signal, expected, reason });
  }

  /** Kills the VM after an abort; pending operations fail with CANCELLED. */
  private async cancel(): Promise<void> {
    if (this.exitSeen || this.endReason === "cancel") return;
    this.endReason = "cancel";
    this.lifetime.abort();
    await this.kill(false).catch(() => {});
    await this.exited;
  }

  /**
   * Runs `fn` until it finishes, the VM exits (GUEST error with the reason)
   * or `signal` aborts (CANCELLED, and the VM is killed).
   */
  protected async guard<T>(what: string, signal: AbortSignal | undefined, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
    if (signal?.aborted) {
      await this.cancel();
      throw cancelled(what);
    }
    if (this.exitSeen) throw new CloudletError("GUEST", `cannot ${what}: the VM is not running (${(await this.exited).reason})`, this.spec.runDir);
    const onAbort = () => void this.cancel();
    signal?.addEventListener("abort", onAbort, { once: true });
    // Whichever comes first: the operation, or the VM's end (an abort ends the VM too).
    const interrupted = this.gone.then((why) => {
      throw this.endReason === "cancel" ? cancelled(what) : new CloudletError("GUEST", `${why} (while trying to ${what})`, this.spec.runDir);
    });
    interrupted.catch(() => {});
    try {
      return await Promise.race([fn(AbortSignal.any([this.lifetime.signal, ...(signal ? [signal] : [])])), interrupted]);
    } catch (e) {
      // The operation may notice the end first (its signal is the VM's lifetime): report why the VM ended.
      if (this.endReason === "cancel" && !(e instanceof CloudletError && e.code === "CANCELLED")) throw cancelled(what, e);
      // A closed connection is noticed before the exit itself: give the reason a moment to arrive.
      const why = this.goneReason ?? (e instanceof CloudletError && e.code === "GUEST" ? await Promise.race([this.gone, sleep(3000).then(() => null)]) : null);
      if (why !== null && this.endReason !== "cancel") {
        throw new CloudletError("GUEST", `${why} (while trying to ${what})`, this.spec.runDir, { cause: e });
      }
      throw e;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  // ---- RunningVm ----------------------------------------------------------------

  async waitReady(marker: string | RegExp, timeoutMs = 120_000, signal?: AbortSignal, onWait?: WaitProgressFn): Promise<string> {
    if (this.phase === "incoming") throw new CloudletError("BAD_ARGUMENT", "a restored VM does not boot: call resume() instead of waitReady()");
    return this.guard(`wait for ${typeof marker === "string" ? `"${marker}"` : marker}`, signal, async (s) => (await this.console.waitFor(marker, timeoutMs, { signal: s, onWait })).line);
  }

  async snapshot(statePath: string, signal?: AbortSignal, opts: SnapshotOptions = {}): Promise<SnapshotResult> {
    if (this.spec.memory.share === false) {
      throw new CloudletError("BAD_ARGUMENT", "this VM maps its memory file copy-on-write (share: false), so its RAM cannot be saved: restart it with share: true");
    }
    if (this.exitSeen) throw new CloudletError("GUEST", `cannot snapshot: the VM is not running (${(await this.exited).reason})`, this.spec.runDir);
    if (this.phase !== "running") throw new CloudletError("BAD_ARGUMENT", `cannot snapshot a VM that is ${this.phase === "incoming" ? "waiting for resume()" : this.phase}`);
    const t0 = performance.now();
    let ts = t0;
    let t1 = t0;
    let t2 = t0;
    const tmp = partName(statePath);
    let stopped = false;
    let freeMemory: FreeMemoryReport | null = null;
    await this.guard("snapshot the VM", signal, async (s) => {
      if (this.spec.machine.freePageReporting && opts.settleFreeMemory !== false) freeMemory = await this.settleFreeMemory(s);
      ts = performance.now();
      await this.monitor("stop");
      stopped = true;
      t1 = performance.now();
      await this.monitor("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: true }] });
      const ch = await this.stateSink(tmp);
      try {
        await this.monitor("migrate", { uri: ch.uri });
        await this.waitMigration("saving the device state");
        await ch.finished();
      } finally {
        await ch.close();
      }
      await fsp.rename(tmp, statePath);
      t2 = performance.now();
    }).catch(async (e) => {
      await fsp.rm(tmp, { force: true });
      // A failed save leaves the guest paused; let it run on unless it is gone.
      if (stopped && !this.exitSeen) await this.monitor("cont").catch(() => {});
      throw e;
    });
    this.keepMemory = true;
    this.endReason = "snapshot";
    await this.kill(true);
    await this.exited;
    const stateBytes = (await fsp.stat(statePath)).size;
    return {
      statePath,
      memoryPath: this.spec.memory.path,
      stateBytes,
      ms: { settle: Math.round(ts - t0), stop: Math.round(t1 - ts), migrate: Math.round(t2 - t1), total: Math.round(performance.now() - t0) },
      freeMemory,
    };
  }

  async resume(signal?: AbortSignal): Promise<void> {
    if (!this.spec.incoming || this.phase !== "incoming") throw new CloudletError("BAD_ARGUMENT", "resume() is for a VM started with `incoming` (a restore), once");
    const state = this.spec.incoming.statePath;
    await this.guard("restore the VM", signal, async (s) => {
      await this.monitor("migrate-set-capabilities", { capabilities: [{ capability: "x-ignore-shared", state: true }] });
      const ch = await this.stateSource(state);
      try {
        await this.monitor("migrate-incoming", { uri: ch.uri });
        await this.waitMigration("loading the device state", state);
        await ch.finished();
      } finally {
        await ch.close();
      }
      // The stream carries the source's paused run state: the guest waits for `cont`.
      for (let i = 0; ; i++) {
        const st = await this.monitor<{ status: string }>("query-status");
        if (st.status !== "inmigrate") break;
        if (i > 2000 || s.aborted) throw new CloudletError("GUEST", "the VM stayed in the incoming state after the migration completed", state);
        await sleep(5);
      }
      await this.continueGuest();
      const st = await this.monitor<{ status: string }>("query-status");
      if (st.status !== "running") throw new CloudletError("GUEST", `the restored VM is "${st.status}", not running`, state);
      this.phase = "running";
    });
  }

  async stop(): Promise<void> {
    if (this.exitSeen) return void (await this.exited);
    this.endReason ??= "stop";
    await this.kill(true);
    await this.exited;
  }

  async detach(): Promise<void> {
    this.startSignal?.removeEventListener("abort", this.onStartAbort);
    this.startSignal = undefined;
    if (this.record) {
      this.record.detached = true;
      await writeVmRecord(this.record);
    }
    this.unref();
  }

  qmp<T = unknown>(cmd: string, args?: Record<string, unknown>): Promise<T> {
    return this.monitor<T>(cmd, args);
  }

  /**
   * Waits until the guest's free page reporting has settled: the RAM file's
   * allocated blocks stop shrinking (QEMU punches each reported range out of
   * the shared file), within FREE_MEMORY_SETTLE.maxMs. A guest whose driver
   * never took the balloon is not waited for.
   */
  private async settleFreeMemory(signal: AbortSignal): Promise<FreeMemoryReport> {
    const t0 = performance.now();
    const allocated = async () => (await fsp.stat(this.spec.memory.path)).blocks * 512;
    const size = this.spec.memory.sizeMiB * 1024 * 1024;
    const driver = await this.balloonDriver();
    const first = await allocated();
    let low = first;
    let settled = true;
    if (driver !== "absent") {
      const { pollMs, quietMs, maxMs } = FREE_MEMORY_SETTLE;
      let lastDrop = performance.now();
      for (;;) {
        await sleep(pollMs);
        signal.throwIfAborted();
        const now = performance.now();
        const cur = await allocated();
        if (cur < low) {
          low = cur;
          lastDrop = now;
        }
        if (now - lastDrop >= quietMs) break;
        if (now - t0 >= maxMs) {
          settled = false;
          break;
        }
      }
    }
    const last = await allocated();
    const discardedBytes = Math.max(0, first - last);
    return {
      // Without QEMU's word, a guest that discarded nothing at all is taken to have no driver.
      driver: driver === "unknown" && discardedBytes === 0 ? "absent" : driver,
      discardedBytes,
      allocatedBytes: last,
      freeBytes: Math.max(0, size - last),
      waitMs: Math.round(performance.now() - t0),
      settled,
    };
  }

  /** Whether a guest driver negotiated free page reporting with the balloon (QEMU 7.2+ `x-query-virtio-status`), or "unknown". */
  private async balloonDriver(): Promise<FreeMemoryReport["driver"]> {
    try {
      const devs = await this.monitor<Array<{ name: string; path: string }>>("x-query-virtio");
      const dev = devs.find((d) => d.name === "virtio-balloon");
      if (!dev) return "absent";
      const st = await this.monitor<{ status?: { statuses?: string[] }; "guest-features"?: { "dev-features"?: string[] } }>("x-query-virtio-status", { path: dev.path });
      const ok = st.status?.statuses?.some((x) => x.startsWith("VIRTIO_CONFIG_S_DRIVER_OK")) ?? false;
      const reporting = st["guest-features"]?.["dev-features"]?.some((f) => f.startsWith("VIRTIO_BALLOON_F_REPORTING")) ?? false;
      return ok && reporting ? "reporting" : "absent";
    } catch (e) {
      if (this.exitSeen) throw e;
      return "unknown";
    }
  }

  /** Polls query-migrate until completed; HOST_TOOL error on failed/cancelled/timeout. */
  private async waitMigration(what: string, file?: string): Promise<void> {
    const deadline = Date.now() + MIGRATION_TIMEOUT_MS;
    for (;;) {
      const st = await this.monitor<{ status?: string; "error-desc"?: string }>("query-migrate");
      if (st.status === "completed") return;
      if (st.status === "failed" || st.status === "cancelled") {
        await sleep(100); // let QEMU finish writing its log
        const tail = await this.logTail().catch(() => "");
        throw new CloudletError("HOST_TOOL", `${what} failed: ${st["error-desc"] ?? st.status}${tail ? `; QEMU said: ${tail}` : ""}`, file);
      }
      if (Date.now() > deadline) throw new CloudletError("HOST_TOOL", `${what} did not complete within ${MIGRATION_TIMEOUT_MS / 1000} s (status ${st.status})`, file);
      await sleep(5);
    }
  }

  /** Resolves host ports (0 = pick one) and checks that the given ones are free. */
  protected async resolvePorts(): Promise<void> {
    this.portForwards = await resolvePortForwards(this.spec.portForwards, this.spec.hostAddress);
    this.vncPort = this.spec.vnc ? await resolveVncPort(this.spec.vnc.port, this.spec.hostAddress) : null;
  }

  /** Removes the old runtime files and logs of an earlier VM in the same run directory. */
  protected async prepareRunDir(): Promise<void> {
    await fsp.mkdir(this.spec.runDir, { recursive: true });
    await removeRuntimeFiles(this.spec.runDir, null);
    for (const f of LOG_FILES) await fsp.rm(join(this.spec.runDir, f), { force: true });
  }

  /** Creates the memory file for a boot (sparse), or checks it for a restore. */
  protected async prepareMemory(): Promise<void> {
    const { path, sizeMiB } = this.spec.memory;
    const bytes = sizeMiB * 1024 * 1024;
    if (this.spec.incoming) {
      const st = await fsp.stat(path).catch(() => null);
      if (!st) throw new CloudletError("MISSING_INPUT", "the memory image to restore does not exist", path);
      if (st.size !== bytes) throw new CloudletError("BAD_INPUT", `the memory image is ${st.size} bytes, but the machine has ${sizeMiB} MiB (${bytes} bytes)`, path);
      return;
    }
    // A fresh file: QEMU would otherwise hand the guest the old file's bytes as its initial RAM.
    await fsp.rm(path, { force: true });
    const fh = await fsp.open(path, "wx", 0o600);
    this.ownsMemory = true;
    try {
      await fh.truncate(bytes);
    } finally {
      await fh.close();
    }
  }
}

/** Checks a spec before anything is created: sizes agree, inputs exist. */
export async function validateSpec(spec: VmSpec): Promise<void> {
  const bad = (msg: string) => new CloudletError("BAD_ARGUMENT", msg);
  if (!spec.name || !spec.runDir) throw bad("a VM needs a name and a run directory");
  if (spec.machine.ramMiB !== spec.memory.sizeMiB) throw bad(`machine.ramMiB (${spec.machine.ramMiB}) and memory.sizeMiB (${spec.memory.sizeMiB}) differ`);
  if (!Number.isInteger(spec.vcpus) || spec.vcpus < 1) throw bad(`vcpus must be a positive integer, not ${spec.vcpus}`);
  if (!Number.isInteger(spec.memory.sizeMiB) || spec.memory.sizeMiB < 16) throw bad(`memory.sizeMiB must be at least 16, not ${spec.memory.sizeMiB}`);
  const need = async (p: string, what: string) => {
    const st = await fsp.stat(p).catch(() => null);
    if (!st?.isFile()) throw new CloudletError("MISSING_INPUT", `${what} does not exist`, p);
  };
  if (spec.boot) {
    await need(spec.boot.kernel, "the kernel");
    await need(spec.boot.initrd, "the initrd");
  }
  await need(spec.disk.path, "the disk image");
  if (spec.incoming) await need(spec.incoming.statePath, "the device-state file to restore");
  for (const f of spec.portForwards) {
    if (f.guestPort < 1 || f.guestPort > 65535 || f.hostPort < 0 || f.hostPort > 65535) throw bad(`bad port forward ${f.proto}:${f.hostPort}->${f.guestPort}`);
  }
}

/** The CANCELLED error for an aborted step. */
export function cancelled(what: string, cause?: unknown): CloudletError {
  return new CloudletError("CANCELLED", `cancelled (${what}); the VM was stopped and its files removed`, undefined, cause ? { cause } : undefined);
}

function slug(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-+|-+$/g, "").slice(0, 32) || "vm";
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
