/**
 * The phone client, served by `cloudlet serve` at `/` (docs/phone.md): pair
 * with the token from the fragment of the printed link, list the bases,
 * read an overlay's meta in the inspector's Web Worker (its own WASM core)
 * and refuse a wrong base before anything is sent, upload through the
 * session API with progress, resuming after a dropped connection, then
 * offer a big "Open" button for the app's address. VMs started here are
 * detached (a phone that opens the app leaves this page) and listed with a
 * Stop button.
 */
import { formatBytes } from "../ts/inspect/report.ts";
import type { ErrorInfo } from "../ts/inspect/segment_check.ts";
import { expandAppUrl } from "../ts/overlay/launch.ts";
import type { OverlayMeta } from "../ts/overlay/format.ts";
import type { Endpoint, ServerInfo, SessionEvent, SessionStatus } from "../ts/server/protocol.ts";
import { byId, fill, h } from "./dom.ts";
import type { OpenedOverlay, UploadPlan } from "./protocol.ts";
import { startWorker } from "./core_loader.ts";
import { type WorkerClient, WorkerError } from "./worker_client.ts";

const TOKEN_KEY = "cloudlet.token";
const VMS_KEY = "cloudlet.vms";
const API = "/v1";
const OFFSET_HEADER = "upload-offset";

/** A VM this phone started (kept in localStorage for the list). */
interface KnownVm {
  id: string;
  name: string;
  url: string | null;
  ports: Endpoint["ports"];
  host: string;
  started: number;
}

/** The session API refused the token. */
class Unpaired extends Error {}

