"""`hf-mpprune run RECIPE` (analyze → prune → distill → audit → save → push) and `hf-mpprune push DIR`.

Offline builtins (`demo.py`): `builtin:digits-vit` (trained once, cached under `cache_dir`), data `builtin:digits`
(fixed disjoint train / selection / evaluation splits; calibration is drawn from train), `builtin:minilm` with
`builtin:minilm-text` (seeded synthetic token batches). Distillation runs on the builtin digits task with the
masked KD loop of `demo.train` (KD α/T, masks frozen); for other models it is skipped with a logged note until the
KD Trainer (`hf_mpprune.trainer`) gets a dataset hook in recipes. Hub models and datasets load through the normal
caches, so they need network access (or a warm cache).
"""

import copy
import logging
import os
import sys
import time
from typing import Any

import torch

from .errors import ConfigError
from .recipes import Recipe, load_recipe


logger = logging.getLogger(__name__)


# ---- pipeline pieces ------------------------------------------------------------------------------------------------
def _load(recipe: Recipe, cache_dir: str):
    from . import demo
    from .pruner import MPPruner

    mid, cfg = recipe.model.id, recipe.pruning[0].build()
    if mid == "builtin:digits-vit":
        pruner = MPPruner(demo.digits_vit(cache_dir, epochs=recipe.model.train_epochs or 25, seed=recipe.seed), cfg)
    elif mid == "builtin:minilm":
        pruner = MPPruner(demo.minilm(), cfg)
    elif mid.startswith("builtin:"):
        raise ConfigError(f"unknown builtin model {mid!r}; builtins: builtin:digits-vit, builtin:minilm")
    else:
        kw = {"revision": recipe.model.revision} if recipe.model.revision else {}
        if recipe.model.dtype:
            kw["dtype"] = getattr(torch, recipe.model.dtype)
        pruner = MPPruner.from_pretrained(mid, cfg, **kw)
    pruner.ledger.identity["base_model"] = mid
    return pruner


def _data(recipe: Recipe, pruner) -> dict[str, Any] | None:
    """Builtin digits data (for digits models) and the split records; None for models without a builtin task."""
    from . import demo

    if recipe.model.id != "builtin:digits-vit":
        return None
    data = demo.digits_data()
    pruner.ledger.record_split("evaluation", data["evaluation"].tolist(), dataset=demo.DIGITS)
    return data


def _calibration(recipe: Recipe, pruner, data: dict | None) -> list[dict[str, torch.Tensor]] | None:
    from . import demo

    spec = recipe.calibration
    if spec is None:
        return None
    n = spec.size or 64
    if spec.dataset == "builtin:digits":
        if data is None:
            raise ConfigError("calibration dataset builtin:digits goes with model builtin:digits-vit")
        g = torch.Generator().manual_seed(spec.seed)
        idx = data["train"][torch.randperm(len(data["train"]), generator=g)[:n]]
        pruner.ledger.record_split("calibration", idx.tolist(), dataset=demo.DIGITS)
        return [{"pixel_values": data["x"][idx[i : i + spec.batch_size]]} for i in range(0, n, spec.batch_size)]
    if spec.dataset == "builtin:minilm-text":
        pruner.ledger.record_split("calibration", range(n), dataset=f"synthetic:minilm-tokens:seed{spec.seed}")
        return demo.minilm_batches(n, spec.seed, spec.batch_size)
    raise ConfigError(
        f"calibration dataset {spec.dataset!r} cannot be prepared by the recipe runner (it needs a model-specific "
        "image/text pipeline); builtins: builtin:digits, builtin:minilm-text. Prune from Python with "
        "`MPPruner.prune(calibration=...)` for Hub datasets"
    )


def _train_step(recipe: Recipe, pruner, data: dict | None):
    """For methods that train between steps, on the builtin digits task; follows the `TrainStep` protocol of the
    cyclic pipeline: `(model, masks, *, phase, trainable, epochs, lr, optimizer, **kw) -> dict`."""
    from . import demo

    if data is None:
        return None

    def train_step(model, masks, *, phase="finetune", trainable=None, epochs=1.0, lr=5e-4, optimizer="adamw", **kw):
        keep = {k: kw[k] for k in ("batch_size", "min_steps", "data_fraction") if k in kw}
        secs = demo.train(
            model or pruner.model, data, epochs=epochs, lr=lr, optimizer=optimizer, seed=recipe.seed,
            masks=masks, trainable=trainable if phase == "ser_phase_a" else None, **keep,
        )  # fmt: skip
        return {"phase": phase, "seconds": round(secs, 3)}

    return train_step


