"""Build the natural-text corpus of the text benchmarks: English prose from the docstrings of permissively licensed
third-party packages installed in the venv (not Python's standard library, not the project's own code).

A *document* is one source module file of one package. Its docstrings (module, classes, functions; read with
`ast`, nothing is imported) are cut into prose paragraphs and sentences by the rules below, and the document goes
whole to ONE split — calibration, selection or evaluation — by a fixed hash of (package, module path), so no
document feeds two splits. Sentences that occur (up to names and numbers) in more than one document are dropped
everywhere, so no sentence can appear in two splits either.

Prose rules (per docstring, after `inspect.cleandoc`):
  * dropped sections: numpydoc headers underlined with dashes and Google-style `Name:` headers whose name is in
    `DROP_SECTIONS` (parameters, returns, raises, examples, see also, references, attributes, ...), up to the
    next header (numpydoc) or the end of the indented block (Google style);
  * dropped lines: indented lines (code, parameter bodies, quoted blocks), list items, doctest lines (`>>>`,
    `...`) and their output, markdown code fences and everything inside, reST directives (`.. x::`) with their
    indented body, the literal block after a paragraph ending in `::`, table rules, lone HTML tags, lines that
    hold only a URL;
  * a paragraph is a run of kept lines between blank or dropped lines, joined with spaces; markup is reduced to its
    text (``x``, `x`, :role:`x`, :role:`text <target>`, [`x`], [text](url), **x**, *x*); `:math:` makes the
    sentence unusable.
Split rule: a sentence ends at `.`, `!` or `?` (optionally followed by a closing quote or bracket) followed by
whitespace and an uppercase letter, unless the word before the period is an abbreviation in `ABBREVIATIONS` or a
single letter. Kept sentences: 6 to 50 words, starting with an uppercase letter, ending with `.`, `!` or `?`, no
code characters (`{}[]=<>|\\$#@^~`, backticks, `%(`, `::`, `://`), at least 85 % letters and spaces, balanced
parentheses, at least two English function words (`STOPWORDS`). A paragraph's kept sentences form *runs* of
consecutive sentences (a dropped sentence ends a run); sentence pairs for retrieval come from runs.

  python benchmarks/build_corpus.py            # writes benchmarks/corpus/{docstrings.jsonl.gz,PROVENANCE.md}
"""

import argparse
import ast
import gzip
import hashlib
import importlib.metadata as md
import inspect
import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path


HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "corpus"
CORPUS = OUT_DIR / "docstrings.jsonl.gz"
SPLITS = ("calibration", "selection", "evaluation")
SPLIT_EDGES = (0.55, 0.70)  # hash u in [0, 1): calibration u < 0.55, selection u < 0.70, evaluation otherwise
# (distribution, import folder, SPDX licence of the package's own code, a phrase its licence file must contain)
PACKAGES = (
    ("numpy", "numpy", "BSD-3-Clause", "Redistribution and use in source and binary forms"),
    ("scipy", "scipy", "BSD-3-Clause", "Redistribution and use in source and binary forms"),
    ("scikit-learn", "sklearn", "BSD-3-Clause", "Redistribution and use in source and binary forms"),
    ("pandas", "pandas", "BSD-3-Clause", "Redistribution and use in source and binary forms"),
    ("networkx", "networkx", "BSD-3-Clause", "Redistribution and use in source and binary forms"),
    ("torch", "torch", "BSD-3-Clause", "Redistribution and use in source and binary forms"),
    ("transformers", "transformers", "Apache-2.0", "Apache License"),
    ("datasets", "datasets", "Apache-2.0", "Apache License"),
    ("huggingface_hub", "huggingface_hub", "Apache-2.0", "Apache License"),
    ("accelerate", "accelerate", "Apache-2.0", "Apache License"),
    ("peft", "peft", "Apache-2.0", "Apache License"),
)
SKIP_DIRS = {"tests", "test", "testing", "_vendor", "vendor", "vendored", "externals", "third_party", "benchmarks"}
DROP_SECTIONS = {
    "parameters", "other parameters", "params", "args", "arguments", "kwargs", "keyword args", "keyword arguments",
    "returns", "return", "yields", "yield", "receives", "raises", "raise", "warns", "see also", "references",
    "reference", "examples", "example", "example usage", "usage", "attributes", "methods", "inputs", "outputs",
    "shape", "shapes", "type", "rtype", "todo", "citation", "citations",
}  # fmt: skip
ABBREVIATIONS = {
    "e.g", "i.e", "etc", "vs", "cf", "fig", "eq", "eqs", "al", "approx", "resp", "no", "dr", "mr", "mrs", "ms",
    "sec", "ref", "ch", "vol", "pp", "st", "jr", "inc", "ltd", "u.s", "ph.d", "viz", "incl", "min", "max",
}  # fmt: skip
STOPWORDS = {
    "the", "a", "an", "of", "to", "is", "in", "and", "for", "that", "this", "be", "are", "with", "it", "as", "by",
    "on", "or", "if", "not", "from", "which", "can", "will", "when", "at", "was", "has", "have", "its", "each",
}  # fmt: skip
CODE_CHARS = set("{}[]=<>|\\$#@^~`")


