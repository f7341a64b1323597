/**
 * Fetching a packed overlay by URL with HTTP Range requests: the header and
 * meta first (so a wrong base is refused before any segment is fetched),
 * then the segments from any offset, which is how a cut transfer resumes.
 */
import { CloudletError } from "../errors.ts";
import { HEADER_BYTES } from "../overlay/format.ts";

/** An overlay at a URL. */
export interface UrlOverlay {
  /** Header + meta bytes (the protocol's meta step). */
  headerAndMeta: Uint8Array;
  /** Byte offset of segment data in the file. */
  dataOffset: number;
  /** File length. */
  totalLength: number;
  /** Segment data from `offset` (relative to the data) to the end, as it arrives. */
  body(offset: number): Promise<AsyncIterable<Uint8Array>>;
  /** Exactly `length` bytes of segment data from `offset` (one wanted segment). */
  range(offset: number, length: number): Promise<Uint8Array>;
}

async function range(url: string, from: number, to: number | null, signal: AbortSignal): Promise<Response> {
  let res: Response;
  try {
    res = await fetch(url, { headers: { range: `bytes=${from}-${to ?? ""}` }, signal });
  } catch (e) {
    throw new CloudletError("REMOTE", `cannot fetch ${url}: ${(e as Error).message}`);
  }
  if (res.status !== 206) {
    await res.body?.cancel();
    throw new CloudletError("REMOTE", `${url} answered ${res.status} to a range request (the server must support HTTP Range)`);
  }
  // The bytes must start where they were asked for; nothing else places them.
  const cr = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
  if (!cr || Number(cr[1]) !== from) {
    await res.body?.cancel();
    throw new CloudletError("REMOTE", `${url} answered a range request for byte ${from} with Content-Range ${JSON.stringify(res.headers.get("content-range"))}`);
  }
  return res;
}

/** Reads exactly `n` bytes of a response, never buffering more than `n`. */
async function exact(res: Response, n: number, url: string): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let have = 0;
  const reader = res.body?.getReader();
  if (!reader) throw new CloudletError("REMOTE", `${url} sent no body`);
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (have + value.length > n) throw new CloudletError("REMOTE", `${url} sent more than the ${n} bytes asked for`);
      out.set(value, have);
      have += value.length;
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
  if (have !== n) throw new CloudletError("TRUNCATED", `expected ${n} bytes, got ${have}`, url);
  return out;
}

/** Reads the header and meta of the overlay at `url`. */
export async function openUrlOverlay(url: string, maxMeta: number, signal: AbortSignal): Promise<UrlOverlay> {
  const head = await exact(await range(url, 0, HEADER_BYTES - 1, signal), HEADER_BYTES, url);
  const v = new DataView(head.buffer);
  const metaLength = Number(v.getBigUint64(24, true));
  const dataOffset = Number(v.getBigUint64(32, true));
  const totalLength = Number(v.getBigUint64(40, true));
  if (!(metaLength >= HEADER_BYTES && metaLength <= maxMeta)) throw new CloudletError("BAD_META", `meta of ${metaLength} bytes is outside the accepted size`, url);
  const meta = await exact(await range(url, HEADER_BYTES, HEADER_BYTES + metaLength - 1, signal), metaLength, url);
  const headerAndMeta = new Uint8Array(HEADER_BYTES + metaLength);
  headerAndMeta.set(head);
  headerAndMeta.set(meta, HEADER_BYTES);
  return {
    headerAndMeta,
    dataOffset,
    totalLength,
    range: async (offset, length) => exact(await range(url, dataOffset + offset, dataOffset + offset + length - 1, signal), length, url),
    body: async (offset) => {
      const res = await range(url, dataOffset + offset, null, signal);
      if (!res.body) throw new CloudletError("REMOTE", `${url} sent no body`);
      return res.body as unknown as AsyncIterable<Uint8Array>;
    },
  };
}
