"""The streamed global selection (`keep_top_streamed`): the same masks to the bit as `keep_top` on the materialised
scores, and for mp-wanda the same masks as the former all-in-memory algorithm, while holding one layer's scores at a
time (docs/algorithms.md §18.2)."""

import copy
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hf_mpprune import MPPruner, PruningConfig
from hf_mpprune.core.masks import keep_top, keep_top_streamed
from hf_mpprune.methods import mp_wanda as mp_wanda_module
from tests import tiny_models as tm


pytestmark = pytest.mark.usefixtures("one_thread")


def tied_scores(dtype, shapes, seed) -> list[torch.Tensor]:
    """Scores on a coarse grid (many ties), some entries forced to -1, some -0.0 / +0.0 / +inf / other negatives."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape in shapes:
        s = torch.randint(0, 6, shape, generator=g).to(torch.float64) / 4
        u = torch.rand(shape, generator=g)
        s[u < 0.15] = -1.0
        s[(u >= 0.15) & (u < 0.2)] = -0.0
        s[(u >= 0.2) & (u < 0.22)] = float("inf")
        s[(u >= 0.22) & (u < 0.25)] = -2.5
        out.append(s.to(dtype))
    return out


def streamed(scores: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    return keep_top_streamed([lambda t=t: t for t in scores], [t.numel() for t in scores], k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shapes", [[(7, 5), (3,), (2, 3, 4), (1, 1)], [(40, 30)], [(0, 4), (9, 9), (6, 2)]])
def test_streamed_equals_keep_top(dtype, shapes):
    for seed in range(5):
        scores = tied_scores(dtype, shapes, seed)
        total = sum(t.numel() for t in scores)
        forced = sum(int((t == -1).sum()) for t in scores)
        for k in sorted({0, 1, forced, forced + 1, total // 3, total // 2, total - 1, total}):
            want, got = keep_top(scores, k), streamed(scores, k)
            assert [g.shape for g in got] == [t.shape for t in scores]
            assert all(torch.equal(a, b) for a, b in zip(want, got)), (dtype, shapes, seed, k)
            assert sum(int((~m).sum()) for m in got) == k


def test_streamed_ties_go_in_concatenation_order():
    scores = [torch.tensor([[0.5, 0.5], [0.5, 0.1]]), torch.tensor([0.5, -1.0, 0.5])]
    got = streamed(scores, 4)  # -1, 0.1, then the first two 0.5 in layer order, row-major
    assert got[0].tolist() == [[False, False], [True, False]] and got[1].tolist() == [True, False, True]


def test_streamed_rejects_bad_counts():
    scores = [torch.ones(3, 2)]
    with pytest.raises(ValueError, match="cannot prune 7 of 6"):
        streamed(scores, 7)
    with pytest.raises(ValueError, match="cannot prune -1"):
        streamed(scores, -1)
    with pytest.raises(ValueError, match="returned 6 entries where numels says 5"):
        keep_top_streamed([lambda: scores[0]], [5], 2)


def test_streamed_holds_one_layer_at_a_time():
    """Each score function makes a fresh tensor; never more than one of them is alive during the selection."""
    live, peak = [0], [0]

    def make(i):
        def fn():
            t = torch.arange(100, dtype=torch.float32).reshape(10, 10) % (7 + i)
            live[0] += 1
            peak[0] = max(peak[0], live[0])
            weakref.finalize(t, lambda: live.__setitem__(0, live[0] - 1))
            return t

        return fn

    fns = [make(i) for i in range(6)]
    want = keep_top([fn() for fn in fns], 250)
    assert peak[0] == 6  # the materialised list: every layer alive at once (the tracker sees it)
    live[0], peak[0] = 0, 0
    got = keep_top_streamed(fns, [100] * 6, 250)
    assert peak[0] == 1 and all(torch.equal(a, b) for a, b in zip(want, got))


# ---- mp-wanda: the former algorithm, kept here as the reference ------------------------------------------------
def former_mp_wanda_global(layers, sq, weights, previous, sparsity) -> dict[str, torch.Tensor]:
    """The pre-streaming mapping: all float64 Wanda scores, each / its row mean / w_l as float32, cumulative -1,
    then `keep_top` over the concatenation."""
    scores = []
    for la in layers:
        s = la.matrix_view().detach().cpu().double().abs() * sq[la.name].sqrt().unsqueeze(0)
        s = la.from_matrix((s / s.mean(1, keepdim=True).clamp_min(1e-30) / weights[la.name]).float())
        if previous is not None:
            s = s.masked_fill(~previous[la.name].cpu(), -1.0)
        scores.append(s)
    keeps = keep_top(scores, int(sparsity * sum(t.numel() for t in scores)))
    return {la.name: k for la, k in zip(layers, keeps)}


def test_mp_wanda_global_masks_identical_to_former_algorithm(tiny_vit, monkeypatch):
    seen = []
    real = mp_wanda_module.input_sq_norms
    monkeypatch.setattr(mp_wanda_module, "input_sq_norms", lambda *a: seen.append(real(*a)) or seen[-1])
    torch.manual_seed(1)
    cal = [tm.vit_inputs(batch=4) for _ in range(2)]
    pruner = MPPruner(tiny_vit, PruningConfig(method="mp-wanda", sparsity=0.5, seed=3))
    dense = {la.name: la.weight.detach().clone() for la in pruner.layers}
    previous = None
    for s in (0.5, 0.7):  # the second cycle has entries forced to -1 by the first
        before = {la.name: la.weight.detach().clone() for la in pruner.layers}
        masks = pruner.prune(calibration=cal, sparsity=s)
        weights = pruner.ledger.steps[-1]["mp_wanda"]["layer_weights"]
        assert len(set(weights.values())) > 1  # β = -0.25: the layers really are weighted differently
        with torch.no_grad():  # the reference scores the weights the method saw
            for la in pruner.layers:
                la.weight.copy_(before[la.name])
        want = former_mp_wanda_global(pruner.layers, seen[-1], weights, previous, s)
        masks.apply_(pruner.model)
        assert all(torch.equal(masks[n], want[n]) for n in want), s
        previous = masks
    assert any(not torch.equal(dense[n], before[n]) for n in dense)  # the second cycle saw pruned weights


@pytest.mark.parametrize("mapping", ["layer", "kn"])
def test_mp_wanda_other_mappings_identical_to_former_scores(mapping, monkeypatch):
    """GPT-2 (Conv1D weights, transposed matrix view): the per-layer scores made on demand, in place, are the former
    float64 scores to the bit, and the `layer` / k:n masks are the former ones."""
    from hf_mpprune.methods.common import kn_prune, rows_keep, wanda_score

    seen = []
    real = mp_wanda_module.input_sq_norms
    monkeypatch.setattr(mp_wanda_module, "input_sq_norms", lambda *a: seen.append(real(*a)) or seen[-1])
    opts = {"mapping": "layer"} if mapping == "layer" else {"pattern": "2:4"}
    pruner = MPPruner(tm.tiny_gpt2(), PruningConfig.from_dict({"method": "mp-wanda", "sparsity": 0.5, **opts}))
    dense = {la.name: la.weight.detach().clone() for la in pruner.layers}
    masks = pruner.prune(calibration=[tm.lm_inputs(batch=4)])
    rec = pruner.ledger.steps[-1]["mp_wanda"]
    assert any(la.kind == "conv1d" for la in pruner.layers)
    for la in pruner.layers:
        former = la.matrix_view(dense[la.name]).double().abs() * seen[0][la.name].sqrt().unsqueeze(0)
        if mapping == "layer":
            keep = rows_keep(former, rec["layer_counts"][la.name], None)
        else:
            keep = kn_prune(former, pruner.config.pattern)
        assert torch.equal(masks[la.name], la.from_matrix(keep)), la.name
        with torch.no_grad():
            la.weight.copy_(dense[la.name])
        assert torch.equal(wanda_score(la, seen[0][la.name]), former)


def test_seb_masks_identical_to_materialised_selection(tiny_vit):
    pruner = MPPruner(copy.deepcopy(tiny_vit), PruningConfig(method="seb", sparsity=0.6))
    masks = pruner.prune()
    weights = pruner.ledger.steps[-1]["seb"]["layer_weights"]
    scores = [tiny_vit.get_submodule(n).weight.detach().abs() / weights[n] for n in pruner.layers.names]
    want = keep_top(scores, int(0.6 * sum(t.numel() for t in scores)))
    assert all(torch.equal(masks[n], k) for n, k in zip(pruner.layers.names, want))


# ---- memory: bytes of live tensors made after the calibration forwards ------------------------------------------
class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the storages created by torch ops while active and still referenced by a tensor (views and
    in-place results share their input's storage and count once; storages made before, e.g. weights, never)."""

    def __init__(self):
        super().__init__()
        self.holders: dict[int, int] = {}
        self.nbytes: dict[int, int] = {}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                self._hold(t, inputs)
        return out

    def _hold(self, t: torch.Tensor, inputs: set[int]) -> None:
        key = t.untyped_storage().data_ptr()
        if key not in self.holders:
            if key in inputs or key == 0:  # a view of something made before the tracking
                return
            self.holders[key], self.nbytes[key] = 0, t.untyped_storage().nbytes()
            self.now += self.nbytes[key]
            self.peak = max(self.peak, self.now)
        self.holders[key] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        self.holders[key] -= 1
        if not self.holders[key]:
            self.now -= self.nbytes.pop(key)
            del self.holders[key]


