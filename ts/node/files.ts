/**
 * File access for Node and Deno: byte sources over files, atomic outputs, and
 * the mapping from OS errors to messages a user can act on.
 */
import { promises as fsp, readSync, writeSync } from "node:fs";
import { basename, dirname, join } from "node:path";
import { randomBytes } from "node:crypto";
import { CloudletError } from "../errors.ts";
import type { ByteSource, ImageSink } from "../overlay/io.ts";
import { CHUNK } from "../overlay/format.ts";
import { runTool } from "./process.ts";

/** Turns an OS error on an output into an OUTPUT_FAILED error naming the file. */
export function outputError(e: unknown, file: string): CloudletError {
  if (e instanceof CloudletError) return e;
  const code = (e as NodeJS.ErrnoException)?.code;
  const msg =
    code === "ENOSPC" ? "the disk is full; free some space and run again (nothing was kept)"
    : code === "EDQUOT" ? "the disk quota is exceeded (nothing was kept)"
    : code === "EACCES" || code === "EPERM" ? "permission denied"
    : code === "ENOENT" ? "the directory does not exist"
    : code === "EROFS" ? "the file system is read-only"
    : `cannot write: ${(e as Error)?.message ?? e}`;
  return new CloudletError("OUTPUT_FAILED", msg, file, { cause: e });
}

/** Turns an OS error on an input into a MISSING_INPUT error naming the file. */
export function inputError(e: unknown, file: string): CloudletError {
  if (e instanceof CloudletError) return e;
  const code = (e as NodeJS.ErrnoException)?.code;
  const msg =
    code === "ENOENT" ? "no such file"
    : code === "EACCES" || code === "EPERM" ? "permission denied"
    : code === "EISDIR" ? "is a directory, expected a file"
    : `cannot read: ${(e as Error)?.message ?? e}`;
  return new CloudletError("MISSING_INPUT", msg, file, { cause: e });
}

/**
 * Runs positional I/O on one handle one operation at a time. Deno's
 * FileHandle read/write with a position seek a shared cursor, so overlapping
 * calls land at the wrong offsets (Node uses pread/pwrite); serialising here
 * fixes it for every caller.
 */
class HandleQueue {
  private tail: Promise<unknown> = Promise.resolve();
  run<T>(op: () => Promise<T>): Promise<T> {
    const next = this.tail.then(op, op);
    this.tail = next.catch(() => {});
    return next;
  }
}

/**
 * Node's positional calls are single pread/pwrite system calls, so
 * `FileSource.readInto` and `AtomicFile.write` make them synchronously: on
 * page-cached files one takes microseconds, and the promise API's hand-off
 * to libuv's thread pool and back (a request object, a futex wake, an
 * event-loop wake-up and a promise per call) cost more CPU than the copy
 * itself; synthesis makes thousands of them (bench/OVERLAY_RESULTS.md,
 * "Synthesis speed, third pass"). Deno emulates a positional call with a
 * seek on a shared cursor, so there every call stays asynchronous and
 * queued (see HandleQueue).
 */
const SYNC_POSITIONAL_IO = typeof (globalThis as { Deno?: unknown }).Deno === "undefined";

/** A read-only file as a {@link ByteSource}. */
export class FileSource implements ByteSource {
  private readonly queue = new HandleQueue();
  private constructor(
    private readonly fh: fsp.FileHandle,
    readonly name: string,
    readonly size: number,
  ) {}

  /** Opens `path`; MISSING_INPUT when it is absent or unreadable. */
  static async open(path: string): Promise<FileSource> {
    let fh: fsp.FileHandle;
    try {
      fh = await fsp.open(path, "r");
      const st = await fh.stat();
      if (st.isDirectory()) {
        await fh.close();
        throw Object.assign(new Error("is a directory"), { code: "EISDIR" });
      }
      return new FileSource(fh, path, st.size);
    } catch (e) {
      throw inputError(e, path);
    }
  }

  /** Opens `path`, or returns null when it does not exist. */
  static async openOptional(path: string): Promise<FileSource | null> {
    try {
      return await FileSource.open(path);
    } catch (e) {
      if ((e as CloudletError).cause && ((e as CloudletError).cause as NodeJS.ErrnoException).code === "ENOENT") return null;
      throw e;
    }
  }

  read(offset: number, length: number): Promise<Uint8Array> {
    return this.queue.run(() => this.readNow(offset, length));
  }

  /**
   * The descriptor, for a worker thread of this process to pread from
   * (Node: descriptors are per process), or null where that does not hold
   * (Deno). Valid until {@link close}.
   */
  get sharedFd(): number | null {
    return SYNC_POSITIONAL_IO ? this.fh.fd : null;
  }

