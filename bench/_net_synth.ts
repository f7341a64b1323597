/**
 * The network benchmark's "decode+apply" step of (c), a long-running helper
 * in the server namespace, warm like `cloudlet serve`:
 *
 *   node --import tsx bench/_net_synth.ts HOME BASE BIND_IP
 *     then one job per line on stdin: an overlay path (on BASE; the answer is the
 *     webapp's page), or JSON {overlay, base, guestPort, path} (a 200 from PATH
 *     on that guest port); one JSON line per job on stdout
 *
 * Each job runs what `cloudlet synthesis BASE OVERLAY --bind BIND_IP
 * --auto-ports` runs (`synthesizeVm`: same worker threads, qcow2 over the
 * base disk), in-process: node start-up, the WASM load and, after the first
 * job, V8's warm-up are outside the clock, as they are for a running
 * server. The clock starts at the call and stops at the VM's first HTTP
 * answer through its forwarded port. Then the VM is stopped and its files
 * removed. Prints "ready" once the core is loaded.
 */
import { createInterface } from "node:readline";
import { loadCoreFromDisk } from "../ts/node/core_file.ts";
import { stopSynthesized } from "../ts/jobs/vm_admin.ts";
import { synthesizeVm } from "../ts/jobs/vm_synthesis.ts";
import { firstAnswer } from "./_net_http.ts";

const [home, base, bind] = process.argv.slice(2);
if (!home || !base || !bind) {
  process.stderr.write("usage: _net_synth.ts HOME BASE BIND_IP  (overlay paths on stdin)\n");
  process.exit(2);
}
const controller = new AbortController();
let busy: Promise<void> = Promise.resolve();
const quit = () => {
  controller.abort(new Error("interrupted"));
  void busy.finally(() => process.exit(130));
};
process.on("SIGINT", quit);
process.on("SIGTERM", quit);

const core = await loadCoreFromDisk();

async function job(line: string): Promise<unknown> {
  const j = line.startsWith("{") ? (JSON.parse(line) as { overlay: string; base: string; guestPort: number; path: string }) : { overlay: line, base, guestPort: 80, path: "/" };
  const overlay = j.overlay;
  let vmId: string | null = null;
  try {
    const t0 = performance.now();
    const r = await synthesizeVm({ core, home, hostChoice: { host: "qemu" }, signal: controller.signal }, { base: j.base, overlay, hostAddress: bind, autoPorts: true });
    if (!("vmId" in r)) throw new Error("no VM started");
    vmId = r.vmId;
    const running = performance.now() - t0;
    const port = r.ports.find((p) => p.guestPort === j.guestPort)?.hostPort ?? r.ports[0].hostPort;
    const answered = (await firstAnswer(bind, port, undefined, j.path)) - t0;
    return { ms: answered, synthesisMs: r.ms.synthesis, launchMs: r.ms.launch, runningMs: running, answerAfterRunningMs: answered - running };
  } catch (e) {
    return { error: (e as Error).stack ?? String(e) };
  } finally {
    if (vmId) await stopSynthesized(home, vmId).catch((e) => process.stderr.write(`_net_synth: stopping VM ${vmId}: ${e}\n`));
  }
}

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const path = line.trim();
  if (!path) return;
  busy = busy.then(async () => {
    process.stdout.write(JSON.stringify(await job(path)) + "\n");
  });
});
lines.on("close", () => void busy.then(() => process.exit(0)));
process.stdout.write("ready\n");
