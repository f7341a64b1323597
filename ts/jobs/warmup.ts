/**
 * Working-set recording (issue 12, item 3): after the snapshot, `cloudlet
 * overlay --warmup-url URL | --warmup-script FILE` resumes the custom VM once
 * more through the lazy path of early start, from an overlay written in image
 * order, with no background fill or push: every memory page the guest faults
 * on and every disk chunk it reads is a request, heard in first-touch order.
 * The warm-up runs (an HTTP address polled until it answers, or a script on
 * the serial console), the VM is thrown away, and the overlay is written
 * again with those chunks first: the boot set.
 */
import * as http from "node:http";
import * as https from "node:https";
import { basename, join } from "node:path";
import { CloudletError } from "../errors.ts";
import { type OverlayMeta, type PortForward } from "../overlay/format.ts";
import { checkAppUrl, expandAppUrl } from "../overlay/launch.ts";
import type { WorkingSetOrder } from "../overlay/writer.ts";
import type { OverlayReader } from "../overlay/reader.ts";
import type { BaseRow } from "../home/registry.ts";
import type { HostChoice } from "../vm/host_choice.ts";
import { SerialConsole, type SerialLogin } from "../vm/serial_console.ts";
import { earlyStartBlocker, synthesizeEarly } from "./early_start.ts";
import { say, type VmJobContext } from "./context.ts";

/** What runs while the working set is recorded. */
export interface Warmup {
  /** An address template (`http://{host}:{port:80}/path`, as `--app-url`), polled until it answers 2xx or 3xx. */
  url?: string;
  /** A shell script run in the guest over the serial console (exit code 0 expected), and its file name. */
  script?: { text: string; name: string };
  /** Log in with this when the serial console asks (for the script). */
  login?: SerialLogin;
  /** Time limit for the warm-up, ms (default 300 s). */
  timeoutMs?: number;
}

/** What a recording found. */
export interface RecordedWorkingSet {
  /** The touches in first-touch order, and why (for the meta's boot set). */
  order: WorkingSetOrder;
  /** Milliseconds from the start of the lazy VM to its resume, and to the end of the warm-up. */
  resumedMs: number;
  warmupMs: number;
  /** Distinct memory pages and disk chunks touched (stored in the overlay or not). */
  pages: number;
  chunks: number;
}

/** Checks a warm-up against the recorded port forwards; returns the boot set's reason. */
export function checkWarmup(w: Warmup, forwards: PortForward[]): string {
  if (w.url !== undefined && w.script !== undefined) throw new CloudletError("BAD_ARGUMENT", "give --warmup-url or --warmup-script, not both");
  if (w.url !== undefined) {
    try {
      checkAppUrl(w.url, forwards);
    } catch (e) {
      if (e instanceof CloudletError) throw new CloudletError("BAD_ARGUMENT", e.userMessage.replaceAll("--app-url", "--warmup-url"));
      throw e;
    }
    if (!/\{port:\d+\}/.test(w.url)) throw new CloudletError("BAD_ARGUMENT", `--warmup-url must reach the guest through a port forward, named as {port:GUESTPORT} (e.g. 'http://{host}:{port:80}/'), not "${w.url}"`);
    return `warmup-url ${w.url}`;
  }
  if (w.script !== undefined) return `warmup-script ${w.script.name}`;
  throw new CloudletError("BAD_ARGUMENT", "a warm-up needs --warmup-url or --warmup-script");
}

/** Why a warm-up cannot run on this host (the lazy path's blockers that do not depend on the overlay), or null. */
export function warmupBlocker(host: HostChoice, diskBytes: number): Promise<string | null> {
  // A stand-in meta: the host checks, with device state present (VM mode always has it) and the base disk's size.
  return earlyStartBlocker(host, { imageSizes: [diskBytes, 0, 1] } as unknown as OverlayMeta);
}

/**
 * Resumes the VM of `overlay` lazily with nothing pushed, runs the warm-up,
 * and returns the memory pages and disk chunks in the order the guest first
 * asked for them. The VM and its folder are gone when this returns.
 */
