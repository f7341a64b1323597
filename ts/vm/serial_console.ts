/**
 * SerialConsole: the guest's ttyS0, reached through QEMU's chardev unix
 * socket (`server=on,wait=off,logfile=...`). QEMU copies everything the guest
 * prints into the log file, connected or not, so waiting for text reads the
 * log; running a script talks to the socket, which takes one client at a time.
 *
 * Script protocol (the guest runs a root shell on ttyS0 in canonical mode):
 *
 * ```text
 *   host -> ^U                                   drop any partial input line
 *   host -> echo CL""SYNC<tag>                    repeated until CLSYNC<tag> comes back:
 *                                                the shell is reading
 *   host -> printf %s '<400 base64 chars>' >> /tmp/.cl<tag>.b64 && echo CL""ACK<tag>-<k>
 *   guest-> CLACK<tag>-<k>                        one line at a time: flow control, and
 *                                                lines stay under the 4 KiB tty limit
 *   host -> base64 -d ... > /tmp/.cl<tag>.sh; echo CL""BEGIN<tag>; sh /tmp/.cl<tag>.sh </dev/null;
 *           echo CL""END<tag> rc=$?
 *   guest-> CLBEGIN<tag> ... output ... CLEND<tag> rc=N
 * ```
 *
 * Writing the markers as `CL""X` means the tty's echo of the command line can
 * never match them. Port of vmctl.py `exec` (see docs/vm-hosts.md).
 */
import { connect, type Socket } from "node:net";
import { promises as fsp } from "node:fs";
import { randomBytes } from "node:crypto";
import { CloudletError } from "../errors.ts";

/** What a script run in the guest printed, and its exit code. */
export interface ScriptResult {
  /** stdout and stderr, interleaved as the tty saw them, with "\n" line ends. */
  output: string;
  exitCode: number;
}

/** A match found in the serial log. */
export interface SerialMatch {
  /** The text that matched. */
  match: string;
  /** The whole line that holds the match (without the line end). */
  line: string;
  /** Byte offset in the log just after that line. */
  offset: number;
}

/** Called about once a second while waiting on the guest: time waited so far, and the last line it printed. */
export type WaitProgressFn = (elapsedMs: number, lastLine: string) => void;

/** Options for {@link SerialConsole.waitFor}. */
export interface WaitForOptions {
  /** Byte offset in the log to start from; default 0 (the log starts empty at VM start). */
  fromOffset?: number;
  signal?: AbortSignal;
  onWait?: WaitProgressFn;
}

/** A user to log in as when the serial console asks for a login (getty). */
export interface SerialLogin {
  user: string;
  /** Sent when the guest asks for a password. */
  password?: string;
}

/** Options for {@link SerialConsole.run}. */
export interface RunOptions {
  /**
   * Time limit for the whole run: waiting until the guest's shell answers
   * (a guest may still be booting) and then the script; default 60 s.
   */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Log in with this when the console shows a login prompt (otherwise a login prompt is a GUEST error). */
  login?: SerialLogin;
  onWait?: WaitProgressFn;
}

/**
 * A getty's prompt at the end of what the console printed (`debian login: `,
 * `Password: `). Only the last line counts: an earlier one may be text.
 */
export function loginPromptIn(text: string): "login" | "password" | null {
  const last = cleanSerial(text).split("\n").pop() ?? "";
  if (/(^|\s)\S*login: *$/i.test(last)) return "login";
  if (/^\s*password: *$/i.test(last)) return "password";
  return null;
}

/**
 * Whether the serial line `line` shows a ready marker: the marker at the start
 * of the line (after any escape sequences), never somewhere inside it, so that
 * a unit description that mentions the marker ("Started x.service - prints
 * READY") does not count.
 */
export function markerAtLineStart(line: string, marker: string): boolean {
  return cleanSerial(line).replace(/^[\s]+/, "").startsWith(marker);
}

/** Serial text with escape sequences, carriage returns and other control bytes removed (newlines kept). */
export function cleanSerial(text: string): string {
  return text.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "").replace(/\r/g, "").replace(/[\x00-\x08\x0b-\x1f\x7f]/g, "");
}

const CHUNK = 400;
const POLL_MS = 50;
/** Enough to find a marker that straddles two reads. */
const WINDOW = 8192;

