"""The stages of a recipe run after the data is ready: evaluate, prune (cyclic steps through `run_cycles` with a
per-cycle fine-tune on the training rows and the switch decided on the selection rows), distill through
`MPDistillationTrainer`, audit. No model- or dataset-specific code paths: everything comes from the `DataPlan`."""

import logging
import tempfile
import time
from typing import Any

import torch
from transformers import PrinterCallback

from ..certify.audit import budget_audit
from ..core.errors import ConfigError
from ..core.registry import get_method
from ..data.evaluation import evaluate_model, record_metrics
from ..data.splits import DataPlan
from ..deploy.macs import macs_vs_dense
from ..deploy.tome import apply_tome, remove_tome
from ..methods.kn.geometry import KNCalibration
from ..methods.kn.legality import legality_audit
from ..training.cycles import CycleFinetune, run_cycles
from ..training.steps import make_train_step
from ..training.trainer import MPDistillationArguments, MPDistillationTrainer
from .inputs import audit_rows, eval_task, is_cyclic, one_input
from .schema import Recipe


logger = logging.getLogger(__name__)


def evaluate(pruner, plan: DataPlan, teacher, stage: str) -> dict[str, float] | None:
    """Metrics of the current model on the evaluation rows, recorded in the ledger with the dataset's provenance."""
    if "evaluation" not in plan:
        return None
    r = plan["evaluation"]
    task = eval_task(pruner.model, plan)
    t0 = time.perf_counter()
    metrics = evaluate_model(pruner.model, r.prepared, task=task, teacher=teacher, batch_size=r.spec.batch_size)
    record_metrics(pruner.ledger, metrics, r.info, task=task, stage=stage)
    pruner.ledger.add_timing("evaluate", time.perf_counter() - t0)
    logger.info("%s: %s on %s (%s)", stage, metrics, r.info["dataset"], r.info["split"])
    return metrics


def headline(metrics: dict[str, float] | None) -> float | None:
    if not metrics:
        return None
    return metrics.get("top1", metrics.get("embedding_agreement"))


def _top1(role, batch_size: int):
    def fn(model) -> dict[str, float]:
        return {"accuracy": evaluate_model(model, role.prepared, task="image-classification",
                                           batch_size=batch_size)["top1"]}  # fmt: skip

    return fn


def prune(recipe: Recipe, pruner, plan: DataPlan, calibration) -> None:
    """Each pruning step along its targets. A step that trains between targets (SER, Hybrid) or has a schedule
    runs through `run_cycles` when there are training rows: fine-tune after every target (`recipe.finetune`,
    SER steps with their `keep_ft_*` settings), selection accuracy on the selection rows (carved from training
    data), reported accuracy on the evaluation rows. A later step with `free_restoration` (CAST) is handed the
    dense weights from before the first step (`KNCalibration`), so slots an earlier step zeroed and the k:n
    pattern keeps get their dense values back."""
    restores = [getattr(s.build(), "free_restoration", False) for s in recipe.pruning[1:]]
    dense = {la.name: la.weight.detach().clone() for la in pruner.layers} if any(restores) else None
    for step in recipe.pruning:
        cfg = step.build().resolve()
        pruner.config = cfg
        data = KNCalibration(calibration, dense) if dense and getattr(cfg, "free_restoration", False) else calibration
        targets = step.targets()
        t0 = time.perf_counter()
        if is_cyclic(step) and "train" in plan:
            train = plan["train"]
            if eval_task(pruner.model, plan, "selection") == "feature-extraction":
                raise ConfigError(
                    f"method {cfg.method!r} fine-tunes between steps with a classification loss; "
                    f"{type(pruner.model).__name__} has no classification head and labels"
                )
            bs = train.spec.batch_size
            run_cycles(
                pruner, targets, train_step=make_train_step(train.prepared.dataset, batch_size=bs, seed=recipe.seed),
                finetune=recipe.finetune or CycleFinetune(), calibration=calibration, progress=False,
                evaluate=_top1(plan["evaluation"], bs) if "evaluation" in plan and plan["evaluation"].prepared.has_labels
                else None,
                selection_eval=_top1(plan["selection"], bs),
            )  # fmt: skip
        else:
            if get_method(cfg.method).needs_training:
                raise ConfigError(f"method {cfg.method!r} trains between steps: add a 'train' section")
            for s in targets:
                pruner.prune(data, sparsity=None if cfg.pattern is not None else s)
        pruner.ledger.add_timing("prune", time.perf_counter() - t0)


