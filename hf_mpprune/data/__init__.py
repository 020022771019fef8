"""The data layer: any `datasets` dataset as calibration, training, selection and evaluation data.

Owns `spec` (`DatasetSpec`: Hub id + config + revision, a `save_to_disk` folder, an `imagefolder` folder,
json/jsonl/csv/parquet files or an in-memory `datasets.Dataset`; split expressions such as `train[:2%]`;
registered named sources), `columns` (image / text / text pair / label detection), `preprocess` (the model's own
`AutoImageProcessor` / `AutoTokenizer` through `with_transform`, a collator, a probe that checks the inputs fit
the model), `splits` (seeded sample selection, a selection split carved from training data, provenance and
disjointness in the ledger) and `evaluation` (top-1/top-5, embedding agreement, metric records).
May import: core, spectral, methods, training, deploy, certify, metrics, hub, pruner.
"""

from .columns import Columns, detect_columns
from .evaluation import evaluate_model, record_metrics
from .preprocess import Prepared, load_processor, prepare
from .spec import DatasetSpec, load_split, parse_split, register_dataset_source, register_model_source, resolve_model
from .splits import DataPlan, RoleData


__all__ = [
    "Columns",
    "DataPlan",
    "DatasetSpec",
    "Prepared",
    "RoleData",
    "detect_columns",
    "evaluate_model",
    "load_processor",
    "load_split",
    "parse_split",
    "prepare",
    "record_metrics",
    "register_dataset_source",
    "register_model_source",
    "resolve_model",
]
