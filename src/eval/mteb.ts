/**
 * gemkit's evaluation results as MTEB writes them: one JSON file per task, with `task_name` and
 * `scores.test[{main_score, ...}]`, so tools that read MTEB result folders read gemkit's too.
 * STS-B is `STSBenchmark` and SICK is `SICK-R` (main score: Spearman of cosine similarities),
 * Banking77 is `Banking77Classification` (main score: accuracy); the other tasks keep gemkit's
 * names and headline metrics. The protocols differ from MTEB's where gemkit's own do (the
 * README's Evaluation section says how); the `gemkit` field of each file says which pooling,
 * model and commit produced it.
 */

import { evalTask } from "./registry.ts";
import type { TaskResult } from "./tasks.ts";

/** MTEB's names for the tasks it shares with gemkit. */
export const MTEB_NAMES: Readonly<Record<string, string>> = {
  stsb: "STSBenchmark",
  sick: "SICK-R",
  banking77: "Banking77Classification",
};

/** One MTEB-style result file: where it goes (relative to the output folder) and its content. */
export interface MtebFile {
  /** `mteb/<pooling>/<TaskName>.json`, or `mteb/language/<task>.json` for language tasks. */
  path: string;
  json: Record<string, unknown>;
}

/** The MTEB-style files of a run's results; `about` lands in each file's `gemkit` field. */
export function mtebFiles(
  results: readonly TaskResult[],
  about: Record<string, unknown>,
): MtebFile[] {
  return results.map((r) => {
    const name = MTEB_NAMES[r.task] ?? r.task;
    const main = r.metrics[evalTask(r.task).headline];
    const folder = r.pooling === "-" ? "language" : r.pooling;
    return {
      path: `mteb/${folder}/${name}.json`,
      json: {
        task_name: name,
        evaluation_time: r.seconds,
        scores: {
          test: [{
            main_score: main,
            hf_subset: "default",
            languages: ["eng-Latn"],
            ...(r.task === "stsb" || r.task === "sick"
              ? { cosine_spearman: r.metrics.spearman }
              : r.metrics),
          }],
        },
        gemkit: { task: r.task, pooling: r.pooling, n: r.n, notes: r.notes, ...about },
      },
    };
  });
}
