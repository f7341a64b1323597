/**
 * The cloudlet overlay inspector page. It opens an overlay either from the
 * local `cloudlet inspect --web` server (which lists the files at
 * api/session and serves them by range) or from files dropped on the page,
 * shows what `cloudlet inspect` shows, draws maps of the rewritten chunks,
 * and has a Web Worker (its own instance of the same .wasm) decode and
 * verify every segment. Nothing leaves the browser.
 */
import { loadCore } from "../ts/core/core.ts";
import type { ChunkDetail } from "../ts/inspect/chunk_detail.ts";
import { ChunkMap } from "../ts/inspect/chunk_map.ts";
import { formatBytes, inspectMeta } from "../ts/inspect/report.ts";
import type { ErrorInfo, SegmentCheck } from "../ts/inspect/segment_check.ts";
import { type InspectSession, SESSION_PATH, type SessionFile } from "../ts/inspect/session.ts";
import { checkKernelVectors, type VectorResult } from "../ts/inspect/vector_check.ts";
import { KIND_NAMES } from "../ts/overlay/format.ts";
import { byId, field, fill, h, int } from "./dom.ts";
import { MapView, type Region } from "./map_view.ts";
import { BOOT_COLOR, CLASS_COLORS, CLASS_HELP, CLASS_LABELS, UNCHANGED_COLOR } from "./palette.ts";
import type { FileSpec, OpenedOverlay, ScanSummary } from "./protocol.ts";
import { RegionView } from "./region_view.ts";
import { renderBreakdown, renderLaunch, renderSummary, SegmentTable } from "./report_view.ts";
import { assets, startWorker } from "./core_loader.ts";
import { WorkerClient, WorkerError } from "./worker_client.ts";

/** What is open now. */
let current: { client: WorkerClient; map: ChunkMap; maps: MapView[] } | null = null;

/** Shows a failure to open, or the failed segments, in the error panel. */
function showErrors(title: string, errors: Array<{ segment: number | null; error: ErrorInfo }>): void {
  const panel = byId("error-panel");
  panel.hidden = false;
  panel.dataset.segments = errors.filter((e) => e.segment !== null).map((e) => e.segment! + 1).join(",");
  fill(
    panel,
    h("h2", {}, title),
    h(
      "ul",
      {},
      ...errors.slice(0, 100).map((e) =>
        h("li", { "data-segment": e.segment === null ? null : e.segment + 1, "data-code": e.error.code }, e.segment !== null ? h("b", {}, `Segment ${e.segment + 1}: `) : null, e.error.message, e.error.file ? h("div", { class: "file" }, "file: ", h("code", {}, e.error.file)) : null, h("span", { class: "code" }, e.error.code)),
      ),
      errors.length > 100 ? h("li", {}, `… and ${int(errors.length - 100)} more`) : null,
    ),
  );
}

function clearErrors(): void {
  const panel = byId("error-panel");
  panel.hidden = true;
  delete panel.dataset.segments;
  panel.replaceChildren();
}

