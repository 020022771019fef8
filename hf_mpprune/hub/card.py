"""Model cards from `templates/model_card.md` (also `model_cards/TEMPLATE.md`) with `huggingface_hub.ModelCard`.

Metadata: `library_name: transformers`, `base_model` (when it is a Hub id) with `base_model_relation: finetune`,
`license` (from the recipe or the base model's card), `pipeline_tag` (transformers' pipeline registry), the title
from the model name (`card_meta.py`), tags (`hf-mpprune`, `pruned`, `sparse`, `k:n` + `semi-structured` or
`unstructured`, `marchenko-pastur`, `knowledge-distillation` when a ledger step has `kind: "distill"`,
`token-merging` when a step or audit has `tome_r > 0`), and `model-index` results from the ledger's non-base
metrics (with `dataset_config` / `dataset_revision` / `dataset_args`, e.g. a perplexity's window length and
stride, when a metric records them). An existing card is updated: its
metadata is merged (tags united, results replaced) and only the text between our `hf-mpprune:begin/end` markers is
replaced; user text outside is kept.
"""

import os
import re
from importlib import resources
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..core.constants import LIBRARY_TAG
from .card_meta import base_model_relation, card_license, default_model_name, pipeline_tag


BEGIN, END = "<!-- hf-mpprune:begin", "<!-- hf-mpprune:end -->"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def template_text() -> str:
    return resources.files("hf_mpprune").joinpath("hub/templates/model_card.md").read_text(encoding="utf-8")


def card_tags(pruner: Any) -> list[str]:
    tags = [LIBRARY_TAG, "pruned", "sparse"]
    pattern = pruner.masks.pattern if pruner.masks is not None else None
    tags += [str(pattern), "semi-structured"] if pattern is not None else ["unstructured"]
    tags.append("marchenko-pastur")
    records = pruner.ledger.steps + pruner.ledger.audits
    if any(r.get("kind") == "distill" for r in records):
        tags.append("knowledge-distillation")
    if any((r.get("tome_r") or 0) > 0 for r in records):
        tags.append("token-merging")
    return tags


def _base_model(pruner: Any) -> str | None:
    base = str(pruner.ledger.identity.get("base_model") or "")
    return base if _REPO_ID.match(base) and not os.path.exists(base) else None


def _eval_results(pruner: Any) -> list[EvalResult]:
    out = []
    for m in pruner.ledger.metrics:
        if m.get("stage") == "base":
            continue
        out.append(
            EvalResult(
                task_type=m["task"], dataset_type=m["dataset"], dataset_name=m["dataset"], dataset_split=m["split"],
                metric_type=m["name"], metric_value=m["value"], metric_name=f"{m['name']} ({m['stage']})",
                dataset_config=m.get("dataset_config"), dataset_revision=m.get("dataset_revision"),
                dataset_args=m.get("dataset_args"),
            )
        )  # fmt: skip
    return out


def card_data(pruner: Any, model_name: str, model_class: str) -> ModelCardData:
    results = _eval_results(pruner)
    datasets = sorted({m["dataset"] for m in pruner.ledger.metrics if _REPO_ID.match(m["dataset"])})
    base = _base_model(pruner)
    main_input = getattr(pruner.model, "main_input_name", None)
    return ModelCardData(
        library_name="transformers", base_model=base, base_model_relation=base_model_relation(pruner, base),
        tags=card_tags(pruner), pipeline_tag=pipeline_tag(model_class, main_input), model_name=model_name,
        eval_results=results or None, metrics=sorted({r.metric_type for r in results}) or None,
        datasets=datasets or None, **card_license(pruner),
    )  # fmt: skip


# ---- tables (pure functions of the pruner's state) ---------------------------------------------------------------
def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def layer_table(pruner: Any) -> str:
    sparsity = pruner.masks.layer_sparsity() if pruner.masks is not None else {}
    fits = pruner.spectra.by_layer() if pruner.spectra is not None else {}
    rows = []
    for la in pruner.layers:
        f = fits.get(la.name)
        mp = [_fmt(f.sigma_plus), _fmt(f.bulk_fraction), str(f.n_spikes), _fmt(f.hill_alpha)] if f else ["–"] * 4
        sp = f"{sparsity[la.name]:.4f}" if la.name in sparsity else "0"
        rows.append(f"| {la.name} | {la.role} | {la.shape[0]}x{la.shape[1]} | {sp} | " + " | ".join(mp) + " |")
    return "\n".join(rows)


