/**
 * UploadFeed: the segments of an overlay upload, handed to synthesis as
 * they complete. The meta arrived first (and was checked); then one or more
 * upload requests deliver the segment bytes. If a request is cut off, the
 * bytes of the incomplete segment are dropped and the client resumes at
 * {@link UploadFeed.offset}, a segment boundary.
 *
 * Memory stays bounded: an upload waits (backpressure on the socket) while
 * `maxAhead` complete segments are waiting to be decoded.
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
  private readonly waiters = new Map<number, Waiter>();
  /** Index of the segment being received. */
  private receiving = 0;
  /** Bytes of complete segments (the resume offset). */
  private committed = 0;
  private failure: unknown = null;
  private space: (() => void) | null = null;
  /** Wakes an upload waiting for bytes when the feed fails, so it stops at once. */
  private wake: ((e: unknown) => void) | null = null;
  private ingesting = false;
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
  }

  /** True once the feed has failed (a corrupt segment, or the session ended). */
  get failed(): boolean {
    return this.failure !== null;
  }

  /** Bytes of segment data received in complete segments: where an upload (re)starts. */
  get offset(): number {
    return this.committed;
  }

  /** True once every segment has arrived. */
  get complete(): boolean {
    return this.receiving === this.meta.segments.length;
  }

  /** Bytes of segment data expected in all. */
  get expected(): number {
    return this.dataBytes;
  }

  segmentFile(): string {
    return this.name;
  }

  segment(i: number): Promise<Uint8Array> {
    if (this.failure) return Promise.reject(this.failure);
    const b = this.ready.get(i);
    if (b) {
      this.ready.delete(i);
      this.space?.();
      return Promise.resolve(b);
    }
    return new Promise((resolve, reject) => this.waiters.set(i, { resolve, reject }));
  }

  /** Fails every waiting and future segment request. */
  fail(e: unknown): void {
    this.failure ??= e;
    this.wake?.(this.failure);
    for (const w of this.waiters.values()) w.reject(e);
    this.waiters.clear();
    this.space?.();
  }

  /**
   * Consumes one upload request body that starts at byte `offset` of the
   * segment data. Returns when the body ends (complete or cut off).
   */
  async ingest(body: AsyncIterable<Uint8Array>, offset: number): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.ingesting) throw new CloudletError("REMOTE", "another upload for this session is in progress");
    if (offset !== this.committed) throw new CloudletError("REMOTE", `upload must resume at offset ${this.committed}, not ${offset}`);
    this.ingesting = true;
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
          if (this.complete) throw new CloudletError("REMOTE", "the upload is longer than the overlay's segments");
          const want = this.meta.segments[this.receiving].compressedSize;
          buf ??= new Uint8Array(want);
          const k = Math.min(want - have, p.length);
          buf.set(p.subarray(0, k), have);
          have += k;
          p = p.subarray(k);
          if (have === want) {
            if (hashHex(this.core, buf) !== this.meta.segments[this.receiving].hash) {
              const e = new CloudletError("CORRUPT_SEGMENT", `segment ${this.receiving + 1} is corrupt: its hash does not match the meta`, this.name);
              this.fail(e);
              throw e;
            }
            await this.deliver(this.receiving, buf);
            this.receiving++;
            this.committed += want;
            buf = null;
            have = 0;
          }
        }
        if (this.failure) throw this.failure;
      }
    } finally {
      this.wake = null;
      this.ingesting = false;
    }
  }

  private async deliver(i: number, bytes: Uint8Array): Promise<void> {
    const w = this.waiters.get(i);
    if (w) {
      this.waiters.delete(i);
      w.resolve(bytes);
      return;
    }
    this.ready.set(i, bytes);
    // Backpressure: hold the upload until synthesis takes segments.
    while (this.ready.size > this.maxAhead && !this.failure) await new Promise<void>((r) => (this.space = r));
  }
}
