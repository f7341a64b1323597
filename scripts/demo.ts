/**
 * The main job: the seed's whole flow on the built-in tiny guest, with real
 * VMs. base -> overlay (a script customises the VM: a web page, a file, a
 * counter, an HTTP server) -> synthesis (rebuild + resume) -> fetch the page
 * through the forwarded port, then stop the VM. Prints sizes and times.
 */
import { spawn } from "node:child_process";
import * as http from "node:http";
import { promises as fsp } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const cloudlet = join(root, "bin/cloudlet");
const host = process.argv.includes("--virsh") ? "virsh" : "qemu";

function run(args: string[]): Promise<any> {
  return new Promise((resolve, reject) => {
    // Progress goes to the terminal (stderr); the JSON result comes back on stdout.
    const child = spawn(cloudlet, [args[0], "--json", ...args.slice(1)], { stdio: ["inherit", "pipe", "inherit"] });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.on("close", (code) => (code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`cloudlet ${args[0]} failed (exit ${code})`))));
  });
}

/** GET over node:http, lenient: busybox httpd passes CGI headers through with bare LF line ends. */
function get(url: string): Promise<string> {
  return new Promise((resolve) => {
    http
      .get(url, { timeout: 3000, insecureHTTPParser: true }, (res) => {
        let body = "";
        res.setEncoding("utf8").on("data", (d: string) => (body += d));
        res.on("end", () => resolve(body));
        res.on("error", () => resolve(body));
      })
      .on("error", () => resolve(""))
      .on("timeout", function (this: http.ClientRequest) {
        this.destroy();
      });
  });
}

const mib = (n: number) => `${(n / (1 << 20)).toFixed(2)} MiB`;
const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;

async function main(): Promise<void> {
  const work = await fsp.mkdtemp(join(tmpdir(), "cloudlet-demo-"));
  const step = (s: string) => process.stderr.write(`\n== ${s}\n`);
  try {
    step(`1. base: boot the built-in tiny guest (${host}) and snapshot it`);
    let t = performance.now();
    const existing = (await run(["list-base"])) as Array<{ name: string; id: string; host: string }>;
    const name = `demo-${host}`;
    let base = existing.find((b) => b.name === name);
    let baseSecs = 0;
    if (!base) {
      base = await run(["base", "--name", name, "--host", host]);
      baseSecs = (performance.now() - t) / 1000;
    }
    step("2. overlay: resume the base, run examples/webapp.sh in it, snapshot, encode");
    t = performance.now();
    const ov = await run(["overlay", name, "--host", host, "--script", join(root, "examples/webapp.sh"), "-o", join(work, "webapp.overlay"), "--", "-redir", "tcp:0::80"]);
    const ovSecs = (performance.now() - t) / 1000;
    step("3. synthesis: rebuild the custom VM from the base and the overlay, resume it");
    t = performance.now();
    const vm = await run(["synthesis", name, join(work, "webapp.overlay"), "--host", host]);
    const port = vm.ports[0].hostPort;
    let page = "";
    let status = "";
    for (let i = 0; i < 100 && !page; i++) {
      page = await get(`http://127.0.0.1:${port}/`);
      if (!page) await new Promise((r) => setTimeout(r, 100));
    }
    const firstAnswer = (performance.now() - t) / 1000;
    status = await get(`http://127.0.0.1:${port}/cgi-bin/status`);
    await run(["stop", vm.vmId]);
    process.stdout.write(`
The synthesized VM answered on 127.0.0.1:${port}:
${page.trim()}

${status.trim()}

base       ${base!.id.slice(0, 16)}…  disk ${mib((base as any).diskSize)}, memory ${mib((base as any).memorySize)}${baseSecs ? `, created in ${baseSecs.toFixed(1)} s` : " (reused)"}
overlay    ${kib(ov.bytes)} in ${ov.segments} segment(s); customise + snapshot + encode ${ovSecs.toFixed(1)} s (encode ${ov.seconds.toFixed(1)} s)
synthesis  first HTTP answer ${firstAnswer.toFixed(1)} s after the synthesis command started (rebuild ${(vm.ms.synthesis / 1000).toFixed(1)} s, resume ${(vm.ms.launch / 1000).toFixed(1)} s)
`);
    if (!page.includes("Hello from a synthesized cloudlet VM")) throw new Error("the synthesized VM did not serve the custom page");
  } finally {
    await fsp.rm(work, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`demo: ${e.message}\n`);
  process.exit(1);
});
