/**
 * Every op, forward and backward, against PyTorch goldens (tests/goldens/make_goldens.py):
 * odd shapes, broadcasting, 1-element dims, extreme values, GEM role tables, GQA. The `f16/`
 * cases give matmul, embedding and the classifier's cross-entropy a frozen f16 operand (exact
 * f16 values): kernels widen it and accumulate in f32, so they meet the f32 tolerances. The
 * `f16act/` cases store their result in f16 (f16 activations): computed in f32 and rounded
 * once, it is within one f16 unit in the last place of the float64 reference rounded to f16
 * (F16_OUT); their gradients are f32 and meet the f32 tolerances. Attention's reference forms
 * D = rowsum(dO * O) from the f16 output, as its backward does; an output element on a
 * rounding boundary can round the other way from f32 than from float64, which moves D by one
 * f16 unit (F16_ATTENTION_BWD).
 */

import { test } from "node:test";
import { backward } from "../../src/tensor/backward.ts";
import * as T from "../../src/tensor/ops.ts";
import { AdamW, clipGradNorm } from "../../src/tensor/optim.ts";
import { scope, type Tensor } from "../../src/tensor/tensor.ts";
import type { UnaryFn } from "../../src/gpu/kernels/elementwise.ts";
import type { BinaryFn } from "../../src/gpu/kernels/elementwise.ts";
import type { Tuning } from "../../src/gpu/tuning.ts";
import {
  assertClose,
  assertTensorClose,
  BWD,
  everyTuning,
  fromGolden,
  FWD,
  type GoldenCase,
  loadGoldens,
  testGpu,
  type Tolerance,
} from "../helpers.ts";

const cases = loadGoldens("ops.json");

/** An f16 result: one unit in the last place (2^-10 relative at most), plus f32 noise. */
const F16_OUT: Tolerance = { atol: 1e-5, rtol: 2 ** -10 };
/** Attention's f32 gradients under f16 activations: D may differ by one f16 unit (2^-11). */
const F16_ATTENTION_BWD: Tolerance = { atol: 2e-5, rtol: 1e-3 };

/** Builds the op's output from its (uploaded) inputs. */
function forward(c: GoldenCase, x: Record<string, Tensor>): Tensor {
  const a = c.attrs as Record<string, never>;
  switch (c.op) {
    case "matmul":
      return T.matmul(x.a, x.b, { transA: a.transA, transB: a.transB, dtype: a.dtype });
    case "unary":
      return T.unary(a.fn as UnaryFn, x.x);
    case "binary":
      return T.binary(a.fn as BinaryFn, x.a, x.b);
    case "reduce": {
      const fn = a.fn as string;
      const f = fn === "sum" ? T.sum : fn === "mean" ? T.mean : T.max;
      return f(x.x, a.axis, a.keepdim);
    }
    case "softmax":
      return T.softmax(x.x);
    case "log_softmax":
      return T.logSoftmax(x.x);
    case "rmsnorm":
      return T.rmsnorm(x.x, x.w, a.eps, a.dtype);
    case "rope": {
      const [, t, , d] = x.x.shape;
      const maxPos = x.pos ? Math.max(...c.inputs.pos.data) + 1 : t;
      const table = T.ropeTable(d, maxPos, a.theta);
      return T.rope(x.x, table, x.pos ?? null);
    }
    case "swiglu":
      return T.swiglu(x.a, x.b);
    case "embedding":
      return T.embedding(x.w, x.ids);
    case "cross_entropy":
      return T.crossEntropy(x.logits, x.targets, { ignoreIndex: a.ignoreIndex });
    case "attention":
      return T.attention(x.q, x.k, x.v, x.roles, a.table, { scale: a.scale });
    case "classifier_ce":
      return T.classifierCrossEntropy(x.h, x.w, x.targets, { ignoreIndex: a.ignoreIndex });
  }
  throw new Error(`no forward for op ${c.op}`);
}

/**
 * Tolerance for a case: fp32 inputs of magnitude X carry absolute rounding X * 2^-24, which
 * exp() turns into relative error of the same size, so extreme-range cases get a relative
 * tolerance that grows with their largest input (at 1e4: 1.2e-3).
 */
function tolFor(c: GoldenCase, base: Tolerance): Tolerance {
  let maxAbs = 0;
  for (const g of Object.values(c.inputs)) {
    for (const v of g.data) maxAbs = Math.max(maxAbs, Math.abs(v));
  }
  return { atol: base.atol, rtol: Math.max(base.rtol, 2 * 2 ** -24 * maxAbs) };
}

/**
 * Ops with several kernel versions run under each: row ops with a workgroup or one invocation
 * per row; attention v1 (block 0), v2 with blocks of 4 and 3, v3 with blocks of 8 and 3.
 */
