"""All-or-nothing pruning: what a method may write is copied before it runs and put back if anything fails.

`MPPruner.prune` is the one place that uses it, for every registered method: `Snapshot.take(model, layers, scope)`
before the method, `restore()` on any exception (the method's own, a failed check after it, Ctrl-C). Scopes:

- `"layers"`: the weight of every registered layer (what one-shot and k:n methods write: masks applied, OBS
  updates, re-fits, CAST projections);
- `"model"`: every parameter and buffer of the model, plus the forward pre-hooks, buffers and instance attributes
  that modules gained during the call (what training methods such as SER write, and CAST's channel permutations,
  which also permute producer biases / norms and may attach a runtime gather hook).

Tensors are copied in place on restore (`copy_`), so references held by the caller (an optimizer, a teacher
comparison) stay valid. The copy lives on the tensor's own device, as one dense copy of what is in scope — except
that when the contiguous CPU tensors in scope exceed `SPILL_BYTES` (1 GiB), their copy is written to one temporary
file instead (`HF_MPPRUNE_SNAPSHOT_DIR`, else the system temporary directory) and read back only on failure: a
large model then holds one copy of its weights in memory, not two. A file that cannot be written (no space, no
permission) falls back to memory copies with a warning. `discard()` deletes the file; `MPPruner.prune` always calls it.
"""

import logging
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .layers import LayerSet


logger = logging.getLogger(__name__)

SCOPES = ("layers", "model")
SPILL_BYTES = 1 << 30  # CPU copies above this go to a temporary file


@dataclass
class Snapshot:
    """Copies of the tensors in scope and, for scope "model", the module structure to prune back to."""

    tensors: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (live tensor, copy)
    modules: list[tuple[nn.Module, set, dict, dict, set]] = field(default_factory=list)  # hooks, params, bufs, attrs
    spilled: list[tuple[torch.Tensor, int]] = field(default_factory=list)  # (live tensor, byte offset in `path`)
    path: str | None = None

    @classmethod
    @torch.no_grad()
    def take(cls, model: nn.Module | None, layers: LayerSet, scope: str = "layers") -> "Snapshot":
        """Copy what a method of `scope` may write (see the module docstring)."""
        if scope not in SCOPES:
            raise ConfigError(f"snapshot scope {scope!r} must be one of {SCOPES}")
        snap = cls()
        if scope == "layers" or model is None:
            live = [la.weight for la in layers]
        else:
            live = [*model.parameters(), *(b for b in model.buffers() if b is not None)]
            snap.modules = [
                (m, set(m._forward_pre_hooks), dict(m._parameters), dict(m._buffers), set(m.__dict__))
                for m in model.modules()
            ]
        unique = list({id(t): t for t in live}.values())  # tied weights are copied once
        spill = [t for t in unique if t.device.type == "cpu" and t.is_contiguous() and t.numel()]
        if sum(t.numel() * t.element_size() for t in spill) <= SPILL_BYTES or not snap._spill(spill):
            spill = []
        spilled = {id(t) for t, _ in snap.spilled}
        snap.tensors = [(t, t.detach().clone()) for t in unique if id(t) not in spilled]
        return snap

    def _spill(self, tensors: list[torch.Tensor]) -> bool:
        """Write `tensors` to one temporary file; False (and nothing kept) when the file cannot be written."""
        where = os.environ.get("HF_MPPRUNE_SNAPSHOT_DIR") or tempfile.gettempdir()
        offset, rows, path = 0, [], None
        try:
            fd, path = tempfile.mkstemp(prefix="hf_mpprune-snapshot-", dir=where)
            with os.fdopen(fd, "wb") as f:
                for t in tensors:
                    raw = t.detach().reshape(-1).view(torch.uint8).numpy()
                    raw.tofile(f)
                    rows.append((t, offset))
                    offset += raw.size
        except (OSError, RuntimeError, TypeError) as e:
            if path is not None:
                os.unlink(path)
            logger.warning("snapshot: could not write the weights' copy to %s (%s); keeping it in memory", where, e)
            return False
        self.spilled, self.path = rows, path
        logger.info("snapshot: %d tensors (%.1f MiB) spilled to %s", len(rows), offset / 2**20, path)
        return True

    @torch.no_grad()
    def restore(self) -> None:
        """Put every copied tensor back; remove the hooks, buffers and attributes added since `take` and put back
        parameters / buffers that were replaced by other objects."""
        for module, hooks, params, buffers, attrs in self.modules:
            for key in set(module._forward_pre_hooks) - hooks:
                del module._forward_pre_hooks[key]
            for table, saved in ((module._parameters, params), (module._buffers, buffers)):
                table.clear()
                table.update(saved)
            for key in set(module.__dict__) - attrs:
                del module.__dict__[key]
        for live, copy in self.tensors:
            live.copy_(copy)
        for live, offset in self.spilled:
            n = live.numel() * live.element_size()
            raw = torch.from_numpy(np.fromfile(self.path, dtype=np.uint8, count=n, offset=offset))
            live.copy_(raw.view(live.dtype).view(live.shape))
        self.discard()

    def discard(self) -> None:
        """Delete the spill file, if any (idempotent)."""
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            self.path = None


__all__ = ["SCOPES", "SPILL_BYTES", "Snapshot"]