/** The serial console of one VM. */
export class SerialConsole {
  private queue: Promise<unknown> = Promise.resolve();

  /**
   * @param socketPath the chardev's unix socket
   * @param logPath the chardev's log file
   * @param gone resolves with a sentence saying why, once the VM has exited; waits then fail at once
   */
  constructor(
    readonly socketPath: string,
    readonly logPath: string,
    private readonly gone: Promise<string> = new Promise(() => {}),
  ) {}

  /**
   * Waits until a line of the serial log shows `pattern`: a string must start
   * the line (see {@link markerAtLineStart}); a RegExp is tested against each
   * line without its line end or escape sequences. GUEST error with the log's
   * tail on timeout or VM exit.
   */
  async waitFor(pattern: string | RegExp, timeoutMs: number, opts: WaitForOptions = {}): Promise<SerialMatch> {
    const test = (line: string): string | null => {
      if (typeof pattern === "string") return markerAtLineStart(line, pattern) ? pattern : null;
      pattern.lastIndex = 0;
      return pattern.exec(cleanSerial(line))?.[0] ?? null;
    };
    const shown = typeof pattern === "string" ? `"${pattern}"` : String(pattern);
    const t0 = Date.now();
    const deadline = t0 + timeoutMs;
    let offset = opts.fromOffset ?? 0;
    /** The line being read (not yet ended), and the log offset where it starts. */
    let partial = "";
    let partialStart = offset;
    let lastLine = "";
    let nextReport = t0 + 1000;
    let goneWhy: string | null = null;
    void this.gone.then((w) => (goneWhy = w));
    let fh: fsp.FileHandle | null = null;
    // A match in an unfinished line: the READY line carries boot_id, so give the rest of it a moment.
    let partialSince = 0;
    try {
      for (;;) {
        if (opts.signal?.aborted) throw new CloudletError("CANCELLED", `cancelled while waiting for ${shown} on the serial console`, this.logPath);
        fh ??= await fsp.open(this.logPath, "r").catch(() => null);
        if (fh) {
          const chunk = Buffer.alloc(64 * 1024);
          for (;;) {
            const { bytesRead } = await fh.read(chunk, 0, chunk.length, offset);
            if (!bytesRead) break;
            offset += bytesRead;
            const text = partial + chunk.subarray(0, bytesRead).toString("latin1");
            const lines = text.split("\n");
            partial = lines.pop()!;
            let at = partialStart;
            for (const l of lines) {
              at += l.length + 1;
              const m = test(l);
              if (m !== null) return { match: m, line: l.replace(/\r$/, ""), offset: at };
              if (cleanSerial(l).trim()) lastLine = cleanSerial(l).trim();
            }
            partialStart = at;
            // A line that never ends (a progress spinner) must not grow without bound.
            if (partial.length > WINDOW) {
              partialStart += partial.length - WINDOW;
              partial = partial.slice(-WINDOW);
            }
          }
          const m = partial ? test(partial) : null;
          if (m !== null) {
            partialSince ||= Date.now();
            if (Date.now() - partialSince > 2000 || Date.now() > deadline || goneWhy) {
              return { match: m, line: partial.replace(/\r$/, ""), offset: partialStart + partial.length };
            }
          }
        }
        if (goneWhy) throw new CloudletError("GUEST", `${goneWhy} before the guest printed ${shown}${await this.tailBlock()}`, this.logPath);
        if (Date.now() > deadline) {
          throw new CloudletError("GUEST", `the guest did not print ${shown} within ${fmtSeconds(timeoutMs)}${await this.tailBlock()}`, this.logPath);
        }
        if (opts.onWait && Date.now() >= nextReport) {
          nextReport += 1000;
          opts.onWait(Date.now() - t0, cleanSerial(partial).trim() || lastLine);
        }
        await sleep(POLL_MS);
      }
    } finally {
      await fh?.close();
    }
  }

  /** Current size of the serial log (an offset for {@link waitFor}). */
  async logSize(): Promise<number> {
    return fsp.stat(this.logPath).then((s) => s.size, () => 0);
  }

