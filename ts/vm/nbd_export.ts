/**
 * NbdExport: a read-only NBD server that serves a disk image chunk by chunk
 * from a provider, so a VM can boot from a disk whose chunks are still on
 * their way (early start). QEMU keeps its writes in a local qcow2 top layer
 * over the export; once every chunk is local the caller switches that layer's
 * backing to the local file (see {@link switchBackingToLocal}) and closes the
 * export.
 *
 * Protocol (the NBD project's doc/proto.md),
 * the subset QEMU's client uses:
 *
 * ```text
 *   server -> "NBDMAGIC" "IHAVEOPT" u16 FIXED_NEWSTYLE|NO_ZEROES
 *   client -> u32 flags
 *   client -> "IHAVEOPT" u32 option u32 length data       (repeated)
 *   server -> u64 0x3e889045565a9 u32 option u32 reply u32 length data
 *             GO/INFO: INFO(export size, flags) INFO(block sizes) ACK
 *             EXPORT_NAME: u64 size u16 flags      (then transmission)
 *             anything else: ERR_UNSUP
 *   client -> u32 0x25609513 u16 flags u16 type u64 cookie u64 offset u32 length
 *   server -> u32 0x67446698 u32 error u64 cookie [data]   (simple replies)
 * ```
 *
 * Nothing from the wire is trusted: option and request lengths are bounded,
 * reads past the end are EINVAL, writes are EPERM. Every byte handed out
 * comes from the provider, which verifies it; a provider error answers EIO to
 * that read and is reported through `onError` so the caller can stop the VM.
 */
import { createServer, type Server, type Socket } from "node:net";
import { promises as fsp } from "node:fs";

/** Chunk size of the export's provider (the overlay's chunk size). */
export const NBD_CHUNK = 4096;
/** Largest read a client may ask for (QEMU's own limit is 32 MiB). */
export const NBD_MAX_REQUEST = 32 << 20;
/** Largest option payload accepted during the handshake. */
const MAX_OPTION = 4096;

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REPLY_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, INFO: 6, GO: 7 } as const;
const REP = { ACK: 1, SERVER: 2, INFO: 3, ERR_UNSUP: 0x80000001, ERR_INVALID: 0x80000003, ERR_UNKNOWN: 0x80000006 } as const;
const INFO_EXPORT = 0;
const INFO_BLOCK_SIZE = 3;
/** HAS_FLAGS | READ_ONLY | SEND_FLUSH | CAN_MULTI_CONN */
const TRANSMISSION_FLAGS = 1 | 2 | 4 | 256;
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3 } as const;
const ERR = { EPERM: 1, EIO: 5, EINVAL: 22, ENOTSUP: 95 } as const;

/** Where the export's chunks come from. */
export interface ChunkProvider {
  /** The verified bytes of chunk `index` (NBD_CHUNK long; the last may be shorter). Waits if it has not arrived. */
  chunk(index: number): Promise<Uint8Array>;
  /** Whether chunk `index` is available now (a read of one that is not calls `prioritize` first). */
  ready?(index: number): boolean;
  /** A read waits on chunk `index`: fetch it next. */
  prioritize?(index: number): void;
}

/** Options for {@link NbdExport.listen}. */
export interface NbdExportOptions {
  /** Unix socket path to listen on (created; removed on close). */
  socketPath: string;
  /** Export name the client asks for (QEMU: the URI path). */
  name: string;
  /** Size of the disk in bytes. */
  size: number;
  provider: ChunkProvider;
  /** A provider error (the read was answered EIO). */
  onError?(err: unknown, chunk: number): void;
}

/** Counters, for progress and the early-start report. */
export interface NbdStats {
  /** Read requests answered. */
  reads: number;
  /** Bytes sent to clients. */
  bytes: number;
  /** Distinct chunks a read had to wait for (fetched on demand). */
  waited: number;
  /** Reads answered with an error. */
  errors: number;
}

/** A read-only NBD export over a chunk provider. */
export class NbdExport {
  readonly stats: NbdStats = { reads: 0, bytes: 0, waited: 0, errors: 0 };
  private readonly sockets = new Set<Socket>();
  private readonly waitedChunks = new Set<number>();

