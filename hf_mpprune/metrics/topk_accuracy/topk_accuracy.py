"""Top-k accuracy as an `evaluate` module shipped inside hf_mpprune: `evaluate.load(hf_mpprune.metrics.TOPK_ACCURACY)`.

The arithmetic lives in `hf_mpprune.metrics.compute_topk`; this file only adapts it to `evaluate.Metric`.
"""

import datasets
import evaluate

from hf_mpprune.metrics import compute_topk


_DESCRIPTION = "Fraction of examples whose reference label is among the k highest-scoring classes."
_KWARGS = """
Args:
    predictions (list of list of float): per-class scores (logits), one row per example.
    references (list of int): true labels (-100 = ignored).
    k (list of int, default [1, 5]): the k values to report.
Returns:
    {"top1": float, "top5": float, ...}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TopkAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, k=(1, 5)):
        return compute_topk(predictions, references, k)
