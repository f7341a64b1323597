/**
 * VM records: every VM cloudlet starts has `<runDir>/vm.json`, written right
 * after launch and removed when the VM ends. A record names the process that
 * owns the VM; a VM whose owner is gone (and that was not detached) is an
 * orphan, for example after the server crashed or was killed with -9.
 *
 * ```text
 *   <runsRoot>/<run>/vm.json    {id, host, pid | domain, owner {pid, start}, detached, ...}
 *   qemu argv                   -name guest=cloudlet-<id> ... -pidfile <runDir>/qemu.pid
 *   libvirt domain              name cloudlet-<id>, <description> = runDir
 * ```
 *
 * The argv marker and the domain description find VMs whose record was never
 * written (a crash between launch and record).
 */
import { promises as fsp } from "node:fs";
import { join, resolve, sep } from "node:path";
import type { PortForward } from "../overlay/format.ts";
import { findExecutable, runCommand } from "../node/command.ts";
import { processAlive, processStartTime } from "../node/process.ts";
import { QmpClient } from "./qmp.ts";

/** Name of the record file in a run directory. */
export const RECORD_FILE = "vm.json";

/** Prefix of qemu guest names and libvirt domain names of cloudlet VMs. */
export const VM_NAME_PREFIX = "cloudlet-";

/** What `<runDir>/vm.json` holds. */
export interface VmRecord {
  id: string;
  host: "qemu" | "virsh";
  runDir: string;
  /** QEMU's pid on this machine (null for a remote libvirt). */
  pid: number | null;
  /** libvirt domain name (virsh only). */
  domain?: string;
  /** virsh --connect URI (virsh only). */
  connect?: string;
  /** The process that started the VM; its start time tells a reused pid apart. */
  owner: { pid: number; start: number | null };
  /** True when the VM is meant to outlive its owner (detach()). */
  detached: boolean;
  /** True when the VM created its memory file at boot (it is removed with the VM unless snapshotted). */
  ownsMemory: boolean;
  memoryPath: string;
  portForwards: PortForward[];
  hostAddress: string;
  createdAt: string;
  /** Files handed to the QEMU user while the VM runs, with their owners to give back (virsh). */
  owners?: { path: string; uid: number; gid: number }[];
  /**
   * Early start: true while the VM still depends on its owner, the cloudlet
   * process that fills it (postcopy source and NBD export). A filling VM whose
   * owner is gone is frozen or dead and is cleaned up (docs/postcopy.md).
   */
  filling?: boolean;
  /** Early start: true from QEMU's start until the postcopy resume (the guest does not run yet). */
  resuming?: boolean;
}

/** A record and whether its VM is running. */
export interface VmStatus {
  record: VmRecord;
  alive: boolean;
}

/** Writes the record atomically. */
export async function writeVmRecord(rec: VmRecord): Promise<void> {
  const tmp = join(rec.runDir, `.${RECORD_FILE}.tmp-${process.pid}`);
  await fsp.writeFile(tmp, JSON.stringify(rec, null, 2) + "\n");
  await fsp.rename(tmp, join(rec.runDir, RECORD_FILE));
}

/** The record in `runDir`, or null. */
export async function readVmRecord(runDir: string): Promise<VmRecord | null> {
  try {
    return JSON.parse(await fsp.readFile(join(runDir, RECORD_FILE), "utf8")) as VmRecord;
  } catch {
    return null;
  }
}

/** The identity of this process, for records. */
export function selfOwner(): { pid: number; start: number | null } {
  return { pid: process.pid, start: processStartTime(process.pid) };
}

/** True while the owner named in a record still runs. */
export function ownerAlive(owner: VmRecord["owner"]): boolean {
  const st = processStartTime(owner.pid);
  return st !== null && (owner.start === null || st === owner.start);
}

/** True when `pid` is a QEMU launched for `runDir` (guards against a reused pid). */
export async function isQemuOf(pid: number, runDir: string): Promise<boolean> {
  const argv = await processArgv(pid);
  return argv !== null && argv.some((a) => a.includes(join(runDir, "qemu.pid")) || a.includes(`${runDir}${sep}`));
}