  private constructor(private readonly server: Server, private readonly o: NbdExportOptions) {}

  /** Starts serving on `o.socketPath`. */
  static async listen(o: NbdExportOptions): Promise<NbdExport> {
    if (!Number.isSafeInteger(o.size) || o.size < 0) throw new RangeError(`bad export size ${o.size}`);
    await fsp.rm(o.socketPath, { force: true });
    const server = createServer();
    const exp = new NbdExport(server, o);
    server.on("connection", (s) => exp.serve(s));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(o.socketPath, () => resolve());
    });
    await fsp.chmod(o.socketPath, 0o600).catch(() => {});
    return exp;
  }

  /** The `nbd+unix` URI QEMU opens. */
  get uri(): string {
    return `nbd+unix:///${encodeURIComponent(this.o.name)}?socket=${this.o.socketPath}`;
  }

  /** Stops listening and drops every connection. */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    // Stops accepting at once; the callback (all connections gone) is not
    // awaited: under Deno it may never come for sockets destroyed here.
    this.server.close();
    await fsp.rm(this.o.socketPath, { force: true });
  }

  private serve(sock: Socket): void {
    this.sockets.add(sock);
    sock.on("close", () => this.sockets.delete(sock));
    sock.on("error", () => sock.destroy());
    const reader = new SocketReader(sock);
    this.session(sock, reader).catch(() => sock.destroy());
  }

  private async session(sock: Socket, r: SocketReader): Promise<void> {
    const hello = Buffer.alloc(18);
    hello.writeBigUInt64BE(NBDMAGIC, 0);
    hello.writeBigUInt64BE(IHAVEOPT, 8);
    hello.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    sock.write(hello);
    const clientFlags = (await r.read(4)).readUInt32BE(0);
    if (!(clientFlags & FLAG_FIXED_NEWSTYLE)) return void sock.destroy();
    const noZeroes = Boolean(clientFlags & FLAG_NO_ZEROES);
    // Option haggling.
    for (;;) {
      const h = await r.read(16);
      if (h.readBigUInt64BE(0) !== IHAVEOPT) return void sock.destroy();
      const opt = h.readUInt32BE(8);
      const len = h.readUInt32BE(12);
      if (len > MAX_OPTION) return void sock.destroy();
      const data = await r.read(len);
      if (opt === OPT.ABORT) {
        optReply(sock, opt, REP.ACK);
        return void sock.end();
      }
      if (opt === OPT.EXPORT_NAME) {
        if (data.toString("utf8") !== this.o.name) return void sock.destroy();
        const b = Buffer.alloc(noZeroes ? 10 : 134);
        b.writeBigUInt64BE(BigInt(this.o.size), 0);
        b.writeUInt16BE(TRANSMISSION_FLAGS, 8);
        sock.write(b);
        break;
      }
      if (opt === OPT.LIST) {
        const name = Buffer.from(this.o.name, "utf8");
        const d = Buffer.alloc(4 + name.length);
        d.writeUInt32BE(name.length, 0);
        name.copy(d, 4);
        optReply(sock, opt, REP.SERVER, d);
        optReply(sock, opt, REP.ACK);
        continue;
      }
      if (opt === OPT.GO || opt === OPT.INFO) {
        if (len < 6) {
          optReply(sock, opt, REP.ERR_INVALID);
          continue;
        }
        const nameLen = data.readUInt32BE(0);
        if (4 + nameLen + 2 > len) {
          optReply(sock, opt, REP.ERR_INVALID);
          continue;
        }
        const name = data.subarray(4, 4 + nameLen).toString("utf8");
        if (name !== this.o.name && name !== "") {
          optReply(sock, opt, REP.ERR_UNKNOWN);
          continue;
        }
        const info = Buffer.alloc(12);
        info.writeUInt16BE(INFO_EXPORT, 0);
        info.writeBigUInt64BE(BigInt(this.o.size), 2);
        info.writeUInt16BE(TRANSMISSION_FLAGS, 10);
        optReply(sock, opt, REP.INFO, info);
        const bs = Buffer.alloc(14);
        bs.writeUInt16BE(INFO_BLOCK_SIZE, 0);
        bs.writeUInt32BE(1, 2);
        bs.writeUInt32BE(NBD_CHUNK, 6);
        bs.writeUInt32BE(NBD_MAX_REQUEST, 10);
        optReply(sock, opt, REP.INFO, bs);
        optReply(sock, opt, REP.ACK);
        if (opt === OPT.GO) break;
        continue;
      }
      // STARTTLS, STRUCTURED_REPLY, meta contexts: not offered; the client falls back.
      optReply(sock, opt, REP.ERR_UNSUP);
    }
    // Transmission: requests are answered in order, one at a time per connection.
    for (;;) {
      const q = await r.read(28);
      if (q.readUInt32BE(0) !== REQUEST_MAGIC) return void sock.destroy();
      const type = q.readUInt16BE(6);
      const cookie = q.subarray(8, 16);
      const offset = q.readBigUInt64BE(16);
      const length = q.readUInt32BE(24);
      if (type === CMD.DISC) return void sock.end();
      if (type === CMD.WRITE) {
        // Read-only export: swallow the payload (bounded) and refuse.
        if (length > NBD_MAX_REQUEST) return void sock.destroy();
        await r.read(length);
        simpleReply(sock, cookie, ERR.EPERM);
        continue;
      }
      if (type === CMD.FLUSH) {
        simpleReply(sock, cookie, 0);
        continue;
      }
      if (type !== CMD.READ) {
        simpleReply(sock, cookie, ERR.EINVAL);
        continue;
      }
      if (length > NBD_MAX_REQUEST || offset + BigInt(length) > BigInt(this.o.size)) {
        simpleReply(sock, cookie, ERR.EINVAL);
        continue;
      }
      let data: Buffer;
      try {
        data = await this.readRange(Number(offset), length);
      } catch {
        this.stats.errors++;
        simpleReply(sock, cookie, ERR.EIO);
        continue;
      }
      this.stats.reads++;
      this.stats.bytes += length;
      simpleReply(sock, cookie, 0, data);
    }
  }

  /** Bytes [offset, offset+length) of the disk, from the provider's chunks. */
  private async readRange(offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    if (length === 0) return out;
    const first = Math.floor(offset / NBD_CHUNK);
    const last = Math.floor((offset + length - 1) / NBD_CHUNK);
    const p = this.o.provider;
    for (let c = first; c <= last; c++) {
      if (p.ready && !p.ready(c)) {
        if (!this.waitedChunks.has(c)) {
          this.waitedChunks.add(c);
          this.stats.waited++;
        }
        p.prioritize?.(c);
      }
    }
    const chunks = await Promise.all(
      Array.from({ length: last - first + 1 }, (_, k) =>
        p.chunk(first + k).catch((e) => {
          this.o.onError?.(e, first + k);
          throw e;
        })),
    );
    for (let k = 0; k < chunks.length; k++) {
      const c = first + k;
      const want = Math.min(NBD_CHUNK, this.o.size - c * NBD_CHUNK);
      const bytes = chunks[k];
      if (bytes.length !== want) {
        const e = new Error(`chunk ${c} has ${bytes.length} bytes, not ${want}`);
        this.o.onError?.(e, c);
        throw e;
      }
      const from = Math.max(offset, c * NBD_CHUNK);
      const to = Math.min(offset + length, c * NBD_CHUNK + want);
      out.set(bytes.subarray(from - c * NBD_CHUNK, to - c * NBD_CHUNK), from - offset);
    }
    return out;
  }
}

