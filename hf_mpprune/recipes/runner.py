"""`hf-mpprune run RECIPE [--set key=value ...]` (analyze → prune → fine-tune / distill → evaluate → audit → save →
push) and `hf-mpprune push DIR`.

The model is a Hub id, a local folder or a registered builtin (`builtin:digits-vit`, `builtin:minilm`), loaded with
the class named in its config; its processor (image processor or tokenizer) comes from the same place unless
`model.processor` names another. Every data section is an `hf_mpprune.data.DatasetSpec` handled by one path
(`recipes.inputs`): Hub datasets, local folders and files, and the builtins alike. All data is loaded, carved,
checked for overlap and probed through the model before any work is done or file written.
"""

import copy
import json
import logging
import os
import sys
import time
from typing import Any

import torch
from torch import nn
from transformers import set_seed

from .. import builtins  # noqa: F401  (registers the builtin:* models and datasets)
from ..core.errors import ConfigError
from ..data.preprocess import load_processor, modality
from ..data.spec import resolve_model
from ..hub.target import check_save_target
from ..pruner import MPPruner
from . import stages
from .inputs import build_plan, calibration_batches, needs, prepare_plan
from .schema import Recipe, load_recipe


logger = logging.getLogger(__name__)


def _load(recipe: Recipe, cache_dir: str, model: nn.Module | None) -> tuple[MPPruner, str]:
    cfg = recipe.pruning[0].build()
    if model is not None:
        src = recipe.model.id if recipe.model.id and recipe.model.id != "<in-memory>" else ""
        return MPPruner(model, cfg), src or getattr(getattr(model, "config", None), "_name_or_path", "")
    path = resolve_model(recipe.model.id, cache_dir=cache_dir, seed=recipe.seed, epochs=recipe.model.train_epochs)
    kw: dict[str, Any] = {"revision": recipe.model.revision} if recipe.model.revision else {}
    if recipe.model.dtype:
        kw["dtype"] = getattr(torch, recipe.model.dtype)
    pruner = MPPruner.from_pretrained(path, cfg, **kw)
    if recipe.model.device:
        pruner.model.to(recipe.model.device)
    return pruner, path


def _check_device(device: str | None) -> None:
    """A recipe's `model.device` must exist on this machine (checked before any work)."""
    if device is None:
        return
    kind = torch.device(device).type
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(kind, False):
        raise ConfigError(f"model.device = {device!r}: no {kind} device on this machine (--set model.device=cpu)")


def _optional_processor(model: nn.Module, source: str):
    try:
        return load_processor(source, modality(model))
    except ConfigError as e:
        logger.info("no processor saved with the checkpoint: %s", e)
        return None


