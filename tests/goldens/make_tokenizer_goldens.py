#!/usr/bin/env python3
"""Tokenizer reference ids ("goldens") for gemkit's llama2.c tokenizer.

Writes tokenizer.json next to this script. Rerun from the repository root with
the system Python (needs python3-sentencepiece: apt-get install -y
python3-sentencepiece):

    /usr/bin/python3 tests/goldens/make_tokenizer_goldens.py

Data is read from $GEMKIT_DATA, or ../shared/data seen from the repository root
(never copied into the repository):

  models/llama2c/tokenizer.model  Llama-2 SentencePiece protobuf (32,000 pieces)
  models/llama2c/tokenizer.bin    the same vocabulary in llama2.c's format
  models/llama2c/tok512.bin       stories260K's 512-token vocabulary
  corpus/tinystories_valid_head.txt

Each case holds one text and up to three id lists, none with BOS or EOS:

  sp      sentencepiece's encode(text) with tokenizer.model (it adds the dummy
          prefix itself);
  l2c32k  llama2c_encode() below on tokenizer.bin;
  l2c512  llama2c_encode() below on tok512.bin.

llama2c_encode() is a literal Python transcription of encode() in karpathy's
llama2.c run.c: dummy-prefix " " token for non-empty text, per-codepoint lookup
with byte fallback (id = byte + 3), then repeatedly merge the adjacent pair
whose concatenation is in the vocabulary with the highest score (the first such
pair on ties; scores must beat -1e10). It re-scans every pair on every merge,
exactly as run.c does, so it is independent of gemkit's heap-based encoder.

The script checks itself: l2c32k must equal sp for every case, pieces must be
unique (so a dict lookup equals run.c's bsearch) and sp.decode(sp) must give
back the text. No text here differs: the Llama-2 model normalises with
"identity" (no NFKC, whitespace runs kept), adds the dummy prefix and falls
back to bytes, and sentencepiece's BPE also merges the best-scoring pair,
leftmost on ties, so the two algorithms agree on every text, runs of spaces,
CR/LF, NUL, NBSP, ideographic space, ligatures, full-width letters, combining
marks, CJK and emoji included. (NUL is encoded as <0x00>, as sentencepiece
does; run.c itself would stop at it, being C-string based.) Should a text ever
differ, the script stops and names it.

Output is deterministic; running the script twice gives identical bytes.
"""

import json
import os
import struct

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DATA = os.environ.get("GEMKIT_DATA") or os.path.join(os.path.dirname(REPO), "shared", "data")
OUT = os.path.join(HERE, "tokenizer.json")

# Varied texts: empty, ASCII, punctuation, digits, whitespace runs, newlines,
# accents (precomposed and combining), other scripts, emoji (with a skin-tone
# modifier and a ZWJ sequence), 4-byte characters that are whole pieces in the
# Llama-2 vocabulary, and repeated characters that make equal-score merges tie
# ("aaaa", "alll", "booo": merging the rightmost tied pair instead of the
# leftmost gives other ids, in both vocabularies).
TEXTS = [
    "",
    "a",
    " ",
    "\n",
    "Hello, world!",
    "hello world",
    "  two leading spaces",
    "trailing spaces   ",
    "multiple   spaces    between     words",
    "tab\tseparated\tvalues",
    "line one\nline two\n",
    "para one\n\npara two",
    "The year 2024 had 366 days; pi is 3.14159.",
    "1234567890 + 0987654321 = 2222222211",
    "email: someone@example.com, url: https://example.com/a?b=1&c=2#d",
    "It's a dog's life, isn't it? \"Yes\", she said.",
    "(parens) [brackets] {braces} <angles> |pipes| ~tilde~ `ticks`",
    "café",
    "naïve façade résumé coöperate",
    "cafe\u0301 with a combining acute",
    "non\u00a0breaking\u00a0space",
    "Ünïcödé Straße",
    "日本語のテキスト",
    "中文测试，标点。",
    "Привет, мир!",
    "Γειά σου Κόσμε",
    "emoji 😀 and 🚀!",
    "👍🏽 👨‍👩‍👧",
    "aaaaaaaaaaaaaaaaa",
    "aaaa eeee eaaa",
    "alll booo",
    "the the the the the",
    "CamelCaseIdentifier snake_case_identifier kebab-case",
    "Once upon a time, there was a little girl named Lily.",
    "crlf\r\nline",
    "nul\x00byte",
    "ideographic\u3000space, zero\u200bwidth, \ufb01ne ligature",
    "ＡＢＣ full-width",
    "four-byte pieces 🌍 𝕜 𝓝",
]

