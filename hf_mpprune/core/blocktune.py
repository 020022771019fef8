"""Block output reconstruction after a block's layers are pruned (docs/algorithms.md §18.11).

Each layer's re-fit (or ALPS) is a least-squares problem of that layer alone: what a transformer block does between
its layers (softmax attention, the activation, normalisation) and the error of the blocks before it stay outside.
This step closes that gap without labels and without touching the mask: once every registered layer of a block is
pruned, the block's kept weights (and the biases of those layers) take `epochs` passes of Adam over the calibration
batches, minimising the mean squared distance between

* the pruned block's output on its inputs in the PRUNED model (the earlier blocks already pruned and tuned), and
* the DENSE model's output of the same block on the dense model's inputs,

over real (unpadded) token positions. A block whose loss over the calibration batches does not fall keeps its
weights from before the step. Gradients of pruned entries are zeroed and pruned entries are written back to 0
after every step, so the mask, the exact sparsity and any k:n pattern are unchanged (an entry that is exactly 0 when
the step starts counts as pruned). Uses: calibration activations of the pruned and the dense model,
back-propagation through one block at a time (nothing else of the model needs gradients), no labels. In the spirit
of block-wise reconstruction after one-shot pruning (EBFT, Guo et al. 2024); written from that description.
"""

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from .errors import ConfigError
from .hessians import outputs, run_entry
from .joined import first_tensor, hidden_of
from .refit import BlockTune
from .replay import call_for


__all__ = ["AUGMENT_RATE", "Augmented", "check_dtypes", "swapped_weights", "tune_block", "tune_recorded"]

AUGMENT_RATE = 0.15  # share of a row's inner real positions replaced in each augmented copy (`block_augment`)


def check_dtypes(params: list[torch.Tensor]) -> None:
    """Adam steps of ~1e-3 vanish in 16-bit weights: refuse before anything changes."""
    low = sorted({str(p.dtype) for p in params if p.dtype not in (torch.float32, torch.float64)})
    if low:
        raise ConfigError(
            f"block_epochs needs float32 (or float64) weights; this model has {low}: load it in float32 to prune, "
            "or set block_epochs=0"
        )


