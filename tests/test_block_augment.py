"""`block_augment`: corrupted copies of the calibration batches as extra training data of the block step. Known
truths: only inner real positions of the first block's input change, by the same replacement in the pruned and
the dense cache, at the documented rate, reproducibly per seed; the copies reach the step (ledger, weights), the
mask and exact sparsity stay; the option is refused where it would do nothing."""

import copy
import math

import pytest
import torch

from hf_mpprune import ConfigError, PruningConfig
from hf_mpprune.core.blocktune import AUGMENT_RATE, Augmented
from hf_mpprune.core.layers import discover_layers
from hf_mpprune.core.refit import BlockTune
from tests import tiny_models as tm
from tests.test_block_tune import LR, _error, _run


pytestmark = pytest.mark.usefixtures("one_thread")


def _cache(seed=0, rows=64, tokens=40, dim=8):
    """Two fake block-0 caches (args, kwargs, mask): right-padded rows; the dense cache is 2 × the pruned one."""
    g = torch.Generator().manual_seed(seed)
    cache, dcache = [], []
    for _ in range(2):
        h = torch.randn(rows, tokens, dim, generator=g)
        lengths = torch.randint(3, tokens + 1, (rows,), generator=g)
        mask = (torch.arange(tokens)[None] < lengths[:, None]).long()
        cache.append(((h,), {"attention_mask": mask}, mask))
        dcache.append(((2 * h,), {"attention_mask": mask}, mask))
    return cache, dcache


def test_only_inner_real_positions_change_the_same_way_in_both_caches():
    cache, dcache = _cache()
    calls = {0: cache}
    aug = Augmented(BlockTune(1, 1e-3, augment=3, seed=5), calls, [0], cache, dcache)
    assert aug.index == [0, 1] * 3 and len(aug.hidden) == len(aug.dhidden) == 6
    pool = torch.cat([e[0][0][e[2].bool()] for e in cache])
    changed = inner_total = 0
    for b, h, d in zip(aug.index, aug.hidden, aug.dhidden):
        (orig,), _, mask = cache[b]
        assert torch.equal(d, 2 * h)  # same positions, same sources, in the pruned and the dense copy
        diff = (h != orig).any(-1)
        real = mask.bool()
        run = real.long().cumsum(1)
        inner = real & (run > 1) & (run < real.sum(1, keepdim=True))
        assert not bool((diff & ~inner).any())  # padding, first and last real position untouched
        for v in h[diff]:  # every new vector is a real position's input of the calibration set
            assert bool((pool == v).all(-1).any())
        changed, inner_total = changed + int(diff.sum()), inner_total + int(inner.sum())
    assert abs(changed / inner_total - AUGMENT_RATE) < 0.03
    again = Augmented(BlockTune(1, 1e-3, augment=3, seed=5), calls, [0], cache, dcache)
    other = Augmented(BlockTune(1, 1e-3, augment=3, seed=6), calls, [0], cache, dcache)
    assert all(torch.equal(a, b) for a, b in zip(aug.hidden, again.hidden))
    assert not all(torch.equal(a, b) for a, b in zip(aug.hidden, other.hidden))
    assert Augmented(BlockTune(1, 1e-3), calls, [0], cache, dcache).index == []
    images = [((torch.zeros(2, 3, 4, 4),), {}, None)]  # a convolutional block input: no token positions to replace
    with pytest.raises(ConfigError, match=r"\(batch, tokens, hidden\).*\(2, 3, 4, 4\)"):
        Augmented(BlockTune(1, 1e-3, augment=1), {0: images}, [0], images, images)


def test_the_copies_reach_the_step_and_the_mask_stays(tiny_bert):
    dense = copy.deepcopy(tiny_bert).eval()
    cfg = {"method": "wanda", "sparsity": 0.6, "reconstruct": True, "block_epochs": 8, "block_lr": LR}
    plain, tuned, aug = (copy.deepcopy(tiny_bert) for _ in range(3))
    m_plain, _ = _run(plain, method="wanda", sparsity=0.6, reconstruct=True)
    m_tuned, _ = _run(tuned, **cfg)
    m_aug, step = _run(aug, **cfg, block_augment=2)
    assert m_aug.sha256() == m_tuned.sha256() == m_plain.sha256()  # Wanda's mask: the step never moves it
    for la in discover_layers(aug):
        assert bool((la.weight[~m_aug[la.name].to(torch.bool)] == 0).all())
    rec = step["reconstruct"]["time_split"]["block_tune"]
    assert rec["augment"] == 2 and rec["augmented_batches"] == 4  # 2 copies of each of the 2 batches
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), aug.state_dict().values()))
    assert _error(aug, dense) < 0.9 * _error(plain, dense)


