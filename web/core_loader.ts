/**
 * The core's assets and its Web Worker, shared by the inspector page and the
 * phone client: the .wasm bytes, the kernel vectors and the worker script,
 * embedded in the single-file build or fetched beside the page otherwise.
 */
import type { KernelVectors } from "../ts/inspect/vector_check.ts";
import { WorkerClient } from "./worker_client.ts";

/** The page's assets: embedded in the single-file build, fetched beside the page otherwise. */
export const assets = {
  wasm: null as Promise<ArrayBuffer> | null,
  workerUrl: null as string | null,

  /** The bytes of cloudlet_core_bg.wasm. */
  wasmBytes(): Promise<ArrayBuffer> {
    this.wasm ??= (async () => {
      const embedded = document.getElementById("cloudlet-wasm")?.textContent?.trim();
      if (embedded) return Uint8Array.from(atob(embedded), (c) => c.charCodeAt(0)).buffer;
      const res = await fetch("cloudlet_core_bg.wasm");
      if (!res.ok) throw new Error(`cannot load cloudlet_core_bg.wasm: ${res.status} ${res.statusText}`);
      return res.arrayBuffer();
    })();
    return this.wasm;
  },

  /** The shared kernel vectors. */
  async vectors(): Promise<KernelVectors> {
    const embedded = document.getElementById("cloudlet-vectors")?.textContent?.trim();
    if (embedded) return JSON.parse(embedded);
    const res = await fetch("kernels.json");
    if (!res.ok) throw new Error(`cannot load kernels.json: ${res.status} ${res.statusText}`);
    return res.json();
  },

  /** A URL the worker script loads from. */
  worker(): string {
    if (this.workerUrl) return this.workerUrl;
    const src = document.getElementById("cloudlet-worker")?.textContent;
    this.workerUrl = src ? URL.createObjectURL(new Blob([src], { type: "text/javascript" })) : "worker.js";
    return this.workerUrl;
  },
};

/** A fresh worker with the core loaded. */
export async function startWorker(): Promise<WorkerClient> {
  const client = new WorkerClient(assets.worker());
  const wasm = (await assets.wasmBytes()).slice(0);
  await client.call({ op: "init", wasm }, [wasm]);
  return client;
}