  /**
   * Reads into `dst` from `offset` (fewer bytes only at the end of the
   * file); resolves to the bytes read. Synchronous under Node (see
   * SYNC_POSITIONAL_IO): synthesis reads its base chunks with it, thousands
   * of small reads; `read` stays asynchronous for the large reads of
   * creation and the scans, which overlap with other work.
   */
  readInto(offset: number, dst: Uint8Array): Promise<number> {
    if (SYNC_POSITIONAL_IO) {
      try {
        return Promise.resolve(this.readIntoNow(offset, dst));
      } catch (e) {
        return Promise.reject(e);
      }
    }
    return this.queue.run(async () => {
      const b = await this.readNow(offset, dst.length);
      dst.set(b);
      return b.length;
    });
  }

  private readIntoNow(offset: number, dst: Uint8Array): number {
    const len = Math.max(0, Math.min(dst.length, this.size - offset));
    let got = 0;
    try {
      while (got < len) {
        const n = readSync(this.fh.fd, dst, got, len - got, offset + got);
        if (n === 0) break;
        got += n;
      }
    } catch (e) {
      throw inputError(e, this.name);
    }
    return got;
  }

  private async readNow(offset: number, length: number): Promise<Uint8Array> {
    const len = Math.max(0, Math.min(length, this.size - offset));
    const buf = new Uint8Array(len);
    let got = 0;
    try {
      while (got < len) {
        const { bytesRead } = await this.fh.read(buf, got, len - got, offset + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
    } catch (e) {
      throw inputError(e, this.name);
    }
    return got === len ? buf : buf.subarray(0, got);
  }

  /** Closes the file. */
  async close(): Promise<void> {
    await this.fh.close().catch(() => {});
  }
}

/** A temporary name beside `path` that never looks like a finished output. */
export function partName(path: string): string {
  return join(dirname(path), `.${basename(path)}.part-${process.pid}-${randomBytes(4).toString("hex")}`);
}

/**
 * A file written under a temporary name and renamed into place by
 * {@link AtomicFile.commit}; {@link AtomicFile.abort} removes it.
 */
export class AtomicFile {
  private closed = false;
  private readonly queue = new HandleQueue();
  /** Bytes written since the last background flush started. */
  private unflushed = 0;
  /** The background fdatasync in flight, if any. */
  private flushing: Promise<void> | null = null;
  private constructor(
    readonly path: string,
    readonly tmp: string,
    readonly fh: fsp.FileHandle,
    readonly durable: boolean,
  ) {}

  /**
   * Creates the temporary file for `path`. `durable` (default) fsyncs it
   * before the rename, so a crash never leaves a complete-looking file with
   * missing data; files that die with the process anyway (a server session's
   * VM) skip the fsync, which costs ~0.5 s for a 256 MiB memory image here.
   */
  static async create(path: string, durable = true): Promise<AtomicFile> {
    const tmp = partName(path);
    try {
      return new AtomicFile(path, tmp, await fsp.open(tmp, "wx+", 0o644), durable);
    } catch (e) {
      throw outputError(e, path);
    }
  }

  /** Creates the temporary file as a sparse copy of `src` (reflinked where the file system can). */
  static async copyOf(path: string, src: string, durable = true): Promise<AtomicFile> {
    const tmp = partName(path);
    try {
      await sparseCopy(src, tmp);
      return new AtomicFile(path, tmp, await fsp.open(tmp, "r+"), durable);
    } catch (e) {
      await fsp.rm(tmp, { force: true });
      throw outputError(e, path);
    }
  }

  /** Writes all of `data` at `offset`. */
  write(data: Uint8Array, offset: number): Promise<void> {
    if (SYNC_POSITIONAL_IO) {
      try {
        let done = 0;
        while (done < data.length) done += writeSync(this.fh.fd, data, done, data.length - done, offset + done);
      } catch (e) {
        return Promise.reject(outputError(e, this.path));
      }
      this.wrote(data.length);
      return Promise.resolve();
    }
    return this.queue.run(() => this.writeNow(data, offset)).then(() => this.wrote(data.length));
  }

  /**
   * Counts written bytes and, for a durable file, starts an fdatasync in
   * the background every FLUSH_EVERY bytes: the kernel then writes the data
   * out while synthesis goes on, and the fsync before the rename (which
   * must still come, and still covers everything) has little left to do.
   * One flush at a time; a failed one is reported by close().
   */
  private wrote(bytes: number): void {
    if (!this.durable) return;
    this.unflushed += bytes;
    if (this.unflushed < FLUSH_EVERY || this.flushing) return;
    this.unflushed = 0;
    const p = this.fh.datasync().finally(() => {
      if (this.flushing === p) this.flushing = null;
    });
    p.catch(() => {}); // awaited (and reported) by close()
    this.flushing = p;
  }

  private async writeNow(data: Uint8Array, offset: number): Promise<void> {
    try {
      let done = 0;
      while (done < data.length) {
        const { bytesWritten } = await this.fh.write(data, done, data.length - done, offset + done);
        done += bytesWritten;
      }
    } catch (e) {
      throw outputError(e, this.path);
    }
  }

  /** Sets the length. */
  async truncate(size: number): Promise<void> {
    try {
      await this.fh.truncate(size);
    } catch (e) {
      throw outputError(e, this.path);
    }
  }

  /** Flushes to disk and closes (still under the temporary name). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      if (this.flushing) await this.flushing;
      if (this.durable) await this.fh.sync();
      await this.fh.close();
    } catch (e) {
      await this.fh.close().catch(() => {});
      throw outputError(e, this.path);
    }
  }

  /** Closes and renames into place. */
  async commit(): Promise<void> {
    await this.close();
    try {
      await fsp.rename(this.tmp, this.path);
    } catch (e) {
      throw outputError(e, this.path);
    }
  }

  /** Closes and deletes the temporary file. */
  async abort(): Promise<void> {
    if (!this.closed) {
      this.closed = true;
      await this.flushing?.catch(() => {});
      await this.fh.close().catch(() => {});
    }
    await fsp.rm(this.tmp, { force: true });
  }
}

/** Durable files are flushed in the background every this many bytes written (see AtomicFile). */
const FLUSH_EVERY = 16 << 20;

/** A raw image sink: starts as a copy of a base image (or zeros) and is patched in place. */
export class RawImageSink implements ImageSink {
  private zeros = new Uint8Array(0);
  private constructor(
    readonly file: AtomicFile,
    readonly size: number,
  ) {}

  /** Creates the sink for `path`, `size` bytes, initialised from `base` when given; `durable` as for AtomicFile. */
  static async create(path: string, size: number, base: string | null, durable = true): Promise<RawImageSink> {
    const f = base ? await AtomicFile.copyOf(path, base, durable) : await AtomicFile.create(path, durable);
    await f.truncate(size);
    return new RawImageSink(f, size);
  }

  async writeChunks(first: number, data: Uint8Array): Promise<void> {
    const off = first * CHUNK;
    const len = Math.min(data.length, this.size - off);
    if (len > 0) await this.file.write(data.subarray(0, len), off);
  }

  async zeroChunks(first: number, count: number): Promise<void> {
    if (this.zeros.length < count * CHUNK) this.zeros = new Uint8Array(Math.min(count, 1024) * CHUNK);
    for (let c = 0; c < count; c += this.zeros.length / CHUNK) {
      const n = Math.min(count - c, this.zeros.length / CHUNK);
      await this.writeChunks(first + c, this.zeros.subarray(0, n * CHUNK));
    }
  }

  finish(): Promise<void> {
    return this.file.close();
  }

  /** Renames into place (after every sink finished). */
  commit(): Promise<void> {
    return this.file.commit();
  }

  abort(): Promise<void> {
    return this.file.abort();
  }
}

/**
 * Copies a file keeping it sparse (zero runs stay holes) and reflinking
 * where the file system can. Node's copyFile would allocate every hole of a
 * disk or memory image.
 */
export async function sparseCopy(src: string, dst: string): Promise<void> {
  const r = await runTool("cp", ["--sparse=always", "--reflink=auto", "--", src, dst]);
  if (r.code !== 0) {
    await fsp.rm(dst, { force: true });
    const msg = r.stderr.trim();
    throw /No space left/.test(msg) ? outputError(Object.assign(new Error(msg), { code: "ENOSPC" }), dst) : /No such file/.test(msg) ? inputError(Object.assign(new Error(msg), { code: "ENOENT" }), src) : new CloudletError("OUTPUT_FAILED", `copying ${src} failed: ${msg}`, dst);
  }
}

/** True when `path` exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await fsp.access(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * A temporary directory that libvirt's QEMU user can enter (mkdtemp makes
 * 0700 directories, which `--host virsh` cannot use).
 */
export async function sharedTempDir(prefix: string): Promise<string> {
  const d = await fsp.mkdtemp(prefix);
  await fsp.chmod(d, 0o755);
  return d;
}