def distill(recipe: Recipe, pruner, teacher, plan: DataPlan) -> None:
    """Frozen-mask KD with `MPDistillationTrainer` on the training rows (the recipe's `distill` holds
    `MPDistillationArguments` fields; encoders without logits default to `distill_mode: features`)."""
    train = plan["train"]
    kw = {
        "num_train_epochs": 2.0, "learning_rate": 3e-4, "per_device_train_batch_size": 32, "warmup_steps": 0.1,
        "weight_decay": 0.01, "optim": "adamw_torch", "seed": recipe.seed, "use_cpu": not torch.cuda.is_available(),
        "save_strategy": "no", "logging_strategy": "no", "report_to": "none", "disable_tqdm": True,
        **(recipe.distill or {}),
    }  # fmt: skip
    if "distill_mode" not in (recipe.distill or {}) and eval_task(pruner.model, plan, "train") == "feature-extraction":
        kw["distill_mode"] = "features"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            args = MPDistillationArguments(output_dir=tmp, **kw)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"recipe section 'distill': {e}") from e
        trainer = MPDistillationTrainer(
            pruner.model, teacher, pruner.masks, args=args, train_dataset=train.prepared.dataset,
            data_collator=train.prepared.collator,
        )  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # stdout stays machine-readable (hf-mpprune run prints JSON)
        trainer.train()
    pruner.model.eval()
    # the trainer appended the distill step (arguments, losses, teacher, data) to the model's ledger = pruner.ledger
    pruner.ledger.add_timing("distill", time.perf_counter() - t0)


def check_audit(recipe: Recipe, pruner, plan: DataPlan) -> None:
    """Refuse, before any work, an audit option that cannot act: `macs` without an input row, `tome_r` on a model
    ToMe does not support or with an `r` too large for its token count (applied once and removed: bit-identical)."""
    spec = recipe.audit
    if spec is None:
        return
    if spec.macs and one_input(plan) is None:
        raise ConfigError("audit.macs counts MACs on one input row, but the recipe has no evaluation, calibration "
                          "or train section: add one, or set audit.macs: false")  # fmt: skip
    if spec.tome_r is not None:
        apply_tome(pruner.model, r=spec.tome_r)
        remove_tome(pruner.model)


def tome(recipe: Recipe, pruner) -> None:
    """Apply ToMe (`audit.tome_r`) to the pruned model for evaluation, distillation and the MAC audit; record it."""
    if recipe.audit is None or recipe.audit.tome_r is None:
        return
    record = apply_tome(pruner.model, r=recipe.audit.tome_r)
    pruner.ledger.add_step(kind="tome", **record, applied_to=["evaluation", "distillation", "mac audit"],
                           saved="no (forward patches, not weights): apply_tome(model, r) again at inference")  # fmt: skip


def audit(recipe: Recipe, pruner, teacher, plan: DataPlan) -> float | None:
    """Legality (k:n) + exact MACs (one input row): sparse MACs of the deployed graph (with ToMe when `audit.tome_r`
    is set) over the dense MACs without ToMe, and, for classifiers whose head was pruned, the exact head
    certificate on up to 256 evaluation rows (of the pruning alone). ToMe is removed here, as it is before saving.
    Records go to `ledger.audits`; returns the MAC ratio."""
    spec = recipe.audit
    if spec is None or pruner.masks is None:
        return None
    pattern = pruner.masks.pattern
    if spec.legality:
        pruner.ledger.audits.append(_legality(pruner, pattern))
    remove_tome(pruner.model)  # counted with ToMe below; the certificate bounds the pruning alone
    ratio = None
    if spec.macs:
        macs = macs_vs_dense(pruner.model, one_input(plan), pruner.masks, pattern, tome_r=spec.tome_r or 0)
        pruner.ledger.audits.append({"kind": "macs", **macs})
        ratio = macs["ratio"]
    _certificate(pruner, teacher, plan)
    return ratio


def _legality(pruner, pattern) -> dict[str, Any]:
    record: dict[str, Any] = {"kind": "legality", "pattern": str(pattern) if pattern else "unstructured"}
    if pattern is not None:  # layers a k:n method left dense (task head, ineligible convs) are not k:n layers
        sparse = [n for n in pruner.layers.names if not bool(pruner.masks[n].all())]
        rep = legality_audit(pruner.model, pattern, layers=sparse)
        record.update(bad_groups=rep.totals()["bad_groups"], bad_layers=[r.name for r in rep.rows if r.bad_groups],
                      dense_layers=[n for n in pruner.layers.names if n not in sparse])  # fmt: skip
    zeros = sum(int((la.weight == 0).sum()) for la in pruner.layers)
    return record | {"sparsity": pruner.masks.sparsity(), "exact_zeros": zeros, "pruned": pruner.masks.num_pruned}


def _certificate(pruner, teacher, plan: DataPlan) -> None:
    head = [la.name for la in pruner.layers if la.role == "head"]
    rows = audit_rows(plan)
    task = eval_task(pruner.model, plan)
    if teacher is not None and head and rows is not None and task != "feature-extraction":
        if (pruner.masks[head[0]] == 0).any():
            cert = budget_audit(teacher, pruner.model, head, rows, lipschitz="head")
            pruner.ledger.audits.append({"kind": "certificate", **cert.to_ledger()})
