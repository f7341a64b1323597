/** `cloudlet import-base`: import a base VM written by export-base, verifying every byte. */
import type { CAC } from "cac";
import { loadCoreFromDisk } from "../../ts/node/core_file.ts";
import { cloudletHome } from "../../ts/home/paths.ts";
import { importBase } from "../../ts/home/base_archive.ts";
import { controller, type Common, bar, out } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("import-base <file>", "Import a base VM written by export-base, verifying every byte")
    .alias("import_base")
    .action(async (file: string, o: Common) => {
      const core = await loadCoreFromDisk();
      const p = bar(o);
      const r = await importBase(core, cloudletHome(o.home), file, p.update, controller.signal);
      p.done();
      out(o, { ...r.base, existed: r.existed }, r.existed ? `base ${r.base.name} ${r.base.id} is already here; nothing imported` : `imported base ${r.base.name} ${r.base.id}`);
    });
}
