/** `cloudlet discover`: list the cloudlets on the local network (mDNS / DNS-SD). */
import type { CAC } from "cac";
import { discover } from "../../ts/server/discovery.ts";
import { type Common, out, num } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("discover", "List the cloudlets on the local network (mDNS / DNS-SD)")
    .option("--wait <s>", "How long to listen, seconds", { default: 2 })
    .action(async (o: Common & Record<string, unknown>) => {
      const found = await discover(num(o.wait, "--wait", 0.1, 600, false) * 1000);
      out(o, found, found.length ? found.map((f) => `${f.name}  ${f.tls ? "https" : "http"}://${f.addresses[0] ?? f.host}:${f.port}  v${f.version}  bases: ${f.bases.join(", ") || "none"}`).join("\n") : "no cloudlets found");
    });
}
