/**
 * WorkerCodec: compresses and decompresses segments on worker threads, each
 * with its own WASM instance, so segment work runs on every core while the
 * main thread reads, classifies and writes. node:worker_threads serves Node
 * and Deno alike.
 *
 * Bytes cross between threads as whole ArrayBuffers, never as Uint8Array
 * views: Deno's node:worker_threads copies a typed array element by element
 * (a 4 MiB round trip took ~300 ms there, against ~1 ms for the same bytes as
 * an ArrayBuffer, which both runtimes move without a copy); a synthesis
 * under Deno took 6x as long as under Node because of it.
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { CodecFailure, type CompressOptions, type DecodedHashed, DEFAULT_PRESET, type SegmentCodec } from "../overlay/codec.ts";
import type { ByteSource } from "../overlay/io.ts";
import { FileSource, inputError } from "./files.ts";
import { XZ_MEMLIMIT } from "../core/core.ts";

/** A request to a worker (see codec_worker.mjs). */
interface CodecRequest {
  id: number;
  op: "compress" | "decompress" | "hash" | "decodeHashed" | "hashFd";
  /** The input bytes (the worker wraps them in a Uint8Array). */
  data: ArrayBuffer;
  rawSize: number;
  /** compress: x86 BCJ filter first. */
  x86?: boolean;
  /** decodeHashed: the BLAKE3 the compressed bytes must have, and where the hashed data area starts. */
  expectHash?: ArrayBuffer;
  hashFrom?: number;
  /** hashFd: the descriptor to pread from, and the byte ranges [offset, length] to read back to back. */
  fd?: number;
  ranges?: ReadonlyArray<readonly [number, number]>;
}

/** Default dictionary cap: segments are ~1 MiB, and a larger dictionary only costs memory (bench/README.md). */
export const SEGMENT_DICT_CAP = 1 << 20;

/** The dictionary a segment of `segmentBytes` needs: the next power of two, at least 1 MiB. */
export function dictCapFor(segmentBytes: number): number {
  let d = SEGMENT_DICT_CAP;
  while (d < segmentBytes) d *= 2;
  return d;
}

interface Pending {
  /** The reply's data: its shape depends on the op. */
  resolve: (b: unknown) => void;
  reject: (e: Error) => void;
}

/** A worker's reply data with its ArrayBuffers wrapped again: bytes, or decodeHashed's result object. */
function fromWorker(d: unknown): unknown {
  if (d instanceof ArrayBuffer) return new Uint8Array(d);
  if (d && typeof d === "object") {
    const o = d as Record<string, unknown>;
    for (const k of Object.keys(o)) if (o[k] instanceof ArrayBuffer) o[k] = new Uint8Array(o[k] as ArrayBuffer);
  }
  return d;
}

/** A pool of codec workers. */
export class WorkerCodec implements SegmentCodec {
  readonly parallelism: number;
  private readonly workers: Worker[] = [];
  private readonly load: number[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly ready: Promise<void>;
  private nextId = 1;
  private closed = false;
  private broken: Error | null = null;

  /** @param threads worker count (default: available cores) @param preset xz preset @param dictCap dictionary cap */
  constructor(threads: number = availableParallelism(), preset: number = DEFAULT_PRESET, dictCap: number = SEGMENT_DICT_CAP) {
    this.parallelism = Math.max(1, threads);
    const readies: Promise<void>[] = [];
    for (let i = 0; i < this.parallelism; i++) {
      // No execArgv: the worker is plain JavaScript, and inheriting the parent's
      // TypeScript loader (tsx) would cost each worker ~0.1 s of CPU to start.
      const w = new Worker(new URL("./codec_worker.mjs", import.meta.url), { workerData: { preset, dictCap, memlimit: XZ_MEMLIMIT }, execArgv: [] });
      this.workers.push(w);
      this.load.push(0);
      readies.push(
        new Promise<void>((resolve, reject) => {
          const onMsg = (m: { ready?: boolean; id?: number; ok?: boolean; data?: unknown; error?: string }) => {
            if (m.ready) {
              if (this.load[i] === 0) w.unref();
              return resolve();
            }
            const p = this.pending.get(m.id!);
            if (!p) return;
            this.pending.delete(m.id!);
            // An idle worker must not keep the process alive; a busy one must.
            if (--this.load[i] === 0) w.unref();
            if (m.ok) p.resolve(fromWorker(m.data));
            else p.reject(new Error(m.error));
          };
          w.on("message", onMsg);
          w.on("error", (e) => {
            const f = new CodecFailure(`codec worker failed: ${e.message}`, { cause: e });
            reject(f);
            this.failAll(f);
          });
          w.on("exit", (code) => {
            if (this.closed) return;
            const f = new CodecFailure(`codec worker exited (code ${code})`);
            reject(f);
            this.failAll(f);
          });
        }),
      );
    }
    this.ready = Promise.all(readies).then(() => {});
    this.ready.catch(() => {});
  }

  /** True once a worker failed or the pool was closed: make a new pool. */
  get failed(): boolean {
    return this.broken !== null || this.closed;
  }

  private failAll(e: Error): void {
    // A pool that lost a worker stays failed: a message to a dead worker would never be answered.
    this.broken ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
  }

  private async run<T = Uint8Array>(op: CodecRequest["op"], data: Uint8Array, rawSize: number, transfer = false, x86 = false, extra: Partial<Omit<CodecRequest, "data">> = {}): Promise<T> {
    if (this.closed) throw new CodecFailure("codec is closed");
    await this.ready;
    if (this.broken) throw this.broken;
    // Least-loaded worker; the input is copied once into a transferable buffer,
    // unless the caller handed it over (a whole buffer it no longer needs).
    let w = 0;
    for (let i = 1; i < this.workers.length; i++) if (this.load[i] < this.load[w]) w = i;
    const id = this.nextId++;
    const whole = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength && !(data.buffer instanceof SharedArrayBuffer);
    const owned = transfer && whole ? data : data.slice();
    if (this.load[w]++ === 0) this.workers[w].ref();
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (b: unknown) => void, reject });
      const input = owned.buffer as ArrayBuffer;
      this.workers[w].postMessage({ id, op, data: input, rawSize, x86, ...extra } satisfies CodecRequest, [input]);
    });
  }

  compress(raw: Uint8Array, opts?: CompressOptions): Promise<Uint8Array> {
    return this.run("compress", raw, 0, false, opts?.x86 ?? false);
  }

  decompress(xz: Uint8Array, rawSize: number): Promise<Uint8Array> {
    return this.run("decompress", xz, rawSize);
  }

  hashChunks(data: Uint8Array): Promise<Uint8Array> {
    return this.run("hash", data, 0, true);
  }

  hashSourceRanges(src: ByteSource, ranges: ReadonlyArray<readonly [number, number]>): Promise<Uint8Array> | null {
    const fd = src instanceof FileSource ? src.sharedFd : null;
    if (fd === null) return null;
    // Nothing to copy or transfer: the worker reads the file itself.
    return this.run("hashFd", new Uint8Array(0), 0, true, false, { fd, ranges }).catch((e: Error) => {
      throw e instanceof CodecFailure ? e : inputError(e, src.name);
    });
  }

  decodeHashed(xz: Uint8Array, rawSize: number, expectHash: Uint8Array, hashFrom: number): Promise<DecodedHashed> {
    return this.run<DecodedHashed>("decodeHashed", xz, rawSize, false, false, { expectHash: expectHash.slice().buffer, hashFrom });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.failAll(new CodecFailure("codec closed"));
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
