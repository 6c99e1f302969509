/**
 * Writes data/manifest.json from the data folder's MANIFEST.tsv (path, size, SHA-256 of every
 * file) and the origins below (repository, pinned commit and path, from its PROVENANCE.md).
 * `deno run -A scripts/make_data_manifest.ts`; a test checks the result against the folder.
 */

import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { dataDir } from "../src/io/paths.ts";
import type { DataFile, DataManifest } from "../src/io/data.ts";
import type { MakeStep } from "../src/io/derive.ts";
import { projectRoot } from "../src/platform/platform.ts";

interface Origin {
  /** Files whose path starts with this. */
  prefix: string;
  group: string;
  licence: string;
  repo: string;
  commit: string;
  /** The source path in the repository for a data path. */
  source: (path: string) => string;
  /** Set for files made from the source rather than copied. */
  transform?: (path: string) => string;
  /** Set when the file is a member of the source, a zip archive. */
  member?: (path: string) => string;
  /** Set when `deno task data` makes the file from the source with a named transform. */
  make?: (path: string) => MakeStep | undefined;
}

const base = (p: string) => p.slice(p.lastIndexOf("/") + 1);
const NLTK = ["nltk/nltk_data", "5db857e6f7df11eabb5e5665836db9ec8df07e28"] as const;
const EXAMPLES = ["pytorch/examples", "77f55b912142e11fcfdf5b530231fb9c52f181e8"] as const;

const ORIGINS: Origin[] = [
  ...["stories260K.bin", "tok512.bin"].map((name): Origin => ({
    prefix: `models/llama2c/${name}`,
    group: "stories260k",
    licence: "MIT",
    repo: "DaveBben/esp32-llm",
    commit: "934dab4d242d259abd88678488ea3b62d4fca601",
    source: () => `data/${name}`,
  })),
  {
    prefix: "models/llama2c/tokenizer.",
    group: "llama2-tokenizer",
    licence: "MIT",
    repo: "karpathy/llama2.c",
    commit: "350e04fe35433e6d2941dce5a1f53308f87058eb",
    source: base,
  },
  {
    prefix: "eval/stsb/",
    group: "stsb",
    licence: "CC BY-SA 4.0 (scores); text per source, see LICENSE.txt",
    repo: "zhangzhenhu/Semantic-Texual-Similarity-Toolkits",
    commit: "c55a72f51bd15a8bd75114247c06984b432050f9",
    source: (p) => `data/stsbenchmark/${base(p)}`,
  },
  {
    prefix: "eval/sick/",
    group: "sick",
    licence: "CC BY-NC-SA 3.0",
    repo: "brmson/dataset-sts",
    commit: "e1d3375f5b3bc24f21aa4e46f96eb379e9fc1081",
    source: (p) => `data/sts/sick2014/${base(p)}`,
  },
  {
    prefix: "eval/mmlu/",
    group: "mmlu",
    licence: "MIT",
    repo: "HaeChan0305/MLILAB-FedLLM",
    commit: "d92730e8bacd7b3a61e551e015e40588e10234b4",
    // That repository holds MMLU already reformatted (a header row, the answer as a 0-based
    // index): the files are its files, byte for byte.
    source: (p) => `data/mmlu/${p.slice("eval/mmlu/".length)}`,
  },
  {
    prefix: "eval/cranfield/",
    group: "cranfield",
    licence: "research use (freely distributed, no formal licence)",
    repo: "noramtboraas/information-retrieval",
    commit: "4ea1b8e02da1db64b68b0364d50620b3c95528dc",
    source: base,
  },
  {
    prefix: "eval/banking77/",
    group: "banking77",
    licence: "CC BY 4.0",
    repo: "PolyAI-LDN/task-specific-datasets",
    commit: "57ec275d8078af65b7731c2a98be812d844a6d6b",
    source: (p) => `banking_data/${base(p)}`,
  },
  {
    prefix: "eval/trec_qc/",
    group: "trec",
    licence: "research use (no formal licence)",
    repo: NLTK[0],
    commit: NLTK[1],
    source: () => "packages/corpora/qc.zip",
    transform: (p) => `member qc/${base(p)} of the zip archive`,
    member: (p) => `qc/${base(p)}`,
  },
  ...["state_union", "inaugural"].map((name): Origin => ({
    prefix: `corpus/${name}/`,
    group: name.replace("_", "-"),
    licence: "public domain",
    repo: NLTK[0],
    commit: NLTK[1],
    source: () => `packages/corpora/${name}.zip`,
    transform: (p) => `member ${name}/${base(p)} of the zip archive`,
    member: (p) => `${name}/${base(p)}`,
  })),
  {
    prefix: "corpus/movie_reviews",
    group: "movie-reviews",
    licence: "CC BY 4.0",
    repo: NLTK[0],
    commit: NLTK[1],
    source: () => "packages/corpora/movie_reviews.zip",
    transform: (p) =>
      p.endsWith(".jsonl")
        ? "the 2,000 review files as JSON lines {id, label, text}"
        : "member movie_reviews/README of the zip archive",
    member: (p) => (p.endsWith(".jsonl") ? "" : "movie_reviews/README"),
    make: (p) => (p.endsWith(".jsonl") ? "movie-reviews-jsonl" : undefined),
  },
  ...["valid", "test"].map((split): Origin => ({
    prefix: `corpus/wikitext2_${split}`,
    group: "wikitext2",
    licence: "CC BY-SA 3.0",
    repo: EXAMPLES[0],
    commit: EXAMPLES[1],
    source: () => `word_language_model/data/wikitext-2/${split}.txt`,
  })),
  {
    prefix: "corpus/tinyshakespeare.txt",
    group: "tinyshakespeare",
    licence: "public domain",
    repo: EXAMPLES[0],
    commit: EXAMPLES[1],
    source: () => "distributed/minGPT-ddp/mingpt/data/input.txt",
  },
  {
    prefix: "corpus/tinystories_valid_head.txt",
    group: "tinystories",
    licence: "CDLA-Sharing-1.0",
    repo: "yuninxia/moe-routing-bench",
    commit: "bb9bb0bd461aa77cf6ab89423b758f586a6f75d1",
    source: () => "data/tinystories_val.txt",
  },
];

