/**
 * A simulated link in front of an overlay: an {@link OverlayReader} whose
 * segments arrive in order at a fixed bit rate, the meta first. Asking for a
 * segment that has not arrived yet moves it to the front of the send queue,
 * the semantics of a priority channel ("want segment N") beside an in-order
 * upload. Runtime-neutral (timers and `performance.now()` only).
 *
 * ```text
 *   link:  meta | seg 0 | seg 1 | seg 7 (asked for) | seg 2 | ...     at R bit/s, back to back
 *   segment(i): resolves when the link has delivered i; the bytes come from the inner reader
 * ```
 *
 * The link sends one segment at a time and never preempts one in flight: a
 * request waits for it, then its segment goes next. Requests queue first
 * come, first served. A request for one of the next few segments in order
 * (`horizon`) is not raised: those come next anyway. The link runs whether
 * or not anyone reads, as an upload does: delivery times depend only on the rate and the requests.
 */
import { type Deferred, deferred } from "../deferred.ts";
import { CloudletError } from "../errors.ts";
import type { OverlayReader } from "./reader.ts";

/** One delivery on the link. */
export interface LinkDelivery {
  /** Segment index, or -1 for the meta. */
  segment: number;
  /** Milliseconds since the link started. */
  atMs: number;
  /** Bytes delivered so far, this one included. */
  bytes: number;
  /** True when a request moved this segment ahead of the in-order stream. */
  raised: boolean;
}

/** Options for {@link RateLimitedReader}. */
export interface RateLimitOptions {
  /** Link rate in bits per second. */
  bitsPerSecond: number;
  /** Meta bytes sent before the first segment (default: what the inner reader's total holds beyond its segments). */
  metaBytes?: number;
  /**
   * A request for one of the next `horizon` segments of the in-order stream
   * is not raised: they come next anyway (default 4, a reader's read-ahead).
   * Raising them would queue a reader's read-ahead in front of later
   * requests for segments far ahead, which are the ones that need the jump.
   */
  horizon?: number;
  /** Segments to send first, in this order, before the in-order stream (e.g. a working set known in advance). */
  first?: number[];
}

/** An overlay reader fed through a simulated link; call {@link start} to start sending. */
export class RateLimitedReader implements OverlayReader {
  readonly meta;
  readonly metaBytes;
  readonly name: string;
  readonly totalBytes: number;
  /** Deliveries in the order they happened. */
  readonly deliveries: LinkDelivery[] = [];
  private readonly arrived: Uint8Array;
  private readonly waiters = new Map<number, Deferred<void>>();
  private readonly wanted: number[] = [];
  private readonly metaSize: number;
  private readonly bytesPerMs: number;
  private readonly horizon: number;
  private cursor = 0;
  private inFlight = -2;
  private sent = 0;
  private t0 = -1;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private closed: unknown = null;
  private finish!: () => void;
  /** Resolves when the last byte has been delivered. */
  readonly done: Promise<void>;

  constructor(
    private readonly inner: OverlayReader,
    o: RateLimitOptions,
  ) {
    if (!(o.bitsPerSecond > 0) || !Number.isFinite(o.bitsPerSecond)) throw new CloudletError("BAD_ARGUMENT", `link rate must be a positive number of bits per second, not ${o.bitsPerSecond}`);
    this.meta = inner.meta;
    this.metaBytes = inner.metaBytes;
    this.name = inner.name;
    this.totalBytes = inner.totalBytes;
    this.arrived = new Uint8Array(inner.meta.segments.length);
    const segBytes = inner.meta.segments.reduce((t, s) => t + s.compressedSize, 0);
    this.metaSize = o.metaBytes ?? Math.max(0, inner.totalBytes - segBytes);
    this.bytesPerMs = o.bitsPerSecond / 8000;
    this.horizon = o.horizon ?? 4;
    for (const i of o.first ?? []) if (i >= 0 && i < this.arrived.length && !this.wanted.includes(i)) this.wanted.push(i);
    this.done = new Promise((r) => (this.finish = r));
  }

  /** Starts the link (once); the meta goes first. Returns a promise that resolves when the meta has arrived. */
  start(): Promise<void> {
    if (this.t0 < 0) {
      this.t0 = performance.now();
      this.inFlight = -1;
      this.schedule(-1, this.metaSize);
    }
    return this.whenArrived(-1);
  }

