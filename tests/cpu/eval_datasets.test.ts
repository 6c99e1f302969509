/**
 * Evaluation-set loaders against the shared data: the counts in the data README, rows checked
 * verbatim, the format quirks (Latin-1 TREC, Cranfield's query numbering, CSV quoting).
 */

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  banking77,
  cranfield,
  DatasetError,
  mmlu,
  parseCsv,
  sickPairs,
  trec,
} from "../../src/eval/datasets.ts";
import { stsbPairs } from "../../src/eval/quick.ts";

test("STS-B and SICK: counts and first rows", () => {
  assert.equal(stsbPairs("test").length, 1379);
  assert.equal(sickPairs("train").length, 4500);
  assert.equal(sickPairs("trial").length, 500);
  const test = sickPairs("test");
  assert.equal(test.length, 4927);
  assert.deepEqual(test[0], {
    a: "There is no boy playing outdoors and there is no man smiling",
    b: "A group of kids is playing in a yard and an old man is standing in the background",
    score: 3.3,
  });
  // The test file has CRLF line ends: no CR may leak into a field.
  assert.ok(test.every((p) => !/\r/.test(p.a + p.b) && p.score >= 1 && p.score <= 5));
});

test("Banking77: counts, 77 intents, quoted and multi-line texts verbatim", () => {
  const train = banking77("train"), test = banking77("test");
  assert.equal(train.length, 10003);
  assert.equal(test.length, 3080);
  assert.equal(new Set(train.map((r) => r.label)).size, 77);
  assert.deepEqual(new Set(test.map((r) => r.label)), new Set(train.map((r) => r.label)));
  assert.deepEqual(train[0], { text: "I am still waiting on my card?", label: "card_arrival" });
  assert.deepEqual(test[1], {
    text: "I still have not received my new card, I ordered over a week ago.",
    label: "card_arrival",
  });
  assert.deepEqual(train[1290], {
    text: "\nI can't seem to be able to use my card\n\n\n",
    label: "card_not_working",
  });
  assert.match(train[694].text, /listed in the app as "pending", it never changes/);
  assert.ok(train.every((r) => !r.text.includes("\r") && !r.label.includes("\r")));
});

test("TREC: counts, labels, and the Latin-1 train line", () => {
  const train = trec("train", "fine");
  assert.equal(train.length, 5452);
  assert.equal(trec("test").length, 500);
  assert.equal(new Set(train.map((r) => r.label)).size, 50);
  assert.deepEqual(
    new Set(trec("train", "coarse").map((r) => r.label)),
    new Set([
      "ABBR",
      "DESC",
      "ENTY",
      "HUM",
      "LOC",
      "NUM",
    ]),
  );
  assert.deepEqual(train[0], {
    text: "How did serfdom develop in and then leave Russia ?",
    label: "DESC:manner",
  });
  // Line 66 holds byte 0xF0: Latin-1 "ð", not a UTF-8 decoding error.
  assert.deepEqual(train[65], {
    text: "Which city has the oldest relationship as a sister\u00f0city with Los Angeles ?",
    label: "LOC:city",
  });
  assert.deepEqual(trec("test")[0], { text: "How far is it from Denver to Aspen ?", label: "NUM" });
});

