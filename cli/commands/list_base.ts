/** `cloudlet list-base`: list the base VMs in the registry. */
import type { CAC } from "cac";
import { cloudletHome } from "../../ts/home/paths.ts";
import { formatBytes } from "../../ts/inspect/report.ts";
import { type BaseRow, Registry } from "../../ts/home/registry.ts";
import { shortId } from "../../ts/core/ids.ts";
import { type ListOptions, listOptions, printList } from "../list_output.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  listOptions(cli.command("list-base", "List the base VMs in the registry"))
    .alias("list_base")
    .action(async (o: ListOptions) => {
      const bases = await new Registry(cloudletHome(o.home)).listBases();
      printList(o, bases, (b) => ({ ...b }), [
        { header: "ID", value: (b: BaseRow) => shortId(b.id) },
        { header: "NAME", value: (b) => b.name },
        { header: "DISK SIZE", value: (b) => formatBytes(b.diskSize) },
        { header: "MEMORY SIZE", value: (b) => formatBytes(b.memorySize) },
        { header: "HOST", value: (b) => b.host },
        { header: "CREATED", value: (b) => b.created },
        { header: "SOURCE", value: (b) => b.source },
      ], "no bases (create one with: cloudlet base)");
    });
}
