/** `cloudlet inspect`: show what is in an overlay: base id, sizes, chunk classes, segments. */
import type { CAC } from "cac";
import { CloudletError } from "../../ts/errors.ts";
import { loadCoreFromDisk } from "../../ts/node/core_file.ts";
import { cloudletHome } from "../../ts/home/paths.ts";
import { openOverlay } from "../../ts/node/overlay_files.ts";
import { inspectMeta, renderReport } from "../../ts/inspect/report.ts";
import { verifyOverlay, type VerifyResult } from "../../ts/inspect/verify.ts";
import { FileSource } from "../../ts/node/files.ts";
import { WorkerCodec } from "../../ts/node/codec_pool.ts";
import { startInspectServer } from "../../ts/server/inspect_server.ts";
import { baseFiles } from "../../ts/jobs/base_create.ts";
import { Registry } from "../../ts/home/registry.ts";
import { type Common, bar, out, num, untilInterrupted, baseIdOfFiles, openBaseImage } from "../options.ts";

/** Adds the command to the CLI. */
export function register(cli: CAC): void {
  cli
    .command("inspect <overlay>", "Show what is in an overlay: base id, sizes, chunk classes, segments")
    .option("--verify", "Also decode every segment, check its hash, records and class counts, and (with the base) every rebuilt chunk")
    .option("--web", "Open the browser inspector: serve it on 127.0.0.1, print its URL, stop on Ctrl-C")
    .option("--base <base>", "The overlay's base from the registry (id, id prefix or name), for --verify or --web (default: the overlay's base id, when registered)")
    .option("--base-disk <file>", "The base disk (raw), for --verify or --web: verifies rebuilt chunks (with --verify, another base is refused by its id, as synthesis does), shows XOR against the base")
    .option("--base-mem <file>", "The base memory image, with --base-disk")
    .option("--port <n>", "With --web: the port on 127.0.0.1 (default: any free port)")
    .example("cloudlet inspect --web --base-disk base.raw --base-mem base.mem app.overlay")
    .example("cloudlet inspect --verify --base tiny app.overlay")
    .action(async (path: string, o: Common & { verify?: boolean; web?: boolean; base?: string; baseDisk?: string; baseMem?: string; port?: string | number }) => {
      const core = await loadCoreFromDisk();
      if (!o.web && o.port !== undefined) throw new CloudletError("BAD_ARGUMENT", "--port goes with --web");
      if (!o.web && !o.verify && (o.base || o.baseDisk || o.baseMem)) throw new CloudletError("BAD_ARGUMENT", "--base, --base-disk and --base-mem go with --verify or --web");
      if (o.base && (o.baseDisk || o.baseMem)) throw new CloudletError("BAD_ARGUMENT", "give --base or --base-disk/--base-mem, not both");
      let baseDisk = o.baseDisk;
      let baseMem = o.baseMem;
      let baseId: string | undefined;
      let missingBase: string | undefined;
      if (o.base) {
        const b = await new Registry(cloudletHome(o.home)).getBase(o.base);
        ({ disk: baseDisk, memory: baseMem } = baseFiles(b));
        baseId = b.id;
      } else if ((o.verify || o.web) && !o.baseDisk && !o.baseMem) {
        // No base given: the overlay's base id finds it in the registry; without it, the checks that need no base still run.
        const ov = await openOverlay(core, path);
        const id = ov.meta.base.id;
        await ov.close();
        const b = await new Registry(cloudletHome(o.home)).findBaseById(id);
        if (b) {
          ({ disk: baseDisk, memory: baseMem } = baseFiles(b));
          baseId = b.id;
        } else missingBase = id;
      }
      if (o.web) {
        const port = o.port === undefined ? 0 : num(o.port, "--port", 0, 65535);
        // The build script needs esbuild (a dev dependency): load it only here. In the package a stand-in returns the shipped page.
        const { ensureInspectorBuilt } = await import("../../web/build.ts");
        const server = await startInspectServer({ core, overlay: path, baseDisk, baseMem, port, webRoot: await ensureInspectorBuilt() });
        out(o, { url: server.url }, `cloudlet inspector: ${server.url} (Ctrl-C to stop)`);
        await untilInterrupted();
        await server.close();
        return;
      }
      const ov = await openOverlay(core, path);
      const opened: FileSource[] = [];
      try {
        const report = inspectMeta(ov.meta, path, ov.totalBytes);
        let verified: VerifyResult | undefined;
        if (o.verify) {
          if (Boolean(baseDisk) !== Boolean(baseMem)) throw new CloudletError("BAD_ARGUMENT", "--base-disk and --base-mem go together");
          const base = baseDisk && baseMem ? { disk: await openBaseImage(baseDisk, ov.meta.base.diskSize, "base disk", opened), memory: await openBaseImage(baseMem, ov.meta.base.memorySize, "base memory", opened) } : null;
          const codec = new WorkerCodec(o.threads ? num(o.threads, "--threads", 1, 256) : undefined);
          const p = bar(o);
          try {
            // A base of the right sizes but other bytes is named as the wrong base (ids), as synthesis does.
            if (base && baseDisk && baseMem) baseId ??= await baseIdOfFiles(core, baseDisk, baseMem, ov.meta.base.machine, o.home, p.update);
            verified = await verifyOverlay(core, ov, base && { ...base, id: baseId }, codec, p.update);
          } finally {
            p.done();
            await codec.close();
          }
        }
        const said = !verified ? "" : `\n\nverified: all ${verified.segments} segments decode and match their hashes, records and class counts; ` +
          (verified.rebuiltSkipped ? `${verified.rebuilt} checked chunk by chunk, ${verified.rebuiltSkipped} need the base (${missingBase ? `its base ${missingBase} is not in the registry, see cloudlet list-base; ` : ""}give --base or --base-disk/--base-mem)` : "every rebuilt chunk matches") +
          (verified.baseChecked ? ", and the base files hash to its base id" : "");
        out(o, { ...report, ...(verified ? { verified: true, verification: verified } : {}) }, renderReport(report) + said);
      } finally {
        for (const f of opened) await f.close();
        await ov.close();
      }
    });
}
