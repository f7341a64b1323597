/**
 * Postcopy source: cloudlet's own process plays the source side of a QEMU
 * postcopy migration, so a VM resumes before its memory is local and its
 * pages arrive on demand. Stock QEMU 7.2 (Debian 12) is the destination; its
 * guest RAM must be `memory-backend-memfd` (userfaultfd cannot serve a file).
 *
 * ```text
 *   cloudlet (source)                                  QEMU -incoming defer (destination)
 *     migrate-set-capabilities postcopy-ram ---QMP--->
 *     migrate-incoming unix:SOCK            ---QMP--->  listens
 *     connect SOCK  ------------------------------------ one socket, both ways
 *     header, configuration (machine)          ----->
 *     OPEN_RETURN_PATH, PING 1                 ----->  opens the return path      <--- PONG 1
 *     POSTCOPY_ADVISE (page sizes)             ----->  discards all RAM
 *     RAM START: block list                    ----->  checks blocks against its own
 *     POSTCOPY_RAM_DISCARD (page 0)            ----->  (works around a QEMU 7.2 state bug)
 *     RAM PART: ROM pages, boot set            ----->  loaded like precopy
 *     PACKAGED[ LISTEN, device sections, PING 3, RUN ] ->  arms userfaultfd, devices loaded, guest RUNS
 *     RAM PART: requested pages first          ----->  UFFDIO_COPY       <--- REQ_PAGES(_ID) on a fault
 *             then the rest in `order`
 *     RAM END, EOF                             ----->  migration "completed"  <--- SHUT 0
 * ```
 *
 * Every page of the guest RAM block comes from the caller's provider, which
 * verifies it; this module never invents page bytes. A provider error, a
 * broken socket or a destination error kills the destination (SIGKILL): a
 * postcopy guest must not run on a missing page, and the QEMU would otherwise
 * sit in "postcopy-paused" holding the guest.
 *
 * The destination runs the same device command line as the VM that saved the
 * state, with `-object memory-backend-memfd,id=mem,size=N,share=on`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, promises as fsp } from "node:fs";
import { connect, type Socket } from "node:net";
import { join } from "node:path";
import { CloudletError, type ErrorCode } from "../errors.ts";
import {
  be32Payload,
  isZeroPage,
  MIG_CMD,
  PAGE_SIZE,
  postcopyAdvise,
  postcopyDiscard,
  RamSectionWriter,
  ReturnPathParser,
  StreamWriter,
  VM,
  writeCommand,
  writeHeader,
  writePackaged,
  writeRamSetup,
  type SavedDeviceState,
} from "./migration_stream.ts";
import { QmpClient } from "./qmp.ts";

/** Supplies one verified page (PAGE_SIZE bytes) of guest RAM by index; rejects when the page cannot be had or verified. */
export type PageProvider = (pageIndex: number) => Promise<Uint8Array>;

/** Options for {@link startPostcopyDestination}. */
export interface PostcopyDestinationOptions {
  /** QEMU binary; default qemu-system-x86_64. */
  binary?: string;
  /**
   * The VM's command line without `-incoming` (the same devices as the VM that
   * saved the state); its RAM must be `memory-backend-memfd,...,share=on`.
   */
  args: string[];
  /** Where the QMP socket and the QEMU log go (must exist). */
  runDir: string;
}

/** A QEMU started with `-incoming defer`, waiting for cloudlet's postcopy stream. */
export interface PostcopyDestination {
  readonly pid: number;
  readonly qmp: QmpClient;
  /** The QEMU log (stdout and stderr). */
  readonly logPath: string;
  /** Resolves when QEMU has exited (never rejects). */
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  /** True once QEMU has exited. */
  readonly hasExited: boolean;
  /** Kills QEMU at once (SIGKILL) and waits for it. */
  kill(): Promise<void>;
  /** The last lines of the QEMU log. */
  logTail(lines?: number): Promise<string>;
  /** Lets QEMU outlive this process (once it no longer needs the source): drops the handle and closes this QMP connection. */
  detach(): void;
}

