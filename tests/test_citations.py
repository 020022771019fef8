"""No reference to a file that is not in the repository: every path-like citation in code, comments, docstrings,
docs, benchmarks and tests names a file that exists; every cited section of a doc (a path followed by `§3` or by
`, "Title"`) is a heading of that doc; nothing points at the maintainers' design notes, which a clone
does not have."""

import os
import re


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ("hf_mpprune", "docs", "benchmarks", "tests", "README.md", "Makefile", "pyproject.toml")
TEXT = (".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".jinja", "Makefile")
SKIP_DIRS = {"__pycache__", "out", "results"}  # generated outputs (benchmarks/out is gitignored), data files
GENERATED = ("benchmarks/out/",)  # written by the commands that cite them
READER_CREATES = {"hf_mpprune/methods/docs_random.py"}  # docs/adding-a-method.md: the file the reader writes
PATH = re.compile(
    r"(?<![\w/.-])((?:docs|tests|benchmarks|hf_mpprune)/[\w./-]*\w\.(?:md|py|yaml|yml|sh|json|txt|toml)(?:\.gz)?)(?!\w)"
)
SECTION = re.compile(r"(docs/[\w-]+\.md)(?:,? (?:\"([^\"]+)\"|'([^']+)')| §\s*(\d+(?:\.\d+)*))")
DESIGN_NOTES = re.compile("|".join(["CONVENTIONS" + r"(\.md)?\b", "ALGORITHMS" + r"\.md", "ARCHITECTURE" + r"\.md",
                                    "shared" + "/design"]))  # fmt: skip
CHECKERS = {"tests/test_docs.py", "tests/test_citations.py"}  # they spell the forbidden names to look for them


def _files() -> list[str]:
    out = []
    for top in SCANNED:
        path = os.path.join(ROOT, top)
        if os.path.isfile(path):
            out.append(top)
            continue
        for dirpath, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if d not in SKIP_DIRS]
            out += [os.path.relpath(os.path.join(dirpath, f), ROOT) for f in files if f.endswith(TEXT)]
    return sorted(out)


FILES = _files()


def _read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def _headings(doc: str) -> list[str]:
    return [re.sub(r"[`*]", "", m.group(1)).strip() for m in re.finditer(r"^#{1,6}\s+(.+)$", _read(doc), re.M)]


def test_the_scan_sees_the_code_docs_and_tests():
    assert {"README.md", "docs/deploy.md", "hf_mpprune/pruner.py", "benchmarks/RESULTS.md", "Makefile"} <= set(FILES)


def test_every_cited_path_exists():
    missing = []
    for rel in FILES:
        for m in PATH.finditer(_read(rel)):
            cited = m.group(1).rstrip(".")
            if cited.startswith(GENERATED) or cited in READER_CREATES:
                continue
            if not os.path.exists(os.path.join(ROOT, cited)):
                missing.append(f"{rel}: {cited}")
    assert not missing, missing


def test_every_cited_section_is_a_heading():
    bad = []
    for rel in FILES:
        for m in SECTION.finditer(_read(rel)):
            doc, title, number = m.group(1), re.sub(r"[`*]", "", m.group(2) or m.group(3) or ""), m.group(4)
            if not os.path.exists(os.path.join(ROOT, doc)):
                bad.append(f"{rel}: {doc} does not exist")
                continue
            heads = _headings(doc)
            if number is not None:
                ok = any(re.match(rf"(?:§\s*)?{re.escape(number)}(?![\d])", h) for h in heads)
            else:
                ok = any(h == title or h.startswith(title) or title in h for h in heads)
            if not ok:
                bad.append(f"{rel}: {m.group(0)!r} is not a heading of {doc}")
    assert not bad, bad


def test_nothing_points_at_the_design_notes():
    hits = [f"{rel}: {m.group(0)}" for rel in FILES if rel not in CHECKERS for m in DESIGN_NOTES.finditer(_read(rel))]
    assert not hits, f"a clone has no such file; cite docs/... in your own words: {hits}"


TEST_NAME = re.compile(r"(?:(?:tests/)?(test_\w+\.py))?::(test_\w+)")


def test_every_cited_test_exists():
    """`test_x.py::test_name` (and a following `::test_other`, which repeats the file before it) names a test
    function defined in that file under tests/: the README's "works with" table and RESULTS cite tests by name."""
    missing = []
    for rel in FILES:
        if rel in CHECKERS:
            continue
        for line in _read(rel).splitlines():
            current = None
            for m in TEST_NAME.finditer(line):
                current = m.group(1) or current
                path = os.path.join(ROOT, "tests", current or "")
                if current is None or not os.path.isfile(path):
                    missing.append(f"{rel}: {m.group(0)} (no file)")
                elif not re.search(rf"^def {m.group(2)}\(", _read(os.path.relpath(path, ROOT)), re.M):
                    missing.append(f"{rel}: {current}::{m.group(2)}")
    assert not missing, missing