# ---- docstrings -> paragraphs ---------------------------------------------------------------------------------
def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_item(text: str) -> bool:
    return bool(re.match(r"^([-*+•]|\d+[.)]|[a-z][.)]|\(\w+\))\s", text))


def prose_paragraphs(doc: str) -> list[str]:
    """The prose paragraphs of one cleaned docstring (module docstring rules)."""
    lines = doc.expandtabs().splitlines()
    keep: list[str | None] = []  # None = a paragraph break
    i, fence = 0, False
    while i < len(lines):
        line, text = lines[i], lines[i].strip()
        nxt = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if text.startswith("```"):
            fence = not fence
            keep.append(None)
            i += 1
            continue
        if fence:
            i += 1
            continue
        if text and nxt and set(nxt) <= set("-=~^") and len(nxt) >= 3:  # numpydoc header
            name = text.lower().rstrip(":")
            i += 2
            keep.append(None)
            if name in DROP_SECTIONS:
                while i < len(lines) and not (
                    lines[i].strip() and i + 1 < len(lines) and set(lines[i + 1].strip() or "x") <= set("-=~^")
                ):
                    i += 1
            continue
        if text.startswith(">>>"):  # a doctest: its lines and output, up to the next blank line
            while i < len(lines) and lines[i].strip():
                i += 1
            keep.append(None)
            continue
        header = re.match(r"^([A-Za-z][A-Za-z ]*):\s*$", text)
        if text.startswith(".. ") or text.endswith("::") or (header and header.group(1).lower() in DROP_SECTIONS):
            base = _indent(line)  # a directive, a literal block or a Google-style section: its indented body
            i += 1
            while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
                i += 1
            keep.append(None)
            continue
        dropped = (
            not text or _indent(line) > 0 or _is_item(text) or text.startswith(("...", "<", "|", "+-", "=="))
            or re.fullmatch(r"\S*://\S*", text) is not None or set(text) <= set("-=~^*#")
        )  # fmt: skip
        keep.append(None if dropped else text)
        i += 1
    paragraphs, cur = [], []
    for t in [*keep, None]:
        if t is None:
            if cur:
                paragraphs.append(" ".join(cur))
            cur = []
        else:
            cur.append(t)
    return paragraphs


def _role(m: re.Match) -> str:
    text = m.group(2)
    if "<" in text:
        text = text.split("<", 1)[0].strip()
    return text.rsplit(".", 1)[-1] if text.startswith("~") else text


def clean_markup(text: str) -> str:
    """Markup reduced to its text; `:math:` replaced by a character that makes the sentence fail the filter."""
    text = re.sub(r":math:`[^`]*`", "\x00", text)
    text = re.sub(r":([\w:.+-]+):`([^`]*)`", _role, text)
    text = re.sub(r"\[`~?([^`\]]*)`\]", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(r"`([^`<]*?)(?:\s*<[^>]*>)?`_{0,2}", r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", text)
    text = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"\1", text)
    return re.sub(r"\s+", " ", text).strip()


# ---- paragraphs -> sentences ---------------------------------------------------------------------------------------
_END = re.compile(r"[.!?][\"')\]]?(?=\s+[\"'(\[]?[A-Z])")


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph by the module's split rule."""
    out, start = [], 0
    for m in _END.finditer(text):
        before = text[start : m.start()].rsplit(None, 1)
        word = before[-1].lstrip("(\"'").lower() if before else ""
        if m.group().startswith(".") and (word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())):
            continue
        out.append(text[start : m.end()].strip())
        start = m.end()
    tail = text[start:].strip()
    return [*out, tail] if tail else out


