/**
 * The kernel autotuner behind `deno task tune`: a coordinate search over the kernel parameters of
 * src/gpu/tuning.ts on the shapes one model and config use. Each knob is tried value by value
 * with the others held at the best found so far; every candidate first runs its workload and is
 * checked against a float64 host reference on sampled outputs (a candidate that computes wrong
 * values is dropped, whatever its speed), then timed: the median of several runs after a warm-up
 * run that also pays its kernels' compile. A time budget ends the search early, keeping the best
 * so far. A value must beat the best by 2% to be taken; the reported figures come from the start
 * and the best measured again in alternation at the end.
 *
 * Workloads, each a few ops at the model's sizes (T tokens, dim d, MLP width ff, vocabulary v):
 * - matmul: the projections x W^T ([T, d] x [d, d], [T, d] x [ff, d], [T, ff] x [d, ff]), a
 *   weight gradient (dY^T X: [ff, T] x [T, d]) and the classifier ([T, d] x [v, d]);
 * - elementwise: add and mul of [T, ff] tensors;
 * - rows: RMSNorm over [T, d] and softmax over [T, v];
 * - attention: causal attention over sequences of the config's length with the model's heads
 *   (T tokens in all), forward;
 * - attentionPacked: training's attention, forward and backward, over the same rows each packed
 *   with four sequences (a half, a quarter and two eighths of the row; each token sees the
 *   earlier tokens of its own sequence).
 */

import type { Gpu } from "../gpu/device.ts";
import type { Tuning } from "../gpu/tuning.ts";
import { backward } from "../tensor/backward.ts";
import * as T from "../tensor/ops.ts";
import { type Tensor, tensor } from "../tensor/tensor.ts";

/** The sizes the workloads take from a model and config. */
export interface TuneShapes {
  /** Tokens per micro-batch. */
  tokens: number;
  /** Model width. */
  dim: number;
  /** MLP width. */
  hiddenDim: number;
  /** Vocabulary size. */
  vocab: number;
  /** Attention: query heads, key/value heads and sequence length (default 8, 8, 256). */
  heads?: number;
  /** Key/value heads. */
  kvHeads?: number;
  /** Tokens per sequence. */
  seq?: number;
}

/** A searched kernel parameter: its values and the workload it affects. */
export interface Knob {
  /** Name as the profile's search record shows it. */
  name: string;
  /** Values to try. */
  values: readonly unknown[];
  /** Sets the value on a tuning. */
  apply(t: Tuning, v: unknown): void;
  /** The tuning fields `apply` writes. */
  fields: (keyof Tuning)[];
  /** Workload that measures it. */
  workload: WorkloadName;
}

/** The workloads. */
export type WorkloadName = "matmul" | "elementwise" | "rows" | "attention" | "attentionPacked";

/** One candidate's outcome. */
export interface Trial {
  /** The knob tried. */
  knob: string;
  /** Its value. */
  value: unknown;
  /** Whether the outputs matched the host reference. */
  ok: boolean;
  /** Median milliseconds of the workload (null when the check failed or it threw). */
  ms: number | null;
  /** Why it was dropped, when it was. */
  error?: string;
}

/** What {@link tune} found. */
export interface TuneResult {
  /** The best tuning. */
  tuning: Tuning;
  /** Every candidate tried, in order. */
  trials: Trial[];
  /** Milliseconds per workload with the starting tuning (median of 5 final rounds). */
  startMs: Record<WorkloadName, number>;
  /** Milliseconds per workload with the best tuning (median of 5 rounds alternating with the start). */
  bestMs: Record<WorkloadName, number>;
  /** Whether the budget ended the search before every knob was tried. */
  outOfBudget: boolean;
  /** Workloads left at the start's values (the search came back to them, or no 2% gain held). */
  reverted: WorkloadName[];
}

const setField = (t: Tuning, f: keyof Tuning, v: unknown) => ((t[f] as unknown) = v);

