/** What every bench shares: its record and context types, and sample statistics. */

/** One result row; benches add their own fields. */
export interface BenchRecord {
  bench: string;
  impl: string;
  [field: string]: unknown;
}

/** Context handed to each bench. */
export interface BenchContext {
  adapter: string;
  /** Scale sample counts down (GEMKIT_BENCH_QUICK=1) for a smoke run. */
  quick: boolean;
  /** Log a per-kernel GPU time profile of the model steps (GEMKIT_PROFILE=1). */
  profile: boolean;
  /**
   * Runs of the model and matmul suites' gemkit and PyTorch timings, one after another
   * (`--runs=N`, default 1); their records carry `run`.
   */
  runs?: number;
  log: (msg: string) => void;
}

/** Median, min and max of samples. */
export function stats(xs: number[]): { median: number; min: number; max: number } {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  return { median, min: s[0], max: s[s.length - 1] };
}
