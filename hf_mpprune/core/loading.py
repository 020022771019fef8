"""Loading a transformers model by the architecture named in its config, local folder or Hub id.

One rule for "is this a local path" and one list of Hub keyword arguments, shared by the pruner, the checkpoint
reader, the trainer (teacher given as a path) and the CLI.
"""

import os
from typing import Any

import transformers
from huggingface_hub import snapshot_download
from torch import nn
from transformers import AutoConfig, AutoModel

from .errors import CheckpointError, MPPruneError
from .files import check_model_dir, check_no_remote_code
from .tasks import folder_task, task_model_class


HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder", "force_download")
# Never download these from a Hub repo: our checkpoints are safetensors only.
IGNORE_PATTERNS = ["*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "*.gguf"]


def looks_local(path: str) -> bool:
    """True when `path` can only mean a local folder: it starts with `.`, `/` or `~`, or has more than one `/`
    (a Hub id is `name` or `org/name`)."""
    return path.startswith((".", "/", "~")) or path.rstrip("/").count("/") > 1


def offline_hint() -> str:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
    return " (HF_HUB_OFFLINE=1: only local dirs and models already in the HF cache can be loaded)" if offline else ""


def split_hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the Hub arguments (`HUB_KWARGS`) out of `kwargs` and return them."""
    return {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}


def resolve_local(name_or_path: str | os.PathLike, hub: dict[str, Any]) -> tuple[str, str | None]:
    """Return (local directory, Hub commit or None). Hub ids are fetched with `snapshot_download` (no pickles)."""
    path = os.path.expanduser(os.fspath(name_or_path))
    sub = hub.get("subfolder") or ""
    if os.path.isdir(path):
        return os.path.join(path, sub), None
    if looks_local(path):
        raise FileNotFoundError(f"no model directory at {path!r}")
    kw = {k: hub[k] for k in ("revision", "token", "cache_dir", "local_files_only", "force_download") if k in hub}
    try:
        local = snapshot_download(path, ignore_patterns=IGNORE_PATTERNS, **kw)
    except Exception as e:  # the hub raises many types (offline, 404, auth); all mean "cannot load"
        raise FileNotFoundError(f"cannot load a model config from {path!r}{offline_hint()}: {e}") from e
    return os.path.join(local, sub), os.path.basename(os.path.normpath(local))


def load_model(name_or_path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Load a model with the architecture class named in its `config.json`; a config that names none (a timm
    checkpoint folder) gets the `AutoModelFor*` class of its task from optimum's `TasksManager` (else `AutoModel`)."""
    path = str(name_or_path)
    if looks_local(path) and not os.path.isdir(os.path.expanduser(path)):
        raise FileNotFoundError(f"no model directory at {path!r}")
    hub = split_hub_kwargs(kwargs)
    local = os.path.join(os.path.expanduser(path), hub.get("subfolder") or "")
    if os.path.isdir(os.path.expanduser(path)):
        check_model_dir(local)  # names a missing/damaged config.json or weights file, refuses pickles/remote code
    try:
        cfg = AutoConfig.from_pretrained(path, **hub)
    except OSError as e:
        raise FileNotFoundError(f"cannot load a model config from {path!r}{offline_hint()}: {e}") from e
    except ValueError as e:  # e.g. a model_type this transformers does not know
        raise CheckpointError(f"cannot read the model config of {path!r}: {e}") from e
    check_no_remote_code(cfg.to_dict(), path)
    archs = getattr(cfg, "architectures", None) or []
    model_cls = getattr(transformers, archs[0], None) if archs else None
    if model_cls is None:  # no class named (e.g. a timm checkpoint): the AutoModelFor* class of its task
        model_cls = task_model_class(folder_task(local)) if os.path.isdir(local) else AutoModel
    try:
        model = model_cls.from_pretrained(path, config=cfg, **hub, **kwargs)
    except MPPruneError:
        raise
    except ImportError as e:  # e.g. a timm checkpoint without timm installed
        raise ImportError(f"{model_cls.__name__} cannot load {path!r}: {e} (timm checkpoints: pip install "
                          "'hf-mpprune[timm]')") from e  # fmt: skip
    except (OSError, ValueError, RuntimeError) as e:  # damaged weights the header check cannot see, shape mismatch
        raise CheckpointError(f"cannot load the weights of {path!r} into {model_cls.__name__}: {e}") from e
    model.eval()
    return model