/**
 * The search space. `small` is the one tests and a quick run use (a few values per knob); `full`
 * adds more tiles, workgroup sizes and thresholds. `maxTileArea` leaves out matmul tiles larger
 * than that: where the shader compiler is slow (llvmpipe from Mesa 24 on) a big unrolled tile
 * costs minutes to compile, so the search keeps to the built-in cap there.
 */
export function knobs(space: "small" | "full", maxTileArea = Infinity): Knob[] {
  const full = space === "full";
  const area = (v: number[]) => v.filter((a) => a <= maxTileArea);
  const set = (f: keyof Tuning, workload: WorkloadName, values: unknown[]): Knob => ({
    name: f,
    values,
    apply: (t, v) => setField(t, f, v),
    fields: [f],
    workload,
  });
  return [
    set("matmulVersion", "matmul", [1, 2, 3]),
    {
      name: "matmul.tile",
      values: (full ? [[4, 4], [4, 8], [8, 4], [8, 8], [16, 4], [4, 16]] : [[4, 4], [8, 8]])
        .filter(([m, n]) => m * n <= maxTileArea),
      apply: (t, v) => {
        const [m, n] = v as number[];
        t.matmul = { ...t.matmul, tileM: m, tileN: n };
      },
      fields: ["matmul"],
      workload: "matmul",
    },
    {
      name: "matmul.workgroup",
      values: full ? [32, 64, 128, 256] : [32, 64],
      apply: (t, v) => (t.matmul = { ...t.matmul, workgroup: v as number }),
      fields: ["matmul"],
      workload: "matmul",
    },
    set("matmulTileArea", "matmul", area(full ? [16, 64, 256, 1024] : [16, 64, 1024])),
    set("matmulSubgroups", "matmul", [true, false]),
    set("storageTextureReads", "matmul", [true, false]),
    set("matmulMinInvocations", "matmul", full ? [256, 1024, 4096, 16384] : [1024, 16384]),
    set("elementwiseWorkgroup", "elementwise", full ? [64, 128, 256] : [64, 256]),
    set("elementwiseVec4", "elementwise", [true, false]),
    set("rowWorkgroup", "rows", full ? [32, 64, 128, 256] : [64, 256]),
    set("threadRowMaxLen", "rows", full ? [128, 1024, 8192] : [128, 8192]),
    set("serialReduceMax", "rows", full ? [256, 1024, 4096] : [256, 1024]),
    set("attentionVersion", "attention", [2, 3]),
    set("attentionBlock", "attention", full ? [1, 2, 4, 8, 16] : [2, 8]),
    set("attentionWorkgroup", "attention", full ? [32, 64, 128] : [32, 64]),
    set("attentionKvTextures", "attention", [true, false]),
    set("attentionBlockPacked", "attentionPacked", full ? [1, 2, 4, 8, 16] : [4, 16]),
  ];
}

/** Deterministic values in [-1, 1) (xorshift32), for workload inputs. */
function values(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x / 2 ** 31 - 1;
  }
  return out;
}

/** A workload: its inputs (made once) and a run that returns each output with its checker. */
interface Workload {
  run(): { out: Tensor; check: (got: Float32Array) => string | null }[];
  dispose(): void;
}

/**
 * A checker of a [rows, cols] output: up to 192 entries spread over it (the last one included)
 * against `ref(r, c)`, each within `tol * (1 + |ref|)`; returns the first mismatch, or null.
 */
export function sampled(
  what: string,
  rows: number,
  cols: number,
  ref: (r: number, c: number) => number,
  tol = 1e-4,
): (got: Float32Array) => string | null {
  return (got) => {
    const n = Math.min(rows * cols, 192);
    for (let i = 0; i < n; i++) {
      // Spread over the whole output, corners included.
      const at = i === n - 1 ? rows * cols - 1 : Math.floor((i * rows * cols) / n);
      const r = Math.floor(at / cols), c = at % cols;
      const want = ref(r, c), have = got[at];
      if (!(Math.abs(have - want) <= tol * (1 + Math.abs(want)))) {
        return `${what}[${r}, ${c}] = ${have}, reference ${want}`;
      }
    }
    return null;
  };
}