def _prune(recipe: Recipe, pruner, calibration, data) -> None:
    from .registry import get_method

    for step in recipe.pruning:
        cfg = step.build().resolve()
        pruner.config = cfg
        spec = get_method(cfg.method)
        train_step = _train_step(recipe, pruner, data) if spec.needs_training else None
        for s in step.targets():
            t0 = time.perf_counter()
            pruner.prune(calibration, train_step=train_step, sparsity=None if cfg.pattern is not None else s)
            pruner.ledger.add_timing("prune", time.perf_counter() - t0)


def _distill(recipe: Recipe, pruner, teacher, data) -> None:
    from . import demo

    d = dict(recipe.distill or {})
    if data is None:
        logger.warning(
            "distill: skipped for %s (only the builtin digits task has a distillation set)", recipe.model.id
        )
        return
    kw = {
        "epochs": int(d.pop("num_train_epochs", 2)), "lr": float(d.pop("learning_rate", 5e-4)),
        "kd_alpha": float(d.pop("kd_alpha", 0.5)), "kd_temperature": float(d.pop("kd_temperature", 2.0)),
        "batch_size": int(d.pop("per_device_train_batch_size", 64)), "seed": int(d.pop("seed", recipe.seed)),
    }  # fmt: skip
    if d:
        logger.info(
            "distill: keys %s are used by MPDistillationTrainer only; ignored by the builtin KD loop", sorted(d)
        )
    secs = demo.train(pruner.model, data, teacher=teacher, masks=pruner.masks, **kw)
    pruner.ledger.add_step(kind="distill", trainer="builtin-kd-loop", mask_sha256=pruner.masks.sha256(), **kw)
    pruner.ledger.add_timing("distill", secs)


def _evaluate(recipe: Recipe, pruner, data, stage: str) -> float | None:
    from . import demo

    if data is None:
        return None
    acc = demo.accuracy(pruner.model, data)
    pruner.ledger.add_metric("accuracy", acc, dataset=demo.DIGITS, split="evaluation", stage=stage)
    return acc


def _audit(recipe: Recipe, pruner, teacher, data) -> float | None:
    """Legality (k:n) + exact MAC report, and on the digits task the exact head certificate (L_s = 1) when the
    classifier was pruned. Everything goes to `ledger.audits`; returns sparse/dense MACs (None without data)."""
    from .audit import legality_audit

    if recipe.audit is None or pruner.masks is None:
        return None
    pattern = pruner.masks.pattern
    record: dict[str, Any] = {"kind": "legality", "pattern": str(pattern) if pattern else "unstructured"}
    if pattern is not None:
        rep = legality_audit(pruner.model, pattern, layers=pruner.layers.names)
        record.update(bad_groups=rep.totals()["bad_groups"], bad_layers=[r.name for r in rep.rows if r.bad_groups])
    zeros = sum(int((la.weight == 0).sum()) for la in pruner.layers)
    record.update(sparsity=pruner.masks.sparsity(), exact_zeros=zeros, pruned=pruner.masks.num_pruned)
    pruner.ledger.audits.append(record)
    if data is None:
        return None
    from .macs import mac_report

    x = data["x"][data["evaluation"]]
    macs = mac_report(pruner.model, {"pixel_values": x[:1]}, masks=pruner.masks, pattern=pattern)
    pruner.ledger.audits.append({"kind": "macs", "dense_macs": macs.dense_macs, "sparse_macs": macs.sparse_macs})
    head = [la.name for la in pruner.layers if la.role == "head"]
    if teacher is not None and head and (pruner.masks[head[0]] == 0).any():
        from .certificates import budget_audit

        cert = budget_audit(teacher, pruner.model, head, {"pixel_values": x}, lipschitz="head")
        pruner.ledger.audits.append({"kind": "certificate", **cert.to_ledger()})
    return macs.sparse_macs / macs.dense_macs


