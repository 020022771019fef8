"""The ledger: one auditable JSON record of a pruning run (ALGORITHMS.md §14). Never holds a token."""

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any


def environment() -> dict[str, str]:
    """Versions of everything that changes numbers, plus host and (if any) GPU name."""
    import accelerate
    import huggingface_hub
    import torch
    import transformers

    from . import __version__

    env = {
        "hf_mpprune": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = str(torch.version.cuda)
    return env


@dataclass
class Ledger:
    identity: dict[str, Any] = field(default_factory=dict)  # base model id/revision/weights hash, versions
    registry: list[dict[str, Any]] = field(default_factory=list)  # exact layer list with role and shape
    data: dict[str, Any] = field(default_factory=dict)  # split ids / index hashes
    spectral: dict[str, Any] = field(default_factory=dict)  # MP settings + per-layer summary
    steps: list[dict[str, Any]] = field(default_factory=list)
    audits: list[dict[str, Any]] = field(default_factory=list)

    def add_step(self, **record: Any) -> dict[str, Any]:
        record.setdefault("step_index", len(self.steps))
        record.setdefault("timestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        self.steps.append(record)
        return record

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Ledger":
        return cls(**{k: d.get(k, v) for k, v in asdict(cls()).items()})
