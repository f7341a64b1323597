/**
 * UploadFeed: the segments of an overlay upload, handed to synthesis as
 * they complete. The meta arrived first (and was checked); then one or more
 * upload requests deliver the segment bytes in order, and (early start) single
 * segments may arrive out of order beside them ({@link UploadFeed.put}).
 *
 * The resume offset ({@link UploadFeed.offset}) is the end of the longest run
 * of held segments from the first: an in-order upload starts there, so it
 * skips segments already sent out of order. If a request is cut off, the bytes
 * of its incomplete segment are dropped; the offset is always a segment boundary.
 * An in-order body that reaches a segment already held reads its bytes and
 * drops them (they still have to match its hash).
 *
 * Memory stays bounded: a request waits (backpressure on the socket) while
 * `maxAhead` complete segments are waiting to be decoded; a segment synthesis
 * is waiting for is handed over at once.
 *
 * Each segment's compressed hash is checked as it completes, so a corrupt
 * segment fails the upload at once, whatever the client sends (or stops
 * sending) next; synthesis checks it again before decoding.
 */
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import { hashHex, type OverlayMeta } from "../overlay/format.ts";
import type { OverlayReader } from "../overlay/reader.ts";

interface Waiter {
  resolve: (b: Uint8Array) => void;
  reject: (e: unknown) => void;
}


/** Segment bytes arriving over one or more requests, as an OverlayReader. */
export class UploadFeed implements OverlayReader {
  /** Complete segments not yet taken by synthesis, by index. */
  private readonly ready = new Map<number, Uint8Array>();
  private readonly waiters = new Map<number, Waiter[]>();
  /** Per segment: 1 once it arrived complete and checked (by either path). */
  private readonly held: Uint8Array;
  /** Index of the first segment not held: the resume point. */
  private prefix = 0;
  /** Bytes of segments 0..prefix-1 (the resume offset). */
  private committed = 0;
  private heldCount = 0;
  private failure: unknown = null;
  /** Requests waiting for synthesis to take segments. */
  private readonly space = new Set<() => void>();
  /** Wakes an upload waiting for bytes when the feed fails, so it stops at once. */
  private wake: ((e: unknown) => void) | null = null;
  private ingesting = false;
  /** The segment the in-order upload's bytes are filling now (while one runs). */
  private streamAt = 0;
  /** The in-order upload waits for synthesis to take segments (the memory bound): it brings nothing meanwhile. */
  private streamWaiting = false;
  /** Segments being received out of order right now (one request each). */
  private readonly putting = new Set<number>();
  /** Segments synthesis asked for out of order that have not arrived; told to {@link UploadFeed.onWant}. */
  private readonly wanted = new Set<number>();
  /** Told when synthesis waits for a segment past the one the in-order stream brings now (early start); null: nobody serves wants. */
  onWant: ((i: number) => void) | null = null;
  readonly totalBytes: number;
  private readonly dataBytes: number;

  /** @param core for segment hashes @param meta the accepted meta @param name label for messages @param maxAhead complete segments held before uploads wait */
  constructor(
    private readonly core: Core,
    readonly meta: OverlayMeta,
    readonly name: string,
    private readonly maxAhead = 4,
  ) {
    this.dataBytes = meta.segments.reduce((t, s) => t + s.compressedSize, 0);
    this.totalBytes = this.dataBytes;
    this.held = new Uint8Array(meta.segments.length);
  }

  /** True once the feed has failed (a corrupt segment, or the session ended). */
  get failed(): boolean {
    return this.failure !== null;
  }

  /** Bytes of segment data in the run of complete segments from the first: where an in-order upload (re)starts. */
  get offset(): number {
    return this.committed;
  }

  /** True once every segment has arrived. */
  get complete(): boolean {
    return this.heldCount === this.meta.segments.length;
  }

  /** Bytes of segment data expected in all. */
  get expected(): number {
    return this.dataBytes;
  }

  /** True once segment `i` arrived. */
  has(i: number): boolean {
    return this.held[i] === 1;
  }

  /** True once segment `i` has arrived whole (see {@link OverlayReader.segmentArrived}). */
  segmentArrived(i: number): boolean {
    return this.held[i] === 1;
  }

