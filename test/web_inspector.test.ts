// The browser overlay inspector in real headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core): the page served by the
// inspect server and the single-file page opened from disk, on overlays
// made by the engine. The numbers shown must equal `cloudlet inspect
// --json`; a clicked region shows its chunks and a hex view with the XOR
// against the base; corruption gets an error panel naming the segment; and
// the shared kernel vectors pass in the page and in its Web Worker; an
// overlay's boot set is shown and its segments marked (test/golden).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, promises as fsp } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import type { BrowserContext, Page } from "playwright-core";
import { core } from "./_core.ts";
import { cloudlet, CLOUDLET } from "./_cli.ts";
import { formatBytes } from "../ts/inspect/report.ts";
import { scratchDir, writeImageSet, type ImageSet } from "./_images.ts";
import { randomBytes } from "../ts/core/vectors.ts";
import { createOverlayFiles } from "../ts/jobs/file_overlay.ts";
import { startInspectServer } from "../ts/server/inspect_server.ts";
import { openOverlay } from "../ts/node/overlay_files.ts";
import { checkSegment } from "../ts/inspect/segment_check.ts";
import { checkKernelVectors } from "../ts/inspect/vector_check.ts";
import { CHUNK, ChunkClass, ImageKind, type OverlayMeta } from "../ts/overlay/format.ts";
import { ensureInspectorBuilt } from "../web/build.ts";

const CHROMIUM = "/usr/bin/chromium";
/** Flags for this closed network: without the background-networking ones, Chromium's own connections are refused noisily. */
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const ARTIFACTS = new URL("../.build/test-artifacts/", import.meta.url).pathname;
const DOCS_SCREENSHOT = new URL("../docs/inspector.png", import.meta.url).pathname;

const read = (p: string) => fsp.readFile(p).then((b) => new Uint8Array(b.buffer, b.byteOffset, b.byteLength));

let dir: string;
let set: ImageSet;
let packed: string;
let splitMeta: string;
let meta: OverlayMeta;
let standalone: string;
let context: BrowserContext;

// Fixture built once at load time (Deno's node:test has no before()).
await (async () => {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing: run scripts/setup.sh (it installs Debian's chromium package)`);
  const { chromium } = await import("playwright-core").catch(() => {
    throw new Error("playwright-core is not installed: run scripts/setup.sh (npm ci installs it)");
  });
  dir = await scratchDir("web-inspector");
  set = await writeImageSet(join(dir, "img"), 61, 8 << 20, 4 << 20, 40);
  const state = join(dir, "img", "state.bin");
  await fsp.writeFile(state, randomBytes(62, 60000));
  const common = {
    baseDisk: set.baseDisk, baseMem: set.baseMem, disk: set.disk, mem: set.mem, state, home: join(dir, "home"), segmentBytes: 64 << 10,
    launch: { portForwards: [{ proto: "tcp" as const, hostPort: 2222, guestPort: 22 }, { proto: "udp" as const, hostPort: 0, guestPort: 53 }], vcpus: 2 },
  };
  const made = await createOverlayFiles(core, { ...common, out: join(dir, "app.overlay") });
  packed = made.path;
  meta = made.meta;
  splitMeta = (await createOverlayFiles(core, { ...common, out: join(dir, "seed.overlay-meta") })).path;
  standalone = join(await ensureInspectorBuilt(), "cloudlet-inspector.html");
  await fsp.mkdir(ARTIFACTS, { recursive: true });
  context = await chromium.launchPersistentContext(join(dir, "chromium-profile"), {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1200, height: 900 },
  });
})();

/** A new page that fails the test on any uncaught page error. */
async function newPage(): Promise<{ page: Page; errors: string[] }> {
  const page = await context.newPage();
  page.setDefaultTimeout(60_000);
  const errors: string[] = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && !/favicon/.test(m.text()) && errors.push(`console: ${m.text()}`));
  return { page, errors };
}

