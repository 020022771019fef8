"""`hf-mpprune env`: versions, devices and sparse kernels, to paste into a bug report.

Package versions are read from the installed metadata (nothing optional is imported except onnxruntime, asked
for its execution providers). The 2:4 kernel lines say which PyTorch backend `to_semi_structured` would use.
"""

import json
import platform
import sys
from importlib import metadata
from typing import Any

import torch

from ..core.constants import __version__
from ..core.errors import MPPruneError
from ..deploy.semi_structured import choose_backend


PACKAGES = (
    "torch", "transformers", "huggingface_hub", "accelerate", "datasets", "safetensors", "numpy", "scipy",
    "onnx", "onnxscript", "onnxruntime", "torchao", "optimum", "peft", "evaluate", "matplotlib", "scikit-learn",
)  # fmt: skip


def register(sub) -> None:
    p = sub.add_parser("env")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    p.set_defaults(func=_run)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _kernels() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    cap = torch.cuda.get_device_capability(0) if cuda else None
    try:
        cslt = bool(torch.backends.cusparselt.is_available())
        cslt_version = torch.backends.cusparselt.version() if cslt else None
    except (AttributeError, RuntimeError):  # older or CPU-only builds
        cslt, cslt_version = False, None
    try:
        backend = choose_backend(cap, "auto", cusparselt=cslt)
    except MPPruneError as e:
        backend = f"none ({str(e).split(';')[0]})"
    return {
        "cusparselt": {"available": cslt and cuda, "version": cslt_version},
        "cutlass_2_4": {"available": bool(cuda and cap and cap[0] == 8), "rule": "PyTorch's CUTLASS 2:4 runs on sm8x"},
        "semi_structured_backend": backend,
    }


def _sm(cap: tuple[int, int]) -> str:
    return f"sm{cap[0]}{cap[1]}"


def _onnxruntime_providers() -> list[str] | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return list(onnxruntime.get_available_providers())


def environment() -> dict[str, Any]:
    """Everything `hf-mpprune env` prints, as a dict."""
    cuda = torch.cuda.is_available()
    devices = [
        {"index": i, "name": torch.cuda.get_device_name(i), "capability": _sm(torch.cuda.get_device_capability(i))}
        for i in range(torch.cuda.device_count() if cuda else 0)
    ]
    mps = getattr(torch.backends, "mps", None)
    return {
        "hf_mpprune": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch_build": {"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None},
        "devices": {
            "cpu_threads": torch.get_num_threads(),
            "cuda_available": cuda,
            "cuda": devices,
            "mps_available": bool(mps and mps.is_available()),
        },
        "kernels": _kernels(),
        "onnxruntime_providers": _onnxruntime_providers(),
    }


def to_markdown(env: dict[str, Any]) -> str:
    lines = [f"- hf_mpprune: {env['hf_mpprune']}", f"- python: {env['python']}", f"- platform: {env['platform']}"]
    lines += [f"- {k}: {v or 'not installed'}" for k, v in env["packages"].items()]
    lines.append(f"- torch build: CUDA {env['torch_build']['cuda']}, cuDNN {env['torch_build']['cudnn']}")
    dev = env["devices"]
    gpus = ", ".join(f"{d['index']}: {d['name']} ({d['capability']})" for d in dev["cuda"]) or "none"
    lines.append(f"- devices: CPU threads {dev['cpu_threads']}; CUDA GPUs {gpus}; MPS {dev['mps_available']}")
    k = env["kernels"]
    lines.append(f"- cuSPARSELt: {k['cusparselt']['available']} (version {k['cusparselt']['version']})")
    lines.append(f"- CUTLASS 2:4: {k['cutlass_2_4']['available']} ({k['cutlass_2_4']['rule']})")
    lines.append(f"- 2:4 backend (to_semi_structured): {k['semi_structured_backend']}")
    lines.append(f"- onnxruntime providers: {env['onnxruntime_providers'] or 'onnxruntime not installed'}")
    return "\n".join(lines)


def _run(args) -> int:
    env = environment()
    sys.stdout.write((json.dumps(env, indent=2) if args.json else to_markdown(env)) + "\n")
    return 0
