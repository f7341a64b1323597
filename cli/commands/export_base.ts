/** `cloudlet export-base`: write a base VM to one file. */
import type { CAC } from "cac";
import { loadCoreFromDisk } from "../../ts/node/core_file.ts";
import { CloudletError } from "../../ts/errors.ts";
import { cloudletHome } from "../../ts/home/paths.ts";
import { formatBytes } from "../../ts/inspect/report.ts";
import { exportBase } from "../../ts/home/base_archive.ts";
import { type Common, bar, out } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("export-base <base> <file>", "Write a base VM to one file (a sparse tar; import-base reads it, compressed or not)")
    .alias("export_base")
    .option("--zstd", "Compress with zstd (fast; e.g. base.tar.zst)")
    .option("--xz", "Compress with xz (smaller, slower; e.g. base.tar.xz)")
    .example("cloudlet export-base tiny tiny.tar.zst --zstd")
    .action(async (ref: string, file: string, o: Common & { zstd?: boolean; xz?: boolean }) => {
      if (o.zstd && o.xz) throw new CloudletError("BAD_ARGUMENT", "give --zstd or --xz, not both");
      const compression = o.zstd ? "zstd" : o.xz ? "xz" : "none";
      const core = await loadCoreFromDisk();
      const p = bar(o);
      const r = await exportBase(core, cloudletHome(o.home), ref, file, p.update, compression);
      p.done();
      out(o, { file, bytes: r.bytes, baseId: r.base.id, compression }, `exported ${r.base.name} ${r.base.id} to ${file} (${formatBytes(r.bytes)}${compression === "none" ? "" : `, ${compression}`})`);
    });
}
