/**
 * Runs a host tool with bytes on stdin and returns its stdout. Asynchronous
 * on purpose: Deno's spawnSync writes all of stdin before reading stdout, so
 * a tool whose output outgrows the pipe buffer deadlocks.
 */
import { spawn } from "node:child_process";

/** Runs `cmd args` feeding `input`; rejects when it exits non-zero. */
export function runTool(cmd: string, args: string[], input: Uint8Array = new Uint8Array(0)): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
    const out: Uint8Array[] = [];
    let err = "";
    child.stdout.on("data", (d: Uint8Array) => out.push(d));
    child.stderr.on("data", (d: Uint8Array) => (err += new TextDecoder().decode(d)));
    child.on("error", reject);
    child.on("close", (code) => {
      if (code !== 0) return reject(new Error(`${cmd} ${args.join(" ")} exited ${code}: ${err}`));
      const buf = new Uint8Array(out.reduce((n, p) => n + p.length, 0));
      let o = 0;
      for (const p of out) (buf.set(p, o), (o += p.length));
      resolve(buf);
    });
    child.stdin.on("error", () => {}); // the tool may exit before reading everything
    child.stdin.end(input);
  });
}