function optReply(sock: Socket, opt: number, type: number, data: Uint8Array = new Uint8Array(0)): void {
  const h = Buffer.alloc(20);
  h.writeBigUInt64BE(REPLY_MAGIC, 0);
  h.writeUInt32BE(opt, 8);
  h.writeUInt32BE(type, 12);
  h.writeUInt32BE(data.length, 16);
  sock.write(h);
  if (data.length) sock.write(data);
}

function simpleReply(sock: Socket, cookie: Uint8Array, error: number, data?: Uint8Array): void {
  const h = Buffer.alloc(16);
  h.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  h.writeUInt32BE(error, 4);
  h.set(cookie, 8);
  sock.write(data ? Buffer.concat([h, data]) : h);
}

/** Reads exact byte counts from a socket. */
class SocketReader {
  private bufs: Buffer[] = [];
  private have = 0;
  private waiter: (() => void) | null = null;
  private ended = false;

  constructor(sock: Socket) {
    sock.on("data", (d: Buffer) => {
      this.bufs.push(d);
      this.have += d.length;
      this.waiter?.();
    });
    const end = () => {
      this.ended = true;
      this.waiter?.();
    };
    sock.on("end", end);
    sock.on("close", end);
  }

  async read(n: number): Promise<Buffer> {
    while (this.have < n) {
      if (this.ended) throw new Error("connection closed");
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = null;
    }
    const all = this.bufs.length === 1 ? this.bufs[0] : Buffer.concat(this.bufs);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.bufs = rest.length ? [rest] : [];
    this.have = rest.length;
    return out;
  }
}

