"""All-or-nothing pruning: what a method may write is copied before it runs and put back if anything fails.

`MPPruner.prune` is the one place that uses it, for every registered method: `Snapshot.take(model, layers, scope)`
before the method, `restore()` on any exception (the method's own, a failed check after it, Ctrl-C). Scopes:

- `"layers"`: the weight of every registered layer (what one-shot and k:n methods write: masks applied, OBS
  updates, re-fits, CAST projections);
- `"model"`: every parameter and buffer of the model, plus the forward pre-hooks, buffers and instance attributes
  that modules gained during the call (what training methods such as SER write, and CAST's channel permutations,
  which also permute producer biases / norms and may attach a runtime gather hook).

Tensors are copied in place on restore (`copy_`), so references held by the caller (an optimizer, a teacher
comparison) stay valid. The copy lives on the tensor's own device, as one dense copy of what is in scope.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import ConfigError
from .layers import LayerSet


SCOPES = ("layers", "model")


@dataclass
class Snapshot:
    """Copies of the tensors in scope and, for scope "model", the module structure to prune back to."""

    tensors: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (live tensor, copy)
    modules: list[tuple[nn.Module, set, dict, dict, set]] = field(default_factory=list)  # hooks, params, bufs, attrs

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
        seen: set[int] = set()
        for t in live:
            if id(t) not in seen:  # tied weights are copied once
                seen.add(id(t))
                snap.tensors.append((t, t.detach().clone()))
        return snap

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


__all__ = ["SCOPES", "Snapshot"]