type Attn = "attention" | "attentionPacked";

function makeWorkload(name: Exclude<WorkloadName, Attn>, s: TuneShapes): Workload {
  const { tokens: t, dim: d, hiddenDim: ff, vocab: v } = s;
  const host = {
    x: values(t * d, 1),
    h: values(t * ff, 2),
    wq: values(d * d, 3).map((a) => a * 0.1),
    wg: values(ff * d, 4).map((a) => a * 0.1),
    wd: values(d * ff, 5).map((a) => a * 0.1),
    we: values(v * d, 6).map((a) => a * 0.1),
    g: values(t * ff, 7),
    norm: values(d, 8).map((a) => 1 + 0.1 * a),
    logits: values(t * v, 9).map((a) => 4 * a),
  };
  const dev: Record<string, Tensor> = {};
  const shapeOf: Record<string, number[]> = {
    x: [t, d],
    h: [t, ff],
    wq: [d, d],
    wg: [ff, d],
    wd: [d, ff],
    we: [v, d],
    g: [t, ff],
    norm: [d],
    logits: [t, v],
  };
  const need: Record<Exclude<WorkloadName, Attn>, string[]> = {
    matmul: ["x", "h", "wq", "wg", "wd", "we", "g"],
    elementwise: ["h", "g"],
    rows: ["x", "norm", "logits"],
  };
  for (const k of need[name]) dev[k] = tensor(host[k as keyof typeof host], shapeOf[k]);
  // x W^T at [r, c]: sum_k a[r, k] w[c, k].
  const dotT = (a: Float32Array, k: number, w: Float32Array) => (r: number, c: number) => {
    let z = 0;
    for (let i = 0; i < k; i++) z += a[r * k + i] * w[c * k + i];
    return z;
  };
  const runs: Record<Exclude<WorkloadName, Attn>, Workload["run"]> = {
    matmul: () => [
      {
        out: T.matmul(dev.x, dev.wq, { transB: true }),
        check: sampled("x Wq^T", t, d, dotT(host.x, d, host.wq)),
      },
      {
        out: T.matmul(dev.x, dev.wg, { transB: true }),
        check: sampled("x Wgate^T", t, ff, dotT(host.x, d, host.wg)),
      },
      {
        out: T.matmul(dev.h, dev.wd, { transB: true }),
        check: sampled("h Wdown^T", t, d, dotT(host.h, ff, host.wd)),
      },
      {
        // dW = dY^T X, [ff, d]: sum over tokens.
        out: T.matmul(dev.g, dev.x, { transA: true }),
        check: sampled("dY^T X", ff, d, (r, c) => {
          let z = 0;
          for (let i = 0; i < t; i++) z += host.g[i * ff + r] * host.x[i * d + c];
          return z;
        }),
      },
      {
        out: T.matmul(dev.x, dev.we, { transB: true }),
        check: sampled("x E^T", t, v, dotT(host.x, d, host.we)),
      },
    ],
    elementwise: () => [
      {
        out: T.add(dev.h, dev.g),
        check: sampled("h + g", t, ff, (r, c) => host.h[r * ff + c] + host.g[r * ff + c], 1e-6),
      },
      {
        out: T.mul(dev.h, dev.g),
        check: sampled("h * g", t, ff, (r, c) => host.h[r * ff + c] * host.g[r * ff + c], 1e-6),
      },
    ],
    rows: () => [
      {
        out: T.rmsnorm(dev.x, dev.norm, 1e-5),
        check: sampled("rmsnorm", t, d, (r, c) => {
          let z = 0;
          for (let i = 0; i < d; i++) z += host.x[r * d + i] ** 2;
          return (host.x[r * d + c] / Math.sqrt(z / d + 1e-5)) * host.norm[c];
        }),
      },
      {
        out: T.softmax(dev.logits),
        check: sampled("softmax", t, v, (r, c) => {
          let m = -Infinity, z = 0;
          for (let i = 0; i < v; i++) m = Math.max(m, host.logits[r * v + i]);
          for (let i = 0; i < v; i++) z += Math.exp(host.logits[r * v + i] - m);
          return Math.exp(host.logits[r * v + c] - m) / z;
        }),
      },
    ],
  };
  return { run: runs[name], dispose: () => Object.values(dev).forEach((x) => x.dispose()) };
}

