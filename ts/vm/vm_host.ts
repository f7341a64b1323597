/**
 * The VM host interface: what cloudlet needs from a hypervisor launcher.
 * Two adapters implement it, {@link QemuHost} (qemu-system-x86_64 + QMP) and
 * {@link VirshHost} (libvirt through virsh). Both use the same snapshot and
 * restore path, so RAM is always a plain file:
 *
 * ```text
 *   boot      RAM = memory-backend-file(mem-path=memory.path, share=on)
 *   snapshot  stop -> x-ignore-shared -> migrate (device state only, < 1 MB) -> completed -> quit
 *             => memory.path IS the guest RAM image, statePath holds the devices
 *   restore   same command line + -incoming defer -> x-ignore-shared -> migrate-incoming
 *             -> completed -> cont
 * ```
 *
 * A snapshot restores only with the same adapter, the same machine, CPU, RAM
 * size and vCPU count, and the disk exactly as it was at the snapshot; only
 * the host side of port forwards may change (docs/vm-hosts.md).
 */
import type { MachineConfig, PortForward } from "../overlay/format.ts";
import type { SerialConsole, WaitProgressFn } from "./serial_console.ts";

export type { MachineConfig, PortForward };

/** Direct kernel boot. */
export interface KernelBoot {
  kernel: string;
  initrd: string;
  append: string;
}

/** Everything needed to launch a VM. */
export interface VmSpec {
  /** A short name; the VM id and the qemu `-name` / libvirt domain are derived from it. */
  name: string;
  /** Directory for sockets, logs, pid file and record (created when missing). */
  runDir: string;
  /** Direct kernel boot, or null to boot the disk through the BIOS. */
  boot: KernelBoot | null;
  /** The disk (for cloudlet: a qcow2 top layer over the raw base disk). */
  disk: { path: string; format: "qcow2" | "raw" };
  /**
   * Guest RAM file. On boot it is created (replacing what is there); on a
   * restore it must exist and hold the snapshot's RAM. `share: false` maps it
   * copy-on-write (the file stays untouched, but the VM cannot be snapshotted).
   */
  memory: { path: string; sizeMiB: number; share?: boolean };
  /** Machine type, CPU model and RAM size; `ramMiB` must equal `memory.sizeMiB`. */
  machine: MachineConfig;
  vcpus: number;
  /** Host-to-guest forwards on user-mode networking; hostPort 0 picks a free port. */
  portForwards: PortForward[];
  /** Host address the forwards listen on; default 127.0.0.1. */
  hostAddress?: string;
  /**
   * A VGA display served over VNC on hostAddress:port (port 5900 or above;
   * 0 picks a free one). The VGA device is part of the machine: a snapshot
   * taken with it restores only with it (the port may differ).
   */
  vnc?: { port: number };
  /** Restore: start paused waiting for this device-state file; then call {@link RunningVm.resume}. */
  incoming?: { statePath: string };
}

/** How a VM ended. */
export interface VmExit {
  /** Exit code of QEMU when known. */
  code: number | null;
  /** Signal that ended QEMU when known. */
  signal: string | null;
  /** True when cloudlet ended it (stop, snapshot, cancel). */
  expected: boolean;
  /** One sentence, with the end of QEMU's log when it died unexpectedly. */
  reason: string;
}

/** Options for {@link RunningVm.snapshot}. */
export interface SnapshotOptions {
  /**
   * Before stopping the guest, wait (bounded) until the guest's free page
   * reporting has punched the free pages out of the RAM file; default true.
   * Only machines with `freePageReporting` have anything to wait for.
   */
  settleFreeMemory?: boolean;
}

/** What the wait for free page reporting saw (see docs/vm-hosts.md, "Free memory"). */
export interface FreeMemoryReport {
  /**
   * "reporting": the guest's virtio_balloon driver negotiated free page reporting;
   * "absent": the balloon is there but no guest driver reports to it;
   * "unknown": QEMU could not say (then "absent" is inferred when nothing was discarded).
   */
  driver: "reporting" | "absent" | "unknown";
  /** Bytes that left the RAM file while cloudlet waited (allocated before minus after; 0 when it grew). */
  discardedBytes: number;
  /** Bytes of the RAM file still allocated when the guest was stopped. */
  allocatedBytes: number;
  /** Bytes of the RAM file that were holes when the guest was stopped (never written, or reported free). */
  freeBytes: number;
  /** Milliseconds spent waiting. */
  waitMs: number;
  /** False when the wait ended at its time limit while the file was still shrinking. */
  settled: boolean;
}

/** What a snapshot wrote. */
export interface SnapshotResult {
  /** Device-state file (the migration stream without RAM). */
  statePath: string;
  /** The guest RAM image (the VM's memory file). */
  memoryPath: string;
  stateBytes: number;
  /** Milliseconds: settle (free page reporting), stop, migrate (until completed), total including the VM's exit. */
  ms: { settle: number; stop: number; migrate: number; total: number };
  /** The free page reporting wait, or null when the machine has no reporting balloon or the wait was turned off. */
  freeMemory: FreeMemoryReport | null;
}

/** A VM that a {@link VmHost} started. */
export interface RunningVm {
  /** Unique id (also the directory-independent handle in the record). */
  readonly id: string;
  readonly spec: VmSpec;
  /** The forwards as launched (hostPort 0 resolved). */
  readonly portForwards: PortForward[];
  /** The VNC port as launched, or null without a display. */
  readonly vncPort: number | null;
  readonly console: SerialConsole;
  readonly serialLogPath: string;
  /** Resolves when the VM has ended, however it ended; never rejects. */
  readonly exited: Promise<VmExit>;
  /** Waits for a line that starts with `marker` (or matches the RegExp) on the serial console; returns that line. GUEST error (with the serial tail) on timeout or exit. */
  waitReady(marker: string | RegExp, timeoutMs?: number, signal?: AbortSignal, onWait?: WaitProgressFn): Promise<string>;
  /** Saves device state to `statePath` and ends the VM; the memory file then holds the RAM. */
  snapshot(statePath: string, signal?: AbortSignal, opts?: SnapshotOptions): Promise<SnapshotResult>;
  /** Restore only: loads the incoming device state and continues the guest. */
  resume(signal?: AbortSignal): Promise<void>;
  /** Ends the VM (a memory file it created on boot is removed). */
  stop(): Promise<void>;
  /** Lets the VM outlive this process: the start signal no longer applies, orphan cleanup leaves it alone. */
  detach(): Promise<void>;
  /** Runs a raw QMP command (for diagnostics). */
  qmp<T = unknown>(cmd: string, args?: Record<string, unknown>): Promise<T>;
}

/** A way to launch VMs. */
export interface VmHost {
  /** "qemu" or "virsh". */
  readonly kind: "qemu" | "virsh";
  /**
   * Starts a VM. `signal` applies to the VM's whole life until
   * {@link RunningVm.detach}: aborting kills the VM and removes what cloudlet created.
   */
  start(spec: VmSpec, signal?: AbortSignal): Promise<RunningVm>;
}
