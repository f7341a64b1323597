/**
 * An OverlayReader over a byte stream of a packed overlay: the meta is read
 * first, then segments are handed out in order as their bytes arrive. This
 * is what makes synthesis pipelined: the first segment is decoded and
 * applied while later ones are still in flight.
 *
 * Reads are pulled, so a slow consumer slows the producer down (backpressure)
 * instead of buffering the overlay in memory: at most the segments that
 * synthesis asked for ahead of time are held.
 */
import type { Core } from "../core/core.ts";
import { CloudletError } from "../errors.ts";
import { decodePackedHead, decodePackHeader, HEADER_BYTES } from "./format.ts";
import type { OverlayReader } from "./reader.ts";

/** Pulls exact byte counts from a ReadableStream. */
export class StreamBytes {
  private readonly reader: ReadableStreamDefaultReader<Uint8Array>;
  private buf: Uint8Array = new Uint8Array(0);
  private pos = 0;
  /** Bytes consumed so far. */
  consumed = 0;
  /** @param stream the bytes @param name label for messages */
  constructor(
    stream: ReadableStream<Uint8Array>,
    readonly name: string,
  ) {
    this.reader = stream.getReader();
  }

  /** Exactly `n` bytes; TRUNCATED when the stream ends first. */
  async take(n: number, what: string): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      if (this.pos === this.buf.length) {
        const { value, done } = await this.reader.read();
        if (done) throw new CloudletError("TRUNCATED", `${what} is truncated: the overlay stream ended after ${this.consumed + got} bytes`, this.name);
        this.buf = value;
        this.pos = 0;
        continue;
      }
      const k = Math.min(n - got, this.buf.length - this.pos);
      out.set(this.buf.subarray(this.pos, this.pos + k), got);
      this.pos += k;
      got += k;
    }
    this.consumed += n;
    return out;
  }

  /** True when the stream has no more bytes. */
  async atEnd(): Promise<boolean> {
    if (this.pos < this.buf.length) return false;
    const { value, done } = await this.reader.read();
    if (done) return true;
    this.buf = value;
    this.pos = 0;
    return value.length === 0 ? this.atEnd() : false;
  }

  /** Stops reading and releases the stream. */
  async cancel(reason?: unknown): Promise<void> {
    await this.reader.cancel(reason).catch(() => {});
  }
}

/** A reader whose segments must be requested in order 0, 1, 2, ... */
export interface StreamOverlayReader extends OverlayReader {
  /** Bytes of the stream consumed so far. */
  readonly consumed: () => number;
  /** Resolves after the last segment, rejecting if trailing bytes follow. */
  readonly finished: () => Promise<void>;
  /** Abandons the stream. */
  cancel(reason?: unknown): Promise<void>;
}

/** Reads the header and meta of a packed overlay stream and returns a sequential reader. */
export async function openPackedStream(core: Core, stream: ReadableStream<Uint8Array>, name: string): Promise<StreamOverlayReader> {
  const bytes = new StreamBytes(stream, name);
  try {
    const head = await bytes.take(HEADER_BYTES, "packed overlay header");
    // The header alone first: its checked meta length bounds what is taken next.
    const { metaLength } = decodePackHeader(core, head, name);
    const { header: h, meta } = decodePackedHead(core, head, await bytes.take(metaLength, "overlay meta"), name);
    let next = 0;
    let chain: Promise<unknown> = Promise.resolve();
    return {
      meta,
      name,
      totalBytes: h.totalLength,
      segmentFile: () => name,
      consumed: () => bytes.consumed,
      segment(i: number): Promise<Uint8Array> {
        if (i !== next) return Promise.reject(new Error(`stream reader: segment ${i + 1} requested out of order (next is ${next + 1})`));
        next++;
        const p = chain.then(() => bytes.take(meta.segments[i].compressedSize, `segment ${i + 1}`));
        chain = p.catch(() => {});
        return p;
      },
      finished: async () => {
        await chain;
        if (!(await bytes.atEnd())) throw new CloudletError("BAD_META", "unexpected bytes after the last segment", name);
      },
      cancel: (reason) => bytes.cancel(reason),
    };
  } catch (e) {
    await bytes.cancel(e);
    throw e;
  }
}
