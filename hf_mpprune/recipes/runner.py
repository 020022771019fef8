"""`hf-mpprune run RECIPE` (analyze → prune → distill → audit → save → push) and `hf-mpprune push DIR`.

Offline builtins: `builtin:digits-vit` (`hf_mpprune.builtins.digits`, trained once with `transformers.Trainer` and cached
under `cache_dir`) with data `builtin:digits` (stratified train / val / test seeded by the recipe; calibration is
drawn from train, `val` is the selection split, `test` is only reported), and `builtin:minilm` (`demo.py`) with
`builtin:minilm-text` (seeded synthetic token batches). On the digits task, schedules run through `run_cycles`
(per-cycle fine-tune) and `distill` through `MPDistillationTrainer`; for other models distillation is skipped with
a logged note (no training set). Hub models and datasets load through the normal caches, so they need network
access (or a warm cache).
"""

import copy
import logging
import os
import sys
import time
from typing import Any

import torch

from ..core.errors import ConfigError
from .schema import Recipe, load_recipe


logger = logging.getLogger(__name__)


# ---- pipeline pieces ------------------------------------------------------------------------------------------------
DIGITS = "sklearn:digits"


def _load(recipe: Recipe, cache_dir: str, splits):
    from ..builtins.digits import trained_digits_vit
    from ..cli import demo
    from ..pruner import MPPruner

    mid, cfg = recipe.model.id, recipe.pruning[0].build()
    if mid == "builtin:digits-vit":
        epochs = recipe.model.train_epochs or 20
        pruner = MPPruner(trained_digits_vit(recipe.seed, splits, epochs=epochs, cache_dir=cache_dir), cfg)
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


def _splits(recipe: Recipe) -> dict[str, Any] | None:
    """The builtin digits task (`hf_mpprune.builtins.digits`: stratified train / val / test, seeded by the recipe) for the
    digits model; None for models without a builtin task."""
    if recipe.model.id != "builtin:digits-vit":
        return None
    from ..builtins.digits import load_digits_splits

    return load_digits_splits(recipe.seed)


def _record_splits(pruner, splits) -> None:
    if splits is not None:  # val selects (drop-threshold switch), test is only reported
        pruner.ledger.record_split("selection", splits["val"].index.tolist(), dataset=DIGITS)
        pruner.ledger.record_split("evaluation", splits["test"].index.tolist(), dataset=DIGITS)


def _calibration(recipe: Recipe, pruner, splits) -> list[dict[str, torch.Tensor]] | None:
    from ..cli import demo

    spec = recipe.calibration
    if spec is None:
        return None
    n = spec.size or 64
    if spec.dataset == "builtin:digits":
        if splits is None:
            raise ConfigError("calibration dataset builtin:digits goes with model builtin:digits-vit")
        train = splits["train"]
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(spec.seed))[:n]
        pruner.ledger.record_split("calibration", train.index[pick].tolist(), dataset=DIGITS)
        x = train.x[pick]
        return [{"pixel_values": x[i : i + spec.batch_size]} for i in range(0, len(x), spec.batch_size)]
    if spec.dataset == "builtin:minilm-text":
        pruner.ledger.record_split("calibration", range(n), dataset=f"synthetic:minilm-tokens:seed{spec.seed}")
        return demo.minilm_batches(n, spec.seed, spec.batch_size)
    raise ConfigError(
        f"calibration dataset {spec.dataset!r} cannot be prepared by the recipe runner (it needs a model-specific "
        "image/text pipeline); builtins: builtin:digits, builtin:minilm-text. Prune from Python with "
        "`MPPruner.prune(calibration=...)` for Hub datasets"
    )


def _prune(recipe: Recipe, pruner, calibration, splits) -> None:
    """Each pruning step along its targets. With a training set, a step that trains between targets (SER, Hybrid)
    or has a schedule runs through `run_cycles`: fine-tune after every target (`recipe.finetune`, SER steps with
    their `keep_ft_*` settings), selection accuracy on `val`, reported accuracy on `test`."""
    from ..builtins.digits import accuracy
    from ..core.registry import get_method
    from ..training.cycles import CycleFinetune, run_cycles
    from ..training.steps import make_train_step

    for step in recipe.pruning:
        cfg = step.build().resolve()
        pruner.config = cfg
        spec = get_method(cfg.method)
        targets = step.targets()
        t0 = time.perf_counter()
        if splits is not None and cfg.pattern is None and (spec.needs_training or len(targets) > 1):
            train_step = make_train_step(splits["train"], batch_size=64, seed=recipe.seed)
            run_cycles(
                pruner, targets, train_step=train_step, finetune=recipe.finetune or CycleFinetune(),
                calibration=calibration, progress=False,
                evaluate=lambda m: {"accuracy": accuracy(m, splits["test"])},
                selection_eval=lambda m: {"accuracy": accuracy(m, splits["val"])},
            )  # fmt: skip
        else:
            if spec.needs_training:
                raise ConfigError(
                    f"method {cfg.method!r} trains between steps; the recipe runner has a training set only for "
                    "builtin:digits-vit. Use run_cycles(..., train_step=make_train_step(your_dataset)) from Python"
                )
            for s in targets:
                pruner.prune(calibration, sparsity=None if cfg.pattern is not None else s)
        pruner.ledger.add_timing("prune", time.perf_counter() - t0)


