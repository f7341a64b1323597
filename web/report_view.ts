/**
 * The report panels: summary (with the boot set), class breakdown (table and
 * charts), segment table with per-segment compression ratios (boot-set
 * segments marked), and the launch config. Every
 * number comes from `inspectMeta`, the function behind `cloudlet inspect`,
 * and carries `data-field` = its path in the `--json` report.
 */
import { formatBytes, type InspectReport } from "../ts/inspect/report.ts";
import { CHUNK, CLASS_NAMES, KIND_NAMES, RECORD_BYTES, SEGMENT_HEADER_BYTES } from "../ts/overlay/format.ts";
import { field, fill, h, int, s } from "./dom.ts";
import { BOOT_COLOR, CLASS_COLORS, CLASS_HELP, CLASS_LABELS } from "./palette.ts";
import type { OpenedOverlay } from "./protocol.ts";

/** Segment rows rendered at first; the rest on request (a meta may list a million). */
const SEGMENT_PAGE = 200;

function bytesField(path: string, n: number): HTMLElement {
  return field(path, n, formatBytes(n), `${int(n)} bytes`);
}

function row(label: string, ...value: Array<Node | string>): HTMLElement {
  return h("tr", {}, h("th", {}, label), h("td", {}, ...value));
}

/** The summary card: identity of the overlay and its base, and the size totals. */
export function renderSummary(el: HTMLElement, r: InspectReport, o: OpenedOverlay): void {
  const m = r.base.machine;
  const baseNote = o.baseDisk && o.baseMemory ? `base images: ${o.baseDisk}, ${o.baseMemory}` : o.baseDisk || o.baseMemory ? `only one base image given (${o.baseDisk ?? o.baseMemory}): give both to check rebuilt chunks` : "no base images given: rebuilt chunks that need the base are not checked, and there is no XOR against the base";
  fill(
    el,
    h("h2", {}, "Overlay"),
    h(
      "table",
      { class: "kv" },
      row("file", h("code", {}, o.name), ` (${o.layout === "packed" ? "packed" : "seed layout: meta + .xz segments"})`),
      row("format", field("formatVersion", r.formatVersion, `version ${r.formatVersion}`)),
      row("created by", field("creator.tool", r.creator.tool), " ", field("creator.version", r.creator.version), " at ", field("creator.created", r.creator.created)),
      row("base id", h("code", { class: "id" }, field("base.id", r.base.id))),
      row("base", "disk ", bytesField("base.diskSize", r.base.diskSize), ", memory ", bytesField("base.memorySize", r.base.memorySize), ", ", field("base.machine.machine", m.machine), " / ", field("base.machine.cpu", m.cpu), " / ", field("base.machine.ramMiB", m.ramMiB, `${m.ramMiB} MiB`)),
      row("rebuilt images", ...KIND_NAMES.flatMap((k, i) => [i ? ", " : "", `${k} `, bytesField(`imageSizes.${k}`, r.imageSizes[k])])),
      row("checks", baseNote + (o.unused.length ? `; not used: ${o.unused.join(", ")}` : "")),
      bootSetRow(r),
    ),
    h(
      "div",
      { class: "sizes" },
      sizeBox("overlay", "sizes.overlay", r.sizes.overlay, "the whole overlay: meta + segments"),
      sizeBox("compressed", "sizes.compressed", r.sizes.compressed, "all segments, as stored (.xz)"),
      sizeBox("raw", "sizes.raw", r.sizes.raw, "all segment payloads, decompressed"),
      sizeBox("rebuilt", "sizes.rebuilt", r.sizes.rebuilt, "bytes of the images the overlay rewrites"),
      h("div", { class: "size" }, h("div", { class: "big" }, field("sizes.ratio", r.sizes.ratio, `${r.sizes.ratio.toFixed(1)}×`)), h("div", { class: "label" }, "rebuilt / overlay")),
    ),
  );
}

/** What the VM needs first: the boot set's segments and what they hold, or why there is none. */
function bootSetRow(r: InspectReport): HTMLElement {
  const b = r.bootSet;
  if (!b) {
    const why = r.formatVersion < 2 ? "format version 1 has none" : "made without a warm-up: segments are in image order";
    return h("tr", { id: "boot-set", "data-boot-set": "none" }, h("th", {}, "boot set"), h("td", {}, "no boot set ", h("span", { class: "muted" }, `(${why})`)));
  }
  const plural = (n: number, one: string) => `${int(n)} ${one}${n === 1 ? "" : "s"}`;
  return h(
    "tr",
    { id: "boot-set", "data-boot-set": b.segments },
    h("th", {}, "boot set"),
    h(
      "td",
      {},
      h("span", { class: "badge boot" }, "boot"),
      " segments 1–",
      field("bootSet.segments", b.segments, int(b.segments)),
      ` of ${int(r.segments.length)}: `,
      bytesField("bootSet.compressed", b.compressed),
      " compressed (",
      field("bootSet.fraction", b.fraction, `${(b.fraction * 100).toFixed(1)}%`),
      " of the segments), ",
      bytesField("bootSet.raw", b.raw),
      " raw",
      h("br"),
      "sent first: ",
      field("bootSet.pages", b.pages, plural(b.pages, "memory page")),
      ", ",
      field("bootSet.chunks", b.chunks, plural(b.chunks, "disk chunk")),
      ", and ",
      field("bootSet.basePages", b.basePages, plural(b.basePages, "base memory page"), "pages the warm-up touched that equal the base's: no segment holds them"),
      h("br"),
      "recorded by: ",
      h("code", {}, field("bootSet.reason", b.reason)),
    ),
  );
}

