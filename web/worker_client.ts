/**
 * WorkerClient: the page's side of the worker protocol (see protocol.ts):
 * numbered requests that resolve with their reply, plus segment events.
 */
import type { SegmentCheck } from "../ts/inspect/segment_check.ts";
import type { ErrorInfo } from "../ts/inspect/segment_check.ts";
import type { Reply, Request } from "./protocol.ts";

/** Distributes Omit over a union, so each request keeps its own fields. */
type WithoutId<T> = T extends unknown ? Omit<T, "id"> : never;

/** A rejected request: the worker's error, as the user should read it. */
export class WorkerError extends Error {
  /** @param info the worker's error */
  constructor(readonly info: ErrorInfo) {
    super(info.message);
  }
}

/** A running inspector worker. */
export class WorkerClient {
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #next = 1;
  /** Called for each checked segment. */
  onSegment: (check: SegmentCheck, bytesDone: number, bytesTotal: number) => void = () => {};

  /** @param url the worker script (a file URL or a blob: URL) */
  constructor(url: string) {
    this.#worker = new Worker(url);
    this.#worker.onmessage = (e: MessageEvent<Reply>) => {
      const m = e.data;
      if (m.op === "segment") return this.onSegment(m.check, m.bytesDone, m.bytesTotal);
      const p = this.#pending.get(m.id);
      if (!p) return;
      this.#pending.delete(m.id);
      if (m.ok) p.resolve(m.value);
      else p.reject(new WorkerError(m.error));
    };
    this.#worker.onerror = (e) => {
      const err = new WorkerError({ code: "INTERNAL", message: `the inspector worker failed: ${e.message}`, file: null });
      for (const p of this.#pending.values()) p.reject(err);
      this.#pending.clear();
    };
  }

  /** Sends a request; resolves with the worker's reply value. */
  call<T>(req: WithoutId<Request>, transfer: Transferable[] = []): Promise<T> {
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#worker.postMessage({ ...req, id }, transfer);
    });
  }

  /** Stops the worker; pending requests never settle. */
  terminate(): void {
    this.#worker.terminate();
    this.#pending.clear();
  }
}