/** Whether the VM of a record is still running. */
export async function recordAlive(rec: VmRecord): Promise<boolean> {
  if (rec.host === "virsh") {
    if (rec.pid !== null && processAlive(rec.pid) && (await isQemuOf(rec.pid, rec.runDir))) return true;
    if (!rec.domain || !findExecutable("virsh")) return false;
    const r = await runCommand("virsh", [...connectArgs(rec.connect), "domstate", rec.domain], { timeoutMs: 15_000 }).catch(() => null);
    return !!r && r.code === 0 && !/shut off|crashed/.test(r.stdout);
  }
  return rec.pid !== null && processAlive(rec.pid) && (await isQemuOf(rec.pid, rec.runDir));
}

/** Every VM recorded under `runsRoot` (one level of run directories). */
export async function listVms(runsRoot: string): Promise<VmStatus[]> {
  const out: VmStatus[] = [];
  for (const e of await fsp.readdir(runsRoot, { withFileTypes: true }).catch(() => [])) {
    if (!e.isDirectory()) continue;
    const rec = await readVmRecord(join(runsRoot, e.name));
    if (rec) out.push({ record: rec, alive: await recordAlive(rec) });
  }
  return out;
}

/** Ends the VM recorded in `runDir` (QMP quit, then TERM, then KILL; or virsh destroy) and removes its runtime files. */
export async function stopVm(runDir: string): Promise<boolean> {
  const rec = await readVmRecord(runDir);
  if (!rec) return false;
  const wasAlive = await recordAlive(rec);
  if (wasAlive) await killRecorded(rec);
  await removeRuntimeFiles(rec.runDir, rec.ownsMemory ? rec.memoryPath : null);
  return wasAlive;
}

/** Options for {@link cleanupOrphanVms}. */
export interface OrphanCleanupOptions {
  /** libvirt URIs to scan for cloudlet domains without a record; default none (records still name theirs). */
  connect?: string[];
}

/**
 * Finds VMs started by cloudlet under `runsRoot` whose owner process is gone
 * (and that were not detached), or that have no record at all; kills them and
 * removes their runtime files. Returns the ids (or domain names / pids) it ended.
 */
export async function cleanupOrphanVms(runsRoot: string, opts: OrphanCleanupOptions = {}): Promise<string[]> {
  const root = resolve(runsRoot);
  const killed: string[] = [];
  const known = new Set<string>();
  for (const { record, alive } of await listVms(root)) {
    known.add(resolve(record.runDir));
    if (alive && (record.detached || ownerAlive(record.owner))) continue;
    if (alive) {
      await killRecorded(record);
      killed.push(record.id);
    }
    await removeRuntimeFiles(record.runDir, record.ownsMemory ? record.memoryPath : null);
  }
  // QEMUs without a record: found by the -name marker, kept to our runs root by the pid-file path.
  for (const pid of await listPids()) {
    const argv = await processArgv(pid);
    if (!argv || !argv[0]?.includes("qemu-system")) continue;
    const name = argv[argv.indexOf("-name") + 1] ?? "";
    if (argv.indexOf("-name") < 0 || !name.includes(`guest=${VM_NAME_PREFIX}`)) continue;
    const pidfile = argv[argv.indexOf("-pidfile") + 1];
    if (argv.indexOf("-pidfile") < 0 || !pidfile) continue;
    const runDir = resolve(pidfile, "..");
    if (!runDir.startsWith(root + sep) || known.has(runDir)) continue;
    await terminatePid(pid);
    await removeRuntimeFiles(runDir, null);
    killed.push(`pid ${pid}`);
  }
  for (const uri of opts.connect ?? []) {
    for (const dom of await orphanDomains(uri, root, known)) {
      await runCommand("virsh", [...connectArgs(uri), "destroy", dom], { timeoutMs: 30_000 }).catch(() => null);
      killed.push(dom);
    }
  }
  return killed;
}

