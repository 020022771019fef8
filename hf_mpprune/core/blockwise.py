"""Block-cached sequential calibration: the same layer-by-layer result as re-running the model up to every layer,
at a fraction of the forward cost.

The sequential convention (SparseGPT's, `sequential.sequential_apply`): each registered layer, in forward order, is
processed with the Hessian H = 2XᵀX/rows of its inputs on the model as already modified by the earlier layers.
Re-running the model up to every layer costs O(L²) layer forwards; here the inputs of the repeated transformer
blocks (the `nn.ModuleList` holding most registered layers) are cached once and the model advances one block at a
time on the cache, like llm-compressor's sequential pipeline:

* the block inputs `(args, kwargs)` of every calibration batch are captured once per kind of block (`replay`: rotary
  embeddings, attention masks, `position_ids` are shared by the blocks of one kind; Gemma-style models alternate
  kinds with their own masks); each block's output (on the already modified block) is replayed with its kind's
  keyword inputs as the next block's input. The batches are joined into one where they can be
  (`joined.join_batches`: padded text batches of different lengths are padded to the longest, the added positions
  masked), and then each block costs ONE forward, the layers being re-fitted inside it by hooks;
* otherwise layers fed the very same tensor (e.g. query / key / value) form one group with ONE Hessian, and each
  group costs one partial block forward that stops at its first layer;
* registered layers before / after the blocks (patch embedding, pooler, head) use the plain path.

Forwards run with `use_cache=False` (no KV cache). Before anything is modified, the cached chain of dense blocks
must reproduce on the first batch the inputs the real forward hands to every block (`torch.allclose`, rtol 1e-4);
models with non-tensor block state, interleaved blocks, or failing the check take the plain path (logged, kept in
`Timings.path`, written into the ledger). Hessians: float64 sums of `XᵀX` in `hessian_dtype`, real-token rows only.
"""

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from .blocktune import Augmented, check_dtypes, swapped_weights, tune_recorded
from .calibration import layer_input_rows, run_batches
from .errors import ConfigError
from .hessians import Hessian as _Hessian
from .hessians import dense_pass, outputs, partial
from .hessians import run_entry as _run
from .hessians import same_tensor as _same_tensor
from .joined import (
    StopForward,
    block_index,
    cache_block_inputs,
    find_blocks,
    first_tensor,
    forward_until_stop,
    hidden_of,
)
from .layers import PrunableLayer
from .refit import BlockTune
from .replay import block_kinds, call_for, simple_state
from .validate import check_finite


logger = logging.getLogger(__name__)


@dataclass
class Timings:
    """Seconds per phase of a sequential run (read by the methods into the ledger record)."""

    forward_s: float = 0.0  # calibration forwards (block chain, partial and plain forwards)
    hessian_s: float = 0.0  # XᵀX accumulation
    solve_s: float = 0.0  # the per-layer callbacks (mask choice and / or re-fit)
    path: str = ""
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        out = {
            "calibration_forwards_s": round(self.forward_s, 3),
            "hessians_s": round(self.hessian_s, 3),
            "layer_solves_s": round(self.solve_s, 3),
            "path": self.path,
        }
        out.update({k: round(v, 3) if isinstance(v, float) else v for k, v in self.extra.items()})
        return out


@dataclass
class BlockPlan:
    pre: list[PrunableLayer]
    blocks: list[nn.Module]
    groups: list[list[list[PrunableLayer]]]  # per block: groups sharing one input tensor, forward order
    post: list[PrunableLayer]
    kinds: list[int]  # per block: the first block taking the same keyword inputs (`replay.block_kinds`)