/** An API error, with the server's code. */
class ApiError extends Error {
  /** @param status HTTP status @param code server's code @param message server's message */
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

// ---------------------------------------------------------------------------
// Pairing: the token arrives in the fragment and is kept for this origin only.

function takeTokenFromFragment(): void {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return;
  localStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
  // Out of the address bar, the history and any bookmark.
  history.replaceState(null, "", location.pathname + location.search);
}

function token(): string | null {
  return localStorage.getItem(TOKEN_KEY);
}

function showPairing(why: string): void {
  byId("app").hidden = true;
  byId("pair").hidden = false;
  byId("pair-why").textContent = why;
  document.body.dataset.screen = "pair";
}

async function api(path: string, init: RequestInit = {}): Promise<Response> {
  const t = token();
  if (!t) throw new Unpaired("not paired");
  const res = await fetch(API + path, { ...init, headers: { ...(init.headers as Record<string, string>), authorization: `Bearer ${t}` }, cache: "no-store" });
  if (res.status === 401) {
    localStorage.removeItem(TOKEN_KEY);
    showPairing("The cloudlet did not accept the stored token (it may have a new one). Pair again.");
    throw new Unpaired("token refused");
  }
  return res;
}

async function apiJson<T>(path: string, init: RequestInit = {}, ok = [200, 201]): Promise<T> {
  const res = await api(path, init);
  const text = await res.text();
  if (!ok.includes(res.status)) {
    let code = "REMOTE";
    let message = text;
    try {
      const e = (JSON.parse(text) as { error?: { code: string; message: string } }).error;
      if (e) ({ code, message } = e);
    } catch {
      // not JSON: keep the text
    }
    throw new ApiError(res.status, code, message);
  }
  return JSON.parse(text) as T;
}

// ---------------------------------------------------------------------------
// Display helpers.

function showError(message: string | null): void {
  const el = byId("error");
  el.hidden = message === null;
  el.textContent = message ?? "";
}

function seconds(s: number): string {
  if (!Number.isFinite(s)) return "…";
  if (s < 60) return `${Math.ceil(s)} s`;
  return `${Math.floor(s / 60)} min ${Math.ceil(s % 60)} s`;
}

function shortId(id: string): string {
  return id.slice(0, 12) + "…";
}

function describeError(e: unknown): string {
  if (e instanceof WorkerError) return e.info.message + (e.info.file ? ` (${e.info.file})` : "");
  if (e instanceof ApiError) return `${e.message} (${e.code})`;
  return (e as Error)?.message ?? String(e);
}

// ---------------------------------------------------------------------------
// The bases, and the core in a worker.

let info: ServerInfo | null = null;

async function loadInfo(): Promise<void> {
  info = await apiJson<ServerInfo>("/info");
  byId("server-name").textContent = info.name;
  fill(
    byId("base-list"),
    ...(info.bases.length
      ? info.bases.map((b) => h("li", { class: "item", "data-base": b.id }, h("div", {}, h("b", {}, b.name), h("code", { class: "muted small" }, b.id)), h("span", { class: "muted small" }, `${formatBytes(b.memorySize)} RAM`)))
      : [h("li", { class: "item muted" }, "No bases yet: make one with cloudlet base.")]),
  );
}

let worker: Promise<WorkerClient> | null = null;

/** The inspector's worker with the WASM core loaded (the same loader), started once. */
function coreWorker(): Promise<WorkerClient> {
  worker ??= startWorker();
  worker.catch(() => (worker = null));
  return worker;
}

// ---------------------------------------------------------------------------
// Picking an overlay: open it in the worker, check its base against the cloudlet's.

let picked: { files: Map<string, File>; opened: OpenedOverlay; plan: UploadPlan; baseName: string } | null = null;

/** Shows what was picked: one paragraph per line (a line may be several pieces). */
function setPicked(state: string, ...lines: Array<Node | string | Array<Node | string>>): void {
  const el = byId("picked");
  el.dataset.state = state;
  fill(el, ...lines.map((l) => h("p", {}, ...(Array.isArray(l) ? l : [l]))));
}

async function pick(list: FileList | null): Promise<void> {
  picked = null;
  showError(null);
  const button = byId<HTMLButtonElement>("upload-button");
  button.disabled = true;
  button.hidden = true;
  if (!list || list.length === 0) return setPicked("none");
  const files = new Map([...list].map((f) => [f.name, f]));
  setPicked("reading", `Reading ${[...files.keys()].join(", ")}…`);
  let opened: OpenedOverlay;
  let plan: UploadPlan;
  try {
    const w = await coreWorker();
    opened = await w.call<OpenedOverlay>({ op: "open", files: [...files.values()].map((f) => ({ type: "blob", name: f.name, blob: f })) });
    plan = await w.call<UploadPlan>({ op: "plan" });
    const missing = [...new Set(plan.segments.map((s) => s.file))].filter((n) => !files.has(n));
    if (missing.length) throw new Error(`segment file(s) missing: ${missing.join(", ")}; select them together with ${opened.name}`);
  } catch (e) {
    return setPicked("refused", `Cannot use these files: ${describeError(e)}`);
  }
  const meta: OverlayMeta = opened.meta;
  if (!info) await loadInfo();
  const base = info!.bases.find((b) => b.id === meta.base.id);
  const size = formatBytes(opened.totalBytes);
  if (!base) {
    const have = info!.bases.map((b) => `${b.name} (${shortId(b.id)})`).join(", ") || "no bases";
    return setPicked(
      "refused",
      h("b", {}, `Not sent: ${opened.name} needs base ${meta.base.id}`),
      `That base (${meta.base.machine.machine}, ${meta.base.machine.ramMiB} MiB RAM, ${formatBytes(meta.base.diskSize)} disk) is not on this cloudlet, which has ${have}. Make or import that base on the cloudlet first.`,
    );
  }
  picked = { files, opened, plan, baseName: base.name };
  setPicked("ready", h("b", {}, opened.name), [`${size} in ${meta.segments.length} segment(s), for base `, h("span", { class: "good", "data-base-name": base.name }, `${base.name} ✓`)]);
  button.hidden = false;
  button.disabled = false;
}

// ---------------------------------------------------------------------------
// Uploading: create a session, send the meta, then the segments one request
// each, so a cut costs at most one segment; the server's offset says where to
// go on.

/** Upload rate over the last few seconds. */
class RateMeter {
  private samples: Array<[number, number]> = [];
  /** Records `bytes` done at now; returns bytes per second. */
  add(bytes: number): number {
    const now = performance.now();
    this.samples.push([now, bytes]);
    while (this.samples.length > 2 && now - this.samples[0][0] > 4000) this.samples.shift();
    const [t0, b0] = this.samples[0];
    return now - t0 > 200 ? ((bytes - b0) * 1000) / (now - t0) : 0;
  }
}

function setState(state: string, text: string): void {
  byId("progress").dataset.state = state;
  byId("state-text").textContent = text;
}

/** Sends one segment's bytes with XMLHttpRequest (fetch has no upload progress); resolves with the server's offset. */
function sendSegment(id: string, offset: number, body: Blob, onBytes: (n: number) => void): Promise<number> {
  return new Promise((resolve, reject) => {
    const x = new XMLHttpRequest();
    x.open("PATCH", `${API}/sessions/${id}/data`);
    x.setRequestHeader("authorization", `Bearer ${token()}`);
    x.setRequestHeader("content-type", "application/octet-stream");
    x.setRequestHeader(OFFSET_HEADER, String(offset));
    x.upload.onprogress = (e) => onBytes(e.loaded);
    x.onload = () => {
      if (x.status === 204 || x.status === 200) return resolve(Number(x.getResponseHeader(OFFSET_HEADER)));
      if (x.status === 409 && x.getResponseHeader(OFFSET_HEADER)) return resolve(Number(x.getResponseHeader(OFFSET_HEADER)));
      let msg = x.responseText;
      let code = "REMOTE";
      try {
        ({ code, message: msg } = (JSON.parse(x.responseText) as { error: { code: string; message: string } }).error);
      } catch {
        // keep the text
      }
      reject(new ApiError(x.status, code, msg));
    };
    x.onerror = () => reject(new TypeError("connection lost"));
    x.onabort = () => reject(new TypeError("connection lost"));
    x.send(body);
  });
}

/** Waits `ms`, or less when the browser says the network is back. */
function pause(ms: number): Promise<void> {
  return new Promise((r) => {
    const t = setTimeout(r, ms);
    addEventListener("online", () => (clearTimeout(t), r()), { once: true });
  });
}

/** Follows the session's events, reconnecting after a cut, until done or failed. */
async function follow(id: string, on: (e: SessionEvent) => void, finished: () => boolean): Promise<void> {
  while (!finished()) {
    try {
      const res = await api(`/sessions/${id}/events`);
      if (res.status === 404) throw new ApiError(404, "NOT_FOUND", "the cloudlet no longer has this session");
      if (res.status !== 200) throw new ApiError(res.status, "REMOTE", `the cloudlet's event stream answered ${res.status}`);
      const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (line) on(JSON.parse(line) as SessionEvent);
        }
        if (finished()) return void reader.cancel();
      }
    } catch (e) {
      if (e instanceof Unpaired || e instanceof ApiError) throw e;
    }
    if (!finished()) await pause(1000);
  }
}