/** `--connect URI` when a URI is given. */
export function connectArgs(uri: string | undefined): string[] {
  return uri ? ["--connect", uri] : [];
}

/** Runtime files a host creates in a run directory (not logs, disk or state files). */
export const RUNTIME_FILES = ["qmp.sock", "serial.sock", "migrate.sock", "qemu.pid", "domain.xml", RECORD_FILE];

/** Removes the runtime files of a VM that has ended, and its memory file when given. */
export async function removeRuntimeFiles(runDir: string, memoryPath: string | null): Promise<void> {
  for (const f of RUNTIME_FILES) await fsp.rm(join(runDir, f), { force: true }).catch(() => {});
  if (memoryPath) await fsp.rm(memoryPath, { force: true }).catch(() => {});
}

/** Sends TERM, then KILL after `graceMs`, and waits until `pid` is gone. */
export async function terminatePid(pid: number, graceMs = 3000): Promise<void> {
  const signal = (s: NodeJS.Signals) => {
    try {
      process.kill(pid, s);
    } catch {
      // gone already
    }
  };
  signal("SIGTERM");
  const deadline = Date.now() + graceMs;
  while (processAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  if (processAlive(pid)) signal("SIGKILL");
  // An exited child of another process may stay a zombie until reaped; processAlive ignores zombies.
  for (let i = 0; i < 250 && processAlive(pid); i++) await new Promise((r) => setTimeout(r, 20));
}

async function killRecorded(rec: VmRecord): Promise<void> {
  if (rec.host === "virsh" && rec.domain) {
    await runCommand("virsh", [...connectArgs(rec.connect), "destroy", rec.domain], { timeoutMs: 30_000 }).catch(() => null);
    if (rec.pid !== null) for (let i = 0; i < 250 && processAlive(rec.pid); i++) await new Promise((r) => setTimeout(r, 20));
    for (const o of rec.owners ?? []) await fsp.chown(o.path, o.uid, o.gid).catch(() => {});
    if (rec.pid !== null) await fsp.rm(`/var/log/libvirt/qemu/${rec.domain}.log`, { force: true }).catch(() => {});
    return;
  }
  if (rec.pid === null || !processAlive(rec.pid)) return;
  // A clean quit first: QEMU flushes the disk cache.
  const q = await QmpClient.connect(join(rec.runDir, "qmp.sock"), { timeoutMs: 1000 }).catch(() => null);
  if (q) {
    await q.execute("quit", undefined, 2000).catch(() => {});
    q.close();
    for (let i = 0; i < 100 && processAlive(rec.pid); i++) await new Promise((r) => setTimeout(r, 20));
  }
  if (processAlive(rec.pid)) await terminatePid(rec.pid);
}

async function orphanDomains(uri: string, root: string, known: Set<string>): Promise<string[]> {
  if (!findExecutable("virsh")) return [];
  const list = await runCommand("virsh", [...connectArgs(uri), "list", "--name"], { timeoutMs: 15_000 }).catch(() => null);
  if (!list || list.code !== 0) return [];
  const out: string[] = [];
  for (const dom of list.stdout.split("\n").map((s) => s.trim())) {
    if (!dom.startsWith(VM_NAME_PREFIX)) continue;
    const d = await runCommand("virsh", [...connectArgs(uri), "desc", dom], { timeoutMs: 15_000 }).catch(() => null);
    const runDir = d?.code === 0 ? resolve(d.stdout.trim()) : "";
    if (!runDir.startsWith(root + sep)) continue;
    if (known.has(runDir)) continue; // its record decided already
    out.push(dom);
  }
  return out;
}

async function processArgv(pid: number): Promise<string[] | null> {
  try {
    const raw = await fsp.readFile(`/proc/${pid}/cmdline`, "utf8");
    return raw ? raw.split("\0").filter((a, i, all) => a || i < all.length - 1) : null;
  } catch {
    return null;
  }
}

async function listPids(): Promise<number[]> {
  return (await fsp.readdir("/proc").catch(() => [] as string[])).filter((e) => /^\d+$/.test(e)).map(Number);
}
