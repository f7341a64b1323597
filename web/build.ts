/**
 * Builds the inspector page with esbuild. Run `node --import tsx web/build.ts`
 * (add `--if-stale` to skip an up-to-date build); `cloudlet inspect --web`
 * and the tests call {@link ensureInspectorBuilt}, which builds only when
 * the output is missing or stale.
 *
 * ```text
 * web/dist/
 *   index.html               the page, for the local server or any static web server
 *   main.js  worker.js       the page and its Web Worker (classic scripts, IIFE)
 *   cloudlet_core_bg.wasm    byte-identical copy of ts/core/_wasm/cloudlet_core_bg.wasm
 *   kernels.json             copy of core-rs/vectors/kernels.json (the self-test)
 *   cloudlet-inspector.html  all of the above in one file, to open from disk (file://)
 *   phone.html phone.js phone.css  the phone client `cloudlet serve` serves at / (same worker and .wasm)
 *   build-stamp.json         every input and its SHA-256: decides staleness
 * ```
 *
 * The build is reproducible: the same inputs and esbuild version give the
 * same bytes (no timestamps, no absolute paths, sorted stamp). Output goes
 * to a temporary directory that replaces the old one, so a concurrent
 * reader never sees half a build.
 */
import { createHash, randomBytes } from "node:crypto";
import { promises as fsp } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

/** The repository root. */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..");
/** Default output directory. */
export const DIST_DIR = join(ROOT, "web", "dist");
/** Files copied or inlined besides the bundles' own inputs. */
const EXTRA_INPUTS = ["web/index.html", "web/style.css", "web/phone.html", "web/phone.css", "web/build.ts", "ts/core/_wasm/cloudlet_core_bg.wasm", "core-rs/vectors/kernels.json"];
const STAMP = "build-stamp.json";

/** What the stamp records. */
interface Stamp {
  esbuild: string;
  inputs: Record<string, string>;
  outputs: string[];
}

async function sha256(path: string): Promise<string | null> {
  try {
    return createHash("sha256").update(await fsp.readFile(path)).digest("hex");
  } catch {
    return null;
  }
}

/** Why the build in `outDir` is stale, or null when it is up to date. */
export async function inspectorStaleness(outDir = DIST_DIR): Promise<string | null> {
  let stamp: Stamp;
  try {
    stamp = JSON.parse(await fsp.readFile(join(outDir, STAMP), "utf8"));
  } catch {
    return "not built yet";
  }
  for (const [path, hash] of Object.entries(stamp.inputs)) {
    if ((await sha256(join(ROOT, path))) !== hash) return `${path} changed`;
  }
  for (const out of stamp.outputs) {
    if ((await sha256(join(outDir, out))) === null) return `${out} is missing`;
  }
  return null;
}

/** Keeps a script's text from ending its <script> element early. */
function inlineSafe(text: string, what: string): string {
  if (/<\/script|<!--/i.test(text)) throw new Error(`cannot inline ${what}: it contains "</script" or "<!--"`);
  return text;
}

/** Builds into `outDir` (replacing it) and returns the output file names. */
export async function buildInspector(outDir = DIST_DIR): Promise<string[]> {
  const esbuild = await import("esbuild");
  const wasmPath = join(ROOT, "ts/core/_wasm/cloudlet_core_bg.wasm");
  const wasm = await fsp.readFile(wasmPath).catch(() => {
    throw new Error(`the WASM core is not built (${wasmPath} is missing): run scripts/setup.sh`);
  });
  const result = await esbuild.build({
    absWorkingDir: ROOT,
    entryPoints: { main: "web/main.ts", worker: "web/worker.ts", phone: "web/phone.ts" },
    outdir: "web/dist",
    bundle: true,
    format: "iife",
    platform: "browser",
    target: ["es2022"],
    minify: true,
    legalComments: "none",
    charset: "utf8",
    write: false,
    metafile: true,
    logLevel: "silent",
    // wasm-bindgen's glue falls back to import.meta.url when given no bytes; the page always passes bytes.
    logOverride: { "empty-import-meta": "silent" },
  });
  const js = Object.fromEntries(result.outputFiles.map((f) => [relative(join(ROOT, "web/dist"), f.path), f.text]));
  const template = await fsp.readFile(join(ROOT, "web/index.html"), "utf8");
  const css = await fsp.readFile(join(ROOT, "web/style.css"), "utf8");
  const vectors = await fsp.readFile(join(ROOT, "core-rs/vectors/kernels.json"), "utf8");
  const page = (scripts: string) => template.replace("/*STYLE*/", () => css.trim()).replace("<!--SCRIPTS-->", () => scripts);
  const files: Record<string, string | Uint8Array> = {
    "main.js": js["main.js"],
    "worker.js": js["worker.js"],
    "cloudlet_core_bg.wasm": wasm,
    "kernels.json": vectors,
    // The phone page loads everything from files, so its CSP needs no inline script or style.
    "phone.js": js["phone.js"],
    "phone.html": await fsp.readFile(join(ROOT, "web/phone.html"), "utf8"),
    "phone.css": await fsp.readFile(join(ROOT, "web/phone.css"), "utf8"),
    "index.html": page(`<script src="main.js"></script>`),
    "cloudlet-inspector.html": page(
      [
        `<script type="application/octet-stream" id="cloudlet-wasm">${Buffer.from(wasm).toString("base64")}</script>`,
        `<script type="application/json" id="cloudlet-vectors">${inlineSafe(vectors.trim(), "kernels.json")}</script>`,
        `<script type="text/plain" id="cloudlet-worker">${inlineSafe(js["worker.js"], "worker.js")}</script>`,
        `<script>${inlineSafe(js["main.js"], "main.js")}</script>`,
      ].join("\n"),
    ),
  };
  const inputs = [...new Set([...Object.keys(result.metafile.inputs), ...EXTRA_INPUTS])].sort();
  const stamp: Stamp = { esbuild: esbuild.version, inputs: {}, outputs: Object.keys(files).sort() };
  for (const p of inputs) stamp.inputs[p] = (await sha256(join(ROOT, p)))!;
  files[STAMP] = JSON.stringify(stamp, null, 1) + "\n";

  const parent = dirname(outDir);
  await fsp.mkdir(parent, { recursive: true });
  const tmp = join(parent, `.dist-${process.pid}-${randomBytes(4).toString("hex")}`);
  await fsp.mkdir(tmp);
  try {
    for (const [name, data] of Object.entries(files)) await fsp.writeFile(join(tmp, name), data);
    const old = `${tmp}-old`;
    await fsp.rename(outDir, old).catch(() => {});
    await fsp.rename(tmp, outDir);
    await fsp.rm(old, { recursive: true, force: true });
  } catch (e) {
    await fsp.rm(tmp, { recursive: true, force: true });
    throw e;
  }
  return Object.keys(files).sort();
}

/** Builds when the output is missing or stale; returns the output directory. */
export async function ensureInspectorBuilt(outDir = DIST_DIR): Promise<string> {
  if ((await inspectorStaleness(outDir)) !== null) await buildInspector(outDir);
  return outDir;
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  const why = await inspectorStaleness();
  if (process.argv.includes("--if-stale") && why === null) {
    console.error("web/build: up to date");
  } else {
    const out = await buildInspector();
    console.error(`web/build: wrote ${out.join(", ")} to ${relative(process.cwd(), DIST_DIR) || "."} (${why ?? "forced"})`);
  }
}
