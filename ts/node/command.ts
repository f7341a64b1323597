/**
 * Runs host tools (qemu-img, virsh, debootstrap, ...) for the VM layer.
 * Asynchronous on purpose: Deno's spawnSync deadlocks once a tool's output
 * outgrows the pipe buffer. Each tool runs in its own process group so that
 * an abort also ends the helpers it started (debootstrap runs dpkg, wget, ...).
 */
import { spawn } from "node:child_process";
import { accessSync, constants, existsSync, readFileSync, statSync } from "node:fs";
import { delimiter, join } from "node:path";
import { CloudletError } from "../errors.ts";

/** Debian packages that provide the tools we run, for "not found" messages. */
export const INSTALL_HINTS: Readonly<Record<string, string>> = {
  "qemu-system-x86_64": "qemu-system-x86",
  "qemu-img": "qemu-utils",
  virsh: "libvirt-clients libvirt-daemon-system",
  debootstrap: "debootstrap",
  mke2fs: "e2fsprogs",
  busybox: "busybox-static",
  xz: "xz-utils",
  dpkg: "dpkg",
  "apt-get": "apt",
  "apt-cache": "apt",
};

/** `CLOUDLET_TRACE=1` prints every tool run, its time and status, to stderr. */
const TRACE = !!process.env.CLOUDLET_TRACE;

/** How a tool ended and what it printed. */
export interface CommandResult {
  /** Exit code, or null when a signal ended it. */
  code: number | null;
  /** The signal that ended it, if any. */
  signal: string | null;
  /** Captured stdout (the last `maxCapture` bytes). */
  stdout: string;
  /** Captured stderr (the last `maxCapture` bytes). */
  stderr: string;
}

/** Options for {@link runCommand}. */
export interface CommandOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** Kills the whole process group and rejects with CANCELLED. */
  signal?: AbortSignal;
  /** Bytes for stdin (stdin is empty otherwise). */
  input?: Uint8Array | string;
  /** A file descriptor that receives stdout instead of the capture. */
  stdoutFd?: number;
  /** Called for each complete stdout or stderr line. */
  onLine?: (line: string) => void;
  /** Kills the tool after this long (HOST_TOOL error). */
  timeoutMs?: number;
  /** Bytes of stdout/stderr kept (tail); default 1 MiB. */
  maxCapture?: number;
}