async function upload(): Promise<void> {
  if (!picked) return;
  const { files, opened, plan } = picked;
  const meta = opened.meta;
  const button = byId<HTMLButtonElement>("upload-button");
  button.disabled = true;
  byId<HTMLInputElement>("file-input").disabled = true;
  byId("open-panel").hidden = true;
  byId("progress").hidden = false;
  showError(null);
  const total = plan.segments.reduce((t, s) => t + s.size, 0);
  const uploadBar = byId<HTMLProgressElement>("upload-bar");
  const applyBar = byId<HTMLProgressElement>("apply-bar");
  uploadBar.max = applyBar.max = Math.max(1, total);
  uploadBar.value = applyBar.value = 0;
  const rate = new RateMeter();
  const showSent = (sent: number) => {
    const r = rate.add(sent);
    uploadBar.value = sent;
    const eta = r > 0 ? seconds((total - sent) / r) : "…";
    byId("upload-text").textContent = `${formatBytes(sent)} of ${formatBytes(total)}` + (sent < total ? ` · ${formatBytes(r)}/s · ${eta} left` : " · sent");
    byId("upload-text").dataset.sent = String(sent);
  };
  const t0 = performance.now();
  let endpoint: Endpoint | null = null;
  let failure: string | null = null;
  let id = "";
  setState("starting", "Starting a session…");
  try {
    id = (await apiJson<SessionStatus>("/sessions", { method: "POST" })).id;
    document.body.dataset.session = id;
    const watching = follow(
      id,
      (e) => {
        if (e.type === "progress") {
          applyBar.value = e.applied;
          byId("apply-text").textContent = `${formatBytes(e.applied)} of ${formatBytes(e.expected)} applied`;
        } else if (e.type === "status") {
          if (e.status.state === "launching") setState("launching", "Every segment verified; resuming the VM…");
          if (e.status.state === "failed" || e.status.state === "closed") failure ??= e.status.error?.message ?? `the session was ${e.status.state}`;
        } else if (e.type === "done") endpoint = e.endpoint;
        else if (e.type === "error") failure = e.message;
      },
      () => endpoint !== null || failure !== null,
    ).catch((e: unknown) => {
      // The session is gone, or the token: the upload loop stops on `failure`.
      failure ??= describeError(e);
    });
    await apiJson<SessionStatus>(`/sessions/${id}/meta`, { method: "PUT", body: plan.head as Uint8Array<ArrayBuffer>, headers: { "content-type": "application/octet-stream" } }, [200]);
    setState("uploading", "Uploading; the cloudlet decodes as segments arrive");
    let offset = 0;
    let cuts = 0;
    showSent(0);
    while (offset < total && failure === null) {
      // The segment that starts at `offset` (the server resumes only at segment boundaries).
      let start = 0;
      const i = plan.segments.findIndex((s) => (start += s.size) > offset);
      const seg = plan.segments[i];
      const from = offset;
      try {
        offset = await sendSegment(id, from, files.get(seg.file)!.slice(seg.offset, seg.offset + seg.size), (n) => showSent(from + n));
        if (byId("progress").dataset.state === "resuming") setState("uploading", `Link back: resumed at ${formatBytes(from)}`);
      } catch (e) {
        // A refusal after the session failed: the event stream says why better.
        if (e instanceof ApiError) throw failure !== null ? new Error(failure) : e;
        cuts++;
        setState("resuming", `Connection lost; resuming from ${formatBytes(from)} when the link returns…`);
        document.body.dataset.cuts = String(cuts);
        for (;;) {
          await pause(Math.min(5000, 500 * cuts));
          try {
            const res = await api(`/sessions/${id}/data`, { method: "HEAD" });
            if (res.status === 404) throw new ApiError(404, "NOT_FOUND", "the cloudlet dropped the session while the link was down");
            if (res.status !== 200) throw new ApiError(res.status, "REMOTE", `asking where to resume failed (${res.status})`);
            offset = Number(res.headers.get(OFFSET_HEADER));
            break;
          } catch (e2) {
            if (e2 instanceof ApiError || e2 instanceof Unpaired) throw e2;
          }
        }
      }
      showSent(offset);
    }
    if (failure === null) setState("synthesizing", "Sent; finishing synthesis…");
    await watching;
    if (failure !== null) throw new Error(failure);
    const ep = endpoint as unknown as Endpoint;
    // Keep the VM when this page is left for the app: the phone sends no keep-alives from there.
    await apiJson<SessionStatus>(`/sessions/${id}/detach`, { method: "POST" });
    const url = meta.launch.appUrl ? expandAppUrl(meta.launch.appUrl, location.hostname, ep.ports) : null;
    const vm: KnownVm = { id, name: opened.name, url, ports: ep.ports, host: location.hostname, started: Date.now() };
    saveVms([vm, ...loadVms().filter((v) => v.id !== id)]);
    const secs = (performance.now() - t0) / 1000;
    setState("running", `VM ${ep.vmId.slice(0, 12)} is running (${secs.toFixed(1)} s: synthesis ${(ep.ms.synthesis / 1000).toFixed(1)} s, resume ${(ep.ms.launch / 1000).toFixed(1)} s)`);
    showOpen(vm);
    renderVms();
    // This overlay is done; picking it (or another) again shows the button again.
    button.hidden = true;
    byId("picked").dataset.state = "sent";
    picked = null;
  } catch (e) {
    if (e instanceof Unpaired) return;
    setState("failed", "Failed");
    showError(`Synthesis failed: ${describeError(e)}`);
    if (id) void api(`/sessions/${id}`, { method: "DELETE" }).catch(() => {});
  } finally {
    const input = byId<HTMLInputElement>("file-input");
    input.disabled = false;
    // Otherwise choosing the same file again fires no change event.
    input.value = "";
    button.disabled = false;
  }
}

