/**
 * HttpSource: a {@link ByteSource} over a URL, read with HTTP Range requests,
 * so a page can stream a large overlay or base image from the local inspect
 * server without downloading it whole. Uses only `fetch`.
 */
import { CloudletError } from "../errors.ts";
import type { ByteSource } from "../overlay/io.ts";

/** Random-access bytes of a URL whose server answers Range requests. */
export class HttpSource implements ByteSource {
  /** @param url where the bytes are @param name label for messages @param size total bytes (the server's listing says) */
  constructor(
    readonly url: string,
    readonly name: string,
    readonly size: number,
  ) {}

  async read(offset: number, length: number): Promise<Uint8Array> {
    const end = Math.min(this.size, offset + length);
    if (end <= offset) return new Uint8Array(0);
    let res: Response;
    try {
      res = await fetch(this.url, { headers: { Range: `bytes=${offset}-${end - 1}` }, cache: "no-store" });
    } catch (e) {
      throw new CloudletError("REMOTE", `cannot fetch ${this.url} (is the inspect server still running?): ${(e as Error)?.message ?? e}`, this.name, { cause: e });
    }
    if (res.status !== 206) {
      await res.body?.cancel();
      throw new CloudletError("REMOTE", `the server answered ${res.status} ${res.statusText} to a range request for bytes ${offset}-${end - 1}`, this.name);
    }
    const b = new Uint8Array(await res.arrayBuffer());
    if (b.length !== end - offset) throw new CloudletError("TRUNCATED", `the server sent ${b.length} of ${end - offset} bytes at offset ${offset} (did the file shrink?)`, this.name);
    return b;
  }
}