def execute(
    recipe: Recipe, *, output_dir: str | None = None, push: bool = False, cache_dir: str | None = None,
    model: nn.Module | None = None, processor: Any = None, save: bool = True,
) -> tuple[MPPruner, dict[str, Any]]:  # fmt: skip
    """Run a recipe end to end; returns the pruner and a summary (output dir, sparsity, metrics, timings).

    Errors in the recipe or its data (a method that is not installed, a push without `push.repo_id`, an unknown
    column or split, images that do not fit the processor, overlapping calibration / evaluation rows) are raised
    before any work is done or file written. `model` / `processor` replace the recipe's (Python API); with
    `save=False` nothing is written."""
    out = output_dir or recipe.output.dir or recipe.name
    if save and not out:
        raise ConfigError("no output directory: set output.dir in the recipe or pass --output DIR")
    if save:
        check_save_target(out)  # a folder of the user's files is refused now, not after the work
    if push and (not recipe.push.repo_id or not save):
        raise ConfigError("--push-to-hub needs push.repo_id in the recipe (e.g. push: {repo_id: org/name})")
    need = needs(recipe)  # every method must be installed before we start
    _check_device(recipe.model.device)
    set_seed(recipe.seed)
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "hf_mpprune")
    t0 = time.perf_counter()
    pruner, source = _load(recipe, cache_dir, model)
    pruner.ledger.identity["base_model"] = recipe.model.id if model is None else (source or "<in-memory>")
    pruner.ledger.seeds["recipe"] = recipe.seed
    plan = build_plan(recipe, pruner.model, need)
    processor = prepare_plan(plan, pruner.model, recipe.model.processor or source, processor)
    if processor is None and (recipe.model.processor or source):  # no data roles: still save the processor along
        processor = _optional_processor(pruner.model, recipe.model.processor or source)
    stages.check_audit(recipe, pruner, plan)
    plan.record(pruner.ledger)
    pruner.ledger.add_timing("load", time.perf_counter() - t0)
    teacher = copy.deepcopy(pruner.model).eval() if recipe.distill is not None or "evaluation" in plan else None
    base = stages.evaluate(pruner, plan, teacher, "base")
    calibration = calibration_batches(plan)
    t1 = time.perf_counter()
    pruner.analyze(progress=False)
    pruner.ledger.add_timing("analyze", time.perf_counter() - t1)
    stages.prune(recipe, pruner, plan, calibration)
    stages.tome(recipe, pruner)  # audit.tome_r: merged tokens for evaluation, distillation and the MAC audit
    metrics = stages.evaluate(pruner, plan, teacher, "pruned")
    if recipe.distill is not None:
        stages.distill(recipe, pruner, teacher, plan)
        metrics = stages.evaluate(pruner, plan, teacher, "distilled") or metrics
    macs_ratio = stages.audit(recipe, pruner, teacher, plan)
    pruner.recipe = recipe.raw
    t2 = time.perf_counter()
    path = pruner.save_pretrained(out, processor=processor) if save else None
    if save and recipe.output.plots and pruner.spectra is not None:
        pruner.spectra.plot(os.path.join(path, "spectra_plots"), layers=False)
    pruner.ledger.add_timing("save", time.perf_counter() - t2)
    result = {
        "output_dir": path, "sparsity": pruner.masks.sparsity(), "base_accuracy": stages.headline(base),
        "accuracy": stages.headline(metrics), "base_metrics": base, "metrics": metrics, "macs_ratio": macs_ratio,
    }  # fmt: skip
    if push:
        p = recipe.push
        info = pruner.push_to_hub(
            p.repo_id, private=p.private, revision=p.revision, create_pr=p.create_pr, commit_message=p.commit_message,
            processor=processor,
        )  # fmt: skip
        result["commit_url"] = getattr(info, "commit_url", None)
    result["timings"] = dict(pruner.ledger.timings)
    return pruner, result


def run_recipe(
    recipe: Recipe, *, output_dir: str | None = None, push: bool = False, cache_dir: str | None = None
) -> dict[str, Any]:
    """Run a recipe end to end (see `execute`); returns the summary."""
    return execute(recipe, output_dir=output_dir, push=push, cache_dir=cache_dir)[1]


# ---- CLI ------------------------------------------------------------------------------------------------------------
def register(sub) -> None:
    p = sub.add_parser("run")
    p.add_argument("recipe", help="recipe YAML file, or the name of a shipped recipe (recipes/ in the repository)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a recipe key before validation, e.g. --set model.id=./my-vit --set calibration.dataset=./data "
        "--set push.repo_id=org/name (repeatable; values are YAML, null removes the key)",
    )  # fmt: skip
    p.add_argument("--output", default=None, help="checkpoint directory (default: output.dir of the recipe)")
    p.add_argument("--push-to-hub", action="store_true", help="push to push.repo_id after saving")
    p.add_argument("--cache-dir", default=None, help="cache of builtin models (default ~/.cache/hf_mpprune)")
    p.set_defaults(func=_run)
    q = sub.add_parser("push")
    q.add_argument("dir", help="checkpoint directory written by save_pretrained / hf-mpprune run")
    q.add_argument("--repo-id", required=True, help="org/name on the Hub (token from HF_TOKEN or `hf auth login`)")
    q.add_argument("--private", action="store_true", default=None)
    q.add_argument("--revision", default=None)
    q.add_argument("--create-pr", action="store_true")
    q.add_argument("--commit-message", default=None)
    q.set_defaults(func=_push)


def _run(args) -> int:
    result = run_recipe(
        load_recipe(args.recipe, args.overrides), output_dir=args.output, push=args.push_to_hub,
        cache_dir=args.cache_dir,
    )  # fmt: skip
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    return 0


def _push(args) -> int:
    pruner = MPPruner.from_pretrained(args.dir)  # verifies masks and ledger before anything is uploaded
    info = pruner.push_to_hub(
        args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
        commit_message=args.commit_message,
    )  # fmt: skip
    sys.stdout.write(f"{getattr(info, 'commit_url', info)}\n")
    return 0