/** Causal attention over [b, seq, heads, hd] with the model's heads, checked on sampled rows. */
function attentionWorkload(s: TuneShapes): Workload {
  const h = s.heads ?? 8, hkv = s.kvHeads ?? h, seq = Math.min(s.seq ?? 256, s.tokens);
  const hd = Math.floor(s.dim / h), b = Math.max(1, Math.floor(s.tokens / seq));
  const q = values(b * seq * h * hd, 11), k = values(b * seq * hkv * hd, 12);
  const v = values(b * seq * hkv * hd, 13);
  const dq = tensor(q, [b, seq, h, hd]), dk = tensor(k, [b, seq, hkv, hd]);
  const dv = tensor(v, [b, seq, hkv, hd]);
  const roles = tensor(new Int32Array(b * seq), [b, seq], "i32");
  const scale = 1 / Math.sqrt(hd), group = h / hkv;
  // Output [b, t, head, c]: softmax over the keys 0..t of q.k, times v.
  const ref = (row: number, c: number) => {
    const head = row % h, t = Math.floor(row / h) % seq, bi = Math.floor(row / (h * seq));
    const g = Math.floor(head / group), qo = ((bi * seq + t) * h + head) * hd;
    const sc: number[] = [];
    for (let j = 0; j <= t; j++) {
      const ko = ((bi * seq + j) * hkv + g) * hd;
      let z = 0;
      for (let i = 0; i < hd; i++) z += q[qo + i] * k[ko + i];
      sc.push(z * scale);
    }
    const m = Math.max(...sc);
    let z = 0, o = 0;
    sc.forEach((x, j) => {
      const e = Math.exp(x - m);
      z += e;
      o += e * v[((bi * seq + j) * hkv + g) * hd + c];
    });
    return o / z;
  };
  return {
    run: () => [{
      out: T.attention(dq, dk, dv, roles, [[1]]),
      check: sampled("attention", b * seq * h, hd, ref),
    }],
    dispose: () => [dq, dk, dv, roles].forEach((x) => x.dispose()),
  };
}

/**
 * Packed causal attention over [b, seq, heads, hd], forward and backward (dO fixed): checked on
 * sampled outputs and sampled entries of dV (the gradient whose reference is a sum of softmax
 * weights times dO).
 */
