/**
 * Two test hosts on one machine: network namespaces joined by a veth pair,
 * which the test creates and always removes.
 *
 *   ns "srv"  10.77.N.1/24  <-- veth -->  10.77.N.2/24  ns "cli"
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { runTool } from "./_tools.ts";

/** A pair of namespaces. */
export interface NetPair {
  srv: string;
  cli: string;
  srvIp: string;
  cliIp: string;
  /** Runs a command in a namespace and waits for it. */
  exec(ns: string, cmd: string, args: string[]): Promise<Uint8Array>;
  /** Starts a command in a namespace. */
  spawn(ns: string, cmd: string, args: string[], opts?: { env?: Record<string, string> }): ChildProcess;
  /** Removes both namespaces (and the veth pair with them). */
  destroy(): Promise<void>;
}

/** Creates the pair; `n` picks the subnet so concurrent runs do not clash. */
export async function makeNetPair(tag: string, n: number): Promise<NetPair> {
  const srv = `cl-${tag}-s`;
  const cli = `cl-${tag}-c`;
  const ip = (...a: string[]) => runTool("ip", a);
  for (const ns of [srv, cli]) await ip("netns", "del", ns).catch(() => {});
  await ip("netns", "add", srv);
  await ip("netns", "add", cli);
  // Removed even if the test process dies before its cleanup test runs.
  process.once("exit", () => {
    for (const ns of [srv, cli]) spawnSync("ip", ["netns", "del", ns], { stdio: "ignore" });
  });
  const pair: NetPair = {
    srv,
    cli,
    srvIp: `10.77.${n}.1`,
    cliIp: `10.77.${n}.2`,
    exec: (ns, cmd, args) => runTool("ip", ["netns", "exec", ns, cmd, ...args]),
    spawn: (ns, cmd, args, opts = {}) => spawn("ip", ["netns", "exec", ns, cmd, ...args], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, ...opts.env } }),
    destroy: async () => {
      for (const ns of [srv, cli]) await ip("netns", "del", ns).catch(() => {});
    },
  };
  try {
    await ip("link", "add", `v${tag}s`, "type", "veth", "peer", "name", `v${tag}c`);
    await ip("link", "set", `v${tag}s`, "netns", srv);
    await ip("link", "set", `v${tag}c`, "netns", cli);
    for (const [ns, dev, addr] of [[srv, `v${tag}s`, pair.srvIp], [cli, `v${tag}c`, pair.cliIp]]) {
      await pair.exec(ns, "ip", ["addr", "add", `${addr}/24`, "dev", dev]);
      await pair.exec(ns, "ip", ["link", "set", dev, "up", "multicast", "on"]);
      await pair.exec(ns, "ip", ["link", "set", "lo", "up"]);
      // mDNS is multicast: route it over the veth.
      await pair.exec(ns, "ip", ["route", "add", "224.0.0.0/4", "dev", dev]);
    }
  } catch (e) {
    await pair.destroy();
    throw e;
  }
  return pair;
}
