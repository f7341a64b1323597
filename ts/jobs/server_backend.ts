/**
 * The server's host side: the home's lock and session folders, bases from
 * the registry, pipelined synthesis with one warm codec pool, VM launches
 * through the chosen adapter, and cleanup of what a crashed server left
 * behind. It implements the server's port, so the server imports nothing
 * of the engine or the home.
 */
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import type { ProgressFn } from "../overlay/io.ts";
import type { OverlayReader } from "../overlay/reader.ts";
import type { LaunchedVm, ServedBase, ServerBackend } from "../server/server.ts";
import { WorkerCodec } from "../node/codec_pool.ts";
import { synthesizeReader, type SynthesizedFiles } from "./file_synthesis.ts";
import { homePaths } from "../home/paths.ts";
import { acquirePidLock } from "../node/pid_lock.ts";
import { Registry } from "../home/registry.ts";
import { cleanupOrphanVms } from "../vm/vm_records.ts";
import { baseFiles } from "./base_create.ts";
import { type HostChoice } from "../vm/host_choice.ts";
import { launchSynthesized } from "./vm_launch.ts";
import { earlyStartBlocker, synthesizeEarly } from "./early_start.ts";
import { bootOptions } from "./vm_synthesis.ts";
import type { OverlayMeta } from "../overlay/format.ts";
import { stopVm } from "../vm/vm_records.ts";

/** A backend over a cloudlet home. */
export class HomeBackend implements ServerBackend {
  private codec: WorkerCodec | null = null;

  /** @param core the core @param home the cloudlet home @param hostChoice which VM adapter */
  constructor(
    private readonly core: Core,
    private readonly home: string,
    private readonly hostChoice: HostChoice,
  ) {}

  async lockHome(): Promise<() => Promise<void>> {
    const lockFile = homePaths(this.home).serverLock;
    return await acquirePidLock(lockFile, 0, (pid) => new CloudletError("CONFLICT", `another cloudlet serve (process ${pid}) uses this home; stop it or give another --home`, lockFile));
  }

  cleanupOrphans(): Promise<string[]> {
    return cleanupOrphanVms(homePaths(this.home).sessions, { connect: this.hostChoice.host === "virsh" ? [this.hostChoice.connect ?? "qemu:///system"] : [] });
  }

  async resetSessions(): Promise<void> {
    const dir = homePaths(this.home).sessions;
    await fsp.rm(dir, { recursive: true, force: true });
    await fsp.mkdir(dir, { recursive: true });
  }

  sessionDir(id: string): string {
    return homePaths(this.home).session(id);
  }

  async bases(): Promise<ServedBase[]> {
    const rows = await new Registry(this.home).listBases();
    return rows
      .filter((b) => b.host === this.hostChoice.host)
      .map((b) => ({ id: b.id, name: b.name, disk: baseFiles(b).disk, memory: baseFiles(b).memory, dir: b.dir, diskSize: b.diskSize, memorySize: b.memorySize, machine: `${b.machine.machine}/${b.machine.cpu}/${b.machine.ramMiB}MiB` }));
  }

  /**
   * The codec workers all sessions share, started once: a session does not
   * wait for threads and WASM instances (0.15-0.3 s here), and concurrent
   * sessions cannot oversubscribe the cores. Replaced if a worker died.
   */
  warm(): WorkerCodec {
    if (!this.codec || this.codec.failed) this.codec = new WorkerCodec();
    return this.codec;
  }

  synthesize(base: ServedBase, sessionId: string, overlay: OverlayReader, o: { signal: AbortSignal; progress: ProgressFn }): Promise<SynthesizedFiles> {
    return synthesizeReader(this.core, overlay, {
      baseDisk: base.disk,
      baseMem: base.memory,
      baseDir: base.dir,
      overlay: `session ${sessionId}`,
      outDir: join(this.sessionDir(sessionId), "vm"),
      diskFormat: "qcow2",
      // A session's files die with it (and with the server): no fsync on the critical path.
      durable: false,
      codec: this.warm(),
      home: this.home,
      signal: o.signal,
      progress: o.progress,
    });
  }

  earlyBlocker(meta: OverlayMeta): Promise<string | null> {
    return earlyStartBlocker(this.hostChoice, meta);
  }

  async synthesizeEarly(base: ServedBase, sessionId: string, overlay: OverlayReader, o: { signal: AbortSignal; bindAddress: string; bootSegments: number; onResumed: (vm: LaunchedVm) => void }): Promise<void> {
    const row = await new Registry(this.home).getBase(base.id);
    // Under the sessions folder, so the server's orphan cleanup and reset cover it.
    const dir = homePaths(this.home).earlySession(sessionId);
    await synthesizeEarly({ core: this.core, home: this.home, hostChoice: this.hostChoice, signal: o.signal }, row, overlay, {
      overlayPath: `session ${sessionId}`,
      hostAddress: o.bindAddress,
      autoPorts: true,
      // The meta's boot set (segments and base pages), as `cloudlet synthesis --early-start` applies it.
      ...bootOptions(overlay.meta.bootSet),
      bootSegments: o.bootSegments,
      dir,
      onResumed: (vm) => o.onResumed({ vmId: vm.vmId, ports: vm.ports, stop: async () => {
          await stopVm(vm.runDir);
          await fsp.rm(dir, { recursive: true, force: true });
        } }),
    });
  }

  async launch(base: ServedBase, files: SynthesizedFiles, sessionId: string, bindAddress: string, signal: AbortSignal): Promise<LaunchedVm> {
    const row = await new Registry(this.home).getBase(base.id);
    const vm = await launchSynthesized({ core: this.core, home: this.home, hostChoice: this.hostChoice, signal }, row, files, {
      runDir: this.sessionDir(sessionId),
      hostAddress: bindAddress,
      autoPorts: true,
      name: `s${sessionId.slice(0, 8)}`,
      detach: false,
    });
    return { vmId: vm.id, ports: vm.portForwards, stop: () => vm.stop() };
  }

  async close(): Promise<void> {
    await this.codec?.close();
    this.codec = null;
  }
}
