/**
 * The disk a VM runs on: a qcow2 top layer over a raw base disk, with 4 KiB
 * clusters so that changed extents map 1:1 onto overlay chunks. The base is
 * never written; TRIM in the guest (discard=unmap on the drive) drops freed
 * clusters from the top layer.
 */
import { promises as fsp } from "node:fs";
import { resolve } from "node:path";
import { CloudletError } from "../errors.ts";
import { partName } from "../node/files.ts";
import { requireExecutable, runCommandOk } from "../node/command.ts";

/** Creates `top` as an empty qcow2 layer over the raw disk `base` (absolute backing path); atomic. */
export async function createQcow2Layer(base: string, top: string, signal?: AbortSignal): Promise<void> {
  const qemuImg = requireExecutable("qemu-img", "qemu-utils");
  const backing = resolve(base);
  const st = await fsp.stat(backing).catch(() => null);
  if (!st?.isFile()) throw new CloudletError("MISSING_INPUT", "the base disk does not exist", backing);
  const tmp = partName(top);
  try {
    await runCommandOk(qemuImg, ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", backing, "-F", "raw", tmp], {
      signal,
      what: "qemu-img create (qcow2 top layer)",
    });
    await fsp.rename(tmp, top);
  } catch (e) {
    await fsp.rm(tmp, { force: true });
    throw e;
  }
}