/** Starts a destination QEMU for {@link resumePostcopy}; HOST_TOOL error (with QEMU's words) when it does not come up. */
export async function startPostcopyDestination(opts: PostcopyDestinationOptions): Promise<PostcopyDestination> {
  const binary = opts.binary ?? "qemu-system-x86_64";
  if (!opts.args.some((a) => a.startsWith("memory-backend-memfd,") && /(^|,)share=on(,|$)/.test(a))) {
    throw new CloudletError("BAD_ARGUMENT", "a postcopy destination needs its RAM in -object memory-backend-memfd,...,share=on (userfaultfd cannot serve a file)");
  }
  if (opts.args.includes("-incoming")) throw new CloudletError("BAD_ARGUMENT", "a postcopy destination's arguments must not carry -incoming (it is added)");
  const qmpPath = join(opts.runDir, "postcopy-qmp.sock");
  const logPath = join(opts.runDir, "postcopy-qemu.log");
  await fsp.rm(qmpPath, { force: true });
  const fd = openSync(logPath, "a");
  let child: ChildProcess;
  try {
    child = spawn(binary, [...opts.args, "-incoming", "defer", "-qmp", `unix:${qmpPath},server=on,wait=off`], { detached: true, stdio: ["ignore", fd, fd] });
  } finally {
    closeSync(fd);
  }
  let done = false;
  const spawnError = new Promise<Error>((resolve) => child.once("error", resolve));
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.once("exit", (code, signal) => {
      done = true;
      resolve({ code, signal });
    }),
  );
  if (!child.pid) throw new CloudletError("TOOL_MISSING", `cannot start ${binary}: ${(await spawnError).message}`);
  const logTail = async (lines = 6) => (await fsp.readFile(logPath, "utf8").catch(() => "")).trim().split("\n").slice(-lines).join(" | ");
  const kill = async () => {
    if (!done) child.kill("SIGKILL");
    await exited;
  };
  let qmp: QmpClient;
  try {
    qmp = await QmpClient.connect(qmpPath, { alive: () => !done });
  } catch (e) {
    await kill();
    throw new CloudletError("HOST_TOOL", `${binary} did not start as a postcopy destination: ${(await logTail()) || (e as Error).message}`, logPath, { cause: e });
  }
  void exited.then(() => qmp.close());
  return {
    pid: child.pid,
    qmp,
    logPath,
    exited,
    get hasExited() {
      return done;
    },
    kill,
    logTail,
    detach: () => {
      child.unref();
      qmp.close();
    },
  };
}

/** Options for {@link runPostcopySource}. */
export interface PostcopySourceOptions {
  /** A connected socket to the destination's incoming migration; the return path comes back on it. */
  socket: Socket;
  /** The saved device state (see parseDeviceState). */
  state: SavedDeviceState;
  /** Guest RAM in bytes; must equal the state's guest RAM block. */
  ramBytes: number;
  /** Pages of guest RAM, verified by the caller. */
  pages: PageProvider;
  /** Pages sent before the device state, so they are local when the guest starts (a boot set). */
  precopy?: number[];
  /** The background order after requests: these pages first, then every other page in ascending order. */
  order?: number[];
  /** Called for each page the destination requested that had not been sent yet. */
  onRequest?: (pageIndex: number) => void;
  /**
   * Send no page in the background, only those requested (and `precopy`), so
   * that every first touch of the guest shows as a request (recording a
   * working set). The migration then never ends: the caller stops the VM.
   */
  demandOnly?: boolean;
  /** Aborting stops the stream (the caller kills the destination). */
  signal?: AbortSignal;
  /** Background pages fetched and written together (default 32); requests always go first. */
  batchPages?: number;
}

/** Counts of a postcopy source run (live while it runs). */
export interface PostcopyStats {
  /** Guest RAM pages. */
  totalPages: number;
  /** Guest RAM pages sent before the device state. */
  precopyPages: number;
  /** Guest RAM pages sent because the destination faulted on them (each counted once). */
  requestedPages: number;
  /** Page-request messages received (a request for a page already sent counts here only). */
  requestMessages: number;
  /** Guest RAM pages sent in the background order. */
  backgroundPages: number;
  /**
   * Zero pages the background left unsent: the destination dropped all of its
   * RAM at ADVISE, so an unsent page reads as zero once postcopy ends, and one
   * the guest touches before that is requested and sent like any other.
   */
  zeroPagesSkipped: number;
  /** Guest RAM pages written to the destination so far. */
  sentPages: number;
  /** Pages of the other blocks (ROMs, ACPI tables) sent from the state file. */
  statePages: number;
  /** Bytes written to the destination. */
  bytesSent: number;
}

