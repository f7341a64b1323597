/**
 * The server's host side: bases from the registry, VM launches through the
 * chosen adapter, and cleanup of what a crashed server left behind.
 */
import { join } from "node:path";
import type { Core } from "../core/core.ts";
import type { LaunchedVm, ServedBase, ServerBackend } from "../server/server.ts";
import type { SynthesizedFiles } from "./file_jobs.ts";
import { Registry } from "./registry.ts";
import { cleanupOrphanVms } from "./vm/vm_records.ts";
import { baseFiles, type HostChoice, launchSynthesized } from "./vm_jobs.ts";

/** A backend over a cloudlet home. */
export class HomeBackend implements ServerBackend {
  /** @param core the core @param home the cloudlet home @param hostChoice which VM adapter */
  constructor(
    private readonly core: Core,
    private readonly home: string,
    private readonly hostChoice: HostChoice,
  ) {}

  async bases(): Promise<ServedBase[]> {
    const rows = await new Registry(this.home).listBases();
    return rows
      .filter((b) => b.host === this.hostChoice.host)
      .map((b) => ({ id: b.id, name: b.name, disk: baseFiles(b).disk, memory: baseFiles(b).memory, dir: b.dir, diskSize: b.diskSize, memorySize: b.memorySize, machine: `${b.machine.machine}/${b.machine.cpu}/${b.machine.ramMiB}MiB` }));
  }

  async launch(base: ServedBase, files: SynthesizedFiles, sessionId: string, bindAddress: string, signal: AbortSignal): Promise<LaunchedVm> {
    const row = await new Registry(this.home).getBase(base.id);
    const vm = await launchSynthesized({ core: this.core, home: this.home, hostChoice: this.hostChoice, signal }, row, files, {
      runDir: join(this.home, "sessions", sessionId),
      hostAddress: bindAddress,
      autoPorts: true,
      name: `s${sessionId.slice(0, 8)}`,
      detach: false,
    });
    return { vmId: vm.id, ports: vm.portForwards, stop: () => vm.stop() };
  }

  cleanupOrphans(): Promise<string[]> {
    return cleanupOrphanVms(join(this.home, "sessions"), { connect: this.hostChoice.host === "virsh" ? [this.hostChoice.connect ?? "qemu:///system"] : [] });
  }
}
