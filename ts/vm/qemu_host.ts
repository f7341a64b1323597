/**
 * QemuHost: launches qemu-system-x86_64 directly, detached in its own session
 * (so a Ctrl-C aimed at cloudlet does not reach it), with QMP and the serial
 * console on unix sockets in the run directory. The command line is the one
 * proven in /work/scratch/guest/FINDINGS.md; see docs/vm-hosts.md.
 *
 * Device state moves over a unix socket that cloudlet serves (`migrate
 * unix:`), so cloudlet writes the state file itself and knows when it is
 * complete; `exec:` would leave a `cat` writing after QEMU says "completed".
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, createReadStream, openSync, promises as fsp } from "node:fs";
import { connect, createServer, type Socket } from "node:net";
import { constants } from "node:os";
import { basename, join } from "node:path";
import { CloudletError } from "../errors.ts";
import { accelFromEnv, decideAccel, lastLines, requireExecutable, requireKvmAccess, runCommand, type AccelChoice, type AccelDecision } from "../node/command.ts";
import { QmpClient } from "./qmp.ts";
import type { RunningVm, VmHost, VmSpec } from "./vm_host.ts";
import type { VmRecord } from "./vm_records.ts";
import { sleep, validateSpec, VmSession, type StateChannel } from "./vm_session.ts";

/** Options for {@link QemuHost}. */
export interface QemuHostOptions {
  /** QEMU binary (name in PATH or path); default qemu-system-x86_64. */
  binary?: string;
  /**
   * Accelerator; default `$CLOUDLET_ACCEL` or "tcg" (the safe default: /dev/kvm
   * may exist and still fail guests). "kvm" and "auto" check that KVM guests
   * run first (see {@link decideAccel}); "auto" falls back to TCG.
   */
  accel?: AccelChoice;
}

/** The resolved launch parameters that {@link qemuArgs} turns into a command line. */
export interface QemuLaunch {
  vmName: string;
  accel: "tcg" | "kvm";
  portForwards: VmSpec["portForwards"];
  /** VNC port (needs spec.vnc), or null. */
  vncPort: number | null;
}

/** Launches VMs with qemu-system-x86_64 and QMP. */
export class QemuHost implements VmHost {
  readonly kind = "qemu" as const;
  readonly binary: string;
  readonly accel: AccelChoice;
  private decided: Promise<AccelDecision> | null = null;

  constructor(opts: QemuHostOptions = {}) {
    this.binary = opts.binary ?? "qemu-system-x86_64";
    this.accel = accelFromEnv(opts.accel);
  }

  /** The accelerator VMs of this host run with (decided once; see {@link decideAccel}). */
  resolveAccel(): Promise<AccelDecision> {
    return (this.decided ??= decideAccel(this.accel, requireExecutable(this.binary, "qemu-system-x86")));
  }

  /** Starts a VM (see {@link VmHost.start}). */
  async start(spec: VmSpec, signal?: AbortSignal): Promise<RunningVm> {
    await validateSpec(spec);
    const binary = requireExecutable(this.binary, "qemu-system-x86");
    const { accel } = await this.resolveAccel();
    try {
      return await new QemuSession(spec, binary, accel).begin(signal);
    } catch (e) {
      // auto: a guest that KVM cannot even start gets TCG (the failed start removed its files).
      if (this.accel !== "auto" || accel !== "kvm" || !(e instanceof CloudletError && e.code === "HOST_TOOL")) throw e;
      this.decided = Promise.resolve({ accel: "tcg", fallback: `QEMU failed to start the guest under KVM: ${e.message}` });
      return new QemuSession(spec, binary, "tcg").begin(signal);
    }
  }
}

