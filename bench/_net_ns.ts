/**
 * The two hosts of the network benchmark: network namespaces joined by a
 * veth pair, with a token-bucket rate limit (tc tbf) on both ends.
 *
 *   ns "srv"  10.78.N.1/24  <-- veth, tbf RATE each way -->  10.78.N.2/24  ns "cli"
 *
 * netem (delay, loss) is not available on this kernel (no sch_netem), so
 * the link has a rate but no added latency: RTT stays under a millisecond,
 * like a cloudlet on the same LAN/WLAN segment as its client.
 *
 * `destroy()` kills what was started inside the namespaces (by pid) and
 * removes both namespaces; it is safe to call twice.
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";

/** Runs a program and resolves with its stdout; rejects with its stderr. */
export function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { cwd: opts.cwd, env: opts.env, maxBuffer: 64 << 20, timeout: opts.timeoutMs ?? 0, signal: opts.signal, encoding: "utf8" }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(" ")}: ${(stderr || err.message).trim()}`));
      else resolve(stdout);
    });
  });
}

/** The pair of namespaces. */
export interface NetLink {
  readonly srv: string;
  readonly cli: string;
  readonly srvIp: string;
  readonly cliIp: string;
  readonly srvDev: string;
  readonly cliDev: string;
  /** Runs a command in a namespace; resolves with its stdout. */
  exec(ns: string, cmd: string, args: string[], opts?: { cwd?: string; timeoutMs?: number }): Promise<string>;
  /** Starts a long-running command in a namespace; it is killed (by pid) in destroy(). */
  spawn(ns: string, cmd: string, args: string[], opts?: { cwd?: string; stdin?: boolean }): ChildProcess;
  /** Sets the rate of both directions (Mbit/s), replacing the previous limit. */
  setRate(mbit: number): Promise<string>;
  /** Kills the spawned processes and removes both namespaces. */
  destroy(): Promise<void>;
}

/** tbf for `mbit`: the bucket holds ~2 ms of traffic (at least 32 KB), the queue 50 ms. */
export function tbfArgs(dev: string, mbit: number): string[] {
  const bytesPerMs = (mbit * 1e6) / 8 / 1000;
  const burst = Math.max(32 * 1024, Math.round(bytesPerMs * 2));
  return ["qdisc", "replace", "dev", dev, "root", "tbf", "rate", `${mbit}mbit`, "burst", String(burst), "latency", "50ms"];
}

/** Creates the pair; `tag` (<= 6 chars) and `n` keep concurrent runs apart. */
export async function makeNetLink(tag: string, n: number): Promise<NetLink> {
  const srv = `cl-${tag}-s`;
  const cli = `cl-${tag}-c`;
  const srvDev = `v${tag}s`;
  const cliDev = `v${tag}c`;
  const children = new Set<ChildProcess>();
  const ip = (...a: string[]) => run("ip", a);
  // A crashed earlier run may have left these behind.
  for (const ns of [srv, cli]) await ip("netns", "del", ns).catch(() => {});
  await ip("link", "del", srvDev).catch(() => {});
  let destroyed = false;
  const link: NetLink = {
    srv,
    cli,
    srvIp: `10.78.${n}.1`,
    cliIp: `10.78.${n}.2`,
    srvDev,
    cliDev,
    exec: (ns, cmd, args, opts = {}) => run("ip", ["netns", "exec", ns, cmd, ...args], opts),
    spawn: (ns, cmd, args, opts = {}) => {
      const c = spawn("ip", ["netns", "exec", ns, cmd, ...args], { cwd: opts.cwd, stdio: [opts.stdin ? "pipe" : "ignore", "pipe", "pipe"] });
      children.add(c);
      c.on("close", () => children.delete(c));
      return c;
    },
    setRate: async (mbit) => {
      await link.exec(srv, "tc", tbfArgs(srvDev, mbit));
      await link.exec(cli, "tc", tbfArgs(cliDev, mbit));
      return (await link.exec(cli, "tc", ["qdisc", "show", "dev", cliDev])).trim();
    },
    destroy: async () => {
      if (destroyed) return;
      destroyed = true;
      // `ip netns exec` execs the command, so the pid is the program's own.
      const waits = [...children].map((c) => new Promise<void>((r) => (c.exitCode !== null || c.signalCode !== null ? r() : c.once("close", () => r()))));
      for (const c of children) if (c.pid) c.kill("SIGINT");
      const timer = setTimeout(() => {
        for (const c of children) if (c.pid) c.kill("SIGKILL");
      }, 15_000);
      await Promise.all(waits);
      clearTimeout(timer);
      for (const ns of [srv, cli]) await ip("netns", "del", ns).catch(() => {});
    },
  };
  await ip("netns", "add", srv);
  await ip("netns", "add", cli);
  try {
    await ip("link", "add", srvDev, "type", "veth", "peer", "name", cliDev);
    await ip("link", "set", srvDev, "netns", srv);
    await ip("link", "set", cliDev, "netns", cli);
    for (const [ns, dev, addr] of [[srv, srvDev, link.srvIp], [cli, cliDev, link.cliIp]]) {
      await link.exec(ns, "ip", ["addr", "add", `${addr}/24`, "dev", dev]);
      await link.exec(ns, "ip", ["link", "set", dev, "up"]);
      await link.exec(ns, "ip", ["link", "set", "lo", "up"]);
    }
  } catch (e) {
    await link.destroy();
    throw e;
  }
  return link;
}

/** Lists namespaces whose name starts with `prefix` (to prove they are gone). */
export async function namespacesLike(prefix: string): Promise<string[]> {
  const out = await run("ip", ["netns", "list"]).catch(() => "");
  return out.split("\n").map((l) => l.split(" ")[0]).filter((n) => n.startsWith(prefix));
}
