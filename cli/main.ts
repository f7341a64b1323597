/**
 * The `cloudlet` command. Thin: it parses arguments, draws progress and
 * prints results; the work is done by the library in ts/.
 */
import { cac } from "cac";
import { isCloudletError, CloudletError, exitCodeOf, EXIT_CODE_HELP } from "../ts/errors.ts";
import { printableJson } from "../ts/printable.ts";
import { CLOUDLET_VERSION } from "../ts/version.ts";
import { controller, endLiveLine } from "./options.ts";
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

cli.help(helpSections);

/**
 * Fixes cac's help text: cac shows a `--no-X` flag with "(default: true)",
 * which reads as if the flag were on by default. Each --no-X description ends
 * with what happens without it, so that suffix goes. The global help ends
 * with the exit codes.
 */
function helpSections(sections: { title?: string; body: string }[]): { title?: string; body: string }[] {
  const fixed = sections.map((s) => ({
    ...s,
    body: s.body.split("\n").map((l) => (/^\s+--no-/.test(l) ? l.replace(/ \(default: true\)\s*$/, "") : l).trimEnd()).join("\n"),
  }));
  if (!sections.some((s) => s.title === "Commands")) return fixed;
  return [...fixed, { title: "Exit codes", body: EXIT_CODE_HELP.map(([c, what]) => `  ${String(c).padEnd(4)} ${what}`).join("\n") }];
}

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
    endLiveLine();
    const err = controller.signal.aborted && !isCloudletError(e) ? controller.signal.reason : asCloudletError(e);
    if (isCloudletError(err)) {
      if (json) process.stdout.write(printableJson({ error: { code: err.code, message: err.message, file: err.file ?? null } }) + "\n");
      process.stderr.write(`cloudlet: ${err.userMessage}\n`);
      process.exitCode = exitCodeOf(err.code);
    } else {
      process.stderr.write(`cloudlet: internal error (please report): ${(e as Error)?.stack ?? e}\n`);
      process.exitCode = 70;
    }
  }
}

/** cac's own parse errors (an unknown option, a missing value or argument) are usage errors like any other. */
function asCloudletError(e: unknown): unknown {
  if (e instanceof Error && (e.name === "CACError" || /^(Unknown option|missing required args|option .* value is missing)/i.test(e.message))) return new CloudletError("BAD_ARGUMENT", `${e.message.replace(/\.$/, "")} (see cloudlet --help)`);
  return e;
}

await main();

// The command is done: exit even if a host handle (a child process watcher,
// a socket) is still referenced; Deno does not honour every unref().
process.exit(process.exitCode ?? 0);