function portsText(vm: KnownVm): string {
  return vm.ports.map((p) => `guest ${p.proto}/${p.guestPort} at ${vm.host}:${p.hostPort}`).join(", ") || "no ports forwarded";
}

function showOpen(vm: KnownVm): void {
  const link = byId<HTMLAnchorElement>("open-link");
  byId("open-panel").hidden = false;
  if (vm.url) {
    link.href = vm.url;
    link.hidden = false;
    byId("open-text").textContent = vm.url;
  } else {
    link.hidden = true;
    link.removeAttribute("href");
    byId("open-text").textContent = `This overlay names no app address (cloudlet overlay --app-url); the VM has ${portsText(vm)}.`;
  }
}

// ---------------------------------------------------------------------------
// This phone's VMs: the detached sessions it started, checked with the server.

function loadVms(): KnownVm[] {
  try {
    const v = JSON.parse(localStorage.getItem(VMS_KEY) ?? "[]") as unknown;
    return Array.isArray(v) ? (v as KnownVm[]) : [];
  } catch {
    return [];
  }
}

function saveVms(vms: KnownVm[]): void {
  localStorage.setItem(VMS_KEY, JSON.stringify(vms.slice(0, 50)));
}

function renderVms(): void {
  const vms = loadVms();
  fill(
    byId("vm-list"),
    ...(vms.length
      ? vms.map((vm) =>
          h(
            "li",
            { class: "item", "data-vm": vm.id },
            h("div", {}, h("b", {}, vm.name), vm.url ? h("a", { href: vm.url, target: "_blank", rel: "noopener noreferrer" }, vm.url) : h("span", { class: "muted small" }, portsText(vm))),
            h("button", { class: "stop", onclick: () => void stopVm(vm.id) }, "Stop"),
          ),
        )
      : [h("li", { class: "item muted" }, "None running.")]),
  );
}

