/**
 * Plain-loop CPU references of the engine's kernels (llm.c style): slow, obvious, and checked
 * against the PyTorch goldens in reference.test.ts, so GPU tests can use them on shapes the
 * goldens do not cover. Row-major arrays throughout.
 */

/** C [batch, m, n] = A [batch, m, k] @ B [batch or 1, k, n]. */
export function matmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  batch: number,
  m: number,
  k: number,
  n: number,
  bBatched = true,
): Float64Array {
  const c = new Float64Array(batch * m * n);
  for (let z = 0; z < batch; z++) {
    const ao = z * m * k, bo = bBatched ? z * k * n : 0, co = z * m * n;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += a[ao + i * k + p] * b[bo + p * n + j];
        c[co + i * n + j] = s;
      }
    }
  }
  return c;
}

/** Rule codes as in src/gpu/kernels/attention.ts: 0 none, 1 causal, 2 self, 3 all. */
export function allowedRef(rule: number, t: number, s: number): boolean {
  return rule === 3 || (rule === 1 && s <= t) || (rule === 2 && s === t);
}

/** Masked GQA attention; q [B,T,Hq,D], k/v [B,T,Hkv,D], roles [B,T]; empty rows give 0. */
export function attentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  roles: ArrayLike<number>,
  table: number[][],
  dims: { b: number; t: number; hq: number; hkv: number; d: number; scale: number },
): Float64Array {
  const { b, t: T, hq, hkv, d, scale } = dims;
  const out = new Float64Array(b * T * hq * d);
  const group = hq / hkv;
  for (let bi = 0; bi < b; bi++) {
    for (let h = 0; h < hq; h++) {
      const g = Math.floor(h / group);
      for (let t = 0; t < T; t++) {
        const qo = ((bi * T + t) * hq + h) * d;
        const scores: number[] = [], keys: number[] = [];
        for (let s = 0; s < T; s++) {
          if (!allowedRef(table[roles[bi * T + t]][roles[bi * T + s]], t, s)) continue;
          const ko = ((bi * T + s) * hkv + g) * d;
          let dot = 0;
          for (let j = 0; j < d; j++) dot += q[qo + j] * k[ko + j];
          scores.push(dot * scale);
          keys.push(ko);
        }
        if (!scores.length) continue;
        const m = Math.max(...scores);
        const e = scores.map((x) => Math.exp(x - m));
        const z = e.reduce((p, x) => p + x, 0);
        for (let i = 0; i < keys.length; i++) {
          for (let j = 0; j < d; j++) out[qo + j] += (e[i] / z) * v[keys[i] + j];
        }
      }
    }
  }
  return out;
}

/** Softmax or log-softmax of each row of length n. */
export function softmaxRef(x: ArrayLike<number>, n: number, log: boolean): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r < x.length / n; r++) {
    let m = -Infinity;
    for (let j = 0; j < n; j++) m = Math.max(m, x[r * n + j]);
    let s = 0;
    for (let j = 0; j < n; j++) s += Math.exp(x[r * n + j] - m);
    const lse = m + Math.log(s);
    for (let j = 0; j < n; j++) {
      y[r * n + j] = log ? x[r * n + j] - lse : Math.exp(x[r * n + j] - lse);
    }
  }
  return y;
}

/** RMSNorm of each row of length w.length. */
export function rmsnormRef(x: ArrayLike<number>, w: ArrayLike<number>, eps: number): Float64Array {
  const n = w.length, y = new Float64Array(x.length);
  for (let r = 0; r < x.length / n; r++) {
    let s = 0;
    for (let j = 0; j < n; j++) s += x[r * n + j] ** 2;
    const rstd = 1 / Math.sqrt(s / n + eps);
    for (let j = 0; j < n; j++) y[r * n + j] = x[r * n + j] * rstd * w[j];
  }
  return y;
}

/** Interleaved-pair RoPE of x [B,T,H,D]; pos[b*T+t] or t. */
export function ropeRef(
  x: ArrayLike<number>,
  dims: { b: number; t: number; h: number; d: number },
  theta: number,
  pos?: ArrayLike<number>,
): Float64Array {
  const { b, t: T, h, d } = dims;
  const y = new Float64Array(x.length);
  for (let bi = 0; bi < b; bi++) {
    for (let t = 0; t < T; t++) {
      const p = pos ? pos[bi * T + t] : t;
      for (let hh = 0; hh < h; hh++) {
        const o = ((bi * T + t) * h + hh) * d;
        for (let i = 0; i < d / 2; i++) {
          const a = p * Math.pow(theta, (-2 * i) / d);
          const x0 = x[o + 2 * i], x1 = x[o + 2 * i + 1];
          y[o + 2 * i] = x0 * Math.cos(a) - x1 * Math.sin(a);
          y[o + 2 * i + 1] = x0 * Math.sin(a) + x1 * Math.cos(a);
        }
      }
    }
  }
  return y;
}

/** Mean cross-entropy over rows whose target is not `ignore` (0 if none). */
export function crossEntropyRef(
  logits: ArrayLike<number>,
  targets: ArrayLike<number>,
  v: number,
  ignore: number,
): number {
  const lsm = softmaxRef(logits, v, true);
  let s = 0, c = 0;
  for (let r = 0; r < targets.length; r++) {
    if (targets[r] === ignore) continue;
    s -= lsm[r * v + targets[r]];
    c++;
  }
  return c ? s / c : 0;
}

/** Deterministic pseudo-random floats in [-1, 1) for test inputs. */
export function randomArray(n: number, seed: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = ((x / 4294967296) * 2 - 1) * scale;
  }
  return out;
}
