/** Listing and stopping synthesized VMs. */
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { CloudletError } from "../errors.ts";
import { SYNTH_FILES } from "./file_synthesis.ts";
import { ownerAlive, readVmRecord, recordAlive, stopVm } from "../vm/vm_records.ts";
import { homePaths } from "../home/paths.ts";

/**
 * Running (and dead) synthesized VMs; the id is the VM's directory name under
 * `<home>/vms`. `state` is "running", "filling" (early start: not fully local
 * yet, its cloudlet process still serves it) or "dead". A VM left filling by
 * a cloudlet process that died is stopped and removed first (it is frozen:
 * docs/postcopy.md) and listed once as "removed".
 */
export async function psVms(home: string) {
  const removed = new Set(await cleanupAbandonedFills(home));
  const root = homePaths(home).vms;
  const out = [];
  for (const id of removed) out.push({ id, alive: false, state: "removed" as const, host: "qemu", hostAddress: "", ports: [], created: "" });
  for (const id of (await fsp.readdir(root).catch(() => [] as string[])).sort()) {
    const rec = await readVmRecord(join(root, id, "vm"));
    if (!rec) continue;
    const alive = await recordAlive(rec);
    out.push({ id, alive, state: !alive ? ("dead" as const) : rec.filling ? ("filling" as const) : ("running" as const), host: rec.host, hostAddress: rec.hostAddress, ports: rec.portForwards, created: rec.createdAt });
  }
  return out;
}

/**
 * Stops and removes the VMs whose early start was cut off: their record says
 * "filling" and the cloudlet process that filled them is gone. Such a QEMU
 * is frozen in postcopy-paused (or dead) and its image files are
 * half-written. Returns their ids.
 */
export async function cleanupAbandonedFills(home: string): Promise<string[]> {
  const root = homePaths(home).vms;
  const gone: string[] = [];
  for (const id of await fsp.readdir(root).catch(() => [] as string[])) {
    const rec = await readVmRecord(join(root, id, "vm"));
    if (!rec?.filling || ownerAlive(rec.owner)) continue;
    await stopVm(join(root, id, "vm"));
    await fsp.rm(join(root, id), { recursive: true, force: true });
    gone.push(id);
  }
  return gone;
}

/**
 * Synthesized VMs (from `cloudlet synthesis` or a server session) whose disk
 * is a qcow2 layer over base `baseId`: deleting the base would break them.
 */
export async function vmsOnBase(home: string, baseId: string): Promise<string[]> {
  const dirs = homePaths(home);
  const found: string[] = [];
  for (const [root, sub, label] of [[dirs.vms, "image", "VM"], [dirs.sessions, "vm", "server session"]] as const) {
    for (const id of await fsp.readdir(root).catch(() => [] as string[])) {
      const launch = await fsp.readFile(join(root, id, sub, SYNTH_FILES.launch), "utf8").catch(() => null);
      if (launch && (JSON.parse(launch) as { baseId?: string }).baseId === baseId) found.push(`${label} ${id}`);
    }
  }
  return found;
}

/** Stops a synthesized VM and removes its files. */
export async function stopSynthesized(home: string, id: string): Promise<void> {
  if (!/^[0-9a-f]{12}$/.test(id)) throw new CloudletError("BAD_ARGUMENT", `"${id}" is not a VM id (see cloudlet ps)`);
  const dir = join(homePaths(home).vms, id);
  if (!(await fsp.access(dir).then(() => true, () => false))) throw new CloudletError("BAD_ARGUMENT", `no VM "${id}" (see cloudlet ps)`);
  await stopVm(join(dir, "vm"));
  await fsp.rm(dir, { recursive: true, force: true });
}