/** A running postcopy source. */
export interface PostcopySource {
  readonly stats: PostcopyStats;
  /** Resolves when the device state (with RUN) has been written. */
  readonly packaged: Promise<void>;
  /** Resolves when every page and the end were written and the destination shut its return path cleanly. */
  readonly done: Promise<void>;
}

/** Writes the postcopy migration stream of `state` on `socket` and serves page requests (see the module doc). */
export function runPostcopySource(opts: PostcopySourceOptions): PostcopySource {
  const { socket, state } = opts;
  const main = state.mainBlock;
  if (main.length !== opts.ramBytes) {
    throw new CloudletError("BAD_INPUT", `the device state's guest RAM block "${main.id}" is ${main.length} bytes, not the VM's ${opts.ramBytes}`);
  }
  const totalPages = main.length / PAGE_SIZE;
  const stats: PostcopyStats = { totalPages, precopyPages: 0, requestedPages: 0, requestMessages: 0, backgroundPages: 0, zeroPagesSkipped: 0, sentPages: 0, statePages: 0, bytesSent: 0 };
  // Per guest page: 0 = not yet, 1 = sent, 2 = requested and on its way, 3 = known zero, left unsent.
  const sent = new Uint8Array(totalPages);
  /** Pages that are sent or known zero: the end comes when all are. */
  let settled = 0;
  const requests: number[] = [];
  let wake: (() => void) | null = null;
  let failure: Error | null = null;
  let shut: ((error: boolean) => void) | null = null;
  const shutSeen = new Promise<boolean>((resolve) => (shut = resolve));
  let lastRequestBlock: string | null = null;
  let shutReceived = false;
  let listening = false;
  let lastRequestAt = -Infinity;
  let serving: Promise<void> | null = null;

  /** Waits that must end when the run fails (a drain that may never come). */
  const onFail = new Set<() => void>();
  const fail = (e: Error) => {
    failure ??= e;
    wake?.();
    for (const f of onFail) f();
  };
  const check = () => {
    if (failure) throw failure;
  };
  const drained = () =>
    new Promise<void>((resolve) => {
      const go = () => (socket.off("drain", go), socket.off("close", go), onFail.delete(go), resolve());
      socket.on("drain", go);
      socket.on("close", go);
      onFail.add(go);
    }).then(check);
  // One socket.write per item, called synchronously after it is built, so the
  // request path and the background path never interleave inside a section.
  const write = (bytes: Uint8Array): boolean => {
    check();
    stats.bytesSent += bytes.length;
    return socket.write(bytes);
  };

  // A page being fetched is fetched once, whichever path asked first.
  const inflight = new Map<number, Promise<Uint8Array>>();
  const fetchPage = (i: number): Promise<Uint8Array> => {
    let p = inflight.get(i);
    if (!p) {
      p = (async () => {
        let b: Uint8Array;
        try {
          b = await opts.pages(i);
          if (!(b instanceof Uint8Array) || b.length !== PAGE_SIZE) throw new Error(`the provider returned ${(b as Uint8Array | undefined)?.length ?? typeof b} bytes instead of ${PAGE_SIZE}`);
        } catch (e) {
          const c = e instanceof CloudletError ? e : null;
          const code: ErrorCode = c?.code ?? "GUEST";
          const err = new CloudletError(code, `postcopy stopped: guest RAM page ${i} could not be served: ${c?.userMessage ?? (e as Error)?.message ?? e}`, c?.file, { cause: e });
          fail(err);
          throw err;
        }
        return b;
      })();
      p.catch(() => {});
      inflight.set(i, p);
    }
    return p;
  };
  const zeroSeen = new Uint8Array(totalPages);
  const knownZero = (p: number) => zeroSeen[p] === 1;
  const w = new StreamWriter();
  /** Writes the given fetched pages as one RAM section (pages already sent are skipped); false when the socket wants a drain. */
  const writePages = (indexes: number[], data: Uint8Array[], kind: "precopyPages" | "requestedPages" | "backgroundPages"): boolean => {
    check();
    const sec = new RamSectionWriter(w, state.ramSectionId);
    indexes.forEach((p, k) => {
      inflight.delete(p);
      if (sent[p] === 1) return;
      if (!zeroSeen[p]) settled++;
      // A zero page in the background costs QEMU a placement and delays the
      // requested pages queued behind it; left unsent it reads as zero anyway.
      if (kind === "backgroundPages" && isZeroPage(data[k])) {
        sent[p] = 3;
        zeroSeen[p] = 1;
        stats.zeroPagesSkipped++;
        return;
      }
      sec.page(main.id, p, data[k]);
      sent[p] = 1;
      stats.sentPages++;
      if (kind !== "requestedPages") stats[kind]++;
    });
    sec.end();
    return sec.pages ? write(w.take()) : (w.take(), true);
  };
  /** Sends requested pages as soon as each batch is fetched, ahead of the background. */
  const serveRequests = () => {
    serving ??= (async () => {
      while (requests.length && !failure) {
        const batch = requests.splice(0, 256);
        const data = await Promise.all(batch.map((p) => (knownZero(p) ? ZERO_PAGE : fetchPage(p))));
        writePages(batch, data, "requestedPages");
      }
    })()
      .catch((e) => fail(e as Error))
      .finally(() => {
        serving = null;
        wake?.();
        if (requests.length && !failure) serveRequests();
      });
  };

  const parser = new ReturnPathParser();
  socket.on("data", (chunk: Uint8Array) => {
    for (const m of parser.push(chunk)) {
      if (m.type === "shut") {
        shutReceived = true;
        shut?.(m.error);
      }
      else if (m.type === "req-pages") {
        stats.requestMessages++;
        lastRequestAt = performance.now();
        const block = m.block ?? lastRequestBlock;
        lastRequestBlock = block;
        if (block !== main.id) {
          // Every page of the other saved blocks went before the device state; a
          // block the state lacks means the destination has other devices, and
          // the page would never come.
          if (!block || !state.blockPages.has(block)) {
            fail(new CloudletError("BAD_INPUT", `the destination asked for a page of RAM block "${block}", which the saved VM does not have: start it with the saved VM's devices`));
          }
          continue;
        }
        const first = Math.floor(m.offset / PAGE_SIZE);
        const end = Math.min(totalPages, Math.ceil((m.offset + m.length) / PAGE_SIZE));
        for (let p = first; p < end; p++) {
          if (sent[p] === 1 || sent[p] === 2) continue;
          if (sent[p] === 3) stats.zeroPagesSkipped--;
          sent[p] = 2;
          requests.push(p);
          stats.requestedPages++;
          opts.onRequest?.(p);
        }
        // Before the package is written, requests (from device loads) wait for it: pages must follow it.
        if (listening) serveRequests();
      }
    }
  });
  socket.on("error", (e) => fail(new CloudletError("GUEST", `postcopy migration socket failed: ${e.message}`)));
  socket.on("close", () => {
    if (shutReceived) return; // QEMU closes its end after SHUT
    shut?.(true);
    fail(new CloudletError("GUEST", "the postcopy destination closed the migration socket"));
  });
  const onAbort = () => fail(new CloudletError("CANCELLED", "postcopy cancelled"));
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  if (opts.signal?.aborted) onAbort();

  let packagedDone!: () => void;
  const packaged = new Promise<void>((resolve) => (packagedDone = resolve));
  const done = (async () => {
    // Setup: everything the destination loads before the guest may run.
    writeHeader(w, state.machine);
    writeCommand(w, MIG_CMD.OPEN_RETURN_PATH);
    writeCommand(w, MIG_CMD.PING, be32Payload(1));
    writeCommand(w, MIG_CMD.POSTCOPY_ADVISE, postcopyAdvise());
    writeRamSetup(w, state.ramSectionId, state.blocks);
    // QEMU 7.2 bug: a LISTEN straight after ADVISE runs the first-discard setup
    // after setting LISTENING, which leaves the state at DISCARD, so the listen
    // thread loads pages the precopy way and blocks on its own userfaultfd.
    // One discard first (of a page the destination has just dropped anyway)
    // moves the state to DISCARD, and LISTEN then goes to LISTENING.
    writeCommand(w, MIG_CMD.POSTCOPY_RAM_DISCARD, postcopyDiscard(main.id, [[0, PAGE_SIZE]]));
    if (!write(w.take())) await drained();
    for (const [block, pages] of state.blockPages) {
      if (block === main.id || pages.size === 0) continue;
      const sec = new RamSectionWriter(w, state.ramSectionId);
      for (const [i, data] of pages) sec.page(block, i, data);
      sec.end();
      stats.statePages += sec.pages;
      if (!write(w.take())) await drained();
    }
    const precopy = uniquePages(opts.precopy ?? [], totalPages, "precopy");
    for (let k = 0; k < precopy.length; k += 256) {
      const batch = precopy.slice(k, k + 256);
      if (!writePages(batch, await Promise.all(batch.map(fetchPage)), "precopyPages")) await drained();
    }

    // The switch-over: LISTEN arms userfaultfd, the device sections load, RUN starts the guest.
    const pkg = new StreamWriter();
    writeCommand(pkg, MIG_CMD.POSTCOPY_LISTEN);
    pkg.bytes(state.devices);
    writeCommand(pkg, MIG_CMD.PING, be32Payload(3));
    writeCommand(pkg, MIG_CMD.POSTCOPY_RUN);
    writePackaged(w, pkg.take());
    const flowing = write(w.take());
    listening = true;
    packagedDone();
    if (requests.length) serveRequests();
    if (!flowing) await drained();

    // Postcopy: the background order; requests overtake it as they arrive.
    const batchPages = Math.max(1, opts.batchPages ?? 32);
    const order = uniquePages(opts.order ?? [], totalPages, "order");
    let orderAt = 0;
    let sweep = 0;
    const nextBackground = (): number | null => {
      if (opts.demandOnly) return null;
      while (orderAt < order.length) {
        const p = order[orderAt++];
        if (!sent[p]) return p;
      }
      while (sweep < totalPages) {
        const p = sweep++;
        if (!sent[p]) return p;
      }
      return null;
    };
    for (;;) {
      check();
      // While the guest is faulting, its pages go alone: background data ahead
      // of a requested page in the socket delays it (measured: 2 ms median).
      while (performance.now() - lastRequestAt < REQUEST_QUIET_MS || serving) {
        await sleep(REQUEST_QUIET_MS);
        check();
      }
      const batch: number[] = [];
      for (let p: number | null; batch.length < batchPages && (p = nextBackground()) !== null; ) batch.push(p);
      if (!batch.length) break;
      if (!writePages(batch, await Promise.all(batch.map(fetchPage)), "backgroundPages")) await drained();
    }
    // What is left was requested and is on its way.
    while (settled < totalPages || serving) {
      check();
      await new Promise<void>((resolve) => (wake = resolve));
      wake = null;
    }
    check();
    const end = new RamSectionWriter(w, state.ramSectionId, VM.SECTION_END);
    end.end();
    w.u8(VM.EOF);
    write(w.take());
    const error = await Promise.race([shutSeen, new Promise<boolean>((resolve) => (wake = () => resolve(true)))]);
    check();
    if (error) throw new CloudletError("GUEST", "the postcopy destination reported an error when the migration ended");
  })();
  done
    .finally(() => {
      opts.signal?.removeEventListener("abort", onAbort);
      socket.removeAllListeners("data");
    })
    .catch(() => {});
  return { stats, packaged, done };
}