function packedAttentionWorkload(s: TuneShapes): Workload {
  const h = s.heads ?? 8, hkv = s.kvHeads ?? h, seq = Math.min(s.seq ?? 256, s.tokens);
  const hd = Math.floor(s.dim / h), b = Math.max(1, Math.floor(s.tokens / seq));
  const n = b * seq, group = h / hkv, scale = 1 / Math.sqrt(hd);
  // Each token's (start, end): a row holds sequences of seq/2, seq/4, seq/8 and the rest.
  const seg = new Int32Array(2 * n);
  const cuts = [0, seq >> 1, (seq >> 1) + (seq >> 2), (seq >> 1) + (seq >> 2) + (seq >> 3), seq];
  for (let r = 0; r < b; r++) {
    for (let i = 0; i < 4; i++) {
      for (let t = cuts[i]; t < cuts[i + 1]; t++) {
        seg.set([cuts[i], cuts[i + 1]], 2 * (r * seq + t));
      }
    }
  }
  const q = values(n * h * hd, 21), k = values(n * hkv * hd, 22), v = values(n * hkv * hd, 23);
  const dO = values(n * h * hd, 24);
  const leaf = (x: Float32Array, heads: number, name: string) =>
    T.parameter(tensor(x, [b, seq, heads, hd]), name);
  const [qp, kp, vp] = [leaf(q, h, "q"), leaf(k, hkv, "k"), leaf(v, hkv, "v")];
  const dout = tensor(dO, [b, seq, h, hd]);
  const roles = tensor(new Int32Array(n), [b, seq], "i32");
  const segments = tensor(seg, [b, seq, 2], "i32");
  // Softmax weights of token `tok` (flat over rows) in head `head` over its keys start..tok.
  const weights = (tok: number, head: number): number[] => {
    const g = Math.floor(head / group), qo = (tok * h + head) * hd;
    const sc: number[] = [];
    for (let j = seg[2 * tok] + tok - (tok % seq); j <= tok; j++) {
      let z = 0;
      for (let i = 0; i < hd; i++) z += q[qo + i] * k[(j * hkv + g) * hd + i];
      sc.push(z * scale);
    }
    const m = Math.max(...sc);
    const e = sc.map((x) => Math.exp(x - m)), z = e.reduce((a, x) => a + x, 0);
    return e.map((x) => x / z);
  };
  const rowStart = (tok: number) => tok - (tok % seq) + seg[2 * tok];
  const outRef = (row: number, c: number) => {
    const tok = Math.floor(row / h), head = row % h, g = Math.floor(head / group);
    const p = weights(tok, head), j0 = rowStart(tok);
    return p.reduce((a, w, j) => a + w * v[((j0 + j) * hkv + g) * hd + c], 0);
  };
  // dV[j, g, c]: every later token t of j's sequence, in every query head of group g.
  const dvRef = (row: number, c: number) => {
    const j = Math.floor(row / hkv), g = row % hkv, end = j - (j % seq) + seg[2 * j + 1];
    let sum = 0;
    for (let head = g * group; head < (g + 1) * group; head++) {
      for (let t = j; t < end; t++) {
        sum += weights(t, head)[j - rowStart(t)] * dO[(t * h + head) * hd + c];
      }
    }
    return sum;
  };
  return {
    run: () => {
      const out = T.attention(qp, kp, vp, roles, [[1]], { segments });
      backward(out, { grad: dout });
      const dv = vp.grad!;
      for (const p of [qp, kp, vp]) {
        if (p !== vp) p.grad?.dispose();
        p.grad = null;
      }
      return [
        { out, check: sampled("packed attention", n * h, hd, outRef) },
        { out: dv, check: sampled("packed attention dV", n * hkv, hd, dvRef) },
      ];
    },
    dispose: () => [qp, kp, vp, dout, roles, segments].forEach((x) => x.dispose()),
  };
}

/** Runs a workload once and checks every output; the first mismatch, or null. */
async function check(w: Workload): Promise<string | null> {
  const outs = w.run();
  try {
    for (const o of outs) {
      const err = o.check((await o.out.toArray()) as Float32Array);
      if (err) return err;
    }
    return null;
  } finally {
    for (const o of outs) o.out.dispose();
  }
}

/** Median milliseconds of `reps` runs (each waits for the device), after one untimed run. */
async function time(g: Gpu, w: Workload, reps: number): Promise<number> {
  const ms: number[] = [];
  for (let i = -1; i < reps; i++) {
    const t0 = performance.now();
    const outs = w.run();
    await g.sync();
    if (i >= 0) ms.push(performance.now() - t0);
    for (const o of outs) o.out.dispose();
  }
  ms.sort((a, b) => a - b);
  return ms[Math.floor(ms.length / 2)];
}

/** Options of {@link tune}. */
export interface TuneOptions {
  /** Knobs to search (default: the small space). */
  knobs?: Knob[];
  /** Seconds the search may take; the best so far is kept when it runs out. */
  budgetS?: number;
  /** Timed runs per candidate (median). */
  reps?: number;
  /** Progress lines. */
  log?: (line: string) => void;
}

/**
 * Searches the knobs on `g` for the shapes `s`, starting from `g.tuning` (which it leaves as it
 * found it). Returns the best tuning with every trial.
 */
