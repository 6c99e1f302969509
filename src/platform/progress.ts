/**
 * Progress of a long job on stderr, the same for every command: on a terminal one line redrawn in
 * place (a bar, the percentage, done/total, the rate and the time left), otherwise a plain line
 * each time another 5% is done, so logs of runs without a terminal show progress too.
 */

import { stderrIsTerminal, writeStderr } from "./platform.ts";

/** How amounts are shown. */
export interface ProgressFormat {
  /** Unit after the amounts ("texts", "MB", ...; default none). */
  unit?: string;
  /** Amounts are divided by this before printing (1e6 for bytes shown in MB; default 1). */
  scale?: number;
  /** Decimals of the scaled amounts (default 0). */
  decimals?: number;
}

/** "1:05", "12:00", "1:02:03". */
function clock(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  const two = (n: number) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
}

/**
 * A progress printer for `label`: call it with (done, total) as the job advances; the call with
 * done === total ends the line. Time is measured from the first call. `tty` and `write` default
 * to stderr's.
 */
export function progressPrinter(
  label: string,
  format: ProgressFormat = {},
  tty: boolean = stderrIsTerminal(),
  write: (text: string) => void = writeStderr,
): (done: number, total: number) => void {
  const scale = format.scale ?? 1, dec = format.decimals ?? 0;
  const unit = format.unit ? ` ${format.unit}` : "";
  let t0 = -1, lastDraw = -Infinity, lastStep = -1, finished = false;
  return (done, total) => {
    if (finished) return;
    const now = performance.now();
    if (t0 < 0) t0 = now;
    const frac = total > 0 ? Math.min(1, done / total) : 1;
    const end = done >= total;
    const step = Math.floor(frac * 20); // 5% steps
    if (tty ? !end && now - lastDraw < 100 : !end && step === lastStep) return;
    lastDraw = now;
    lastStep = step;
    const secs = (now - t0) / 1000;
    const rate = secs > 0 ? done / secs : 0;
    const left = rate > 0 ? (total - done) / rate : 0;
    const amount = `${(done / scale).toFixed(dec)}/${(total / scale).toFixed(dec)}${unit}`;
    const speed = rate > 0 ? `${(rate / scale).toFixed(dec || 1)}${unit}/s` : "starting";
    const tail = end ? `in ${clock(secs)}` : rate > 0 ? `ETA ${clock(left)}` : "ETA ?";
    const pct = `${Math.floor(frac * 100)}%`.padStart(4);
    if (tty) {
      const bar = "#".repeat(step) + ".".repeat(20 - step);
      write(
        `\r${label} [${bar}] ${pct} ${amount} (${speed}, ${tail})\x1b[K${end ? "\n" : ""}`,
      );
    } else write(`${label} ${pct} ${amount} (${speed}, ${tail})\n`);
    if (end) finished = true;
  };
}
