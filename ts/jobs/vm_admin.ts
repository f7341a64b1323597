/** Listing and stopping synthesized VMs. */
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { CloudletError } from "../errors.ts";
import { SYNTH_FILES } from "./file_synthesis.ts";
import { readVmRecord, recordAlive, stopVm } from "../vm/vm_records.ts";
import { homePaths } from "../home/paths.ts";

/** Running (and dead) synthesized VMs; the id is the VM's directory name under `<home>/vms`. */
export async function psVms(home: string) {
  const root = homePaths(home).vms;
  const out = [];
  for (const id of (await fsp.readdir(root).catch(() => [] as string[])).sort()) {
    const rec = await readVmRecord(join(root, id, "vm"));
    if (!rec) continue;
    out.push({ id, alive: await recordAlive(rec), host: rec.host, hostAddress: rec.hostAddress, ports: rec.portForwards, created: rec.createdAt });
  }
  return out;
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