  /** The last lines of the serial log, control characters removed. */
  async tail(maxLines = 15): Promise<string> {
    const clean = await this.rawTail();
    return clean.split("\n").filter((l) => l.trim()).slice(-maxLines).join("\n");
  }

  /** The last 4 KiB of the serial log, control characters removed, up to its very end (an unfinished line, a prompt). */
  private async rawTail(): Promise<string> {
    let text = "";
    try {
      const fh = await fsp.open(this.logPath, "r");
      try {
        const { size } = await fh.stat();
        const len = Math.min(size, 4096);
        const buf = Buffer.alloc(len);
        await fh.read(buf, 0, len, size - len);
        text = buf.toString("utf8");
      } finally {
        await fh.close();
      }
    } catch {
      return "";
    }
    // Escape sequences and lone control bytes would garble a terminal that prints the error.
    return cleanSerial(text);
  }

  /** Runs a shell script in the guest as root and returns its output and exit code. */
  run(script: string, opts: RunOptions = {}): Promise<ScriptResult> {
    const next = this.queue.then(() => this.runNow(script, opts));
    this.queue = next.catch(() => {});
    return next;
  }

  /**
   * Starts `command` in the guest in its own session so that it keeps running
   * after the script (and the console shell) ends; returns its guest pid.
   */
  async startBackground(command: string, opts: { logFile?: string; timeoutMs?: number; signal?: AbortSignal } = {}): Promise<number> {
    const log = opts.logFile ?? "/dev/null";
    const r = await this.run(`setsid nohup sh -c ${shq(command)} </dev/null >${shq(log)} 2>&1 &\necho "pid=$!"\n`, opts);
    const pid = Number(/pid=(\d+)/.exec(r.output)?.[1]);
    if (r.exitCode !== 0 || !pid) throw new CloudletError("GUEST", `could not start ${JSON.stringify(command)} in the guest: ${r.output.trim() || `exit ${r.exitCode}`}`);
    return pid;
  }

  /**
   * Connects `input` and `output` to the console (an interactive session)
   * until the escape byte (default Ctrl-], 0x1d) is read or the VM exits.
   */
  attach(input: NodeJS.ReadableStream, output: NodeJS.WritableStream, opts: { escapeByte?: number } = {}): Promise<void> {
    const esc = opts.escapeByte ?? 0x1d;
    const next = this.queue.then(async () => {
      const line = await SerialLine.open(this.socketPath, 10_000, this.gone);
      await new Promise<void>((resolve) => {
        const onInput = (d: Uint8Array | string) => {
          const b = typeof d === "string" ? Buffer.from(d) : Buffer.from(d.buffer, d.byteOffset, d.byteLength);
          const at = b.indexOf(esc);
          if (at >= 0) {
            if (at > 0) line.send(b.subarray(0, at));
            return finish();
          }
          line.send(b);
        };
        const finish = () => {
          input.off("data", onInput);
          line.close();
          resolve();
        };
        line.onData = (d) => output.write(d);
        void line.ended.then(finish);
        input.on("data", onInput);
      });
    });
    this.queue = next.catch(() => {});
    return next;
  }