# ---- the recipe runner ----------------------------------------------------------------------------------------------
def run_recipe(
    recipe: Recipe, *, output_dir: str | None = None, push: bool = False, cache_dir: str | None = None
) -> dict[str, Any]:
    """Run a recipe end to end; returns a summary (output dir, sparsity, accuracy before/after, timings).

    Errors in the recipe (a method that is not installed, a push without `push.repo_id`) are raised before any
    model is loaded or file written."""
    from transformers import set_seed

    out = output_dir or recipe.output.dir or recipe.name
    if not out:
        raise ConfigError("no output directory: set output.dir in the recipe or pass --output DIR")
    if push and not recipe.push.repo_id:
        raise ConfigError("--push-to-hub needs push.repo_id in the recipe (e.g. push: {repo_id: org/name})")
    for step in recipe.pruning:
        step.build()  # every method must be installed before we start
    set_seed(recipe.seed)
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "hf_mpprune")
    t0 = time.perf_counter()
    pruner = _load(recipe, cache_dir)
    pruner.ledger.seeds["recipe"] = recipe.seed
    pruner.ledger.add_timing("load", time.perf_counter() - t0)
    teacher = copy.deepcopy(pruner.model).eval() if recipe.distill else None
    data = _data(recipe, pruner)
    base_acc = _evaluate(recipe, pruner, data, "base")
    calibration = _calibration(recipe, pruner, data)
    t1 = time.perf_counter()
    pruner.analyze(progress=False)
    pruner.ledger.add_timing("analyze", time.perf_counter() - t1)
    _prune(recipe, pruner, calibration, data)
    acc = _evaluate(recipe, pruner, data, "pruned")
    if recipe.distill:
        _distill(recipe, pruner, teacher, data)
        acc = _evaluate(recipe, pruner, data, "distilled") if data is not None else acc
    macs_ratio = _audit(recipe, pruner, teacher, data)
    pruner.recipe = recipe.raw
    t2 = time.perf_counter()
    path = pruner.save_pretrained(out)
    if recipe.output.plots and pruner.spectra is not None:
        pruner.spectra.plot(os.path.join(path, "spectra_plots"), layers=False)
    pruner.ledger.add_timing("save", time.perf_counter() - t2)
    result = {"output_dir": path, "sparsity": pruner.masks.sparsity(), "base_accuracy": base_acc, "accuracy": acc}
    result["macs_ratio"] = macs_ratio
    if push:
        p = recipe.push
        info = pruner.push_to_hub(
            p.repo_id, private=p.private, revision=p.revision, create_pr=p.create_pr, commit_message=p.commit_message
        )
        result["commit_url"] = getattr(info, "commit_url", None)
    result["timings"] = dict(pruner.ledger.timings)
    return result


# ---- CLI ------------------------------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser("run", help="run a recipe: analyze → prune → distill → audit → save (→ push)")
    p.add_argument("recipe", help="recipe YAML file (see recipes/)")
    p.add_argument("--output", default=None, help="checkpoint directory (default: output.dir of the recipe)")
    p.add_argument("--push-to-hub", action="store_true", help="push to push.repo_id after saving")
    p.add_argument("--cache-dir", default=None, help="cache of builtin models (default ~/.cache/hf_mpprune)")
    p.set_defaults(func=_run)
    q = sub.add_parser("push", help="push a saved checkpoint directory to the Hub in one commit")
    q.add_argument("dir", help="checkpoint directory written by save_pretrained / hf-mpprune run")
    q.add_argument("--repo-id", required=True, help="org/name on the Hub (token from HF_TOKEN or `hf auth login`)")
    q.add_argument("--private", action="store_true", default=None)
    q.add_argument("--revision", default=None)
    q.add_argument("--create-pr", action="store_true")
    q.add_argument("--commit-message", default=None)
    q.set_defaults(func=_push)


def _run(args) -> int:
    result = run_recipe(
        load_recipe(args.recipe), output_dir=args.output, push=args.push_to_hub, cache_dir=args.cache_dir
    )
    import json

    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def _push(args) -> int:
    from .pruner import MPPruner

    pruner = MPPruner.from_pretrained(args.dir)  # verifies masks and ledger before anything is uploaded
    info = pruner.push_to_hub(
        args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
        commit_message=args.commit_message,
    )  # fmt: skip
    sys.stdout.write(f"{getattr(info, 'commit_url', info)}\n")
    return 0
