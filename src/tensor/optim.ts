/**
 * AdamW (decoupled weight decay, PyTorch semantics) and global-norm gradient clipping. Both run
 * entirely on the GPU: the clip coefficient is computed and applied there, so a training step
 * needs no readback; read the returned norm tensor only when you want to log it.
 */

import { gpu } from "../gpu/device.ts";
import { runReduce } from "../gpu/kernels/reduce.ts";
import { type AdamWStep, runAdamW, runClipCoef, runScaleBy } from "../gpu/kernels/optim.ts";
import { zeros } from "./ops.ts";
import { empty, keep, type Tensor } from "./tensor.ts";

/**
 * Clips the gradients of `params` in place so their global L2 norm is at most `maxNorm`
 * (coefficient min(1, maxNorm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_). Returns a
 * tensor [2] = (norm before clipping, coefficient applied). Parameters without a grad are skipped.
 */
export function clipGradNorm(params: readonly Tensor[], maxNorm: number): Tensor {
  const g = gpu();
  const withGrad = params.filter((p) => p.grad);
  const sumsq = empty([Math.max(withGrad.length, 1)], "f32", "clip.sumsq");
  const out = empty([2], "f32", "clip.norm");
  if (withGrad.length === 0) {
    const z = zeros([1]);
    runClipCoef(g, z.buf, 1, maxNorm, out.buf);
    z.dispose();
  } else {
    withGrad.forEach((p, i) => {
      const grad = p.grad!;
      runReduce(
        g,
        "sumsq",
        grad.buf,
        grad.offset,
        { outer: 1, r: grad.size, inner: 1 },
        sumsq.buf,
        i,
        null,
      );
    });
    runClipCoef(g, sumsq.buf, withGrad.length, maxNorm, out.buf);
    for (const p of withGrad) runScaleBy(g, out.buf, 1, p.grad!.buf, p.grad!.size);
  }
  sumsq.dispose();
  return out;
}

/** AdamW hyper-parameters (PyTorch defaults except weight decay). */
export interface AdamWOptions {
  /** Learning rate. */
  lr: number;
  /** First-moment decay (default 0.9). */
  beta1?: number;
  /** Second-moment decay (default 0.999). */
  beta2?: number;
  /** Denominator epsilon (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay (default 0.01). */
  weightDecay?: number;
}

/** AdamW over a fixed list of parameters; moments are created lazily, owned, and disposable. */
export class AdamW {
  /** The parameters updated, in order. */
  readonly params: readonly Tensor[];
  /** First-moment decay. */
  beta1: number;
  /** Second-moment decay. */
  beta2: number;
  /** Denominator epsilon. */
  eps: number;
  /** Decoupled weight decay. */
  weightDecay: number;
  /** Default learning rate of `update`. */
  lr: number;
  /** Number of steps taken (bias correction uses step + 1 on the next call). */
  step = 0;
  /** First and second moments per parameter, same order as `params`. */
  readonly m: Tensor[];
  /** Second moments, same order as `params`. */
  readonly v: Tensor[];

  /** Zeroed moments for each parameter. */
  constructor(params: readonly Tensor[], opts: AdamWOptions) {
    this.params = params;
    this.lr = opts.lr;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    this.m = params.map((p) => keep(zeros(p.shape)));
    this.v = params.map((p) => keep(zeros(p.shape)));
  }

  /**
   * One update of every parameter that has a gradient. `lr` overrides the learning rate (for
   * schedules); `weightDecay` per parameter may be set with `decayMask` (false = no decay).
   */
  update(opts: { lr?: number; decayMask?: readonly boolean[] } = {}): void {
    this.step++;
    const g = gpu();
    this.params.forEach((p, i) => {
      if (!p.grad) return;
      if (!p.contiguous || p.offset !== 0) {
        throw new Error(`AdamW: parameter ${p.describe()} must be dense`);
      }
      const s: AdamWStep = {
        lr: opts.lr ?? this.lr,
        beta1: this.beta1,
        beta2: this.beta2,
        eps: this.eps,
        weightDecay: opts.decayMask && !opts.decayMask[i] ? 0 : this.weightDecay,
        step: this.step,
      };
      runAdamW(g, p.buf, p.grad.buf, this.m[i].buf, this.v[i].buf, p.size, s);
    });
  }

  /** Drops every parameter's gradient. */
  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** Releases the moments. */
  dispose(): void {
    for (const t of [...this.m, ...this.v]) t.dispose();
  }
}