def test_a_tiny_llama_decoder_takes_the_copies():
    base = tm.tiny_llama()
    dense, plain, aug = (copy.deepcopy(base).eval() for _ in range(3))
    _run(plain, method="wanda", sparsity=0.6, reconstruct=True)
    _, step = _run(aug, method="wanda", sparsity=0.6, reconstruct=True, block_epochs=8, block_lr=LR, block_augment=1)
    assert step["reconstruct"]["time_split"]["block_tune"]["augmented_batches"] == 2
    assert _error(aug, dense, "logits") < _error(plain, dense, "logits")


@pytest.mark.parametrize(
    ("extra", "match"),
    [({"block_augment": 2}, "no effect with block_epochs=0"), ({"block_epochs": 2, "block_augment": -1}, "int >= 0"),
     ({"block_epochs": 2, "block_augment": True}, "block_augment=True")],
)  # fmt: skip
def test_refusals(extra, match):
    with pytest.raises(ConfigError, match=match):
        PruningConfig.from_dict({"method": "wanda", "sparsity": 0.5, "reconstruct": True, **extra})
    ok = PruningConfig(method="wanda", sparsity=0.5, reconstruct=True, block_epochs=2, block_augment=3, seed=4)
    assert (ok.block_tune().augment, ok.block_tune().seed) == (3, 4)


def test_cosine_schedule_decays_the_rate_over_each_blocks_steps(tiny_bert, monkeypatch):
    """Every Adam step of a block reads lr·(1 + cos(π t / T))/2, t = 0 … T−1, T = epochs × (batches + copies); the
    constant schedule reads lr at every step; the mask stays and the step still lowers the error."""
    seen, step = [], torch.optim.Adam.step

    def spy(opt, *a, **k):
        seen.append(opt.param_groups[0]["lr"])
        return step(opt, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    dense, none, plain, cos = (copy.deepcopy(tiny_bert).eval() for _ in range(4))
    _run(none, method="wanda", sparsity=0.6, reconstruct=True)
    m_plain, _ = _run(plain, method="wanda", sparsity=0.6, reconstruct=True, block_epochs=3, block_lr=LR)
    const, seen[:] = list(seen), []
    cfg = {"method": "wanda", "sparsity": 0.6, "reconstruct": True, "block_epochs": 3, "block_lr": LR}
    m_cos, rec = _run(cos, **cfg, block_augment=1, block_schedule="cosine")
    assert const and all(v == LR for v in const)
    steps = 3 * (2 + 2)  # 3 epochs × (2 calibration batches + 1 copy of each)
    blocks = len(seen) // steps
    assert blocks == len(tiny_bert.encoder.layer) and len(seen) == blocks * steps
    want = [LR * (1 + math.cos(math.pi * t / steps)) / 2 for t in range(steps)] * blocks
    assert seen == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert rec["reconstruct"]["time_split"]["block_tune"]["schedule"] == "cosine"
    assert m_cos.sha256() == m_plain.sha256()
    assert _error(cos, dense) < _error(none, dense)


def test_schedule_refusals():
    base = {"method": "wanda", "sparsity": 0.5, "reconstruct": True}
    with pytest.raises(ConfigError, match="'constant' or 'cosine'"):
        PruningConfig.from_dict({**base, "block_epochs": 2, "block_schedule": "linear"})
    with pytest.raises(ConfigError, match="no effect with block_epochs=0"):
        PruningConfig.from_dict({**base, "block_schedule": "cosine"})
    assert (
        PruningConfig.from_dict({**base, "block_epochs": 2, "block_schedule": "cosine"}).block_tune().schedule
        == "cosine"
    )