  /** Milliseconds since {@link start}. */
  elapsedMs(): number {
    return this.t0 < 0 ? 0 : performance.now() - this.t0;
  }

  /** Bytes delivered (meta and whole segments) at `atMs` after the start; default now. */
  bytesDeliveredAt(atMs = this.elapsedMs()): number {
    let b = 0;
    for (const d of this.deliveries) if (d.atMs <= atMs) b = d.bytes;
    return b;
  }

  /** Segments a request moved ahead of the in-order stream. */
  get raisedCount(): number {
    return this.deliveries.filter((d) => d.raised).length;
  }

  /** Whether segment `i` has arrived. */
  hasArrived(i: number): boolean {
    return this.arrived[i] === 1;
  }

  /** Waits for segment `i` (raising it when it is neither here nor on the wire), then returns its bytes. */
  async segment(i: number): Promise<Uint8Array> {
    if (!(i >= 0 && i < this.arrived.length)) throw new CloudletError("BAD_ARGUMENT", `segment ${i + 1} does not exist (the overlay has ${this.arrived.length})`, this.name);
    if (!this.arrived[i]) {
      if (i !== this.inFlight && !this.wanted.includes(i) && !this.withinHorizon(i)) this.wanted.push(i);
      await this.whenArrived(i);
    }
    return this.inner.segment(i);
  }

  segmentFile(i: number): string {
    return this.inner.segmentFile(i);
  }

  /** Stops the link; pending and later waits reject. Does not close the inner reader. */
  close(): void {
    if (this.closed) return;
    this.closed = new CloudletError("CANCELLED", "the simulated link was closed", this.name);
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    for (const w of this.waiters.values()) w.reject(this.closed);
  }

  private whenArrived(i: number): Promise<void> {
    if (i >= 0 && this.arrived[i]) return Promise.resolve();
    if (this.closed) return Promise.reject(this.closed);
    let w = this.waiters.get(i);
    if (!w) {
      w = deferred();
      this.waiters.set(i, w);
    }
    return w.promise;
  }

  /**
   * Puts `bytes` of item `i` on the wire; it arrives when the link has carried
   * every byte sent so far. Due times are absolute, and everything already due
   * is delivered at once: a timer that fires late (a busy event loop) does not
   * slow the link down.
   */
  private schedule(i: number, bytes: number): void {
    for (;;) {
      this.sent += bytes;
      const due = this.t0 + this.sent / this.bytesPerMs;
      const raised = i >= 0 && i !== this.lowestMissing();
      if (due > performance.now()) {
        this.timer = setTimeout(() => this.deliver(i, raised), due - performance.now());
        return;
      }
      const next = this.deliverNow(i, raised);
      if (next < 0) return;
      i = next;
      bytes = this.meta.segments[next].compressedSize;
    }
  }

  private deliver(i: number, raised: boolean): void {
    this.timer = null;
    const next = this.deliverNow(i, raised);
    if (next >= 0) this.schedule(next, this.meta.segments[next].compressedSize);
  }

  /** Marks `i` arrived and wakes its readers; returns the next segment to send, or -1 (all sent, or closed). */
  private deliverNow(i: number, raised: boolean): number {
    if (this.closed) return -1;
    if (i >= 0) this.arrived[i] = 1;
    this.deliveries.push({ segment: i, atMs: performance.now() - this.t0, bytes: this.sent, raised });
    this.waiters.get(i)?.resolve();
    this.waiters.delete(i);
    const next = this.pickNext();
    this.inFlight = next;
    if (next < 0) this.finish();
    return next;
  }

  /** Whether `i` is among the next `horizon` segments the in-order stream sends (not counting the one in flight). */
  private withinHorizon(i: number): boolean {
    let ahead = 0;
    for (let j = this.lowestMissing(); j < this.arrived.length && ahead < this.horizon; j++) {
      if (this.arrived[j] || j === this.inFlight) continue;
      if (j === i) return true;
      ahead++;
    }
    return false;
  }

  private lowestMissing(): number {
    while (this.cursor < this.arrived.length && this.arrived[this.cursor]) this.cursor++;
    return this.cursor;
  }

  /** The next segment to send: the oldest request still missing, else the lowest missing segment; -1 when all arrived. */
  private pickNext(): number {
    while (this.wanted.length) {
      const j = this.wanted.shift()!;
      if (!this.arrived[j]) return j;
    }
    const c = this.lowestMissing();
    return c < this.arrived.length ? c : -1;
  }
}
