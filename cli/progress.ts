/**
 * A progress bar on stderr with bytes and rate, for terminals only. When
 * stderr is not a terminal (or --json is on) it stays silent.
 *
 * The rate is the bytes over the time from a phase's first report to its
 * last: a finished phase's line keeps that rate however long the next phase
 * takes to begin. A phase shorter than {@link MIN_RATE_MS}, or complete at its
 * first report, shows sizes only: bytes over ~0 s are no rate.
 */
import type { Progress } from "../ts/overlay/io.ts";
import { formatBytes } from "../ts/inspect/report.ts";

/** Phases shorter than this show sizes only, no rate. */
export const MIN_RATE_MS = 50;

/** Renders {@link Progress} reports as a single updating line. */
export class ProgressBar {
  private phase = "";
  private phaseStart = 0;
  private lastUpdate = 0;
  private lastDraw = 0;
  private drawn = false;
  private last: Progress | null = null;

  /** @param enabled draw at all (a TTY and not --json) @param stream where to draw */
  constructor(
    private readonly enabled: boolean,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {}

  /** A progress callback bound to this bar. */
  readonly update = (p: Progress): void => {
    if (!this.enabled) return;
    const now = performance.now();
    if (p.phase !== this.phase) {
      this.finishLine();
      this.phase = p.phase;
      this.phaseStart = now;
    }
    this.last = p;
    this.lastUpdate = now;
    if (now - this.lastDraw < 100 && p.done < p.total) return;
    this.lastDraw = now;
    this.draw();
  };

  private draw(): void {
    const p = this.last!;
    const ms = this.lastUpdate - this.phaseStart;
    const rate = ms >= MIN_RATE_MS ? p.done / (ms / 1000) : 0;
    const width = 24;
    const frac = p.total > 0 ? Math.min(1, p.done / p.total) : 0;
    const bar = "#".repeat(Math.round(frac * width)).padEnd(width, "-");
    const eta = p.total > 0 && rate > 0 && p.done < p.total ? ` ETA ${Math.ceil((p.total - p.done) / rate)}s` : "";
    const total = p.total > 0 ? ` / ${formatBytes(p.total)}` : "";
    const speed = rate > 0 ? `  ${formatBytes(rate)}/s` : "";
    const line = `${p.phase.padEnd(12)} [${bar}] ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(p.done)}${total}${speed}${eta}`;
    this.stream.write(`\r\x1b[2K${line}`);
    this.drawn = true;
  }

  private finishLine(): void {
    if (this.drawn && this.last) {
      this.draw();
      this.stream.write("\n");
    }
    this.drawn = false;
  }

  /** Ends the current line. */
  done(): void {
    if (this.enabled) this.finishLine();
  }
}

/** A job status older than this gives way to the step's elapsed time (a job refreshes its status about once a second). */
export const STALE_STATUS_MS = 2500;

/**
 * The live line under a VM job's last status line, on a terminal: the job's
 * own status (time waited on the guest and its last serial line) while it
 * waits, else the time the current step (boot, snapshot, ...) has taken, so a
 * long step never looks hung. A progress bar or the result replaces it.
 */
export class LiveLine {
  private ticker: ReturnType<typeof setInterval> | undefined;
  private stepStart = 0;
  private jobStatus = false;
  private statusAt = 0;
  private shown = false;

  /** @param stream where to draw (a terminal) */
  constructor(private readonly stream: NodeJS.WriteStream) {}

  /** A step began (its line is printed): tick its elapsed time until the next step, a bar or the end. */
  step(): void {
    this.stop();
    this.stepStart = performance.now();
    this.ticker = setInterval(() => {
      const now = performance.now();
      // A job status not refreshed for a while is over (the guest's shell answered, the script runs): tick again.
      if (!this.jobStatus || now - this.statusAt > STALE_STATUS_MS) this.write(`  ... ${Math.floor((now - this.stepStart) / 1000)} s`);
    }, 1000);
    (this.ticker as { unref?: () => void }).unref?.();
  }

  /** The job's status line, or null when its wait is over (the step's ticker resumes). */
  status(l: string | null): void {
    this.jobStatus = l !== null;
    this.statusAt = performance.now();
    if (l === null) this.clear();
    else this.write(l);
  }

  /** Stops the ticker and clears the line. */
  stop(): void {
    clearInterval(this.ticker);
    this.ticker = undefined;
    this.jobStatus = false;
    this.clear();
  }

  private write(l: string): void {
    const width = Math.max(20, (this.stream.columns || 80) - 1);
    this.stream.write(`\r\x1b[2K${l.length > width ? l.slice(0, width - 1) + "…" : l}`);
    this.shown = true;
  }

  private clear(): void {
    if (this.shown) this.stream.write("\r\x1b[2K");
    this.shown = false;
  }
}