async function stopVm(id: string): Promise<void> {
  try {
    const res = await api(`/sessions/${id}`, { method: "DELETE" });
    if (res.status !== 200 && res.status !== 404) throw new ApiError(res.status, "REMOTE", `stopping failed (${res.status})`);
  } catch (e) {
    if (!(e instanceof Unpaired)) showError(`Stop: ${describeError(e)}`);
    return;
  }
  saveVms(loadVms().filter((v) => v.id !== id));
  if (document.body.dataset.session === id) {
    byId("open-panel").hidden = true;
    setState("stopped", "VM stopped");
  }
  renderVms();
}

/** Drops the VMs the cloudlet no longer runs (stopped elsewhere, or the server restarted). */
async function refreshVms(): Promise<void> {
  const keep: KnownVm[] = [];
  for (const vm of loadVms()) {
    try {
      const res = await api(`/sessions/${vm.id}`);
      if (res.status === 200 && ((await res.json()) as SessionStatus).state === "running") keep.push(vm);
      else if (res.status !== 404 && res.status !== 200) keep.push(vm);
    } catch (e) {
      if (e instanceof Unpaired) return;
      keep.push(vm); // the link is down: keep it for now
    }
  }
  const ids = new Set(keep.map((v) => v.id));
  saveVms(loadVms().filter((v) => ids.has(v.id)));
  renderVms();
}

// ---------------------------------------------------------------------------

async function start(): Promise<void> {
  // A pairing link opened while the page is already open changes only the fragment: start over with it.
  addEventListener("hashchange", () => /token=/.test(location.hash) && location.reload());
  takeTokenFromFragment();
  if (!token()) return showPairing("This device is not paired with the cloudlet yet.");
  try {
    await loadInfo();
  } catch (e) {
    if (e instanceof Unpaired) return;
    byId("app").hidden = false;
    showError(`Cannot reach the cloudlet: ${describeError(e)}`);
    return;
  }
  byId("pair").hidden = true;
  byId("app").hidden = false;
  document.body.dataset.screen = "app";
  byId<HTMLInputElement>("file-input").addEventListener("change", (e) => void pick((e.target as HTMLInputElement).files));
  byId("upload-button").addEventListener("click", () => void upload());
  renderVms();
  await refreshVms();
  setInterval(() => void refreshVms(), 15_000);
}

void start().catch((e: unknown) => showError(`The page failed: ${(e as ErrorInfo)?.message ?? e}`));
