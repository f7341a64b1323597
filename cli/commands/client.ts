/** `cloudlet client`: send an overlay to a cloudlet server; print how to reach the VM; keep the session until Ctrl-C. */
import type { CAC } from "cac";
import { loadCoreFromDisk } from "../../ts/node/core_file.ts";
import { cloudletHome, homePaths } from "../../ts/home/paths.ts";
import { openOverlay } from "../../ts/node/overlay_files.ts";
import { CloudletClient, sendOverlay } from "../../ts/server/client.ts";
import { DEFAULT_PORT } from "../../ts/server/protocol.ts";
import { controller, type Common, bar, out, untilInterrupted, last, need, readFileArg } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("client", "Send an overlay to a cloudlet server; print how to reach the VM; keep the session until Ctrl-C")
    .alias("synthesis_client")
    .option("-s, --server <host[:port]>", "The cloudlet", { default: `127.0.0.1:${DEFAULT_PORT}` })
    .option("-o, --overlay <file>", "The overlay to send (packed or seed layout)")
    .option("--url <url>", "Let the server fetch the overlay from this URL instead (HTTP Range)")
    .option("--token-file <file>", "The server's token (default: <home>/server/token)")
    .option("--tls", "Speak HTTPS")
    .option("--ca <file>", "CA certificate (PEM) to trust, with --tls")
    .option("--early-start", "Ask the server to resume the VM before the overlay has arrived (on its boot set) and fill it while it runs; this client sends the segments the VM needs first, holding its in-order upload back meanwhile. Without it the server decides (early when the overlay has a boot set); --no-early-start: never")
    .option("--detach", "Leave the session (and VM) running without this client and exit; early started, only once the VM is fully local (until then it needs this client)")
    .action(async (o: Common & Record<string, unknown>) => {
      const core = await loadCoreFromDisk();
      const home = cloudletHome(o.home as string | undefined);
      const tokenFile = last(o.tokenFile as string | string[] | undefined) ?? homePaths(home).serverToken;
      const token = (await readFileArg(tokenFile, "token file (--token-file)")).toString("utf8").trim();
      const client = new CloudletClient({ server: o.server as string, token, tls: Boolean(o.tls) || Boolean(o.ca), ca: o.ca ? await readFileArg(o.ca as string, "CA certificate") : undefined });
      const p = bar(o);
      let overlay = null;
      let metaBytes: Uint8Array | undefined;
      if (!o.url) {
        const path = need(o.overlay, "-o OVERLAY (or --url)");
        overlay = await openOverlay(core, path);
        metaBytes = overlay.metaBytes;
      }
      let applied = 0;
      const t0 = performance.now();
      try {
        const r = await sendOverlay({
          core,
          client,
          overlay,
          metaBytes,
          url: o.url as string | undefined,
          earlyStart: o.earlyStart === true ? true : o.earlyStart === false ? false : "auto",
          onResumed: (ep) => {
            p.done();
            const where = ep.ports.map((x) => `${x.proto} ${ep.host}:${x.hostPort} -> guest port ${x.guestPort}`).join(", ") || "no port forwards";
            process.stderr.write(`cloudlet client: VM ${ep.vmId} resumed early after ${((performance.now() - t0) / 1000).toFixed(1)} s (${where}); filling${o.detach ? "; --detach waits until it is fully local" : ""}\n`);
          },
          progress: p.update,
          onEvent: (e) => {
            if (e.type === "progress" && e.applied > applied) applied = e.applied;
          },
          signal: controller.signal,
        });
        p.done();
        const ms = performance.now() - t0;
        const where = r.endpoint.ports.map((x) => `  ${x.proto} ${r.endpoint.host}:${x.hostPort} -> guest port ${x.guestPort}`).join("\n") || "  (no port forwards)";
        const early = r.earlyStart ? { earlyStart: { resumedMs: r.endpoint.ms.synthesis, localMs: r.endpoint.ms.local, outOfOrder: r.outOfOrder } } : {};
        const json = { session: r.id, ...r.endpoint, ms: { total: Math.round(ms), ...r.endpoint.ms }, ...early, ...(r.earlyStartFallback ? { earlyStartFallback: r.earlyStartFallback } : {}) };
        if (r.earlyStart) process.stderr.write(`cloudlet client: VM ${r.endpoint.vmId} fully local after ${(ms / 1000).toFixed(1)} s (${r.outOfOrder} segment(s) sent ahead of the in-order stream)\n`);
        if (r.earlyStartFallback) process.stderr.write(`cloudlet client: early start did not run (${r.earlyStartFallback}); full pipelined synthesis\n`);
        const said = `VM ${r.endpoint.vmId} (session ${r.id}) is running on ${o.server} (${(ms / 1000).toFixed(1)} s). Reach it at:\n${where}`;
        if (o.detach) {
          await client.detach(r.id, controller.signal);
          out(o, { ...json, detached: true }, `${said}\ndetached: list it with cloudlet ps, end it with cloudlet stop ${r.id}`);
          return;
        }
        out(o, json, said);
        if (!o.json) process.stderr.write("cloudlet client: keeping the session; Ctrl-C ends it and stops the VM\n");
        const held = client.hold(r.id, r.leaseMs, controller.signal);
        await Promise.race([untilInterrupted(), held]);
        await client.close(r.id);
        process.stderr.write("cloudlet client: session closed, VM stopped\n");
      } finally {
        await overlay?.close();
      }
    });
}
