// A segment-codec worker thread with its own WASM instance (see codec_pool.ts).
// Plain JavaScript on purpose: worker threads do not inherit the TypeScript
// loader under every runner, and this file only forwards to the WASM core.
import { readFileSync, readSync } from "node:fs";
import { parentPort, workerData } from "node:worker_threads";
import { Hasher, hash_chunks, initSync, xz_compress, xz_decompress_exact } from "../core/_wasm/cloudlet_core.js";

initSync({ module: readFileSync(new URL("../core/_wasm/cloudlet_core_bg.wasm", import.meta.url)) });
const { preset, dictCap, memlimit } = workerData;
const CHUNK = 4096;
const BLAKE3 = 0;
const PRESET_X86 = 0x100; // core-rs/src/xz.rs: the x86 BCJ filter before LZMA2

/** BLAKE3 of all of `b` (the hasher copies into WASM memory in one call). */
function blake3(b) {
  const h = new Hasher(BLAKE3);
  try {
    h.update(b);
    return h.digest();
  } finally {
    h.free();
  }
}

/**
 * decodeHashed: the BLAKE3 of the compressed segment, then (when that is
 * what synthesis expects) the segment decoded and the BLAKE3 of each 4 KiB
 * chunk of its data area (from byte `hashFrom`): synthesis's two checks,
 * done here rather than on the thread that applies and writes.
 */
function decodeHashed(m) {
  const xzHash = blake3(m.data);
  const res = { xzHash, raw: null, digests: null, error: null };
  if (!sameBytes(xzHash, m.expectHash)) return res;
  try {
    res.raw = xz_decompress_exact(m.data, m.rawSize, memlimit);
  } catch (e) {
    res.error = e instanceof Error ? e.message : String(e);
    return res;
  }
  res.digests = m.hashFrom < res.raw.length ? hash_chunks(BLAKE3, res.raw.subarray(m.hashFrom), CHUNK) : new Uint8Array(0);
  return res;
}

/**
 * Typed arrays cross to the main thread as their whole ArrayBuffers (see
 * codec_pool.ts: Deno's node:worker_threads copies a Uint8Array element by
 * element, ~300 ms for 4 MiB, but moves an ArrayBuffer at once).
 */
function bufferOf(u8) {
  return u8.byteOffset === 0 && u8.byteLength === u8.buffer.byteLength ? u8.buffer : u8.slice().buffer;
}

/** Read buffer of hashFd, reused (grown as needed): no garbage per batch. */
let readBuf = new Uint8Array(0);

/**
 * hashFd: the byte ranges of a file the main thread opened (descriptors are
 * per process), read back to back with pread and each zero-padded to its
 * length past the end of the file, then BLAKE3 of each 4 KiB chunk. The
 * base check's reads and hashing, off the thread that applies and writes.
 */
function hashFd(m) {
  let total = 0;
  for (const [, length] of m.ranges) total += length;
  if (readBuf.length < total) readBuf = new Uint8Array(total);
  const buf = readBuf.subarray(0, total);
  let at = 0;
  for (const [offset, length] of m.ranges) {
    let got = 0;
    while (got < length) {
      const n = readSync(m.fd, buf, at + got, length - got, offset + got);
      if (n === 0) break;
      got += n;
    }
    if (got < length) buf.fill(0, at + got, at + length);
    at += length;
  }
  return hash_chunks(BLAKE3, buf, CHUNK);
}

function sameBytes(a, b) {
  if (!b || a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

parentPort.on("message", (msg) => {
  // Byte inputs arrive as ArrayBuffers (codec_pool.ts says why).
  const m = { ...msg, data: new Uint8Array(msg.data), expectHash: msg.expectHash && new Uint8Array(msg.expectHash) };
  try {
    if (m.op === "decodeHashed") {
      const res = decodeHashed(m);
      const out = { xzHash: bufferOf(res.xzHash), raw: res.raw && bufferOf(res.raw), digests: res.digests && bufferOf(res.digests), error: res.error };
      parentPort.postMessage({ id: m.id, ok: true, data: out }, [out.xzHash, out.raw, out.digests].filter(Boolean));
      return;
    }
    // hash: BLAKE3 (algorithm 0 in the core's table) of each 4 KiB chunk, for synthesis's check.
    const out =
      m.op === "compress" ? xz_compress(m.data, m.x86 ? preset | PRESET_X86 : preset, dictCap)
      : m.op === "hash" ? hash_chunks(BLAKE3, m.data, CHUNK)
      : m.op === "hashFd" ? hashFd(m)
      : xz_decompress_exact(m.data, m.rawSize, memlimit);
    const b = bufferOf(out);
    parentPort.postMessage({ id: m.id, ok: true, data: b }, [b]);
  } catch (e) {
    parentPort.postMessage({ id: m.id, ok: false, error: e instanceof Error ? e.message : String(e) });
  }
});
parentPort.postMessage({ ready: true });
