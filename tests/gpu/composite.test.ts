/**
 * A two-layer tiny Llama under the GEM role mask, composed from engine ops, against PyTorch:
 * logits, loss, and the gradient of every parameter (tests/goldens/composite.json).
 */

import { test } from "node:test";
import { backward } from "../../src/tensor/backward.ts";
import * as T from "../../src/tensor/ops.ts";
import { scope, type Tensor } from "../../src/tensor/tensor.ts";
import { assertTensorClose, BWD, fromGolden, FWD, loadGoldens, testGpu } from "../helpers.ts";

const [c] = loadGoldens("composite.json");

test("golden composite: two-layer tiny Llama, GEM mask, logits + loss + all grads", async () => {
  await testGpu();
  const cfg = c.attrs as {
    vocab: number;
    dim: number;
    nLayers: number;
    nHeads: number;
    nKvHeads: number;
    hidden: number;
    eps: number;
    theta: number;
    ignoreIndex: number;
    table: number[][];
  };
  const x: Record<string, Tensor> = {};
  for (const [k, g] of Object.entries(c.inputs)) {
    x[k] = fromGolden(g);
    if (c.grads![k]) T.parameter(x[k], k);
  }
  const [b, t] = x.tokens.shape;
  const hd = cfg.dim / cfg.nHeads;
  const table = T.ropeTable(hd, t, cfg.theta);
  const { logits, loss } = scope(() => {
    let h = T.embedding(x.embed, x.tokens);
    for (let l = 0; l < cfg.nLayers; l++) {
      const p = (n: string) => x[`l${l}.${n}`];
      let a = T.rmsnorm(h, p("attn_norm"), cfg.eps);
      const q = T.rope(T.reshape(T.matmul(a, p("wq")), [b, t, cfg.nHeads, hd]), table);
      const k = T.rope(T.reshape(T.matmul(a, p("wk")), [b, t, cfg.nKvHeads, hd]), table);
      const v = T.reshape(T.matmul(a, p("wv")), [b, t, cfg.nKvHeads, hd]);
      const att = T.reshape(T.attention(q, k, v, x.roles, cfg.table), [b, t, cfg.dim]);
      h = T.add(h, T.matmul(att, p("wo")));
      a = T.rmsnorm(h, p("ffn_norm"), cfg.eps);
      h = T.add(h, T.matmul(T.swiglu(T.matmul(a, p("w1")), T.matmul(a, p("w3"))), p("w2")));
    }
    const logits = T.matmul(T.rmsnorm(h, x.final_norm, cfg.eps), x.embed, { transB: true });
    const flat = T.reshape(logits, [b * t, cfg.vocab]);
    const loss = T.crossEntropy(flat, T.reshape(x.targets, [b * t]), {
      ignoreIndex: cfg.ignoreIndex,
    });
    return { logits, loss };
  });
  await assertTensorClose(logits, c.outputs.logits, FWD, "logits");
  await assertTensorClose(loss, c.outputs.loss, FWD, "loss");
  backward(loss);
  for (const [k, g] of Object.entries(c.grads!)) {
    await assertTensorClose(x[k].grad!, g, BWD, `grad ${k}`);
  }
  for (const v of [...Object.values(x), logits, loss, table]) v.dispose();
});
