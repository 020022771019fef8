"""Documentation that runs: every ```python and ```bash block of README.md and docs/*.md is executed.

Python blocks of one page run in order in one namespace (like a notebook), in a temporary working directory,
with tiny stand-ins for the names a reader brings (`model`, `x`, `dense`, `train`, `val`, `dataset`, ...) and
placeholder strings replaced by a tiny saved model (`PLACEHOLDERS`). Bash blocks: `hf-mpprune ...` lines run
in-process through the CLI's `main`. What cannot run here is marked in the page itself and skipped with the reason
printed by pytest:

* a whole block: an HTML comment `<!-- docs-test: skip REASON -->` on the line before the fence;
* one line: a trailing comment `# docs-test: skip REASON` (GPU-only, Hub-only lines).

```text blocks are not code (formulas, diagrams, sample output).
"""

import ast
import contextlib
import copy
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import Dataset

from hf_mpprune.builtins.sources import make_sentences
from hf_mpprune.cli.main import main as cli_main

from .data_helpers import digits_imagefolder, tiny_bert_dir, tiny_llama_dir, tiny_vit_dir
from .tiny_models import tiny_bert, tiny_vit, vit_inputs


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(
    os.path.join("docs", f) for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md")
)
SHELLS = ("bash", "sh", "console", "shell")
FENCE = re.compile(r"^```(\w*)\s*$")
SKIP_BLOCK = re.compile(r"<!--\s*docs-test:\s*skip\s+(.+?)\s*-->")
SKIP_LINE = re.compile(r"#\s*docs-test:\s*skip\s+(.+)$")
SHELL_SKIP = {  # commands that are not ours to run inside a test, with the reason
    "make": "make targets are run by CI itself (make test) or by the wheel test (demo)",
    "pip": "installs packages; the test environment is already installed",
    "accelerate": "multi-process launch; covered by the DDP test",
    "torchrun": "multi-process launch; covered by the DDP test",
    "git": "repository operations",
    "python": "runs a user script that the page only names",
}


@dataclass
class Block:
    page: str
    line: int
    lang: str
    code: str
    skip: str | None


def blocks(page: str) -> list[Block]:
    out, lines = [], open(os.path.join(ROOT, page), encoding="utf-8").read().split("\n")
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        skip = SKIP_BLOCK.search(prev)
        out.append(Block(page, start + 1, lang, "\n".join(lines[start + 1 : j]), skip.group(1) if skip else None))
        i = j + 1
    return out


def runnable(code: str, lang: str = "python") -> tuple[str, list[str]]:
    """Drop the statements marked `# docs-test: skip REASON` on any of their lines; return the code and reasons."""
    lines = code.split("\n")
    marked = {i + 1: m.group(1) for i, line in enumerate(lines) if (m := SKIP_LINE.search(line))}
    if not marked:
        return code, []
    drop: set[int] = set()
    if lang == "python":
        for node in ast.parse(code).body:  # a marked line removes the whole top-level statement it belongs to
            span = set(range(node.lineno, node.end_lineno + 1))
            if span & set(marked):
                drop |= span
    drop |= set(marked)
    return "\n".join(line for i, line in enumerate(lines, 1) if i not in drop), list(marked.values())


class TinyImages(Dataset):
    """A labelled image dataset of the tiny ViT's shape: dicts of `pixel_values` and `labels`."""

    def __init__(self, n: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 32, 32, generator=g)
        self.y = torch.randint(0, 10, (n,), generator=g)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


# Files a page names as the reader's own, created in the page's working directory (symlinks to one shared copy).
READER_FILES = ("my-vit", "my-bert", "my-llama", "photos", "reviews.jsonl")


@pytest.fixture(scope="module")
def standins(tmp_path_factory, minilm_path):
    base = tmp_path_factory.mktemp("docs-standins")
    vit = tiny_vit()
    vit.save_pretrained(base / "tiny-vit")
    bert = tiny_bert()
    bert.save_pretrained(base / "tiny-bert")
    tiny_vit_dir(str(base / "my-vit"))  # a ViT saved with its ViTImageProcessor (32×32 RGB)
    tiny_bert_dir(str(base / "my-bert"), tokenizer_from=minilm_path)
    tiny_llama_dir(str(base / "my-llama"))  # a causal LM saved with its tokenizer (docs/llm.md)
    digits_imagefolder(str(base / "photos"), n_train=60, n_val=20)  # train/ and validation/ PNG folders
    with open(base / "reviews.jsonl", "w", encoding="utf-8") as f:
        for i, text in enumerate(make_sentences(64, seed=3)):
            f.write(json.dumps({"id": i, "body": text}) + "\n")
    return {"vit_dir": str(base / "tiny-vit"), "bert_dir": str(base / "tiny-bert"), "base": str(base)}


def namespace(standins) -> dict:
    model = tiny_vit()
    train, val = TinyImages(48, 0), TinyImages(24, 1)

    def accuracy(m) -> dict[str, float]:
        with torch.no_grad():
            pred = m(pixel_values=val.x).logits.argmax(-1)
        return {"accuracy": float((pred == val.y).float().mean())}

    return {
        "model": model, "dense": copy.deepcopy(model), "teacher": copy.deepcopy(model),
        "x": vit_inputs(batch=4)["pixel_values"], "train": train, "val": val, "dataset": train,
        "train_dataset": train, "eval_dataset": val, "eval_fn": accuracy, "selection_fn": accuracy,
        "torch": torch,
    }  # fmt: skip