/** Waits until the integrity check has finished, one way or the other. */
async function checked(page: Page): Promise<string> {
  await page.waitForSelector("#integrity[data-state=done], #integrity[data-state=failed]");
  return (await page.getAttribute("#integrity", "data-state"))!;
}

/** Every value the page shows with a report path: path -> value as text. */
function shownFields(page: Page): Promise<Record<string, string>> {
  return page.evaluate(() => Object.fromEntries([...document.querySelectorAll<HTMLElement>("[data-field]")].map((e) => [e.dataset.field!, e.dataset.value!])));
}

/** The leaves of a JSON value: dotted path -> String(value). */
function leaves(v: unknown, prefix = "", out: Record<string, string> = {}): Record<string, string> {
  if (v !== null && typeof v === "object") for (const [k, x] of Object.entries(v)) leaves(x, prefix ? `${prefix}.${k}` : k, out);
  else out[prefix] = String(v);
  return out;
}

/** The page shows exactly the numbers of `cloudlet inspect --json --verify` (all but the file path). */
async function assertSameAsCli(page: Page, overlay: string): Promise<void> {
  const r = await cloudlet(["inspect", "--json", "--verify", overlay]);
  assert.equal(r.code, 0, r.stderr);
  const want = leaves(JSON.parse(r.stdout));
  delete want.file;
  // How many segments had their rebuilt chunks checked is the CLI's own account of its run.
  for (const k of Object.keys(want)) if (k.startsWith("verification.")) delete want[k];
  const shown = await shownFields(page);
  assert.deepEqual(shown, want);
  // And what a person reads is that value: each field's visible text shows it, as the
  // number, the number with separators, the size the CLI's formatter gives, or the ratio.
  const texts = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll<HTMLElement>("[data-field]")].map((e) => [e.dataset.field!, e.textContent ?? ""])));
  for (const [path, value] of Object.entries(want)) {
    const text = texts[path];
    const n = Number(value);
    const forms = Number.isFinite(n) && value !== "" && !/^(true|false)$/.test(value)
      ? [value, n.toLocaleString("en-US"), formatBytes(n), n.toFixed(1), n.toFixed(2), `version ${value}`, `${n.toLocaleString("en-US")} MiB`, `${(n * 100).toFixed(1)}%`]
      : [value];
    assert.ok(text !== undefined && text.trim() !== "", `${path}: shown empty`);
    if (value === "true") continue; // shown as a sentence ("All N segments match ...")
    if (/^launch\.portForwards\.\d+\.hostPort$/.test(path) && value === "0") continue; // shown as "auto"
    assert.ok(forms.some((f) => text.includes(f)), `${path}: the page shows "${text}" for ${value}`);
  }
}