  private async runNow(script: string, opts: RunOptions): Promise<ScriptResult> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    const t0 = Date.now();
    const deadline = t0 + timeoutMs;
    const tag = randomBytes(4).toString("hex");
    const f = `/tmp/.cl${tag}`;
    const line = await SerialLine.open(this.socketPath, Math.min(10_000, timeoutMs), this.gone, opts.signal);
    try {
      const step = async (rx: RegExp, ms: number, what: string) => (await line.expect(rx, ms, what, opts.signal)) ?? Promise.reject(await this.fail(`timed out waiting for ${what}`));
      await this.waitForShell(line, tag, deadline, timeoutMs, opts);
      const body = Buffer.from(script, "utf8").toString("base64");
      const chunks = body.match(new RegExp(`.{1,${CHUNK}}`, "g")) ?? [""];
      for (const [k, c] of chunks.entries()) {
        line.send(`printf %s '${c}' >> ${f}.b64 && echo CL""ACK${tag}-${k}\n`);
        await step(new RegExp(`CLACK${tag}-${k}\\r?\\n`), 10_000, `the guest to take the script (line ${k + 1} of ${chunks.length})`);
      }
      line.send(`base64 -d ${f}.b64 > ${f}.sh; rm -f ${f}.b64; echo CL""BEGIN${tag}; sh ${f}.sh < /dev/null; echo CL""END${tag} rc=$?; rm -f ${f}.sh\n`);
      await step(new RegExp(`CLBEGIN${tag}\\r?\\n`), 10_000, "the script to start");
      const m = await line.expect(new RegExp(`CLEND${tag} rc=(\\d+)\\r?\\n`), Math.max(1000, deadline - Date.now()), "the script to finish", opts.signal);
      if (!m) {
        line.send("\x03"); // interrupt it, so that the console is usable again
        throw await this.fail(`the script did not finish within ${fmtSeconds(timeoutMs)}`);
      }
      return { output: m.before.replace(/\r\n/g, "\n").replace(/\r/g, ""), exitCode: Number(m.groups[1]) };
    } finally {
      line.close();
    }
  }

  /**
   * Returns once a shell reads the console: sends a sync line every second
   * until it comes back (the guest may still be booting, or the shell
   * respawning after READY or a restore; until a shell reads, the tty drops
   * what we type), up to the run's deadline. A getty's login prompt is
   * answered with `opts.login`, or is a GUEST error at once: typing the sync
   * line into it would only produce "Login incorrect".
   */
  private async waitForShell(line: SerialLine, tag: string, deadline: number, timeoutMs: number, opts: RunOptions): Promise<void> {
    const t0 = Date.now();
    let nextReport = t0 + 1000;
    let userSent = false;
    let answers = 0;
    // What the console printed before we connected: a prompt that is already up.
    let seen = await this.rawTail();
    if (!loginPromptIn(seen)) {
      // An empty line makes a shell or a getty print its prompt again; wait for it briefly, so that our
      // first sync line is not taken for a user name.
      line.send("\x15\n");
      await line.expect(/(?:login: *|[#$>] *)$/i, 1000, "a prompt", opts.signal).then((m) => m && line.unread(m.before + m.groups[0]));
      seen = line.peek();
    }
    for (;;) {
      const prompt = loginPromptIn(seen);
      if (prompt) {
        if (!opts.login) {
          const shownPrompt = cleanSerial(seen).split("\n").pop()!.trim();
          throw new CloudletError("GUEST", `the serial console asks for a login ("${shownPrompt}"), so no script can run there: give --login USER[:PASSWORD-FILE], or let the guest log root in on ttyS0 automatically (see docs/vm-hosts.md, "A guest that asks for a login")`, this.logPath);
        }
        if (++answers > 6 || Date.now() > deadline) throw await this.fail(`logging in as "${opts.login.user}" on the serial console failed (it keeps asking)`);
        // Only what the guest prints after our answer counts from here on (never answer one prompt twice).
        line.drain();
        if (prompt === "login") {
          line.send(`\x15${opts.login.user}\n`);
          userSent = true;
        } else if (!userSent) {
          // Something else was taken for a user name (a sync line typed as getty started): fail that login.
          line.send("\n");
        } else {
          if (opts.login.password === undefined) throw await this.fail(`the guest asks for a password for "${opts.login.user}": give --login ${opts.login.user}:PASSWORD-FILE`);
          line.send(`${opts.login.password}\n`);
        }
        // Let getty and login answer before the next look.
        const m = await line.expect(/(?:login: *|password: *|[#$>] *)$/i, prompt === "password" && userSent ? 15_000 : 5000, "the login prompt", opts.signal);
        seen = m ? m.before + m.groups[0] : line.peek();
        if (userSent && /login incorrect/i.test(seen)) throw await this.fail(`logging in as "${opts.login.user}" on the serial console failed (Login incorrect)`);
        continue;
      }
      if (Date.now() > deadline) throw await this.fail(`the guest shell did not answer on the serial console within ${fmtSeconds(timeoutMs)}`);
      line.send(`echo CL""SYNC${tag}\n`);
      if ((await line.expect(new RegExp(`CLSYNC${tag}\\r?\\n`), Math.min(1000, Math.max(1, deadline - Date.now())), "the guest shell", opts.signal)) !== null) return;
      seen = line.peek();
      if (opts.onWait && Date.now() >= nextReport) {
        nextReport = Date.now() + 1000;
        // The tty echoes our sync lines while nothing reads: show what the guest printed itself.
        const own = (await this.tail(15)).split("\n").filter((l) => !l.includes('CL""SYNC'));
        opts.onWait(Date.now() - t0, (own.pop() ?? "").trim());
      }
    }
  }

  private async fail(msg: string): Promise<CloudletError> {
    return new CloudletError("GUEST", `${msg}${await this.tailBlock()}`, this.logPath);
  }

  private async tailBlock(): Promise<string> {
    const t = await this.tail();
    return t ? `; last serial output:\n${t}` : "; the serial log is empty";
  }
}

/** One client connection to the chardev socket, with a receive buffer to match against. */
class SerialLine {
  private buf = "";
  private waiter: (() => void) | null = null;
  private closedWhy: string | null = null;
  onData: ((d: string) => void) | null = null;
  readonly ended: Promise<void>;

  private constructor(
    private readonly sock: Socket,
    gone: Promise<string>,
  ) {
    let end!: () => void;
    this.ended = new Promise((r) => (end = r));
    sock.setEncoding("utf8");
    sock.on("data", (d: string) => {
      if (this.onData) this.onData(d);
      else this.buf += d;
      this.waiter?.();
    });
    sock.on("error", () => {});
    sock.on("close", () => {
      // The socket usually closes before the VM's exit is known: give the reason a moment to arrive.
      void Promise.race([gone, sleep(3000).then(() => null)]).then((why) => {
        this.closedWhy ??= why ?? "the serial console closed: the VM exited";
        end();
        this.waiter?.();
      });
    });
  }

  /** Connects, retrying while the socket is not there yet. */
  static async open(path: string, timeoutMs: number, gone: Promise<string>, signal?: AbortSignal): Promise<SerialLine> {
    const deadline = Date.now() + timeoutMs;
    let goneWhy: string | null = null;
    void gone.then((w) => (goneWhy = w));
    for (;;) {
      if (signal?.aborted) throw new CloudletError("CANCELLED", "cancelled while connecting to the serial console", path);
      if (goneWhy) throw new CloudletError("GUEST", `${goneWhy}: the serial console is gone`, path);
      const s = await new Promise<Socket | null>((resolve) => {
        const c = connect(path);
        c.once("error", () => (c.destroy(), resolve(null)));
        c.once("connect", () => resolve(c));
      });
      if (s) {
        const l = new SerialLine(s, gone);
        void gone.then((w) => {
          l.closedWhy = w;
          l.close();
        });
        return l;
      }
      if (Date.now() > deadline) throw new CloudletError("GUEST", `cannot connect to the serial console within ${fmtSeconds(timeoutMs)}`, path);
      await sleep(50);
    }
  }

  send(data: string | Uint8Array) {
    if (!this.sock.destroyed) this.sock.write(data);
  }

  /** What arrived and was not consumed yet. */
  peek(): string {
    return this.buf;
  }

  /** Drops what arrived so far. */
  drain(): void {
    this.buf = "";
  }

  /** Puts consumed text back in front of what arrived. */
  unread(text: string): void {
    this.buf = text + this.buf;
  }

  /** Waits for `rx` in what arrived and consumes up to the end of the match; null on timeout. */
  async expect(rx: RegExp, timeoutMs: number, what: string, signal?: AbortSignal): Promise<{ before: string; groups: RegExpExecArray } | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = rx.exec(this.buf);
      if (m) {
        const before = this.buf.slice(0, m.index);
        this.buf = this.buf.slice(m.index + m[0].length);
        return { before, groups: m };
      }
      if (signal?.aborted) throw new CloudletError("CANCELLED", `cancelled while waiting for ${what}`);
      if (this.closedWhy) throw new CloudletError("GUEST", `${this.closedWhy} while waiting for ${what}`);
      const left = deadline - Date.now();
      if (left <= 0) return null;
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(left, 250));
        function done() {
          clearTimeout(t);
          resolve();
        }
        this.waiter = done;
      });
      this.waiter = null;
    }
  }

  close() {
    this.sock.destroy();
  }
}

/** Quotes `s` for a POSIX shell. */
export function shq(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

function fmtSeconds(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000} s` : `${(ms / 1000).toFixed(1)} s`;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
