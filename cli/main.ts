/**
 * The `cloudlet` command. Thin: it parses arguments, draws progress and
 * prints results; the work is done by the library in ts/.
 */
import { cac } from "cac";
import { isCloudletError, CloudletError, exitCodeOf } from "../ts/errors.ts";
import { printable, printableJson } from "../ts/printable.ts";
import { CLOUDLET_VERSION } from "../ts/version.ts";
import { controller } from "./options.ts";
import { register as registerOverlay } from "./commands/overlay.ts";
import { register as registerSynthesis } from "./commands/synthesis.ts";
import { register as registerInspect } from "./commands/inspect.ts";
import { register as registerBase } from "./commands/base.ts";
import { register as registerListBase } from "./commands/list_base.ts";
import { register as registerDelBase } from "./commands/del_base.ts";
import { register as registerExportBase } from "./commands/export_base.ts";
import { register as registerImportBase } from "./commands/import_base.ts";
import { register as registerPs } from "./commands/ps.ts";
import { register as registerStop } from "./commands/stop.ts";
import { register as registerGuest } from "./commands/guest.ts";
import { register as registerServe } from "./commands/serve.ts";
import { register as registerClient } from "./commands/client.ts";
import { register as registerDiscover } from "./commands/discover.ts";

const cli = cac("cloudlet");

cli.option("--json", "Print results (and errors) as JSON on stdout, no progress bar");

cli.option("--home <dir>", "Cloudlet home (default $CLOUDLET_HOME, else /var/lib/cloudlet for root, ~/.cloudlet for others)");

cli.option("--threads <n>", "Worker threads for (de)compression (default: all cores)");

registerOverlay(cli);
registerSynthesis(cli);
registerInspect(cli);
registerBase(cli);
registerListBase(cli);
registerDelBase(cli);
registerExportBase(cli);
registerImportBase(cli);
registerPs(cli);
registerStop(cli);
registerGuest(cli);
registerServe(cli);
registerClient(cli);
registerDiscover(cli);

cli.help();

cli.version(CLOUDLET_VERSION);

async function main(): Promise<void> {
  let json = process.argv.includes("--json");
  try {
    cli.parse(process.argv, { run: false });
    json = Boolean(cli.options.json);
    if (!cli.matchedCommand) {
      if (cli.args.length) throw new CloudletError("BAD_ARGUMENT", `unknown command "${cli.args[0]}" (see cloudlet --help)`);
      if (!cli.options.help && !cli.options.version) cli.outputHelp();
      return;
    }
    await cli.runMatchedCommand();
  } catch (e) {
    const err = controller.signal.aborted && !isCloudletError(e) ? controller.signal.reason : e;
    if (isCloudletError(err)) {
      if (json) process.stdout.write(printableJson({ error: { code: err.code, message: err.message, file: err.file ?? null } }) + "\n");
      process.stderr.write(`cloudlet: ${err.userMessage}\n`);
      process.exitCode = exitCodeOf(err.code);
    } else if (e instanceof Error && /Unknown option|missing required args|value is missing/i.test(e.message)) {
      process.stderr.write(`cloudlet: ${printable(e.message)} (see cloudlet --help)\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`cloudlet: internal error (please report): ${(e as Error)?.stack ?? e}\n`);
      process.exitCode = 70;
    }
  }
}

await main();

// The command is done: exit even if a host handle (a child process watcher,
// a socket) is still referenced; Deno does not honour every unref().
process.exit(process.exitCode ?? 0);
