/**
 * The npm package as a user gets it: `npm pack` (which builds dist/ through
 * prepack), `npm install ./cloudlet-*.tgz` into an empty project, then the
 * installed `cloudlet` command and `import ... from "cloudlet"` under Node
 * and Deno, the .d.ts files under tsc, and `deno publish --dry-run`.
 * The package's dependencies come from the npm cache that setup filled
 * (--prefer-offline), else from the registry.
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { existsSync, promises as fsp } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { cloudlet } from "./_cli.ts";
import { FORMAT_VERSION } from "../ts/overlay/format.ts";
import { writeImageSet } from "./_images.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const DENO = join(ROOT, "node_modules/@deno/linux-x64-glibc/deno");
const TSC = join(ROOT, "node_modules/.bin/tsc");

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to its end; `env` is added to this process's environment. */
function run(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env: { ...process.env, NO_COLOR: "1", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** Like run, but a non-zero exit fails the test with what the command printed. */
async function ok(cmd: string, args: string[], cwd: string, env: Record<string, string> = {}): Promise<string> {
  const r = await run(cmd, args, cwd, env);
  assert.equal(r.code, 0, `${cmd} ${args.join(" ")} exited ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/**
 * A plain-JavaScript user of the library (no TypeScript, no tsx): makes an
 * overlay from image files, inspects, verifies and synthesizes it, and
 * prints what it saw as JSON. Run as-is by Node and by Deno.
 */
const CONSUMER = `
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  loadCoreFromDisk, createOverlay, synthesize, openOverlay, inspectMeta, renderReport, verifyOverlay,
  decodeMeta, WorkerCodec, FileSource, CloudletError, isCloudletError, CLOUDLET_VERSION, FORMAT_VERSION, ChunkClass,
} from "cloudlet";

const [baseDisk, baseMem, disk, mem, dir, tag] = process.argv.slice(2);
const home = join(dir, "home-" + tag);
const core = await loadCoreFromDisk();
const made = await createOverlay(core, { baseDisk, baseMem, disk, mem, out: join(dir, tag + ".overlay"), home, segmentBytes: 128 << 10, threads: 2 });
const ov = await openOverlay(core, made.path);
const report = inspectMeta(ov.meta, made.path, ov.totalBytes);
const codec = new WorkerCodec(2);
const base = { disk: await FileSource.open(baseDisk), memory: await FileSource.open(baseMem) };
const verified = await verifyOverlay(core, ov, base, codec);
await codec.close();
await base.disk.close();
await base.memory.close();
const metaAgain = decodeMeta(core, ov.metaBytes, made.path);
await ov.close();
const out = await synthesize(core, { baseDisk, baseMem, overlay: made.path, outDir: join(dir, "out-" + tag), diskFormat: "raw", home });
const same = async (a, b) => Buffer.compare(await readFile(a), await readFile(b)) === 0;
let error = null;
try {
  await openOverlay(core, baseDisk);
} catch (e) {
  error = { cloudlet: isCloudletError(e) && e instanceof CloudletError, code: e.code, message: e.userMessage };
}
console.log(JSON.stringify({
  version: CLOUDLET_VERSION,
  formatVersion: FORMAT_VERSION,
  overlay: made.path,
  baseId: made.meta.base.id,
  segments: made.meta.segments.length,
  raw: made.meta.classCounts[0][ChunkClass.Raw] + made.meta.classCounts[1][ChunkClass.Raw],
  rendered: renderReport(report).includes(made.meta.base.id),
  verified,
  metaAgain: metaAgain.base.id === made.meta.base.id,
  diskEqual: await same(out.disk, disk),
  memEqual: await same(out.memory, mem),
  error,
}));
`;

/** What a consumer run must have seen. */
function checkConsumer(json: string, version: string, baseDisk: string): { overlay: string; baseId: string } {
  const r = JSON.parse(json);
  assert.equal(r.version, version);
  assert.equal(r.formatVersion, FORMAT_VERSION, "the packaged library writes the current format");
  assert.ok(r.segments >= 2 && r.raw > 0, `a real overlay: ${json}`);
  assert.equal(r.rendered, true);
  assert.deepEqual(r.verified, { segments: r.segments, rebuilt: r.segments, rebuiltSkipped: 0, baseChecked: true });
  assert.equal(r.metaAgain, true);
  assert.equal(r.diskEqual, true, "synthesized disk equals the custom disk");
  assert.equal(r.memEqual, true, "synthesized memory equals the custom memory");
  assert.equal(r.error.cloudlet, true);
  assert.ok(r.error.message.startsWith(baseDisk + ": "), `the error names the file: ${r.error.message}`);
  return r;
}

test("npm pack, install into an empty project; the CLI and the library work under Node and Deno without tsx", async () => {
  const version = JSON.parse(await fsp.readFile(join(ROOT, "package.json"), "utf8")).version as string;
  const deno = JSON.parse(await fsp.readFile(join(ROOT, "deno.json"), "utf8"));
  assert.equal(deno.version, version, "deno.json and package.json give one version");

  const dir = await fsp.mkdtemp(join(tmpdir(), "cloudlet-package-"));
  try {
    // Pack: prepack builds dist/ (or finds it up to date).
    const packed = JSON.parse(await ok("npm", ["pack", "--json", "--loglevel=error", "--pack-destination", dir], ROOT))[0];
    const files = new Set<string>(packed.files.map((f: { path: string }) => f.path));
    for (const f of ["dist/ts/mod.js", "dist/ts/mod.d.ts", "dist/cli/main.js", "dist/ts/core/_wasm/cloudlet_core_bg.wasm", "dist/ts/core/_wasm/cloudlet_core.js", "dist/ts/node/codec_worker.mjs", "dist/web/dist/index.html", "dist/web/dist/main.js", "dist/web/build.js", "package.json", "README.md"]) {
      assert.ok(files.has(f), `the tarball has ${f}`);
    }
    const stray = [...files].filter((f) => (f.endsWith(".ts") && !f.endsWith(".d.ts")) || f.startsWith("test/") || f.startsWith("core-rs/"));
    assert.deepEqual(stray, [], "no sources, tests or Rust in the tarball");

    const project = join(dir, "project");
    await fsp.mkdir(project);
    await fsp.writeFile(join(project, "package.json"), JSON.stringify({ name: "consumer", private: true, type: "module" }));
    await ok("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", "--loglevel=error", join(dir, packed.filename)], project);
    for (const dev of ["tsx", "esbuild", "typescript"]) assert.equal(existsSync(join(project, "node_modules", dev)), false, `${dev} is not installed with the package`);

    // The library from plain JavaScript, Node then Deno.
    const images = await writeImageSet(join(dir, "images"), 7, 2 << 20, 2 << 20, 20);
    const args = [images.baseDisk, images.baseMem, images.disk, images.mem, dir];
    await fsp.writeFile(join(project, "use.mjs"), CONSUMER);
    const fromNode = checkConsumer(await ok("node", ["use.mjs", ...args, "node"], project), version, images.baseDisk);
    const fromDeno = checkConsumer(await ok(DENO, ["run", "-A", "--quiet", "use.mjs", ...args, "deno"], project), version, images.baseDisk);
    assert.equal(fromDeno.baseId, fromNode.baseId);

    // The installed command (npm's .bin link and npx), against the repo's own CLI on the same overlay.
    const bin = join(project, "node_modules/.bin/cloudlet");
    assert.equal((await ok(bin, ["--version"], project)).split(/\s/)[0], `cloudlet/${version}`);
    const installed = JSON.parse(await ok("npx", ["--no-install", "cloudlet", "inspect", fromNode.overlay, "--json"], project));
    const fromSource = await cloudlet(["inspect", fromNode.overlay, "--json"]);
    assert.equal(fromSource.code, 0, fromSource.stderr);
    assert.deepEqual(installed, JSON.parse(fromSource.stdout));
    const verified = await ok(bin, ["inspect", "--verify", "--base-disk", images.baseDisk, "--base-mem", images.baseMem, fromDeno.overlay], project);
    assert.match(verified, /every rebuilt chunk matches/);
    const bad = await run(bin, ["inspect", images.baseMem], project);
    assert.equal(bad.code === 0, false);
    assert.match(bad.stderr, new RegExp(`^cloudlet: ${images.baseMem}: .+\\n$`), "a one-line error, no stack");

    // inspect --web serves the page shipped in the package (no esbuild to build it).
    const web = spawn(bin, ["inspect", "--web", fromNode.overlay], { cwd: project, stdio: ["ignore", "pipe", "pipe"] });
    try {
      const url = await new Promise<string>((resolve, reject) => {
        let said = "";
        web.stdout.setEncoding("utf8").on("data", (d: string) => {
          said += d;
          const m = /(http:\/\/127\.0\.0\.1:\d+\/)/.exec(said);
          if (m) resolve(m[1]);
        });
        web.on("close", (code) => reject(new Error(`inspect --web exited ${code}`)));
      });
      const shipped = join(project, "node_modules/cloudlet/dist/web/dist");
      const page = await fetch(url);
      assert.equal(page.status, 200);
      assert.equal(await page.text(), await fsp.readFile(join(shipped, "index.html"), "utf8"));
      const main = await fetch(url + "main.js");
      assert.equal(main.status, 200);
      assert.equal((await main.arrayBuffer()).byteLength, (await fsp.stat(join(shipped, "main.js"))).size);
    } finally {
      web.kill("SIGTERM");
      await new Promise((r) => web.once("close", r));
    }

    // The compiled command under Deno.
    const denoCli = JSON.parse(await ok(DENO, ["run", "-A", "--quiet", "node_modules/cloudlet/dist/cli/main.js", "inspect", fromNode.overlay, "--json"], project));
    assert.deepEqual(denoCli, installed);

    // The types: a TypeScript user resolves "cloudlet" through package.json "exports" to the .d.ts files.
    await fsp.writeFile(join(project, "check.ts"), [
      `import { createOverlay, synthesize, inspectMeta, type OverlayMeta, type CreateOverlayOptions, CloudletError, type ErrorCode } from "cloudlet";`,
      `export const baseOf = (m: OverlayMeta): string => m.base.id;`,
      `export const jobs: [typeof createOverlay, typeof synthesize, typeof inspectMeta] = [createOverlay, synthesize, inspectMeta];`,
      `export const opts: Pick<CreateOverlayOptions, "out"> = { out: "x.overlay" };`,
      `export const code: ErrorCode = new CloudletError("BAD_ARGUMENT", "x").code;`,
      `// @ts-expect-error: only the declared API is exported`,
      `import { writeOverlay } from "cloudlet";`,
      `void writeOverlay;`,
    ].join("\n"));
    await ok(TSC, ["--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022", "--typeRoots", join(ROOT, "node_modules/@types"), "--types", "node", "check.ts"], project);
  } finally {
    await fsp.rm(dir, { recursive: true, force: true });
  }
});

