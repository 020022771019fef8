"""Calibration statistics of one layer group in the block-cached pass (`blockwise`): the Hessian accumulator (with
the dense-target statistics of `refit_target="dense"`), the dense pass of a block, and the shared-input test."""

import time

import torch
from torch import nn

from .calibration import layer_input_rows, real_tokens
from .errors import ConfigError
from .joined import StopForward, hidden_of
from .refit import DenseTarget


def run_entry(blk: nn.Module, entry: tuple):
    """`blk` on one cache entry (args, kwargs, token mask): padded positions stay out of the statistics."""
    args, kwargs, mask = entry
    with real_tokens(mask):
        return blk(*args, **kwargs)


def same_tensor(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """`b` is the very tensor `a` (same storage, layout and values): the two layers share one input."""
    return (
        a is not None and b is not None and a.data_ptr() == b.data_ptr() and a.shape == b.shape
        and a.stride() == b.stride() and a.dtype == b.dtype and torch.equal(a, b)
    )  # fmt: skip


class Hessian:
    """float64 accumulator of XᵀX; products in `dtype`. With `dense` (the layer's input rows in the dense model, one
    tensor per `add` call, in call order) also of X_dᵀX and X_dᵀX_d (`target`, `refit_target="dense"`)."""

    def __init__(self, dtype: torch.dtype, tm, dense: list[torch.Tensor] | None = None):
        self.dtype, self.tm, self.xtx, self.rows = dtype, tm, None, 0
        self.dense, self.cross, self.dense_h, self.calls = dense, None, None, 0

    def add(self, rows: torch.Tensor) -> None:
        t = time.perf_counter()
        x = rows.to(self.dtype)
        xtx = (x.T @ x).double()
        self.xtx = xtx if self.xtx is None else self.xtx + xtx
        if self.dense is not None:
            k, self.calls = self.calls, self.calls + 1
            d = self.dense[k] if k < len(self.dense) else None
            if d is None or d.shape != x.shape:
                raise ConfigError(
                    "refit_target='dense': the dense model's inputs of a layer do not match its current inputs "
                    f"(call {k}: {None if d is None else tuple(d.shape)} vs {tuple(x.shape)}); use the sequential target"
                )  # fmt: skip
            cross, dh = (d.T @ x).double(), (d.T @ d).double()
            self.cross = cross if self.cross is None else self.cross + cross
            self.dense_h = dh if self.dense_h is None else self.dense_h + dh
        self.rows += x.shape[0]
        self.tm.hessian_s += time.perf_counter() - t

    def target(self) -> DenseTarget | None:
        if self.dense is None:
            return None
        scale = 2.0 / max(1, self.rows)
        return DenseTarget(scale * self.cross.cpu(), scale * self.dense_h.cpu())

    def value(self, name: str) -> torch.Tensor:
        if self.xtx is None:
            raise ConfigError(f"calibration forwards never reached layer {name!r}")
        return 2.0 * self.xtx.cpu() / max(1, self.rows)


def dense_pass(tm, blk: nn.Module, groups, cache: list[tuple], dtype) -> tuple[list, list]:
    """`blk` (still dense) on the dense model's cache: per group, the input rows of its first layer (first call per
    entry, in `dtype`), and the block's output per entry (the dense model's next block input)."""
    rows: list[list[torch.Tensor]] = [[] for _ in groups]
    seen: set[int] = set()

    def make(i, la):
        def hook(mod, args):
            if i not in seen:
                seen.add(i)
                rows[i].append(layer_input_rows(la, args[0].detach()).to(dtype))

        return hook

    handles = [g[0].module.register_forward_pre_hook(make(i, g[0])) for i, g in enumerate(groups)]
    t0, out = time.perf_counter(), []
    try:
        for entry in cache:
            seen.clear()
            out.append(hidden_of(run_entry(blk, entry)))
    finally:
        for hd in handles:
            hd.remove()
    tm.forward_s += time.perf_counter() - t0
    return rows, out


def partial(tm, layer, acc: Hessian, forwards) -> None:
    """Run `forwards` with a hook on `layer` that feeds `acc` and stops the forward; time it."""

    def hook(mod, args):
        acc.add(layer_input_rows(layer, args[0].detach()))
        raise StopForward

    handle = layer.module.register_forward_pre_hook(hook)
    t0, h0 = time.perf_counter(), tm.hessian_s
    try:
        forwards()
    finally:
        handle.remove()
    tm.forward_s += time.perf_counter() - t0 - (tm.hessian_s - h0)


def outputs(tm, blk: nn.Module, cache: list[tuple]) -> list[torch.Tensor]:
    """The hidden state `blk` outputs on every cache entry (the next block's input)."""
    t0 = time.perf_counter()
    out = [hidden_of(run_entry(blk, entry)) for entry in cache]
    tm.forward_s += time.perf_counter() - t0
    return out


__all__ = ["Hessian", "dense_pass", "outputs", "partial", "run_entry", "same_tensor"]
