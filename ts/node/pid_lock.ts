/**
 * PidLock: an exclusive lock file holding its owner's pid. A lock whose owner
 * has died is taken over, so a crash never leaves a home locked.
 */
import { promises as fsp } from "node:fs";
import { dirname } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { CloudletError } from "../errors.ts";
import { outputError } from "./files.ts";
import { processAlive } from "./process.ts";

/**
 * Takes the lock at `file`, waiting up to `timeoutMs` for a live owner to
 * release it; then throws `busy(ownerPid)`. Resolves with the release function.
 */
export async function acquirePidLock(file: string, timeoutMs: number, busy: (owner: number) => CloudletError): Promise<() => Promise<void>> {
  await fsp.mkdir(dirname(file), { recursive: true }).catch((e) => {
    throw outputError(e, dirname(file));
  });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const fh = await fsp.open(file, "wx");
      await fh.writeFile(String(process.pid));
      await fh.close();
      return () => fsp.rm(file, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw outputError(e, file);
    }
    const owner = Number(await fsp.readFile(file, "utf8").catch(() => "0"));
    if (owner && !processAlive(owner)) {
      // The owner died holding the lock.
      await fsp.rm(file, { force: true });
      continue;
    }
    if (Date.now() > deadline) throw busy(owner);
    await sleep(25 + Math.random() * 50);
  }
}