def usable(s: str) -> bool:
    """The sentence filter of the module docstring."""
    words = s.split()
    if not 6 <= len(words) <= 50 or not s[0].isupper() or not s[0].isascii() or s[-1] not in ".!?":
        return False
    if CODE_CHARS & set(s) or "\x00" in s or any(t in s for t in ("%(", "::", "://", "..")):
        return False
    if s.count("(") != s.count(")") or s.count('"') % 2:
        return False
    letters = sum(c.isalpha() or c == " " for c in s)
    if letters < 0.85 * len(s):
        return False
    return sum(w.lower().strip(",;:.") in STOPWORDS for w in words) >= 2


def dedup_key(s: str) -> str:
    """Key under which near-identical sentences meet: lowercase words, without names (capitalised words after the
    first), numbers or identifiers (words with digits, dots or underscores inside)."""
    words = s.split()
    kept = [words[0]] + [w for w in words[1:] if not any(c.isupper() for c in w)]
    kept = [w for w in kept if not re.search(r"\d|\w[._]\w", w)]
    return " ".join(re.sub(r"[^a-z]+", " ", " ".join(kept).lower()).split())


# ---- modules -> documents -------------------------------------------------------------------------------------------
def docstrings(source: str) -> list[str]:
    """Module, class and function docstrings of a source file, in file order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [
        tree,
        *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))),
    ]
    nodes.sort(key=lambda n: getattr(n, "lineno", 0))
    out = []
    for n in nodes:
        d = ast.get_docstring(n, clean=False)
        if d:
            out.append(inspect.cleandoc(d))
    return out


def module_runs(source: str) -> list[list[tuple[str, str]]]:
    """Runs of consecutive usable sentences, each as (sentence, dedup key)."""
    runs = []
    for doc in docstrings(source):
        for para in prose_paragraphs(doc):
            run = []
            for s in split_sentences(clean_markup(para)):
                if usable(s):
                    run.append((s, dedup_key(s)))
                elif run:
                    runs.append(run)
                    run = []
            if run:
                runs.append(run)
    return runs


def split_of(package: str, module: str) -> str:
    """The split of a document: a fixed hash of (package, module path) against `SPLIT_EDGES`."""
    u = int(hashlib.sha256(f"{package}:{module}".encode()).hexdigest()[:12], 16) / 16**12
    return SPLITS[0] if u < SPLIT_EDGES[0] else SPLITS[1] if u < SPLIT_EDGES[1] else SPLITS[2]


def package_info(dist: str, folder: str, spdx: str, phrase: str) -> tuple[Path, str, str]:
    """(package folder, version, licence file name) after checking the licence file holds `phrase`."""
    meta = md.distribution(dist)
    licences = [f for f in meta.files or [] if re.search(r"(LICEN[CS]E|COPYING)[^/]*$", str(f)) and "/" in str(f)]
    own = [f for f in licences if str(f).count("/") <= 2 and ".dist-info" in str(f)]
    texts = [(f, Path(meta.locate_file(f)).read_text(errors="replace")) for f in own]
    if not any(phrase in t for _, t in texts):
        raise SystemExit(f"{dist}: no licence file with {phrase!r} ({[str(f) for f in own]}); expected {spdx}")
    name = next(str(f).rsplit("/", 1)[-1] for f, t in texts if phrase in t)
    return Path(meta.locate_file(folder)), meta.version, name


def collect(packages=PACKAGES) -> list[dict]:
    """Every document of every package with its runs (before cross-document de-duplication)."""
    docs = []
    for dist, folder, spdx, phrase in packages:
        root, version, licence_file = package_info(dist, folder, spdx, phrase)
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root.parent).as_posix()
            if SKIP_DIRS & set(rel.split("/")[:-1]) or path.name.startswith("test_") or path.name == "conftest.py":
                continue
            runs = module_runs(path.read_text(errors="replace"))
            if runs:
                docs.append({"package": dist, "version": version, "license": spdx, "license_file": licence_file,
                             "module": rel, "split": split_of(dist, rel), "runs": runs})  # fmt: skip
    return docs


def deduplicate(docs: list[dict]) -> list[dict]:
    """Drop every sentence whose key occurs in two or more documents, and repeats inside a document (a drop ends
    the run); documents left without sentences are dropped."""
    where = defaultdict(set)
    for i, d in enumerate(docs):
        for run in d["runs"]:
            for _, key in run:
                where[key].add(i)
    out = []
    for d in docs:
        seen, runs = set(), []
        for run in d["runs"]:
            cur = []
            for s, key in run:
                if len(where[key]) > 1 or key in seen:
                    if cur:
                        runs.append(cur)
                    cur = []
                    continue
                seen.add(key)
                cur.append(s)
            if cur:
                runs.append(cur)
        if runs:
            out.append({**{k: v for k, v in d.items() if k != "runs"}, "runs": runs})
    return out


def counts(docs: list[dict]) -> dict:
    """Per split: documents, runs, sentences, non-overlapping consecutive pairs, words; per package: documents."""
    out = {s: Counter() for s in SPLITS}
    for d in docs:
        c = out[d["split"]]
        c["documents"] += 1
        c["runs"] += len(d["runs"])
        c["sentences"] += sum(len(r) for r in d["runs"])
        c["pairs"] += sum(len(r) // 2 for r in d["runs"])
        c["words"] += sum(len(s.split()) for r in d["runs"] for s in r)
    return {s: dict(c) for s, c in out.items()}


def write(docs: list[dict], path: Path = CORPUS) -> None:
    """JSON lines, one document a line, sorted by (package, module); gzip without a timestamp (same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        for d in sorted(docs, key=lambda d: (d["package"], d["module"])):
            gz.write((json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n").encode())


def provenance(docs: list[dict], sizes: dict) -> str:
    """The text of PROVENANCE.md (sources, versions, licences, rules, counts)."""
    sha = hashlib.sha256(CORPUS.read_bytes()).hexdigest()
    per = defaultdict(Counter)
    for d in docs:
        per[(d["package"], d["version"], d["license"], d["license_file"])][d["split"]] += 1
    rows = [f"| {p} | {v} | {lic} (`{f}`) | " + " | ".join(str(c[s]) for s in SPLITS) + " |"
            for (p, v, lic, f), c in sorted(per.items())]  # fmt: skip
    table = "\n".join(f"| {s} | " + " | ".join(str(sizes[s].get(k, 0)) for k in
                      ("documents", "runs", "sentences", "pairs", "words")) + " |" for s in SPLITS)  # fmt: skip
    rules = "Prose rules " + __doc__.split("Prose rules ", 1)[1].split("  python", 1)[0].strip()
    return f"""# Natural-text corpus: provenance

`docstrings.jsonl.gz` holds English prose sentences from the docstrings of permissively licensed third-party
Python packages, as installed in the project's venv when it was built. Nobody on this project wrote them; Python's
standard library and the project's own code are not sources. Built by `python benchmarks/build_corpus.py`
(deterministic: the same installed versions give the same bytes).

sha256 of this build: `{sha}` (the corpus version the benchmark rows record).

One JSON line per *document* (one source module file): `package`, `version`, `license`, `license_file`, `module`
(path inside site-packages), `split`, `runs` (lists of consecutive sentences of one paragraph).

## Sources

Each package's licence file (`license_file`, in its `.dist-info`) was checked to hold the licence's text; vendored
third-party and test folders ({", ".join(sorted(SKIP_DIRS))}) and test files are skipped.

| package | version | licence | calibration docs | selection docs | evaluation docs |
|---|---|---|---|---|---|
{chr(10).join(rows)}

## Extraction

{rules}

## Splits

By document: u = first 48 bits of sha256("<package>:<module path>") / 2⁴⁸; calibration u < {SPLIT_EDGES[0]},
selection u < {SPLIT_EDGES[1]}, evaluation otherwise. A sentence whose de-duplication key (lowercase words without
names, numbers and identifiers) occurs in two or more documents is dropped from all of them, so no sentence (nor
a near copy differing in names) is in two splits. `tests/test_evidence_harness.py` checks both.

| split | documents | runs | sentences | pairs (non-overlapping, consecutive) | words |
|---|---|---|---|---|---|
{table}

Use: calibration samples are runs (a paragraph's consecutive sentences joined), drawn without overlap;
retrieval pairs are (sentence 2i, sentence 2i+1) of a run; the selection split is for choosing defaults, the
evaluation split for reported numbers (`benchmarks/evidence.py`).
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(CORPUS))
    args = p.parse_args()
    docs = deduplicate(collect())
    out = Path(args.out)
    write(docs, out)
    sizes = counts(docs)
    (out.parent / "splits.json").write_text(json.dumps(sizes, indent=1, sort_keys=True) + "\n")
    if out == CORPUS:
        (OUT_DIR / "PROVENANCE.md").write_text(provenance(docs, sizes))
    print(json.dumps(sizes, indent=1), f"{os.path.getsize(out) / 2**20:.2f} MiB", sep="\n")


if __name__ == "__main__":
    main()