/** The absolute path of `name` found in PATH (or `name` itself when it holds a slash and is executable), else null. */
export function findExecutable(name: string): string | null {
  const candidates = name.includes("/")
    ? [name]
    : (process.env.PATH ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").split(delimiter).map((d) => join(d || ".", name));
  // Tools in sbin are missing from a non-login root PATH on some systems.
  if (!name.includes("/")) for (const d of ["/usr/sbin", "/sbin"]) candidates.push(join(d, name));
  for (const c of candidates) {
    try {
      accessSync(c, constants.X_OK);
      return c;
    } catch {
      // try the next directory
    }
  }
  return null;
}

/** The TOOL_MISSING error for a tool that is not installed: which package to install, or setup for all of them. */
export function missingTool(name: string, pkg = INSTALL_HINTS[name.split("/").pop() ?? name]): CloudletError {
  return new CloudletError("TOOL_MISSING", `${name} not found: apt-get install ${pkg ?? name} (scripts/setup.sh installs every tool cloudlet runs)`);
}

/** Resolves `name` in PATH or throws the TOOL_MISSING error. */
export function requireExecutable(name: string, pkg?: string): string {
  const p = findExecutable(name);
  if (!p) throw missingTool(name, pkg);
  return p;
}

/** The device that KVM guests, and libvirt's probe of QEMU, open. */
export const KVM_DEVICE = "/dev/kvm";

/**
 * Refuses a KVM device that is there but lacks the group permission udev
 * gives it (group kvm, mode 0660; setup applies it where no udev runs):
 * libvirt then finds KVM "not available now" for its QEMU user and re-probes
 * QEMU on every domain start (~50 s each), and a KVM guest of a user who may
 * not open it cannot start. With `open`, also refuses a device this process
 * may not read and write (for a KVM guest). Nothing to check where there is
 * no device or no kvm group. KVM_PERMISSION error, naming what to run.
 */
export function requireKvmAccess(opts: { device?: string; groupFile?: string; open?: boolean } = {}): void {
  const device = opts.device ?? KVM_DEVICE;
  let st;
  try {
    st = statSync(device);
  } catch {
    return;
  }
  if (!st.isCharacterDevice()) return;
  const fix = `run scripts/setup.sh (or: chgrp kvm ${device} && chmod 0660 ${device})`;
  const gid = lookupId(opts.groupFile ?? "/etc/group", "kvm");
  if (gid !== null && (st.gid !== gid || (st.mode & 0o060) !== 0o060)) {
    const mode = (st.mode & 0o777).toString(8).padStart(4, "0");
    throw new CloudletError("KVM_PERMISSION", `has group id ${st.gid} and mode ${mode}, but libvirt and KVM guests need group kvm (${gid}) with read-write access: ${fix}`, device);
  }
  if (opts.open) {
    try {
      accessSync(device, constants.R_OK | constants.W_OK);
    } catch {
      throw new CloudletError("KVM_PERMISSION", `this user may not open it for a KVM guest: add the user to group kvm (usermod -aG kvm USER, then log in again), or use the default TCG (unset CLOUDLET_ACCEL)`, device);
    }
  }
}

/** What the user asks for: KVM, TCG, or KVM when it works here and TCG otherwise. */
export type AccelChoice = "kvm" | "tcg" | "auto";

/** The accelerator a VM runs with, and why it is not the one asked for (auto's fallback). */
export interface AccelDecision {
  accel: "kvm" | "tcg";
  /** Set when `auto` fell back to TCG: what failed with KVM. */
  fallback?: string;
}

/** Parses `--accel` or `$CLOUDLET_ACCEL`; the default is TCG (KVM may be present and still fail guests). BAD_ARGUMENT error otherwise. */
export function parseAccel(v: string | undefined, what = "--accel"): AccelChoice {
  if (v === undefined || v === "") return "tcg";
  if (v === "kvm" || v === "tcg" || v === "auto") return v;
  throw new CloudletError("BAD_ARGUMENT", `${what} must be kvm, tcg or auto, not "${v}"`);
}

/** The accelerator asked for by `--accel` when given, else `$CLOUDLET_ACCEL`, else TCG. */
export function accelFromEnv(given?: AccelChoice): AccelChoice {
  return given ?? parseAccel(process.env.CLOUDLET_ACCEL, "CLOUDLET_ACCEL");
}

/** How long the firmware may take under KVM in {@link kvmUsable} (it needs well under a second where KVM works). */
const KVM_FIRMWARE_MS = 5000;

const kvmVerdicts = new Map<string, Promise<string | null>>();

/**
 * Whether KVM guests run here: null when they do, else a sentence saying
 * what failed. Checks the device's permissions, asks QEMU whether KVM can be
 * enabled (`query-kvm`), then boots the firmware alone under KVM and waits
 * for it to reach its boot menu: a /dev/kvm that opens can still fail every
 * guest (a nested or emulated CPU stops SeaBIOS with an emulation failure or
 * a hang). Under a working KVM the firmware gets there in well under a second.
 * The answer is kept for the life of the process.
 */
export function kvmUsable(binary = "qemu-system-x86_64"): Promise<string | null> {
  let v = kvmVerdicts.get(binary);
  if (!v) kvmVerdicts.set(binary, (v = probeKvmGuest(binary)));
  return v;
}

async function probeKvmGuest(binary: string): Promise<string | null> {
  try {
    requireKvmAccess({ open: true });
  } catch (e) {
    return (e as Error).message;
  }
  if (!existsSync(KVM_DEVICE)) return `${KVM_DEVICE} does not exist`;
  const input = ['{"execute":"qmp_capabilities"}', '{"execute":"query-kvm"}', '{"execute":"quit"}'].join("\n") + "\n";
  const q = await runCommand(binary, ["-accel", "kvm", "-machine", "none", "-display", "none", "-nodefaults", "-no-user-config", "-qmp", "stdio"], { input, timeoutMs: 20_000 }).catch((e: Error) => ({ stdout: "", stderr: e.message }));
  if (!/"enabled":\s*true/.test(q.stdout)) return `QEMU cannot enable KVM (${lastLines(q.stderr, 2) || "query-kvm: disabled"})`;
  // SeaBIOS writes its log to the debug port 0x402; "Booting from" follows once the firmware has run.
  let log = "";
  const ac = new AbortController();
  await runCommand(
    binary,
    ["-accel", "kvm", "-machine", "pc", "-m", "32", "-display", "none", "-nodefaults", "-no-user-config", "-no-reboot", "-chardev", "stdio,id=dbg", "-device", "isa-debugcon,iobase=0x402,chardev=dbg"],
    {
      signal: ac.signal,
      timeoutMs: KVM_FIRMWARE_MS,
      onLine: (l) => {
        log += l + "\n";
        if (/Booting from|No bootable device/.test(l)) ac.abort();
      },
    },
  ).catch(() => {});
  if (/Booting from|No bootable device/.test(log)) return null;
  return `a test guest did not get through its firmware within ${KVM_FIRMWARE_MS / 1000} s under KVM${/KVM internal error|emulation failure/i.test(log) ? " (KVM emulation failure)" : ""}`;
}

/**
 * Decides the accelerator for `want`: TCG as asked; KVM when {@link kvmUsable}
 * says guests run, else TCG with the reason (auto) or an error (kvm:
 * KVM_PERMISSION for the device's permissions, HOST_TOOL otherwise).
 */
export async function decideAccel(want: AccelChoice, binary = "qemu-system-x86_64"): Promise<AccelDecision> {
  if (want === "tcg") return { accel: "tcg" };
  if (want === "kvm") requireKvmAccess({ open: true });
  const why = await kvmUsable(binary);
  if (why === null) return { accel: "kvm" };
  if (want === "kvm") throw new CloudletError("HOST_TOOL", `KVM was asked for, but KVM guests do not run here: ${why}; use --accel tcg (the default) or --accel auto`, KVM_DEVICE);
  return { accel: "tcg", fallback: why };
}

/** The id (third field) of `name` in an /etc/passwd- or /etc/group-style file; a numeric name is its own id; null when absent. */
export function lookupId(file: string, name: string): number | null {
  if (/^\+?\d+$/.test(name)) return Number(name.replace("+", ""));
  try {
    for (const line of readFileSync(file, "utf8").split("\n")) {
      const f = line.split(":");
      if (f[0] === name) return Number(f[2]);
    }
  } catch {
    // unknown
  }
  return null;
}

/** Kills a process group, ignoring one that is already gone. */
export function killGroup(pid: number, sig: NodeJS.Signals = "SIGKILL"): void {
  try {
    process.kill(-pid, sig);
  } catch {
    try {
      process.kill(pid, sig);
    } catch {
      // already gone
    }
  }
}

/** Runs `cmd args` to completion; rejects only when it cannot start, is cancelled or times out. */
export function runCommand(cmd: string, args: string[], opts: CommandOptions = {}): Promise<CommandResult> {
  if (opts.signal?.aborted) return Promise.reject(cancelled(cmd));
  const max = opts.maxCapture ?? 1 << 20;
  return new Promise((resolve, reject) => {
    const env = opts.env ? Object.fromEntries(Object.entries({ ...process.env, ...opts.env }).filter(([, v]) => v !== undefined)) : undefined;
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: env as NodeJS.ProcessEnv | undefined,
      detached: true,
      stdio: ["pipe", opts.stdoutFd ?? "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    let failure: unknown = null;
    const partial = { out: "", err: "" };
    const take = (which: "out" | "err", d: string) => {
      if (which === "out") stdout = (stdout + d).slice(-max);
      else stderr = (stderr + d).slice(-max);
      if (!opts.onLine) return;
      const lines = (partial[which] + d).split("\n");
      partial[which] = lines.pop() ?? "";
      for (const l of lines) opts.onLine(l.replace(/\r$/, ""));
    };
    child.stdout?.setEncoding("utf8").on("data", (d: string) => take("out", d));
    child.stderr?.setEncoding("utf8").on("data", (d: string) => take("err", d));
    const stop = (why: unknown) => {
      failure ??= why;
      if (child.pid) killGroup(child.pid);
    };
    const onAbort = () => stop(cancelled(cmd));
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    const timer = opts.timeoutMs
      ? setTimeout(() => stop(new CloudletError("HOST_TOOL", `${cmd} ${args.slice(0, 2).join(" ")} did not finish within ${Math.round(opts.timeoutMs! / 1000)} s`)), opts.timeoutMs)
      : null;
    const settle = () => {
      opts.signal?.removeEventListener("abort", onAbort);
      if (timer) clearTimeout(timer);
    };
    child.on("error", (e: NodeJS.ErrnoException) => {
      failure ??= e.code === "ENOENT" ? missingTool(cmd) : new CloudletError("HOST_TOOL", `cannot run ${cmd}: ${e.message}`, undefined, { cause: e });
      // A tool that never started: Node emits "close" next, Deno does not.
      if (child.pid === undefined) {
        settle();
        reject(failure);
      }
    });
    const t0 = performance.now();
    child.on("close", (code, sig) => {
      if (TRACE) process.stderr.write(`cloudlet: ${Math.round(performance.now() - t0)} ms ${code ?? sig} ${cmd} ${args.join(" ")}\n`);
      settle();
      if (opts.onLine) for (const w of ["out", "err"] as const) if (partial[w]) opts.onLine(partial[w]);
      if (failure) return reject(failure);
      resolve({ code, signal: sig, stdout, stderr });
    });
    child.stdin?.on("error", () => {}); // the tool may exit before reading all of stdin
    child.stdin?.end(opts.input ?? "");
  });
}

/** Runs a tool and returns its stdout; a HOST_TOOL error with the end of its stderr when it fails. */
export async function runCommandOk(cmd: string, args: string[], opts: CommandOptions & { what?: string } = {}): Promise<string> {
  const r = await runCommand(cmd, args, opts);
  if (r.code !== 0) {
    const tail = lastLines(r.stderr || r.stdout, 6);
    throw new CloudletError("HOST_TOOL", `${opts.what ?? `${cmd} ${args[0] ?? ""}`.trim()} failed (${r.signal ?? `exit ${r.code}`})${tail ? `: ${tail}` : ""}`);
  }
  return r.stdout;
}

/** The last `n` non-empty lines of `text`, joined with " | " for a one-line message. */
export function lastLines(text: string, n: number): string {
  return text.split(/\r?\n/).map((l) => l.trim()).filter(Boolean).slice(-n).join(" | ");
}

function cancelled(cmd: string): CloudletError {
  return new CloudletError("CANCELLED", `cancelled while running ${cmd}`);
}