def _distill(recipe: Recipe, pruner, teacher, splits) -> None:
    """Frozen-mask KD with `MPDistillationTrainer` (the recipe's `distill` = `MPDistillationArguments` fields) on
    the builtin digits train split; skipped with a logged note for models without a builtin training set."""
    import tempfile

    from ..training.trainer import MPDistillationArguments, MPDistillationTrainer

    if splits is None:
        logger.warning(
            "distill: skipped for %s (only the builtin digits task has a distillation set)", recipe.model.id
        )
        return
    kw = {
        "num_train_epochs": 2.0, "learning_rate": 3e-4, "per_device_train_batch_size": 32, "warmup_steps": 0.1,
        "weight_decay": 0.01, "optim": "adamw_torch", "seed": recipe.seed, "use_cpu": not torch.cuda.is_available(),
        "save_strategy": "no", "logging_strategy": "no", "report_to": "none", "disable_tqdm": True,
        **(recipe.distill or {}),
    }  # fmt: skip
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            args = MPDistillationArguments(output_dir=tmp, **kw)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"recipe section 'distill': {e}") from e
        trainer = MPDistillationTrainer(pruner.model, teacher, pruner.masks, args=args, train_dataset=splits["train"])
        out = trainer.train()
    pruner.model.eval()  # trainer.train() appended the distill step to pruner.ledger (the model's ledger)
    logger.info("distill: train loss %.4f", out.training_loss)
    pruner.ledger.add_timing("distill", time.perf_counter() - t0)


def _evaluate(recipe: Recipe, pruner, splits, stage: str) -> float | None:
    from ..builtins.digits import accuracy

    if splits is None:
        return None
    acc = accuracy(pruner.model, splits["test"])
    pruner.ledger.add_metric("accuracy", acc, dataset=DIGITS, split="test", stage=stage)
    return acc


def _audit(recipe: Recipe, pruner, teacher, splits) -> float | None:
    """Legality (k:n) + exact MAC report, and on the digits task the exact head certificate (L_s = 1) when the
    classifier was pruned. Everything goes to `ledger.audits`; returns sparse/dense MACs (None without data)."""
    from ..methods.kn.legality import legality_audit

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
    if splits is None:
        return None
    from ..deploy.macs import mac_report

    x = splits["test"].x
    macs = mac_report(pruner.model, {"pixel_values": x[:1]}, masks=pruner.masks, pattern=pattern)
    pruner.ledger.audits.append({"kind": "macs", "dense_macs": macs.dense_macs, "sparse_macs": macs.sparse_macs})
    head = [la.name for la in pruner.layers if la.role == "head"]
    if teacher is not None and head and (pruner.masks[head[0]] == 0).any():
        from ..certify.audit import budget_audit

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
    splits = _splits(recipe)
    pruner = _load(recipe, cache_dir, splits)
    pruner.ledger.seeds["recipe"] = recipe.seed
    pruner.ledger.add_timing("load", time.perf_counter() - t0)
    teacher = copy.deepcopy(pruner.model).eval() if recipe.distill is not None else None
    _record_splits(pruner, splits)
    base_acc = _evaluate(recipe, pruner, splits, "base")
    calibration = _calibration(recipe, pruner, splits)
    t1 = time.perf_counter()
    pruner.analyze(progress=False)
    pruner.ledger.add_timing("analyze", time.perf_counter() - t1)
    _prune(recipe, pruner, calibration, splits)
    acc = _evaluate(recipe, pruner, splits, "pruned")
    if recipe.distill is not None:
        _distill(recipe, pruner, teacher, splits)
        acc = _evaluate(recipe, pruner, splits, "distilled") if splits is not None else acc
    macs_ratio = _audit(recipe, pruner, teacher, splits)
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
    from ..pruner import MPPruner

    pruner = MPPruner.from_pretrained(args.dir)  # verifies masks and ledger before anything is uploaded
    info = pruner.push_to_hub(
        args.repo_id, private=args.private, revision=args.revision, create_pr=args.create_pr,
        commit_message=args.commit_message,
    )  # fmt: skip
    sys.stdout.write(f"{getattr(info, 'commit_url', info)}\n")
    return 0