@contextmanager
def swapped_weights(layers: list, weights: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
    """Inside the block, the layers named in `weights` carry those weights (the model the step aims at, when the
    method has already written its own weights, as CAST does); their current weights are put back on exit. No-op
    when `weights` is None."""
    saved = []
    try:
        with torch.no_grad():
            for la in layers if weights else ():
                if la.name in weights:
                    saved.append((la, la.module.weight.detach().clone()))
                    la.module.weight.copy_(weights[la.name])
        yield
    finally:
        with torch.no_grad():
            for la, w in saved:
                la.module.weight.copy_(w)


def _inner_real(h: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(real positions, real positions other than each row's first and last) of a (batch, tokens, ...) input."""
    real = torch.ones(h.shape[:2], dtype=torch.bool) if mask is None else mask.to(torch.bool).cpu()
    run = real.long().cumsum(1)
    return real, real & (run > 1) & (run < real.sum(1, keepdim=True))


class Augmented:
    """The augmented copies of `block_augment` (`BlockTune.augment`), carried through the sequential pass beside the
    calibration cache: copy c of batch b has `AUGMENT_RATE` of its inner real positions of the FIRST block's input
    replaced by the first-block input at random real positions of all the calibration batches (the same positions
    and sources in the pruned model's cache and the dense model's). Block by block, `dense` replaces the dense copies by
    the dense block's output on them (the tuning targets, and the next block's dense inputs) and `entries` gives
    the pruned copies as block calls; `advance` takes the tuned block's outputs on them."""

    def __init__(self, tune: BlockTune | None, calls: dict, kinds: list[int], cache: list, dcache: list):
        self.calls, self.kinds, self.index, self.hidden, self.dhidden = calls, kinds, [], [], []
        if not tune or not tune.augment:
            return
        g = torch.Generator().manual_seed(tune.seed)
        hs, ds = [first_tensor(a, k) for a, k, _ in cache], [first_tensor(a, k) for a, k, _ in dcache]
        if any(h is None or h.dim() != 3 for h in hs):
            shape = next((tuple(h.shape) for h in hs if h is not None), None)
            raise ConfigError(
                f"block_augment replaces token positions of a (batch, tokens, hidden) block input; this model's first "
                f"block takes {shape}: set block_augment=0"
            )
        real = [_inner_real(h, e[2]) for h, e in zip(hs, cache)]
        pool, dpool = (torch.cat([h[r.to(h.device)] for h, (r, _) in zip(x, real)]) for x in (hs, ds))
        for _ in range(tune.augment):
            for b, (h, d, (_, inner)) in enumerate(zip(hs, ds, real)):
                pick = inner & (torch.rand(inner.shape, generator=g) < AUGMENT_RATE)
                src = torch.randint(len(pool), (int(pick.sum()),), generator=g).to(pool.device)
                h, d, pick = h.clone(), d.clone(), pick.to(h.device)
                h[pick], d[pick] = pool[src], dpool[src]
                self.index.append(b), self.hidden.append(h), self.dhidden.append(d)

    def dense(self, tm, blk: nn.Module, i: int) -> None:
        """Run block `i` (as it now is: dense, or with the source weights swapped in) on the dense copies."""
        self.dhidden = outputs(tm, blk, self._calls(i, self.dhidden))

    def entries(self, i: int) -> list[tuple]:
        return self._calls(i, self.hidden)

    def _calls(self, i: int, hidden: list[torch.Tensor]) -> list[tuple]:
        """Block `i`'s calls on the copies (each with its source batch's keyword inputs) with `hidden` as input."""
        return [call_for(self.calls, self.kinds, i, b, h) for b, h in zip(self.index, hidden)]

    def advance(self, outs: list[torch.Tensor]) -> None:
        self.hidden = outs


def _loss(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error over the real token positions (all positions when `mask` is None)."""
    d = (out - target).pow(2)
    if mask is None or d.dim() < 3 or tuple(mask.shape) != tuple(d.shape[:2]):
        return d.mean()
    return d[mask.to(torch.bool)].mean()


def _evaluate(blk: nn.Module, cache: list[tuple], targets: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
    """The mean loss over the cache entries, and the block's output on each (the next block's input)."""
    with torch.no_grad():
        outs = [hidden_of(run_entry(blk, e)) for e in cache]
        return sum(float(_loss(o, y, e[2])) for o, y, e in zip(outs, targets, cache)) / len(cache), outs


def _steps(blk, cache, targets, weights, keep, opt, epochs: int, schedule: str = "constant") -> None:
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(cache)) if schedule == "cosine" else None
    for _ in range(epochs):
        for entry, y in zip(cache, targets):
            loss = _loss(hidden_of(run_entry(blk, entry)), y, entry[2])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for w, k in zip(weights, keep):
                w.grad.mul_(k)
            opt.step()
            with torch.no_grad():
                for w, k in zip(weights, keep):
                    w.mul_(k)
            if decay is not None:
                decay.step()


def tune_block(blk: nn.Module, layers: list, cache: list[tuple], targets: list[torch.Tensor], tune: BlockTune) -> dict:
    """Adam on the kept weights of `layers` (the block's registered layers, already pruned) and their biases, so that
    `blk` on each cache entry gives the matching `targets` tensor. The block keeps the tuned weights only when they
    lower the loss over all the calibration batches; otherwise its weights are put back. Returns {"loss_before",
    "loss_after", "kept", "seconds", "outputs"} (`loss_after` and `outputs`, the block's output on every cache
    entry, of the weights the block ends with)."""
    t0 = time.perf_counter()
    weights = [la.module.weight for la in layers]
    biases = [b for b in (getattr(la.module, "bias", None) for la in layers) if isinstance(b, nn.Parameter)]
    params = weights + biases
    keep = [w.detach() != 0 for w in weights]
    flags, saved = [p.requires_grad for p in params], [p.detach().clone() for p in params]
    before, outs_before = _evaluate(blk, cache, targets)
    try:
        with torch.enable_grad():
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam(params, lr=tune.lr)
            _steps(blk, cache, targets, weights, keep, opt, tune.epochs, tune.schedule)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)
            p.grad = None
    after, outs = _evaluate(blk, cache, targets)
    kept = after < before
    if not kept:
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        after, outs = before, outs_before
    return {"loss_before": before, "loss_after": after, "kept": kept, "seconds": time.perf_counter() - t0,
            "outputs": outs}  # fmt: skip


def tune_recorded(
    extra: dict, blk: nn.Module, layers: list, cache: list, targets: list, tune: BlockTune, aug: Augmented, i: int
) -> list:
    """`tune_block` on `cache` and block `i`'s augmented copies (`aug`), with its seconds and its (before, after) loss
    appended to `extra["block_tune"]` (the sequential pass's timings record, written into the ledger). Returns the
    block's outputs on `cache` (those on the copies go to `aug.advance`)."""
    got = tune_block(blk, layers, cache + aug.entries(i), targets + aug.dhidden, tune)
    aug.advance(got["outputs"][len(cache) :])
    got["outputs"] = got["outputs"][: len(cache)]
    rec = extra.setdefault("block_tune", {"epochs": tune.epochs, "lr": tune.lr, "seconds": 0.0, "loss": []})
    rec.update({"augment": tune.augment, "augmented_batches": len(aug.index)} if tune.augment else {})
    rec.update({"schedule": tune.schedule} if tune.schedule != "constant" else {})
    rec["seconds"] = round(rec["seconds"] + got["seconds"], 3)
    rec["loss"].append([round(got["loss_before"], 8), round(got["loss_after"], 8)])
    rec["blocks_kept"] = rec.get("blocks_kept", 0) + int(got["kept"])
    return got["outputs"]
