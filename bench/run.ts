/**
 * `npm run bench`: runs every bench module in this folder (`*_bench.ts`),
 * `core_bench.ts` first, then the others alphabetically, each in its own
 * Node process (own WASM instance, own memory peak; modules may run their
 * `main` at import time).
 *
 *   npm run bench                              every module, default options
 *   npm run bench -- --bench core --reps 9     some modules, with options
 *
 * Every option except `--bench` goes to every chosen module, and each module
 * rejects options it does not know; so pass module-specific options together
 * with `--bench`. One module failing does not stop the others; the exit code
 * says whether all of them passed.
 */
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = dirname(HERE);
const FIRST = "core";

/** Names of the bench modules, `core` first, then alphabetical. */
function modules(): string[] {
  const names = readdirSync(HERE)
    .filter((f) => f.endsWith("_bench.ts"))
    .map((f) => f.slice(0, -"_bench.ts".length));
  return names.sort((a, b) => (a === FIRST ? -1 : b === FIRST ? 1 : a.localeCompare(b)));
}

/** Splits `--bench a,b` / `--bench=a,b` off the command line. */
function takeBench(argv: string[]): { bench: string[]; rest: string[] } {
  const rest: string[] = [];
  let bench: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--bench" || a.startsWith("--bench=")) {
      const v = a === "--bench" ? argv[++i] : a.slice("--bench=".length);
      if (!v) throw new Error("--bench needs a list of module names");
      bench = v.split(",").map((s) => s.trim()).filter(Boolean);
    } else {
      rest.push(a);
    }
  }
  return { bench, rest };
}

function run(argv: string[]): number {
  const all = modules();
  const { bench, rest } = takeBench(argv);
  if (rest.includes("--help") || rest.includes("-h")) {
    console.log(`usage: npm run bench -- [--bench NAME,..] [module options]\nmodules: ${all.join(", ")}\neach module's options: node --import tsx bench/NAME_bench.ts --help`);
    return 0;
  }
  const unknown = bench.filter((b) => !all.includes(b));
  if (unknown.length) throw new Error(`no bench module named ${unknown.join(", ")} (have: ${all.join(", ")})`);
  const chosen = bench.length ? all.filter((m) => bench.includes(m)) : all;
  const json = rest.includes("--json");
  const failed: string[] = [];
  for (const name of chosen) {
    if (!json) console.log(`\n== ${name}_bench ==`);
    const r = spawnSync(process.execPath, ["--import", "tsx", join(HERE, `${name}_bench.ts`), ...rest], { cwd: REPO, stdio: "inherit" });
    if (r.status !== 0) failed.push(`${name} (${r.signal ?? `exit ${r.status}`})`);
  }
  if (failed.length) console.error(`bench: failed: ${failed.join(", ")}`);
  return failed.length ? 1 : 0;
}

try {
  process.exitCode = run(process.argv.slice(2));
} catch (e) {
  console.error(`bench: ${(e as Error).message}`);
  process.exitCode = 1;
}
