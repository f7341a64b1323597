/**
 * Running host tools (qemu-img, virsh, ...) asynchronously. Async on purpose:
 * Deno's spawnSync deadlocks when a tool's output outgrows the pipe buffer.
 */
import { spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { CloudletError } from "../errors.ts";
import { missingTool } from "./command.ts";

/** Output of a finished tool. */
export interface ToolResult {
  /** Exit code (null when killed by a signal). */
  code: number | null;
  /** Captured stdout. */
  stdout: string;
  /** Captured stderr. */
  stderr: string;
}

/** Runs `cmd args`; TOOL_MISSING error when the tool is missing. Does not check the exit code. */
export function runTool(cmd: string, args: string[], opts: { signal?: AbortSignal; input?: string } = {}): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"], signal: opts.signal });
    let stdout = "";
    let stderr = "";
    // Deno leaves the pipes null when the tool could not start (it then emits "error", not "close").
    child.stdout?.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr?.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT") reject(missingTool(cmd));
      else if (e.name === "AbortError") reject(new CloudletError("CANCELLED", `${cmd} was cancelled`));
      else reject(e);
    });
    child.on("close", (code) => resolve({ code, stdout, stderr }));
    child.stdin?.on("error", () => {});
    child.stdin?.end(opts.input ?? "");
  });
}

/** Runs a tool and returns stdout; HOST_TOOL error with its stderr when it fails. */
export async function runToolOk(cmd: string, args: string[], opts: { signal?: AbortSignal; input?: string; file?: string } = {}): Promise<string> {
  const r = await runTool(cmd, args, opts);
  if (r.code !== 0) throw new CloudletError("HOST_TOOL", `${cmd} ${args[0] ?? ""} failed: ${r.stderr.trim().split("\n").slice(-3).join(" / ") || `exit ${r.code}`}`, opts.file);
  return r.stdout;
}

/** True when `pid` runs and is not a zombie (`kill -0` succeeds on zombies, /proc/PID/stat does not lie). */
export function processAlive(pid: number): boolean {
  return procStat(pid) !== null;
}

/** Start time of `pid` in clock ticks since boot (field 22 of /proc/PID/stat), or null when it is gone. */
export function processStartTime(pid: number): number | null {
  const f = procStat(pid);
  return f ? Number(f[19]) : null;
}

function procStat(pid: number): string[] | null {
  try {
    // Synchronous on purpose: a tiny procfs read, used in tight polling loops.
    const text = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The command name is in parentheses and may contain spaces; fields follow the last ')'.
    const rest = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return rest[0] === "Z" || rest[0] === "X" ? null : rest;
  } catch {
    return null;
  }
}
