"""Embedding agreement (mean/min cosine) as an `evaluate` module shipped inside hf_mpprune:
`evaluate.load(hf_mpprune.metrics.EMBEDDING_AGREEMENT)`. Arithmetic: `hf_mpprune.metrics.embedding_agreement`.
"""

import datasets
import evaluate

from hf_mpprune.metrics import embedding_agreement


_DESCRIPTION = "Cosine similarity between paired embeddings of a pruned student and its dense reference."
_KWARGS = """
Args:
    predictions (list of list of float): student embeddings, one row per example.
    references (list of list of float): reference (dense teacher) embeddings, same shape.
Returns:
    {"mean_cosine": float, "min_cosine": float}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class EmbeddingAgreement(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float32")),
                    "references": datasets.Sequence(datasets.Value("float32")),
                }
            ),
        )

    def _compute(self, predictions, references):
        return embedding_agreement(predictions, references)