def test_mp_wanda_global_selection_memory_is_one_layer_plus_masks(monkeypatch):
    """Four ViT blocks: P = 524288 weights, the largest layer 32768. The former algorithm held every float64 score,
    then the float32 scores and their concatenation (this tracker counted a 5.2 MB peak, above the bound); the streamed
    one holds the bool masks (1 B per weight), one layer's work buffers and two int64 histograms of 2^16 bins (1 MiB
    whatever the model's size)."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=32, patch_size=4, num_channels=3, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=256, num_labels=10,
    )  # fmt: skip
    model = ViTForImageClassification(cfg).eval()
    tracker = LiveTensorBytes()
    real = mp_wanda_module.input_sq_norms

    def norms_then_track(*args):
        out = real(*args)
        tracker.__enter__()  # from here on: the score mapping and the global selection
        return out

    monkeypatch.setattr(mp_wanda_module, "input_sq_norms", norms_then_track)
    pruner = MPPruner(model, PruningConfig(method="mp-wanda", sparsity=0.5))
    try:
        pruner.prune(calibration=[tm.vit_inputs(batch=4)])
    finally:
        tracker.__exit__(None, None, None)
    total, largest = pruner.layers.total_params, max(la.numel for la in pruner.layers)
    assert total == 524288 and largest == 32768
    assert tracker.peak > total  # the tracker sees the masks themselves
    assert tracker.peak <= total + 40 * largest + 2 * 8 * 2**16, (tracker.peak, total, largest)