def placeholders(standins) -> list[tuple[str, str]]:
    vit = standins["vit_dir"]
    return [
        ("path/or/hub-id", vit),
        ("google/vit-base-patch16-224", vit),
        ("MODEL_OR_DIR", vit),
        ("MODEL", vit),
    ]


def fill(code: str, standins) -> str:
    for old, new in placeholders(standins):
        code = code.replace(old, new)
    return code


@contextlib.contextmanager
def chdir(path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_shell_line(line: str) -> None:
    argv = shlex.split(line)
    if not argv:
        return
    if argv[0] == "hf-mpprune":
        rc = cli_main(argv[1:])
        assert rc == 0, f"{line!r} exited {rc}"
        return
    if argv[0] in SHELL_SKIP or argv[0].startswith(("./", ".venv/", "HF_")):
        return
    rc = subprocess.run(argv, check=False).returncode  # plain tools (mkdir, ls, ...)
    assert rc == 0, f"{line!r} exited {rc}"


OPTIONAL_ARGS = re.compile(r"\s\[--[^\]]*\]")  # `[--flag VALUE]`: optional in the usage sense, left out


def shell_lines(code: str) -> tuple[list[str], list[str]]:
    """Commands (continuation lines joined, comments and optional `[--...]` groups removed) and the skip reasons
    of commands marked `# docs-test: skip REASON` on any of their lines."""
    out, reasons, cur, skip = [], [], "", None
    for raw in code.split("\n"):
        m = SKIP_LINE.search(raw)
        skip = skip or (m.group(1) if m else None)
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cur += line
        if cur.strip():
            if skip:
                reasons.append(skip)
            else:
                out.append(OPTIONAL_ARGS.sub("", cur).strip())
        cur, skip = "", None
    return out, reasons


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page, standins, tmp_path, capsys):
    ns, skipped, ran = namespace(standins), [], 0
    sys.modules.setdefault("__docs__", type(sys)("__docs__"))
    for name in READER_FILES:
        os.symlink(os.path.join(standins["base"], name), tmp_path / name)
    with chdir(tmp_path):
        for b in blocks(page):
            where = f"{page}:{b.line}"
            if b.skip:
                skipped.append(f"{where} ({b.skip})")
                continue
            if b.lang in SHELLS:
                lines, reasons = shell_lines(fill(b.code, standins))
                skipped += [f"{where} command ({r})" for r in reasons]
                for line in lines:
                    run_shell_line(line.removeprefix("$ "))
                ran += 1
                continue
            code, reasons = runnable(fill(b.code, standins), b.lang)
            skipped += [f"{where} line ({r})" for r in reasons]
            if b.lang == "python":
                try:
                    exec(compile(code, where, "exec"), ns)
                except Exception as e:
                    raise AssertionError(f"{where}: the python block fails as written: {type(e).__name__}: {e}") from e
                ran += 1
    if skipped:
        with capsys.disabled():
            print(f"\n{page}: {ran} blocks ran; skipped: " + "; ".join(skipped))
    runnable_blocks = [b for b in blocks(page) if b.lang in ("python", *SHELLS) and not b.skip]
    assert ran == len(runnable_blocks), f"{page}: {ran} of {len(runnable_blocks)} code blocks ran"


def test_every_public_name_in_the_readme_imports():
    import hf_mpprune

    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    names = set()
    for m in re.finditer(r"from hf_mpprune(\.[\w.]+)? import (\([^)]*\)|[^\n]+)", text):
        mod = "hf_mpprune" + (m.group(1) or "")
        listed = m.group(2).strip("()").split("#")[0].replace("\n", ",")
        names |= {(mod, n.split(" as ")[0].strip()) for n in listed.split(",") if n.strip()}
    assert names
    for mod, name in sorted(names):
        module = __import__(mod, fromlist=[name])
        assert hasattr(module, name), f"README imports {name} from {mod}, which does not exist"
    assert all(hasattr(hf_mpprune, n) for n in hf_mpprune.__all__)


def test_citations_of_docs_algorithms_resolve_to_a_section():
    """Code comments cite `docs/algorithms.md §x.y`; every cited section exists (the repository stands alone)."""
    headings = set()
    for line in open(os.path.join(ROOT, "docs", "algorithms.md"), encoding="utf-8"):
        m = re.match(r"^#{2,4}\s+(?:§\s*)?(\d+(?:\.\d+)*)", line)
        if m:
            headings.add(m.group(1))
    cited = set()
    for top in ("hf_mpprune", "docs", "README.md"):
        paths = [os.path.join(ROOT, top)] if top.endswith(".md") else [
            os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(ROOT, top)) for f in fs
            if f.endswith((".py", ".md", ".yaml"))
        ]  # fmt: skip
        for p in paths:
            text = open(p, encoding="utf-8").read()
            assert "shared/design" not in text and "ALGORITHMS.md" not in text, f"{p} points outside the repository"
            cited |= {m.rstrip(".") for m in re.findall(r"docs/algorithms\.md §(\d+(?:\.\d+)*)", text)}
    assert cited and cited <= headings, sorted(cited - headings)
