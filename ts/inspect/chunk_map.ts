/**
 * ChunkMap: which chunks of each image an overlay rewrites, and how, kept as
 * typed arrays (one class byte per record) so that the map of a 1 GB overlay
 * costs a few MiB, never the data. Runtime-neutral.
 *
 * The meta already says which chunks each segment covers (its ranges, in
 * record order); decoding a segment adds only the class of each record. So
 * the map is laid out from the meta at once and filled in segment by
 * segment as the decoder gets there:
 *
 * ```text
 *   global record g = segmentStart[s] + record r of segment s
 *   classes[g]      = ChunkClass, or PENDING / UNREADABLE
 *   runs[kind]      = the meta's ranges of that kind sorted by first chunk,
 *                     each with the global record number of its first chunk
 * ```
 */
import { KIND_COUNT, type OverlayMeta } from "../overlay/format.ts";

/** Class byte of a chunk whose segment has not been decoded yet. */
export const PENDING = 6;
/** Class byte of a chunk whose segment failed its checks. */
export const UNREADABLE = 7;
/** Counters per map cell: the six classes, then PENDING and UNREADABLE. */
export const CELL_STRIDE = 8;

/** One changed chunk, as a row of the region table. */
export interface ChunkRow {
  /** ImageKind. */
  kind: number;
  /** Chunk index in its image. */
  index: number;
  /** ChunkClass, PENDING or UNREADABLE. */
  cls: number;
  /** 0-based segment. */
  segment: number;
  /** Record number within the segment. */
  record: number;
}

interface KindRuns {
  /** First chunk of each run, ascending. */
  first: Float64Array;
  /** Chunks in each run. */
  count: Float64Array;
  /** Global record number of each run's first chunk. */
  record: Float64Array;
}

/** The per-chunk class map of one overlay. */
export class ChunkMap {
  /** Records over all segments. */
  readonly totalRecords: number;
  /** Global record number of each segment's first record; one extra entry at the end. */
  readonly segmentStart: Float64Array;
  /** Class byte per global record. */
  readonly classes: Uint8Array;
  /** Chunks per image kind (image size / chunk size, rounded up). */
  readonly imageChunks: number[];
  readonly #runs: KindRuns[];