  /** Segments asked for out of order and not yet arrived, lowest first. */
  pendingWants(): number[] {
    return [...this.wanted].sort((a, b) => a - b);
  }

  segmentFile(): string {
    return this.name;
  }

  segment(i: number): Promise<Uint8Array> {
    if (this.failure) return Promise.reject(this.failure);
    const b = this.ready.get(i);
    if (b) {
      this.ready.delete(i);
      this.freeSpace();
      return Promise.resolve(b);
    }
    const p = new Promise<Uint8Array>((resolve, reject) => {
      const ws = this.waiters.get(i) ?? [];
      ws.push({ resolve, reject });
      this.waiters.set(i, ws);
    });
    this.maybeWant(i);
    return p;
  }

  /**
   * Asks for segment `i` out of order when the in-order stream will not bring it
   * next: the segment it is bringing now (or, between requests, the resume
   * point) is left to it; any later one is asked for, and every one while the
   * stream waits on the memory bound.
   */
  private maybeWant(i: number): void {
    if (!this.onWant || this.held[i] || this.wanted.has(i)) return;
    let next = !this.ingesting ? this.prefix : this.streamWaiting ? -1 : this.streamAt;
    // Held segments are skipped: the client's upload ends before one and resumes past it.
    while (next >= 0 && next < i && this.held[next]) next++;
    if (i <= next) return;
    this.wanted.add(i);
    this.onWant(i);
  }

  /** The stream stopped or started waiting: segments synthesis waits for may now have to be asked for. */
  private wantWaiting(): void {
    for (const i of this.waiters.keys()) this.maybeWant(i);
  }

  /** Fails every waiting and future segment request. */
  fail(e: unknown): void {
    this.failure ??= e;
    this.wake?.(this.failure);
    for (const ws of this.waiters.values()) for (const w of ws) w.reject(e);
    this.waiters.clear();
    this.freeSpace();
  }