/** The QMP calls {@link switchBackingToLocal} needs (QmpClient has them). */
export interface QmpExecutor {
  execute<T = unknown>(cmd: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<T>;
}

/** Block node names of a lazy disk's launch line (see {@link lazyDiskArgs}). */
export const LAZY_NODES = { remote: "cl-remote", local: "cl-local", localFile: "cl-local-file", top: "cl-top", topFile: "cl-top-file" } as const;

/**
 * The QEMU arguments for a disk whose lower layer is an NBD export: a qcow2
 * top layer (4 KiB clusters, writes stay local) over `nbd` node
 * `cl-remote`. The qcow2 file must exist (created without a backing file:
 * the backing is given here, and written into its header only when it
 * becomes the local file).
 */
export function lazyDiskArgs(o: { topPath: string; socketPath: string; exportName: string; deviceId?: string; bootIndex?: number }): string[] {
  const esc = (v: string) => v.replace(/,/g, ",,");
  const n = LAZY_NODES;
  return [
    "-blockdev", `driver=nbd,node-name=${n.remote},server.type=unix,server.path=${esc(o.socketPath)},export=${esc(o.exportName)},read-only=on`,
    "-blockdev", `driver=file,node-name=${n.topFile},filename=${esc(o.topPath)},discard=unmap`,
    "-blockdev", `driver=qcow2,node-name=${n.top},file=${n.topFile},backing=${n.remote},discard=unmap,detect-zeroes=unmap`,
    "-device", `virtio-blk-pci,drive=${n.top},id=${o.deviceId ?? "vblk0"}${o.bootIndex !== undefined ? `,bootindex=${o.bootIndex}` : ""}`,
  ];
}

/**
 * Makes a running lazy disk independent of the NBD export: opens the fully
 * synthesized local raw file read-only as a new node, reopens the qcow2 top
 * layer with that node as its backing (the guest sees no change: the bytes
 * are the same), records the local file in the qcow2 header (so QEMU
 * restarted from the files finds it), and drops the NBD node. After this the
 * export may close and cloudlet may exit without harming the VM.
 */
export async function switchBackingToLocal(qmp: QmpExecutor, o: { localPath: string; topPath: string }): Promise<void> {
  const n = LAZY_NODES;
  await qmp.execute("blockdev-add", { driver: "file", "node-name": n.localFile, filename: o.localPath, "read-only": true });
  await qmp.execute("blockdev-add", { driver: "raw", "node-name": n.local, file: n.localFile, "read-only": true });
  await qmp.execute("blockdev-reopen", {
    options: [{ driver: "qcow2", "node-name": n.top, file: n.topFile, backing: n.local, discard: "unmap", "detect-zeroes": "unmap" }],
  });
  await qmp.execute("change-backing-file", { device: n.top, "image-node-name": n.top, "backing-file": o.localPath });
  await qmp.execute("blockdev-del", { "node-name": n.remote });
}