/** Opens an overlay from files (dropped or listed by the server) and checks it. */
async function openOverlay(files: FileSpec[], baseDisk?: FileSpec, baseMemory?: FileSpec): Promise<void> {
  current?.client.terminate();
  current = null;
  clearErrors();
  byId("overlay-view").hidden = true;
  const integrity = byId("integrity");
  integrity.dataset.state = "opening";
  byId("status").textContent = `opening ${files.map((f) => f.name).join(", ")}…`;
  let client: WorkerClient;
  let opened: OpenedOverlay;
  try {
    client = await startWorker();
    opened = await client.call<OpenedOverlay>({ op: "open", files, baseDisk, baseMemory });
  } catch (e) {
    integrity.dataset.state = "failed";
    byId("status").textContent = "";
    showErrors("Cannot open the overlay", [{ segment: null, error: e instanceof WorkerError ? e.info : { code: "INTERNAL", message: String((e as Error)?.message ?? e), file: null } }]);
    return;
  }
  byId("drop-zone").classList.add("compact");
  const meta = opened.meta;
  const report = inspectMeta(meta, opened.name, opened.totalBytes);
  const map = new ChunkMap(meta);
  const region = new RegionView(byId("region"), map, (kind, index) => client.call<ChunkDetail>({ op: "detail", kind, index }));
  const maps: MapView[] = [];
  const onSelect = (r: Region) => {
    for (const m of maps) if (m.kind !== r.kind) m.unselect();
    region.show(r);
  };
  renderSummary(byId("summary"), report, opened);
  renderBreakdown(byId("breakdown"), report);
  renderLaunch(byId("launch"), report);
  const segTable = new SegmentTable(byId("segments"), report);
  const mapsEl = byId("maps");
  fill(mapsEl, h("h2", {}, "Maps"), legend(report.bootSet !== undefined));
  KIND_NAMES.forEach((_, kind) => {
    if (map.imageChunks[kind] === 0) return;
    const box = h("div", { class: "map-box", id: `map-${KIND_NAMES[kind]}` });
    mapsEl.append(box);
    maps.push(new MapView(box, map, kind, onSelect, report.bootSet?.segments ?? 0));
  });
  byId("overlay-view").hidden = false;
  byId("status").textContent = "";
  current = { client, map, maps };

  // Integrity: the worker checks each segment and reports as it goes.
  const failures: Array<{ segment: number; error: ErrorInfo }> = [];
  const bar = h("div", { class: "bar" });
  const text = h("p", { id: "integrity-text" }, "decoding…");
  fill(integrity, h("h2", {}, "Integrity"), h("div", { class: "progress", role: "progressbar" }, bar), text);
  integrity.dataset.state = "scanning";
  const n = meta.segments.length;
  let done = 0;
  client.onSegment = (c: SegmentCheck, bytesDone, bytesTotal) => {
    done++;
    if (c.classes) map.setSegment(c.segment, c.classes);
    else map.failSegment(c.segment);
    if (c.error) {
      failures.push({ segment: c.segment, error: c.error });
      segTable.setStatus(c.segment, "failed", c.error.message);
      showErrors(`${int(failures.length)} of ${int(n)} segments failed their checks`, failures);
    } else segTable.setStatus(c.segment, c.rebuilt === "ok" ? "ok" : "ok-nobase");
    const pct = bytesTotal ? (100 * bytesDone) / bytesTotal : 100;
    bar.style.width = `${pct.toFixed(1)}%`;
    integrity.dataset.done = String(done);
    text.textContent = `segment ${int(done)} of ${int(n)} · ${formatBytes(bytesDone)} of ${formatBytes(bytesTotal)} (${pct.toFixed(0)}%)`;
    for (const m of maps) m.redrawSoon();
  };
  let summary: ScanSummary;
  try {
    summary = await client.call<ScanSummary>({ op: "scan" });
  } catch (e) {
    integrity.dataset.state = "failed";
    text.textContent = `the check stopped: ${(e as Error).message}`;
    return;
  }
  if (current?.client !== client) return;
  for (const m of maps) m.draw();
  integrity.dataset.state = summary.failed ? "failed" : "done";
  const skipped = summary.ok - summary.rebuiltChecked;
  const counts = map.classCounts();
  const countsMatch = !summary.failed && KIND_NAMES.every((_, k) => meta.classCounts[k].every((c, cls) => counts[k][cls] === c));
  fill(
    text,
    summary.failed
      ? h("b", { class: "bad" }, `${int(summary.failed)} of ${int(n)} segments failed (see above). `)
      : h("b", { class: "good" }, field("verified", true, n ? `All ${int(n)} segments match their hashes and decode.` : "The overlay has no segments: it leaves the base as it is."), " "),
    summary.rebuiltChecked ? `Rebuilt chunks verified for ${int(summary.rebuiltChecked)} segments. ` : "",
    skipped > 0 ? `${int(skipped)} segments need the base to verify their rebuilt chunks: ${opened.baseDisk || opened.baseMemory ? "give both base images" : "add the base disk and memory images"}. ` : "",
    !summary.failed ? (countsMatch ? "Decoded classes match the meta's counts. " : h("b", { class: "bad" }, "Decoded classes disagree with the meta's counts. ")) : "",
    h("span", { class: "muted" }, `${(summary.ms / 1000).toFixed(1)} s; kept in memory: chunk map ${formatBytes(map.memoryBytes)}, worker WASM ${formatBytes(summary.wasmBytes)}.`),
  );
  integrity.dataset.wasmBytes = String(summary.wasmBytes);
}