@torch.no_grad()
def plan(
    model: nn.Module, layers: list[PrunableLayer], batches: list[dict]
) -> tuple[list[PrunableLayer], BlockPlan | None, str]:
    """Forward order of `layers` and the block plan, or None with the reason for the plain path. The first batch
    runs through the whole model; the others (with a block list) only up to the first block — enough to raise
    on a batch that does not fit the model's inputs before anything changes."""
    order: list[PrunableLayer] = []
    same_as_previous: dict[str, bool] = {}  # the layer's first input IS the previous noted layer's (one group)
    last: list = [None]  # only the previous noted layer's input is held, never every layer's (memory)
    block_inputs: list[tuple] = []
    found = find_blocks(model, layers)
    layer_handles, block_handles = [], []

    def note(layer):
        def hook(mod, args):
            if layer.name not in same_as_previous:
                order.append(layer)
                b = args[0] if args and isinstance(args[0], torch.Tensor) else None
                same_as_previous[layer.name] = _same_tensor(last[0], b)
                last[0] = b

        return hook

    def grab(mod, args, kwargs):
        block_inputs.append((args, kwargs))

    try:
        layer_handles = [la.module.register_forward_pre_hook(note(la)) for la in layers]
        if found is not None:
            block_handles = [blk.register_forward_pre_hook(grab, with_kwargs=True) for blk in found[1]]
        run_batches(model, batches[:1])
        for h in block_handles:
            h.remove()
        block_handles = []
        if found is not None:

            def stop(mod, args):
                raise StopForward

            block_handles = [found[1][0].register_forward_pre_hook(stop)]
            for b in batches[1:]:
                try:
                    run_batches(model, [b])
                except StopForward:
                    pass
        else:
            run_batches(model, batches[1:])
    finally:
        for h in layer_handles + block_handles:
            h.remove()
        last[0] = None
    missing = [la.name for la in layers if la.name not in same_as_previous]
    if missing:
        raise ConfigError(
            f"calibration forwards never reached layer(s) {missing[:10]}: exclude them with ignore=[...] "
            "or pass inputs that exercise them"
        )
    if found is None:
        return order, None, "no repeated block list"
    prefix, blocks = found
    if len(block_inputs) != len(blocks):
        return order, None, f"{len(block_inputs)} block calls for {len(blocks)} blocks"
    pre, post, inner = [], [], []
    phase, last = 0, -1  # 0: before the blocks, 1: inside, 2: after
    for la in order:
        i = block_index(la.name, prefix)
        if i is None:
            if phase == 0:
                pre.append(la)
            else:
                phase = 2
                post.append(la)
        elif phase == 2 or i < last:
            return order, None, "forward order interleaves blocks and other layers"
        else:
            phase, last = 1, i
            inner.append((la, i))
    groups: list[list[list[PrunableLayer]]] = [[] for _ in blocks]
    for la, i in inner:  # inner layers are contiguous in `order`, so "previous" is g[-1][-1] whenever g is not empty
        g = groups[i]
        if g and same_as_previous[la.name]:
            g[-1].append(la)
        else:
            g.append([la])
    for args, kwargs in block_inputs:
        if first_tensor(args, kwargs) is None or not all(simple_state(v) for v in (*args, *kwargs.values())):
            return order, None, "blocks take non-tensor state (e.g. a KV cache) or no hidden-state tensor"
    args, kwargs = block_inputs[0]  # the chained dense blocks must reproduce every block's real input
    for i, blk in enumerate(blocks[:-1]):
        out = blk(*args, **kwargs)
        hidden = hidden_of(out)
        real = first_tensor(*block_inputs[i + 1])
        if not isinstance(hidden, torch.Tensor) or real.shape != hidden.shape:
            return order, None, f"block {i} output does not have block {i + 1}'s input shape"
        if not torch.allclose(real, hidden, rtol=1e-4, atol=1e-5):
            return order, None, f"block {i} output is not block {i + 1}'s input"
        args, kwargs = block_inputs[i + 1]
    kinds = block_kinds(block_inputs, getattr(getattr(model, "config", None), "layer_types", None))
    return order, BlockPlan(pre, blocks, groups, post, kinds), "blocks"


def _refit_inside_forward(
    tm: Timings, blk: nn.Module, groups, cache: list[tuple], dtype, call, dense: list | None = None
) -> list:
    """One forward of `blk` on the single cached batch; each group is handled by a pre-hook on its first layer
    (Hessian of the input it receives, then `call` for every layer of the group) before the forward goes on.
    Returns the block's output hidden state (a one-element list, one per cache entry)."""
    done: set[int] = set()

    def make(i, group):
        def hook(mod, args):
            if i in done:  # a module called twice in one forward: only its first call is the calibration input
                return
            done.add(i)
            acc = _Hessian(dtype, tm, dense[i] if dense is not None else None)
            acc.add(layer_input_rows(group[0], args[0].detach()))
            h, target = acc.value(group[0].name), acc.target()
            for la in group:
                call(la, h, target)

        return hook

    handles = [g[0].module.register_forward_pre_hook(make(i, g)) for i, g in enumerate(groups)]
    t0, h0, s0 = time.perf_counter(), tm.hessian_s, tm.solve_s
    try:
        out = _run(blk, cache[0])
    finally:
        for hd in handles:
            hd.remove()
    tm.forward_s += time.perf_counter() - t0 - (tm.hessian_s - h0) - (tm.solve_s - s0)
    if len(done) != len(groups):
        missing = [g[0].name for i, g in enumerate(groups) if i not in done]
        raise ConfigError(f"calibration forwards never reached layer(s) {missing[:10]}")
    return [hidden_of(out)]


