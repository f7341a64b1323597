/**
 * RegionView: the chunks of a clicked map region, and a hex view of one of
 * them: what the overlay stores, what synthesis rebuilds, the base chunk at
 * the same offset, and the rebuilt chunk XOR that base chunk.
 */
import type { ChunkDetail } from "../ts/inspect/chunk_detail.ts";
import type { ChunkMap } from "../ts/inspect/chunk_map.ts";
import { formatBytes } from "../ts/inspect/report.ts";
import { CHUNK, ChunkClass, KIND_NAMES } from "../ts/overlay/format.ts";
import { fill, h, hex, int } from "./dom.ts";
import type { Region } from "./map_view.ts";
import { CLASS_HELP, CLASS_LABELS } from "./palette.ts";
import { chip } from "./report_view.ts";

/** Rows listed for one region; zoom in for the rest. */
const ROW_LIMIT = 256;

type View = "diff" | "rebuilt" | "stored" | "base";

/** The region panel. */
export class RegionView {
  readonly #el: HTMLElement;
  readonly #map: ChunkMap;
  readonly #load: (kind: number, index: number) => Promise<ChunkDetail>;
  readonly #detail: HTMLElement;
  #token = 0;

  /** @param el the section @param map the chunk map @param load fetches one chunk's detail from the worker */
  constructor(el: HTMLElement, map: ChunkMap, load: (kind: number, index: number) => Promise<ChunkDetail>) {
    this.#el = el;
    this.#map = map;
    this.#load = load;
    this.#detail = h("div", { id: "chunk-detail" });
    fill(el, h("h2", {}, "Region"), h("p", { class: "muted" }, "Click a cell of a map to list its chunks."));
  }

  /** Lists the changed chunks of `r` and opens the first one. */
  show(r: Region): void {
    const total = this.#map.count(r.kind, r.start, r.end);
    const rows = this.#map.chunks(r.kind, r.start, r.end, ROW_LIMIT);
    const kind = KIND_NAMES[r.kind];
    const span = r.end - r.start === 1 ? `chunk ${int(r.start)}` : `chunks ${int(r.start)}–${int(r.end - 1)}`;
    const body = h("tbody");
    for (const row of rows) {
      const tr = h(
        "tr",
        { class: "pick", "data-index": row.index, tabindex: 0 },
        h("td", { class: "num" }, int(row.index)),
        h("td", { class: "num" }, h("code", {}, hex(row.index * CHUNK))),
        h("td", {}, chip(row.cls), CLASS_LABELS[row.cls]),
        h("td", { class: "num" }, row.segment + 1),
        h("td", { class: "num" }, row.record),
      );
      const open = () => {
        body.querySelectorAll("tr.picked").forEach((x) => x.classList.remove("picked"));
        tr.classList.add("picked");
        void this.#open(r.kind, row.index);
      };
      tr.addEventListener("click", open);
      tr.addEventListener("keydown", (e) => (e as KeyboardEvent).key === "Enter" && open());
      body.append(tr);
    }
    fill(
      this.#el,
      h("h2", {}, "Region"),
      h("p", { id: "region-title", "data-kind": kind, "data-start": r.start, "data-end": r.end, "data-changed": total }, `${kind} ${span} · bytes ${hex(r.start * CHUNK)}–${hex(r.end * CHUNK - 1)} · ${formatBytes((r.end - r.start) * CHUNK)} · `, h("b", {}, `${int(total)} changed`), total > rows.length ? ` (first ${rows.length} listed: zoom in for the others)` : ""),
      rows.length
        ? h(
            "div",
            { class: "region-body" },
            h("div", { class: "scroll chunks" }, h("table", { class: "grid", id: "region-chunks" }, h("thead", {}, h("tr", {}, ...["chunk", "offset", "class", "segment", "record"].map((x) => h("th", {}, x)))), body)),
            this.#detail,
          )
        : h("p", { class: "muted" }, "The overlay leaves these chunks as they are in the base."),
    );
    (body.firstElementChild as HTMLElement | null)?.click();
  }

