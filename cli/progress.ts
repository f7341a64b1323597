/**
 * A progress bar on stderr with bytes and rate, for terminals only. When
 * stderr is not a terminal (or --json is on) it stays silent.
 */
import type { Progress } from "../ts/overlay/io.ts";
import { formatBytes } from "../ts/inspect/report.ts";

/** Renders {@link Progress} reports as a single updating line. */
export class ProgressBar {
  private phase = "";
  private phaseStart = 0;
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
    if (now - this.lastDraw < 100 && p.done < p.total) return;
    this.lastDraw = now;
    this.draw(now);
  };

  private draw(now: number): void {
    const p = this.last!;
    const secs = Math.max(0.001, (now - this.phaseStart) / 1000);
    const rate = p.done / secs;
    const width = 24;
    const frac = p.total > 0 ? Math.min(1, p.done / p.total) : 0;
    const bar = "#".repeat(Math.round(frac * width)).padEnd(width, "-");
    const eta = p.total > 0 && rate > 0 && p.done < p.total ? ` ETA ${Math.ceil((p.total - p.done) / rate)}s` : "";
    const total = p.total > 0 ? ` / ${formatBytes(p.total)}` : "";
    const line = `${p.phase.padEnd(12)} [${bar}] ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(p.done)}${total}  ${formatBytes(rate)}/s${eta}`;
    this.stream.write(`\r\x1b[2K${line}`);
    this.drawn = true;
  }

  private finishLine(): void {
    if (this.drawn && this.last) {
      this.draw(performance.now());
      this.stream.write("\n");
    }
    this.drawn = false;
  }

  /** Ends the current line. */
  done(): void {
    if (this.enabled) this.finishLine();
  }
}