function sizeBox(label: string, path: string, n: number, help: string): HTMLElement {
  return h("div", { class: "size", title: help }, h("div", { class: "big" }, bytesField(path, n)), h("div", { class: "label" }, label));
}

/** The class breakdown: table per kind and class, and the two charts. */
export function renderBreakdown(el: HTMLElement, r: InspectReport): void {
  const kinds = [...KIND_NAMES];
  const table = h(
    "table",
    { class: "grid breakdown" },
    h("thead", {}, h("tr", {}, h("th", {}, "class"), ...kinds.map((k) => h("th", { class: "num" }, k)), h("th", { class: "num" }, "total"))),
    h(
      "tbody",
      {},
      ...CLASS_NAMES.map((c, ci) =>
        h(
          "tr",
          { title: CLASS_HELP[ci] },
          h("td", {}, chip(ci), CLASS_LABELS[ci]),
          ...kinds.map((k) => cell(`classes.${k}.${c}`, r.classes[k][c].chunks, r.classes[k][c].bytes)),
          cell(`classTotals.${c}`, r.classTotals[c].chunks, r.classTotals[c].bytes),
        ),
      ),
    ),
  );
  fill(el, h("h2", {}, "What the overlay rewrites, and how"), h("div", { class: "breakdown-row" }, h("div", { class: "charts" }, kindChart(r, kinds), storageChart(r)), table));
}

function cell(path: string, chunks: number, bytes: number): HTMLElement {
  return h("td", { class: "num" }, field(`${path}.chunks`, chunks, int(chunks)), h("br"), h("small", {}, field(`${path}.bytes`, bytes, formatBytes(bytes), `${int(bytes)} bytes`)));
}

/** A small colour swatch of a class. */
export function chip(cls: number): HTMLElement {
  return h("span", { class: "chip", style: `background:${CLASS_COLORS[cls]}` });
}

const CHART_W = 520;

/** Stacked bars: changed chunks per kind, split by class. */
function kindChart(r: InspectReport, kinds: string[]): SVGElement {
  const totals = kinds.map((k) => CLASS_NAMES.reduce((t, c) => t + r.classes[k][c].chunks, 0));
  const max = Math.max(1, ...totals);
  const labelW = 70;
  const barW = CHART_W - labelW - 90;
  const rowH = 28;
  const svg = s("svg", { width: CHART_W, height: kinds.length * rowH + 30, role: "img", "aria-label": "changed chunks per kind and class", class: "chart" });
  svg.append(s("text", { x: 0, y: 14, class: "chart-title" }, "changed chunks by image and class"));
  kinds.forEach((k, ki) => {
    const y = 24 + ki * rowH;
    svg.append(s("text", { x: 0, y: y + 15 }, k));
    let x = labelW;
    CLASS_NAMES.forEach((c, ci) => {
      const n = r.classes[k][c].chunks;
      if (!n) return;
      const w = (n / max) * barW;
      svg.append(s("rect", { x, y, width: Math.max(w, 1), height: 20, fill: CLASS_COLORS[ci] }, s("title", {}, `${k}: ${int(n)} ${CLASS_LABELS[ci]} chunks (${formatBytes(n * CHUNK)})`)));
      x += w;
    });
    svg.append(s("text", { x: x + 6, y: y + 15, class: "muted" }, `${int(totals[ki])} chunks`));
  });
  return svg;
}