/** Options for {@link resumePostcopy}. */
export interface ResumePostcopyOptions extends Omit<PostcopySourceOptions, "socket"> {
  destination: PostcopyDestination;
}

/** A VM resuming through postcopy. */
export interface PostcopyResume {
  readonly stats: PostcopyStats;
  /** Resolves when QEMU reports the guest running (ms since the start); rejects like `complete`. */
  readonly resumed: Promise<number>;
  /** Resolves when every page was sent and QEMU reports the migration completed (ms since the start). On any error the destination has been killed. */
  readonly complete: Promise<number>;
}

/** Resumes `state` in `destination`: sets postcopy-ram, starts the incoming migration, runs the source (see the module doc). */
export function resumePostcopy(opts: ResumePostcopyOptions): PostcopyResume {
  const dest = opts.destination;
  const t0 = performance.now();
  const idle: PostcopyStats = { totalPages: opts.ramBytes / PAGE_SIZE, precopyPages: 0, requestedPages: 0, requestMessages: 0, backgroundPages: 0, zeroPagesSkipped: 0, sentPages: 0, statePages: 0, bytesSent: 0 };
  let source: PostcopySource | null = null;
  let stop = false;
  const resumedWait = (async () => {
    for (let seen = 0; !stop; ) {
      const read = dest.qmp.eventsSince(seen);
      seen = read.next;
      if (read.events.some((e) => e.event === "RESUME")) return performance.now() - t0;
      await dest.qmp.nextEvent(1000, seen);
    }
    throw new CloudletError("GUEST", "postcopy stopped before the guest resumed");
  })();
  const complete = (async () => {
    const sock = join(dest.logPath, "..", "postcopy-migrate.sock");
    await fsp.rm(sock, { force: true });
    await dest.qmp.execute("migrate-set-capabilities", {
      capabilities: [
        { capability: "postcopy-ram", state: true },
        { capability: "events", state: true },
      ],
    });
    await dest.qmp.execute("migrate-incoming", { uri: `unix:${sock}` });
    const socket = await connectUnix(sock, () => !dest.hasExited);
    try {
      source = runPostcopySource({ ...opts, socket });
      const destGone = dest.exited.then(async () => {
        throw new CloudletError("GUEST", `the postcopy destination QEMU exited: ${(await dest.logTail()) || "no message"}`, dest.logPath);
      });
      const failed = migrationFailed(dest, () => stop);
      await Promise.race([source.done, destGone, failed]);
      // QEMU marks the migration completed after its listen thread has read the end.
      for (;;) {
        const info = await dest.qmp.execute<{ status?: string }>("query-migrate");
        if (info.status === "completed") break;
        if (info.status === "failed") throw new CloudletError("GUEST", `the postcopy migration failed in QEMU: ${(await dest.logTail()) || "no message"}`, dest.logPath);
        await Promise.race([sleep(20), destGone]);
      }
      return performance.now() - t0;
    } catch (e) {
      // Kill before the socket closes: on EOF QEMU would pause or exit on its own terms.
      stop = true;
      await dest.kill();
      throw e;
    } finally {
      socket.destroy();
      await fsp.rm(sock, { force: true });
    }
  })();
  const finished = complete.then(
    (ms) => ms,
    async (e) => {
      stop = true;
      await dest.kill();
      throw e;
    },
  );
  finished.catch(() => {}).finally(() => (stop = true));
  const resumed = Promise.race([resumedWait, finished.then(() => resumedWait)]);
  resumed.catch(() => {});
  return {
    get stats() {
      return source?.stats ?? idle;
    },
    resumed,
    complete: finished,
  };
}

