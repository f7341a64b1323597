/** `cloudlet stop`: stop a synthesized VM and remove its files. */
import type { CAC } from "cac";
import { cloudletHome } from "../../ts/home/paths.ts";
import { stopSynthesized } from "../../ts/jobs/vm_admin.ts";
import { type Common, out } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("stop <vm>", "Stop a synthesized VM and remove its files")
    .action(async (id: string, o: Common) => {
      await stopSynthesized(cloudletHome(o.home), id);
      out(o, { stopped: id }, `stopped ${id}`);
    });
}
