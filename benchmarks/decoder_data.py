"""Natural text for the decoder benchmarks (issue 23), built offline: the docstrings of a permissively licensed
third-party package (default scikit-learn, BSD-3-Clause), one document per module file, split BY DOCUMENT into
train / calibration / selection / evaluation with a hash of the module path (no document is in two splits).

Not Python's standard library and not the package's template sentences: text written by the package's authors.
Vendored code (`externals`, `_vendor`) and test folders are skipped. The corpus is a `datasets.DatasetDict`
(`text`, `source` columns) saved with `save_to_disk`; `load_corpus` also reads a folder of `<split>.jsonl` files
(the layout the evidence corpus under `benchmarks/corpus/` may use).

  python benchmarks/decoder_data.py --package sklearn --out ~/.cache/hf_mpprune/decoder/corpus-sklearn
"""

import argparse
import ast
import glob
import hashlib
import importlib.metadata
import importlib.util
import json
import os

import datasets


# share of documents per split, by the hash of the module path (fixed before any result was seen)
SPLITS = (("train", 0.70), ("calibration", 0.80), ("selection", 0.88), ("evaluation", 1.0))
SKIP_DIRS = {"tests", "test", "externals", "_vendor", "vendored", "_build_utils"}


def module_text(path: str) -> str:
    """The docstrings of one module file (module, classes, functions, in source order), blank-line separated."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    docs = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and doc.strip():
                docs.append((getattr(node, "lineno", 0), doc.strip()))
    return "\n\n".join(d for _, d in sorted(docs, key=lambda t: t[0]))


def split_of(rel: str) -> str:
    u = int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) / 2**32
    return next(name for name, hi in SPLITS if u < hi)


def build_corpus(package: str, out: str) -> datasets.DatasetDict:
    """Extract, split and save; returns the DatasetDict. Provenance goes to `out/provenance.json`."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package {package!r} is not installed")
    root = os.path.dirname(spec.origin)
    rows: dict[str, list[dict]] = {name: [] for name, _ in SPLITS}
    for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, root)
        if SKIP_DIRS & set(rel.split(os.sep)[:-1]):
            continue
        try:
            text = module_text(path)
        except (SyntaxError, UnicodeDecodeError):
            continue
        if len(text) >= 200:
            rows[split_of(rel)].append({"text": text, "source": f"{package}/{rel}"})
    dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v) for k, v in rows.items()})
    dd.save_to_disk(out)
    dist = importlib.metadata.distribution(_dist_name(package))
    prov = {
        "package": package, "distribution": dist.metadata["Name"], "version": dist.version,
        "license": dist.metadata.get("License-Expression") or dist.metadata.get("License"),
        "document": "one module file (its docstrings)", "split_rule": "sha256(module path)[:8] / 2**32 vs "
        + ", ".join(f"{n} < {hi}" for n, hi in SPLITS),
        "documents": {k: len(v) for k, v in rows.items()},
        "characters": {k: sum(len(r["text"]) for r in v) for k, v in rows.items()},
    }  # fmt: skip
    with open(os.path.join(out, "provenance.json"), "w", encoding="utf-8") as f:
        json.dump(prov, f, indent=2)
    return dd


def _dist_name(package: str) -> str:
    names = importlib.metadata.packages_distributions().get(package) or [package]
    return names[0]


def load_corpus(path: str) -> datasets.DatasetDict:
    """A corpus folder: `save_to_disk` output, or `<split>.jsonl` / `<split>.json` files with a `text` column."""
    path = os.path.expanduser(path)
    if os.path.exists(os.path.join(path, "dataset_dict.json")):
        return datasets.load_from_disk(path)
    files = {os.path.splitext(os.path.basename(f))[0]: f for f in sorted(glob.glob(os.path.join(path, "*.json*")))}
    files = {k: v for k, v in files.items() if k not in ("provenance", "manifest")}
    if not files:
        raise SystemExit(f"{path}: no save_to_disk corpus and no <split>.jsonl files")
    return datasets.load_dataset("json", data_files=files)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--package", default="sklearn")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dd = build_corpus(args.package, os.path.expanduser(args.out))
    print(json.dumps({k: len(v) for k, v in dd.items()}))


if __name__ == "__main__":
    main()