/** The qemu-system-x86_64 arguments for `spec` (FINDINGS.md's command line; a restore adds `-incoming defer`). */
export function qemuArgs(spec: VmSpec, l: QemuLaunch): string[] {
  const run = spec.runDir;
  const mem = `${spec.memory.sizeMiB}M`;
  const host = spec.hostAddress ?? "127.0.0.1";
  const fwd = l.portForwards.map((f) => `,hostfwd=${f.proto}:${host}:${f.hostPort}-:${f.guestPort}`).join("");
  const args = [
    "-name", `guest=${l.vmName}`,
    "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
    "-machine", `${spec.machine.machine},accel=${l.accel},memory-backend=mem`,
    "-cpu", spec.machine.cpu, "-smp", String(spec.vcpus), "-m", mem,
    "-object", `memory-backend-file,id=mem,size=${mem},mem-path=${qemuOpt(spec.memory.path)},share=${spec.memory.share === false ? "off" : "on"}`,
  ];
  if (spec.boot) args.push("-kernel", spec.boot.kernel, "-initrd", spec.boot.initrd, "-append", spec.boot.append);
  args.push(
    "-drive", `file=${qemuOpt(spec.disk.path)},format=${spec.disk.format},if=none,id=d0,discard=unmap,detect-zeroes=unmap,cache=writeback`,
    "-device", `virtio-blk-pci,drive=d0,id=vblk0${spec.boot ? "" : ",bootindex=1"}`,
    "-netdev", `user,id=n0${fwd}`,
    "-device", "virtio-net-pci,netdev=n0,id=vnet0,mac=52:54:00:12:34:56",
    "-chardev", `socket,id=ser0,path=${qemuOpt(join(run, "serial.sock"))},server=on,wait=off,logfile=${qemuOpt(join(run, "serial.log"))},logappend=on`,
    "-serial", "chardev:ser0",
    "-qmp", `unix:${qemuOpt(join(run, "qmp.sock"))},server=on,wait=off`,
    "-pidfile", join(run, "qemu.pid"),
  );
  if (spec.vnc && l.vncPort !== null) args.push("-device", "VGA,id=vga0", "-vnc", `${host}:${l.vncPort - 5900}`);
  // Last, at a fixed slot, so that a machine without it keeps every other device where it was.
  if (spec.machine.freePageReporting) args.push("-device", `virtio-balloon-pci,id=${BALLOON_ID},free-page-reporting=on,addr=${BALLOON_PCI_SLOT}`);
  if (spec.incoming) args.push("-incoming", "defer");
  return args;
}

/** Device id of the reporting balloon (libvirt names its memballoon the same). */
export const BALLOON_ID = "balloon0";
/** PCI slot of the reporting balloon on both adapters: after disk (4) and network (5) on libvirt; free on plain QEMU. */
export const BALLOON_PCI_SLOT = "0x6";

/** Escapes a value inside a QEMU `key=value,...` option (a comma is written twice). */
function qemuOpt(v: string): string {
  return v.replace(/,/g, ",,");
}

class QemuSession extends VmSession {
  private child: ChildProcess | null = null;
  private qmpClient: QmpClient | null = null;
  private exitedFlag = false;

  constructor(
    spec: VmSpec,
    private readonly binary: string,
    private readonly accel: "tcg" | "kvm",
  ) {
    super(spec);
  }

  private get logPath() {
    return join(this.spec.runDir, "qemu.log");
  }