  /**
   * Consumes one in-order upload request body that starts at byte `offset` of
   * the segment data (a segment boundary: the current {@link offset}).
   * Returns when the body ends (complete or cut off).
   */
  async ingest(body: AsyncIterable<Uint8Array>, offset: number): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.ingesting) throw new CloudletError("REMOTE", "another upload for this session is in progress");
    if (offset !== this.committed) throw new CloudletError("REMOTE", `upload must resume at offset ${this.committed}, not ${offset}`);
    this.ingesting = true;
    // The segment this body's next bytes belong to: bodies are positional, so this moves one at a time.
    let at = (this.streamAt = this.prefix);
    let buf: Uint8Array | null = null;
    let have = 0;
    const it = body[Symbol.asyncIterator]();
    try {
      for (;;) {
        // Waits for bytes or for the feed to fail (DELETE, a corrupt segment), whichever comes first.
        // (One promise per read, not a race against one long-lived promise, which would keep a reaction per read.)
        const next = it.next();
        const r = await new Promise<IteratorResult<Uint8Array>>((resolve, reject) => {
          this.wake = reject;
          next.then(resolve, reject);
        });
        this.wake = null;
        if (r.done) break;
        let p = r.value;
        while (p.length) {
          if (at === this.meta.segments.length) throw new CloudletError("REMOTE", "the upload is longer than the overlay's segments");
          const want = this.meta.segments[at].compressedSize;
          buf ??= new Uint8Array(want);
          const k = Math.min(want - have, p.length);
          buf.set(p.subarray(0, k), have);
          have += k;
          p = p.subarray(k);
          if (have === want) {
            this.check(at, buf);
            const done = at;
            // Moved on before the handover: synthesis, handed this segment, asks for the next one at once,
            // and that one is the stream's to bring, not a want.
            this.streamAt = ++at;
            // Sent out of order meanwhile (or being sent): these bytes are a duplicate.
            if (!this.held[done] && !this.putting.has(done)) await this.accept(done, buf, true);
            buf = null;
            have = 0;
          }
        }
        if (this.failure) throw this.failure;
      }
    } finally {
      this.wake = null;
      this.ingesting = false;
      this.wantWaiting();
    }
  }

  /**
   * An in-order body from byte `offset` (a segment boundary), ended at the
   * start of the first later segment already held (fetched out of order
   * meanwhile), so that its source is not read for bytes {@link ingest} would
   * drop: the next body starts at the new {@link offset}, past the held run.
   */
  async *untilHeld(body: AsyncIterable<Uint8Array>, offset: number): AsyncGenerator<Uint8Array> {
    const sizes = this.meta.segments.map((g) => g.compressedSize);
    // The segment `offset` lies in, and the bytes left of it.
    let seg = 0;
    let end = 0;
    while (seg < sizes.length && end + sizes[seg] <= offset) end += sizes[seg++];
    let left = seg < sizes.length ? end + sizes[seg] - offset : 0;
    for await (let c of body) {
      while (c.length) {
        if (left === 0) {
          // Past the last segment: pass the rest on; ingest refuses a body longer than the overlay.
          if (++seg >= sizes.length) {
            yield c;
            break;
          }
          left = sizes[seg];
          if (this.held[seg]) return;
        }
        const k = Math.min(left, c.length);
        yield c.subarray(0, k);
        c = c.subarray(k);
        left -= k;
      }
    }
  }

  /**
   * Receives segment `i` on its own (out of order): exactly its compressed
   * size (from the meta; a longer body is refused before it is read past
   * the limit), checked against its hash. Returns false when the segment was
   * already held (the body is read and dropped).
   */
  async put(i: number, body: AsyncIterable<Uint8Array>): Promise<boolean> {
    if (this.failure) throw this.failure;
    if (!Number.isSafeInteger(i) || i < 0 || i >= this.meta.segments.length) throw new CloudletError("REMOTE", `no segment ${i + 1}: the overlay has ${this.meta.segments.length}`);
    if (this.putting.has(i)) throw new CloudletError("REMOTE", `segment ${i + 1} is already being sent`);
    const size = this.meta.segments[i].compressedSize;
    const dup = this.held[i] === 1;
    this.putting.add(i);
    try {
      const buf = new Uint8Array(size);
      let have = 0;
      for await (const c of body) {
        if (this.failure) throw this.failure;
        if (have + c.length > size) throw new CloudletError("REMOTE", `segment ${i + 1} is ${size} bytes; the request sent more`);
        buf.set(c, have);
        have += c.length;
      }
      if (have !== size) throw new CloudletError("REMOTE", `segment ${i + 1} is ${size} bytes; the request sent ${have}`);
      this.check(i, buf);
      if (dup || this.held[i]) return false;
      await this.accept(i, buf);
      return true;
    } finally {
      this.putting.delete(i);
    }
  }

  private check(i: number, buf: Uint8Array): void {
    if (hashHex(this.core, buf) !== this.meta.segments[i].hash) {
      const e = new CloudletError("CORRUPT_SEGMENT", `segment ${i + 1} is corrupt: its hash does not match the meta`, this.name);
      this.fail(e);
      throw e;
    }
  }

  /** Marks segment `i` held, moves the resume point over it, and hands it to synthesis. */
  private async accept(i: number, bytes: Uint8Array, fromStream = false): Promise<void> {
    this.held[i] = 1;
    this.heldCount++;
    this.wanted.delete(i);
    while (this.prefix < this.held.length && this.held[this.prefix]) this.committed += this.meta.segments[this.prefix++].compressedSize;
    const ws = this.waiters.get(i);
    if (ws) {
      this.waiters.delete(i);
      for (const w of ws) w.resolve(bytes);
      return;
    }
    this.ready.set(i, bytes);
    // Backpressure: hold the request until synthesis takes segments.
    if (this.ready.size <= this.maxAhead || this.failure) return;
    if (fromStream) {
      this.streamWaiting = true;
      this.wantWaiting();
    }
    try {
      while (this.ready.size > this.maxAhead && !this.failure) await new Promise<void>((r) => this.space.add(r));
    } finally {
      if (fromStream) this.streamWaiting = false;
    }
  }

  private freeSpace(): void {
    const all = [...this.space];
    this.space.clear();
    for (const r of all) r();
  }
}