  /** Lays the map out from a validated meta; every chunk starts PENDING. */
  constructor(meta: OverlayMeta) {
    const n = meta.segments.length;
    this.segmentStart = new Float64Array(n + 1);
    for (let s = 0; s < n; s++) this.segmentStart[s + 1] = this.segmentStart[s] + meta.segments[s].records;
    this.totalRecords = this.segmentStart[n];
    this.classes = new Uint8Array(this.totalRecords).fill(PENDING);
    this.imageChunks = meta.imageSizes.map((b) => Math.ceil(b / meta.chunkSize));
    const perKind: Array<Array<[number, number, number]>> = Array.from({ length: KIND_COUNT }, () => []);
    meta.segments.forEach((seg, s) => {
      let g = this.segmentStart[s];
      for (const [kind, first, count] of seg.ranges) {
        perKind[kind].push([first, count, g]);
        g += count;
      }
    });
    this.#runs = perKind.map((list) => {
      list.sort((a, b) => a[0] - b[0]);
      return { first: Float64Array.from(list, (r) => r[0]), count: Float64Array.from(list, (r) => r[1]), record: Float64Array.from(list, (r) => r[2]) };
    });
  }

  /** Records the decoded classes of segment `s` (one byte per record, in record order). */
  setSegment(s: number, classes: Uint8Array): void {
    const start = this.segmentStart[s];
    if (classes.length !== this.segmentStart[s + 1] - start) throw new RangeError(`segment ${s + 1}: ${classes.length} classes for ${this.segmentStart[s + 1] - start} records`);
    this.classes.set(classes, start);
  }

  /** Marks every chunk of segment `s` unreadable. */
  failSegment(s: number): void {
    this.classes.fill(UNREADABLE, this.segmentStart[s], this.segmentStart[s + 1]);
  }

  /** The segment that holds global record `g`. */
  segmentOf(g: number): number {
    let lo = 0;
    let hi = this.segmentStart.length - 2;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.segmentStart[mid] <= g) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Where chunk `index` of image `kind` is stored, or null when the overlay leaves it as in the base. */
  locate(kind: number, index: number): ChunkRow | null {
    const r = this.#runs[kind];
    const i = this.#runAt(r, index);
    if (i >= r.first.length || r.first[i] > index) return null;
    const g = r.record[i] + index - r.first[i];
    const segment = this.segmentOf(g);
    return { kind, index, cls: this.classes[g], segment, record: g - this.segmentStart[segment] };
  }

  /** Changed chunks of `kind` in `[start, end)`, ascending, at most `limit` of them. */
  chunks(kind: number, start: number, end: number, limit = Number.POSITIVE_INFINITY): ChunkRow[] {
    const out: ChunkRow[] = [];
    this.#each(kind, start, end, (index, g) => {
      if (out.length >= limit) return false;
      const segment = this.segmentOf(g);
      out.push({ kind, index, cls: this.classes[g], segment, record: g - this.segmentStart[segment] });
      return true;
    });
    return out;
  }

  /** Number of changed chunks of `kind` in `[start, end)`. */
  count(kind: number, start: number, end: number): number {
    const r = this.#runs[kind];
    let n = 0;
    for (let i = this.#runAt(r, start); i < r.first.length && r.first[i] < end; i++) {
      n += Math.min(end, r.first[i] + r.count[i]) - Math.max(start, r.first[i]);
    }
    return n;
  }

  /**
   * Splits `[start, end)` of image `kind` into `cells` equal cells and counts,
   * per cell, the changed chunks of each class: `out[cell * CELL_STRIDE + class]`.
   * Chunk i falls in cell floor((i - start) * cells / (end - start)). With
   * `lead`, the same walk also counts per cell, in `lead.counts`, the chunks
   * held by the first `lead.segments` segments (the boot set: they come first).
   */
  cells(kind: number, start: number, end: number, cells: number, lead?: { segments: number; counts: Uint32Array }): Uint32Array {
    const out = new Uint32Array(cells * CELL_STRIDE);
    const len = end - start;
    const leadRecords = lead ? this.segmentStart[Math.max(0, Math.min(lead.segments, this.segmentStart.length - 1))] : 0;
    this.#each(kind, start, end, (index, g) => {
      const c = Math.min(cells - 1, Math.floor(((index - start) * cells) / len));
      out[c * CELL_STRIDE + this.classes[g]]++;
      if (g < leadRecords) lead!.counts[c]++;
      return true;
    });
    return out;
  }

  /** Chunk counts per [kind][class] over the decoded segments (PENDING/UNREADABLE included). */
  classCounts(): number[][] {
    const out = Array.from({ length: KIND_COUNT }, () => new Array<number>(CELL_STRIDE).fill(0));
    this.#runs.forEach((r, kind) => {
      for (let i = 0; i < r.first.length; i++) {
        for (let g = r.record[i], e = g + r.count[i]; g < e; g++) out[kind][this.classes[g]]++;
      }
    });
    return out;
  }

  /** Bytes this map holds, for the memory budget shown by the page. */
  get memoryBytes(): number {
    return this.classes.byteLength + this.segmentStart.byteLength + this.#runs.reduce((t, r) => t + r.first.byteLength * 3, 0);
  }

  /** Index of the first run that ends after `index`. */
  #runAt(r: KindRuns, index: number): number {
    let lo = 0;
    let hi = r.first.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (r.first[mid] + r.count[mid] <= index) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Calls `fn(index, globalRecord)` for each changed chunk in `[start, end)`, ascending, until it returns false. */
  #each(kind: number, start: number, end: number, fn: (index: number, g: number) => boolean): void {
    const r = this.#runs[kind];
    for (let i = this.#runAt(r, start); i < r.first.length && r.first[i] < end; i++) {
      const from = Math.max(start, r.first[i]);
      const to = Math.min(end, r.first[i] + r.count[i]);
      const g0 = r.record[i] - r.first[i];
      for (let index = from; index < to; index++) if (!fn(index, g0 + index)) return;
    }
  }
}