test("Cranfield: counts, title + abstract, query numbering by file order", () => {
  const { docs, queries, qrels } = cranfield();
  assert.equal(docs.length, 1400);
  assert.equal(queries.length, 225);
  assert.deepEqual(docs.map((d) => d.id), Array.from({ length: 1400 }, (_, i) => i + 1));
  // The data README says 1,836 judgments: that is `wc -l`; the last row has no newline, so the
  // file holds 1,837 rows (1,612 graded 1-4 and one grade -1 per query).
  const all = [...qrels.values()].flatMap((m) => [...m.values()]);
  assert.equal(all.length, 1837);
  assert.equal(all.filter((g) => g > 0).length, 1612);
  assert.equal(all.filter((g) => g === 0).length, 225);
  assert.equal(qrels.size, 225);
  assert.equal(
    docs[0].title,
    "experimental investigation of the aerodynamics of a wing in a slipstream .",
  );
  assert.ok(docs[0].text.startsWith(`${docs[0].title} ${docs[0].title} an experimental study`));
  // cran.qry's .I ids skip numbers (001, 002, 004, ...); cranqrel numbers queries 1..225 in file
  // order, so cranqrel's query 3 is the third query, .I 004, at index 2.
  assert.deepEqual(queries.slice(0, 3).map((q) => q.id), [1, 2, 4]);
  assert.equal(
    queries[2].text,
    "what problems of heat conduction in composite slabs have been solved so far .",
  );
  assert.deepEqual([...qrels.get(2)!], [
    [5, 2],
    [6, 2],
    [90, 2],
    [91, 2],
    [119, 2],
    [144, 2],
    [181, 2],
    [399, 2],
    [485, 0],
  ]);
  // Query 1: grade 2 -> gain 3, grade 4 -> gain 1, grade -1 -> gain 0.
  const q1 = qrels.get(0)!;
  assert.equal(q1.size, 29);
  assert.deepEqual([q1.get(184), q1.get(12), q1.get(13), q1.get(486)], [3, 2, 1, 0]);
  assert.equal(queries.at(-1)!.id, 365);
  // Doc 240 has stray .A/.B markers inside its abstract: their lines stay in the abstract.
  assert.match(docs[239].abstract, /region \. application to turbulent separations .* unity in/);
  // Docs 471 and 995 are empty in the source; 995 is still judged (query 125, grade 3).
  assert.equal(docs[994].text, "");
  assert.equal(qrels.get(124)!.get(995), 2);
});

test("MMLU: 57 subjects, 14,042 test and 285 dev questions", () => {
  const test = mmlu("test"), dev = mmlu("dev");
  assert.equal(test.size, 57);
  assert.deepEqual([...dev.keys()], [...test.keys()]);
  assert.equal([...test.values()].reduce((a, q) => a + q.length, 0), 14042);
  assert.ok([...dev.values()].every((q) => q.length === 5));
  assert.deepEqual(test.get("abstract_algebra")![0], {
    question: "Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.",
    choices: ["0", "4", "2", "6"],
    answer: 1,
  });
  // A quoted question holding CRLF line breaks is kept verbatim.
  assert.match(dev.get("college_mathematics")![2].question, /must be true\?\r\nI\. All/);
});

test("parseCsv: RFC 4180 quoting edge cases", () => {
  const rows = (t: string) => parseCsv(t).map((r) => r.fields);
  assert.deepEqual(rows('a,b\r\n"x, y","say ""hi"""\n'), [["a", "b"], ["x, y", 'say "hi"']]);
  // Newlines (LF and CRLF) inside quotes; last record without a newline; empty fields.
  assert.deepEqual(rows('"1\n2","3\r\n4"\n,,\n""'), [["1\n2", "3\r\n4"], ["", "", ""], [""]]);
  // Empty lines are skipped; record line numbers count the newlines inside quotes.
  const recs = parseCsv('h\n\n"a\nb"\nc\n');
  assert.deepEqual(recs.map((r) => [r.line, r.fields[0]]), [[1, "h"], [3, "a\nb"], [5, "c"]]);
  assert.deepEqual(rows('"",x'), [["", "x"]]);
  assert.deepEqual(rows("a,\nb,"), [["a", ""], ["b", ""]]);
  assert.throws(
    () => parseCsv('a,"open\nb', "f.csv"),
    /f\.csv: line 1: quoted field is never closed/,
  );
  assert.throws(() => parseCsv('a,b\nx"y,z', "f.csv"), /f\.csv: line 2: quote inside an unquoted/);
  assert.throws(() => parseCsv('"a"b', "f.csv"), DatasetError);
});