test("served page: the numbers shown equal `cloudlet inspect --json`, and every segment verifies against the base", async () => {
  const srv = await startInspectServer({ core, overlay: packed, baseDisk: set.baseDisk, baseMem: set.baseMem, webRoot: await ensureInspectorBuilt() });
  const { page, errors } = await newPage();
  try {
    await page.goto(srv.url);
    assert.equal(await checked(page), "done");
    assert.equal(await page.getAttribute("body", "data-mode"), "served");
    await assertSameAsCli(page, packed);
    const statuses = await page.$$eval("td.status", (tds) => tds.map((t) => (t as HTMLElement).dataset.status));
    assert.deepEqual(statuses, meta.segments.map(() => "ok"), "hash, decode and rebuilt hash checked for every segment");
    assert.match((await page.textContent("#integrity-text"))!, /Rebuilt chunks verified for \d+ segments\. Decoded classes match the meta's counts\./);
    assert.match((await page.textContent("#summary"))!, /base images: base\.raw, base\.mem/);
    // Made without a warm-up: a version 2 overlay with no boot set says so and marks no segment.
    assert.equal(await page.getAttribute("#boot-set", "data-boot-set"), "none");
    assert.match((await page.textContent("#boot-set"))!, /no boot set \(made without a warm-up/);
    assert.equal(await page.$$eval("table.segments tr[data-boot-set], svg.chart rect[data-boot-set]", (x) => x.length), 0);
    assert.deepEqual(await page.$$eval("canvas.map", (cs) => cs.map((c) => (c as HTMLElement).dataset.bootCells)), ["0", "0", "0"].slice(0, await page.locator("canvas.map").count()));
    assert.equal(await page.locator("[data-legend=boot]").count(), 0);
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
    await srv.close();
  }
});

test("click into a region: its chunks, a hex view, the XOR against the base; zoom; screenshot saved", async () => {
  // Find an XOR chunk of memory and what its XOR against the base must be, from the images themselves.
  const ov = await openOverlay(core, packed);
  let target = -1;
  try {
    for (let i = 0; i < ov.meta.segments.length && target < 0; i++) {
      const r = (await checkSegment(core, ov, i, null)).records!;
      for (let k = 0; k < r.kinds.length; k++) {
        if (r.kinds[k] === ImageKind.Memory && r.classes[k] === ChunkClass.Xor) {
          target = r.indexes[k];
          break;
        }
      }
    }
  } finally {
    await ov.close();
  }
  assert.ok(target >= 0, "the fixture has an XOR memory chunk");
  const at = (b: Uint8Array) => b.slice(target * CHUNK, target * CHUNK + CHUNK);
  const diff = core.xor(at(await read(set.mem)), at(await read(set.baseMem)));
  const changed = diff.filter((x) => x !== 0).length;

  const srv = await startInspectServer({ core, overlay: packed, baseDisk: set.baseDisk, baseMem: set.baseMem, webRoot: await ensureInspectorBuilt() });
  const { page, errors } = await newPage();
  try {
    await page.goto(srv.url);
    await checked(page);
    const pos = await page.evaluate(([k, i]) => (globalThis as any).cloudletInspector.revealCell(k, i), ["memory", target] as const);
    assert.ok(pos, "the chunk's cell is in view");
    await page.mouse.click(pos.x, pos.y);
    // The memory map shows one chunk per cell, so the region is that chunk.
    await page.waitForSelector(`#region-title[data-kind=memory][data-start="${target}"]`);
    assert.equal(await page.getAttribute("#region-title", "data-changed"), "1");
    await page.click(`#region-chunks tr[data-index="${target}"]`);
    await page.waitForSelector(`#chunk-class[data-class="${ChunkClass.Xor}"]`);
    assert.equal(await page.getAttribute("#chunk-changed", "data-changed"), String(changed));
    assert.equal(await page.getAttribute(".tabs button[aria-selected=true]", "data-view"), "diff");
    const firstLine = (await page.textContent("pre.hex[data-view=diff]"))!.split("\n")[0];
    const hex = [...diff.subarray(0, 16)].map((b) => b.toString(16).padStart(2, "0"));
    assert.equal(firstLine.slice(8, 8 + 49).replace(/\s+/g, " ").trim(), hex.join(" "), "the hex view shows the XOR bytes");
    const highlighted = await page.$$eval("pre.hex[data-view=diff] mark", (m) => m.length);
    assert.ok(highlighted > 0 && highlighted <= changed, "non-zero delta bytes are highlighted");
    // The stored delta is the same XOR; the rebuilt tab shows the custom chunk.
    await page.click(".tabs button[data-view=stored]");
    assert.equal((await page.textContent("pre.hex[data-view=stored]"))!.split("\n")[0], firstLine);
    await page.click(".tabs button[data-view=diff]");
    await page.screenshot({ path: join(ARTIFACTS, "web-inspector-region.png"), fullPage: true });
    if (process.env.CLOUDLET_UPDATE_SCREENSHOT) await page.screenshot({ path: DOCS_SCREENSHOT, fullPage: true });

    // Zoom: the disk map's "+" shows an eighth of the image; a click then selects one chunk.
    const disk = page.locator("canvas.map[data-kind=disk]");
    await page.click("#map-disk button[data-zoom=in]");
    const [start, end] = [Number(await disk.getAttribute("data-start")), Number(await disk.getAttribute("data-end"))];
    assert.equal(end - start, 2048 / 8);
    await disk.click({ position: { x: 3, y: 3 } });
    await page.waitForSelector(`#region-title[data-kind=disk][data-start="${start}"][data-end="${start + 1}"]`);
    await page.click("#map-disk button[data-zoom=all]");
    assert.equal(await disk.getAttribute("data-end"), "2048");
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
    await srv.close();
  }
});

test("single-file page from disk: the seed layout and the base, opened together, verify and show the same numbers", async () => {
  const { page, errors } = await newPage();
  try {
    await page.goto(pathToFileURL(standalone).href);
    await page.waitForSelector("body[data-ready=true][data-mode=static]");
    const segs = meta.segments.map((_, i) => join(dir, `seed-${i + 1}.xz`));
    await page.setInputFiles("#file-input", [set.baseMem, ...segs.reverse(), splitMeta, set.baseDisk]);
    assert.equal(await checked(page), "done");
    await assertSameAsCli(page, splitMeta);
    assert.deepEqual(await page.$$eval("td.status", (tds) => tds.map((t) => (t as HTMLElement).dataset.status)), meta.segments.map(() => "ok"));
    assert.match((await page.textContent("#summary"))!, /seed layout/);
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
});

const GOLDEN = (v: number, name: string) => new URL(`./golden/v${v}/${name}`, import.meta.url).pathname;

test("boot set: the summary shows its segments, bytes, pages, chunks, base pages and reason, and its segments are marked; a version 1 overlay has none", async () => {
  const v2 = GOLDEN(2, "golden.overlay");
  const v2meta = await openOverlay(core, v2).then(async (ov) => (await ov.close(), ov.meta));
  const boot = v2meta.bootSet;
  assert.ok(boot && boot.segments >= 1, "test/golden/v2 has a boot set");
  const srv = await startInspectServer({ core, overlay: v2, webRoot: await ensureInspectorBuilt() });
  const { page, errors } = await newPage();
  try {
    await page.goto(srv.url);
    assert.equal(await checked(page), "done");
    // Every bootSet.* number of `cloudlet inspect --json` is on the page, with the rest.
    await assertSameAsCli(page, v2);
    const total = (await cloudlet(["inspect", "--json", v2]).then((r) => JSON.parse(r.stdout))).segments.length;
    assert.equal(await page.getAttribute("#boot-set", "data-boot-set"), String(boot.segments));
    const text = (await page.textContent("#boot-set"))!.replace(/\s+/g, " ");
    assert.match(text, new RegExp(`segments 1–${boot.segments} of ${total}: 7\\.21 KiB compressed \\(57\\.6% of the segments\\), 16\\.2 KiB raw`));
    assert.match(text, /sent first: 2 memory pages, 1 disk chunk, and 1 base memory page/);
    assert.match(text, /recorded by: warmup-script golden\.sh/);
    // The segment table and the ratio chart mark the boot set's segments, and only those.
    const rows = await page.$$eval("table.segments tbody tr", (trs) => trs.map((t) => t.hasAttribute("data-boot-set")));
    assert.deepEqual(rows, Array.from({ length: total }, (_, i) => i < boot.segments));
    assert.equal(await page.$$eval("table.segments tbody tr .badge.boot", (x) => x.length), boot.segments);
    assert.equal(await page.$$eval("svg.chart rect[data-boot-set]", (x) => x.length), boot.segments);
    // The maps mark every cell holding a boot-set chunk (these images are small: one chunk per cell), counted here from the meta's ranges.
    const lead = v2meta.segments.slice(0, boot.segments);
    for (const [kind, name] of ["disk", "memory", "state"].entries()) {
      if (!v2meta.imageSizes[kind]) continue;
      const want = lead.reduce((t, sg) => t + sg.ranges.filter((r) => r[0] === kind).reduce((u, r) => u + r[2], 0), 0);
      assert.equal(await page.getAttribute(`canvas.map[data-kind=${name}]`, "data-boot-cells"), String(want), `${name} map`);
    }
    assert.ok(Number(await page.getAttribute("canvas.map[data-kind=memory]", "data-boot-cells")) >= boot.pages);
    assert.equal(await page.locator("[data-legend=boot]").count(), 1);
    await page.screenshot({ path: join(ARTIFACTS, "web-inspector-boot-set.png"), fullPage: true });

    // Version 1, dropped in its seed layout: the page still renders, and says there is no boot set.
    const v1 = ["golden.overlay-meta", "golden-1.xz", "golden-2.xz"].map((f) => GOLDEN(1, f));
    await page.goto(pathToFileURL(standalone).href);
    await page.waitForSelector("body[data-ready=true]");
    await page.setInputFiles("#file-input", v1);
    assert.equal(await checked(page), "done");
    await assertSameAsCli(page, v1[0]);
    assert.equal(await page.getAttribute("[data-field=formatVersion]", "data-value"), "1");
    assert.equal(await page.getAttribute("#boot-set", "data-boot-set"), "none");
    assert.match((await page.textContent("#boot-set"))!, /no boot set \(format version 1 has none\)/);
    assert.equal(await page.$$eval("table.segments tr[data-boot-set], svg.chart rect[data-boot-set]", (x) => x.length), 0);
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
    await srv.close();
  }
});

/** Drops files on the page the way a person does: a drop event carrying Files. */
async function dropFiles(page: Page, files: Array<{ name: string; bytes: Uint8Array }>): Promise<void> {
  await page.evaluate((list) => {
    const dt = new DataTransfer();
    for (const f of list) dt.items.add(new File([Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0))], f.name));
    window.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
  }, files.map((f) => ({ name: f.name, b64: Buffer.from(f.bytes).toString("base64") })));
}

test("corrupted overlays dropped on the page get an error panel that names the segment", async () => {
  const bytes = await read(packed);
  const bad = bytes.slice();
  const target = 3; // 1-based, as the page and the CLI count
  const start = bytes.length - meta.segments.slice(target - 1).reduce((t, s) => t + s.compressedSize, 0);
  bad[start + 100] ^= 0x01;
  const { page, errors } = await newPage();
  try {
    await page.goto(pathToFileURL(standalone).href);
    await page.waitForSelector("body[data-ready=true]");
    await dropFiles(page, [{ name: "flipped.overlay", bytes: bad }]);
    assert.equal(await checked(page), "failed");
    const panel = page.locator("#error-panel");
    await panel.waitFor({ state: "visible" });
    assert.equal(await panel.getAttribute("data-segments"), String(target));
    const item = page.locator(`#error-panel li[data-segment="${target}"]`);
    assert.equal(await item.getAttribute("data-code"), "CORRUPT_SEGMENT");
    assert.match((await item.textContent())!, new RegExp(`^Segment ${target}: segment ${target} is corrupt: its hash does not match the meta.*flipped\\.overlay`));
    assert.match((await panel.locator("h2").textContent())!, new RegExp(`1 of ${meta.segments.length} segments failed`));
    const statuses = await page.$$eval("td.status", (tds) => tds.map((t) => (t as HTMLElement).dataset.status));
    assert.deepEqual(statuses.map((st, i) => [i + 1, st === "failed"]), meta.segments.map((_, i) => [i + 1, i === target - 1]), "only that segment failed");
    await page.screenshot({ path: join(ARTIFACTS, "web-inspector-corrupt.png") });

    // A damaged meta: the overlay cannot be opened at all, and the panel says why and which file.
    const badMeta = bytes.slice();
    badMeta[64 + 64 + 10] ^= 0x20;
    await dropFiles(page, [{ name: "badmeta.overlay", bytes: badMeta }]);
    await page.waitForSelector("#error-panel li[data-code=BAD_META]");
    assert.match((await page.textContent("#error-panel"))!, /Cannot open the overlay.*overlay meta is corrupt \(checksum mismatch\).*badmeta\.overlay/s);

    // The seed layout without one of its segment files.
    const files = [{ name: "seed.overlay-meta", bytes: await read(splitMeta) }];
    for (let i = 0; i < meta.segments.length; i++) if (i !== 1) files.push({ name: `seed-${i + 1}.xz`, bytes: await read(join(dir, `seed-${i + 1}.xz`)) });
    await dropFiles(page, files);
    await page.waitForSelector("#error-panel li[data-segment='2'][data-code=MISSING_SEGMENT]");
    assert.match((await page.textContent("#error-panel li[data-segment='2']"))!, /segment 2 is missing \(seed-2\.xz not found\)/);
    assert.equal(await checked(page), "failed");
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
  }
});

test("the shared WASM kernel vectors pass in the browser, in the page and in its Web Worker", async () => {
  const vectors = JSON.parse(await fsp.readFile(new URL("../core-rs/vectors/kernels.json", import.meta.url), "utf8"));
  const perRealm = checkKernelVectors(core, vectors).length;
  const srv = await startInspectServer({ core, overlay: packed, webRoot: await ensureInspectorBuilt() });
  const { page, errors } = await newPage();
  try {
    await page.goto(srv.url);
    await checked(page);
    await page.click("#selftest-button");
    await page.waitForSelector("#selftest-panel[data-state=pass], #selftest-panel[data-state=fail]", { timeout: 120_000 });
    const panel = page.locator("#selftest-panel");
    assert.equal(await panel.getAttribute("data-state"), "pass", (await panel.textContent())!);
    assert.equal(await panel.getAttribute("data-total"), String(2 * perRealm));
    assert.equal(await panel.getAttribute("data-passed"), String(2 * perRealm));
    // Without a base, segments that need one are decoded and hashed, not rebuilt.
    assert.ok((await page.$$eval("td.status[data-status=ok-nobase]", (x) => x.length)) > 0);
    assert.deepEqual(errors, []);
  } finally {
    await page.close();
    await srv.close();
  }
});

test("`cloudlet inspect --web` prints the URL, serves the page, and stops on Ctrl-C", async () => {
  const { spawn } = await import("node:child_process");
  const child = spawn(CLOUDLET, ["inspect", "--web", "--port", "0", "--base-disk", set.baseDisk, "--base-mem", set.baseMem, packed], { stdio: ["ignore", "pipe", "pipe"] });
  try {
    const url = await new Promise<string>((resolve, reject) => {
      let out = "";
      const timer = setTimeout(() => reject(new Error(`no URL printed: ${out}`)), 60_000);
      child.stdout.setEncoding("utf8").on("data", (d: string) => {
        out += d;
        const m = /http:\/\/127\.0\.0\.1:\d+\//.exec(out);
        if (m) (clearTimeout(timer), resolve(m[0]));
      });
      child.on("exit", (code) => reject(new Error(`exited ${code} before printing a URL: ${out}`)));
    });
    const { page, errors } = await newPage();
    try {
      await page.goto(url);
      assert.equal(await checked(page), "done");
      assert.equal(await page.getAttribute("[data-field='base.id']", "data-value"), meta.base.id);
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
    }
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    child.kill("SIGINT");
    const code = await exited;
    // Deno's child_process reports a child it signalled with code null, even after a clean exit(0).
    assert.ok(code === 0 || ("Deno" in globalThis && code === null), `exit code ${code}`);
  } finally {
    if (child.exitCode === null) child.kill("SIGKILL");
  }
});

test("close the browser and clean up", async () => {
  await context.close();
  await fsp.rm(dir, { recursive: true, force: true });
});