/** Three bars on one scale: rebuilt bytes by class, payload by part, compressed. */
function storageChart(r: InspectReport): SVGElement {
  const t = r.classTotals;
  const records = r.segments.reduce((n, sg) => n + sg.records, 0);
  const table = SEGMENT_HEADER_BYTES * r.segments.length + RECORD_BYTES * records;
  const bars: Array<{ label: string; parts: Array<[number, string, string]> }> = [
    { label: "rebuilt", parts: CLASS_NAMES.map((c, ci) => [t[c].bytes, CLASS_COLORS[ci], `${CLASS_LABELS[ci]}: ${formatBytes(t[c].bytes)} rebuilt`]) },
    {
      label: "payload",
      parts: [
        [table, "#64748b", `record table: ${formatBytes(table)} (24 bytes per changed chunk)`],
        [t.raw.bytes, CLASS_COLORS[4], `raw chunks: ${formatBytes(t.raw.bytes)}`],
        [t.xor.bytes, CLASS_COLORS[5], `xor deltas: ${formatBytes(t.xor.bytes)}`],
      ],
    },
    { label: "compressed", parts: [[r.sizes.compressed, "#334155", `xz: ${formatBytes(r.sizes.compressed)}`]] },
  ];
  const max = Math.max(1, ...bars.map((b) => b.parts.reduce((n, p) => n + p[0], 0)));
  const labelW = 90;
  const barW = CHART_W - labelW - 80;
  const svg = s("svg", { width: CHART_W, height: bars.length * 28 + 30, role: "img", "aria-label": "rebuilt, payload and compressed bytes", class: "chart" });
  svg.append(s("text", { x: 0, y: 14, class: "chart-title" }, "why it is the size it is"));
  bars.forEach((b, i) => {
    const y = 24 + i * 28;
    svg.append(s("text", { x: 0, y: y + 15 }, b.label));
    let x = labelW;
    for (const [n, color, tip] of b.parts) {
      if (!n) continue;
      const w = (n / max) * barW;
      svg.append(s("rect", { x, y, width: Math.max(w, 1), height: 20, fill: color }, s("title", {}, tip)));
      x += w;
    }
    svg.append(s("text", { x: x + 6, y: y + 15, class: "muted" }, formatBytes(b.parts.reduce((n, p) => n + p[0], 0))));
  });
  return svg;
}

/** The segment table, its ratio chart, and a status cell per segment that the scan fills in. */
export class SegmentTable {
  readonly #body: HTMLElement;
  readonly #more: HTMLElement;
  readonly #r: InspectReport;
  readonly #status: string[];
  /** Segments in the boot set (the first ones). */
  readonly #boot: number;
  #shown = 0;

  /** @param el the section @param r the report */
  constructor(el: HTMLElement, r: InspectReport) {
    this.#r = r;
    this.#boot = r.bootSet?.segments ?? 0;
    this.#status = r.segments.map(() => "pending");
    this.#body = h("tbody");
    this.#more = h("div", { class: "more" });
    fill(
      el,
      h("h2", {}, `Segments (${int(r.segments.length)})`, r.bootSet ? h("small", {}, " · ", h("span", { class: "badge boot" }, "boot"), ` the first ${int(r.bootSet.segments)}: the boot set, sent first`) : null),
      ratioChart(r),
      h(
        "div",
        { class: "scroll" },
        h(
          "table",
          { class: "grid segments" },
          h("thead", {}, h("tr", {}, ...["#", "compressed", "raw", "ratio", "records", "data chunks", "holds", "check"].map((x) => h("th", { class: x === "check" || x === "holds" ? "" : "num" }, x)))),
          this.#body,
        ),
      ),
      this.#more,
    );
    this.#showMore(SEGMENT_PAGE);
  }