def _block_hessians(
    tm: Timings, blk: nn.Module, groups, cache: list[tuple], dtype, call, granularity: str, dense: list | None = None
) -> None:
    """`call` every layer of `blk` with its group's Hessian: from ONE forward of the block as reached
    (`granularity="block"`), or group by group, each from a partial block forward on the already rewritten
    earlier groups."""
    if granularity == "block":
        accs = [_Hessian(dtype, tm, dense[i] if dense is not None else None) for i in range(len(groups))]
        handles = [
            g[0].module.register_forward_pre_hook(
                lambda mod, args, acc=acc, la=g[0]: acc.add(layer_input_rows(la, args[0].detach()))
            )
            for g, acc in zip(groups, accs)
        ]
        t0, h0 = time.perf_counter(), tm.hessian_s
        try:
            for entry in cache:
                _run(blk, entry)
        finally:
            for hd in handles:
                hd.remove()
        tm.forward_s += time.perf_counter() - t0 - (tm.hessian_s - h0)
        hs = [(acc.value(g[0].name), acc.target()) for g, acc in zip(groups, accs)]
        for group, (h, target) in zip(groups, hs):
            for la in group:
                call(la, h, target)
        return
    for i, group in enumerate(groups):
        acc = _Hessian(dtype, tm, dense[i] if dense is not None else None)

        def forwards():
            for entry in cache:
                try:
                    _run(blk, entry)
                except StopForward:
                    pass

        partial(tm, group[0], acc, forwards)
        h, target = acc.value(group[0].name), acc.target()
        for la in group:
            call(la, h, target)


