/** What every VM job is given (core, home, host choice, progress, Ctrl-C), and how it talks to the user. */
import { homePaths } from "../home/paths.ts";
import type { MachineConfig } from "../overlay/format.ts";
import type { FreeMemoryReport } from "../vm/vm_host.ts";
import { randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import type { ProgressFn } from "../overlay/io.ts";
import { QemuHost } from "../vm/qemu_host.ts";
import { VirshHost } from "../vm/virsh_host.ts";
import type { RunningVm } from "../vm/vm_host.ts";
import type { SerialLogin } from "../vm/serial_console.ts";
import { type HostChoice } from "../vm/host_choice.ts";


/** How many serial logs of failed runs `<home>/logs` keeps (the newest). */
export const KEPT_LOGS = 20;

/**
 * Copies the serial log of a failed run to `<home>/logs/<time>-<what>-serial.log`
 * before its run directory is removed, keeps only the {@link KEPT_LOGS} newest,
 * and returns the copy's path (null when there is no log).
 */
export async function keepFailedLog(home: string, runDir: string, what: string): Promise<string | null> {
  const src = join(runDir, "serial.log");
  if (!(await fsp.stat(src).catch(() => null))?.isFile()) return null;
  const dir = homePaths(home).logs;
  await fsp.mkdir(dir, { recursive: true });
  const stamp = new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z");
  const dest = join(dir, `${stamp}-${what}-${randomBytes(2).toString("hex")}-serial.log`);
  await fsp.copyFile(src, dest);
  const kept = (await fsp.readdir(dir)).filter((f) => f.endsWith("-serial.log")).sort();
  for (const old of kept.slice(0, Math.max(0, kept.length - KEPT_LOGS))) await fsp.rm(join(dir, old), { force: true });
  return dest;
}

/**
 * The error of a failed run, pointing at the kept serial log: an error about a
 * file in the run directory (removed next) names the kept log instead.
 */
export async function withKeptLog(e: unknown, home: string, runDir: string, what: string): Promise<unknown> {
  // Only the guest's failures are explained by its console (not a full disk while encoding, say).
  if (!(e instanceof CloudletError) || (e.code !== "GUEST" && !e.file?.startsWith(runDir))) return e;
  const kept = await keepFailedLog(home, runDir, what).catch(() => null);
  // Never name a file that is about to be removed.
  if (!kept) return e.file?.startsWith(runDir) ? new CloudletError(e.code, e.message, undefined, { cause: e }) : e;
  if (e.file === undefined || e.file.startsWith(runDir)) return new CloudletError(e.code, e.message, kept, { cause: e });
  return new CloudletError(e.code, `${e.message} (serial log kept at ${kept})`, e.file, { cause: e });
}


/** "tcg", "kvm", or "tcg (KVM ...: why)" for a status line; says the fallback once. */
export async function accelShown(ctx: VmJobContext, host: QemuHost | VirshHost): Promise<string> {
  const d = await host.resolveAccel();
  if (d.fallback) say(ctx, `--accel auto: using TCG, since ${d.fallback}`);
  return d.accel;
}

/** How the user says "ready" (base) or "done customising" (overlay). */
export interface Interaction {
  /** Wait for a line that starts with this text on the serial console. */
  readyMarker?: string;
  /** Wait for a line of the serial console that matches this. */
  readyRegex?: RegExp;
  /** Log in on the serial console with this when it asks (for `script`). */
  login?: SerialLogin;
  /** Run this shell script in the guest over the serial console (its exit code must be 0). */
  script?: string;
  /** Attach the terminal to the serial console until Ctrl-]. */
  console?: boolean;
  /** Give the VM a VNC display, print its address, and wait for Enter. */
  vnc?: boolean;
  /** Time limit for the marker or the script. */
  timeoutMs?: number;
}

/** Shared job settings. */
export interface VmJobContext {
  core: Core;
  home: string;
  hostChoice: HostChoice;
  progress?: ProgressFn;
  /** Status lines for the user (stderr). */
  say?: (line: string) => void;
  /** A live status line while waiting on the guest (time waited, its last serial line); null clears it. */
  status?: (line: string | null) => void;
  signal?: AbortSignal;
  /** For --console and --vnc: the terminal. */
  stdin?: NodeJS.ReadableStream;
  stdout?: NodeJS.WritableStream;
}

export function say(ctx: VmJobContext, line: string): void {
  ctx.say?.(line);
}

/** Runs the user's chosen interaction against a running VM. */
export async function interact(ctx: VmJobContext, vm: RunningVm, how: Interaction, what: string): Promise<void> {
  if (how.vnc) {
    say(ctx, `VNC: connect a viewer to 127.0.0.1:${vm.vncPort} (display :${(vm.vncPort ?? 5900) - 5900}); press Enter here when ${what}`);
    await waitForEnter(ctx);
  }
  if (how.console) {
    say(ctx, `serial console attached; press Ctrl-] when ${what}`);
    await vm.console.attach(ctx.stdin ?? process.stdin, ctx.stdout ?? process.stdout);
  }
  const waiting = (label: string) => (ms: number, last: string) => ctx.status?.(`${label} ${Math.floor(ms / 1000)} s${last ? ` | ${last}` : ""}`);
  try {
    for (const marker of [how.readyMarker, how.readyRegex]) {
      if (marker !== undefined) await vm.waitReady(marker, how.timeoutMs ?? 120_000, ctx.signal, waiting(`waiting for ${typeof marker === "string" ? `"${marker}"` : marker}:`));
    }
    if (how.script !== undefined) {
      const r = await vm.console.run(how.script, { timeoutMs: how.timeoutMs ?? 600_000, signal: ctx.signal, login: how.login, onWait: waiting("waiting for the guest shell:") });
      if (r.exitCode !== 0) throw new CloudletError("GUEST", `the script exited with ${r.exitCode} in the guest: ${r.output.trim().split("\n").slice(-8).join(" / ")}`);
    }
  } finally {
    ctx.status?.(null);
  }
}

function waitForEnter(ctx: VmJobContext): Promise<void> {
  const input = ctx.stdin ?? process.stdin;
  return new Promise((resolve, reject) => {
    const done = () => {
      input.off("data", onData);
      ctx.signal?.removeEventListener("abort", onAbort);
      (input as NodeJS.ReadStream).pause?.();
    };
    const onData = (d: Buffer | string) => {
      if (String(d).includes("\n") || String(d).includes("\r")) {
        done();
        resolve();
      }
    };
    const onAbort = () => {
      done();
      reject(ctx.signal!.reason);
    };
    input.on("data", onData);
    ctx.signal?.addEventListener("abort", onAbort, { once: true });
    (input as NodeJS.ReadStream).resume?.();
  });
}

/** One line on what free page reporting did before a snapshot (or why it did nothing). */
export function sayFreeMemory(ctx: VmJobContext, machine: MachineConfig, r: FreeMemoryReport | null, off: boolean): void {
  const mib = (b: number) => `${(b / (1 << 20)).toFixed(1)} MiB`;
  if (!machine.freePageReporting) return say(ctx, "free memory: this machine has no reporting balloon (a base made without one), so free guest pages are kept as they are");
  if (off || !r) return say(ctx, "free memory: not waited for (--no-free-memory)");
  if (r.driver === "absent") {
    return say(ctx, "free memory: the guest has no free page reporting driver (virtio_balloon with CONFIG_PAGE_REPORTING), so its free pages are kept as they are; load virtio_balloon in the guest to leave them out");
  }
  say(ctx, `free memory: ${mib(r.discardedBytes)} discarded while waiting ${(r.waitMs / 1000).toFixed(1)} s${r.settled ? "" : " (stopped at the time limit, still shrinking)"}; ${mib(r.freeBytes)} of ${mib(machine.ramMiB << 20)} free at the snapshot`);
}