  #showMore(n: number): void {
    const end = Math.min(this.#r.segments.length, this.#shown + n);
    for (let i = this.#shown; i < end; i++) {
      const sg = this.#r.segments[i];
      const p = `segments.${i}`;
      this.#body.append(
        h(
          "tr",
          { id: `segment-row-${i}`, class: i < this.#boot ? "boot" : null, "data-boot-set": i < this.#boot },
          h("td", { class: "num" }, i < this.#boot ? h("span", { class: "badge boot", title: "in the boot set: sent first" }, "boot") : null, field(`${p}.number`, sg.number)),
          h("td", { class: "num" }, bytesField(`${p}.compressed`, sg.compressed)),
          h("td", { class: "num" }, bytesField(`${p}.raw`, sg.raw)),
          h("td", { class: "num" }, field(`${p}.ratio`, sg.ratio, sg.ratio.toFixed(2))),
          h("td", { class: "num" }, field(`${p}.records`, sg.records, int(sg.records))),
          h("td", { class: "num" }, field(`${p}.dataChunks`, sg.dataChunks, int(sg.dataChunks))),
          // Records per image: which images the segment rebuilds.
          h("td", {}, ...Object.entries(sg.holds).flatMap(([k, n], j) => [j ? ", " : "", field(`${p}.holds.${k}`, n, `${k} ${int(n)}`)])),
          h("td", { class: "status", id: `segment-status-${i}` }),
        ),
      );
      this.#paint(i);
    }
    this.#shown = end;
    const left = this.#r.segments.length - end;
    fill(this.#more, left > 0 ? h("button", { onclick: () => this.#showMore(1000) }, `show ${int(Math.min(1000, left))} more of ${int(left)}`) : null);
  }

  /** Sets the check status of segment `i`: "ok", "ok-nobase" or "failed". */
  setStatus(i: number, status: string, title = ""): void {
    this.#status[i] = status;
    if (i < this.#shown) this.#paint(i, title);
  }

  #paint(i: number, title = ""): void {
    const el = document.getElementById(`segment-status-${i}`);
    if (!el) return;
    const st = this.#status[i];
    const text = st === "ok" ? "✓ hash, decode, rebuilt" : st === "ok-nobase" ? "✓ hash, decode (rebuilt needs base)" : st === "failed" ? "✗ failed" : "…";
    el.dataset.status = st;
    el.title = title;
    el.textContent = text;
  }
}

/** Bar chart of raw / compressed per segment (binned when there are many). */
function ratioChart(r: InspectReport): SVGElement {
  const n = r.segments.length;
  const bins = Math.min(n, 300);
  const W = 900;
  const H = 90;
  const ratios: number[] = [];
  for (let b = 0; b < bins; b++) {
    let raw = 0;
    let comp = 0;
    for (let i = Math.floor((b * n) / bins); i < Math.floor(((b + 1) * n) / bins); i++) {
      raw += r.segments[i].raw;
      comp += r.segments[i].compressed;
    }
    ratios.push(comp ? raw / comp : 0);
  }
  const max = Math.max(1, ...ratios);
  const boot = r.bootSet?.segments ?? 0;
  const svg = s("svg", { width: W, height: H + 24, role: "img", "aria-label": "compression ratio per segment", class: "chart" });
  svg.append(s("text", { x: 0, y: 12, class: "chart-title" }, `compression ratio per segment (raw / compressed${bins < n ? `, ${bins} bins of ~${Math.round(n / bins)} segments` : ""}); max ${max.toFixed(2)}×${boot ? "; amber: the boot set" : ""}`));
  const bw = Math.min(24, W / Math.max(bins, 1));
  ratios.forEach((v, b) => {
    const bh = (v / max) * H;
    const first = Math.floor((b * n) / bins) + 1;
    const last = Math.floor(((b + 1) * n) / bins);
    // The boot set is a prefix: a bin is marked when it starts inside it.
    const inBoot = first <= boot;
    const attrs = { x: b * bw, y: 18 + H - bh, width: Math.max(bw - 1, 1), height: Math.max(bh, 1), fill: inBoot ? BOOT_COLOR : "#6366f1", ...(inBoot ? { "data-boot-set": "true" } : {}) };
    svg.append(s("rect", attrs, s("title", {}, `${first === last ? `segment ${first}` : `segments ${first}–${last}`}: ${v.toFixed(2)}×${inBoot ? " (boot set)" : ""}`)));
  });
  return svg;
}

/** The launch config: resources and port forwards. */
export function renderLaunch(el: HTMLElement, r: InspectReport): void {
  const l = r.launch;
  fill(
    el,
    h("h2", {}, "Launch"),
    h(
      "table",
      { class: "kv" },
      row("memory", field("launch.memoryMiB", l.memoryMiB, `${int(l.memoryMiB)} MiB`)),
      row("vCPUs", field("launch.vcpus", l.vcpus)),
      ...(r.memoryFree
        ? [
            row("free at snapshot", bytesField("launch.memoryFreeBytes", r.memoryFree.bytes), " (the meta's figure; free pages are not stored)"),
            row(
              "free memory",
              bytesField("memoryFree.bytes", r.memoryFree.bytes),
              " of ",
              bytesField("memoryFree.of", r.memoryFree.of),
              ", ",
              field("memoryFree.reportingBalloon", r.memoryFree.reportingBalloon, `reporting balloon: ${r.memoryFree.reportingBalloon}`),
            ),
          ]
        : []),
    ),
    l.portForwards.length
      ? h(
          "table",
          { class: "grid ports" },
          h("thead", {}, h("tr", {}, h("th", {}, "protocol"), h("th", { class: "num" }, "host port"), h("th", { class: "num" }, "guest port"))),
          h(
            "tbody",
            {},
            ...l.portForwards.map((p, i) =>
              h(
                "tr",
                {},
                h("td", {}, field(`launch.portForwards.${i}.proto`, p.proto)),
                h("td", { class: "num" }, field(`launch.portForwards.${i}.hostPort`, p.hostPort, p.hostPort ? String(p.hostPort) : "auto", p.hostPort ? undefined : "a free port is picked at launch")),
                h("td", { class: "num" }, field(`launch.portForwards.${i}.guestPort`, p.guestPort)),
              ),
            ),
          ),
        )
      : h("p", { class: "muted" }, "no port forwards"),
  );
}
