/** `cloudlet ps`: list synthesized VMs. */
import type { CAC } from "cac";
import { cloudletHome } from "../../ts/home/paths.ts";
import { psVms } from "../../ts/jobs/vm_admin.ts";
import { type Common, out } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("ps", "List synthesized VMs")
    .action(async (o: Common) => {
      const vms = await psVms(cloudletHome(o.home));
      out(o, vms, vms.length ? vms.map((v) => `${v.id}  ${v.state === "removed" ? "removed (its early start was cut off: cloudlet died while it filled)" : v.state.padEnd(7)}  ${v.host.padEnd(5)} ${v.ports.map((p) => `${v.hostAddress}:${p.hostPort}->${p.guestPort}`).join(" ")}  ${v.created}`).join("\n") : "no synthesized VMs");
    });
}