/** The maps' colours; with a boot set, also its mark (a bar under a cell). */
function legend(bootSet: boolean): HTMLElement {
  return h(
    "div",
    { class: "legend" },
    h("span", { title: "not in the overlay: as in the base" }, h("span", { class: "chip", style: `background:${UNCHANGED_COLOR}` }), "unchanged"),
    ...[...CLASS_LABELS.keys()].map((k) => h("span", { title: CLASS_HELP[k] }, h("span", { class: "chip", style: `background:${CLASS_COLORS[k]}` }), CLASS_LABELS[k])),
    bootSet ? h("span", { title: "the cell holds chunks of the boot set: the segments sent first", "data-legend": "boot" }, h("span", { class: "chip", style: `background:linear-gradient(to top, ${BOOT_COLOR} 30%, transparent 30%)` }), "boot set (bar)") : null,
  );
}

/** Runs the shared kernel vectors in the page and in a worker, each with its own WASM instance. */
async function selfTest(): Promise<void> {
  const panel = byId("selftest-panel");
  panel.hidden = false;
  panel.dataset.state = "running";
  fill(panel, h("h2", {}, "WASM self-test"), h("p", {}, "running the shared kernel vectors…"));
  try {
    const vectors = await assets.vectors();
    const core = await loadCore(await assets.wasmBytes());
    const page = checkKernelVectors(core, vectors);
    const client = await startWorker();
    let worker: VectorResult[];
    try {
      worker = await client.call<VectorResult[]>({ op: "selftest", vectors });
    } finally {
      client.terminate();
    }
    const all = [...page, ...worker];
    const failed = all.filter((r) => !r.ok);
    panel.dataset.state = failed.length ? "fail" : "pass";
    panel.dataset.passed = String(all.length - failed.length);
    panel.dataset.total = String(all.length);
    fill(
      panel,
      h("h2", {}, "WASM self-test"),
      h("p", { class: failed.length ? "bad" : "good" }, `page: ${page.filter((r) => r.ok).length} of ${page.length} checks pass; worker: ${worker.filter((r) => r.ok).length} of ${worker.length} pass`, failed.length ? "" : " — this browser computes what native Rust, Node and Deno compute."),
      failed.length ? h("ul", {}, ...failed.map((r) => h("li", {}, `${r.name}: ${r.detail}`))) : null,
    );
  } catch (e) {
    panel.dataset.state = "fail";
    fill(panel, h("h2", {}, "WASM self-test"), h("p", { class: "bad" }, `could not run: ${(e as Error).message}`));
  }
}

function blobSpecs(list: FileList | File[]): FileSpec[] {
  return [...list].map((f) => ({ type: "blob", name: f.name, blob: f }));
}

function httpSpec(f: SessionFile): FileSpec {
  return { type: "http", name: f.name, url: new URL(f.url, location.href).href, size: f.size };
}

/** Asks the local server what to show; null for static hosting or file://. */
async function session(): Promise<InspectSession | null> {
  if (!location.protocol.startsWith("http")) return null;
  try {
    const res = await fetch(SESSION_PATH, { cache: "no-store" });
    return res.ok ? ((await res.json()) as InspectSession) : null;
  } catch {
    return null;
  }
}

function wireInputs(): void {
  const input = byId<HTMLInputElement>("file-input");
  input.addEventListener("change", () => {
    if (input.files?.length) void openOverlay(blobSpecs(input.files));
    input.value = "";
  });
  byId("selftest-button").addEventListener("click", () => void selfTest());
  const zone = byId("drop-zone");
  window.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  window.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) zone.classList.remove("over");
  });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const files = e.dataTransfer?.files;
    if (files?.length) void openOverlay(blobSpecs(files));
  });
}

/** What tests (and curious people, from the console) can reach. */
const api = {
  /** Scrolls to the map cell showing chunk `index` of image `kind` ("disk", "memory", "state") and returns its viewport coordinates. */
  revealCell(kind: string, index: number): { x: number; y: number } | null {
    const k = KIND_NAMES.indexOf(kind as (typeof KIND_NAMES)[number]);
    return current?.maps.find((m) => m.kind === k)?.revealCell(index) ?? null;
  },
};
(globalThis as unknown as { cloudletInspector: typeof api }).cloudletInspector = api;

async function main(): Promise<void> {
  wireInputs();
  const s = await session();
  document.body.dataset.mode = s ? "served" : "static";
  document.body.dataset.ready = "true";
  if (s) await openOverlay(s.overlay.map(httpSpec), s.baseDisk ? httpSpec(s.baseDisk) : undefined, s.baseMemory ? httpSpec(s.baseMemory) : undefined);
}

void main();
