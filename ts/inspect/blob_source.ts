/**
 * BlobSource: a {@link ByteSource} over a Blob or a File (a dropped file in
 * the browser). Every read slices the Blob, so only the bytes asked for are
 * ever in memory: a 1 GB overlay is read segment by segment.
 */
import { CloudletError } from "../errors.ts";
import type { ByteSource } from "../overlay/io.ts";

/** Random-access bytes of a Blob. */
export class BlobSource implements ByteSource {
  /** @param blob the bytes @param name label for messages (the file name) */
  constructor(
    readonly blob: Blob,
    readonly name: string,
  ) {}

  get size(): number {
    return this.blob.size;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const end = Math.min(this.blob.size, offset + length);
    if (end <= offset) return new Uint8Array(0);
    try {
      return new Uint8Array(await this.blob.slice(offset, end).arrayBuffer());
    } catch (e) {
      // Chromium throws NotReadableError when the file changed on disk after it was dropped.
      throw new CloudletError("MISSING_INPUT", `cannot read (was the file changed or moved after it was opened?): ${(e as Error)?.message ?? e}`, this.name, { cause: e });
    }
  }
}
