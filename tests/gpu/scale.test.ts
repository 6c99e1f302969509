/**
 * The paper's model shapes on llvmpipe: Llama-3.2-1B (vocabulary 128,256, tied, Llama 3 RoPE
 * scaling) and Mistral-7B (hidden 4,096, MLP 14,336, untied) cut to one layer, as bf16 Hugging
 * Face checkpoints of deterministic weights (src/io/synthetic.ts), against PyTorch float64 goldens
 * (tests/goldens/make_scale_goldens.py): logits at 16 tokens, the next-token loss, and the norm of
 * every parameter's gradient; then the same checkpoint stored in f16 (forward and loss), with f32
 * and with f16 activations. Their
 * embeddings, heads and MLP weights are past one 128 MiB
 * binding, so this runs through the paged kernels.
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readHfModel } from "../../src/io/hf.ts";
import { Llama } from "../../src/nn/llama.ts";
import { backward } from "../../src/tensor/backward.ts";
import * as T from "../../src/tensor/ops.ts";
import { clipGradNorm } from "../../src/tensor/optim.ts";
import { tensor } from "../../src/tensor/tensor.ts";
import { type HfConfig, writeSyntheticModel } from "../../src/io/synthetic.ts";
import { logitRows, peakRss, runCli, scaleSkip, testGpu } from "../helpers.ts";

interface Golden {
  config: HfConfig;
  tokens: number[];
  probe_ids: number[];
  logsumexp: number[];
  argmax: number[];
  probe_logits: number[][];
  loss: number;
  grad_norms: Record<string, number>;
}

const GOLDENS: Record<string, Golden> = JSON.parse(
  readFileSync(new URL("../goldens/scale.json", import.meta.url), "utf8"),
);

/** Rows of logits against the golden's, at the tolerances both dtypes meet. */
function checkRows(
  rows: { logsumexp: number; argmax: number; probes: number[] }[],
  g: Golden,
  what: string,
): void {
  rows.forEach((row, i) => {
    assert.ok(Math.abs(row.logsumexp - g.logsumexp[i]) < 2e-4, `${what}logsumexp ${i}`);
    assert.equal(row.argmax, g.argmax[i], `${what}argmax ${i}`);
    row.probes.forEach((x, k) => {
      assert.ok(Math.abs(x - g.probe_logits[i][k]) < 2e-4, `${what}logit [${i}, ${k}]`);
    });
  });
}

// Each checkpoint stored in f16, in a process of its own (tests/gpu/scale_f16_child.ts), so its
// peak host memory is its own. These bf16 weights convert to f16 exactly but below 2^-14 (f16
// subnormals: a rounding of at most 2^-25), and kernels widen them and compute in f32, so the
// forward meets the same goldens at the same tolerances.
for (const [name, g] of Object.entries(GOLDENS)) {
  test(`${name} stored in f16, f32 and f16 activations: logits and loss against the goldens`, {
    skip: scaleSkip(),
  }, async () => {
    const dir = await mkdtemp(join(tmpdir(), "gemkit-scale-"));
    try {
      await writeSyntheticModel(dir, g.config);
      const r = await runCli("tests/gpu/scale_f16_child.ts", [
        dir,
        g.tokens.join(","),
        g.probe_ids.join(","),
      ]);
      assert.equal(r.code, 0, r.err);
      const got = JSON.parse(r.out.trim().split("\n").at(-1)!);
      assert.equal(got.dtype, "f16");
      checkRows(got.rows, g, "f16 ");
      assert.ok(Math.abs(got.loss - g.loss) < 1e-4, `f16 loss ${got.loss}`);
      assert.ok(got.peakRss < 8 * 2 ** 30, `f16: peak host memory ${got.peakRss} bytes`);
      // With f16 activations too (each layer's outputs rounded to 2^-11 relative): logits and
      // log-sum-exp within 5e-3 of the goldens (measured 1.1e-3 and 1.8e-3), the loss within
      // 1e-3 (4e-5 and 1.7e-4), the same argmax at every position.
      const act = got.activations as { rows: typeof got.rows; loss: number };
      act.rows.forEach(
        (row: { logsumexp: number; argmax: number; probes: number[] }, i: number) => {
          assert.ok(Math.abs(row.logsumexp - g.logsumexp[i]) < 5e-3, `f16 activations: lse ${i}`);
          assert.equal(row.argmax, g.argmax[i], `f16 activations: argmax ${i}`);
          row.probes.forEach((x, k) => {
            assert.ok(Math.abs(x - g.probe_logits[i][k]) < 5e-3, `f16 activations: [${i}, ${k}]`);
          });
        },
      );
      assert.ok(Math.abs(act.loss - g.loss) < 1e-3, `f16 activations: loss ${act.loss}`);
    } finally {
      await rm(dir, { recursive: true });
    }
  });
}

for (const [name, g] of Object.entries(GOLDENS)) {
  test(`${name}: logits, next-token loss and gradient norms against PyTorch`, {
    skip: scaleSkip(),
  }, async () => {
    const gpu = await testGpu();
    const dir = await mkdtemp(join(tmpdir(), "gemkit-scale-"));
    try {
      await writeSyntheticModel(dir, g.config);
      // The context is capped: positions 0..15 read the same RoPE rows either way.
      const { config, weights } = await readHfModel(dir, { maxSeqLen: 64 });
      const model = Llama.fromWeights(config, weights, dir);
      weights.clear();
      const v = config.vocabSize, t = g.tokens.length;
      assert.ok(v * config.dim * 4 > gpu.bindingLimit, "the embedding is past one binding");
      const ids = tensor(Int32Array.from(g.tokens), [1, t], "i32");
      const out = model.forward(ids, { logits: false });
      const h = T.reshape(out.hidden, [t, config.dim]);
      // Logits a chunk of rows at a time through the paged head, checked row by row.
      const logits = T.matmul(h, model.classifier, { transB: true });
      const l = (await logits.toArray()) as Float32Array;
      logits.dispose();
      checkRows(logitRows(l, v, g.probe_ids), g, "");
      // The next-token loss through the chunked classifier, and every gradient's norm.
      const targets = tensor(Int32Array.from([...g.tokens.slice(1), -1]), [t], "i32");
      const loss = T.classifierCrossEntropy(h, model.classifier, targets);
      assert.ok(Math.abs((await loss.item()) - g.loss) < 1e-4, `loss ${await loss.item()}`);
      backward(loss);
      for (const [pname, want] of Object.entries(g.grad_norms)) {
        const p = model.params.get(pname)!;
        const norm = clipGradNorm([p], 1e30);
        const [got] = (await norm.toArray()) as Float32Array;
        norm.dispose();
        assert.ok(Math.abs(got - want) <= 1e-3 * want + 1e-6, `|grad ${pname}| ${got} vs ${want}`);
      }
      for (const x of [ids, out.hidden, h, targets, loss]) x.dispose();
      model.dispose();
      assert.ok(peakRss() < 8 * 2 ** 30, `peak host memory ${peakRss()} bytes`);
    } finally {
      await rm(dir, { recursive: true });
    }
  });
}