  protected async launch(signal: AbortSignal): Promise<void> {
    const spec = this.spec;
    await this.resolvePorts();
    await this.prepareRunDir();
    await this.prepareMemory();
    if (signal.aborted) return;
    const args = qemuArgs(spec, { vmName: this.vmName, accel: this.accel, portForwards: this.portForwards, vncPort: this.vncPort });
    await fsp.writeFile(join(spec.runDir, "qemu.cmdline"), [this.binary, ...args].map(shellWord).join(" ") + "\n");
    const fd = openSync(this.logPath, "a");
    try {
      this.child = spawn(this.binary, args, { detached: true, stdio: ["ignore", fd, fd] });
    } finally {
      closeSync(fd);
    }
    const child = this.child;
    const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));
    child.once("exit", (code, sig) => {
      this.exitedFlag = true;
      void this.markExited(...exitStatus(code, sig));
    });
    if (!child.pid) throw new CloudletError("HOST_TOOL", `cannot start ${this.binary}: ${(await spawnError).message}`);
    await this.writeRecord();
    try {
      this.qmpClient = await QmpClient.connect(join(spec.runDir, "qmp.sock"), { timeoutMs: 30_000, signal, alive: () => !this.exitedFlag });
    } catch (e) {
      if (this.endReason === "cancel") return;
      // Exit status and log are what tell the user why; the QMP error says only that QEMU is gone.
      await Promise.race([this.exited, sleep(2000)]);
      throw await this.startError(e);
    }
  }

  private async startError(cause: unknown): Promise<CloudletError> {
    const log = await fsp.readFile(this.logPath, "utf8").catch(() => "");
    const rule = /Could not set up host forwarding rule '([^']*)'/.exec(log);
    if (rule) {
      return new CloudletError("CONFLICT", `QEMU could not listen for the port forward ${rule[1]}: the host port is in use; stop what listens there, or give --auto-ports to use free host ports`, undefined, { cause });
    }
    const tail = lastLines(log, 6);
    // No file in the error: the log is removed with the failed VM; its words are in the message.
    return new CloudletError("HOST_TOOL", `${basename(this.binary)} failed to start${tail ? `: ${tail}` : ` (${(cause as Error)?.message ?? cause})`}`, undefined, { cause });
  }

  protected recordFields(): Pick<VmRecord, "host" | "pid" | "domain" | "connect" | "owners"> {
    return { host: "qemu", pid: this.child?.pid ?? null };
  }

  protected monitor<T>(cmd: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T> {
    if (!this.qmpClient) return Promise.reject(new CloudletError("GUEST", `QMP ${cmd}: the VM is not running`));
    return this.qmpClient.execute<T>(cmd, args, timeoutMs);
  }

  protected async stateSink(file: string): Promise<StateChannel> {
    const sock = join(this.spec.runDir, "migrate.sock");
    await fsp.rm(sock, { force: true });
    const fh = await fsp.open(file, "wx", 0o644);
    let conn: Socket | null = null;
    let settle!: { resolve: () => void; reject: (e: unknown) => void };
    const finished = new Promise<void>((resolve, reject) => (settle = { resolve, reject }));
    finished.catch(() => {});
    const server = createServer((c) => {
      server.close(); // QEMU connects once
      conn = c;
      void (async () => {
        let off = 0;
        for await (const chunk of c as AsyncIterable<Uint8Array>) {
          await fh.write(chunk, 0, chunk.length, off);
          off += chunk.length;
        }
        await fh.sync();
      })().then(settle.resolve, settle.reject);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(sock, () => resolve());
    });
    return {
      uri: `unix:${sock}`,
      finished: () => finished,
      close: async () => {
        server.close();
        (conn as Socket | null)?.destroy();
        await fh.close().catch(() => {});
        await fsp.rm(sock, { force: true });
      },
    };
  }

  protected async stateSource(file: string): Promise<StateChannel> {
    const sock = join(this.spec.runDir, "migrate.sock");
    await fsp.rm(sock, { force: true });
    let conn: Socket | null = null;
    // QEMU listens once migrate-incoming has run; connect and send the file then.
    const finished = (async () => {
      for (let i = 0; !conn; i++) {
        conn = await new Promise<Socket | null>((resolve) => {
          const c = connect(sock);
          c.once("error", () => (c.destroy(), resolve(null)));
          c.once("connect", () => resolve(c));
        });
        if (!conn) {
          if (i > 1000 || this.exitedFlag) throw new CloudletError("GUEST", "QEMU did not open its incoming migration socket", sock);
          await sleep(5);
        }
      }
      const c = conn as Socket;
      await new Promise<void>((resolve, reject) => {
        const rs = createReadStream(file);
        rs.once("error", reject);
        c.once("error", reject);
        rs.pipe(c);
        c.once("finish", resolve);
      });
    })();
    finished.catch(() => {});
    return {
      uri: `unix:${sock}`,
      finished: () => finished,
      close: async () => {
        (conn as Socket | null)?.destroy();
        await fsp.rm(sock, { force: true });
      },
    };
  }

  protected async kill(graceful: boolean): Promise<void> {
    const pid = this.child?.pid;
    if (!pid || this.exitedFlag) return;
    if (graceful && this.qmpClient) {
      await this.qmpClient.execute("quit", undefined, 5000).catch(() => {});
      const deadline = Date.now() + 5000;
      while (!this.exitedFlag && Date.now() < deadline) await sleep(10);
      if (this.exitedFlag) return;
      this.child?.kill("SIGTERM");
      await Promise.race([this.exited, sleep(3000)]);
      if (this.exitedFlag) return;
    }
    this.child?.kill("SIGKILL");
    // Wait for the exit event: QEMU is our child, so it stays a zombie until node reaps it.
    await Promise.race([this.exited, sleep(10_000)]);
  }

  protected continueGuest(): Promise<void> {
    return this.monitor("cont");
  }

  protected async logTail(): Promise<string> {
    return lastLines(await fsp.readFile(this.logPath, "utf8").catch(() => ""), 6);
  }

  protected override async afterExit(): Promise<void> {
    this.qmpClient?.close();
  }

  protected override unref(): void {
    this.child?.unref();
    this.qmpClient?.close();
    this.qmpClient = null;
  }
}

/** Checks that KVM can be enabled (`query-kvm` on a machine-less QEMU); KVM_PERMISSION or HOST_TOOL error otherwise. */
export async function probeKvm(binary = "qemu-system-x86_64"): Promise<void> {
  requireKvmAccess({ open: true });
  const input = ['{"execute":"qmp_capabilities"}', '{"execute":"query-kvm"}', '{"execute":"quit"}'].join("\n") + "\n";
  const r = await runCommand(binary, ["-accel", "kvm", "-machine", "none", "-display", "none", "-nodefaults", "-no-user-config", "-qmp", "stdio"], {
    input,
    timeoutMs: 20_000,
  });
  if (!/"enabled":\s*true/.test(r.stdout)) {
    throw new CloudletError("HOST_TOOL", `KVM was requested but is not usable here (${lastLines(r.stderr, 2) || "query-kvm: disabled"}): use the default TCG (unset CLOUDLET_ACCEL)`, "/dev/kvm");
  }
}

/** Normalizes an exit status: Deno reports a death by signal as code 128+N with no signal name. */
function exitStatus(code: number | null, sig: NodeJS.Signals | null): [number | null, string | null] {
  if (sig || code === null || code <= 128) return [code, sig];
  const name = Object.entries(constants.signals).find(([, n]) => n === code - 128)?.[0];
  return name ? [null, name] : [code, null];
}

function shellWord(s: string): string {
  return /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}
