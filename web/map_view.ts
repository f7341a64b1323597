/**
 * MapView: a zoomable map of one image (disk, memory or device state). The
 * visible chunk range is cut into at most COLS x ROWS cells; each cell is
 * coloured by the most common class among the changed chunks it covers, or
 * left pale when the overlay does not touch it. Click selects a cell's
 * chunks, double-click or the wheel zooms, down to one chunk per cell. A
 * cell with chunks of the boot set (the segments sent first) has a bar under it.
 */
import { formatBytes } from "../ts/inspect/report.ts";
import { CELL_STRIDE, type ChunkMap } from "../ts/inspect/chunk_map.ts";
import { CHUNK, KIND_NAMES } from "../ts/overlay/format.ts";
import { fill, h, hex, int } from "./dom.ts";
import { BOOT_COLOR, CLASS_COLORS, CLASS_LABELS, UNCHANGED_COLOR } from "./palette.ts";

const COLS = 128;
const ROWS = 16;
const PITCH = 7;
const GAP = 1;
/** Zoom step of one wheel notch or button press. */
const ZOOM = 8;

/** A chunk range of one image. */
export interface Region {
  /** ImageKind. */
  kind: number;
  /** First chunk. */
  start: number;
  /** One past the last chunk. */
  end: number;
}

/** One image's map. */
export class MapView {
  readonly kind: number;
  readonly #map: ChunkMap;
  readonly #total: number;
  readonly #canvas: HTMLCanvasElement;
  readonly #label: HTMLElement;
  readonly #onSelect: (r: Region) => void;
  #start = 0;
  #end: number;
  #cells = 0;
  #counts: Uint32Array = new Uint32Array(0);
  /** Segments of the boot set (0: none). */
  readonly #bootSegments: number;
  #boot: Uint32Array = new Uint32Array(0);
  #selected: Region | null = null;
  #queued = false;

