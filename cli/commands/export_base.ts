/** `cloudlet export-base`: write a base VM to one file. */
import type { CAC } from "cac";
import { loadCoreFromDisk } from "../../ts/node/core_file.ts";
import { cloudletHome } from "../../ts/home/paths.ts";
import { formatBytes } from "../../ts/inspect/report.ts";
import { exportBase } from "../../ts/home/base_archive.ts";
import { type Common, bar, out } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("export-base <base> <file>", "Write a base VM to one file")
    .alias("export_base")
    .action(async (ref: string, file: string, o: Common) => {
      const core = await loadCoreFromDisk();
      const p = bar(o);
      const r = await exportBase(core, cloudletHome(o.home), ref, file, p.update);
      p.done();
      out(o, { file, bytes: r.bytes, baseId: r.base.id }, `exported ${r.base.name} ${r.base.id} to ${file} (${formatBytes(r.bytes)})`);
    });
}