test("deno publish --dry-run accepts the JSR package (deno.json: name, version, exports, the .wasm)", async () => {
  // --allow-dirty: the tree under test may hold uncommitted work; what is checked is the
  // package's file set, its module graph and its public types (no slow types).
  const out = await run(DENO, ["publish", "--dry-run", "--allow-dirty"], ROOT);
  assert.equal(out.code, 0, out.stdout + out.stderr);
  const all = out.stdout + out.stderr;
  assert.match(all, /ts\/core\/_wasm\/cloudlet_core_bg\.wasm/, "the .wasm is published although it is gitignored");
  assert.match(all, /ts\/mod\.ts/);
  assert.doesNotMatch(all, /\btest\//, "tests are not published");
});

test("loaded over the network as JSR serves it (https: module URLs), the core loader fetches the .wasm beside it", async () => {
  // JSR hands Deno remote modules, so import.meta.url is not a file: URL. Serve the
  // tree read-only over HTTP and import the loader from there, with no file access.
  const types: Record<string, string> = { ".ts": "application/typescript", ".js": "text/javascript", ".wasm": "application/wasm" };
  const server = createServer((req, res) => {
    const path = new URL(req.url ?? "/", "http://x").pathname;
    const type = types[path.slice(path.lastIndexOf("."))];
    if (!type || path.includes("..") || !/^\/ts\//.test(path)) return void res.writeHead(404).end();
    fsp.readFile(join(ROOT, path)).then((b) => res.writeHead(200, { "content-type": type }).end(b), () => res.writeHead(404).end());
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  try {
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/ts/`;
    const script = `import { loadCoreFromDisk, WASM_PATH } from "${base}node/core_file.ts";
      const core = await loadCoreFromDisk();
      console.log(JSON.stringify({ path: WASM_PATH, zero: core.zeroChunks(new Uint8Array(8192), 4096).length }));`;
    // --no-lock: the served URLs change with the port; they must not land in a deno.lock.
    const out = await ok(DENO, ["eval", "--quiet", "--no-check", "--no-config", "--no-lock", "--reload=" + base, script], tmpdir());
    assert.deepEqual(JSON.parse(out), { path: `${base}core/_wasm/cloudlet_core_bg.wasm`, zero: 2 });
  } finally {
    await new Promise((r) => server.close(r));
  }
});
