/**
 * What the commands share: option parsing and checks, output (text or
 * --json), progress bars, Ctrl-C, and the VM job context built from options.
 */
import { CloudletError } from "../ts/errors.ts";
import { printable, printableJson } from "../ts/printable.ts";
import { cloudletHome, indexCacheDir } from "../ts/home/paths.ts";
import type { DiskStride } from "../ts/overlay/base_scan.ts";
import type { Core } from "../ts/core/core.ts";
import type { MachineConfig } from "../ts/overlay/format.ts";
import type { ProgressFn } from "../ts/overlay/io.ts";
import { FileSource } from "../ts/node/files.ts";
import { cacheDirFor, fileIdentity, openBase } from "../ts/home/base_cache.ts";
import { LiveLine, ProgressBar } from "./progress.ts";
import { DEFAULT_PORT } from "../ts/server/protocol.ts";
import { type HostChoice } from "../ts/vm/host_choice.ts";
import { type Interaction, type VmJobContext } from "../ts/jobs/context.ts";
import { requireLocalUri } from "../ts/vm/virsh_host.ts";
import { parseAccel } from "../ts/node/command.ts";
import { promises as fsp } from "node:fs";

export const controller = new AbortController();

export let interrupted = false;

process.on("SIGINT", () => {
  if (interrupted) process.exit(130);
  interrupted = true;
  process.stderr.write("\ncloudlet: interrupted, cleaning up (Ctrl-C again to quit now)\n");
  controller.abort(new CloudletError("CANCELLED", "cancelled by the user"));
});

process.on("SIGTERM", () => controller.abort(new CloudletError("CANCELLED", "terminated")));

/** Options every command takes. */
export interface Common {
  json?: boolean;
  home?: string;
  threads?: number;
}

export function bar(o: Common): ProgressBar {
  return new ProgressBar(!o.json && Boolean(process.stderr.isTTY));
}

/** Prints a result: JSON, or text whose lines hold no control character (names and strings may come from files). */
export function out(o: Common, json: unknown, text: string): void {
  endLiveLine();
  process.stdout.write(o.json ? printableJson(roundTimes(json), 2) + "\n" : text.split("\n").map(printable).join("\n") + "\n");
}

/**
 * JSON times at millisecond precision, whatever the library measured: a
 * `seconds` or `...Seconds` number to 3 decimals, an `ms` or `...Ms` number
 * (and each number in an `ms` object) to a whole number.
 */
export function roundTimes(v: unknown, key = ""): unknown {
  if (typeof v === "number") {
    if (/(?:^s|S)econds$/.test(key)) return Math.round(v * 1000) / 1000;
    if (/(?:^m|M)s$/.test(key)) return Math.round(v);
    return v;
  }
  if (Array.isArray(v)) return v.map((x) => roundTimes(x));
  if (v !== null && typeof v === "object" && Object.getPrototypeOf(v) === Object.prototype) {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, roundTimes(x, key === "ms" ? "ms" : k)]));
  }
  return v;
}

const live = new LiveLine(process.stderr);

/** Ends the live line (before a result or an error is printed). */
export function endLiveLine(): void {
  live.stop();
}

/** Parses sizes like 1M, 512K, 4096. */
export function parseSize(v: string | number | undefined, what: string): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+)([KMG]?)(i?B)?$/i.exec(String(v));
  if (!m) throw new CloudletError("BAD_ARGUMENT", `bad ${what} "${v}" (use e.g. 1M or 262144)`);
  return Number(m[1]) * { "": 1, K: 1024, M: 1 << 20, G: 1 << 30 }[m[2].toUpperCase() as "" | "K" | "M" | "G"];
}

/** A numeric option, checked: a typo must not become NaN and silently disable a limit. */
export function num(v: unknown, flag: string, min: number, max = Number.MAX_SAFE_INTEGER, integer = true): number {
  const n = Number(v);
  if (v === undefined || v === "" || !Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw new CloudletError("BAD_ARGUMENT", `${flag} must be ${integer ? "an integer" : "a number"} from ${min} to ${max}, not "${v}"`);
  }
  return n;
}

/** --disk-stride: 4096 or 512. */
export function diskStride(v: unknown): DiskStride {
  const n = Number(v ?? 4096);
  if (n !== 4096 && n !== 512) throw new CloudletError("BAD_ARGUMENT", `--disk-stride must be 4096 or 512, not "${v}"`);
  return n;
}

/** Waits for Ctrl-C (or SIGTERM), keeping the process alive meanwhile. */
export function untilInterrupted(): Promise<void> {
  // A pending promise alone does not keep Node's event loop alive; a timer does.
  const keep = setInterval(() => {}, 1 << 30);
  return new Promise<void>((resolve) => {
    const done = () => {
      clearInterval(keep);
      resolve();
    };
    if (controller.signal.aborted) return done();
    controller.signal.addEventListener("abort", done, { once: true });
  });
}

/** The last value of an option given more than once (cac makes an array). */
export function last<T>(v: T | T[] | undefined): T | undefined {
  return Array.isArray(v) ? v[v.length - 1] : v;
}

export function need(v: unknown, flag: string): string {
  if (typeof v !== "string" || !v) throw new CloudletError("BAD_ARGUMENT", `${flag} is required (see cloudlet --help)`);
  return v;
}

