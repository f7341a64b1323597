/** Listing and stopping synthesized VMs. */
import { promises as fsp } from "node:fs";
import { join } from "node:path";
import { CloudletError } from "../errors.ts";
import { SYNTH_FILES } from "./file_synthesis.ts";
import { ownerAlive, readVmRecord, recordAlive, stopVm, type VmRecord } from "../vm/vm_records.ts";
import { matchIdPrefix } from "../core/ids.ts";
import { homePaths } from "../home/paths.ts";

/** One row of `cloudlet ps`: a synthesized VM, or a server session of the same home. */
export interface PsRow {
  /** The VM id (`<home>/vms/<id>`) or the session id (`<home>/sessions/<id>`). */
  id: string;
  kind: "vm" | "session";
  /**
   * running; resuming (early start: QEMU runs, the guest not yet: its device
   * state and boot set are on the way); filling (early start: resumed, not fully
   * local yet, its cloudlet process still serves it); dead (its QEMU is gone); pending (a session whose VM is
   * not launched yet); removed (an early start cut off when its cloudlet
   * process died: stopped and removed by this listing, shown once).
   */
  state: "running" | "resuming" | "filling" | "dead" | "pending" | "removed";
  host: string;
  /** The address the port forwards listen on. */
  hostAddress: string;
  /** Port forwards, host port -> guest port. */
  ports: Array<{ proto: string; hostPort: number; guestPort: number }>;
  created: string;
}

/**
 * Synthesized VMs and server sessions of `home`, read from the home itself
 * (VM records under `<home>/vms` and `<home>/sessions`): no server address or
 * token is needed, and a hung server does not hang `ps`.
 */
export async function psVms(home: string): Promise<PsRow[]> {
  const dirs = homePaths(home);
  const out: PsRow[] = [];
  for (const id of await cleanupAbandonedFills(home)) out.push({ id, kind: "vm", state: "removed", host: "qemu", hostAddress: "", ports: [], created: "" });
  for (const id of (await fsp.readdir(dirs.vms).catch(() => [] as string[])).sort()) {
    const rec = await readVmRecord(join(dirs.vms, id, "vm"));
    if (!rec) continue;
    out.push(row(id, "vm", rec, await recordAlive(rec)));
  }
  for (const id of (await fsp.readdir(dirs.sessions).catch(() => [] as string[])).sort()) {
    if (!SESSION_ID_RE.test(id)) continue;
    // An early-started session's VM lives beside the session's folder (state "resuming", then "filling" until it is local).
    const rec = (await readVmRecord(dirs.session(id))) ?? (await readVmRecord(join(dirs.earlySession(id), "vm")));
    if (rec) out.push(row(id, "session", rec, await recordAlive(rec)));
    else {
      const st = await fsp.stat(dirs.session(id)).catch(() => null);
      if (st) out.push({ id, kind: "session", state: "pending", host: "", hostAddress: "", ports: [], created: st.mtime.toISOString() });
    }
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

const SESSION_ID_RE = /^[0-9a-f]{32}$/;

function row(id: string, kind: PsRow["kind"], rec: VmRecord, alive: boolean): PsRow {
  return { id, kind, state: !alive ? "dead" : rec.filling ? (rec.resuming ? "resuming" : "filling") : "running", host: rec.host, hostAddress: rec.hostAddress, ports: rec.portForwards.map((p) => ({ proto: p.proto, hostPort: p.hostPort, guestPort: p.guestPort })), created: rec.createdAt };
}

/**
 * What `cloudlet stop REF` names in `home`: a VM or a session, by whole id or
 * unique prefix (an ambiguous one is an error saying how many characters are
 * needed), or null when the home has neither.
 */
export async function findStoppable(home: string, ref: string): Promise<{ kind: "vm" | "session"; id: string } | null> {
  const dirs = homePaths(home);
  const vms = (await fsp.readdir(dirs.vms).catch(() => [] as string[])).filter((x) => /^[0-9a-f]{12}$/.test(x));
  const sessions = (await fsp.readdir(dirs.sessions).catch(() => [] as string[])).filter((x) => SESSION_ID_RE.test(x));
  const id = matchIdPrefix(ref, [...vms, ...sessions], "VM and session", "cloudlet ps");
  if (!id) return null;
  return { kind: vms.includes(id) ? "vm" : "session", id };
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

/** Stops a synthesized VM (id or unique prefix) and removes its files; returns its id. */
export async function stopSynthesized(home: string, ref: string): Promise<string> {
  const found = await findStoppable(home, ref);
  if (!found || found.kind !== "vm") throw new CloudletError("BAD_ARGUMENT", `no VM "${ref}" (see cloudlet ps)`);
  const dir = join(homePaths(home).vms, found.id);
  await stopVm(join(dir, "vm"));
  await fsp.rm(dir, { recursive: true, force: true });
  return found.id;
}
