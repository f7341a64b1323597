/** `cloudlet list-base`: list the base VMs in the registry. */
import type { CAC } from "cac";
import { cloudletHome } from "../../ts/home/paths.ts";
import { formatBytes } from "../../ts/inspect/report.ts";
import { Registry } from "../../ts/home/registry.ts";
import { type Common, out } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("list-base", "List the base VMs in the registry")
    .alias("list_base")
    .action(async (o: Common) => {
      const bases = await new Registry(cloudletHome(o.home)).listBases();
      out(o, bases, bases.length ? bases.map((b) => `${b.id.slice(0, 16)}  ${b.name.padEnd(16)} disk ${formatBytes(b.diskSize).padStart(10)}  mem ${formatBytes(b.memorySize).padStart(10)}  ${b.host.padEnd(5)} ${b.created}  ${b.source}`).join("\n") : "no bases (create one with: cloudlet base)");
    });
}