def steps_table(pruner: Any) -> str:
    rows = []
    for s in pruner.ledger.steps:
        tgt, ach = s.get("target_sparsity"), s.get("achieved_sparsity")
        sha = str(s.get("mask_sha256") or "")[:12]
        method = s.get("method", s.get("kind", ""))
        if s.get("stage") and s["stage"] != method:  # a cyclic method's stage, e.g. hybrid (magnitude) / (ser)
            method = f"{method} ({s['stage']})"
        rows.append(
            f"| {s.get('step_index', '')} | {method} | "
            f"{_fmt(tgt) if tgt is not None else '–'} | {_fmt(ach) if ach is not None else '–'} | {sha} |"
        )
    return "\n".join(rows) or "| – | dense (no pruning step) | – | – | – |"


def metrics_table(pruner: Any) -> str:
    if not pruner.ledger.metrics:
        return "No evaluation recorded in the ledger."
    rows = ["| stage | metric | dataset | split | value |", "|---|---|---|---|---|"]
    rows += [
        f"| {m['stage']} | {m['name']} | {m['dataset']} | {m['split']} | {m['value']:.4f} |"
        for m in pruner.ledger.metrics
    ]
    certs = [a["certified_line"] for a in pruner.ledger.audits if a.get("certified_line")]
    if certs:  # data-path certificates (docs/algorithms.md §9): a bound, or a labelled estimate
        rows += ["", "**Certificates.** " + " ".join(certs)]
    return "\n".join(rows)


def _summary(pruner: Any) -> str:
    base = pruner.ledger.identity.get("base_model") or "a model"
    if pruner.masks is None:
        return f"Dense checkpoint of `{base}` with an hf_mpprune spectral analysis (no pruning yet)."
    method = pruner.config.method if pruner.config is not None else "an hf_mpprune method"
    pat = f", pattern {pruner.masks.pattern} (k kept of every n inputs)" if pruner.masks.pattern else ""
    return (
        f"`{base}` pruned with `{method}` to global sparsity **{pruner.masks.sparsity():.4f}** over "
        f"{len(pruner.layers)} layers ({pruner.layers.total_params:,} weights){pat}. Pruned weights are exact "
        f"`+0.0`; masks are in `mpprune_masks.safetensors` (SHA-256 `{pruner.masks.sha256()[:16]}…`)."
    )


# ---- assembling and updating --------------------------------------------------------------------------------------
def make_card(
    pruner: Any, *, model_name: str | None = None, existing: str | None = None, repo_or_path: str = ""
) -> str:
    """Render the card; if `existing` card text is given, update it instead of replacing it. The title is
    `model_name` (by default `card_meta.default_model_name`, never the output folder's name)."""
    model_name = model_name or default_model_name(pruner)
    model_class = (getattr(getattr(pruner.model, "config", None), "architectures", None) or ["AutoModel"])[0]
    data = card_data(pruner, model_name, model_class)
    card = ModelCard.from_template(
        data, template_str=template_text(), model_name=model_name, model_class=model_class,
        repo_or_path=repo_or_path or model_name, summary=_summary(pruner), steps_table=steps_table(pruner),
        metrics_table=metrics_table(pruner), layer_table=layer_table(pruner),
        description=f"A pruned version of `{pruner.ledger.identity.get('base_model') or 'a model'}` made with "
        "`hf_mpprune` (Marchenko–Pastur random-matrix pruning).",
        provenance=f"hf_mpprune {pruner.ledger.identity.get('hf_mpprune', '')}.",
    )  # fmt: skip
    return str(card) if existing is None else update_card(existing, str(card))


def _section(text: str) -> tuple[int, int] | None:
    start = text.find(BEGIN)
    end = text.find(END, start + 1) if start >= 0 else -1
    return (start, end + len(END)) if start >= 0 and end >= 0 else None


def update_card(existing: str, generated: str) -> str:
    """Merge `generated` into `existing`: metadata merged (tags united, our keys win), our marked section replaced
    (or appended when absent); everything else in `existing` is kept verbatim."""
    old, new = ModelCard(existing, ignore_metadata_errors=True), ModelCard(generated)
    meta = old.data.to_dict()
    ours = new.data.to_dict()
    tags = list(dict.fromkeys((meta.get("tags") or []) + (ours.get("tags") or [])))
    meta.update({k: v for k, v in ours.items() if v is not None})
    meta["tags"] = tags
    sec_new = _section(new.text)
    ours_text = new.text[sec_new[0] : sec_new[1]]
    body = old.text
    sec_old = _section(body)
    if sec_old is not None:
        body = body[: sec_old[0]] + ours_text + body[sec_old[1] :]
    else:
        body = body.rstrip("\n") + "\n\n" + ours_text + "\n"
    data = ModelCardData(**meta)
    return f"---\n{data.to_yaml()}\n---\n{body}"