@torch.no_grad()
def block_sequential(
    model: nn.Module,
    layers: list[PrunableLayer],
    batches: Iterable[dict],
    on_layer: Callable[[PrunableLayer, torch.Tensor], None],
    *,
    hessian_dtype: torch.dtype = torch.float64,
    timings: Timings | None = None,
    granularity: str = "layer",
    dense_target: bool = False,
    tune: BlockTune | None = None,
    dense_weights: dict[str, torch.Tensor] | None = None,
) -> Timings:
    """Call `on_layer(layer, H)` for every layer of `layers` in forward order, H from the current model.

    `on_layer` may rewrite the layer's weight; later layers see the rewritten upstream. Layers of one input group
    share H (their input is one tensor, which no rewrite inside the group can change). Returns the timings.
    `granularity="block"` (llm-compressor's convention): inside a transformer block every Hessian comes from ONE
    forward of the block as it was when the block was reached (earlier blocks already rewritten), so a block costs
    2 block forwards instead of (groups + 1); results differ from the layer-sequential default.

    Joined batches: when the batches can be joined (`joined.join_batches`, padded text batches of any lengths
    included) and the dense first block gives the same real-token rows on the joined batch as on its first and last
    batch, all batches run as ONE, and the layer-sequential default costs ONE forward per block: a pre-hook on each
    group's first layer builds the group's Hessian from the input it receives and re-fits the group before the
    forward goes on (later groups see the rewritten earlier ones; the output is the next block's input). Same
    results up to float rounding; `Timings.extra` records it (and `block_kinds` when blocks take more than one
    kind of keyword inputs).

    `dense_target=True` (`refit_target="dense"`): every block also runs once, still dense, on the DENSE model's
    block inputs (a second cache, advanced by the dense blocks), and the layers inside the blocks are called as
    `on_layer(layer, H, target)` with a `refit.DenseTarget` of their dense-model inputs (layers before / after the
    blocks keep `on_layer(layer, H)`). Only on the block-cached path: a model that takes the plain path raises
    `ConfigError` before anything changes.

    `tune` (`block_epochs`): once a block's layers are done, `blocktune.tune_block` fits the block's kept weights to
    the dense model's output of the block (the dense cache as above; batches are not joined, so each calibration
    batch is one Adam step); the tuned block's output is the next block's input. Block-cached path only. With
    `dense_weights` ({name: weight}, CAST) the dense model's block inputs / outputs use these weights swapped in.
    """
    tm = timings if timings is not None else Timings()
    batches = list(batches)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def call(layer, h, target=None):
        check_finite(h, f"calibration statistics (Hessian) of layer {layer.name!r}")
        t = time.perf_counter()
        if target is None:
            on_layer(layer, h)
        else:
            on_layer(layer, h, target)
        tm.solve_s += time.perf_counter() - t

    def plain(layer):
        acc = _Hessian(hessian_dtype, tm)
        partial(tm, layer, acc, lambda: forward_until_stop(model, batches, device))
        call(layer, acc.value(layer.name))

    try:
        t0 = time.perf_counter()
        order, pl, why = plan(model, layers, batches)
        tm.forward_s += time.perf_counter() - t0
        if pl is None and (dense_target or tune):
            raise ConfigError(
                f"{'refit_target=dense' if dense_target else 'block_epochs'} needs the block-cached calibration path, "
                f"and this model takes the plain one ({why}); use {'refit_target=sequential' if dense_target else 'block_epochs=0'}"
            )
        check_dtypes([la.module.weight for groups in pl.groups for g in groups for la in g] if tune else [])
        dense_cache = dense_target or bool(tune)
        if pl is None:
            tm.path = f"plain ({why})"
            logger.info("sequential calibration: plain path, one partial model forward per layer (%s)", why)
            for la in order:
                plain(la)
            return tm
        tm.path = "blocks"
        dcache = None
        if dense_cache and pl.pre:  # the dense model's first block inputs, before the layers ahead of it change
            t0 = time.perf_counter()
            with swapped_weights(pl.pre, dense_weights):
                dcache = list(cache_block_inputs(model, pl.blocks, pl.kinds, batches, join=not tune)[0][0])
            tm.forward_s += time.perf_counter() - t0
        for la in pl.pre:
            plain(la)
        t0 = time.perf_counter()
        calls, joined = cache_block_inputs(model, pl.blocks, pl.kinds, batches, join=not tune)
        tm.extra.update({"joined_batches": joined} if joined else {})
        tm.extra.update({"block_kinds": len(calls)} if len(calls) > 1 else {})
        cache = list(calls[0])
        tm.forward_s += time.perf_counter() - t0
        logger.info(
            "sequential calibration: cached block inputs, %d blocks (%d kind(s) of keyword inputs), %d batch(es)%s",
            len(pl.blocks), len(calls), len(cache), " joined" if joined else "",
        )  # fmt: skip
        if dense_cache:
            dcache = dcache if dcache is not None else list(cache)
            if len(dcache) != len(cache):
                raise ConfigError("the dense and current block caches hold different batches")
            tm.extra.update({"refit_target": "dense"} if dense_target else {})
        aug = Augmented(tune, calls, pl.kinds, cache, dcache)  # `block_augment` copies (none without it)
        for i, (blk, groups) in enumerate(zip(pl.blocks, pl.groups)):
            last = i + 1 == len(pl.blocks)
            dense = dhidden = None
            with swapped_weights([la for g in groups for la in g], dense_weights):  # the block's dense run
                if dense_target:
                    dense, dhidden = dense_pass(tm, blk, groups, dcache, hessian_dtype)
                elif tune:
                    dhidden = outputs(tm, blk, dcache)
                if tune:
                    aug.dense(tm, blk, i)
            if dense_cache:
                dcache = [] if last else [call_for(calls, pl.kinds, i + 1, b, h) for b, h in enumerate(dhidden)]
            if granularity == "layer" and len(cache) == 1:
                hidden = _refit_inside_forward(tm, blk, groups, cache, hessian_dtype, call, dense)
            else:
                _block_hessians(tm, blk, groups, cache, hessian_dtype, call, granularity, dense)
                hidden = [] if last or tune else outputs(tm, blk, cache)
            if tune:  # the block's output after the tuning is the next block's input
                hidden = tune_recorded(tm.extra, blk, [la for g in groups for la in g], cache, dhidden, tune, aug, i)
            cache = [] if last else [call_for(calls, pl.kinds, i + 1, b, h) for b, h in enumerate(hidden)]
        calls.clear()
        for la in pl.post:
            plain(la)
        return tm
    finally:
        model.train(was_training)


__all__ = ["BlockPlan", "Timings", "block_sequential", "find_blocks", "plan"]
