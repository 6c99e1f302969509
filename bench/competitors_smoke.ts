/**
 * Quick check that every competitor in bench/competitors.ts loads, runs on the intended backend
 * and computes a correct product. Not a benchmark: tiny counts, noisy numbers.
 *
 *   DENO_WEBGPU_BACKEND=vulkan XDG_RUNTIME_DIR=/tmp deno run -A bench/competitors_smoke.ts [n]
 *
 * Exits 1 when a competitor that should be available gave no timings.
 */

import { jaxjsMatmul, tfjsMatmul, type Timing, torchMatmul } from "./competitors.ts";

const n = Number(Deno.args[0] ?? "256");
const opts = { warmup: 1, repeats: 3, inner: 4 };

function show(t: Timing): void {
  const ts = t.times_ms;
  const med = ts.length ? [...ts].sort((x, y) => x - y)[Math.floor(ts.length / 2)] : NaN;
  const gflops = ts.length ? (2 * t.n ** 3) / (med * 1e6) : NaN;
  console.log(
    `${t.impl.padEnd(14)} n=${t.n}  ` +
      (ts.length
        ? `median ${med.toFixed(3)} ms/matmul (${gflops.toFixed(2)} GFLOP/s)  ` +
          `samples [${ts.map((x) => x.toFixed(3)).join(", ")}]`
        : "NOT RUN"),
  );
  if (t.note) console.log(`${"".padEnd(16)}${t.note}`);
}

const results: Timing[] = [];
for (const f of [jaxjsMatmul, tfjsMatmul]) {
  const t0 = performance.now();
  const r = await f(n, opts);
  show(r);
  console.log(`${"".padEnd(16)}(call took ${((performance.now() - t0) / 1e3).toFixed(1)} s)`);
  results.push(r);
}
for (const r of await torchMatmul([n], opts)) {
  show(r);
  results.push(r);
}

const failed = results.filter((r) => r.times_ms.length === 0);
if (failed.length) {
  console.error(`no timings from: ${failed.map((r) => r.impl).join(", ")}`);
  Deno.exit(1);
}