/** Rejects when QEMU emits a MIGRATION event with status "failed" (it stays alive, paused). */
async function migrationFailed(dest: PostcopyDestination, stopped: () => boolean): Promise<never> {
  let seen = 0;
  while (!stopped()) {
    const read = dest.qmp.eventsSince(seen);
    seen = read.next;
    if (read.events.some((e) => e.event === "MIGRATION" && (e.data as { status?: string })?.status === "failed")) {
      throw new CloudletError("GUEST", `the postcopy migration failed in QEMU: ${(await dest.logTail()) || "no message"}`, dest.logPath);
    }
    await dest.qmp.nextEvent(1000, seen);
  }
  return new Promise<never>(() => {});
}

const ZERO_PAGE = new Uint8Array(PAGE_SIZE);
/** The background waits until the guest has made no request for this long. */
const REQUEST_QUIET_MS = 3;

function uniquePages(list: number[], total: number, what: string): number[] {
  const seen = new Uint8Array(total);
  const out: number[] = [];
  for (const p of list) {
    if (!Number.isInteger(p) || p < 0 || p >= total) throw new CloudletError("BAD_ARGUMENT", `${what} lists page ${p}, outside guest RAM (0..${total - 1})`);
    if (!seen[p]) out.push(p);
    seen[p] = 1;
  }
  return out;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function connectUnix(path: string, alive: () => boolean): Promise<Socket> {
  for (let i = 0; ; i++) {
    const s = await new Promise<Socket | null>((resolve) => {
      const c = connect(path);
      c.once("error", () => (c.destroy(), resolve(null)));
      c.once("connect", () => resolve(c));
    });
    if (s) return s;
    if (i > 2000 || !alive()) throw new CloudletError("GUEST", "QEMU did not open its incoming migration socket", path);
    await sleep(5);
  }
}