export async function tune(g: Gpu, s: TuneShapes, opts: TuneOptions = {}): Promise<TuneResult> {
  const space = opts.knobs ?? knobs("small");
  const reps = opts.reps ?? 5, budget = (opts.budgetS ?? 300) * 1000;
  const log = opts.log ?? (() => {});
  const start = structuredClone(g.tuning);
  const t0 = performance.now();
  const names = [...new Set(space.map((k) => k.workload))];
  const work = Object.fromEntries(
    names.map((n) => [
      n,
      n === "attention"
        ? attentionWorkload(s)
        : n === "attentionPacked"
        ? packedAttentionWorkload(s)
        : makeWorkload(n, s),
    ]),
  ) as Record<
    WorkloadName,
    Workload
  >;
  const trials: Trial[] = [];
  let best = structuredClone(start);
  const startMs = {} as Record<WorkloadName, number>;
  const bestMs = {} as Record<WorkloadName, number>;
  // Runs `w` under tuning `t`: checked, then timed; null with the reason when it fails.
  const measure = async (t: Tuning, w: WorkloadName): Promise<[number | null, string?]> => {
    Object.assign(g.tuning, structuredClone(t));
    try {
      const err = await check(work[w]);
      if (err) return [null, `wrong result: ${err}`];
      return [await time(g, work[w], reps)];
    } catch (e) {
      return [null, (e as Error).message.split("\n")[0]];
    }
  };
  let outOfBudget = false;
  const reverted: WorkloadName[] = [];
  try {
    for (const w of names) {
      // Twice: the first run of a workload also pays for its buffers and textures.
      await measure(start, w);
      const [ms, err] = await measure(start, w);
      if (ms === null) throw new Error(`the starting tuning fails the ${w} workload: ${err}`);
      startMs[w] = bestMs[w] = ms;
      log(`${w}: ${ms.toFixed(2)} ms with the starting tuning`);
    }
    search: for (const k of space) {
      for (const v of k.values) {
        if (performance.now() - t0 > budget) {
          outOfBudget = true;
          break search;
        }
        const cand = structuredClone(best);
        k.apply(cand, v);
        if (JSON.stringify(cand) === JSON.stringify(best)) continue;
        const [ms, error] = await measure(cand, k.workload);
        trials.push({ knob: k.name, value: v, ok: ms !== null, ms, ...(error ? { error } : {}) });
        log(
          `${k.name} = ${JSON.stringify(v)}: ${
            ms === null ? `dropped (${error})` : `${ms.toFixed(2)} ms`
          }`,
        );
        // Only a clear gain moves the search (2%): timing noise must not pick a value.
        if (ms !== null && ms < 0.98 * bestMs[k.workload]) {
          best = cand;
          bestMs[k.workload] = ms;
        }
      }
    }
    // The figures reported: the starting and the best tuning measured again, alternately, so
    // drift of a busy machine falls on both (the search's first figures include warm-up).
    for (const w of names) {
      const fields = [...new Set(space.filter((k) => k.workload === w).flatMap((k) => k.fields))];
      if (fields.every((f) => JSON.stringify(best[f]) === JSON.stringify(start[f]))) {
        // The search came back to the start's values: nothing to compare.
        const [ms] = await measure(start, w);
        startMs[w] = bestMs[w] = ms!;
        reverted.push(w);
        continue;
      }
      const a: number[] = [], b: number[] = [];
      for (let round = 0; round < 5; round++) {
        a.push((await measure(start, w))[0]!);
        b.push((await measure(best, w))[0]!);
      }
      startMs[w] = a.sort((x, y) => x - y)[2];
      bestMs[w] = b.sort((x, y) => x - y)[2];
      // What does not hold a 2% gain in the final comparison goes back to the start's values,
      // so a search that finds nothing leaves the starting tuning (and its hash) as it was.
      if (bestMs[w] > 0.98 * startMs[w]) {
        for (const f of fields) (best[f] as unknown) = structuredClone(start[f]);
        bestMs[w] = startMs[w];
        reverted.push(w);
      }
    }
  } finally {
    Object.assign(g.tuning, start);
    for (const w of Object.values(work)) w.dispose();
  }
  return { tuning: best, trials, startMs, bestMs, outOfBudget, reverted };
}