const raw = (o: Origin, path: string) =>
  `https://raw.githubusercontent.com/${o.repo}/${o.commit}/${o.source(path)}`;

const tsv = readFileSync(join(dataDir(), "MANIFEST.tsv"), "utf8").trim().split("\n").slice(1);
const files: DataFile[] = [];
for (const line of tsv) {
  const [p, bytes, sha256] = line.split("\t");
  const path = p.replace(/^\.\//, "");
  const o = ORIGINS.find((x) => path.startsWith(x.prefix));
  if (!o) throw new Error(`no origin for ${path}: add one to scripts/make_data_manifest.ts`);
  const f: DataFile = { path, group: o.group, bytes: Number(bytes), sha256, licence: o.licence };
  if (o.transform) {
    f.derived = { url: raw(o, path), transform: o.transform(path) };
    const member = o.member?.(path);
    if (member) f.derived.member = member;
    const make = o.make?.(path);
    if (make) f.derived.make = make;
  } else f.url = raw(o, path);
  files.push(f);
}
const manifest: DataManifest = {
  about: "Every file gemkit reads from its data folder: its path there, size, SHA-256, licence, " +
    "and the pinned public source it was taken from (url) or made from (derived). " +
    "`deno task data` fetches what is missing. Written by scripts/make_data_manifest.ts.",
  files,
};
writeFileSync(
  join(projectRoot(), "data", "manifest.json"),
  JSON.stringify(manifest, null, 2) + "\n",
);
console.error(
  `make_data_manifest: ${files.length} files, ${files.filter((f) => f.derived).length} derived`,
);