export async function recordWorkingSet(ctx: VmJobContext, base: BaseRow, overlay: OverlayReader, o: { overlayPath: string; warmup: Warmup; reason: string; threads?: number }): Promise<RecordedWorkingSet> {
  const meta = overlay.meta;
  const seen = [new Uint8Array(Math.ceil(meta.imageSizes[0] / 4096)), new Uint8Array(Math.ceil(meta.imageSizes[1] / 4096))];
  const touches: Array<[number, number]> = [];
  const counts = [0, 0];
  let warmupMs = 0;
  const r = await synthesizeEarly(ctx, base, overlay, {
    overlayPath: o.overlayPath,
    autoPorts: true,
    threads: o.threads,
    record: {
      touched(kind, index) {
        if (seen[kind][index]) return;
        seen[kind][index] = 1;
        counts[kind]++;
        touches.push([kind, index]);
      },
      async warmup(vm) {
        const t = performance.now();
        await runWarmup(ctx, vm, o.warmup);
        warmupMs = performance.now() - t;
      },
    },
  });
  say(ctx, `warm-up: done after ${(warmupMs / 1000).toFixed(1)} s; it touched ${counts[1]} memory pages and ${counts[0]} disk chunks`);
  return { order: { touches, reason: o.reason }, resumedMs: r.early.resumedMs, warmupMs, pages: counts[1], chunks: counts[0] };
}

/** Runs the warm-up against the lazy VM: polls the URL until it answers, or runs the script on the serial console. */
async function runWarmup(ctx: VmJobContext, vm: { runDir: string; hostAddress: string; ports: PortForward[] }, w: Warmup): Promise<void> {
  const timeoutMs = w.timeoutMs ?? 300_000;
  const deadline = Date.now() + timeoutMs;
  if (w.script !== undefined) {
    const serial = new SerialConsole(join(vm.runDir, "serial.sock"), join(vm.runDir, "serial.log"));
    const r = await serial.run(w.script.text, { timeoutMs, signal: ctx.signal, login: w.login });
    if (r.exitCode !== 0) throw new CloudletError("GUEST", `the warm-up script ${basename(w.script.name)} exited with ${r.exitCode} in the guest: ${r.output.trim().split("\n").slice(-8).join(" / ")}`);
    return;
  }
  const url = expandAppUrl(w.url!, vm.hostAddress, vm.ports);
  if (!url) throw new CloudletError("BAD_ARGUMENT", `--warmup-url ${w.url} names a guest port that is not forwarded`);
  let last = "no answer yet";
  for (;;) {
    ctx.signal?.throwIfAborted();
    const status = await httpStatus(url, Math.max(1, Math.min(10_000, deadline - Date.now())));
    if (typeof status === "number" && status >= 200 && status < 400) return;
    last = typeof status === "number" ? `HTTP ${status}` : status;
    if (Date.now() >= deadline) throw new CloudletError("GUEST", `the warm-up address ${url} did not answer 2xx/3xx within ${(timeoutMs / 1000).toFixed(0)} s (last: ${last})`);
    ctx.status?.(`warm-up: waiting for ${url} | ${last}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * The status of a GET of `url` (its body read and dropped), or why there was
 * none. node:http with the lenient parser: small guest servers (busybox httpd
 * CGI) answer in ways fetch() refuses.
 */
function httpStatus(url: string, timeoutMs: number): Promise<number | string> {
  return new Promise((resolve) => {
    const get = url.startsWith("https:") ? https.get : http.get;
    const req = get(url, { timeout: timeoutMs, insecureHTTPParser: true, rejectUnauthorized: false }, (res) => {
      res.on("data", () => {});
      res.on("end", () => resolve(res.statusCode ?? "no status"));
      res.on("error", (e) => resolve(e.message));
    });
    req.on("error", (e) => resolve(e.message));
    req.on("timeout", () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
  });
}
