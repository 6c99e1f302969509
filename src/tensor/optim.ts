/**
 * AdamW (decoupled weight decay, PyTorch semantics) and global-norm gradient clipping. Both run
 * entirely on the GPU: the clip coefficient is computed and applied there, so a training step
 * needs no readback; read the returned norm tensor only when you want to log it.
 */

import { gpu } from "../gpu/device.ts";
import { DTypeError } from "../gpu/errors.ts";
import { runReduce } from "../gpu/kernels/reduce.ts";
import { type AdamWStep, runAdamW, runClipCoef, runScaleBy } from "../gpu/kernels/optim.ts";
import { zeros } from "./ops.ts";
import { empty, keep, type Tensor } from "./tensor.ts";

/**
 * Rows [from, to) of a 2-D leaf parameter: the part an optimizer updates while the other rows
 * stay frozen (GEM's special-token rows of an embedding whose base rows are frozen).
 */
export interface ParamRows {
  /** The leaf (its `grad` is where backward accumulates). */
  leaf: Tensor;
  /** First row trained. */
  from: number;
  /** One past the last row trained. */
  to: number;
}

/** What an optimizer trains: a whole leaf, or rows of one. */
export type Trainable = Tensor | ParamRows;

/** A trainable's leaf, element offset, element count and shape (rows of it for ParamRows). */
function span(p: Trainable): { leaf: Tensor; start: number; size: number; shape: number[] } {
  if (!("leaf" in p)) return { leaf: p, start: 0, size: p.size, shape: [...p.shape] };
  const { leaf, from, to } = p;
  if (leaf.rank !== 2 || !(0 <= from && from < to && to <= leaf.shape[0])) {
    throw new RangeError(
      `rows [${from}, ${to}) of ${leaf.describe()}: need a 2-D leaf and rows in it`,
    );
  }
  const cols = leaf.shape[1];
  return { leaf, start: from * cols, size: (to - from) * cols, shape: [to - from, cols] };
}

/** The shape an optimizer's moments have for `p` (the rows' shape for ParamRows). */
export function trainableShape(p: Trainable): number[] {
  return span(p).shape;
}

/**
 * Clips the gradients of `params` in place so their global L2 norm is at most `maxNorm`
 * (coefficient min(1, maxNorm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_). Returns a
 * tensor [2] = (norm before clipping, coefficient applied). Parameters without a grad are skipped;
 * for rows of a leaf only those rows count.
 */
export function clipGradNorm(params: readonly Trainable[], maxNorm: number): Tensor {
  const g = gpu();
  // A large gradient is summed in spans of 2^19 elements, each its own slot of the sum of
  // squares: within one binding, and with each invocation's loop short (on llvmpipe, loops of
  // 32,768 and more iterations in one invocation came out wrong; see tuning.ts).
  const limitElems = Math.min(2 ** 19, Math.floor((g.bindingLimit - 256) / 4 / 64) * 64);
  const withGrad = params.map(span).filter((p) => p.leaf.grad).flatMap((p) => {
    const out: typeof p[] = [];
    for (let s = 0; s < p.size; s += limitElems) {
      out.push({ ...p, start: p.start + s, size: Math.min(limitElems, p.size - s) });
    }
    return p.size ? out : [p];
  });
  const sumsq = empty([Math.max(withGrad.length, 1)], "f32", "clip.sumsq");
  const out = empty([2], "f32", "clip.norm");
  if (withGrad.length === 0) {
    const z = zeros([1]);
    runClipCoef(g, z.buf, 1, maxNorm, out.buf);
    z.dispose();
  } else {
    withGrad.forEach((p, i) => {
      const grad = p.leaf.grad!;
      runReduce(
        g,
        "sumsq",
        grad.buf,
        grad.offset + p.start,
        { outer: 1, r: p.size, inner: 1 },
        sumsq.buf,
        i,
        null,
      );
    });
    runClipCoef(g, sumsq.buf, withGrad.length, maxNorm, out.buf);
    // Whole gradients are scaled: rows outside a trained range are never applied.
    for (const leaf of new Set(withGrad.map((p) => p.leaf))) {
      runScaleBy(g, out.buf, 1, leaf.grad!.buf, leaf.grad!.size);
    }
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
  /** The parameters updated, in order (whole leaves, or rows of one). */
  readonly params: readonly Trainable[];
  /** The moments' shape per parameter. */
  readonly shapes: readonly number[][];
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
  constructor(params: readonly Trainable[], opts: AdamWOptions) {
    for (const t of params) {
      const leaf = span(t).leaf;
      if (leaf.dtype !== "f32") {
        throw new DTypeError(
          `AdamW: parameter ${leaf.describe()} is ${leaf.dtype}; f16 weights are frozen ` +
            `(inference, or the base of LoRA): train f32 weights (dtype f32, or lora.rank > 0)`,
        );
      }
    }
    this.params = params;
    this.shapes = params.map(trainableShape);
    this.lr = opts.lr;
    this.beta1 = opts.beta1 ?? 0.9;
    this.beta2 = opts.beta2 ?? 0.999;
    this.eps = opts.eps ?? 1e-8;
    this.weightDecay = opts.weightDecay ?? 0.01;
    this.m = this.shapes.map((s) => keep(zeros(s)));
    this.v = this.shapes.map((s) => keep(zeros(s)));
  }

  /**
   * One update of every parameter that has a gradient. `lr` overrides the learning rate (for
   * schedules); `weightDecay` per parameter may be set with `decayMask` (false = no decay).
   */
  update(opts: { lr?: number; decayMask?: readonly boolean[] } = {}): void {
    this.step++;
    const g = gpu();
    this.params.forEach((t, i) => {
      const { leaf: p, start, size } = span(t);
      if (!p.grad) return;
      if (!p.contiguous || p.offset !== 0 || !p.grad.contiguous) {
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
      runAdamW(
        g,
        p.buf,
        p.grad.buf,
        this.m[i].buf,
        this.v[i].buf,
        size,
        s,
        start,
        p.grad.offset + start,
      );
    });
  }

  /** Drops every parameter's gradient. */
  zeroGrad(): void {
    for (const t of this.params) {
      const p = span(t).leaf;
      p.grad?.dispose();
      p.grad = null;
    }
  }

  /** Releases the moments. */
  dispose(): void {
    for (const t of [...this.m, ...this.v]) t.dispose();
  }
}
