/** `cloudlet stop`: stop a synthesized VM (and remove its files) or end a server session. */
import type { CAC } from "cac";
import { promises as fsp } from "node:fs";
import { CloudletError } from "../../ts/errors.ts";
import { cloudletHome, homePaths } from "../../ts/home/paths.ts";
import { findStoppable, stopSynthesized } from "../../ts/jobs/vm_admin.ts";
import { CloudletClient } from "../../ts/server/client.ts";
import { DEFAULT_PORT } from "../../ts/server/protocol.ts";
import { controller, type Common, out, last, readFileArg } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("stop <id>", "Stop a synthesized VM and remove its files, or end a server session (and its VM); any unique id prefix works")
    .option("-s, --server <host[:port]>", "For a session: the cloudlet server of this home", { default: `127.0.0.1:${DEFAULT_PORT}` })
    .option("--token-file <file>", "For a session: the server's token (default: <home>/server/token)")
    .option("--tls", "For a session: speak HTTPS")
    .option("--ca <file>", "For a session: CA certificate (PEM) to trust, with --tls")
    .example("cloudlet stop 3f2a")
    .action(async (ref: string, o: Common & Record<string, unknown>) => {
      const home = cloudletHome(o.home as string | undefined);
      const found = await findStoppable(home, ref);
      if (found?.kind === "vm") {
        const id = await stopSynthesized(home, found.id);
        out(o, { stopped: id, kind: "vm" }, `stopped VM ${id}`);
        return;
      }
      // A session belongs to its server (lease, detached limit, its files): it is ended through the server's API, never behind its back.
      const tokenFile = last(o.tokenFile as string | string[] | undefined) ?? homePaths(home).serverToken;
      if (!found && !o.tokenFile && !(await fsp.access(tokenFile).then(() => true, () => false))) throw new CloudletError("BAD_ARGUMENT", `no VM or session "${ref}" in ${home} (see cloudlet ps)`);
      const token = (await readFileArg(tokenFile, "token file (--token-file)")).toString("utf8").trim();
      const client = new CloudletClient({ server: last(o.server as string | string[]) as string, token, tls: Boolean(o.tls) || Boolean(o.ca), ca: o.ca ? await readFileArg(o.ca as string, "CA certificate") : undefined });
      const s = await client.stop(found?.id ?? ref, controller.signal).catch((e: unknown) => {
        if (!(e instanceof CloudletError) || !/cannot reach/.test(e.message)) throw e;
        throw new CloudletError("REMOTE", `${e.message}; ${found ? `session ${found.id}` : `"${ref}"`} is a session of a cloudlet server: give the server's address with --server (a server that is gone cleans up its sessions when it starts again)`);
      });
      out(o, { stopped: s.id, kind: "session", state: s.state }, `stopped session ${s.id}${s.endpoint ? ` (VM ${s.endpoint.vmId})` : ""}`);
    });
}
