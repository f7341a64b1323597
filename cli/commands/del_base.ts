/** `cloudlet del-base`: delete a base VM (id, id prefix or name) and its files. */
import type { CAC } from "cac";
import { CloudletError } from "../../ts/errors.ts";
import { cloudletHome } from "../../ts/home/paths.ts";
import { vmsOnBase } from "../../ts/jobs/vm_admin.ts";
import { Registry } from "../../ts/home/registry.ts";
import { promises as fsp } from "node:fs";
import { type Common, out } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("del-base <base>", "Delete a base VM (id, id prefix or name) and its files")
    .alias("del_base")
    .action(async (ref: string, o: Common) => {
      const home = cloudletHome(o.home);
      const reg = new Registry(home);
      const b = await reg.getBase(ref);
      const users = await vmsOnBase(home, b.id);
      if (users.length) throw new CloudletError("CONFLICT", `base ${b.name} is in use by ${users.join(", ")}: stop ${users.length > 1 ? "them" : "it"} first (cloudlet stop VM)`);
      await reg.removeBase(b.id);
      await fsp.rm(b.dir, { recursive: true, force: true });
      out(o, { deleted: b.id }, `deleted base ${b.name} ${b.id}`);
    });
}