const VERSIONS: Record<string, [string, Partial<Tuning>][]> = {
  row: [["workgroup per row", { threadRowMaxLen: 0 }], ["thread per row", {
    threadRowMaxLen: 1 << 30,
  }]],
  attention: [
    ["v1", { attentionBlock: 0 }],
    ["v2 block 4", { attentionBlock: 4, attentionVersion: 2 }],
    ["v2 block 3", { attentionBlock: 3, attentionVersion: 2 }],
    ["v3 block 8", { attentionBlock: 8, attentionVersion: 3 }],
    ["v3 block 3", { attentionBlock: 3, attentionVersion: 3 }],
  ],
};
const ROW_OPS = new Set(["softmax", "log_softmax", "rmsnorm", "cross_entropy"]);
const variants = cases.filter((c) => c.op !== "adamw" && c.op !== "clip_grad_norm").flatMap((c) => {
  const vs = !everyTuning()
    ? [["", {}]]
    : ROW_OPS.has(c.op)
    ? VERSIONS.row
    : c.op === "attention"
    ? VERSIONS.attention
    : [["", {}]];
  return vs.map(([label, tuning]) => ({ c, label, tuning: tuning as Partial<Tuning> }));
});

for (const { c, label, tuning } of variants) {
  test(`golden ${c.name}${label ? ` (${label})` : ""}`, async () => {
    const gpu = await testGpu();
    const saved = { ...gpu.tuning };
    Object.assign(gpu.tuning, tuning);
    try {
      await runCase(c);
    } finally {
      Object.assign(gpu.tuning, saved);
    }
  });
}

async function runCase(c: GoldenCase): Promise<void> {
  {
    const inputs: Record<string, Tensor> = {};
    for (const [k, g] of Object.entries(c.inputs)) {
      inputs[k] = fromGolden(g);
      if (c.grads?.[k]) T.parameter(inputs[k], k);
    }
    const out = scope(() => forward(c, inputs));
    const half = c.outputs.out.dtype === "f16";
    if (half && out.dtype !== "f16") throw new Error(`${c.name}: result is ${out.dtype}, not f16`);
    await assertTensorClose(
      out,
      c.outputs.out,
      tolFor(c, half ? F16_OUT : FWD),
      `${c.name} forward`,
    );
    if (c.dout && c.grads) {
      const dout = fromGolden(c.dout.out);
      backward(out, { grad: dout });
      for (const [k, g] of Object.entries(c.grads)) {
        const grad = inputs[k].grad;
        if (!grad) throw new Error(`${c.name}: no gradient for ${k}`);
        if (grad.dtype !== "f32") throw new Error(`${c.name}: gradient of ${k} is ${grad.dtype}`);
        const tol = half && c.op === "attention" ? F16_ATTENTION_BWD : BWD;
        await assertTensorClose(grad, g, tolFor(c, tol), `${c.name} grad ${k}`);
      }
      dout.dispose();
    }
    out.dispose();
    for (const t of Object.values(inputs)) t.dispose();
  }
}

for (const c of cases.filter((c) => c.op === "adamw")) {
  test(`golden ${c.name}`, async () => {
    await testGpu();
    const a = c.attrs as Record<string, number>;
    const p = T.parameter(fromGolden(c.inputs.p0), "p");
    const opt = new AdamW([p], {
      lr: a.lr,
      beta1: a.beta1,
      beta2: a.beta2,
      eps: a.eps,
      weightDecay: a.weightDecay,
    });
    for (let step = 1; step <= 3; step++) {
      p.grad = fromGolden(c.inputs[`g${step}`]);
      opt.update();
      await assertTensorClose(p, c.outputs[`p${step}`], FWD, `${c.name} p${step}`);
      opt.zeroGrad();
    }
    await assertTensorClose(opt.m[0], c.outputs.m3, FWD, `${c.name} m3`);
    await assertTensorClose(opt.v[0], c.outputs.v3, FWD, `${c.name} v3`);
    opt.dispose();
    p.dispose();
  });
}

for (const c of cases.filter((c) => c.op === "clip_grad_norm")) {
  test(`golden ${c.name}`, async () => {
    await testGpu();
    const names = ["g_a", "g_b", "g_c"];
    const params = names.map((n) => {
      const p = T.parameter(T.zeros(c.inputs[n].shape), n);
      p.grad = fromGolden(c.inputs[n]);
      return p;
    });
    const norm = clipGradNorm(params, (c.attrs as Record<string, number>).maxNorm);
    const [total] = await norm.toArray();
    assertClose([total], c.outputs.norm.data, FWD, `${c.name} norm`);
    for (let i = 0; i < names.length; i++) {
      await assertTensorClose(params[i].grad!, c.outputs[names[i]], FWD, `${c.name} ${names[i]}`);
    }
    norm.dispose();
    for (const p of params) p.dispose();
  });
}
