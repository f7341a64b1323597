/**
 * What a benchmark ran on: CPU, cores, runtimes and peer tool versions, and
 * how busy the machine was. Every report starts with this.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { availableParallelism, loadavg, release, totalmem } from "node:os";
import { join } from "node:path";
import { REPO } from "./_corpus.ts";

/** The machine and software a report was measured on. */
export interface Machine {
  /** CPU model name from /proc/cpuinfo. */
  readonly cpu: string;
  /** The SIMD and hash extensions that matter to these kernels. */
  readonly cpuFlags: string[];
  /** Logical CPUs available to this process. */
  readonly cores: number;
  /** Physical memory, GiB. */
  readonly memGiB: number;
  /** Kernel release. */
  readonly kernel: string;
  /** Node.js and V8 versions. */
  readonly node: string;
  readonly v8: string;
  /** Version lines of the native toolchain and peers. */
  readonly tools: Record<string, string>;
  /** 1-minute load average when the report started. */
  readonly loadStart: number;
}

const INTERESTING_FLAGS = ["sse4_1", "avx2", "avx512f", "avx512vl", "sha_ni"];

/** Describes this machine. */
export function describeMachine(): Machine {
  let cpu = "unknown";
  let flags: string[] = [];
  try {
    const info = readFileSync("/proc/cpuinfo", "utf8");
    cpu = /^model name\s*:\s*(.*)$/m.exec(info)?.[1]?.trim() ?? cpu;
    const all = new Set((/^flags\s*:\s*(.*)$/m.exec(info)?.[1] ?? "").split(/\s+/));
    flags = INTERESTING_FLAGS.filter((f) => all.has(f));
  } catch {
    // not Linux: leave unknown
  }
  const hashWasm = JSON.parse(readFileSync(join(REPO, "node_modules/hash-wasm/package.json"), "utf8")).version as string;
  return {
    cpu,
    cpuFlags: flags,
    cores: availableParallelism(),
    memGiB: Math.round(totalmem() / 2 ** 30),
    kernel: release(),
    node: process.version,
    v8: process.versions.v8,
    tools: {
      rustc: firstLine("/usr/bin/rustc", ["--version"]),
      xz: firstLine("xz", ["--version"]),
      b3sum: firstLine("b3sum", ["--version"]),
      sha256sum: firstLine("sha256sum", ["--version"]),
      "hash-wasm": hashWasm,
    },
    loadStart: loadavg()[0],
  };
}

/** The header lines of a text report. */
export function machineLines(m: Machine): string[] {
  return [
    `machine: ${m.cpu} (${m.cpuFlags.join(" ") || "no SIMD flags seen"}), ${m.cores} cores, ${m.memGiB} GiB, Linux ${m.kernel}`,
    `node:    ${m.node} (V8 ${m.v8}); ${m.tools.rustc}; hash-wasm ${m.tools["hash-wasm"]}`,
    `peers:   ${m.tools.xz}; ${m.tools.b3sum}; ${m.tools.sha256sum}`,
    `load:    1-min load average ${m.loadStart.toFixed(2)} at start (${m.cores} cores; anything near 1 or above means a contended run)`,
  ];
}

function firstLine(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).split("\n")[0].trim();
  } catch {
    return `${cmd}: not found`;
  }
}
