/**
 * What the training loop itself needs from a configuration: the length of the run, its phases
 * (each with its own loss mix and peak learning rate), warm-up and cosine decay, AdamW and
 * clipping, and how often to checkpoint and evaluate. The GEM recipe's full configuration
 * (src/recipe/config.ts) extends it.
 */

/** One phase of the schedule: a share of the run with its own loss mix and learning rate. */
export interface Phase {
  /** Share of `steps` (phases' fractions must sum to 1). */
  frac: number;
  /** Weight of the contrastive loss: total = (1 - alpha) * NTP + alpha * contrastive. */
  alpha: number;
  /** Peak learning rate of the phase. */
  lr: number;
}

/** The loop's part of a training configuration. */
export interface LoopConfig {
  /** Optimizer steps in the whole run. */
  steps: number;
  /** Micro-batches per step. */
  accum: number;
  /** Warm-up steps per phase. */
  warmup: number;
  /** Cosine floor as a fraction of the peak lr. */
  minLrFrac: number;
  /** The schedule. */
  phases: Phase[];
  /** AdamW and clipping. */
  optim: { beta1: number; beta2: number; eps: number; weightDecay: number; clip: number };
  /** Steps between checkpoints. */
  checkpointEvery: number;
  /** Checkpoints kept. */
  keepCheckpoints: number;
  /** Steps between validation evaluations. */
  evalEvery: number;
}

/** Learning rate and alpha at `step` (0-based) of a run of `c.steps` steps. */
export function scheduleAt(
  c: LoopConfig,
  step: number,
): { lr: number; alpha: number; phase: number } {
  let start = 0;
  for (let i = 0; i < c.phases.length; i++) {
    const p = c.phases[i];
    const len = i === c.phases.length - 1 ? c.steps - start : Math.round(p.frac * c.steps);
    if (step < start + len || i === c.phases.length - 1) {
      const s = step - start;
      const warm = Math.min(c.warmup, Math.max(len - 1, 0));
      if (s < warm) return { lr: (p.lr * (s + 1)) / (warm + 1), alpha: p.alpha, phase: i };
      const progress = len - warm <= 1 ? 1 : (s - warm) / (len - warm - 1);
      const cos = 0.5 * (1 + Math.cos(Math.PI * Math.min(progress, 1)));
      return { lr: p.lr * (c.minLrFrac + (1 - c.minLrFrac) * cos), alpha: p.alpha, phase: i };
    }
    start += len;
  }
  throw new Error("unreachable");
}
