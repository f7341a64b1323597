/** Runs the real `cloudlet` command (bin/cloudlet) and captures what it printed. */
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";

/**
 * Path of the command: under `deno test` the CLI itself runs under Deno too
 * (bin/cloudlet-deno), so the whole suite checks both runtimes.
 */
export const CLOUDLET = fileURLToPath(new URL("Deno" in globalThis ? "../bin/cloudlet-deno" : "../bin/cloudlet", import.meta.url));

/** Result of a run. */
export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Runs `cloudlet ...args`; `onSpawn` gets the child (e.g. to kill it). */
export function cloudlet(args: string[], opts: { env?: Record<string, string>; onSpawn?: (pid: number) => void } = {}): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(CLOUDLET, args, { env: { ...process.env, ...opts.env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("error", reject);
    if (child.pid) opts.onSpawn?.(child.pid);
    child.on("close", (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}
