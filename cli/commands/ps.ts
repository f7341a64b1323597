/** `cloudlet ps`: list synthesized VMs and the server sessions of the same home. */
import type { CAC } from "cac";
import { cloudletHome } from "../../ts/home/paths.ts";
import { psVms, type PsRow } from "../../ts/jobs/vm_admin.ts";
import { shortId } from "../../ts/core/ids.ts";
import { type ListOptions, listOptions, printList } from "../list_output.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  listOptions(cli.command("ps", "List synthesized VMs and the server sessions of this home (ports: host address:host port->guest port)"))
    .example("cloudlet ps -q")
    .example("cloudlet ps --format '{{id}} {{state}}'")
    .action(async (o: ListOptions) => {
      const rows = await psVms(cloudletHome(o.home));
      printList(o, rows, (r) => ({ ...r }), [
        { header: "ID", value: (r: PsRow) => shortId(r.id) },
        { header: "KIND", value: (r) => r.kind },
        { header: "STATE", value: (r) => r.state },
        { header: "HOST", value: (r) => r.host },
        { header: "CREATED", value: (r) => r.created },
        { header: "PORTS", value: (r) => r.ports.map((p) => `${r.hostAddress}:${p.hostPort}->${p.guestPort}`).join(" ") },
      ], "no synthesized VMs or server sessions");
    });
}
