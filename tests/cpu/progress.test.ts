/** The progress line every long command prints (src/platform/progress.ts). */

import { test } from "node:test";
import assert from "node:assert/strict";
import { progressPrinter } from "../../src/platform/progress.ts";

test("progress off a terminal: a line per 5% step and one at the end, with rate and ETA", () => {
  const out: string[] = [];
  const p = progressPrinter("job", { unit: "texts" }, false, (t) => out.push(t));
  for (let d = 0; d <= 1000; d += 10) p(d, 1000);
  p(1000, 1000); // after the end: nothing more
  assert.equal(out.length, 21, out.join(""));
  assert.match(out[0], /^job {3}0% 0\/1000 texts \(starting, ETA \?\)\n$/);
  assert.match(out[10], /^job {2}50% 500\/1000 texts \([\d.]+ texts\/s, ETA \d+:\d\d\)\n$/);
  assert.match(out[20], /^job 100% 1000\/1000 texts \([\d.]+ texts\/s, in \d+:\d\d\)\n$/);
  for (const line of out) assert.ok(line.endsWith("\n") && !line.includes("\r"));
});

test("progress on a terminal: one line redrawn with a bar, ended by a newline", () => {
  const out: string[] = [];
  const p = progressPrinter(
    "dl",
    { unit: "MB", scale: 1e6, decimals: 1 },
    true,
    (t) => out.push(t),
  );
  p(0, 4e6);
  p(4e6, 4e6);
  assert.equal(out.length, 2);
  assert.match(out[0], /^\rdl \[\.{20}\] {3}0% 0\.0\/4\.0 MB/);
  // The two calls may fall in the same clock tick, when no rate can be given yet.
  assert.match(
    out[1],
    // deno-lint-ignore no-control-regex
    /^\rdl \[#{20}\] 100% 4\.0\/4\.0 MB \(([\d.]+ MB\/s|starting), in 0:00\)\x1b\[K\n$/,
  );
});