  async #open(kind: number, index: number): Promise<void> {
    const token = ++this.#token;
    fill(this.#detail, h("p", { class: "muted" }, `loading chunk ${int(index)}…`));
    let d: ChunkDetail;
    try {
      d = await this.#load(kind, index);
    } catch (e) {
      if (token === this.#token) fill(this.#detail, h("p", { class: "error" }, `cannot show chunk ${int(index)}: ${(e as Error).message}`));
      return;
    }
    if (token !== this.#token) return;
    this.#render(d);
  }

  #render(d: ChunkDetail): void {
    const views: Array<[View, string, Uint8Array | null]> = [
      ["diff", "XOR vs base", d.diff],
      ["rebuilt", "rebuilt", d.rebuilt],
      ["stored", d.cls === ChunkClass.Xor ? "stored (XOR delta)" : "stored", d.stored],
      ["base", "base", d.base],
    ];
    const first = views.find((v) => v[2])?.[0] ?? null;
    const dump = h("div", { class: "hex-wrap" });
    const tabs = h("div", { class: "tabs", role: "tablist" });
    const pick = (v: View) => {
      const entry = views.find((x) => x[0] === v)!;
      tabs.querySelectorAll("button").forEach((b) => b.setAttribute("aria-selected", String(b.dataset.view === v)));
      const bytes = entry[2]!;
      // Highlight what differs from the base: non-zero bytes of a delta, changed bytes of a chunk.
      const mark = v === "diff" || (v === "stored" && d.cls === ChunkClass.Xor) ? (i: number) => bytes[i] !== 0 : v === "rebuilt" && d.diff ? (i: number) => d.diff![i] !== 0 : null;
      fill(dump, hexDump(bytes, mark, v));
    };
    for (const [v, label, bytes] of views) {
      tabs.append(h("button", { role: "tab", "data-view": v, disabled: !bytes, title: bytes ? null : missingWhy(v, d), onclick: () => pick(v) }, label));
    }
    fill(
      this.#detail,
      h("h3", {}, `${KIND_NAMES[d.kind]} chunk ${int(d.index)} `, h("small", {}, `at ${hex(d.index * CHUNK)}, segment ${d.segment + 1}, record ${d.record}`)),
      h("p", { id: "chunk-class", "data-class": d.cls }, chip(d.cls), h("b", {}, CLASS_LABELS[d.cls]), `: ${explain(d)}`),
      d.changedBytes >= 0 ? h("p", { id: "chunk-changed", "data-changed": d.changedBytes }, `differs from the base chunk at the same offset in ${int(d.changedBytes)} of ${int(CHUNK)} bytes`) : h("p", { class: "muted" }, d.kind === 2 ? "device state has no base" : "give the base images to compare with the base"),
      tabs,
      dump,
    );
    if (first) pick(first);
  }
}

function explain(d: ChunkDetail): string {
  switch (d.cls) {
    case ChunkClass.BaseMemory:
      return `equal to the base memory page at ${hex(d.arg)}; only that offset is stored`;
    case ChunkClass.BaseDisk:
      return `equal to the base disk block at ${hex(d.arg)}; only that offset is stored`;
    case ChunkClass.Self:
      return `a repeat of record ${d.arg} of the same segment, whose data is shown as stored`;
    case ChunkClass.Raw:
    case ChunkClass.Xor:
      return `${CLASS_HELP[d.cls]}; data slot ${d.arg}`;
    default:
      return CLASS_HELP[d.cls];
  }
}

function missingWhy(v: View, d: ChunkDetail): string {
  if (v === "stored") return "this class stores no data";
  if (d.kind === 2 && (v === "base" || v === "diff")) return "device state has no base";
  return "needs the base images";
}

/** A hex dump; runs of equal lines collapse into "*", as in hexdump(1). */
export function hexDump(b: Uint8Array, mark: ((i: number) => boolean) | null, view: string): HTMLElement {
  const pre = h("pre", { class: "hex", "data-view": view });
  // Plain text accumulates in `text` and is flushed before each highlighted byte.
  let text = "";
  let prev = "";
  let starred = false;
  for (let o = 0; o < b.length; o += 16) {
    const line = b.subarray(o, o + 16);
    const key = line.join(",");
    if (key === prev && o + 16 < b.length) {
      if (!starred) text += "*\n";
      starred = true;
      continue;
    }
    prev = key;
    starred = false;
    text += o.toString(16).padStart(6, "0") + "  ";
    for (let i = 0; i < 16; i++) {
      const t = (line[i] ?? 0).toString(16).padStart(2, "0");
      if (mark?.(o + i)) {
        pre.append(text, h("mark", {}, t));
        text = "";
      } else text += t;
      text += i === 7 ? "  " : " ";
    }
    let ascii = "";
    for (const x of line) ascii += x >= 0x20 && x < 0x7f ? String.fromCharCode(x) : ".";
    text += " |" + ascii + "|\n";
  }
  pre.append(text);
  return pre;
}
