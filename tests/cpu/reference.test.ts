/** The CPU references against the PyTorch goldens; runs without a GPU. */

import { test } from "node:test";
import { assertClose, FWD, loadGoldens } from "../helpers.ts";
import {
  attentionRef,
  crossEntropyRef,
  matmulRef,
  rmsnormRef,
  ropeRef,
  softmaxRef,
} from "./reference.ts";

const cases = loadGoldens("ops.json");
// The references compute in f32; results stored in f16 (the f16act/ cases) are the GPU tests'.
const byOp = (op: string) => cases.filter((c) => c.op === op && c.outputs.out?.dtype !== "f16");

test("cpu reference: matmul (no transposes) matches goldens", () => {
  for (const c of byOp("matmul").filter((c) => !c.attrs.transA && !c.attrs.transB)) {
    const a = c.inputs.a, b = c.inputs.b;
    const [m, k] = a.shape.slice(-2), n = b.shape[b.shape.length - 1];
    const batch = a.shape.slice(0, -2).reduce((p, q) => p * q, 1);
    const got = matmulRef(a.data, b.data, batch, m, k, n, b.shape.length > 2);
    assertClose(got, c.outputs.out.data, FWD, c.name);
  }
});

test("cpu reference: attention matches goldens for every role table", () => {
  for (const c of byOp("attention")) {
    const [b, t, hq, d] = c.inputs.q.shape;
    const got = attentionRef(
      c.inputs.q.data,
      c.inputs.k.data,
      c.inputs.v.data,
      c.inputs.roles.data,
      c.attrs.table as number[][],
      { b, t, hq, hkv: c.inputs.k.shape[2], d, scale: c.attrs.scale as number },
    );
    assertClose(got, c.outputs.out.data, FWD, c.name);
  }
});

test("cpu reference: softmax, log-softmax, rmsnorm, rope, cross-entropy match goldens", () => {
  for (const c of [...byOp("softmax"), ...byOp("log_softmax")]) {
    const x = c.inputs.x;
    const got = softmaxRef(x.data, x.shape[x.shape.length - 1], c.op === "log_softmax");
    assertClose(got, c.outputs.out.data, { atol: 1e-5, rtol: 2e-3 }, c.name);
  }
  for (const c of byOp("rmsnorm")) {
    const got = rmsnormRef(c.inputs.x.data, c.inputs.w.data, c.attrs.eps as number);
    assertClose(got, c.outputs.out.data, FWD, c.name);
  }
  for (const c of byOp("rope")) {
    const [b, t, h, d] = c.inputs.x.shape;
    const got = ropeRef(
      c.inputs.x.data,
      { b, t, h, d },
      c.attrs.theta as number,
      c.inputs.pos?.data,
    );
    assertClose(got, c.outputs.out.data, FWD, c.name);
  }
  for (const c of byOp("cross_entropy")) {
    const v = c.inputs.logits.shape[1];
    const got = crossEntropyRef(c.inputs.logits.data, c.inputs.targets.data, v, -1);
    assertClose([got], c.outputs.out.data, FWD, c.name);
  }
});