export function hostChoice(o: Record<string, unknown>): HostChoice {
  const h = (o.host as string | undefined) ?? "qemu";
  if (h !== "qemu" && h !== "virsh") throw new CloudletError("BAD_ARGUMENT", `--host must be qemu or virsh, not "${h}"`);
  if (h === "virsh" && o.connect) requireLocalUri(o.connect as string);
  return { host: h, connect: o.connect as string | undefined, accel: o.accel === undefined ? undefined : parseAccel(String(last(o.accel))) };
}

/** --help text of --accel, which every VM command takes. */
export const ACCEL_HELP = "kvm, tcg or auto (KVM when KVM guests run here, else TCG); default $CLOUDLET_ACCEL, else tcg";

/** The job context of a VM command: its home, host, progress bar, status lines on stderr and Ctrl-C. */
export function vmContext(o: Common & Record<string, unknown>, p: ProgressBar, core: VmJobContext["core"]): VmJobContext {
  const liveLine = !o.json && Boolean(process.stderr.isTTY);
  // --console hands the terminal to the guest and --vnc waits for Enter there: no ticking line over them.
  const ticking = liveLine && !o.console && !o.vnc;
  return {
    core,
    home: cloudletHome(o.home as string | undefined),
    hostChoice: hostChoice(o),
    progress: (x) => {
      if (liveLine) live.stop();
      p.update(x);
    },
    say: (l) => {
      if (!o.json) {
        p.done();
        live.stop();
        process.stderr.write(`cloudlet: ${printable(l)}\n`);
        if (ticking) live.step();
      }
    },
    // A live line on a terminal only: a log or --json gets the result, not a redrawn line.
    status: liveLine ? (l) => live.status(l === null ? null : printable(l)) : undefined,
    signal: controller.signal,
  };
}

export async function interaction(o: Record<string, unknown>, scriptFlag: string, markerFlag?: string): Promise<Interaction> {
  const scriptPath = o[scriptFlag] as string | undefined;
  let script: string | undefined;
  if (scriptPath) {
    try {
      script = await fsp.readFile(scriptPath, "utf8");
    } catch {
      throw new CloudletError("MISSING_INPUT", "cannot read the script", scriptPath);
    }
  }
  const timeout = o.timeout ? num(o.timeout, "--timeout", 0.1, 86400, false) * 1000 : undefined;
  let readyRegex: RegExp | undefined;
  if (markerFlag && o.readyRegex !== undefined) {
    try {
      readyRegex = new RegExp(String(o.readyRegex));
    } catch (e) {
      throw new CloudletError("BAD_ARGUMENT", `--ready-regex is not a valid regular expression: ${(e as Error).message}`);
    }
  }
  let login: Interaction["login"];
  if (o.login !== undefined) {
    const [user, pwFile] = String(o.login).split(/:(.*)/s);
    if (!user) throw new CloudletError("BAD_ARGUMENT", `--login takes USER or USER:PASSWORD-FILE, not "${o.login}"`);
    login = { user, password: pwFile ? (await readFileArg(pwFile, "password file")).toString("utf8").split(/\r?\n/)[0] : undefined };
  }
  return { script, readyMarker: markerFlag ? (o[markerFlag] as string | undefined) : undefined, readyRegex, login, console: Boolean(o.console), vnc: Boolean(o.vnc), timeoutMs: timeout };
}

/** The base id of base image files, as file-mode synthesis computes it: prepared once per home, then cached. */
export async function baseIdOfFiles(core: Core, disk: string, memory: string, machine: MachineConfig, home: string | undefined, progress: ProgressFn): Promise<string> {
  const dir = cacheDirFor(core, indexCacheDir(cloudletHome(home)), await fileIdentity(disk), await fileIdentity(memory), machine);
  const base = await openBase(core, { disk, memory, machine, dir, needIndex: false, progress, signal: controller.signal });
  await base.close();
  return base.id;
}

/** Opens a base image for --verify; a size other than the overlay's base had is a wrong base. */
export async function openBaseImage(path: string, want: number, what: string, opened: FileSource[]): Promise<FileSource> {
  const f = await FileSource.open(path);
  opened.push(f);
  if (f.size !== want) throw new CloudletError("WRONG_BASE", `${what} is ${f.size} bytes but the overlay was made from a ${what} of ${want} bytes: this is not the overlay's base`, path);
  return f;
}

/** Splits --listen HOST:PORT. */
export function parseListen(v: string): { host: string; port: number } {
  const m = /^\[?([^\]]*?)\]?(?::(\d+))?$/.exec(v);
  const port = m?.[2] ? Number(m[2]) : DEFAULT_PORT;
  if (!m || !m[1] || !(port >= 0 && port < 65536)) throw new CloudletError("BAD_ARGUMENT", `bad --listen "${v}" (use HOST:PORT, e.g. 127.0.0.1:8021 or 0.0.0.0:8021)`);
  return { host: m[1], port };
}

export async function readFileArg(path: string, what: string): Promise<Buffer> {
  try {
    return await fsp.readFile(path);
  } catch {
    throw new CloudletError("MISSING_INPUT", `cannot read the ${what}`, path);
  }
}