N_STORIES = 10


def llama2c_read(path):
    """Returns (pieces as bytes, float32 scores) of a llama2.c tokenizer.bin."""
    with open(path, "rb") as f:
        buf = f.read()
    (max_len,) = struct.unpack_from("<i", buf, 0)
    off, pieces, scores = 4, [], []
    while off < len(buf):
        score, n = struct.unpack_from("<fi", buf, off)
        off += 8
        assert 0 <= n <= max_len, f"{path}: token {len(pieces)} length {n}"
        pieces.append(buf[off:off + n])
        scores.append(score)
        off += n
    assert off == len(buf), f"{path}: trailing bytes"
    assert len(set(pieces)) == len(pieces), f"{path}: duplicate pieces"
    return pieces, scores


def llama2c_encode(pieces, scores, lookup, text):
    """run.c encode(t, text, bos=0, eos=0): see the module docstring."""
    data = text.encode("utf-8")
    tokens = []
    if len(data) > 0:
        tokens.append(lookup[b" "])
    i = 0
    while i < len(data):
        # One codepoint: a non-continuation byte, then at most 3 continuation bytes.
        j = i + 1
        while j < len(data) and (data[j] & 0xC0) == 0x80 and j - i < 4:
            j += 1
        cp = data[i:j]
        if cp in lookup:
            tokens.append(lookup[cp])
        else:
            tokens.extend(b + 3 for b in cp)
        i = j
    while True:
        best_score, best_id, best_idx = -1e10, -1, -1
        for k in range(len(tokens) - 1):
            tid = lookup.get(pieces[tokens[k]] + pieces[tokens[k + 1]], -1)
            if tid != -1 and scores[tid] > best_score:
                best_score, best_id, best_idx = scores[tid], tid, k
        if best_idx == -1:
            break
        tokens[best_idx:best_idx + 2] = [best_id]
    return tokens


def main():
    models = os.path.join(DATA, "models", "llama2c")
    sp = spm.SentencePieceProcessor(model_file=os.path.join(models, "tokenizer.model"))
    big = llama2c_read(os.path.join(models, "tokenizer.bin"))
    small = llama2c_read(os.path.join(models, "tok512.bin"))
    assert len(big[0]) == sp.vocab_size() == 32000 and len(small[0]) == 512
    big_lookup = {p: i for i, p in enumerate(big[0])}
    small_lookup = {p: i for i, p in enumerate(small[0])}

    with open(os.path.join(DATA, "corpus", "tinystories_valid_head.txt"), encoding="utf-8") as f:
        stories = [p for p in f.read().split("\n\n") if p.strip()][:N_STORIES]
    # One long text (about a thousand tok512 tokens) so that the encoder's cost matters.
    long_text = "\n\n".join(stories[:8])

    cases = []
    for kind, texts in (("text", TEXTS), ("story", stories), ("long", [long_text])):
        for i, text in enumerate(texts):
            case = {"name": f"{kind}/{i}", "text": text}
            case["sp"] = sp.encode(text)
            case["l2c32k"] = llama2c_encode(big[0], big[1], big_lookup, text)
            case["l2c512"] = llama2c_encode(small[0], small[1], small_lookup, text)
            assert sp.decode(case["sp"]) == text, case["name"]
            if case["sp"] != case["l2c32k"]:
                raise AssertionError(f"{case['name']}: sentencepiece and llama2.c differ; "
                                     f"document why in `differs` ({text!r})")
            cases.append(case)

    long_case = cases[-1]
    assert len(long_case["l2c512"]) > 900, len(long_case["l2c512"])

    out = {
        "version": 1,
        "generator": "make_tokenizer_goldens.py",
        "sentencepiece": spm.__version__,
        "files": {"sp": "models/llama2c/tokenizer.model", "l2c32k": "models/llama2c/tokenizer.bin",
                  "l2c512": "models/llama2c/tok512.bin"},
        "cases": cases,
    }
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("{" + ",\n".join(
            f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in out.items()
            if k != "cases") + ',\n"cases": [\n')
        f.write(",\n".join(json.dumps(c, ensure_ascii=False) for c in cases))
        f.write("\n]}\n")
    print(f"wrote {OUT}: {len(cases)} cases, {os.path.getsize(OUT)} bytes, "
          f"long text {len(long_case['l2c512'])} tok512 tokens")


if __name__ == "__main__":
    main()