  /** @param el container @param map the chunk map @param kind ImageKind @param onSelect called with the clicked cell's chunks @param bootSegments segments of the boot set (0: none) */
  constructor(el: HTMLElement, map: ChunkMap, kind: number, onSelect: (r: Region) => void, bootSegments = 0) {
    this.kind = kind;
    this.#bootSegments = bootSegments;
    this.#map = map;
    this.#total = Math.max(1, map.imageChunks[kind]);
    this.#end = this.#total;
    this.#onSelect = onSelect;
    this.#canvas = h("canvas", { class: "map", "data-kind": KIND_NAMES[kind] });
    this.#label = h("span", { class: "range" });
    const changed = map.count(kind, 0, this.#total);
    fill(
      el,
      h(
        "div",
        { class: "map-head" },
        h("h3", {}, `${KIND_NAMES[kind]} `, h("small", {}, `${formatBytes(map.imageChunks[kind] * CHUNK)}, ${int(changed)} changed chunks`)),
        h(
          "span",
          { class: "zoom" },
          this.#label,
          h("button", { title: "zoom in (or double-click a cell, or use the wheel)", onclick: () => this.#zoomAt(this.#centre(), 1 / ZOOM), "data-zoom": "in" }, "+"),
          h("button", { title: "zoom out", onclick: () => this.#zoomAt(this.#centre(), ZOOM), "data-zoom": "out" }, "−"),
          h("button", { title: "the whole image", onclick: () => this.setView(0, this.#total), "data-zoom": "all" }, "whole image"),
        ),
      ),
      this.#canvas,
    );
    this.#canvas.addEventListener("click", (e) => {
      const c = this.#cellAt(e);
      if (c >= 0) this.select(this.#cellRange(c));
    });
    this.#canvas.addEventListener("dblclick", (e) => {
      const c = this.#cellAt(e);
      if (c >= 0) this.#zoomAt(this.#cellRange(c).start, 1 / ZOOM);
    });
    this.#canvas.addEventListener("wheel", (e) => {
      const c = this.#cellAt(e);
      if (c < 0) return;
      e.preventDefault();
      this.#zoomAt(this.#cellRange(c).start, e.deltaY < 0 ? 1 / ZOOM : ZOOM);
    });
    this.#canvas.addEventListener("mousemove", (e) => {
      const c = this.#cellAt(e);
      this.#canvas.title = c >= 0 ? this.#describe(c) : "";
    });
    this.draw();
  }

  /** Shows chunks `[start, end)`. */
  setView(start: number, end: number): void {
    this.#start = Math.max(0, Math.floor(start));
    this.#end = Math.min(this.#total, Math.max(this.#start + 1, Math.ceil(end)));
    this.draw();
  }

  /** Selects a region and tells the listener. */
  select(r: Region): void {
    this.#selected = r;
    this.draw();
    this.#onSelect(r);
  }

  /** Clears the selection outline (another map was clicked). */
  unselect(): void {
    if (!this.#selected) return;
    this.#selected = null;
    this.draw();
  }

  /** Redraws at the next frame; many segment events collapse into one draw. */
  redrawSoon(): void {
    if (this.#queued) return;
    this.#queued = true;
    requestAnimationFrame(() => {
      this.#queued = false;
      this.draw();
    });
  }

  /** Scrolls the map into view and returns the viewport coordinates of the cell showing chunk `index`, or null when it is not in view. */
  revealCell(index: number): { x: number; y: number } | null {
    if (index < this.#start || index >= this.#end) return null;
    const c = Math.min(this.#cells - 1, Math.floor(((index - this.#start) * this.#cells) / (this.#end - this.#start)));
    this.#canvas.scrollIntoView({ block: "center" });
    const box = this.#canvas.getBoundingClientRect();
    return { x: box.left + (c % COLS) * PITCH + PITCH / 2, y: box.top + Math.floor(c / COLS) * PITCH + PITCH / 2 };
  }

  /** Draws the current view. */
  draw(): void {
    const len = this.#end - this.#start;
    this.#cells = Math.min(len, COLS * ROWS);
    this.#boot = new Uint32Array(this.#cells);
    this.#counts = this.#map.cells(this.kind, this.#start, this.#end, this.#cells, this.#bootSegments ? { segments: this.#bootSegments, counts: this.#boot } : undefined);
    const rows = Math.ceil(this.#cells / COLS);
    const dpr = globalThis.devicePixelRatio || 1;
    const w = COLS * PITCH;
    const hgt = rows * PITCH;
    const cv = this.#canvas;
    if (cv.width !== w * dpr || cv.height !== hgt * dpr) {
      cv.width = w * dpr;
      cv.height = hgt * dpr;
      cv.style.width = `${w}px`;
      cv.style.height = `${hgt}px`;
    }
    const g = cv.getContext("2d");
    if (!g) return;
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hgt);
    for (let c = 0; c < this.#cells; c++) {
      g.fillStyle = this.#colour(c);
      g.fillRect((c % COLS) * PITCH, Math.floor(c / COLS) * PITCH, PITCH - GAP, PITCH - GAP);
    }
    let bootCells = 0;
    g.fillStyle = BOOT_COLOR;
    for (let c = 0; c < this.#cells; c++) {
      if (!this.#boot[c]) continue;
      bootCells++;
      g.fillRect((c % COLS) * PITCH, Math.floor(c / COLS) * PITCH + PITCH - GAP - 2, PITCH - GAP, 2);
    }
    const sel = this.#selected;
    if (sel && sel.kind === this.kind && sel.end > this.#start && sel.start < this.#end) {
      g.strokeStyle = "#111827";
      g.lineWidth = 1.5;
      const first = Math.max(0, Math.floor(((sel.start - this.#start) * this.#cells) / len));
      const last = Math.min(this.#cells - 1, Math.floor(((sel.end - 1 - this.#start) * this.#cells) / len));
      for (let c = first; c <= last; c++) g.strokeRect((c % COLS) * PITCH - 0.5, Math.floor(c / COLS) * PITCH - 0.5, PITCH, PITCH);
    }
    cv.dataset.start = String(this.#start);
    cv.dataset.end = String(this.#end);
    cv.dataset.bootCells = String(bootCells);
    this.#label.textContent = `chunks ${int(this.#start)}–${int(this.#end - 1)} · ${formatBytes(len * CHUNK)} · ${this.#cells === len ? "1 chunk" : `~${int(Math.round(len / this.#cells))} chunks`} per cell`;
  }

  #colour(c: number): string {
    let best = -1;
    let bestN = 0;
    for (let k = 0; k < CELL_STRIDE; k++) {
      const n = this.#counts[c * CELL_STRIDE + k];
      if (n > bestN || (n === bestN && n > 0)) {
        best = k;
        bestN = n;
      }
    }
    return best < 0 ? UNCHANGED_COLOR : CLASS_COLORS[best];
  }

  #describe(c: number): string {
    const r = this.#cellRange(c);
    const parts: string[] = [];
    for (let k = 0; k < CELL_STRIDE; k++) {
      const n = this.#counts[c * CELL_STRIDE + k];
      if (n) parts.push(`${int(n)} ${CLASS_LABELS[k]}`);
    }
    if (this.#boot[c]) parts.push(`${int(this.#boot[c])} in the boot set`);
    const span = r.end - r.start === 1 ? `chunk ${int(r.start)}` : `chunks ${int(r.start)}–${int(r.end - 1)}`;
    return `${KIND_NAMES[this.kind]} ${span} (bytes ${hex(r.start * CHUNK)}–${hex(r.end * CHUNK - 1)}): ${parts.join(", ") || "unchanged"}`;
  }

  /** The chunks cell `c` covers; consistent with ChunkMap.cells (floor((i - start) * cells / len)). */
  #cellRange(c: number): Region {
    const len = this.#end - this.#start;
    return { kind: this.kind, start: this.#start + Math.ceil((c * len) / this.#cells), end: this.#start + Math.ceil(((c + 1) * len) / this.#cells) };
  }

  #cellAt(e: MouseEvent): number {
    const box = this.#canvas.getBoundingClientRect();
    const col = Math.floor((e.clientX - box.left) / PITCH);
    const row = Math.floor((e.clientY - box.top) / PITCH);
    const c = row * COLS + col;
    return col >= 0 && col < COLS && row >= 0 && c < this.#cells ? c : -1;
  }

  #centre(): number {
    const sel = this.#selected;
    if (sel && sel.kind === this.kind && sel.start >= this.#start && sel.start < this.#end) return sel.start;
    return (this.#start + this.#end) / 2;
  }

  /** Zooms by `factor` (< 1 in) keeping chunk `at` in view. */
  #zoomAt(at: number, factor: number): void {
    const len = this.#end - this.#start;
    const next = Math.min(this.#total, Math.max(Math.min(COLS, this.#total), Math.round(len * factor)));
    const rel = (at - this.#start) / len;
    let start = Math.round(at - rel * next);
    start = Math.max(0, Math.min(this.#total - next, start));
    this.setView(start, start + next);
  }
}
